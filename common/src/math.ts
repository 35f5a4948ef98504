// Routing math, written once for every front end: softmax, entropy (always in nats; "÷ ln E" where a view
// normalises it), distances between two distributions and top-n selection.

export type Vec = ArrayLike<number>;

/** softmax(logits[offset .. offset + out.length)) written into `out`, computed stably; returns `out`. */
export function softmaxInto<T extends Float32Array | Float64Array>(out: T, logits: Vec, offset = 0): T {
  const n = out.length;
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (logits[offset + i] > max) max = logits[offset + i];
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const p = Math.exp(logits[offset + i] - max);
    out[i] = p;
    sum += p;
  }
  for (let i = 0; i < n; i++) out[i] /= sum;
  return out;
}

/** How a router turns logits into the scores its weights come from (the engine's ModelInfo.router_scoring). */
export type RouterScoring = 'softmax' | 'sigmoid' | 'sparsemixer';

/** The router's scores as shares of their sum: softmax probabilities, or sigmoid scores / their sum for sigmoid
 * routers (whose per-expert scores are not a distribution); what router entropy and mean shares are taken over.
 * Sparsemixer (PhiMoE): softmax(z), the distribution each of its slots cuts a softmax from. */
export function scoreSharesInto<T extends Float32Array | Float64Array>(out: T, logits: Vec, offset: number, scoring: RouterScoring): T {
  if (scoring !== 'sigmoid') return softmaxInto(out, logits, offset);
  const n = out.length;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += out[i] = 1 / (1 + Math.exp(-logits[offset + i]));
  for (let i = 0; i < n; i++) out[i] = sum > 0 ? out[i] / sum : 1 / n;
  return out;
}

/** Shannon entropy (nats) of a distribution. */
export function entropyOf(p: ArrayLike<number>): number {
  let h = 0;
  for (let i = 0; i < p.length; i++) if (p[i] > 0) h -= p[i] * Math.log(p[i]);
  return Math.max(0, h);
}

/** softmax of a whole vector, as float32. */
export function softmax(logits: Vec): Float32Array {
  return softmaxInto(new Float32Array(logits.length), logits);
}

/**
 * Router entropy in nats of softmax(logits[offset .. offset + n)): H = log Z − E_p[x − max], one stable pass
 * without forming the probabilities. 0 = one expert takes everything, ln n = uniform.
 */
export function softmaxEntropy(logits: Vec, offset: number, n: number): number {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (logits[offset + i] > max) max = logits[offset + i];
  if (max === -Infinity) return 0;
  let z = 0;
  let s = 0;
  for (let i = 0; i < n; i++) {
    const x = logits[offset + i] - max;
    if (x === -Infinity) continue;
    const ex = Math.exp(x);
    z += ex;
    s += ex * x;
  }
  return Math.max(0, Math.log(z) - s / z);
}

/** log Σ exp(x), computed stably. */
export function logSumExp(logits: Vec): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  if (max === -Infinity) return max;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return max + Math.log(sum);
}

/** Shannon entropy in nats of a probability vector. */
export function entropy(p: Vec): number {
  let h = 0;
  for (let i = 0; i < p.length; i++) if (p[i] > 0) h -= p[i] * Math.log(p[i]);
  return h;
}

/** ½ Σ |p − q|. */
export function totalVariation(p: Vec, q: Vec): number {
  let s = 0;
  for (let i = 0; i < p.length; i++) s += Math.abs(p[i] - q[i]);
  return s / 2;
}

/** KL(p ‖ q) in nats; q is floored at 1e-12 so a zero where p has mass stays finite. */
export function klDivergence(p: Vec, q: Vec): number {
  let s = 0;
  for (let i = 0; i < p.length; i++) if (p[i] > 0) s += p[i] * Math.log(p[i] / Math.max(q[i], 1e-12));
  return s;
}

/** Index of the largest value (the first on ties). */
export function argmax(values: Vec): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** Indices of the n largest values, largest first (ties: lower index). */
export function topIndices(values: Vec, n: number): number[] {
  return Array.from({ length: values.length }, (_, i) => i)
    .sort((a, b) => values[b] - values[a] || a - b)
    .slice(0, n);
}

/** The router's scores from its raw logits: a softmax distribution, or a sigmoid per expert (DeepSeek-V3, GLM-4.5):
 * the ω C3PO re-mixes and a mix row replaces. */
export function routerScores(scoring: RouterScoring, logits: Vec): Float32Array {
  if (scoring !== 'sigmoid') return softmax(logits);
  const out = new Float32Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = 1 / (1 + Math.exp(-logits[i]));
  return out;
}
