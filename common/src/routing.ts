// Routing records. A RoutingSpan is what the engine streams: one MoE layer, a run of positions, as typed arrays; it
// crosses from the engine process to the host and from the host to the webview as it is. A LayerRouting is one
// layer of a run assembled from spans, the one copy each process keeps; it derives the layer's statistics
// (LayerStats) incrementally, so a view refreshing while the engine streams does not recompute what it has seen.
import { entropyOf, scoreSharesInto, softmaxInto, softmaxEntropy, type RouterScoring } from './math';

export interface RoutingSpan {
  layer: number;
  /** Absolute position of the first row. */
  start: number;
  count: number;
  numExperts: number;
  topK: number;
  routerLogits: Float32Array; // [count * numExperts], raw router output before any patch or softmax
  experts: Int32Array;        // [count * topK], highest weight first
  weights: Float32Array;      // [count * topK], the mixing weights applied
}

/** Bytes of routing data in a span. */
export function spanBytes(span: RoutingSpan): number {
  return span.routerLogits.byteLength + span.experts.byteLength + span.weights.byteLength;
}

function typed<T extends Float32Array | Int32Array>(value: unknown, kind: { new (n: number): T; from(v: ArrayLike<number>): T }, name: string): T {
  if (value instanceof kind) return value;
  if (ArrayBuffer.isView(value) || Array.isArray(value)) return kind.from(value as unknown as ArrayLike<number>);
  // Some transports turn typed arrays into {"0": x, "1": y, ...}.
  if (typeof value === 'object' && value !== null) return kind.from(Object.values(value as Record<string, number>));
  throw new Error(`routing span: ${name} is not an array`);
}

/** Checks a span that crossed a process boundary; typed arrays pass through untouched, anything else is converted. */
export function checkSpan(raw: unknown): RoutingSpan {
  if (typeof raw !== 'object' || raw === null) throw new Error('routing span: not an object');
  const c = raw as Record<string, unknown>;
  const int = (name: string, min = 0): number => {
    const v = c[name];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new Error(`routing span: ${name} must be an integer >= ${min}`);
    return v;
  };
  const span: RoutingSpan = {
    layer: int('layer'),
    start: int('start'),
    count: int('count'),
    numExperts: int('numExperts', 1),
    topK: int('topK', 1),
    routerLogits: typed(c.routerLogits, Float32Array, 'routerLogits'),
    experts: typed(c.experts, Int32Array, 'experts'),
    weights: typed(c.weights, Float32Array, 'weights'),
  };
  const { count, numExperts: E, topK: k } = span;
  if (span.routerLogits.length !== count * E) throw new Error(`routing span: routerLogits has ${span.routerLogits.length} values, expected ${count}×${E}`);
  if (span.experts.length !== count * k) throw new Error(`routing span: experts has ${span.experts.length} values, expected ${count}×${k}`);
  if (span.weights.length !== count * k) throw new Error(`routing span: weights has ${span.weights.length} values, expected ${count}×${k}`);
  return span;
}

export interface ExpertStats {
  /** (token, slot) assignments to the expert. */
  load: number;
  /** Mean mixing weight over those assignments (0 when never selected). */
  meanWeight: number;
  /** Fraction of tokens that have the expert among their top-k. */
  share: number;
  /** Mean router probability softmax(router_logits)[e] over tokens (sigmoid routers: the score share). */
  meanProb: number;
}

export interface LayerStats {
  layer: number;
  tokens: number;
  experts: ExpertStats[];
  /** Mean router entropy in nats (0 = one expert takes everything, ln E = uniform). */
  meanEntropy: number;
  meanTop1Weight: number;
  /** Coefficient of variation (std / mean) of the experts' loads; 0 = perfectly even. */
  loadCv: number;
  /** The busiest expert's load ÷ the even load T·k/E (1 = even). */
  maxOverMean: number;
  /** Switch Transformer balance E · Σ_i f_i · P_i (f_i = share of assignments, P_i = mean probability); 1 = even. */
  switchBalance: number;
  /** Experts never selected. */
  unusedExperts: number;
}

/** Sums over rows [0, until) from which LayerStats are read; reset when a span rewrites one of those rows. */
class Accumulators {
  until = 0;
  entropySum = 0;
  top1WeightSum = 0;
  constructor(
    readonly load: Float64Array,
    readonly weightSum: Float64Array,
    readonly tokenCount: Float64Array,
    readonly probSum: Float64Array,
  ) {}
  static of(E: number): Accumulators {
    return new Accumulators(new Float64Array(E), new Float64Array(E), new Float64Array(E), new Float64Array(E));
  }
}

/** One MoE layer of a run: rows 0..filled-1 (row = position), written span by span. */
export class LayerRouting {
  routerLogits: Float32Array;
  experts: Int32Array;
  weights: Float32Array;
  /** Positions filled so far; grows while the engine streams. */
  filled = 0;
  /** Bytes this record has copied (spans written, and existing rows moved when it grew). */
  bytesCopied = 0;
  private entropy: Float32Array;
  private acc: Accumulators;
  private readonly scratch: Float64Array;

  constructor(
    readonly layer: number,
    readonly numExperts: number,
    readonly topK: number,
    capacity = 0,
    /** Entropy and mean shares are over softmax(logits), or sigmoid(logits) / their sum for sigmoid routers. */
    readonly scoring: RouterScoring = 'softmax',
  ) {
    this.routerLogits = new Float32Array(capacity * numExperts);
    this.experts = new Int32Array(capacity * topK);
    this.weights = new Float32Array(capacity * topK);
    this.entropy = new Float32Array(capacity);
    this.acc = Accumulators.of(numExperts);
    this.scratch = new Float64Array(numExperts);
  }

  /** A layer holding exactly these rows (tests, traces read back). */
  static of(layer: number, numExperts: number, topK: number, rows: { routerLogits: ArrayLike<number>; experts: ArrayLike<number>; weights: ArrayLike<number> }): LayerRouting {
    const count = rows.experts.length / topK;
    const routing = new LayerRouting(layer, numExperts, topK, count);
    routing.write({ layer, start: 0, count, numExperts, topK, routerLogits: Float32Array.from(rows.routerLogits), experts: Int32Array.from(rows.experts), weights: Float32Array.from(rows.weights) });
    return routing;
  }

  get capacity(): number {
    return this.experts.length / this.topK;
  }

  /** Makes room for `positions` rows (doubling), keeping the filled ones. */
  reserve(positions: number): void {
    if (positions <= this.capacity) return;
    const cap = Math.max(positions, this.capacity * 2, 16);
    const grow = <T extends Float32Array | Int32Array>(a: T, per: number, make: (n: number) => T): T => {
      const b = make(cap * per);
      b.set(a.subarray(0, this.filled * per));
      this.bytesCopied += this.filled * per * a.BYTES_PER_ELEMENT;
      return b;
    };
    this.routerLogits = grow(this.routerLogits, this.numExperts, (n) => new Float32Array(n));
    this.experts = grow(this.experts, this.topK, (n) => new Int32Array(n));
    this.weights = grow(this.weights, this.topK, (n) => new Float32Array(n));
    const entropy = new Float32Array(cap);
    entropy.set(this.entropy.subarray(0, this.acc.until));
    this.entropy = entropy;
  }

  /** Copies a span's rows in (a later span for the same positions replaces them). Spans arrive in order per layer. */
  write(span: RoutingSpan): void {
    if (span.layer !== this.layer || span.numExperts !== this.numExperts || span.topK !== this.topK) {
      throw new Error(`routing span of layer ${span.layer} (${span.numExperts} experts, top-${span.topK}) does not fit layer ${this.layer} (${this.numExperts} experts, top-${this.topK})`);
    }
    if (span.start > this.filled) throw new Error(`routing span of layer ${span.layer} starts at position ${span.start}, after the ${this.filled} filled`);
    const E = this.numExperts;
    const k = this.topK;
    const end = span.start + span.count;
    this.reserve(end);
    this.routerLogits.set(span.routerLogits, span.start * E);
    this.experts.set(span.experts, span.start * k);
    this.weights.set(span.weights, span.start * k);
    this.bytesCopied += span.routerLogits.byteLength + span.experts.byteLength + span.weights.byteLength;
    if (span.start < this.acc.until) this.acc = Accumulators.of(E); // rows already summed changed: sum again
    this.filled = Math.max(this.filled, end);
  }

  /** Rows [from, to) as a span of views into this record (no copy). */
  span(from = 0, to = this.filled): RoutingSpan {
    const start = Math.max(0, Math.min(from, this.filled));
    const end = Math.max(start, Math.min(to, this.filled));
    const E = this.numExperts;
    const k = this.topK;
    return {
      layer: this.layer,
      start,
      count: end - start,
      numExperts: E,
      topK: k,
      routerLogits: this.routerLogits.subarray(start * E, end * E),
      experts: this.experts.subarray(start * k, end * k),
      weights: this.weights.subarray(start * k, end * k),
    };
  }

  /** Router entropy in nats at every filled position ([filled]; a view, valid until the next write). */
  routerEntropy(): Float32Array {
    this.derive();
    return this.entropy.subarray(0, this.filled);
  }

  /** Statistics over the filled rows. */
  stats(): LayerStats {
    this.derive();
    const E = this.numExperts;
    const T = this.filled;
    const { load, weightSum, tokenCount, probSum } = this.acc;
    const experts: ExpertStats[] = [];
    const evenLoad = (T * this.topK) / E;
    let variance = 0;
    let maxLoad = 0;
    let balance = 0;
    for (let e = 0; e < E; e++) {
      experts.push({
        load: load[e],
        meanWeight: load[e] > 0 ? weightSum[e] / load[e] : 0,
        share: T > 0 ? tokenCount[e] / T : 0,
        meanProb: T > 0 ? probSum[e] / T : 0,
      });
      variance += (load[e] - evenLoad) ** 2 / E;
      maxLoad = Math.max(maxLoad, load[e]);
      if (T > 0) balance += (load[e] / (T * this.topK)) * (probSum[e] / T);
    }
    return {
      layer: this.layer,
      tokens: T,
      experts,
      meanEntropy: T > 0 ? this.acc.entropySum / T : 0,
      meanTop1Weight: T > 0 ? this.acc.top1WeightSum / T : 0,
      loadCv: evenLoad > 0 ? Math.sqrt(variance) / evenLoad : 0,
      maxOverMean: evenLoad > 0 ? maxLoad / evenLoad : 0,
      switchBalance: E * balance,
      unusedExperts: experts.filter((x) => x.load === 0).length,
    };
  }

  /** Brings the per-position entropy and the sums up to the filled rows. */
  private derive(): void {
    const acc = this.acc;
    const E = this.numExperts;
    const k = this.topK;
    const p = this.scratch;
    const seen = new Uint8Array(E);
    for (let t = acc.until; t < this.filled; t++) {
      let h: number;
      if (this.scoring !== 'sigmoid') {
        h = softmaxEntropy(this.routerLogits, t * E, E);
        softmaxInto(p, this.routerLogits, t * E);
      } else {
        scoreSharesInto(p, this.routerLogits, t * E, this.scoring);
        h = entropyOf(p);
      }
      this.entropy[t] = h;
      acc.entropySum += h;
      for (let e = 0; e < E; e++) acc.probSum[e] += p[e];
      seen.fill(0);
      for (let s = 0; s < k; s++) {
        const e = this.experts[t * k + s];
        if (e < 0 || e >= E) continue;
        acc.load[e] += 1;
        acc.weightSum[e] += this.weights[t * k + s];
        if (!seen[e]) {
          seen[e] = 1;
          acc.tokenCount[e] += 1;
        }
      }
      acc.top1WeightSum += this.weights[t * k];
    }
    acc.until = this.filled;
  }
}
