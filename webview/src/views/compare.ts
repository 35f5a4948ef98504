// The "Difference" panel in compare mode: the routing change in the same words as the host's notification
// (common/src/runDiff.ts describeRunDiff), the next-token distribution change and the generated texts side by side.
import { visibleToken } from '../../../common/src/format';
import { describeNextTokenChange, describeRunDiff, type RunDiff } from '../../../common/src/runDiff';
import { percent } from '../format';
import type { RunRouting } from '../runData';

/** A probability change in percentage points, "+1.25" / "−0.40" / "0.00". */
function signedPoints(delta: number): string {
  const text = Math.abs(delta * 100).toFixed(2);
  if (Number(text) === 0) return '0.00';
  return `${delta > 0 ? '+' : '−'}${text}`;
}

export function renderCompare(host: HTMLElement, primary: RunRouting, compare: RunRouting, diff: RunDiff | string): void {
  host.replaceChildren();
  const p = document.createElement('p');
  p.id = 'changed-cells';
  if (typeof diff === 'string') {
    p.textContent = `These runs cannot be compared: ${diff}.`;
    host.appendChild(p);
    return;
  }
  p.dataset.changedCells = String(diff.changedCells);
  p.textContent = `${describeRunDiff(diff)}.`;
  host.appendChild(p);
  const next = diff.nextToken;
  if (next) {
    const h = document.createElement('h3');
    h.textContent = describeNextTokenChange(next).replace(/^next-token distribution/, 'Next-token distribution');
    host.appendChild(h);
    const table = document.createElement('table');
    table.className = 'next-tokens';
    table.innerHTML = '<thead><tr><th scope="col">token</th><th scope="col">A</th><th scope="col">B</th><th scope="col">Δ (points)</th></tr></thead>';
    const body = document.createElement('tbody');
    for (const row of next.rows.slice(0, 10)) {
      const tr = document.createElement('tr');
      const cells = [row.text ? visibleToken(row.text) : `#${row.token}`, row.probA === undefined ? '–' : percent(row.probA), row.probB === undefined ? '–' : percent(row.probB), signedPoints(row.delta)];
      for (const text of cells) {
        const td = document.createElement('td');
        td.textContent = text;
        tr.appendChild(td);
      }
      if (Math.abs(row.delta) >= 0.05) tr.className = row.delta > 0 ? 'up' : 'down';
      body.appendChild(tr);
    }
    table.appendChild(body);
    host.appendChild(table);
  }
  if (primary.info.generatedText !== undefined || compare.info.generatedText !== undefined) {
    const h = document.createElement('h3');
    h.textContent = 'Generated text';
    host.appendChild(h);
    const pair = document.createElement('div');
    pair.className = 'pair';
    for (const [name, run] of [['A', primary], ['B', compare]] as const) {
      const col = document.createElement('div');
      const title = document.createElement('div');
      title.className = 'small muted';
      title.textContent = `${name}: ${run.info.label}`;
      const pre = document.createElement('pre');
      pre.textContent = run.info.generatedText ?? '(no generated text)';
      col.append(title, pre);
      pair.appendChild(col);
    }
    host.appendChild(pair);
  }
}
