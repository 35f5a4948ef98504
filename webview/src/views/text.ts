// The "Text" panel: the run's prompt and generated text as text, one span per token (alternating shades show the
// token boundaries; generated tokens after a marker, in the accent colour). Hover a token for its position and its
// top-1 expert and weight in every MoE layer; click it to select that column in the grid. Spans are appended as
// generation streams, not rebuilt.
import { plural, visibleToken } from '../../../common/src/format';
import { fixed } from '../format';
import { $ } from '../page';
import type { RunRouting } from '../runData';

export interface TextViewCallbacks {
  onHover(text: string | undefined, clientX: number, clientY: number): void;
  onSelect(position: number): void;
}

export class TextView {
  private readonly host: HTMLElement;
  private readonly summary: HTMLElement;
  private run: RunRouting | undefined;
  private rendered = 0;

  /** `hostId` / `summaryId`: the page's elements for this run's text (run A: run-text; a compared run B: run-text-b). */
  constructor(private readonly callbacks: TextViewCallbacks, hostId = 'run-text', summaryId = 'text-summary', private readonly hint = true) {
    this.host = $(hostId);
    this.summary = $(summaryId);
    this.host.addEventListener('mousemove', (e) => {
      const position = this.positionAt(e.target);
      this.callbacks.onHover(position === undefined ? undefined : this.describe(position), e.clientX, e.clientY);
    });
    this.host.addEventListener('mouseleave', () => this.callbacks.onHover(undefined, 0, 0));
    this.host.addEventListener('click', (e) => {
      const position = this.positionAt(e.target);
      if (position !== undefined) this.callbacks.onSelect(position);
    });
  }

  private positionAt(target: EventTarget | null): number | undefined {
    const span = (target as HTMLElement | null)?.closest?.('.tok') as HTMLElement | null;
    return span ? Number(span.dataset.position) : undefined;
  }

  /** The token's text, position and top-1 expert (weight) in every MoE layer routed so far. */
  describe(position: number): string {
    const run = this.run!;
    const text = run.info.tokenText[position] ?? '';
    const lines = [`“${visibleToken(text)}” · token ${run.info.tokens[position]} · position ${position}${position >= run.info.promptTokens ? ' · generated' : ' · prompt'}`];
    const top1 = run.layers.map((layer, row) => (position < run.filled[row] ? `L${layer} e${run.top1[row][position]} (${fixed(run.top1Weight[row][position], 2)})` : `L${layer} …`));
    lines.push(`top-1 expert (weight): ${top1.join(' · ')}`);
    return lines.join('\n');
  }

  setRun(run: RunRouting | undefined): void {
    this.run = run;
    this.rendered = 0;
    this.host.replaceChildren();
    this.update();
  }

  /** Appends the tokens that arrived since the last call and refreshes the summary. */
  update(): void {
    const run = this.run;
    if (!run) {
      this.summary.textContent = '';
      return;
    }
    const { tokens, tokenText, promptTokens } = run.info;
    const fragment = document.createDocumentFragment();
    for (let p = this.rendered; p < tokens.length; p++) {
      if (tokens[p] < 0) break; // routing arrived ahead of the token itself
      if (p === promptTokens && p > 0) {
        const marker = document.createElement('span');
        marker.className = 'boundary';
        marker.textContent = '▸';
        marker.title = 'generated text starts here';
        marker.setAttribute('aria-label', 'generated text starts here');
        fragment.appendChild(marker);
      }
      const span = document.createElement('span');
      span.className = p >= promptTokens ? 'tok gen' : 'tok';
      span.dataset.position = String(p);
      // An empty or invisible token still takes room, so its boundary can be seen and hovered.
      const text = tokenText[p] ?? '';
      span.textContent = text === '' ? `#${tokens[p]}` : text.replace(/\t/g, '⇥\t');
      if (text.includes('\n')) span.classList.add('newline');
      fragment.appendChild(span);
      this.rendered = p + 1;
    }
    this.host.appendChild(fragment);
    const generated = Math.max(0, this.rendered - promptTokens);
    this.host.dataset.promptTokens = String(Math.min(promptTokens, this.rendered));
    this.host.dataset.generatedTokens = String(generated);
    this.host.dataset.generatedText = run.info.generatedText ?? tokenText.slice(promptTokens, this.rendered).join('');
    const parts = [`prompt: ${plural(Math.min(promptTokens, this.rendered), 'token')}`];
    if (run.info.kind === 'generate' || generated > 0) parts.push(`generated: ${plural(generated, 'token')}${run.info.finishedAt === undefined ? ' so far' : ''}`);
    if (this.hint) parts.push('hover a token for its top-1 expert in every layer; click it to select its column');
    this.summary.textContent = parts.join(' · ');
  }
}
