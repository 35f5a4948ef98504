// The one comparison of two runs' routing, used by the notification of Compare Two Prompts / Re-run with Patch and
// by the routing panel's Δ band and summary, so they always report the same counts.
//
// Rule: positions are matched by index, layers by layer index. A cell (MoE layer, position) is compared where both
// runs have routed that position at that layer; it changed when the SETS of selected experts differ (order within
// the top-k ignored). When the runs have different lengths, the positions only the longer run has are not
// compared and the summary says so. Positions whose tokens differ are compared all the same (their routing then
// differs for that reason too) and counted apart.
import { argmax, klDivergence, topIndices, totalVariation } from './math';
import type { LayerRouting } from './routing';
import type { NextToken } from './run';

/** What a comparison needs of a run: its routing (MoE layers ascending), tokens and next-token distribution. */
export interface RoutedRun {
  readonly routing: readonly LayerRouting[];
  readonly tokens: ArrayLike<number>;
  readonly nextTokens?: readonly NextToken[] | undefined;
  readonly nextTokenProbs?: Float32Array | undefined;
}

export interface LayerDiff {
  layer: number;
  /** [positions of the longer run] fraction of the top-k set replaced (0..1); NaN where not compared. */
  change: Float32Array;
  /** [positions of the longer run] 1 where the top-1 expert differs. */
  top1Changed: Uint8Array;
  changedCells: number;
  comparedCells: number;
  /** Top-1 replacements at this layer (expert in A → expert in B), most frequent first. */
  top1Swaps: { from: number; to: number; count: number }[];
}

export interface NextTokenChange {
  /** The union of both runs' most likely next tokens, largest |Δp| first. */
  rows: { token: number; text: string; probA: number | undefined; probB: number | undefined; delta: number }[];
  /** Total variation distance: exact over the whole vocabulary when both full distributions are known, otherwise a
   *  lower bound over the listed tokens (`exact` false). */
  totalVariation: number;
  exact: boolean;
  /** KL(A ‖ B) in nats, with the full distributions only. */
  klAtoB?: number;
  top1Changed: boolean;
}

export interface RunDiff {
  /** One per MoE layer of run A, in its order. */
  layers: LayerDiff[];
  changedCells: number;
  changedTop1: number;
  comparedCells: number;
  /** Routed positions of each run (its longest layer). */
  positionsA: number;
  positionsB: number;
  /** Compared positions whose tokens differ between the runs. */
  tokenMismatch: number;
  nextToken?: NextTokenChange;
}

function routedPositions(run: RoutedRun): number {
  return run.routing.reduce((m, l) => Math.max(m, l.filled), 0);
}

/** The difference of run B against run A (same experts and top-k; throws otherwise). */
export function diffRuns(a: RoutedRun, b: RoutedRun): RunDiff {
  const first = a.routing[0] ?? b.routing[0];
  const other = b.routing[0] ?? first;
  if (first && other && (first.numExperts !== other.numExperts || first.topK !== other.topK)) {
    throw new Error('the runs come from models with different experts or top-k and cannot be compared cell by cell');
  }
  const positionsA = routedPositions(a);
  const positionsB = routedPositions(b);
  const T = Math.max(positionsA, positionsB);
  const byLayer = new Map(b.routing.map((l) => [l.layer, l]));
  const diff: RunDiff = { layers: [], changedCells: 0, changedTop1: 0, comparedCells: 0, positionsA, positionsB, tokenMismatch: 0 };
  for (const la of a.routing) {
    const change = new Float32Array(T).fill(NaN);
    const top1Changed = new Uint8Array(T);
    const layer: LayerDiff = { layer: la.layer, change, top1Changed, changedCells: 0, comparedCells: 0, top1Swaps: [] };
    diff.layers.push(layer);
    const lb = byLayer.get(la.layer);
    if (!lb) continue;
    const k = la.topK;
    const n = Math.min(la.filled, lb.filled);
    const swaps = new Map<number, number>();
    for (let p = 0; p < n; p++) {
      let shared = 0;
      for (let i = 0; i < k; i++) {
        const e = la.experts[p * k + i];
        for (let j = 0; j < k; j++) {
          if (lb.experts[p * k + j] === e) {
            shared++;
            break;
          }
        }
      }
      change[p] = (k - shared) / k;
      layer.comparedCells++;
      if (shared < k) layer.changedCells++;
      if (la.experts[p * k] !== lb.experts[p * k]) {
        top1Changed[p] = 1;
        diff.changedTop1++;
        const key = la.experts[p * k] * la.numExperts + lb.experts[p * k];
        swaps.set(key, (swaps.get(key) ?? 0) + 1);
      }
    }
    layer.top1Swaps = [...swaps.entries()]
      .map(([key, count]) => ({ from: Math.floor(key / la.numExperts), to: key % la.numExperts, count }))
      .sort((x, y) => y.count - x.count || x.from - y.from || x.to - y.to);
    diff.changedCells += layer.changedCells;
    diff.comparedCells += layer.comparedCells;
  }
  const compared = Math.min(positionsA, positionsB, a.tokens.length, b.tokens.length);
  for (let p = 0; p < compared; p++) if (a.tokens[p] !== b.tokens[p]) diff.tokenMismatch++;
  const next = nextTokenChange(a, b);
  if (next) diff.nextToken = next;
  return diff;
}

/** How the next-token distribution after the prompt moved from A to B (undefined when either lacks it). */
export function nextTokenChange(a: Pick<RoutedRun, 'nextTokens' | 'nextTokenProbs'>, b: Pick<RoutedRun, 'nextTokens' | 'nextTokenProbs'>): NextTokenChange | undefined {
  const pa = a.nextTokenProbs;
  const pb = b.nextTokenProbs;
  const exact = pa !== undefined && pb !== undefined && pa.length === pb.length;
  // The listed tokens: each run's most likely ones (from its full distribution when no list came with it).
  const listed = (run: Pick<RoutedRun, 'nextTokens' | 'nextTokenProbs'>): readonly NextToken[] | undefined =>
    run.nextTokens?.length ? run.nextTokens : exact ? topIndices(run.nextTokenProbs!, 10).map((token) => ({ token, text: '', prob: run.nextTokenProbs![token] })) : undefined;
  const listA = listed(a);
  const listB = listed(b);
  if (!listA || !listB) return undefined;
  const rows = new Map<number, NextTokenChange['rows'][number]>();
  for (const [list, side] of [[listA, 'A'], [listB, 'B']] as const) {
    for (const t of list) {
      const row = rows.get(t.token) ?? { token: t.token, text: t.text, probA: exact ? pa[t.token] : undefined, probB: exact ? pb[t.token] : undefined, delta: 0 };
      if (!row.text) row.text = t.text;
      if (side === 'A') row.probA = t.prob;
      else row.probB = t.prob;
      rows.set(t.token, row);
    }
  }
  let listedVariation = 0;
  for (const row of rows.values()) {
    row.delta = (row.probB ?? 0) - (row.probA ?? 0);
    listedVariation += Math.abs(row.delta);
  }
  const sorted = [...rows.values()].sort((x, y) => Math.abs(y.delta) - Math.abs(x.delta) || x.token - y.token);
  if (exact) {
    return { rows: sorted, totalVariation: totalVariation(pa, pb), exact, klAtoB: klDivergence(pa, pb), top1Changed: argmax(pa) !== argmax(pb) };
  }
  return { rows: sorted, totalVariation: listedVariation / 2, exact, top1Changed: listA[0].token !== listB[0].token };
}

const percent = (x: number): string => `${(100 * x).toFixed(1)}%`;

/** The routing part of a comparison in one line, worded the same in the notification and the panel. */
export function describeRunDiff(d: RunDiff): string {
  const parts = [
    `${d.changedCells} of ${d.comparedCells} cells route to a different expert set` +
      (d.comparedCells ? ` (${percent(d.changedCells / d.comparedCells)})` : ''),
    `top-1 changed in ${d.changedTop1}`,
  ];
  if (d.positionsA !== d.positionsB) {
    const [shorter, longer] = d.positionsA < d.positionsB ? ['A', 'B'] : ['B', 'A'];
    const from = Math.min(d.positionsA, d.positionsB);
    const to = Math.max(d.positionsA, d.positionsB) - 1;
    parts.push(`positions ${from}${to > from ? `–${to}` : ''} exist only in ${longer} (${shorter} is shorter) and are not compared`);
  }
  if (d.tokenMismatch) parts.push(`${d.tokenMismatch} compared positions hold different tokens`);
  return parts.join('; ');
}

/** Probability moves smaller than this (0.05 percentage points) are not listed as changes. */
export const NEXT_TOKEN_CHANGE_FLOOR = 5e-4;

/** The listed next tokens whose probability moved by at least `floor`, largest move first. */
export function changedNextTokens(n: NextTokenChange, floor = NEXT_TOKEN_CHANGE_FLOOR): NextTokenChange['rows'] {
  return n.rows.filter((r) => Math.abs(r.delta) >= floor);
}

/** The next-token part of a comparison in one line; "unchanged" when no listed token moved by 0.05 points. */
export function describeNextTokenChange(n: NextTokenChange): string {
  const kl = n.klAtoB !== undefined ? `, KL(A‖B) ${n.klAtoB.toFixed(3)} nats` : '';
  const tv = `total variation ${n.exact ? '' : '≥ '}${n.totalVariation.toFixed(3)}`;
  if (!n.top1Changed && n.totalVariation < NEXT_TOKEN_CHANGE_FLOOR && changedNextTokens(n).length === 0) {
    return `next-token distribution: unchanged (${tv}${kl})`;
  }
  return `next-token distribution: ${tv}${kl}${n.top1Changed ? ', most likely token changed' : ''}`;
}
