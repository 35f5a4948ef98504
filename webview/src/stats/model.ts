// The statistics panel's data path (pure; no DOM): everything the views draw, computed from the aggregate the engine
// process sent (common/src/statsProtocol.ts StatsPanelData) with the queries `routescope stats` uses
// (common/src/statsQueries.ts), cached per layer / pair so switching views never re-walks the whole result. Sizes
// depend on layers × experts only — never on how many prompts or tokens were counted.
import type { GroupCounts } from '../../../common/src/routingStats';
import {
  activationDifference,
  activationRates,
  coActivationShare,
  expertContexts,
  expertTopTokens,
  flowCounts,
  groupCounts,
  totalCounts,
  type ExpertDifference,
  type ExpertToken,
} from '../../../common/src/statsQueries';
import type { StatsPanelData } from '../../../common/src/statsProtocol';
import { labelStep } from '../charts/ticks';

export interface FlowNode { y0: number; y1: number }
export interface FlowRibbon { from: number; to: number; count: number; sy0: number; sy1: number; ty0: number; ty1: number }
/** Layer-to-layer top-1 flow as a picture: per layer row, one node per expert (height ∝ its top-1 share, stacked in
 *  expert order, y in 0..1) and, per consecutive pair, the ribbons drawn (largest first, at most `maxRibbons`). */
export interface FlowLayout {
  nodes: FlowNode[][];
  ribbons: FlowRibbon[][];
  /** Paths left out of the picture per pair (below the threshold or past the cap), and their tokens. */
  hidden: { paths: number; tokens: number }[];
  minShare: number;
  /** Node height per unit share of tokens (the rest of the column is gaps between nodes). */
  scale: number;
}

/** The flow picture's margins and node width (px), and the narrowest gap between layer columns at which ribbons still
 *  read as paths. */
export const FLOW_PICTURE = { left: 64, top: 10, bottom: 40, right: 16, nodeWidth: 8, minColumnGap: 28 } as const;

export interface FlowAxes {
  /** The picture's CSS width: the panel's, or wider (scrolling) when the columns need it. */
  width: number;
  /** Between neighbouring layer columns (px). */
  gap: number;
  /** Every `layerStep`-th layer is numbered (each has a tick). */
  layerStep: number;
  /** Expert names beside every column, or beside the first and last only. */
  expertLabels: 'every' | 'ends';
}

/** How `layers` columns of the flow picture fit `hostWidth`: at least the minimum gap apart (wider than the panel,
 *  the picture scrolls), a number with room for two beside it, expert names at every column when they take at most a
 *  third of a gap. */
export function flowAxes(layers: number, hostWidth: number, layerLabelWidth: number, expertLabelWidth: number): FlowAxes {
  const { left, right, nodeWidth, minColumnGap } = FLOW_PICTURE;
  const span = Math.max(1, layers - 1);
  const width = Math.max(left + right + nodeWidth + span * minColumnGap, hostWidth);
  const gap = (width - left - right - nodeWidth) / span;
  return { width, gap, layerStep: labelStep(gap, 2 * layerLabelWidth), expertLabels: gap - nodeWidth >= 3 * (expertLabelWidth + 3) ? 'every' : 'ends' };
}

export class StatsModel {
  readonly L: number;
  readonly E: number;
  readonly layers: number[];
  readonly all: GroupCounts;
  private readonly texts = new Map<number, string>();
  private readonly rateCache = new Map<string, Float64Array>();
  private readonly coCache = new Map<number, Float64Array>();
  private readonly rankingCache = new Map<string, ExpertDifference[]>();
  private flowCache: FlowLayout | undefined;

  constructor(readonly data: StatsPanelData) {
    const { shape } = data.result;
    this.layers = shape.layers;
    this.L = shape.layers.length;
    this.E = shape.numExperts;
    this.all = totalCounts(data.result);
    data.tokenTexts.ids.forEach((id, i) => this.texts.set(id, data.tokenTexts.texts[i]));
  }

  get groups(): string[] {
    return this.data.result.groups.map((g) => g.name);
  }

  tokenText(id: number): string {
    return this.texts.get(id) ?? `#${id}`;
  }

  /** [L × E] activation rates of a group ("all" = the whole set). */
  rates(group = 'all'): Float64Array {
    let r = this.rateCache.get(group);
    if (!r) {
      r = activationRates(group === 'all' ? this.all : groupCounts(this.data.result, group));
      this.rateCache.set(group, r);
    }
    return r;
  }

  counts(group = 'all'): GroupCounts {
    return group === 'all' ? this.all : groupCounts(this.data.result, group);
  }

  topTokens(row: number, expert: number, n = 10): ExpertToken[] {
    return expertTopTokens(this.data.result, row, expert, n, this.all.activations);
  }

  contexts(row: number, expert: number) {
    return expertContexts(this.data.result, row, expert);
  }

  /** [E × E] co-activation share of layer row r (diagonal: the activation rate). */
  coActivation(row: number): Float64Array {
    let c = this.coCache.get(row);
    if (!c) {
      c = coActivationShare(this.data.result, row);
      this.coCache.set(row, c);
    }
    return c;
  }

  /** The most frequent expert pairs of layer row r, by share. */
  topPairs(row: number, n = 10): { i: number; j: number; share: number }[] {
    const share = this.coActivation(row);
    const E = this.E;
    const pairs: { i: number; j: number; share: number }[] = [];
    for (let i = 0; i < E; i++) for (let j = i + 1; j < E; j++) if (share[i * E + j] > 0) pairs.push({ i, j, share: share[i * E + j] });
    return pairs.sort((a, b) => b.share - a.share || a.i - b.i || a.j - b.j).slice(0, n);
  }

  /** The most frequent top-1 paths from layer row r to r + 1, by tokens. */
  topPaths(row: number, n = 10): { i: number; j: number; count: number }[] {
    const flow = flowCounts(this.data.result, row);
    const E = this.E;
    const paths: { i: number; j: number; count: number }[] = [];
    for (let i = 0; i < E; i++) for (let j = 0; j < E; j++) if (flow[i * E + j] > 0) paths.push({ i, j, count: flow[i * E + j] });
    return paths.sort((a, b) => b.count - a.count || a.i - b.i || a.j - b.j).slice(0, n);
  }

  /** Every (layer, expert) ranked by |activation-rate difference| between groups a and b. */
  ranking(a: string, b: string): ExpertDifference[] {
    const key = `${a}\u0000${b}`;
    let r = this.rankingCache.get(key);
    if (!r) {
      r = activationDifference(this.data.result, a, b);
      this.rankingCache.set(key, r);
    }
    return r;
  }

  /** Experts of a layer row ordered by their activations (busiest first; ties by number). */
  orderByLoad(row: number): Int32Array {
    const E = this.E;
    const a = this.all.activations;
    return Int32Array.from({ length: E }, (_, e) => e).sort((x, y) => a[row * E + y] - a[row * E + x] || x - y);
  }

  /** The flow picture's layout (cached): ribbons of at least `minShare` of the tokens, at most `maxRibbons` a pair. */
  flow(minShare = 0.005, maxRibbons = 96): FlowLayout {
    if (this.flowCache && this.flowCache.minShare === minShare) return this.flowCache;
    const { L, E } = this;
    const top1 = this.all.top1;
    const gapTotal = E > 1 ? Math.min(0.25, 0.02 * (E - 1)) : 0;
    const gap = E > 1 ? gapTotal / (E - 1) : 0;
    const nodes: FlowNode[][] = [];
    const tokensAt: number[] = [];
    for (let r = 0; r < L; r++) {
      let total = 0;
      for (let e = 0; e < E; e++) total += top1[r * E + e];
      tokensAt.push(total);
      const row: FlowNode[] = [];
      let y = 0;
      for (let e = 0; e < E; e++) {
        const h = total > 0 ? ((1 - gapTotal) * top1[r * E + e]) / total : 0;
        row.push({ y0: y, y1: y + h });
        y += h + gap;
      }
      nodes.push(row);
    }
    const ribbons: FlowRibbon[][] = [];
    const hidden: { paths: number; tokens: number }[] = [];
    for (let r = 0; r + 1 < L; r++) {
      const flow = flowCounts(this.data.result, r);
      const total = tokensAt[r];
      const scale = total > 0 ? (1 - gapTotal) / total : 0;
      const out = new Float64Array(E);
      const into = new Float64Array(E);
      const all: FlowRibbon[] = [];
      // Offsets within each node: outgoing ribbons stacked by target, incoming by source, so ribbons never cross
      // inside a node and the stacks fill the nodes exactly.
      for (let i = 0; i < E; i++) {
        for (let j = 0; j < E; j++) {
          const count = flow[i * E + j];
          if (count <= 0) continue;
          const h = count * scale;
          const sy0 = nodes[r][i].y0 + out[i];
          out[i] += h;
          all.push({ from: i, to: j, count, sy0, sy1: sy0 + h, ty0: 0, ty1: 0 });
        }
      }
      for (const rb of [...all].sort((x, y) => x.to - y.to || x.from - y.from)) {
        const h = rb.count * scale;
        rb.ty0 = nodes[r + 1][rb.to].y0 + into[rb.to];
        into[rb.to] += h;
        rb.ty1 = rb.ty0 + h;
      }
      const kept = all.filter((rb) => rb.count >= minShare * total).sort((x, y) => y.count - x.count || x.from - y.from || x.to - y.to).slice(0, maxRibbons);
      const keptTokens = kept.reduce((s, rb) => s + rb.count, 0);
      ribbons.push(kept);
      hidden.push({ paths: all.length - kept.length, tokens: total - keptTokens });
    }
    this.flowCache = { nodes, ribbons, hidden, minShare, scale: 1 - gapTotal };
    return this.flowCache;
  }
}
