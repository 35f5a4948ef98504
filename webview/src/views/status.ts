// The toolbar's run label and status line (model, tokens, layers, running / finished / failed), and what depends on
// the run having finished (export buttons, the grid's data-streaming attribute).
import { $ } from '../page';
import type { RunRouting } from '../runData';

export function renderStatus(primary: RunRouting, gridCanvas: HTMLCanvasElement): void {
  const info = primary.info;
  $('run-label').textContent = info.label;
  const parts = [`${info.model.name} · ${info.model.modelType}`, `${primary.T} tokens`, `${primary.layers.length} MoE layers × ${primary.E} experts, top-${primary.k}`];
  if (info.error) parts.push(`failed: ${info.error}`);
  else if (info.finishedAt === undefined) parts.push(`running: ${primary.layersArrived} / ${primary.layers.length} layers`);
  else parts.push(`finished in ${((info.finishedAt - info.startedAt) / 1000).toFixed(2)} s`);
  $('run-status').textContent = parts.join(' · ');
  $('run-label').parentElement!.title = `${info.label} · ${parts.join(' · ')}`;
  gridCanvas.dataset.streaming = String(info.finishedAt === undefined && !info.error);
  $('cancel-run').hidden = info.finishedAt !== undefined || info.error !== undefined;
  $<HTMLButtonElement>('export-st').disabled = info.finishedAt === undefined;
  $<HTMLButtonElement>('export-csv').disabled = info.finishedAt === undefined;
}

/** A restored panel whose run is gone: the notice with its re-run button instead of the grid and panels. */
export function showUnavailable(label: string | undefined, prompt: string | undefined, reason: string): void {
  $('grid-host').hidden = true;
  $('panels').hidden = true;
  $('legend').hidden = true;
  $('text-panel').hidden = true;
  for (const c of document.querySelectorAll<HTMLElement>('.toolbar > :not(.title)')) c.hidden = true;
  $('unavailable').hidden = false;
  $('run-label').textContent = label ?? 'Routing';
  $('run-status').textContent = '';
  $('unavailable-text').textContent = `${reason}${prompt ? ` Prompt: “${prompt.length > 200 ? `${prompt.slice(0, 200)}…` : prompt}”` : ''}`;
  $<HTMLButtonElement>('rerun-unavailable').disabled = !prompt;
}

/** A run arrived: the grid and panels again. */
export function hideUnavailable(): void {
  $('unavailable').hidden = true;
  $('grid-host').hidden = false;
  $('panels').hidden = false;
  $('legend').hidden = false;
  $('text-panel').hidden = false;
  for (const c of document.querySelectorAll<HTMLElement>('.toolbar > :not(.title)')) c.hidden = false;
}
