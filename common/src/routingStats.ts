// Routing statistics over a set of prompts, aggregated as the engine streams routing spans — counts arrays and
// bounded top-k lists, never anything per token — so 10,000 prompts × 48 layers × 128 experts stay a few tens of
// megabytes. One implementation for the CLI (`routescope stats`) and the engine process behind the statistics panel,
// so both report the same numbers. What is counted, per MoE layer and expert:
//   activations: tokens whose top-k includes the expert, per group of prompts (activation rate = activations / tokens);
//   top-1: tokens whose highest-weighted expert it is; weight: the summed mixing weight when selected;
//   top tokens: the token ids routed to the expert most often (tokenSketch.ts: Space-Saving, exact while it fits);
//   top contexts: the (prompt, position) pairs where the expert got its largest mixing weight;
//   co-activation: tokens whose top-k includes both experts i and j (the diagonal = activations);
//   flow: tokens whose top-1 expert is i in one MoE layer and j in the next.
// Plus, per group and layer, the summed router entropy (nats), and the count of every token id in the set.
import { softmaxEntropy } from './math';
import type { RoutingSpan } from './routing';
import { TokenSketch, type TopToken } from './tokenSketch';

export interface StatsShape {
  /** MoE layers, ascending. */
  layers: number[];
  numExperts: number;
  topK: number;
  vocabSize: number;
}

export interface StatsOptions {
  /** Group names (e.g. skills or files); prompts are added with a group index. */
  groups: string[];
  /** Top-token slots per expert (default: the vocabulary when ≤ 1,024 — exact counts — else 256). */
  tokenSlots?: number;
  /** Top contexts kept per expert (default 8). */
  contexts?: number;
}

export interface GroupCounts {
  name: string;
  prompts: number;
  tokens: number;
  /** [L × E] tokens whose top-k includes the expert. */
  activations: Float64Array;
  /** [L × E] tokens whose top-1 is the expert. */
  top1: Float64Array;
  /** [L × E] summed mixing weight over the activations. */
  weight: Float64Array;
  /** [L] summed router entropy in nats. */
  entropy: Float64Array;
}

export interface ExpertContext {
  prompt: number;
  position: number;
  token: number;
  weight: number;
}

/** Everything a view or an export needs; plain data with typed arrays (crosses process boundaries as it is). */
export interface RoutingStatsResult {
  shape: StatsShape;
  groups: GroupCounts[];
  /** [L × E × E] co-activation counts over all groups. */
  coActivation: Float64Array;
  /** [(L − 1) × E × E] top-1 flow from layers[i] to layers[i + 1]. */
  flow: Float64Array;
  /** [V] occurrences of each token id in the set. */
  tokenCounts: Float64Array;
  /** [L × E × n] the top tokens of each expert (-1 = none), their counts and error bounds. */
  topTokens: { n: number; ids: Int32Array; counts: Float64Array; errors: Float64Array };
  /** [L × E × c] the top contexts of each expert (prompt -1 = none). */
  topContexts: { n: number; prompts: Int32Array; positions: Int32Array; tokens: Int32Array; weights: Float32Array };
  /** Prompts whose routing was counted, and those skipped (too long for the context, or no tokens). */
  prompts: number;
  skipped: number;
  tokenSlots: number;
}

export class RoutingStats {
  readonly shape: StatsShape;
  private readonly row = new Map<number, number>();
  private readonly L: number;
  private readonly E: number;
  readonly groups: GroupCounts[];
  private readonly coActivation: Float64Array;
  private readonly flow: Float64Array;
  private readonly tokenCounts: Float64Array;
  private readonly sketch: TokenSketch;
  private readonly contexts: number;
  private readonly ctxPrompt: Int32Array;
  private readonly ctxPosition: Int32Array;
  private readonly ctxToken: Int32Array;
  private readonly ctxWeight: Float32Array;
  private prompts = 0;
  private skipped = 0;
  /** The prompt being added: its routing (experts, weights per layer and position, -1 = not routed yet) and summed
   *  entropy per layer, kept until endPrompt counts it, so a prompt cancelled half-way counts nowhere. */
  private current: { index: number; group: GroupCounts; tokens: ArrayLike<number>; experts: Int32Array; weights: Float32Array; entropy: Float64Array } | undefined;
  private scratch = { experts: new Int32Array(0), weights: new Float32Array(0) };

  constructor(shape: StatsShape, options: StatsOptions) {
    this.shape = { ...shape, layers: [...shape.layers].sort((a, b) => a - b) };
    this.shape.layers.forEach((l, i) => this.row.set(l, i));
    const L = (this.L = this.shape.layers.length);
    const E = (this.E = shape.numExperts);
    this.groups = options.groups.map((name) => ({
      name, prompts: 0, tokens: 0,
      activations: new Float64Array(L * E), top1: new Float64Array(L * E), weight: new Float64Array(L * E), entropy: new Float64Array(L),
    }));
    this.coActivation = new Float64Array(L * E * E);
    this.flow = new Float64Array(Math.max(0, L - 1) * E * E);
    this.tokenCounts = new Float64Array(shape.vocabSize);
    this.sketch = new TokenSketch(L * E, options.tokenSlots ?? (shape.vocabSize <= 1024 ? shape.vocabSize : 256));
    this.contexts = options.contexts ?? 8;
    const c = L * E * this.contexts;
    this.ctxPrompt = new Int32Array(c).fill(-1);
    this.ctxPosition = new Int32Array(c);
    this.ctxToken = new Int32Array(c);
    this.ctxWeight = new Float32Array(c).fill(-Infinity);
  }

  /** Starts a prompt of `tokens` (its routing follows as spans), counted in group `group`. */
  beginPrompt(index: number, group: number, tokens: ArrayLike<number>): void {
    const g = this.groups[group];
    if (!g) throw new Error(`routing statistics: no group ${group}`);
    const n = this.L * tokens.length * this.shape.topK;
    if (this.scratch.experts.length < n) this.scratch = { experts: new Int32Array(n), weights: new Float32Array(n) };
    const experts = this.scratch.experts.subarray(0, n).fill(-1);
    const weights = this.scratch.weights.subarray(0, n);
    this.current = { index, group: g, tokens, experts, weights, entropy: new Float64Array(this.L) };
  }

  /** One streamed span of the current prompt (kept until endPrompt). */
  add(span: RoutingSpan): void {
    const cur = this.current;
    if (!cur) throw new Error('routing statistics: a span arrived outside a prompt');
    const r = this.row.get(span.layer);
    if (r === undefined) return;
    if (span.numExperts !== this.E || span.topK !== this.shape.topK) throw new Error(`routing statistics: layer ${span.layer} has ${span.numExperts} experts, top-${span.topK}; expected ${this.E}, top-${this.shape.topK}`);
    const k = span.topK;
    const T = cur.tokens.length;
    const count = Math.min(span.count, T - span.start);
    if (count <= 0) return;
    for (let i = 0; i < count; i++) cur.entropy[r] += softmaxEntropy(span.routerLogits, i * this.E, this.E);
    const at = (r * T + span.start) * k;
    cur.experts.set(span.experts.subarray(0, count * k), at);
    cur.weights.set(span.weights.subarray(0, count * k), at);
  }

  /** Drops the current prompt (cancelled half-way): nothing of it is counted. */
  abortPrompt(): void {
    this.current = undefined;
  }

  /** Counts the current prompt: its routing at every layer and position, its tokens and top-1 flow. */
  endPrompt(): void {
    const cur = this.current;
    if (!cur) return;
    this.current = undefined;
    const T = cur.tokens.length;
    const E = this.E;
    const k = this.shape.topK;
    const g = cur.group;
    g.prompts += 1;
    g.tokens += T;
    this.prompts += 1;
    for (let p = 0; p < T; p++) {
      const t = cur.tokens[p];
      if (t >= 0 && t < this.tokenCounts.length) this.tokenCounts[t] += 1;
    }
    const co = this.coActivation;
    for (let r = 0; r < this.L; r++) {
      g.entropy[r] += cur.entropy[r];
      const coBase = r * E * E;
      for (let p = 0; p < T; p++) {
        const at = (r * T + p) * k;
        const top = cur.experts[at];
        if (top < 0 || top >= E) continue;
        g.top1[r * E + top] += 1;
        const token = cur.tokens[p];
        for (let a = 0; a < k; a++) {
          const e = cur.experts[at + a];
          if (e < 0 || e >= E) continue;
          const w = cur.weights[at + a];
          g.activations[r * E + e] += 1;
          g.weight[r * E + e] += w;
          co[coBase + e * E + e] += 1;
          for (let b = a + 1; b < k; b++) {
            const f = cur.experts[at + b];
            if (f < 0 || f >= E || f === e) continue;
            co[coBase + e * E + f] += 1;
            co[coBase + f * E + e] += 1;
          }
          this.sketch.add(r * E + e, token);
          this.keepContext(r * E + e, cur.index, p, token, w);
        }
        if (r + 1 < this.L) {
          const next = cur.experts[((r + 1) * T + p) * k];
          if (next >= 0 && next < E) this.flow[(r * E + top) * E + next] += 1;
        }
      }
    }
  }

  /** A prompt that could not be run (too long, empty): counted as skipped. */
  skip(): void {
    this.skipped += 1;
  }

  /** The largest mixing weights of expert x (a flat index) with their contexts, a bounded list. */
  private keepContext(x: number, prompt: number, position: number, token: number, weight: number): void {
    const base = x * this.contexts;
    let min = base;
    for (let i = base + 1; i < base + this.contexts; i++) if (this.ctxWeight[i] < this.ctxWeight[min]) min = i;
    if (!(weight > this.ctxWeight[min])) return; // ties keep the earlier context
    this.ctxPrompt[min] = prompt;
    this.ctxPosition[min] = position;
    this.ctxToken[min] = token;
    this.ctxWeight[min] = weight;
  }

  /** Total activations of every (layer, expert) over all groups: [L × E]. */
  totalActivations(): Float64Array {
    const out = new Float64Array(this.L * this.E);
    for (const g of this.groups) for (let i = 0; i < out.length; i++) out[i] += g.activations[i];
    return out;
  }

  /** The statistics so far; `topTokens` / `contexts` bound the lists (default: all slots / all contexts). */
  result(topTokens = 32): RoutingStatsResult {
    const L = this.L;
    const E = this.E;
    const n = Math.min(topTokens, this.sketch.slots);
    const ids = new Int32Array(L * E * n).fill(-1);
    const counts = new Float64Array(L * E * n);
    const errors = new Float64Array(L * E * n);
    for (let x = 0; x < L * E; x++) {
      this.sketch.top(x, n).forEach((t: TopToken, i) => {
        ids[x * n + i] = t.token;
        counts[x * n + i] = t.count;
        errors[x * n + i] = t.error;
      });
    }
    // Contexts by weight, largest first (ties: earlier prompt, then position).
    const c = this.contexts;
    const prompts = new Int32Array(L * E * c).fill(-1);
    const positions = new Int32Array(L * E * c);
    const tokens = new Int32Array(L * E * c);
    const weights = new Float32Array(L * E * c);
    for (let x = 0; x < L * E; x++) {
      const order = Array.from({ length: c }, (_, i) => x * c + i)
        .filter((i) => this.ctxPrompt[i] >= 0)
        .sort((a, b) => this.ctxWeight[b] - this.ctxWeight[a] || this.ctxPrompt[a] - this.ctxPrompt[b] || this.ctxPosition[a] - this.ctxPosition[b]);
      order.forEach((from, i) => {
        prompts[x * c + i] = this.ctxPrompt[from];
        positions[x * c + i] = this.ctxPosition[from];
        tokens[x * c + i] = this.ctxToken[from];
        weights[x * c + i] = this.ctxWeight[from];
      });
    }
    const copy = (g: GroupCounts): GroupCounts => ({ ...g, activations: g.activations.slice(), top1: g.top1.slice(), weight: g.weight.slice(), entropy: g.entropy.slice() });
    return {
      shape: { ...this.shape, layers: [...this.shape.layers] },
      groups: this.groups.map(copy),
      coActivation: this.coActivation.slice(),
      flow: this.flow.slice(),
      tokenCounts: this.tokenCounts.slice(),
      topTokens: { n, ids, counts, errors },
      topContexts: { n: c, prompts, positions, tokens, weights },
      prompts: this.prompts,
      skipped: this.skipped,
      tokenSlots: this.sketch.slots,
    };
  }
}
