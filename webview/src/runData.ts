// A run's routing as the routing panel keeps it: one LayerRouting per MoE layer (a grid row), written from the
// streamed spans (the webview's one copy of the routing), plus the per-cell values the grid colours by — top-1
// expert, top-1 weight, router entropy ÷ ln E (the colour position; views write it in nats) — derived once per span so drawing never touches the logits.
// Pure (no DOM): unit-tested in test/unit/webview-grid.test.ts.
import { scoreSharesInto } from '../../common/src/math';
import { LayerRouting, type LayerStats, type RoutingSpan } from '../../common/src/routing';
import type { RoutedRun } from '../../common/src/runDiff';
import type { RunInfo } from '../../common/src/run';

export class RunRouting implements RoutedRun {
  readonly info: RunInfo;
  readonly E: number;
  readonly k: number;
  /** MoE layer index of each grid row, ascending. */
  readonly layers: number[];
  /** The routing of each grid row. */
  readonly rows: LayerRouting[];
  private readonly rowOf = new Map<number, number>();
  private capacity: number;
  /** Per cell [row][position]: top-1 expert (-1 = not filled yet), its weight, router entropy ÷ ln E. */
  top1: Int32Array[];
  top1Weight: Float32Array[];
  entropy: Float32Array[];
  /** Positions filled per row (streaming fills a prefix). */
  filled: number[];
  /** Bumped per row on every change: caches (downsampling) key on it. */
  rowVersion: number[];
  version = 0;

  constructor(info: RunInfo) {
    this.info = info;
    this.E = info.model.numExperts;
    this.k = info.model.topK;
    this.layers = [...info.model.moeLayers].sort((a, b) => a - b);
    this.layers.forEach((layer, row) => this.rowOf.set(layer, row));
    this.capacity = Math.max(16, info.tokens.length);
    const make = <T>(f: (layer: number) => T): T[] => this.layers.map(f);
    this.rows = make((layer) => new LayerRouting(layer, this.E, this.k, this.capacity, info.model.routerScoring ?? 'softmax'));
    this.top1 = make(() => new Int32Array(this.capacity).fill(-1));
    this.top1Weight = make(() => new Float32Array(this.capacity));
    this.entropy = make(() => new Float32Array(this.capacity));
    this.filled = make(() => 0);
    this.rowVersion = make(() => 0);
  }

  get id(): number {
    return this.info.id;
  }
  /** Tokens known so far (generation appends). */
  get T(): number {
    return this.info.tokens.length;
  }
  // RoutedRun, for the run diff.
  get routing(): readonly LayerRouting[] {
    return this.rows;
  }
  get tokens(): number[] {
    return this.info.tokens;
  }
  get nextTokens(): RunInfo['nextTokens'] {
    return this.info.nextTokens;
  }
  get nextTokenProbs(): Float32Array | undefined {
    return this.info.nextTokenProbs;
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
    const growF = (a: Float32Array) => { const b = new Float32Array(cap); b.set(a); return b; };
    this.top1 = this.top1.map((a) => { const b = new Int32Array(cap).fill(-1); b.set(a); return b; });
    this.top1Weight = this.top1Weight.map(growF);
    this.entropy = this.entropy.map(growF);
    this.capacity = cap;
  }

  appendTokens(from: number, tokens: number[], tokenText: string[]): void {
    this.info.tokens.splice(from, tokens.length, ...tokens);
    this.info.tokenText.splice(from, tokenText.length, ...tokenText);
    this.grow(this.info.tokens.length);
    this.version++;
  }

  /** Stores a span and derives its cells; returns the grid row it filled (undefined: not a MoE layer of this run). */
  addSpan(span: RoutingSpan): number | undefined {
    const row = this.rowOf.get(span.layer);
    if (row === undefined || span.numExperts !== this.E || span.topK !== this.k) return undefined;
    const { start, count } = span;
    const end = start + count;
    if (end > this.info.tokens.length) {
      // Routing ahead of the token list (generation streams routing first): pad with unknown tokens.
      while (this.info.tokens.length < end) {
        this.info.tokens.push(-1);
        this.info.tokenText.push('');
      }
    }
    this.grow(end);
    const routing = this.rows[row];
    routing.write(span);
    const entropy = routing.routerEntropy();
    const logE = Math.log(this.E);
    const top1 = this.top1[row];
    const w1 = this.top1Weight[row];
    const normalised = this.entropy[row];
    for (let p = start; p < end; p++) {
      top1[p] = routing.experts[p * this.k];
      w1[p] = routing.weights[p * this.k];
      normalised[p] = this.E > 1 ? entropy[p] / logE : 0;
    }
    this.filled[row] = routing.filled;
    this.rowVersion[row]++;
    this.version++;
    return row;
  }

  /** Share of the filled positions whose top-k includes expert e, per row: [L * E], row-major. */
  loadShare(): Float32Array {
    const out = new Float32Array(this.layers.length * this.E);
    this.rows.forEach((routing, r) => {
      if (!routing.filled) return;
      routing.stats().experts.forEach((x, e) => (out[r * this.E + e] = x.share));
    });
    return out;
  }

  layerStats(row: number): LayerStats | undefined {
    return this.rows[row].filled ? this.rows[row].stats() : undefined;
  }

  /** The router's score shares at (row, position): softmax probabilities, or sigmoid scores / their sum: [E]. */
  routerProbs(row: number, position: number): Float32Array {
    return scoreSharesInto(new Float32Array(this.E), this.rows[row].routerLogits, position * this.E, this.info.model.routerScoring ?? 'softmax');
  }

  /** Router entropy in nats at a cell (undefined when not filled yet). */
  routerEntropy(row: number, position: number): number | undefined {
    return position < this.filled[row] ? this.rows[row].routerEntropy()[position] : undefined;
  }

  /** Top-k (expert, weight) at a cell; empty when not filled yet. */
  cell(row: number, position: number): { expert: number; weight: number }[] {
    if (position >= this.filled[row]) return [];
    const { experts, weights } = this.rows[row];
    const out = [];
    for (let j = 0; j < this.k; j++) out.push({ expert: experts[position * this.k + j], weight: weights[position * this.k + j] });
    return out;
  }
}
