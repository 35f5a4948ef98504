// Pure numerics of the adaptation methods (no engine): vectors, neighbourhoods, Gaussian kernel, kernel regression,
// mean-shift and the α grid. See /shared/spec/c3po.md (the C3PO paper's definitions). Softmax and top-n selection
// are the routing math's (common/src/math.ts).

import type { Vec } from '../../../common/src/math';

export type { Vec };

export function dot(a: Vec, b: Vec): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

export function norm(a: Vec): number {
  return Math.sqrt(dot(a, a));
}

/** a / ||a||; a zero vector stays zero. */
export function l2normalize(a: Vec): Float32Array {
  const n = norm(a);
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = n > 0 ? a[i] / n : 0;
  return out;
}

export function squaredDistance(a: Vec, b: Vec): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    s += d * d;
  }
  return s;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((x, y) => x - y);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export interface NeighbourOptions {
  /** 'knn': the k most similar; 'epsilon': every item with cosine similarity >= epsilon. */
  mode: 'knn' | 'epsilon';
  k: number;
  epsilon: number;
  /**
   * Which items are dropped as duplicates of the query: those more similar than dedupThreshold ('similarity', the
   * paper's 0.95 cut, meant for text embedders), those whose question text equals `question` ('exact-question':
   * questions[index], trimmed, whitespace collapsed, case folded), or none.
   */
  dedup: 'similarity' | 'exact-question' | 'none';
  dedupThreshold: number;
  question?: string;
  questions?: readonly string[];
  /** 'median' = the median of the neighbours' distances, or a fixed positive bandwidth. */
  sigma: 'median' | number;
  /** Items never to use (e.g. the query itself when it is in the reference set). */
  exclude?: ReadonlySet<number>;
}

export interface Neighbour {
  index: number;          // row in the reference set
  similarity: number;     // cosine
  distance: number;       // Euclidean distance between the normalised embeddings
  weight: number;         // Gaussian kernel value K = exp(-d² / (2σ²)), before normalisation
}

export interface Neighbourhood {
  neighbours: Neighbour[];
  sigma: number;
  dropped: number[];      // near-duplicates removed
}

/**
 * Neighbours of a query among reference embeddings, by cosine similarity on L2-normalised vectors (both sides are
 * normalised here), duplicates of the query dropped (NeighbourOptions.dedup), weighted by a Gaussian kernel of the
 * Euclidean distance. σ = median of the neighbours' distances by default; when that is 0 (all at distance 0) every
 * weight is 1.
 */
export function findNeighbours(query: Vec, references: readonly Vec[], o: NeighbourOptions): Neighbourhood {
  const q = l2normalize(query);
  const scored: { index: number; similarity: number }[] = [];
  const dropped: number[] = [];
  const sameText = (a: string, b: string): boolean => normaliseQuestion(a) === normaliseQuestion(b);
  if (o.dedup === 'exact-question' && (o.question === undefined || !o.questions)) throw new Error('exact-question dedup needs the question texts');
  references.forEach((ref, index) => {
    if (o.exclude?.has(index)) return;
    const similarity = dot(q, l2normalize(ref));
    const duplicate =
      o.dedup === 'similarity' ? similarity > o.dedupThreshold : o.dedup === 'exact-question' ? sameText(o.question!, o.questions![index]) : false;
    if (duplicate) dropped.push(index);
    else scored.push({ index, similarity });
  });
  scored.sort((a, b) => b.similarity - a.similarity || a.index - b.index);
  const chosen = o.mode === 'knn' ? scored.slice(0, Math.max(0, o.k)) : scored.filter((s) => s.similarity >= o.epsilon);
  // ||a - b||² = 2 - 2 cos for unit vectors
  const withDistance = chosen.map((s) => ({ ...s, distance: Math.sqrt(Math.max(0, 2 - 2 * s.similarity)) }));
  const sigma = o.sigma === 'median' ? median(withDistance.map((n) => n.distance)) : o.sigma;
  const neighbours = withDistance.map((n) => ({ ...n, weight: gaussianKernel(n.distance, sigma) }));
  return { neighbours, sigma: Number.isFinite(sigma) ? sigma : 0, dropped };
}

/** A question as compared for exact duplicates: trimmed, runs of whitespace as one space, case folded. */
export function normaliseQuestion(text: string): string {
  return text.trim().replace(/\s+/g, ' ').toLowerCase();
}

/** exp(-d² / (2σ²)); σ <= 0 (degenerate bandwidth) gives 1 for every distance. */
export function gaussianKernel(distance: number, sigma: number): number {
  if (!(sigma > 0)) return 1;
  return Math.exp(-(distance * distance) / (2 * sigma * sigma));
}

/** Σ w_i v_i / Σ w_i. */
export function weightedMean(vectors: readonly Vec[], weights: readonly number[]): Float32Array {
  if (vectors.length === 0) throw new Error('weightedMean: no vectors');
  const out = new Float64Array(vectors[0].length);
  let total = 0;
  vectors.forEach((v, i) => {
    total += weights[i];
    for (let j = 0; j < out.length; j++) out[j] += weights[i] * v[j];
  });
  if (!(total > 0)) throw new Error('weightedMean: the weights sum to zero');
  return Float32Array.from(out, (x) => x / total);
}

/** α a + (1 − α) b. */
export function interpolate(a: Vec, b: Vec, alpha: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = alpha * a[i] + (1 - alpha) * b[i];
  return out;
}

/** {0, step, 2·step, …, 1}. */
export function alphaGrid(step = 0.1): number[] {
  const n = Math.round(1 / step);
  return Array.from({ length: n + 1 }, (_, i) => Number((i / n).toFixed(10)));
}

/** The grid value minimising `loss` (the first one on ties), with every value tried. */
export async function searchAlpha(
  grid: readonly number[],
  loss: (alpha: number) => Promise<number>,
): Promise<{ alpha: number; loss: number; tried: { alpha: number; loss: number }[] }> {
  const tried: { alpha: number; loss: number }[] = [];
  let best = { alpha: grid[0], loss: Infinity };
  for (const alpha of grid) {
    const value = await loss(alpha);
    tried.push({ alpha, loss: value });
    if (value < best.loss) best = { alpha, loss: value };
  }
  return { ...best, tried };
}

export interface MeanShiftOptions {
  k: number;                    // neighbours in ω-space per iteration
  iterations: number;
  sigma: 'median' | number;
}

/**
 * Mode finding (C3PO "mode finding"): mean-shift in ω-space. Starting at `start`, repeatedly move to the
 * Gaussian-kernel-weighted mean of the k nearest reference pathways (Euclidean in ω-space).
 */
export function meanShift(start: Vec, points: readonly Vec[], o: MeanShiftOptions): { mode: Float32Array; trajectory: number[] } {
  let current: Float32Array = Float32Array.from(start);
  const trajectory: number[] = [];
  for (let it = 0; it < o.iterations && points.length > 0; it++) {
    const ranked = points
      .map((p, index) => ({ index, distance: Math.sqrt(squaredDistance(current, p)) }))
      .sort((a, b) => a.distance - b.distance || a.index - b.index)
      .slice(0, Math.max(1, o.k));
    const sigma = o.sigma === 'median' ? median(ranked.map((r) => r.distance)) : o.sigma;
    const weights = ranked.map((r) => gaussianKernel(r.distance, sigma));
    const next = weightedMean(ranked.map((r) => points[r.index]), weights);
    trajectory.push(Math.sqrt(squaredDistance(current, next)));
    current = next;
  }
  return { mode: current, trajectory };
}
