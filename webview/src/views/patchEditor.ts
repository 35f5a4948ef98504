// The "Routing patch" panel: pick a layer and an expert (or click one in the heatmap or the pinned cell), mask /
// force / bias it, the session's patch as a list with its entries' remove buttons and bias inputs, the refusal
// message of the last edit, and "Re-run with patch" (the host re-runs with the patch it holds).
import type { RoutingPatch } from '../../../common/src/patch';
import { patchEntries, type PatchEdit } from '../../../common/src/patchEdit';
import { expertHex } from '../colors';
import { $ } from '../page';
import type { RunRouting } from '../runData';

export interface PatchEditorCallbacks {
  edit(edit: PatchEdit): void;
  rerun(): void;
  /** The (layer, expert) the editor points at changed. */
  picked(layer: number, expert: number): void;
}

export class PatchEditor {
  private run: RunRouting | undefined;

  constructor(private readonly callbacks: PatchEditorCallbacks) {
    $('edit-expert').addEventListener('input', () => this.updateSwatch());
    $('do-mask').addEventListener('click', () => {
      const t = this.target();
      if (t) this.edit({ op: 'mask', ...t });
    });
    $('do-force').addEventListener('click', () => {
      const t = this.target();
      if (t) this.edit({ op: 'force', ...t });
    });
    $('do-bias').addEventListener('click', () => {
      const t = this.target();
      const value = Number($<HTMLInputElement>('edit-bias').value);
      if (t && Number.isFinite(value)) this.edit({ op: 'bias', ...t, value });
    });
    $('clear-patch').addEventListener('click', () => this.edit({ op: 'clear' }));
    $('rerun').addEventListener('click', () => callbacks.rerun());
  }

  edit(e: PatchEdit): void {
    this.setError('');
    this.callbacks.edit(e);
  }

  setError(message: string): void {
    $('patch-error').textContent = message;
  }

  /** The run whose layers the layer select offers. */
  setRun(run: RunRouting | undefined): void {
    this.run = run;
    const select = $<HTMLSelectElement>('edit-layer');
    const current = select.value;
    select.replaceChildren();
    for (const layer of run?.layers ?? []) {
      const option = document.createElement('option');
      option.value = String(layer);
      option.textContent = `L${layer}`;
      select.appendChild(option);
    }
    if (current) select.value = current;
    $<HTMLInputElement>('edit-expert').max = String((run?.E ?? 1) - 1);
    this.updateSwatch();
  }

  /** Points the editor at (layer, expert). */
  pick(layer: number, expert: number, focus: boolean): void {
    $<HTMLSelectElement>('edit-layer').value = String(layer);
    const input = $<HTMLInputElement>('edit-expert');
    input.value = String(expert);
    this.updateSwatch();
    this.callbacks.picked(layer, expert);
    if (focus) input.focus();
  }

  private updateSwatch(): void {
    const e = Number($<HTMLInputElement>('edit-expert').value);
    $('edit-swatch').style.background = Number.isInteger(e) && e >= 0 ? expertHex(e) : 'transparent';
  }

  private target(): { layer: number; expert: number } | undefined {
    const layer = Number($<HTMLSelectElement>('edit-layer').value);
    const expert = Number($<HTMLInputElement>('edit-expert').value);
    const E = this.run?.E ?? 1;
    if (!this.run || !Number.isInteger(expert) || expert < 0 || expert >= E) {
      this.setError(`Expert must be 0..${E - 1}`);
      return undefined;
    }
    return { layer, expert };
  }

  /** The patch as a list; `shownPatch` is the patch of the run shown (to word the re-run button's tooltip). */
  render(patch: RoutingPatch | undefined, shownPatch: RoutingPatch | undefined): void {
    const list = $('patch-list');
    list.replaceChildren();
    const entries = patchEntries(patch);
    if (!entries.length) {
      const li = document.createElement('li');
      li.className = 'muted';
      li.textContent = 'No edits: the run uses the model’s own routing.';
      list.appendChild(li);
    }
    for (const entry of entries) {
      const li = document.createElement('li');
      const label = document.createElement('span');
      if (entry.expert >= 0) {
        const sw = document.createElement('span');
        sw.className = 'swatch';
        sw.style.background = expertHex(entry.expert);
        li.appendChild(sw);
      }
      label.textContent = entry.kind === 'mix' ? `L${entry.layer} mix (${entry.value} positions)` : `L${entry.layer} ${entry.kind} expert ${entry.expert}`;
      li.appendChild(label);
      if (entry.kind === 'bias') {
        const input = document.createElement('input');
        input.type = 'number';
        input.step = '0.5';
        input.value = String(entry.value);
        input.setAttribute('aria-label', `Bias of expert ${entry.expert} at layer ${entry.layer}`);
        input.addEventListener('change', () => {
          const value = Number(input.value);
          if (Number.isFinite(value)) this.edit({ op: 'bias', layer: entry.layer, expert: entry.expert, value });
        });
        li.appendChild(input);
      }
      const remove = document.createElement('button');
      remove.className = 'icon';
      remove.textContent = '✕';
      remove.title = 'Remove this entry';
      remove.setAttribute('aria-label', `Remove ${label.textContent}`);
      remove.addEventListener('click', () => {
        if (entry.kind === 'mix') this.edit({ op: 'removeLayer', layer: entry.layer });
        else this.edit({ op: entry.kind === 'mask' ? 'unmask' : entry.kind === 'force' ? 'unforce' : 'unbias', layer: entry.layer, expert: entry.expert });
      });
      li.appendChild(remove);
      list.appendChild(li);
    }
    const changed = JSON.stringify(patch ?? { layers: {} }) !== JSON.stringify(shownPatch ?? { layers: {} });
    const rerun = $<HTMLButtonElement>('rerun');
    rerun.disabled = !this.run || !entries.length;
    rerun.title = changed ? 'Run the prompt again with this patch; the result is shown as a diff against this run' : 'Run again with this patch';
    $<HTMLButtonElement>('clear-patch').disabled = !entries.length;
  }
}
