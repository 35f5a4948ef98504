// Routing math, written once for every front end: softmax, entropy (always in nats; a view that colours by it
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
