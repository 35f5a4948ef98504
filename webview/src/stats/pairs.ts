// The paired-sets view of the statistics panel: two groups (files or skills) chosen, every (layer, expert) ranked by
// the activation-rate difference (model.ts ranking, the CLI's activationDifference), and the steering form whose
// patch the host builds and re-runs on both sets (its progress and outcome: SteeringState).
import { QUANTITY } from '../../../common/src/quantities';
import { describeExperts, type PairSide, type SteerMode } from '../../../common/src/statsQueries';
import { ApplySteeringPatchCommand, SteerCommand, type SteeringState } from '../../../common/src/statsProtocol';
import { vscode } from '../vscodeApi';
import { byId, h, num, option, pct, points, type Child } from './dom';
import type { StatsModel } from './model';

export interface PairState {
  a?: string;
  b?: string;
}

let rankingShown = 20;
let steering: SteeringState | undefined;

export function setSteering(s: SteeringState | undefined): void {
  steering = s;
  drawSteering();
}

/** Draws the section for `m`; `state` holds the chosen pair, `save` keeps it with the webview state. */
export function drawPair(m: StatsModel, state: PairState, save: () => void): void {
  const body = byId('pair-body');
  if (m.groups.length < 2) {
    body.replaceChildren(h('p', { class: 'muted', text: 'One set only. To compare two sets, run the statistics on two files (select both in the Explorer), or on a JSONL task set whose items have a "skill" field (each skill is a set).' }));
    return;
  }
  if (!state.a || !m.groups.includes(state.a)) state.a = m.groups[0];
  if (!state.b || !m.groups.includes(state.b) || state.b === state.a) state.b = m.groups.find((g) => g !== state.a)!;
  const pick = (id: string, value: string): HTMLSelectElement => {
    const s = h('select', { id }, ...m.groups.map((g) => option(g, g, g === value)));
    s.addEventListener('change', () => {
      if (id === 'pair-a') state.a = s.value;
      else state.b = s.value;
      rankingShown = 20;
      save();
      drawPair(m, state, save);
    });
    return s;
  };
  const controls = h('div', { class: 'controls' }, h('label', {}, 'A ', pick('pair-a', state.a)), h('label', {}, 'B ', pick('pair-b', state.b)));
  if (state.a === state.b) {
    body.replaceChildren(controls, h('p', { class: 'error', text: 'Choose two different sets.' }));
    return;
  }
  const ranking = m.ranking(state.a, state.b);
  const shown = ranking.slice(0, rankingShown);
  const maxAbs = Math.max(1e-12, ...shown.map((d) => Math.abs(d.delta)));
  const table = h('table', { id: 'ranking', 'data-a': state.a, 'data-b': state.b },
    h('caption', { class: 'sr-only', text: `Experts ranked by |activation-rate difference| between ${state.a} and ${state.b}` }),
    h('thead', {}, h('tr', {}, ...['Rank', 'Layer', 'Expert', `${state.a} (%)`, `${state.b} (%)`, `Δ = A − B (${QUANTITY.activationDifference.unit})`].map((t) => h('th', { scope: 'col', text: t })))),
    h('tbody', {}, ...shown.map((d, i) => h('tr', { 'data-layer': d.layer, 'data-expert': d.expert },
      h('td', { class: 'num', text: String(i + 1) }), h('td', { class: 'num', text: String(d.layer) }), h('td', { class: 'num', text: String(d.expert) }),
      num(h('td', { text: pct(d.rateA, 2) }), d.rateA), num(h('td', { text: pct(d.rateB, 2) }), d.rateB),
      num(h('td', {}, h('span', { class: `delta ${d.delta >= 0 ? 'pos' : 'neg'}`, style: `--w:${((50 * Math.abs(d.delta)) / maxAbs).toFixed(1)}%` }), points(d.delta, 2)), d.delta)))),
  );
  const more = h('button', { id: 'ranking-more', text: `Show ${Math.min(20, ranking.length - shown.length)} more`, hidden: shown.length >= ranking.length });
  more.addEventListener('click', () => {
    rankingShown += 20;
    drawPair(m, state, save);
  });
  const n = h('input', { id: 'steer-n', type: 'number', min: 1, max: m.E * m.L, value: 2, 'aria-label': 'Experts to steer' });
  const side = h('select', { id: 'steer-side', 'aria-label': 'Side' }, option('A', `${state.a} (A)`, true), option('B', `${state.b} (B)`, false));
  const mode = h('select', { id: 'steer-mode', 'aria-label': 'Mask or force' }, option('mask', 'Mask', true), option('force', 'Force', false));
  const go = h('button', { id: 'steer', class: 'primary', text: 'Make patch and re-run both sets', disabled: steering?.status === 'running' });
  go.addEventListener('click', () => {
    const count = Math.max(1, Math.floor(Number(n.value) || 1));
    vscode.postMessage(SteerCommand.create({ a: state.a!, b: state.b!, side: side.value as PairSide, n: count, mode: mode.value as SteerMode }));
  });
  body.replaceChildren(
    controls,
    h('p', { class: 'muted small', text: `${QUANTITY.activationDifference.meaning} (SteerMoE, arXiv:2509.09660); experts ranked by |Δ|. Positive: more active in A.` }),
    h('div', { class: 'scroll' }, table),
    more,
    h('h3', { text: 'Steer: a routing patch from the ranking' }),
    h('div', { class: 'controls' }, mode, ' the top ', n, ' experts of ', side, go),
    h('p', { class: 'muted small', text: m.data.labelled ? 'Both sets run without and with the patch; labelled items report accuracy (as routescope eval scores them).' : 'Both sets run without and with the patch; without labels, how the next-token distribution after each prompt moved.' }),
    h('div', { id: 'steering' }),
  );
  drawSteering();
}

function drawSteering(): void {
  const host = document.getElementById('steering');
  if (!host || !steering) return;
  const s = steering;
  const parts: Child[] = [];
  const sideName = s.side === 'A' ? s.a : s.b;
  parts.push(h('p', { text: `${s.mode === 'mask' ? 'Mask' : 'Force'} the top ${s.experts.length} experts of ${sideName}: ${describeExperts(s.experts)}` }));
  for (const k of s.skipped) parts.push(h('p', { class: 'muted small', text: `Left out L${k.layer} e${k.expert}: ${k.reason}` }));
  if (s.status === 'running') parts.push(h('p', { role: 'status', text: `Running… ${s.done} of ${s.total} prompts.` }));
  if (s.status === 'failed') parts.push(h('p', { class: 'error', text: s.error ?? 'failed' }));
  if (s.outcome) {
    const o = s.outcome;
    if (s.status === 'cancelled') parts.push(h('p', { class: 'muted', text: `Cancelled after ${o.completed} of ${o.total} prompts: the figures are over those.` }));
    const labelled = o.groups.some((g) => g.accuracy);
    const head = labelled
      ? ['Set', 'Items', 'Accuracy without patch', 'With patch', 'Change (points)', 'Wrong → right', 'Right → wrong']
      : ['Set', 'Prompts', 'Mean total variation', 'Mean KL (nats)', 'Most likely token changed'];
    parts.push(h('table', { id: 'steering-table' },
      h('thead', {}, h('tr', {}, ...head.map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, ...o.groups.map((g) => g.accuracy
        ? h('tr', { 'data-group': g.group }, h('th', { scope: 'row', text: g.group }), h('td', { class: 'num', text: String(g.labelled) }),
          num(h('td', { text: pct(g.accuracy.before) }), g.accuracy.before), num(h('td', { text: pct(g.accuracy.after) }), g.accuracy.after),
          num(h('td', { text: points(g.accuracy.after - g.accuracy.before) }), g.accuracy.after - g.accuracy.before),
          num(h('td', { text: String(g.flips!.wrongToRight) }), g.flips!.wrongToRight), num(h('td', { text: String(g.flips!.rightToWrong) }), g.flips!.rightToWrong))
        : h('tr', { 'data-group': g.group }, h('th', { scope: 'row', text: g.group }), h('td', { class: 'num', text: String(g.unlabelled) }),
          num(h('td', { text: (g.nextToken?.meanTotalVariation ?? 0).toFixed(3) }), g.nextToken?.meanTotalVariation ?? 0),
          num(h('td', { text: (g.nextToken?.meanKl ?? 0).toFixed(3) }), g.nextToken?.meanKl ?? 0),
          num(h('td', { text: pct(g.nextToken?.top1Changed ?? 0) }), g.nextToken?.top1Changed ?? 0)))),
    ));
    const apply = h('button', { id: 'apply-patch', text: 'Use this patch for Inspect / Generate', title: 'Makes it the session\'s routing patch' });
    apply.addEventListener('click', () => vscode.postMessage(ApplySteeringPatchCommand.create({})));
    parts.push(h('details', {}, h('summary', { text: 'The routing patch (JSON)' }), h('pre', { text: JSON.stringify(s.patch, null, 2) })), apply);
  }
  host.dataset.status = s.status;
  host.replaceChildren(...parts.filter((p): p is Node | string => p !== undefined && p !== false));
  const go = document.getElementById('steer') as HTMLButtonElement | null;
  if (go) go.disabled = s.status === 'running';
}

