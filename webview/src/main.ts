// The routing panel's webview app: builds the page, receives runs and streamed routing from the host (protocol.ts)
// and wires the grid, the cell details, the load heatmap, the patch editor and compare mode together.
import type { RoutingPatch } from '../../common/src/patch';
import { expertHex } from './colors';
import { renderCellDetails, expertAtChartX } from './details';
import type { CellDetails } from './details';
import { diffRouting, nextTokenChange } from './diff';
import type { RoutingDiff } from './diff';
import { fixed, percent, visibleToken } from './format';
import { RoutingGrid } from './grid';
import type { Band, CellRef } from './grid';
import { LoadHeatmap } from './heatmap';
import {
  CompareClearedNotification,
  decodeLayerChunk,
  EditPatchCommand,
  ExportCommand,
  METRICS,
  PatchChangedNotification,
  ReadyCommand,
  RequestCompareCommand,
  RerunCommand,
  RerunUnavailableCommand,
  RunFinishedNotification,
  RunInitNotification,
  RunLayerNotification,
  RunTokensNotification,
  RunUnavailableNotification,
  SelectCellCommand,
  SettingsChangedNotification,
} from './protocol';
import type { IpcMessage, Metric, PanelState } from './protocol';
import { patchEntries, type PatchEdit } from '../../common/src/patchEdit';
import { RunRouting } from './runData';
import { readTheme, watchTheme } from './theme';

interface VsCodeApi {
  postMessage(message: unknown): void;
  getState(): unknown;
  setState(state: unknown): void;
}
declare function acquireVsCodeApi(): VsCodeApi;

const vscode = acquireVsCodeApi();
let state: PanelState = (vscode.getState() as PanelState | undefined) ?? {};

const METRIC_LABELS: Record<Metric, string> = {
  expert: 'Top-1 expert',
  entropy: 'Router entropy',
  weight: 'Top-1 weight',
  change: 'Change vs compared run',
};

// ---- page ------------------------------------------------------------------------------------------------------

const app = document.getElementById('app')!;
app.innerHTML = `
<header class="toolbar">
  <div class="title"><strong id="run-label">Waiting for a run…</strong> <span id="run-status" class="muted" aria-live="polite"></span></div>
  <label class="control">Colour by <select id="metric"></select></label>
  <div class="control" role="group" aria-label="Zoom">
    <button id="zoom-out" title="Zoom out (-)" aria-label="Zoom out">−</button>
    <button id="zoom-in" title="Zoom in (+)" aria-label="Zoom in">+</button>
    <button id="zoom-fit" title="Fit all tokens (0)">Fit</button>
  </div>
  <button id="compare" title="Compare with another run">Compare…</button>
  <button id="stop-compare" hidden>Stop comparing</button>
  <button id="export-st" title="Export the routing trace as .safetensors">Export .safetensors</button>
  <button id="export-csv" title="Export the routing trace as CSV">Export CSV</button>
</header>
<div id="legend" class="legend" aria-live="polite"></div>
<div id="unavailable" class="unavailable" hidden role="alert">
  <h2>Run no longer available — re-run</h2>
  <p id="unavailable-text"></p>
  <button id="rerun-unavailable">Re-run</button>
</div>
<section id="grid-host" class="grid-host" aria-label="Token by layer routing grid"></section>
<div id="announce" class="sr-only" aria-live="polite"></div>
<div class="panels" id="panels">
  <section class="panel" aria-labelledby="h-pinned">
    <h2 id="h-pinned">Pinned cell</h2>
    <div id="pinned" class="cell-details"><p class="muted">Click a cell (or select it with the arrow keys and press Enter) to pin its details here.</p></div>
  </section>
  <section class="panel" aria-labelledby="h-patch">
    <h2 id="h-patch">Routing patch</h2>
    <div class="edit-form" role="group" aria-label="Edit an expert at a layer">
      <label>Layer <select id="edit-layer"></select></label>
      <label>Expert <input id="edit-expert" type="number" min="0" step="1" value="0"></label>
      <span id="edit-swatch" class="swatch"></span>
      <button id="do-mask" title="Router logit becomes -inf: the expert is never selected">Mask</button>
      <button id="do-force" title="Always select the expert">Force</button>
      <label>Bias <input id="edit-bias" type="number" step="0.5" value="1"></label>
      <button id="do-bias" title="Add the bias to the expert's router logit">Add bias</button>
    </div>
    <ul id="patch-list" class="patch-list"></ul>
    <div id="patch-error" class="error" role="alert"></div>
    <div class="actions">
      <button id="rerun" class="primary">Re-run with patch</button>
      <button id="clear-patch">Clear patch</button>
    </div>
  </section>
  <section class="panel" id="compare-panel" aria-labelledby="h-compare" hidden>
    <h2 id="h-compare">Difference</h2>
    <div id="compare-summary"></div>
  </section>
  <section class="panel wide" aria-labelledby="h-load">
    <h2 id="h-load">Expert load</h2>
    <p class="muted small">Share of tokens routed to each expert (columns, expert 0 at the left) in each MoE layer (rows, first layer at the top); colour relative to the busiest cell (viridis: dark = few tokens, yellow = most). Click a cell to edit that expert.</p>
    <div class="load">
      <div id="heatmap-host" class="heatmap-host"></div>
      <div id="stats-host" class="stats-host"></div>
    </div>
  </section>
</div>
<div id="tooltip" class="tooltip" role="tooltip" hidden></div>`;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const metricSelect = $<HTMLSelectElement>('metric');
for (const m of METRICS) {
  const option = document.createElement('option');
  option.value = m;
  option.textContent = METRIC_LABELS[m];
  metricSelect.appendChild(option);
}
const tooltip = $('tooltip');
const pinnedHost = $('pinned');

let theme = readTheme();
let primary: RunRouting | undefined;
let compare: RunRouting | undefined;
let diff: RoutingDiff | undefined;
let draftPatch: RoutingPatch | undefined;
let pinned: CellRef | undefined;
let pendingScroll: { left: number; top: number } | undefined = state.scrollLeft !== undefined ? { left: state.scrollLeft, top: state.scrollTop ?? 0 } : undefined;

const grid = new RoutingGrid($('grid-host'), theme, {
  onHover: (cell, x, y) => showTooltip(cell, x, y),
  onSelect: (cell, pin) => {
    announce(cell);
    const run = grid.bandAt(cell.band)?.run;
    if (run) vscode.postMessage(SelectCellCommand.create({ runId: run.id, layer: run.layers[cell.row], position: cell.position, pinned: pin }));
    if (pin) setPinned(cell);
    saveState();
  },
  onUnpin: () => setPinned(undefined),
  onViewChange: () => saveState(),
});
grid.metric = state.metric ?? 'expert';
grid.zoom = state.zoom;
metricSelect.value = grid.metric;

const heatmap = new LoadHeatmap($('heatmap-host'), $('stats-host'), theme, {
  onPick: (layer, expert) => setEditTarget(layer, expert),
  onHover: (text, x, y) => {
    if (!text) return hideTooltip();
    tooltip.replaceChildren(document.createTextNode(text));
    placeTooltip(x, y);
  },
});

(window as unknown as { routescopeDebug: unknown }).routescopeDebug = { grid };

// ---- state -----------------------------------------------------------------------------------------------------

let saveTimer = 0;
function saveState(): void {
  clearTimeout(saveTimer);
  saveTimer = window.setTimeout(() => {
    const cellState = (c: CellRef | undefined) => {
      const run = c && grid.bandAt(c.band)?.run;
      return c && run ? { layer: run.layers[c.row], position: c.position } : undefined;
    };
    state = {
      ...state,
      metric: grid.metric,
      zoom: grid.zoom,
      scrollLeft: grid.scroller.scrollLeft,
      scrollTop: grid.scroller.scrollTop,
      selected: cellState(grid.selected),
      pinned: cellState(pinned),
      patch: draftPatch,
    };
    if (primary) {
      state.runId = primary.id;
      state.label = primary.info.label;
      state.prompt = primary.info.prompt;
      state.modelDir = primary.info.model.dir;
    }
    state.compareRunId = compare?.id;
    vscode.setState(state);
  }, 150);
}

// ---- views -----------------------------------------------------------------------------------------------------

function rebuildBands(): void {
  if (!primary) return;
  const bands: Band[] = [{ title: `A · ${primary.info.label}`, run: primary, kind: 'run' }];
  if (compare) {
    bands.push({ title: `B · ${compare.info.label}`, run: compare, kind: 'run' });
    bands.push({ title: 'Δ changed experts (A vs B)', run: primary, kind: 'diff' });
  }
  diff = compare ? diffRouting(primary, compare) : undefined;
  grid.setBands(bands, diff);
  metricSelect.querySelector<HTMLOptionElement>('option[value="change"]')!.disabled = !compare;
  if (!compare && grid.metric === 'change') setMetric('expert');
  $('stop-compare').hidden = !compare;
  $('compare-panel').hidden = !compare;
  heatmap.setRun(primary);
  renderLegend();
  renderCompare();
  renderPatch();
  renderStatus();
  fillLayerSelect();
}

function setMetric(metric: Metric): void {
  grid.metric = metric;
  metricSelect.value = metric;
  grid.requestDraw();
  renderLegend();
  saveState();
}

function renderLegend(): void {
  const legend = $('legend');
  legend.replaceChildren();
  const add = (text: string, color?: string) => {
    const item = document.createElement('span');
    item.className = 'legend-item';
    if (color) {
      const sw = document.createElement('span');
      sw.className = 'swatch';
      sw.style.background = color;
      item.appendChild(sw);
    }
    item.appendChild(document.createTextNode(text));
    legend.appendChild(item);
  };
  if (grid.metric === 'expert') {
    const E = primary?.E ?? 0;
    add('Colour = top-1 expert (the same colour in every run):');
    for (let e = 0; e < Math.min(E, 12); e++) add(String(e), expertHex(e));
    if (E > 12) add(`… ${E} experts`);
  } else if (grid.metric === 'change') {
    add('Change against the compared run:');
    add('same experts', `var(--unchanged)`);
    add('some of the top-k replaced', theme.partial);
    add('top-1 expert changed', theme.changed);
  } else {
    const ramp = document.createElement('span');
    ramp.className = 'ramp';
    add(grid.metric === 'entropy' ? 'Router entropy ÷ ln E: 0' : 'Top-1 weight: 0');
    legend.appendChild(ramp);
    add('1');
    if (primary) {
      const range = observedRange(primary, grid.metric === 'entropy' ? primary.entropy : primary.top1Weight);
      if (range) add(`(this run: ${fixed(range[0], 3)} – ${fixed(range[1], 3)})`);
    }
  }
  if (compare && grid.metric !== 'change') add(' · bottom band Δ: red = top-1 changed, orange = other top-k changed');
}

function observedRange(run: RunRouting, values: Float32Array[]): [number, number] | undefined {
  let min = Infinity;
  let max = -Infinity;
  values.forEach((row, r) => {
    for (let p = 0; p < Math.min(run.filled[r], run.T); p++) {
      min = Math.min(min, row[p]);
      max = Math.max(max, row[p]);
    }
  });
  return min <= max ? [min, max] : undefined;
}

function renderStatus(): void {
  if (!primary) return;
  const info = primary.info;
  $('run-label').textContent = info.label;
  const parts = [`${info.model.name} · ${info.model.modelType}`, `${primary.T} tokens`, `${primary.layers.length} MoE layers × ${primary.E} experts, top-${primary.k}`];
  if (info.error) parts.push(`failed: ${info.error}`);
  else if (info.finishedAt === undefined) parts.push(`running: ${primary.layersArrived} / ${primary.layers.length} layers`);
  else parts.push(`finished in ${((info.finishedAt - info.startedAt) / 1000).toFixed(2)} s`);
  $('run-status').textContent = parts.join(' · ');
  grid.canvas.dataset.streaming = String(info.finishedAt === undefined && !info.error);
  ($('export-st') as HTMLButtonElement).disabled = info.finishedAt === undefined;
  ($('export-csv') as HTMLButtonElement).disabled = info.finishedAt === undefined;
}

function detailsFor(cell: CellRef): CellDetails | undefined {
  const band = grid.bandAt(cell.band);
  if (!band) return undefined;
  const run = band.run;
  const d: CellDetails = { run, row: cell.row, position: cell.position, block: grid.block };
  if (compare && primary) {
    const other = run === primary ? compare : primary;
    d.other = { run: other, row: other.rowOfLayer(run.layers[cell.row]) };
    if (run !== primary) {
      // Keep A on the left.
      d.run = primary;
      d.row = primary.rowOfLayer(run.layers[cell.row]) ?? cell.row;
      d.other = { run, row: cell.row };
    }
  }
  return d;
}

function showTooltip(cell: CellRef | undefined, x: number, y: number): void {
  if (!cell) return hideTooltip();
  const d = detailsFor(cell);
  if (!d) return hideTooltip();
  renderCellDetails(tooltip, d, theme, draftPatch, 260);
  placeTooltip(x, y);
}

function placeTooltip(x: number, y: number): void {
  tooltip.hidden = false;
  const w = tooltip.offsetWidth;
  const h = tooltip.offsetHeight;
  const left = x + 16 + w > window.innerWidth ? Math.max(0, x - 16 - w) : x + 16;
  const top = y + 16 + h > window.innerHeight ? Math.max(0, y - 16 - h) : y + 16;
  tooltip.style.left = `${left}px`;
  tooltip.style.top = `${top}px`;
}

function hideTooltip(): void {
  tooltip.hidden = true;
}

function setPinned(cell: CellRef | undefined): void {
  pinned = cell;
  grid.pinned = cell;
  grid.requestDraw();
  renderPinned();
  saveState();
}

function renderPinned(): void {
  if (!pinned) {
    pinnedHost.innerHTML = '<p class="muted">Click a cell (or select it with the arrow keys and press Enter) to pin its details here.</p>';
    return;
  }
  const d = detailsFor(pinned);
  if (!d) return;
  const width = Math.max(200, Math.min(480, pinnedHost.clientWidth - 8));
  const chart = renderCellDetails(pinnedHost, d, theme, draftPatch, width);
  const layer = d.run.layers[d.row];
  if (chart) {
    chart.title = 'Click a bar to pick that expert for editing';
    chart.addEventListener('click', (e) => {
      const rect = chart.getBoundingClientRect();
      setEditTarget(layer, expertAtChartX(e.clientX - rect.left, rect.width, d.run.E));
    });
  }
  const quick = document.createElement('div');
  quick.className = 'quick-edits';
  for (const { expert } of d.run.cell(d.row, d.position)) {
    const mask = document.createElement('button');
    mask.textContent = `Mask ${expert} at L${layer}`;
    mask.addEventListener('click', () => edit({ op: 'mask', layer, expert }));
    quick.appendChild(mask);
  }
  const pick = document.createElement('span');
  pick.className = 'muted small';
  pick.textContent = ' Click a bar to pick any expert for the patch editor.';
  quick.appendChild(pick);
  pinnedHost.appendChild(quick);
  setEditTarget(layer, d.run.cell(d.row, d.position)[0]?.expert ?? 0, false);
}

function announce(cell: CellRef): void {
  const d = detailsFor(cell);
  if (!d) return;
  const experts = d.run.cell(d.row, d.position).map((c) => `expert ${c.expert} ${fixed(c.weight, 2)}`).join(', ') || 'not computed yet';
  const text = d.run.info.tokenText[d.position];
  $('announce').textContent = `Layer ${d.run.layers[d.row]}, token ${text ? visibleToken(text) : `#${d.run.info.tokens[d.position]}`} at position ${d.position}: ${experts}`;
}

// ---- patch editing ---------------------------------------------------------------------------------------------

function fillLayerSelect(): void {
  const select = $<HTMLSelectElement>('edit-layer');
  const current = select.value;
  select.replaceChildren();
  for (const layer of primary?.layers ?? []) {
    const option = document.createElement('option');
    option.value = String(layer);
    option.textContent = `L${layer}`;
    select.appendChild(option);
  }
  if (current) select.value = current;
  $<HTMLInputElement>('edit-expert').max = String((primary?.E ?? 1) - 1);
  updateSwatch();
}

function setEditTarget(layer: number, expert: number, focus = true): void {
  $<HTMLSelectElement>('edit-layer').value = String(layer);
  const input = $<HTMLInputElement>('edit-expert');
  input.value = String(expert);
  updateSwatch();
  heatmap.picked = { layer, expert };
  heatmap.requestDraw();
  if (focus) input.focus();
}

function updateSwatch(): void {
  const e = Number($<HTMLInputElement>('edit-expert').value);
  $('edit-swatch').style.background = Number.isInteger(e) && e >= 0 ? expertHex(e) : 'transparent';
}

function editTarget(): { layer: number; expert: number } | undefined {
  const layer = Number($<HTMLSelectElement>('edit-layer').value);
  const expert = Number($<HTMLInputElement>('edit-expert').value);
  if (!primary || !Number.isInteger(expert) || expert < 0 || expert >= primary.E) {
    $('patch-error').textContent = `Expert must be 0..${(primary?.E ?? 1) - 1}`;
    return undefined;
  }
  return { layer, expert };
}

function edit(e: PatchEdit): void {
  $('patch-error').textContent = '';
  vscode.postMessage(EditPatchCommand.create({ edit: e }));
}

function renderPatch(): void {
  const list = $('patch-list');
  list.replaceChildren();
  const entries = patchEntries(draftPatch);
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
        if (Number.isFinite(value)) edit({ op: 'bias', layer: entry.layer, expert: entry.expert, value });
      });
      li.appendChild(input);
    }
    const remove = document.createElement('button');
    remove.className = 'icon';
    remove.textContent = '✕';
    remove.title = 'Remove this entry';
    remove.setAttribute('aria-label', `Remove ${label.textContent}`);
    remove.addEventListener('click', () => {
      if (entry.kind === 'mix') edit({ op: 'removeLayer', layer: entry.layer });
      else edit({ op: entry.kind === 'mask' ? 'unmask' : entry.kind === 'force' ? 'unforce' : 'unbias', layer: entry.layer, expert: entry.expert });
    });
    li.appendChild(remove);
    list.appendChild(li);
  }
  const changed = JSON.stringify(draftPatch ?? { layers: {} }) !== JSON.stringify(primary?.info.patch ?? { layers: {} });
  const rerun = $<HTMLButtonElement>('rerun');
  rerun.disabled = !primary || !entries.length;
  rerun.title = changed ? 'Run the prompt again with this patch; the result is shown as a diff against this run' : 'Run again with this patch';
  $<HTMLButtonElement>('clear-patch').disabled = !entries.length;
}

// ---- compare ---------------------------------------------------------------------------------------------------

function renderCompare(): void {
  const host = $('compare-summary');
  host.replaceChildren();
  if (!primary || !compare || !diff) return;
  const p = document.createElement('p');
  p.id = 'changed-cells';
  p.dataset.changedCells = String(diff.changedCells);
  p.textContent = `${diff.changedCells} of ${diff.comparedCells} cells changed experts (${diff.comparedCells ? percent(diff.changedCells / diff.comparedCells) : '–'}); top-1 changed in ${diff.changedTop1}.`;
  host.appendChild(p);
  if (diff.tokenMismatch) {
    const warn = document.createElement('p');
    warn.className = 'muted small';
    warn.textContent = `${diff.tokenMismatch} positions hold different tokens in the two runs (their routing differs for that reason too).`;
    host.appendChild(warn);
  }
  const next = nextTokenChange(primary.info.nextTokens, compare.info.nextTokens);
  if (next) {
    const h = document.createElement('h3');
    h.textContent = `Next-token distribution (total variation ≥ ${fixed(next.totalVariation, 3)}${next.top1Changed ? ', most likely token changed' : ''})`;
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

/** A probability change in percentage points, "+1.25" / "−0.40" / "0.00". */
function signedPoints(delta: number): string {
  const text = Math.abs(delta * 100).toFixed(2);
  if (Number(text) === 0) return '0.00';
  return `${delta > 0 ? '+' : '−'}${text}`;
}

let diffTimer = 0;
function scheduleDiff(): void {
  if (!compare || !primary || diffTimer) return;
  diffTimer = window.setTimeout(() => {
    diffTimer = 0;
    if (!compare || !primary) return;
    diff = diffRouting(primary, compare);
    grid.setDiff(diff);
    renderCompare();
  }, 100);
}

let panelTimer = 0;
function schedulePanels(): void {
  if (panelTimer) return;
  panelTimer = window.setTimeout(() => {
    panelTimer = 0;
    heatmap.update();
    renderStatus();
    if (grid.metric === 'entropy' || grid.metric === 'weight') renderLegend();
    if (pinned) renderPinned();
  }, 120);
}

// ---- messages --------------------------------------------------------------------------------------------------

function runFor(runId: number): RunRouting | undefined {
  if (primary?.id === runId) return primary;
  if (compare?.id === runId) return compare;
  return undefined;
}

window.addEventListener('message', (event: MessageEvent) => {
  const message = event.data as IpcMessage<unknown>;
  try {
    handle(message);
  } catch (error) {
    $('patch-error').textContent = `routing panel: ${(error as Error).message}`;
  }
});

function handle(message: IpcMessage<unknown>): void {
  if (RunLayerNotification.is(message)) {
    const chunk = decodeLayerChunk(message.params.chunk);
    const run = runFor(chunk.runId);
    if (!run) return;
    const row = run.addChunk(chunk);
    if (row === undefined) return;
    if (run.T !== grid.tokens) grid.layout();
    else grid.requestDraw();
    if (run === primary) schedulePanels();
    scheduleDiff();
    restoreScroll();
  } else if (RunInitNotification.is(message)) {
    const { role, run } = message.params;
    const routing = new RunRouting(run);
    $('unavailable').hidden = true;
    $('grid-host').hidden = false;
    $('panels').hidden = false;
    $('legend').hidden = false;
    for (const c of document.querySelectorAll<HTMLElement>('.toolbar > :not(.title):not(#stop-compare)')) c.hidden = false;
    if (role === 'primary') {
      const sameRun = primary?.id === run.id || state.runId === run.id;
      primary = routing;
      draftPatch = run.patch ?? state.patch;
      if (!sameRun) {
        pinned = undefined;
        grid.selected = undefined;
        pendingScroll = undefined;
      } else if (state.pinned || state.selected) {
        const toCell = (c: { layer: number; position: number } | undefined) => {
          const row = c && routing.rowOfLayer(c.layer);
          return c && row !== undefined ? { band: 0, row, position: c.position } : undefined;
        };
        grid.selected = toCell(state.selected);
        pinned = toCell(state.pinned);
        grid.pinned = pinned;
      }
      compare = undefined;
    } else {
      compare = routing;
    }
    rebuildBands();
    renderPinned();
    saveState();
  } else if (RunTokensNotification.is(message)) {
    const { runId, from, tokens, tokenText } = message.params;
    const run = runFor(runId);
    if (!run) return;
    run.appendTokens(from, tokens, tokenText);
    grid.layout();
    schedulePanels();
  } else if (RunFinishedNotification.is(message)) {
    const { runId, ...rest } = message.params;
    const run = runFor(runId);
    if (!run) return;
    Object.assign(run.info, rest);
    renderStatus();
    renderCompare();
    heatmap.update();
  } else if (CompareClearedNotification.is(message)) {
    compare = undefined;
    rebuildBands();
    saveState();
  } else if (PatchChangedNotification.is(message)) {
    draftPatch = message.params.patch;
    $('patch-error').textContent = message.params.error ?? '';
    renderPatch();
    if (pinned) renderPinned();
    saveState();
  } else if (RunUnavailableNotification.is(message)) {
    const { label, prompt, reason } = message.params;
    primary = undefined;
    compare = undefined;
    $('grid-host').hidden = true;
    $('panels').hidden = true;
    $('legend').hidden = true;
    for (const c of document.querySelectorAll<HTMLElement>('.toolbar > :not(.title)')) c.hidden = true;
    $('unavailable').hidden = false;
    $('run-label').textContent = label ?? 'Routing';
    $('run-status').textContent = '';
    $('unavailable-text').textContent = `${reason}${prompt ? ` Prompt: “${prompt.length > 200 ? `${prompt.slice(0, 200)}…` : prompt}”` : ''}`;
    $<HTMLButtonElement>('rerun-unavailable').disabled = !prompt;
  } else if (SettingsChangedNotification.is(message)) {
    if (!state.metric) setMetric(message.params.defaultMetric);
  }
}

function restoreScroll(): void {
  if (!pendingScroll) return;
  const { left, top } = pendingScroll;
  if (grid.scroller.scrollWidth - grid.scroller.clientWidth >= left && grid.scroller.scrollHeight - grid.scroller.clientHeight >= top) {
    grid.scroller.scrollLeft = left;
    grid.scroller.scrollTop = top;
    pendingScroll = undefined;
  }
}

// ---- controls --------------------------------------------------------------------------------------------------

metricSelect.addEventListener('change', () => setMetric(metricSelect.value as Metric));
$('zoom-in').addEventListener('click', () => grid.zoomBy(1.5));
$('zoom-out').addEventListener('click', () => grid.zoomBy(1 / 1.5));
$('zoom-fit').addEventListener('click', () => grid.fit());
$('compare').addEventListener('click', () => vscode.postMessage(RequestCompareCommand.create({})));
$('stop-compare').addEventListener('click', () => vscode.postMessage(RequestCompareCommand.create({ runId: -1 })));
$('export-st').addEventListener('click', () => primary && vscode.postMessage(ExportCommand.create({ runId: primary.id, format: 'safetensors' })));
$('export-csv').addEventListener('click', () => primary && vscode.postMessage(ExportCommand.create({ runId: primary.id, format: 'csv' })));
$('edit-expert').addEventListener('input', updateSwatch);
$('do-mask').addEventListener('click', () => { const t = editTarget(); if (t) edit({ op: 'mask', ...t }); });
$('do-force').addEventListener('click', () => { const t = editTarget(); if (t) edit({ op: 'force', ...t }); });
$('do-bias').addEventListener('click', () => {
  const t = editTarget();
  const value = Number($<HTMLInputElement>('edit-bias').value);
  if (t && Number.isFinite(value)) edit({ op: 'bias', ...t, value });
});
$('clear-patch').addEventListener('click', () => edit({ op: 'clear' }));
$('rerun').addEventListener('click', () => vscode.postMessage(RerunCommand.create({ patch: draftPatch ?? { layers: {} } })));
$('rerun-unavailable').addEventListener('click', () => {
  if (state.prompt) vscode.postMessage(RerunUnavailableCommand.create({ prompt: state.prompt, modelDir: state.modelDir, patch: state.patch }));
});

watchTheme(() => {
  theme = readTheme();
  grid.setTheme(theme);
  heatmap.setTheme(theme);
  renderLegend();
  if (pinned) renderPinned();
});

renderPatch();
vscode.postMessage(ReadyCommand.create({ state }));
