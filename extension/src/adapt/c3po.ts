// C3PO test-time expert re-mixing (arXiv:2504.07964; /shared/spec/c3po.md): NGD (the default), kernel regression
// with the α search, mode finding (mean-shift in ω-space), and the oracle (NGD on the test item's own label —
// ANALYSIS ONLY: it uses the answer it is evaluated on). Takes the addon objects as parameters, so the CLI
// (in-process addon) and the extension (through its engine host) can both drive it.
import type { NativeC3poPrefix, NativeModel, NativeModelInfo, RouterScoring } from '../engine/native';
import type { RoutingPatch } from '../../../common/src/patch';
import { forwardLayer, itemEmbedding, type Embedder } from './embedder';
import { alphaGrid, findNeighbours, interpolate, meanShift, searchAlpha, weightedMean, type Neighbourhood } from './math';
import { topIndices } from '../../../common/src/math';
import type { ReferenceSet } from './reference';
import { criticalLayers, dedupRule, type C3poMethod, type C3poSettings } from './settings';
import type { Omega } from './tasks';

/** Keeps neighbour prefixes (KV cache of a reference prompt) across test items, least recently used out first. */
export class PrefixCache {
  private readonly entries = new Map<number, { prefix: NativeC3poPrefix; bytes: number }>();
  private bytes = 0;
  hits = 0;
  misses = 0;

  constructor(
    private readonly model: NativeModel,
    private readonly info: NativeModelInfo,
    private readonly firstLayer: number,
    private readonly capBytes: number,
  ) {}

  /** Engine memory of one cached prefix: K/V of every layer (capacity >= 64 positions, in the model's KV cache
   *  dtype) plus the first critical layer's cached parts (every expert's output, the residual, the router logits). */
  estimate(tokens: number): number {
    const i = this.info;
    const kvBytes = i.kvCache === 'bf16' ? 2 : 4;
    return Math.max(64, tokens) * i.numLayers * i.numKvHeads * i.headDim * 2 * kvBytes + (i.numExperts + 1) * i.hiddenSize * 4 + i.numExperts * 4 + 4096;
  }

  async get(index: number, tokens: readonly number[]): Promise<NativeC3poPrefix> {
    const hit = this.entries.get(index);
    if (hit) {
      this.hits++;
      this.entries.delete(index); // re-insert: most recently used last
      this.entries.set(index, hit);
      return hit.prefix;
    }
    this.misses++;
    const prefix = await this.model.c3poPrefix(Int32Array.from(tokens), this.firstLayer);
    const bytes = this.estimate(tokens.length);
    this.entries.set(index, { prefix, bytes });
    this.bytes += bytes;
    this.evict();
    return prefix;
  }

  /** Drops least recently used prefixes beyond the cap; the newest one always stays. */
  private evict(): void {
    for (const [index, entry] of this.entries) {
      if (this.bytes <= this.capBytes || this.entries.size <= 1) break;
      entry.prefix.release();
      this.entries.delete(index);
      this.bytes -= entry.bytes;
    }
  }

  get size(): number {
    return this.entries.size;
  }
  get usedBytes(): number {
    return this.bytes;
  }

  clear(): void {
    for (const entry of this.entries.values()) entry.prefix.release();
    this.entries.clear();
    this.bytes = 0;
  }
}

export interface C3poTest {
  tokens: number[];        // the test prompt
  question: string;        // what a text embedder embeds for the neighbour search
  prompt: string;          // what the model's own embedding pools over
  omega: Omega;            // its original last-position routing (every MoE layer)
  /** The self-embedding from the prompt's own forward (embedLayer = forwardLayer(embedder)); without it, and with the
   *  model's own embeddings, the prompt runs once more. */
  forwardEmbedding?: Float32Array;
  /** Oracle only: the token the test item should be answered with. */
  label?: number;
  /** Oracle on a multiple-choice item with optionLoss: the option tokens. */
  options?: number[];
}

export interface C3poRunOptions {
  /** NGD: evaluate the surrogate loss after the last step too (one more forward; the panel shows before/after). */
  finalLoss?: boolean;
}

export interface C3poOutcome {
  method: C3poMethod;
  /** True for the oracle: it optimises on the test item's own label and is not a usable method. */
  analysisOnly: boolean;
  layers: number[];
  omegaBefore: Record<string, Float32Array>;
  omegaAfter: Record<string, Float32Array>;
  core: Record<string, number[]>;
  neighbours: { id: string; similarity: number; weight: number }[];
  sigma: number;
  /** Kernel-weighted neighbour loss at the original ω and at the adapted ω (NGD: before each step, and after the
   *  last with finalLoss). */
  losses: number[];
  alpha?: number;
  /** Why nothing was changed (e.g. no neighbour left after de-duplication). */
  skipped?: string;
}

export interface C3poContext {
  model: NativeModel;
  info: NativeModelInfo;
  reference: ReferenceSet;
  embedder: Embedder;
  settings: C3poSettings;
  /** The model's tokenizer (reference prompts are re-encoded to build their prefixes). */
  encode: (text: string) => number[];
}

export class C3po {
  readonly layers: number[];
  readonly cache: PrefixCache;
  private readonly refTokens = new Map<number, number[]>();
  private readonly layerRow: Map<number, number>;

  constructor(private readonly ctx: C3poContext) {
    const { info, reference, settings } = ctx;
    this.layers = criticalLayers(info.moeLayers, settings.criticalLayers);
    this.layerRow = new Map(reference.manifest.moe_layers.map((l, i) => [l, i]));
    this.cache = new PrefixCache(ctx.model, info, this.layers[0], settings.prefixCacheMiB * 1024 * 1024);
  }

  dispose(): void {
    this.cache.clear();
  }

  /**
   * Caches every reference item's prefix up front (as many as the memory cap holds), so that the first test items
   * are not slower than the rest: a one-time cost, one prefill per reference item. Returns how many are cached.
   */
  async warm(shouldStop?: () => boolean): Promise<number> {
    const cap = this.ctx.settings.prefixCacheMiB * 1024 * 1024;
    for (let i = 0; i < this.ctx.reference.entries.length; i++) {
      if (shouldStop?.()) break;
      const tokens = this.tokensOf(i);
      if (this.cache.usedBytes + this.cache.estimate(tokens.length) > cap) break;
      await this.cache.get(i, tokens);
    }
    return this.cache.size;
  }

  /** The layer a test prompt's forward should return the mean hidden state of (the model's own embeddings), if any. */
  get embedLayer(): number | undefined {
    return forwardLayer(this.ctx.embedder);
  }

  /** How the model's router scores its logits: ω is softmax probabilities or per-expert sigmoid scores. */
  get scoring(): RouterScoring {
    return this.ctx.info.routerScoring;
  }

  private tokensOf(index: number): number[] {
    let t = this.refTokens.get(index);
    if (!t) {
      t = this.ctx.encode(this.ctx.reference.entries[index].prompt);
      this.refTokens.set(index, t);
    }
    return t;
  }

  /** The dedup rule in effect for this reference set's embedder (routescope.c3po.dedup). */
  get dedup(): ReturnType<typeof dedupRule> {
    return dedupRule(this.ctx.settings, this.ctx.reference.manifest.embedder.kind);
  }

  neighbourhood(embedding: Float32Array, question: string): Neighbourhood {
    const s = this.ctx.settings;
    return findNeighbours(embedding, this.ctx.reference.embeddings, {
      mode: s.neighbourMode,
      k: s.k,
      epsilon: s.epsilon,
      dedup: this.dedup,
      dedupThreshold: s.dedupThreshold,
      question,
      questions: this.ctx.reference.entries.map((e) => e.question),
      sigma: s.kernelSigma > 0 ? s.kernelSigma : 'median',
    });
  }

  private ngdOptions(steps: number, finalLoss = false) {
    const s = this.ctx.settings;
    return { layers: this.layers, coreExperts: Math.min(s.coreExperts, this.ctx.info.numExperts), steps, lrStart: s.lrStart, lrEnd: s.lrEnd, finalLoss };
  }

  private omegaRecord(omega: Omega): Record<string, Float32Array> {
    const out: Record<string, Float32Array> = {};
    for (const l of this.layers) {
      const row = omega.get(l);
      if (!row) throw new Error(`no routing captured for critical layer ${l}`);
      out[String(l)] = row;
    }
    return out;
  }

  async adapt(method: C3poMethod, test: C3poTest, run: C3poRunOptions = {}): Promise<C3poOutcome> {
    const { model, reference, settings } = this.ctx;
    const omegaBefore = this.omegaRecord(test.omega);
    const base: C3poOutcome = {
      method,
      analysisOnly: method === 'oracle',
      layers: this.layers,
      omegaBefore,
      omegaAfter: omegaBefore,
      core: {},
      neighbours: [],
      sigma: 0,
      losses: [],
    };

    if (method === 'oracle') {
      if (test.label === undefined) throw new Error('the oracle needs the test item\'s label');
      const prefix = await model.c3poPrefix(Int32Array.from(test.tokens), this.layers[0]);
      try {
        const options = settings.optionLoss && test.options ? { options: test.options } : {};
        const r = await model.c3poNgd(omegaBefore, [{ prefix, answer: test.label, weight: 1, ...options }], this.ngdOptions(settings.steps, run.finalLoss));
        return { ...base, omegaAfter: r.omegaAfter, core: coreLists(r.core), losses: r.losses };
      } finally {
        prefix.release();
      }
    }

    const embedding = await itemEmbedding(this.ctx.embedder, test, test.forwardEmbedding);
    const hood = this.neighbourhood(embedding, test.question);
    if (hood.neighbours.length === 0) return { ...base, skipped: 'no reference neighbour (after de-duplication)' };
    const neighbours = await Promise.all(
      hood.neighbours.map(async (n) => {
        const entry = reference.entries[n.index];
        return {
          prefix: await this.cache.get(n.index, this.tokensOf(n.index)),
          answer: entry.answer_token,
          weight: n.weight,
          ...(settings.optionLoss && entry.option_tokens ? { options: entry.option_tokens } : {}),
        };
      }),
    );
    const described = hood.neighbours.map((n) => ({ id: reference.entries[n.index].id, similarity: n.similarity, weight: n.weight }));
    const withHood = { ...base, neighbours: described, sigma: hood.sigma };
    const surrogate = async (omega: Record<string, Float32Array>): Promise<number> =>
      (await model.c3poNgd(omega, neighbours, this.ngdOptions(0))).losses[0];

    if (method === 'ngd') {
      const r = await model.c3poNgd(omegaBefore, neighbours, this.ngdOptions(settings.steps, run.finalLoss));
      // Zero steps leave ω as it was (softmax(log ω) would only round it).
      return { ...withHood, omegaAfter: settings.steps > 0 ? r.omegaAfter : omegaBefore, core: coreLists(r.core), losses: r.losses };
    }

    // Kernel regression and mode finding: a target pathway, then ω ← α ω + (1 − α) target.
    let target: Record<string, Float32Array>;
    let fixedAlpha: number | undefined;
    if (method === 'kernel') {
      target = {};
      for (const l of this.layers) {
        const row = this.layerRow.get(l)!;
        target[String(l)] = weightedMean(
          hood.neighbours.map((n) => reference.routing[n.index][row]),
          hood.neighbours.map((n) => n.weight),
        );
      }
    } else {
      const concat = (rows: Float32Array[]): Float32Array => {
        const out = new Float32Array(rows.reduce((a, r) => a + r.length, 0));
        let o = 0;
        for (const r of rows) {
          out.set(r, o);
          o += r.length;
        }
        return out;
      };
      const rows = this.layers.map((l) => this.layerRow.get(l)!);
      const points = reference.routing.map((r) => concat(rows.map((j) => r[j])));
      const start = concat(this.layers.map((l) => omegaBefore[String(l)]));
      const { mode } = meanShift(start, points, {
        k: settings.modeK,
        iterations: settings.modeIterations,
        sigma: settings.kernelSigma > 0 ? settings.kernelSigma : 'median',
      });
      const E = this.ctx.info.numExperts;
      target = {};
      this.layers.forEach((l, i) => (target[String(l)] = mode.slice(i * E, (i + 1) * E)));
      if (settings.modeAlpha >= 0) fixedAlpha = settings.modeAlpha;
    }
    const mixAt = (alpha: number): Record<string, Float32Array> => {
      const out: Record<string, Float32Array> = {};
      for (const l of this.layers) out[String(l)] = interpolate(omegaBefore[String(l)], target[String(l)], alpha);
      return out;
    };
    const before = await surrogate(omegaBefore);
    if (fixedAlpha !== undefined) {
      const omegaAfter = mixAt(fixedAlpha);
      return { ...withHood, omegaAfter, losses: [before, await surrogate(omegaAfter)], alpha: fixedAlpha };
    }
    const best = await searchAlpha(alphaGrid(settings.alphaStep), (alpha) => (alpha === 1 ? Promise.resolve(before) : surrogate(mixAt(alpha))));
    return { ...withHood, omegaAfter: mixAt(best.alpha), losses: [before, best.loss], alpha: best.alpha };
  }
}

function coreLists(core: Record<string, Int32Array>): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  for (const [l, v] of Object.entries(core)) out[l] = [...v];
  return out;
}

/**
 * The routing patch applying an adapted ω: in each critical layer the softmax row of the last prompt position is
 * replaced by ω; with applyTo 'every-token' (a "N+" mix key) every generated position gets the same row.
 */
export function c3poPatch(omegaAfter: Record<string, Float32Array>, lastPosition: number, applyTo: C3poSettings['applyTo']): RoutingPatch {
  const patch: RoutingPatch = { layers: {} };
  const key = applyTo === 'every-token' ? `${lastPosition}+` : String(lastPosition);
  for (const [layer, row] of Object.entries(omegaAfter)) patch.layers[layer] = { mix: { [key]: Array.from(row) } };
  return patch;
}

/** Per critical layer: the top experts before and after (expert:weight), for logs and the panel. */
export function omegaSummary(outcome: C3poOutcome, top = 4): Record<string, { before: [number, number][]; after: [number, number][] }> {
  const out: Record<string, { before: [number, number][]; after: [number, number][] }> = {};
  for (const l of outcome.layers) {
    const b = outcome.omegaBefore[String(l)];
    const a = outcome.omegaAfter[String(l)];
    const round = (x: number): number => Number(x.toFixed(4));
    out[String(l)] = {
      before: topIndices(b, top).map((e) => [e, round(b[e])]),
      after: topIndices(a, top).map((e) => [e, round(a[e])]),
    };
  }
  return out;
}
