// The statistics panel's page (extension/src/views/statsPanel.ts hosts it): the routing statistics of a prompt set
// from the aggregate the engine process computed — expert load heatmap, one expert's top tokens and contexts,
// co-activation per layer, layer-to-layer flow, paired sets ranked by activation-rate difference with the steering
// re-run, exports. Speaks common/src/statsProtocol.ts; figures come from model.ts (statsQueries.ts, as the CLI).
// Every chart has axes, units and labels, and a table with the same figures (data-value attributes hold the exact
// numbers); everything is reachable with the keyboard. Over 400 lines on purpose: the page's markup and the five
// views that fill it (load, one expert, co-activation, flow; pairs.ts draws the paired sets) share one view state.
import { visibleToken, plural } from '../../../common/src/format';
import { QUANTITY } from '../../../common/src/quantities';
import {
  InspectPromptCommand,
  OpenContextCommand,
  StatsContextNotification,
  StatsExportCommand,
  StatsFailedNotification,
  StatsProgressNotification,
  StatsReadyCommand,
  StatsRerunCommand,
  StatsResultNotification,
  StatsStartedNotification,
  StatsUnavailableNotification,
  SteeringNotification,
  reviveLoad,
  reviveStatsData,
  type StatsContext,
  type StatsRunStart,
} from '../../../common/src/statsProtocol';
import { readTheme, watchTheme } from '../theme';
import { vscode } from '../vscodeApi';
import { FlowPicture } from './flow';
import { MatrixHeatmap } from './matrix';
import { StatsModel } from './model';
import { byId, count, h, num, option, pct } from './dom';
import { drawPair as drawPairView, setSteering } from './pairs';

interface ViewState {
  group: string;
  order: 'number' | 'load';
  row: number;
  expert: number;
  coRow: number;
  flowRow: number;
  a?: string;
  b?: string;
  /** The inputs of the statistics shown: the host runs them again in a panel restored after a window reload. */
  sources?: string[];
  /** Their description, the title of a restored panel. */
  source?: string;
}

const saved = (vscode.getState() as Partial<ViewState> | undefined) ?? {};
const state: ViewState = { group: 'all', order: 'number', row: 0, expert: 0, coRow: 0, flowRow: 0, ...saved };
const save = (): void => vscode.setState(state);

let model: StatsModel | undefined;
let start: StatsRunStart | undefined;
let theme = readTheme();

// ---- page --------------------------------------------------------------------------------------------------------

const app = byId('app');
app.append(
  h('header', { class: 'head' },
    h('h1', { id: 'title', text: 'Routing statistics' }),
    h('p', { id: 'meta', class: 'muted' }),
    h('div', { class: 'toolbar', role: 'toolbar', 'aria-label': 'Statistics actions' },
      h('button', { id: 'export-safetensors', text: 'Export .safetensors…', title: 'The statistics as routescope stats --out writes them' }),
      h('button', { id: 'export-csv', text: 'Export CSV…', title: 'load.csv, top_tokens.csv, co_activation.csv, flow.csv (and pair.csv for the chosen pair), as routescope stats --csv writes them' }),
      h('button', { id: 'rerun', text: 'Run again', title: 'Run the statistics of the same files again' }),
    ),
    h('p', { id: 'status', role: 'status' }),
  ),
  h('div', { class: 'sections', id: 'sections' },
    h('section', { id: 'load-section', class: 'card wide', 'aria-labelledby': 'load-h' },
      h('h2', { id: 'load-h', text: `Expert load: ${QUANTITY.activationRate.name} per layer and expert` }),
      h('div', { class: 'controls' },
        h('label', {}, 'Prompts ', h('select', { id: 'load-group' })),
        h('label', {}, 'Experts in ', h('select', { id: 'load-order' },
          option('number', 'number order', state.order === 'number'), option('load', 'order of load in the selected layer', state.order === 'load'))),
      ),
      h('div', { id: 'load-host', class: 'chart' }),
      h('p', { class: 'muted small', text: `${QUANTITY.activationRate.meaning}. Hover a cell for its figures; click it (or focus the chart and use the arrow keys) to list the expert's top tokens and contexts below.` }),
      h('details', { id: 'load-details', open: true },
        h('summary', { id: 'load-table-title' }),
        h('div', { class: 'scroll' }, h('table', { id: 'load-table' })),
      ),
    ),
    h('section', { id: 'expert-section', class: 'card', 'aria-labelledby': 'expert-h' },
      h('h2', { id: 'expert-h' }),
      h('h3', { text: 'Top tokens' }),
      h('p', { class: 'muted small', text: "The tokens routed to this expert most often: count (± the counter's error bound when not exact), share of the expert's activations, share of the token's occurrences in the set." }),
      h('table', { id: 'top-tokens' }),
      h('h3', { text: 'Top contexts (largest mixing weight)' }),
      h('ol', { id: 'contexts', class: 'contexts' }),
      h('div', { id: 'context-view', class: 'context', hidden: true }),
    ),
    h('section', { id: 'co-section', class: 'card', 'aria-labelledby': 'co-h' },
      h('h2', { id: 'co-h', text: `Co-activation: share of tokens selecting both experts` }),
      h('div', { class: 'controls' }, h('label', {}, 'Layer ', h('select', { id: 'co-layer' }))),
      h('div', { id: 'co-host', class: 'chart' }),
      h('p', { class: 'muted small', text: `${QUANTITY.coActivation.meaning}; the colour scale leaves out the diagonal (struck through: an expert with itself is its activation rate, in the tooltip).` }),
      h('table', { id: 'co-pairs' }),
    ),
    h('section', { id: 'flow-section', class: 'card wide', 'aria-labelledby': 'flow-h' },
      h('h2', { id: 'flow-h', text: `Layer-to-layer ${QUANTITY.routingFlow.name}: top-1 expert in one MoE layer → the next` }),
      h('div', { id: 'flow-host', class: 'chart' }),
      h('p', { id: 'flow-note', class: 'muted small' }),
      h('div', { class: 'controls' }, h('label', {}, 'Most frequent paths from ', h('select', { id: 'flow-pair' }))),
      h('table', { id: 'flow-paths' }),
    ),
    h('section', { id: 'pair-section', class: 'card wide', 'aria-labelledby': 'pair-h' },
      h('h2', { id: 'pair-h', text: `Paired sets: ${QUANTITY.activationDifference.name}` }),
      h('div', { id: 'pair-body' }),
    ),
  ),
  h('div', { id: 'tooltip', class: 'tooltip', role: 'tooltip', hidden: true }),
  h('div', { id: 'live', class: 'sr-only', 'aria-live': 'polite' }),
);

const tooltip = byId('tooltip');
const live = byId('live');
const loadMap = new MatrixHeatmap(byId('load-host'), 'load-heatmap', 'Expert load heatmap', theme, live, tooltip, (row, expert) => selectExpert(row, expert));
const coMap = new MatrixHeatmap(byId('co-host'), 'co-heatmap', 'Co-activation heatmap', theme, live, tooltip);
const flowPic = new FlowPicture(byId('flow-host'), theme, tooltip);

watchTheme(() => {
  theme = readTheme();
  loadMap.setTheme(theme);
  coMap.setTheme(theme);
  flowPic.setTheme(theme);
});

byId('export-safetensors').addEventListener('click', () => vscode.postMessage(StatsExportCommand.create({ format: 'safetensors', ...pairParam() })));
byId('export-csv').addEventListener('click', () => vscode.postMessage(StatsExportCommand.create({ format: 'csv', ...pairParam() })));
byId('rerun').addEventListener('click', () => vscode.postMessage(StatsRerunCommand.create({})));
byId<HTMLSelectElement>('load-group').addEventListener('change', (e) => {
  state.group = (e.target as HTMLSelectElement).value;
  save();
  drawLoad();
});
byId<HTMLSelectElement>('load-order').addEventListener('change', (e) => {
  state.order = (e.target as HTMLSelectElement).value === 'load' ? 'load' : 'number';
  save();
  drawLoad();
});
byId<HTMLSelectElement>('co-layer').addEventListener('change', (e) => {
  state.coRow = Number((e.target as HTMLSelectElement).value);
  save();
  drawCo();
});
byId<HTMLSelectElement>('flow-pair').addEventListener('change', (e) => {
  state.flowRow = Number((e.target as HTMLSelectElement).value);
  save();
  drawFlowPaths();
});

function pairParam(): { pair?: [string, string] } {
  return model && state.a && state.b && state.a !== state.b && model.groups.length > 1 ? { pair: [state.a, state.b] } : {};
}

// ---- load ----------------------------------------------------------------------------------------------------------

/** The heatmap from the finished statistics, or from the activations so far while running. */
function drawLoad(progress?: { load: Float64Array; tokens: number }): void {
  const layers = model?.layers ?? start?.layers ?? [];
  const E = model?.E ?? start?.numExperts ?? 0;
  if (!layers.length || !E) return;
  const rates = model ? model.rates(state.group) : Float64Array.from(progress!.load, (a) => (progress!.tokens > 0 ? a / progress!.tokens : 0));
  const tokens = model ? model.counts(state.group).tokens : progress!.tokens;
  let max = 0;
  for (const v of rates) if (v > max) max = v;
  const order = model && state.order === 'load' ? model.orderByLoad(Math.min(state.row, layers.length - 1)) : undefined;
  const groupName = state.group === 'all' ? 'all prompts' : state.group;
  loadMap.set({
    rows: layers.length,
    cols: E,
    value: (r, e) => rates[r * E + e],
    max,
    rowLabel: (r) => String(layers[r]),
    colLabel: (e) => String(e),
    rowTitle: 'MoE layer',
    colTitle: order ? `expert (ordered by load in layer ${layers[state.row]})` : 'expert',
    unit: `${QUANTITY.activationRate.name} (${QUANTITY.activationRate.unit})`,
    tick: (v) => `${(100 * v).toFixed(max < 0.1 ? 1 : 0)} %`,
    describe: (r, e) => {
      const a = rates[r * E + e];
      const top1 = model ? model.counts(state.group).top1[r * E + e] : undefined;
      return `Layer ${layers[r]}, expert ${e}: ${QUANTITY.activationRate.name} ${pct(a, 2)} of ${count(tokens)} tokens (${groupName})` +
        (top1 !== undefined && tokens > 0 ? `; top-1 for ${pct(top1 / tokens, 2)}` : '');
    },
    ...(order ? { colOrder: order } : {}),
    maxCell: 44,
    minCellHeight: 6,
  });
  loadMap.canvas.setAttribute('aria-label', `Expert load heatmap: ${QUANTITY.activationRate.name} (${QUANTITY.activationRate.unit}) of ${layers.length} MoE layers × ${E} experts, ${groupName}; largest ${pct(max)}`);
  if (model) {
    loadMap.selectData(state.row, state.expert);
    drawLoadTable();
  }
}

function drawLoadTable(): void {
  if (!model) return;
  const m = model;
  const r = state.row;
  const E = m.E;
  byId('load-table-title').textContent = `Figures of layer ${m.layers[r]} (table)`;
  const groups = m.groups.length > 1 ? m.groups : [];
  const head = h('tr', {}, h('th', { scope: 'col', text: 'Expert' }), h('th', { scope: 'col', text: `${QUANTITY.activationRate.name}, all (%)` }),
    ...groups.map((g) => h('th', { scope: 'col', text: `${g} (%)` })), h('th', { scope: 'col', text: 'top-1 (% of tokens)' }), h('th', { scope: 'col', text: 'mean weight' }));
  const all = m.all;
  const rates = m.rates('all');
  const order = state.order === 'load' ? Array.from(m.orderByLoad(r)) : Array.from({ length: E }, (_, e) => e);
  const rows = order.map((e) => {
    const x = r * E + e;
    const tr = h('tr', { 'data-layer': m.layers[r], 'data-expert': e, class: e === state.expert ? 'selected' : undefined },
      h('th', { scope: 'row', text: `e${e}` }),
      num(h('td', { text: pct(rates[x], 2), 'data-group': 'all' }), rates[x]),
      ...groups.map((g) => num(h('td', { text: pct(m.rates(g)[x], 2), 'data-group': g }), m.rates(g)[x])),
      num(h('td', { text: pct(all.tokens > 0 ? all.top1[x] / all.tokens : 0, 2) }), all.tokens > 0 ? all.top1[x] / all.tokens : 0),
      num(h('td', { text: (all.activations[x] > 0 ? all.weight[x] / all.activations[x] : 0).toFixed(3) }), all.activations[x] > 0 ? all.weight[x] / all.activations[x] : 0));
    return tr;
  });
  byId('load-table').replaceChildren(h('caption', { class: 'sr-only', text: `Layer ${m.layers[r]}: figures per expert` }), h('thead', {}, head), h('tbody', {}, ...rows));
}

function selectExpert(row: number, expert: number): void {
  if (!model) return;
  const orderChanged = state.order === 'load' && row !== state.row;
  state.row = row;
  state.expert = expert;
  save();
  if (orderChanged) drawLoad();
  else drawLoadTable();
  drawExpert();
}

// ---- one expert ------------------------------------------------------------------------------------------------------

function drawExpert(): void {
  if (!model) return;
  const m = model;
  const r = state.row;
  const e = state.expert;
  const layer = m.layers[r];
  const x = r * m.E + e;
  byId('expert-h').textContent = `Layer ${layer}, expert ${e}: ${pct(m.rates('all')[x])} of tokens (${count(m.all.activations[x])} activations)`;
  const tokens = m.topTokens(r, e, 15);
  const top = byId('top-tokens');
  top.dataset.layer = String(layer);
  top.dataset.expert = String(e);
  if (!tokens.length) {
    top.replaceChildren(h('caption', { text: 'No token was routed to this expert.' }));
  } else {
    top.replaceChildren(
      h('caption', { class: 'sr-only', text: `Top tokens of layer ${layer}, expert ${e}` }),
      h('thead', {}, h('tr', {}, ...['#', 'Token', 'Count', "% of expert's activations", "% of token's occurrences"].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, ...tokens.map((t, i) => h('tr', { 'data-token': t.token },
        h('td', { class: 'num', text: String(i + 1) }),
        h('td', {}, h('code', { class: 'token', text: visibleToken(m.tokenText(t.token)) })),
        num(h('td', { text: t.error ? `${count(t.count)} ±${count(t.error)}` : count(t.count) }), t.count),
        num(h('td', {}, h('span', { class: 'bar', style: `--w:${(100 * t.shareOfExpert).toFixed(1)}%` }), pct(t.shareOfExpert)), t.shareOfExpert),
        num(h('td', { text: pct(t.shareOfToken) }), t.shareOfToken)))),
    );
  }
  const contexts = m.contexts(r, e);
  byId('contexts').replaceChildren(...(contexts.length ? contexts.map((c) => {
    const id = m.data.promptIds[c.prompt] ?? `#${c.prompt}`;
    const b = h('button', { class: 'link', 'data-prompt': c.prompt, 'data-position': c.position, title: 'Show the prompt with this token highlighted' },
      h('code', { class: 'token', text: visibleToken(m.tokenText(c.token)) }), ` weight ${c.weight.toFixed(3)} · ${id}, token ${c.position + 1}`);
    b.addEventListener('click', () => vscode.postMessage(OpenContextCommand.create({ prompt: c.prompt, position: c.position, layer, expert: e, weight: c.weight })));
    return h('li', {}, b);
  }) : [h('li', { class: 'muted', text: 'none' })]));
}

function showContext(c: StatsContext): void {
  const view = byId('context-view');
  const text = h('p', { class: 'prompt-text' });
  let mark: HTMLElement | undefined;
  c.tokens.forEach((t, i) => {
    if (i === c.position) {
      mark = h('mark', { tabindex: -1, id: 'context-token', title: `token ${i + 1}: routed to expert ${c.expert} of layer ${c.layer} with weight ${c.weight.toFixed(3)}`, text: t });
      text.append(mark);
    } else text.append(t);
  });
  const inspect = h('button', { text: 'Inspect routing of this prompt' });
  inspect.addEventListener('click', () => vscode.postMessage(InspectPromptCommand.create({ prompt: c.prompt })));
  const close = h('button', { class: 'icon', 'aria-label': 'Close the context', text: '×' });
  close.addEventListener('click', () => (view.hidden = true));
  view.replaceChildren(
    h('div', { class: 'context-head' }, h('strong', { text: `${c.id}` }), h('span', { class: 'muted', text: ` (${c.group}) · token ${c.position + 1} of ${c.tokens.length} “${visibleToken(c.tokens[c.position] ?? '')}”, layer ${c.layer} expert ${c.expert}, weight ${c.weight.toFixed(3)}` }), close),
    text,
    inspect,
  );
  view.dataset.prompt = String(c.prompt);
  view.dataset.position = String(c.position);
  view.hidden = false;
  mark?.scrollIntoView({ block: 'nearest' });
  mark?.focus();
}

// ---- co-activation -------------------------------------------------------------------------------------------------

function drawCo(): void {
  if (!model) return;
  const m = model;
  const r = Math.min(state.coRow, m.L - 1);
  const share = m.coActivation(r);
  const E = m.E;
  let max = 0;
  for (let i = 0; i < E; i++) for (let j = 0; j < E; j++) if (i !== j && share[i * E + j] > max) max = share[i * E + j];
  coMap.set({
    rows: E,
    cols: E,
    value: (i, j) => share[i * E + j],
    max,
    rowLabel: (i) => String(i),
    colLabel: (j) => String(j),
    rowTitle: 'expert i',
    colTitle: 'expert j',
    unit: `${QUANTITY.coActivation.name} (${QUANTITY.coActivation.unit})`,
    tick: (v) => `${(100 * v).toFixed(max < 0.1 ? 1 : 0)} %`,
    describe: (i, j) => i === j
      ? `Layer ${m.layers[r]}, expert ${i} with itself: its ${QUANTITY.activationRate.name}, ${pct(share[i * E + i], 2)} of tokens`
      : `Layer ${m.layers[r]}: experts ${i} and ${j} selected together for ${pct(share[i * E + j], 2)} of tokens`,
    offScale: (i, j) => i === j,
    maxCell: 36,
    minCellHeight: 3,
  });
  coMap.canvas.setAttribute('aria-label', `Co-activation of layer ${m.layers[r]}: ${E} × ${E} experts, share of tokens selecting both; largest off the diagonal ${pct(max)}`);
  const pairs = m.topPairs(r, 10);
  byId('co-pairs').replaceChildren(
    h('caption', { text: `Most frequent pairs in layer ${m.layers[r]}` }),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'Experts' }), h('th', { scope: 'col', text: `${QUANTITY.coActivation.name} (${QUANTITY.coActivation.unit})` }))),
    h('tbody', {}, ...pairs.map((p) => h('tr', { 'data-i': p.i, 'data-j': p.j }, h('th', { scope: 'row', text: `e${p.i} + e${p.j}` }), num(h('td', { text: pct(p.share, 2) }), p.share)))),
  );
  byId('co-pairs').dataset.layer = String(m.layers[r]);
}

// ---- flow ----------------------------------------------------------------------------------------------------------

function drawFlow(): void {
  if (!model) return;
  const m = model;
  if (m.L < 2) {
    byId('flow-section').hidden = true;
    return;
  }
  byId('flow-section').hidden = false;
  const layout = m.flow();
  const T = m.all.tokens;
  const E = m.E;
  flowPic.set(layout, m.layers, {
    node: (r, e) => `Layer ${m.layers[r]}, expert ${e}: top-1 expert of ${count(m.all.top1[r * E + e])} tokens (${pct(T > 0 ? m.all.top1[r * E + e] / T : 0, 2)})`,
    ribbon: (r, i, j, n) => `Top-1 e${i} in layer ${m.layers[r]} → e${j} in layer ${m.layers[r + 1]}: ${count(n)} tokens (${pct(T > 0 ? n / T : 0, 2)})`,
  }, `Routing flow between ${m.L} MoE layers: ribbons of at least ${pct(layout.minShare)} of tokens`);
  const hiddenTokens = layout.hidden.reduce((s, x) => s + x.tokens, 0);
  byId('flow-note').textContent = `Node height: share of tokens whose top-1 expert it is; ribbon width: ${QUANTITY.routingFlow.unit} taking that path (${QUANTITY.routingFlow.meaning}). ` +
    `Drawn: paths of at least ${pct(layout.minShare)} of tokens, at most 96 per layer pair${hiddenTokens ? `; ${pct(T > 0 ? hiddenTokens / (T * (m.L - 1)) : 0)} of the flow is in smaller paths (in the table and the exports)` : ''}. Hover a node or ribbon for its figures.`;
  const select = byId<HTMLSelectElement>('flow-pair');
  select.replaceChildren(...m.layers.slice(0, -1).map((l, r) => option(String(r), `layer ${l} → layer ${m.layers[r + 1]}`, r === state.flowRow)));
  drawFlowPaths();
}

function drawFlowPaths(): void {
  if (!model) return;
  const m = model;
  const r = Math.min(state.flowRow, m.L - 2);
  const T = m.all.tokens;
  const paths = m.topPaths(r, 10);
  const table = byId('flow-paths');
  table.dataset.fromLayer = String(m.layers[r]);
  table.replaceChildren(
    h('caption', { class: 'sr-only', text: `Most frequent top-1 paths from layer ${m.layers[r]} to layer ${m.layers[r + 1]}` }),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'Path' }), h('th', { scope: 'col', text: `${QUANTITY.routingFlow.name} (${QUANTITY.routingFlow.unit})` }), h('th', { scope: 'col', text: '% of tokens' }))),
    h('tbody', {}, ...paths.map((p) => h('tr', { 'data-i': p.i, 'data-j': p.j },
      h('th', { scope: 'row', text: `L${m.layers[r]} e${p.i} → L${m.layers[r + 1]} e${p.j}` }), num(h('td', { text: count(p.count) }), p.count), num(h('td', { text: pct(T > 0 ? p.count / T : 0, 2) }), T > 0 ? p.count / T : 0)))),
  );
}

// ---- the whole page ------------------------------------------------------------------------------------------------

function setRunning(running: boolean): void {
  for (const id of ['expert-section', 'co-section', 'flow-section', 'pair-section', 'load-details']) byId(id).hidden = running;
  for (const id of ['export-safetensors', 'export-csv', 'rerun']) (byId(id) as HTMLButtonElement).disabled = running;
  document.body.dataset.state = running ? 'running' : 'done';
}

function showStart(s: StatsRunStart): void {
  start = s;
  model = undefined;
  state.sources = s.sources;
  state.source = s.source;
  save();
  byId('load-section').hidden = false;
  setSteering(undefined);
  byId('title').textContent = `Routing statistics — ${s.source}`;
  byId('meta').textContent = `${s.model} · ${plural(s.total, 'prompt')}${s.groups.length > 1 ? ` in ${s.groups.length} sets (${s.groups.join(', ')})` : ''}`;
  byId('status').textContent = `Running… 0 of ${s.total} prompts.`;
  byId<HTMLSelectElement>('load-group').replaceChildren(option('all', 'all', true));
  setRunning(true);
}

function showResult(data: ConstructorParameters<typeof StatsModel>[0]): void {
  model = new StatsModel(data);
  start = undefined;
  const m = model;
  const r = data.result;
  if (state.row >= m.L) state.row = 0;
  if (state.expert >= m.E) state.expert = 0;
  if (state.coRow >= m.L) state.coRow = 0;
  if (state.flowRow >= m.L - 1) state.flowRow = 0;
  if (state.group !== 'all' && !m.groups.includes(state.group)) state.group = 'all';
  // Kept with the view state: a panel restored after a window reload offers to run them again.
  state.sources = data.sources;
  state.source = data.source;
  byId('title').textContent = `Routing statistics — ${data.source}`;
  const groups = r.groups.length > 1 ? ` in ${r.groups.length} sets by ${data.groupBy} (${r.groups.map((g) => `${g.name} ${g.prompts}`).join(', ')})` : '';
  byId('meta').textContent = `${data.model} · ${plural(r.prompts, 'prompt')} (${plural(m.all.tokens, 'token')})${groups}${r.skipped ? `; ${r.skipped} skipped (too long or empty)` : ''} · ${data.seconds.toFixed(1)} s`;
  const status = byId('status');
  status.textContent = data.cancelled ? `Cancelled: the statistics of the ${data.completed} of ${data.total} prompts that finished.` : '';
  status.dataset.prompts = String(r.prompts);
  status.dataset.tokens = String(m.all.tokens);
  byId<HTMLSelectElement>('load-group').replaceChildren(option('all', 'all', state.group === 'all'), ...(m.groups.length > 1 ? m.groups.map((g) => option(g, g, g === state.group)) : []));
  byId<HTMLSelectElement>('co-layer').replaceChildren(...m.layers.map((l, i) => option(String(i), String(l), i === state.coRow)));
  byId('load-section').hidden = false;
  setRunning(false);
  save();
  drawLoad();
  drawExpert();
  drawCo();
  drawFlow();
  if (model) drawPairView(model, state, save);
}

/** A panel restored after a window reload: no statistics, the reason, and Run again when the inputs are known. */
function showUnavailable(reason: string): void {
  model = undefined;
  start = undefined;
  setSteering(undefined);
  setRunning(true);
  byId('load-section').hidden = true;
  byId('title').textContent = `Routing statistics${state.source ? ` — ${state.source}` : ''}`;
  byId('meta').textContent = state.sources?.length ? `Read from ${state.sources.join(', ')}` : '';
  byId('status').textContent = reason;
  byId<HTMLButtonElement>('rerun').disabled = !state.sources?.length;
  document.body.dataset.state = 'unavailable';
}

/** A message the page could not show: said in the status line (the rest of the page stays as it was). */
function showError(error: unknown): void {
  const status = byId('status');
  status.textContent = `The panel could not show this: ${error instanceof Error ? error.message : String(error)}`;
  status.className = 'error';
}

window.addEventListener('message', (event: MessageEvent) => {
  try {
    onMessage(event.data);
  } catch (error) {
    showError(error);
  }
});

function onMessage(message: unknown): void {
  if (StatsStartedNotification.is(message)) showStart(message.params);
  else if (StatsProgressNotification.is(message)) {
    const p = message.params;
    byId('status').textContent = `Running… ${count(p.done)} of ${count(p.total)} prompts (${plural(p.tokens, 'token')}${p.skipped ? `, ${p.skipped} skipped` : ''}).`;
    const load = reviveLoad(p.load);
    if (load && !model) drawLoad({ load, tokens: p.tokens });
  } else if (StatsResultNotification.is(message)) showResult(reviveStatsData(message.params));
  else if (StatsFailedNotification.is(message)) {
    byId('status').textContent = `Failed: ${message.params.message}`;
    byId('status').className = 'error';
    document.body.dataset.state = 'failed';
  } else if (StatsUnavailableNotification.is(message)) showUnavailable(message.params.reason);
  else if (StatsContextNotification.is(message)) showContext(message.params);
  else if (SteeringNotification.is(message)) {
    setSteering(message.params);
  }
}

vscode.postMessage(StatsReadyCommand.create({}));
