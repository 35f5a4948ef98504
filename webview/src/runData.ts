// A run's routing as the webview keeps it: per MoE layer (one grid row each), growable typed arrays filled by
// streamed chunks, plus the per-cell values the grid colours by (top-1 expert, top-1 weight, normalised router
// entropy) and per-layer expert load, computed once when a chunk arrives so drawing never touches the logits.
// Pure (no DOM): unit-tested in test/unit/webview-data.test.ts.
import type { LayerChunk, RunInfo } from './protocol';

export interface LayerStats {
  /** Mean normalised router entropy over filled positions (0 = always one expert, 1 = uniform). */
  meanEntropy: number;
  /** Coefficient of variation of the per-expert token counts (0 = perfectly balanced). */
  loadCv: number;
  /** Busiest expert's share of selections ÷ the uniform share k/E (1 = balanced). */
  maxOverMean: number;
  /** Experts no token selected. */
  unused: number;
}

export class RunRouting {
  readonly info: RunInfo;
  readonly E: number;
  readonly k: number;
  /** MoE layer index of each grid row, ascending. */
  readonly layers: number[];
  private readonly rowOf = new Map<number, number>();
  private capacity: number;
  routerLogits: Float32Array[];
  experts: Int32Array[];
  weights: Float32Array[];
  /** Per cell [row][position]: top-1 expert (-1 = not filled yet), its weight, normalised entropy. */
  top1: Int32Array[];
  top1Weight: Float32Array[];
  entropy: Float32Array[];
  /** Positions filled per row (streaming fills a prefix; later chunks may replace rows). */
  filled: number[];
  /** Per row [E]: how many positions selected each expert (any of the top-k), and the sum of their weights. */
  load: Float64Array[];
  loadWeight: Float64Array[];
  /** Bumped per row on every change: caches (downsampling, diff) key on it. */
  rowVersion: number[];
  version = 0;

  constructor(info: RunInfo) {
    this.info = info;
    this.E = info.model.numExperts;
    this.k = info.model.topK;
    this.layers = [...info.model.moeLayers].sort((a, b) => a - b);
    this.layers.forEach((layer, row) => this.rowOf.set(layer, row));
    this.capacity = Math.max(16, info.tokens.length);
    const L = this.layers.length;
    const make = <T>(f: () => T): T[] => Array.from({ length: L }, f);
    this.routerLogits = make(() => new Float32Array(this.capacity * this.E));
    this.experts = make(() => new Int32Array(this.capacity * this.k));
    this.weights = make(() => new Float32Array(this.capacity * this.k));
    this.top1 = make(() => new Int32Array(this.capacity).fill(-1));
    this.top1Weight = make(() => new Float32Array(this.capacity));
    this.entropy = make(() => new Float32Array(this.capacity));
    this.filled = make(() => 0);
    this.load = make(() => new Float64Array(this.E));
    this.loadWeight = make(() => new Float64Array(this.E));
    this.rowVersion = make(() => 0);
  }

  get id(): number {
    return this.info.id;
  }
  /** Tokens known so far (generation appends). */
  get T(): number {
    return this.info.tokens.length;
  }
  rowOfLayer(layer: number): number | undefined {
    return this.rowOf.get(layer);
  }
  /** Rows with at least one filled position. */
  get layersArrived(): number {
    return this.filled.filter((f) => f > 0).length;
  }

  private grow(to: number): void {
    if (to <= this.capacity) return;
    const cap = Math.max(to, this.capacity * 2);
    const growF = (a: Float32Array, per: number) => { const b = new Float32Array(cap * per); b.set(a); return b; };
    const growI = (a: Int32Array, per: number, fill = 0) => { const b = new Int32Array(cap * per).fill(fill); b.set(a); return b; };
    this.routerLogits = this.routerLogits.map((a) => growF(a, this.E));
    this.experts = this.experts.map((a) => growI(a, this.k));
    this.weights = this.weights.map((a) => growF(a, this.k));
    this.top1 = this.top1.map((a) => growI(a, 1, -1));
    this.top1Weight = this.top1Weight.map((a) => growF(a, 1));
    this.entropy = this.entropy.map((a) => growF(a, 1));
    this.capacity = cap;
  }

  appendTokens(from: number, tokens: number[], tokenText: string[]): void {
    this.info.tokens.splice(from, tokens.length, ...tokens);
    this.info.tokenText.splice(from, tokenText.length, ...tokenText);
    this.grow(this.info.tokens.length);
    this.version++;
  }

  /** Stores a chunk and derives its cells; returns the grid row it filled (undefined: not a MoE layer of this run). */
  addChunk(chunk: LayerChunk): number | undefined {
    const row = this.rowOf.get(chunk.layer);
    if (row === undefined || chunk.numExperts !== this.E || chunk.topK !== this.k) return undefined;
    const { start, count } = chunk;
    const E = this.E;
    const k = this.k;
    if (start + count > this.info.tokens.length) {
      // Routing ahead of the token list (generation streams routing first): pad with unknown tokens.
      while (this.info.tokens.length < start + count) {
        this.info.tokens.push(-1);
        this.info.tokenText.push('');
      }
    }
    this.grow(start + count);
    this.routerLogits[row].set(chunk.routerLogits, start * E);
    this.experts[row].set(chunk.experts, start * k);
    this.weights[row].set(chunk.weights, start * k);
    const top1 = this.top1[row];
    const w1 = this.top1Weight[row];
    const ent = this.entropy[row];
    const logE = Math.log(E);
    const logits = chunk.routerLogits;
    for (let i = 0; i < count; i++) {
      top1[start + i] = chunk.experts[i * k];
      w1[start + i] = chunk.weights[i * k];
      ent[start + i] = E > 1 ? softmaxEntropy(logits, i * E, E) / logE : 0;
    }
    this.filled[row] = Math.max(this.filled[row], start + count);
    this.recountLoad(row);
    this.rowVersion[row]++;
    this.version++;
    return row;
  }

  private recountLoad(row: number): void {
    const load = this.load[row].fill(0);
    const lw = this.loadWeight[row].fill(0);
    const ex = this.experts[row];
    const w = this.weights[row];
    const n = this.filled[row] * this.k;
    for (let i = 0; i < n; i++) {
      const e = ex[i];
      if (e >= 0 && e < this.E) {
        load[e]++;
        lw[e] += w[i];
      }
    }
  }

  /** Share of the filled positions whose top-k includes expert e, per row: [L * E], row-major. */
  loadShare(): Float32Array {
    const L = this.layers.length;
    const out = new Float32Array(L * this.E);
    for (let r = 0; r < L; r++) {
      const n = this.filled[r];
      if (!n) continue;
      for (let e = 0; e < this.E; e++) out[r * this.E + e] = this.load[r][e] / n;
    }
    return out;
  }

  layerStats(row: number): LayerStats | undefined {
    const n = this.filled[row];
    if (!n) return undefined;
    let sumEnt = 0;
    const ent = this.entropy[row];
    for (let i = 0; i < n; i++) sumEnt += ent[i];
    const load = this.load[row];
    const mean = (n * this.k) / this.E;
    let varSum = 0;
    let max = 0;
    let unused = 0;
    for (let e = 0; e < this.E; e++) {
      varSum += (load[e] - mean) ** 2;
      max = Math.max(max, load[e]);
      if (load[e] === 0) unused++;
    }
    return {
      meanEntropy: sumEnt / n,
      loadCv: mean > 0 ? Math.sqrt(varSum / this.E) / mean : 0,
      maxOverMean: mean > 0 ? max / mean : 0,
      unused,
    };
  }

  /** Softmax probabilities of the raw router logits at (row, position): [E]. */
  routerProbs(row: number, position: number): Float32Array {
    const out = new Float32Array(this.E);
    const logits = this.routerLogits[row];
    const o = position * this.E;
    let max = -Infinity;
    for (let e = 0; e < this.E; e++) max = Math.max(max, logits[o + e]);
    let sum = 0;
    for (let e = 0; e < this.E; e++) sum += out[e] = Math.exp(logits[o + e] - max);
    for (let e = 0; e < this.E; e++) out[e] /= sum;
    return out;
  }

  /** Top-k (expert, weight) at a cell; empty when not filled yet. */
  cell(row: number, position: number): { expert: number; weight: number }[] {
    if (position >= this.filled[row]) return [];
    const out = [];
    for (let j = 0; j < this.k; j++) out.push({ expert: this.experts[row][position * this.k + j], weight: this.weights[row][position * this.k + j] });
    return out;
  }
}

/** Shannon entropy (nats) of softmax(logits[o .. o+n)), computed stably. */
export function softmaxEntropy(logits: ArrayLike<number>, o: number, n: number): number {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (logits[o + i] > max) max = logits[o + i];
  if (max === -Infinity) return 0;
  let z = 0;
  let s = 0;
  for (let i = 0; i < n; i++) {
    const x = logits[o + i] - max;
    if (x === -Infinity) continue;
    const ex = Math.exp(x);
    z += ex;
    s += ex * x;
  }
  // H = log z - E[x]
  return Math.max(0, Math.log(z) - s / z);
}
