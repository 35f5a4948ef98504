// The routing panel's webview app: builds the page (page.ts), keeps the runs it was sent (runData.ts) and the
// view state (getState/setState), and routes the host's messages (common/src/panelProtocol.ts) to the views: the
// grid (grid.ts), the load heatmap (heatmap.ts), the legend, status, cell, patch-editor and difference views
// (views/*.ts). Each view renders from what this file passes it; only this file holds the panel's state.
import type { RoutingPatch } from '../../common/src/patch';
import type { PatchEdit } from '../../common/src/patchEdit';
import { diffRuns, type RunDiff } from '../../common/src/runDiff';
import {
  CancelRunCommand,
  CompareClearedNotification,
  decodeLayerMessage,
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
  SettingsChangedNotification,
  type IpcMessage,
  type Metric,
  type PanelState,
} from '../../common/src/panelProtocol';
import { RoutingGrid, type Band, type CellRef } from './grid';
import { LoadHeatmap, type ExpertOrder } from './heatmap';
import { $, PAGE } from './page';
import { RunRouting } from './runData';
import { readTheme, watchTheme } from './theme';
import { CellViews } from './views/cell';
import { renderCompare } from './views/compare';
import { METRIC_LABELS, renderLegend } from './views/legend';
import { PatchEditor } from './views/patchEditor';
import { hideUnavailable, renderStatus, showUnavailable } from './views/status';
import { TextView } from './views/text';
import { vscode } from './vscodeApi';

$('app').innerHTML = PAGE;

// ---- state -----------------------------------------------------------------------------------------------------

let state: PanelState = (vscode.getState() as PanelState | undefined) ?? {};
let theme = readTheme();
let primary: RunRouting | undefined;
let compare: RunRouting | undefined;
/** The difference of the compared run against the shown one, or why they cannot be compared. */
let diff: RunDiff | string | undefined;
/** The session's patch, as the host last sent it. */
let patch: RoutingPatch | undefined;
let pinned: CellRef | undefined;
let pendingScroll: { left: number; top: number } | undefined = state.scrollLeft !== undefined ? { left: state.scrollLeft, top: state.scrollTop ?? 0 } : undefined;

const metricSelect = $<HTMLSelectElement>('metric');
for (const m of METRICS) {
  const option = document.createElement('option');
  option.value = m;
  option.textContent = METRIC_LABELS[m];
  metricSelect.appendChild(option);
}

const edit = (e: PatchEdit): void => vscode.postMessage(EditPatchCommand.create({ edit: e }));

const grid = new RoutingGrid($('grid-host'), theme, {
  onHover: (cell, x, y) => cells.showTooltip(cell, x, y),
  onSelect: (cell, pin) => {
    cells.announce(cell);
    if (pin) setPinned(cell);
    saveState();
  },
  onUnpin: () => setPinned(undefined),
  onViewChange: () => saveState(),
});
grid.metric = state.metric ?? 'expert';
grid.zoom = state.zoom;
metricSelect.value = grid.metric;

const editor = new PatchEditor({
  edit,
  rerun: () => vscode.postMessage(RerunCommand.create({})),
  picked: (layer, expert) => {
    heatmap.picked = { layer, expert };
    heatmap.requestDraw();
  },
});

const cells = new CellViews({
  grid,
  primary: () => primary,
  compare: () => compare,
  patch: () => patch,
  theme: () => theme,
  pick: (layer, expert, focus) => editor.pick(layer, expert, focus),
  edit: (e) => editor.edit(e),
});

const heatmap = new LoadHeatmap($('heatmap-host'), $('stats-host'), theme, {
  onPick: (layer, expert) => editor.pick(layer, expert, true),
  onHover: (text, x, y) => cells.showText(text, x, y),
});

/** Selects a token's column in a run's band of the grid (band 0 = A, 1 = B), keeping the selected layer. */
function selectPosition(band: number, position: number): void {
  if (!primary) return;
  grid.select({ band, row: grid.selected?.band === band ? grid.selected.row : 0, position });
}

const text = new TextView({ onHover: (t, x, y) => cells.showText(t, x, y), onSelect: (position) => selectPosition(0, position) });
// In compare mode the compared run's text (B) under A's, so two prompts can be read side by side.
const textB = new TextView({ onHover: (t, x, y) => cells.showText(t, x, y), onSelect: (position) => selectPosition(1, position) }, 'run-text-b', 'text-summary-b', false);

(window as unknown as { routescopeDebug: unknown }).routescopeDebug = { grid };

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

function computeDiff(): void {
  if (!primary || !compare) {
    diff = undefined;
    return;
  }
  try {
    diff = diffRuns(primary, compare);
  } catch (error) {
    diff = (error as Error).message;
  }
}

function rebuildBands(): void {
  if (!primary) return;
  const bands: Band[] = [{ title: `A · ${primary.info.label}`, run: primary, kind: 'run' }];
  if (compare) {
    bands.push({ title: `B · ${compare.info.label}`, run: compare, kind: 'run' });
    bands.push({ title: 'Δ changed experts (A vs B)', run: primary, kind: 'diff' });
  }
  computeDiff();
  grid.setBands(bands, typeof diff === 'object' ? diff : undefined);
  metricSelect.querySelector<HTMLOptionElement>('option[value="change"]')!.disabled = !compare;
  if (!compare && grid.metric === 'change') setMetric('expert');
  $('stop-compare').hidden = !compare;
  $('compare-panel').hidden = !compare;
  heatmap.setRun(primary);
  text.setRun(primary);
  textB.setRun(compare);
  $('text-b').hidden = !compare;
  $('text-a').hidden = !compare;
  legend();
  renderDifference();
  editor.setRun(primary);
  editor.render(patch, primary.info.patch);
  renderStatus(primary, grid.canvas);
}

function legend(): void {
  renderLegend($('legend'), { metric: grid.metric, primary, comparing: compare !== undefined, theme });
}

function renderDifference(): void {
  if (primary && compare && diff !== undefined) renderCompare($('compare-summary'), primary, compare, diff);
  else $('compare-summary').replaceChildren();
}

function setMetric(metric: Metric): void {
  grid.metric = metric;
  metricSelect.value = metric;
  grid.requestDraw();
  legend();
  saveState();
}

function setPinned(cell: CellRef | undefined): void {
  pinned = cell;
  grid.pinned = cell;
  grid.requestDraw();
  cells.renderPinned(pinned);
  saveState();
}

let diffTimer = 0;
function scheduleDiff(): void {
  if (!compare || !primary || diffTimer) return;
  diffTimer = window.setTimeout(() => {
    diffTimer = 0;
    computeDiff();
    grid.setDiff(typeof diff === 'object' ? diff : undefined);
    renderDifference();
  }, 100);
}

let panelTimer = 0;
function schedulePanels(): void {
  if (panelTimer) return;
  panelTimer = window.setTimeout(() => {
    panelTimer = 0;
    heatmap.update();
    text.update();
    textB.update();
    if (primary) renderStatus(primary, grid.canvas);
    if (grid.metric === 'entropy' || grid.metric === 'weight') legend();
    if (pinned) cells.renderPinned(pinned);
  }, 120);
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

// ---- messages --------------------------------------------------------------------------------------------------

function runFor(runId: number): RunRouting | undefined {
  if (primary?.id === runId) return primary;
  if (compare?.id === runId) return compare;
  return undefined;
}

function handle(message: IpcMessage<unknown>): void {
  if (RunLayerNotification.is(message)) {
    const { runId, span } = decodeLayerMessage(message.params);
    const run = runFor(runId);
    if (!run || run.addSpan(span) === undefined) return;
    if (run.T !== grid.tokens) grid.layout();
    else grid.requestDraw();
    if (run === primary) schedulePanels();
    scheduleDiff();
    restoreScroll();
  } else if (RunInitNotification.is(message)) {
    const { role, run } = message.params;
    const routing = new RunRouting(run);
    hideUnavailable();
    if (role === 'primary') {
      const sameRun = primary?.id === run.id || state.runId === run.id;
      primary = routing;
      patch = patch ?? run.patch;
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
    cells.renderPinned(pinned);
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
    if (primary) renderStatus(primary, grid.canvas);
    computeDiff();
    renderDifference();
    heatmap.update();
    if (run === primary) text.update();
    else if (run === compare) textB.update();
  } else if (CompareClearedNotification.is(message)) {
    compare = undefined;
    rebuildBands();
    saveState();
  } else if (PatchChangedNotification.is(message)) {
    patch = message.params.patch;
    editor.setError(message.params.error ?? '');
    editor.render(patch, primary?.info.patch);
    if (pinned) cells.renderPinned(pinned);
  } else if (RunUnavailableNotification.is(message)) {
    const { label, prompt, reason } = message.params;
    primary = undefined;
    compare = undefined;
    showUnavailable(label, prompt, reason);
  } else if (SettingsChangedNotification.is(message)) {
    if (!state.metric) setMetric(message.params.defaultMetric);
  }
}

window.addEventListener('message', (event: MessageEvent) => {
  try {
    handle(event.data as IpcMessage<unknown>);
  } catch (error) {
    editor.setError(`routing panel: ${(error as Error).message}`);
  }
});

// ---- controls --------------------------------------------------------------------------------------------------

metricSelect.addEventListener('change', () => setMetric(metricSelect.value as Metric));
$<HTMLSelectElement>('load-order').addEventListener('change', (e) => heatmap.setOrder((e.target as HTMLSelectElement).value as ExpertOrder));
$('zoom-in').addEventListener('click', () => grid.zoomBy(1.5));
$('zoom-out').addEventListener('click', () => grid.zoomBy(1 / 1.5));
$('zoom-fit').addEventListener('click', () => grid.fit());
$('compare').addEventListener('click', () => vscode.postMessage(RequestCompareCommand.create({})));
$('cancel-run').addEventListener('click', () => primary && vscode.postMessage(CancelRunCommand.create({ runId: primary.id })));
$('stop-compare').addEventListener('click', () => vscode.postMessage(RequestCompareCommand.create({ runId: -1 })));
$('export-st').addEventListener('click', () => primary && vscode.postMessage(ExportCommand.create({ runId: primary.id, format: 'safetensors' })));
$('export-csv').addEventListener('click', () => primary && vscode.postMessage(ExportCommand.create({ runId: primary.id, format: 'csv' })));
$('rerun-unavailable').addEventListener('click', () => {
  if (state.prompt) vscode.postMessage(RerunUnavailableCommand.create({ prompt: state.prompt, ...(state.modelDir ? { modelDir: state.modelDir } : {}) }));
});

watchTheme(() => {
  theme = readTheme();
  grid.setTheme(theme);
  heatmap.setTheme(theme);
  legend();
  if (pinned) cells.renderPinned(pinned);
});

editor.render(patch, undefined);
vscode.postMessage(ReadyCommand.create({ state }));
