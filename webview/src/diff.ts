// Differences between two runs of the same model (pure; no DOM): which cells changed experts, and how the
// next-token distribution moved. Used by compare mode and by the patched re-run's diff.
import type { RunInfo } from './protocol';
import type { RunRouting } from './runData';

export interface RoutingDiff {
  /** Per grid row of `a` (its MoE layers): [positions] fraction of the top-k set replaced (0..1), NaN where
   *  either run has no routing at that position. */
  change: Float32Array[];
  /** Per grid row: positions whose top-1 expert differs. */
  top1Changed: Uint8Array[];
  /** Cells (layer, position) whose top-k expert set differs (order ignored). */
  changedCells: number;
  /** Cells whose top-1 expert differs. */
  changedTop1: number;
  /** Cells compared (filled in both). */
  comparedCells: number;
  /** Positions where the two runs have different tokens (e.g. generation diverged). */
  tokenMismatch: number;
  rowVersion: number[];
}

/** Cell-by-cell difference of b against a; rows are matched by layer index, positions by index. */
export function diffRouting(a: RunRouting, b: RunRouting): RoutingDiff {
  const k = Math.min(a.k, b.k);
  const diff: RoutingDiff = { change: [], top1Changed: [], changedCells: 0, changedTop1: 0, comparedCells: 0, tokenMismatch: 0, rowVersion: [] };
  const T = Math.max(a.T, b.T);
  for (let p = 0; p < Math.min(a.T, b.T); p++) if (a.info.tokens[p] !== b.info.tokens[p]) diff.tokenMismatch++;
  for (let row = 0; row < a.layers.length; row++) {
    const change = new Float32Array(T).fill(NaN);
    const top1 = new Uint8Array(T);
    const rowB = b.rowOfLayer(a.layers[row]);
    diff.change.push(change);
    diff.top1Changed.push(top1);
    diff.rowVersion.push(a.rowVersion[row] * 65536 + (rowB === undefined ? 0 : b.rowVersion[rowB]));
    if (rowB === undefined) continue;
    const n = Math.min(a.filled[row], b.filled[rowB]);
    const ea = a.experts[row];
    const eb = b.experts[rowB];
    for (let p = 0; p < n; p++) {
      let shared = 0;
      for (let i = 0; i < k; i++) {
        const e = ea[p * a.k + i];
        for (let j = 0; j < k; j++) if (eb[p * b.k + j] === e) { shared++; break; }
      }
      const replaced = (k - shared) / k;
      change[p] = replaced;
      diff.comparedCells++;
      if (replaced > 0) diff.changedCells++;
      if (ea[p * a.k] !== eb[p * b.k]) {
        top1[p] = 1;
        diff.changedTop1++;
      }
    }
  }
  return diff;
}

export interface NextTokenChange {
  rows: { token: number; text: string; probA: number | undefined; probB: number | undefined; delta: number }[];
  /** Total variation distance over the listed tokens (a lower bound of the full distance: tails are not sent). */
  totalVariation: number;
  top1Changed: boolean;
}

/** Union of both runs' top next tokens, largest |Δp| first; a token missing from a list counts as 0 there. */
export function nextTokenChange(a: RunInfo['nextTokens'], b: RunInfo['nextTokens']): NextTokenChange | undefined {
  if (!a?.length || !b?.length) return undefined;
  const byToken = new Map<number, NextTokenChange['rows'][number]>();
  for (const t of a) byToken.set(t.token, { token: t.token, text: t.text, probA: t.prob, probB: undefined, delta: 0 });
  for (const t of b) {
    const row = byToken.get(t.token) ?? { token: t.token, text: t.text, probA: undefined, probB: undefined, delta: 0 };
    row.probB = t.prob;
    byToken.set(t.token, row);
  }
  let tv = 0;
  for (const row of byToken.values()) {
    row.delta = (row.probB ?? 0) - (row.probA ?? 0);
    tv += Math.abs(row.delta);
  }
  const rows = [...byToken.values()].sort((x, y) => Math.abs(y.delta) - Math.abs(x.delta) || x.token - y.token);
  return { rows, totalVariation: tv / 2, top1Changed: a[0].token !== b[0].token };
}
