// Summaries of a run's routing (pure functions over runs/run.ts): per-layer expert load, mean weight, share of
// tokens, router entropy and load balance; and the difference between two runs. Entropies are in nats.
import type { LayerRouting, Run } from './run';

export interface ExpertStats {
  /** Number of (token, slot) assignments to the expert. */
  load: number;
  /** Mean mixing weight over those assignments (0 when never selected). */
  meanWeight: number;
  /** Fraction of tokens that have the expert among their top-k. */
  share: number;
  /** Mean router probability softmax(router_logits)[e] over tokens. */
  meanProb: number;
}

export interface LayerStats {
  layer: number;
  tokens: number;
  experts: ExpertStats[];
  /** [T] entropy of softmax(router logits) per token. */
  entropy: Float32Array;
  meanEntropy: number;
  /** [T] weight of the top-1 expert per token. */
  top1Weight: Float32Array;
  meanTop1Weight: number;
  /** Coefficient of variation (std / mean) of expert loads; 0 = perfectly even. */
  loadCv: number;
  /** Switch Transformer balance E · Σ_i f_i · P_i (f_i = share of assignments, P_i = mean probability); 1 = even. */
  switchBalance: number;
  /** Experts never selected in this layer. */
  unusedExperts: number;
}

export function softmaxRow(logits: Float32Array, offset: number, E: number, out = new Float64Array(E)): Float64Array {
  let max = -Infinity;
  for (let e = 0; e < E; e++) if (logits[offset + e] > max) max = logits[offset + e];
  let sum = 0;
  for (let e = 0; e < E; e++) {
    const p = Math.exp(logits[offset + e] - max);
    out[e] = p;
    sum += p;
  }
  for (let e = 0; e < E; e++) out[e] /= sum;
  return out;
}

export function entropy(p: ArrayLike<number>): number {
  let h = 0;
  for (let i = 0; i < p.length; i++) if (p[i] > 0) h -= p[i] * Math.log(p[i]);
  return h;
}

/** Statistics of one layer over its filled rows (or the first `tokens` rows). */
export function layerStats(routing: LayerRouting, numExperts: number, topK: number, tokens = routing.filled): LayerStats {
  const E = numExperts;
  const k = topK;
  const T = Math.min(tokens, routing.filled);
  const load = new Float64Array(E);
  const weightSum = new Float64Array(E);
  const tokenCount = new Float64Array(E);
  const probSum = new Float64Array(E);
  const ent = new Float32Array(T);
  const top1 = new Float32Array(T);
  const p = new Float64Array(E);
  const seen = new Uint8Array(E);
  for (let t = 0; t < T; t++) {
    softmaxRow(routing.routerLogits, t * E, E, p);
    ent[t] = entropy(p);
    for (let e = 0; e < E; e++) probSum[e] += p[e];
    seen.fill(0);
    for (let s = 0; s < k; s++) {
      const e = routing.experts[t * k + s];
      if (e < 0 || e >= E) continue;
      load[e] += 1;
      weightSum[e] += routing.weights[t * k + s];
      if (!seen[e]) {
        seen[e] = 1;
        tokenCount[e] += 1;
      }
    }
    top1[t] = routing.weights[t * k];
  }
  const experts: ExpertStats[] = [];
  let meanLoad = 0;
  for (let e = 0; e < E; e++) meanLoad += load[e] / E;
  let variance = 0;
  let balance = 0;
  const assignments = T * k;
  for (let e = 0; e < E; e++) {
    experts.push({
      load: load[e],
      meanWeight: load[e] > 0 ? weightSum[e] / load[e] : 0,
      share: T > 0 ? tokenCount[e] / T : 0,
      meanProb: T > 0 ? probSum[e] / T : 0,
    });
    variance += (load[e] - meanLoad) ** 2 / E;
    if (assignments > 0 && T > 0) balance += (load[e] / assignments) * (probSum[e] / T);
  }
  return {
    layer: routing.layer,
    tokens: T,
    experts,
    entropy: ent,
    meanEntropy: T > 0 ? mean(ent) : 0,
    top1Weight: top1,
    meanTop1Weight: T > 0 ? mean(top1) : 0,
    loadCv: meanLoad > 0 ? Math.sqrt(variance) / meanLoad : 0,
    switchBalance: E * balance,
    unusedExperts: experts.filter((x) => x.load === 0).length,
  };
}

function mean(values: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i];
  return s / values.length;
}

/** Statistics of every MoE layer of a run, layers ascending. */
export function runStats(run: Run): LayerStats[] {
  return [...run.layers.values()]
    .sort((a, b) => a.layer - b.layer)
    .map((routing) => layerStats(routing, run.model.numExperts, run.model.topK));
}

export interface LayerDiff {
  layer: number;
  /** [T] 1 where the set of selected experts differs at that position. */
  changed: Uint8Array;
  /** [T] 1 where the top-1 expert differs. */
  top1Changed: Uint8Array;
  changedCount: number;
}

export interface RunDiff {
  /** Positions compared: the common prefix of both runs' tokens (and routed rows). */
  tokens: number;
  layers: LayerDiff[];
  changedCells: number;
  totalCells: number;
  /** Change of the next-token distribution after the prompt, when both runs have it. */
  nextToken?: { totalVariation: number; klAtoB: number; topA: number; topB: number };
}

/** Cells (layer, position) whose selected expert sets differ between runs `a` and `b` of the same model. */
export function diffRuns(a: Run, b: Run): RunDiff {
  if (a.model.numExperts !== b.model.numExperts || a.model.topK !== b.model.topK) {
    throw new Error(`runs ${a.id} and ${b.id} come from models with different experts or top-k and cannot be compared cell by cell`);
  }
  let tokens = 0;
  while (tokens < a.tokens.length && tokens < b.tokens.length && a.tokens[tokens] === b.tokens[tokens]) tokens++;
  const k = a.model.topK;
  const layers: LayerDiff[] = [];
  let changedCells = 0;
  let totalCells = 0;
  for (const la of [...a.layers.values()].sort((x, y) => x.layer - y.layer)) {
    const lb = b.layers.get(la.layer);
    if (!lb) continue;
    const T = Math.min(tokens, la.filled, lb.filled);
    const changed = new Uint8Array(T);
    const top1Changed = new Uint8Array(T);
    let count = 0;
    for (let t = 0; t < T; t++) {
      if (!sameSet(la.experts, lb.experts, t * k, k)) {
        changed[t] = 1;
        count++;
      }
      if (la.experts[t * k] !== lb.experts[t * k]) top1Changed[t] = 1;
    }
    layers.push({ layer: la.layer, changed, top1Changed, changedCount: count });
    changedCells += count;
    totalCells += T;
  }
  const out: RunDiff = { tokens, layers, changedCells, totalCells };
  if (a.nextTokenProbs && b.nextTokenProbs && a.nextTokenProbs.length === b.nextTokenProbs.length && a.promptTokens === b.promptTokens) {
    out.nextToken = {
      totalVariation: totalVariation(a.nextTokenProbs, b.nextTokenProbs),
      klAtoB: klDivergence(a.nextTokenProbs, b.nextTokenProbs),
      topA: argmax(a.nextTokenProbs),
      topB: argmax(b.nextTokenProbs),
    };
  }
  return out;
}

function sameSet(x: Int32Array, y: Int32Array, offset: number, k: number): boolean {
  for (let i = 0; i < k; i++) {
    let found = false;
    for (let j = 0; j < k; j++) if (x[offset + i] === y[offset + j]) found = true;
    if (!found) return false;
  }
  return true;
}

/** ½ Σ |p − q|. */
export function totalVariation(p: ArrayLike<number>, q: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < p.length; i++) s += Math.abs(p[i] - q[i]);
  return s / 2;
}

/** KL(p ‖ q) in nats; q is floored at 1e-12 so a zero where p has mass stays finite. */
export function klDivergence(p: ArrayLike<number>, q: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < p.length; i++) if (p[i] > 0) s += p[i] * Math.log(p[i] / Math.max(q[i], 1e-12));
  return s;
}

function argmax(p: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < p.length; i++) if (p[i] > p[best]) best = i;
  return best;
}
