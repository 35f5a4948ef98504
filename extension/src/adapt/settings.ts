// Hyperparameters of the two test-time adaptation methods and of the routing-headroom analysis, with the specs'
// defaults (/shared/spec/c3po.md, /shared/spec/rerouting.md) and, where a spec leaves a choice, ours (README, "Test-time
// adaptation"). package.json contributes the same keys as VS Code settings (routescope.c3po.*,
// routescope.reroute.*, routescope.embedding.*), read by extension/src/settings.ts; the CLI uses these defaults.

export type C3poMethod = 'ngd' | 'kernel' | 'mode' | 'oracle';

export interface C3poSettings {
  /** Neighbourhood in embedding space: k nearest, or every item with cosine similarity >= epsilon. */
  neighbourMode: 'knn' | 'epsilon';
  k: number;
  epsilon: number;
  /**
   * Which reference items are dropped as duplicates of the test item: 'similarity' = cosine above dedupThreshold
   * (the paper's cut, meant for text embedders), 'exact-question' = the same question text, 'none'; 'auto' = the
   * similarity cut for an external embedder, exact questions for the model's own embeddings (whose same-task items
   * all lie above 0.95).
   */
  dedup: 'auto' | 'similarity' | 'exact-question' | 'none';
  /** Reference items more similar than this to the test question are dropped as near-duplicates (dedup 'similarity'). */
  dedupThreshold: number;
  /** Gaussian kernel bandwidth; 0 = the median of the neighbours' distances. */
  kernelSigma: number;
  /** Number of critical layers (the last MoE layers); 0 = the last 5, all of them when the model has fewer (the official code). */
  criticalLayers: number;
  /** Core experts per critical layer: the top-n of the original routing (min(n, E)). */
  coreExperts: number;
  steps: number;
  /** Adam on θ = log ω, cosine schedule from lrStart to lrEnd (see C3poOptions in native/include/routescope/adapt.h). */
  lrStart: number;
  lrEnd: number;
  /**
   * Multiple-choice neighbours: the surrogate loss over the option tokens only (softmax restricted to them) instead of
   * the whole vocabulary; reads a few rows of the LM head per step instead of all of it. Off = the paper's loss.
   */
  optionLoss: boolean;
  /** Where the adapted ω applies during generation: the last prompt token only, or every generated token too. */
  applyTo: 'every-token' | 'prefill-only';
  /** Step of the α grid {0, step, …, 1} for kernel regression and mode finding. */
  alphaStep: number;
  /** Mean-shift iterations (mode finding). */
  modeIterations: number;
  /** Neighbours in ω-space per mean-shift iteration. */
  modeK: number;
  /** α of mode finding: a fixed value in [0, 1], or -1 = the grid search. */
  modeAlpha: number;
  /** Memory cap of the cached neighbour prefixes (LRU), in MiB. */
  prefixCacheMiB: number;
}

export interface RerouteSettings {
  /** m: a round after prefill, then every m generated tokens. */
  interval: number;
  steps: number;
  lr: number;
  optimizer: 'adam' | 'sgd';
  /** Adapt this fraction of the candidate layers each round, ranked by routing confidence C_l (the paper's "selected layers"). */
  layerFraction: number;
  /** Rank layers with the largest C_l (the least confident) first, as the paper's formula reads. */
  leastConfidentFirst: boolean;
  /** Reset Adam's moments at every round; off = one optimiser per layer for the whole request. */
  resetAdamEachRound: boolean;
  /**
   * A round's loss: over the whole context (the paper), or over the tokens since the previous round with the older
   * positions' keys and values taken from the cache (a round then costs the same however long the context grows).
   */
  window: 'context' | 'since-last-round';
  /** Candidate layers; empty = every MoE layer. */
  layers: number[];
}

export interface EmbeddingSettings {
  /** A folder with model.onnx + tokenizer.json (e.g. an all-MiniLM-L6-v2 export); '' = the MoE's own hidden state. */
  embedder: string;
  /** Self-embedding: the layer whose input is mean-pooled over the prompt's own forward; -1 = the last layer's output. */
  layer: number;
  /** ONNX embedder: longest input in tokens (longer texts are truncated). */
  maxTokens: number;
}

/** The routing-headroom analysis (ANALYSIS ONLY: it uses the labels); see HeadroomOptions in routescope/adapt.h. */
export interface HeadroomSettings {
  /** Swaps run exactly per greedy move, ranked by their first-order effect on the margin; 0 = every swap. */
  candidates: number;
  /** Greedy moves per layer; 0 = top-k. */
  moves: number;
  /** Adam steps on log ω after the greedy search (0 = greedy only). */
  steps: number;
  lrStart: number;
  lrEnd: number;
  /** Also search every layer together (greedy layer by layer from the lowest, then Adam on all). */
  joint: boolean;
  /** Layers searched; empty = every MoE layer. */
  layers: number[];
}

export const DEFAULT_C3PO: Readonly<C3poSettings> = Object.freeze({
  neighbourMode: 'knn',
  k: 3,
  epsilon: 0.8,
  dedup: 'auto',
  dedupThreshold: 0.95,
  kernelSigma: 0,
  criticalLayers: 0,
  coreExperts: 20,
  steps: 10,
  lrStart: 1,
  lrEnd: 1e-3,
  optionLoss: false,
  applyTo: 'every-token',
  alphaStep: 0.1,
  modeIterations: 10,
  modeK: 3,
  modeAlpha: -1,
  prefixCacheMiB: 512,
});

export const DEFAULT_REROUTE: Readonly<RerouteSettings> = Object.freeze({
  interval: 128,
  steps: 5,
  lr: 0.05,
  optimizer: 'adam',
  layerFraction: 0.5,
  leastConfidentFirst: true,
  resetAdamEachRound: false,
  window: 'context',
  layers: [],
});

export const DEFAULT_EMBEDDING: Readonly<EmbeddingSettings> = Object.freeze({
  embedder: '',
  layer: -1,
  maxTokens: 256,
});

export const DEFAULT_HEADROOM: Readonly<HeadroomSettings> = Object.freeze({
  candidates: 16,
  moves: 0,
  steps: 10,
  lrStart: 1,
  lrEnd: 1e-3,
  joint: true,
  layers: [],
});

/** The critical layers: the last n MoE layers (n from the setting; 0 = 5, every MoE layer when there are fewer). */
export function criticalLayers(moeLayers: readonly number[], setting: number): number[] {
  const L = moeLayers.length;
  const n = Math.min(setting > 0 ? setting : 5, L);
  return moeLayers.slice(L - n);
}

/** The dedup rule in effect: 'auto' resolved by the embedder (similarity for a text embedder, exact questions for self). */
export function dedupRule(s: C3poSettings, embedder: 'self' | 'onnx'): Exclude<C3poSettings['dedup'], 'auto'> {
  return s.dedup !== 'auto' ? s.dedup : embedder === 'self' ? 'exact-question' : 'similarity';
}

export class SettingsError extends Error {
  readonly code = 'BAD_SETTING';
}

/** Range checks shared by the CLI and the extension; messages name the setting. */
export function checkC3poSettings(s: C3poSettings): void {
  const bad = (key: string, why: string): never => {
    throw new SettingsError(`routescope.c3po.${key}: ${why}`);
  };
  if (!Number.isInteger(s.k) || s.k < 1) bad('k', 'must be an integer >= 1');
  if (!(s.epsilon >= -1 && s.epsilon <= 1)) bad('epsilon', 'must lie in [-1, 1]');
  if (!['auto', 'similarity', 'exact-question', 'none'].includes(s.dedup)) bad('dedup', "must be 'auto', 'similarity', 'exact-question' or 'none'");
  if (!(s.dedupThreshold > -1 && s.dedupThreshold <= 1)) bad('dedupThreshold', 'must lie in (-1, 1]');
  if (!(s.kernelSigma >= 0)) bad('kernelSigma', 'must be >= 0 (0 = median of the neighbour distances)');
  if (!Number.isInteger(s.criticalLayers) || s.criticalLayers < 0) bad('criticalLayers', 'must be an integer >= 0');
  if (!Number.isInteger(s.coreExperts) || s.coreExperts < 1) bad('coreExperts', 'must be an integer >= 1');
  if (!Number.isInteger(s.steps) || s.steps < 0) bad('steps', 'must be an integer >= 0');
  if (!(s.lrStart > 0) || !(s.lrEnd > 0)) bad('lrStart', 'learning rates must be > 0');
  if (!(s.alphaStep > 0 && s.alphaStep <= 1)) bad('alphaStep', 'must lie in (0, 1]');
  if (!Number.isInteger(s.modeIterations) || s.modeIterations < 1) bad('modeIterations', 'must be an integer >= 1');
  if (!Number.isInteger(s.modeK) || s.modeK < 1) bad('modeK', 'must be an integer >= 1');
  if (!(s.modeAlpha === -1 || (s.modeAlpha >= 0 && s.modeAlpha <= 1))) bad('modeAlpha', 'must be -1 (search) or lie in [0, 1]');
  if (!(s.prefixCacheMiB > 0)) bad('prefixCacheMiB', 'must be > 0');
}

export function checkRerouteSettings(s: RerouteSettings): void {
  const bad = (key: string, why: string): never => {
    throw new SettingsError(`routescope.reroute.${key}: ${why}`);
  };
  if (!Number.isInteger(s.interval) || s.interval < 1) bad('interval', 'must be an integer >= 1');
  if (!Number.isInteger(s.steps) || s.steps < 0) bad('steps', 'must be an integer >= 0');
  if (!(s.lr > 0)) bad('lr', 'must be > 0');
  if (!(s.layerFraction > 0 && s.layerFraction <= 1)) bad('layerFraction', 'must lie in (0, 1]');
  if (!['context', 'since-last-round'].includes(s.window)) bad('window', "must be 'context' or 'since-last-round'");
}

export function checkHeadroomSettings(s: HeadroomSettings): void {
  const bad = (key: string, why: string): never => {
    throw new SettingsError(`routescope.headroom.${key}: ${why}`);
  };
  if (!Number.isInteger(s.candidates) || s.candidates < 0) bad('candidates', 'must be an integer >= 0 (0 = every swap)');
  if (!Number.isInteger(s.moves) || s.moves < 0) bad('moves', 'must be an integer >= 0 (0 = top-k)');
  if (!Number.isInteger(s.steps) || s.steps < 0) bad('steps', 'must be an integer >= 0');
  if (!(s.lrStart > 0) || !(s.lrEnd > 0)) bad('lrStart', 'learning rates must be > 0');
  if (!s.layers.every((l) => Number.isInteger(l) && l >= 0)) bad('layers', 'must be layer indices >= 0');
}

/** VS Code setting key of every hyperparameter (package.json contributes.configuration). */
export function settingKeys(): {
  c3po: Record<keyof C3poSettings, string>;
  reroute: Record<keyof RerouteSettings, string>;
  embedding: Record<keyof EmbeddingSettings, string>;
  headroom: Record<keyof HeadroomSettings, string>;
} {
  const map = <T extends object>(defaults: T, prefix: string): Record<keyof T, string> =>
    Object.fromEntries(Object.keys(defaults).map((k) => [k, `${prefix}.${k}`])) as Record<keyof T, string>;
  return {
    c3po: map(DEFAULT_C3PO, 'routescope.c3po'),
    reroute: map(DEFAULT_REROUTE, 'routescope.reroute'),
    embedding: { embedder: 'routescope.c3po.embedder', layer: 'routescope.embedding.layer', maxTokens: 'routescope.embedding.maxTokens' },
    headroom: map(DEFAULT_HEADROOM, 'routescope.headroom'),
  };
}

export interface AdaptSettings {
  c3po: C3poSettings;
  reroute: RerouteSettings;
  embedding: EmbeddingSettings;
  headroom: HeadroomSettings;
}

/**
 * Settings from a configuration reader (`get` takes the full key, e.g. "routescope.c3po.k"); a missing or mistyped
 * value falls back to the spec default, then the whole set is range-checked.
 */
export function readAdaptSettings(get: (key: string) => unknown): AdaptSettings {
  const keys = settingKeys();
  const pick = <T extends object>(defaults: T, names: Record<keyof T, string>): T => {
    const out = { ...defaults } as Record<string, unknown>;
    for (const [k, name] of Object.entries(names) as [string, string][]) {
      const v = get(name);
      const d = (defaults as Record<string, unknown>)[k];
      if (v !== undefined && v !== null && typeof v === typeof d && Array.isArray(v) === Array.isArray(d)) out[k] = Array.isArray(v) ? [...v] : v;
    }
    return out as T;
  };
  const c3po = pick(DEFAULT_C3PO as C3poSettings, keys.c3po);
  const reroute = pick({ ...DEFAULT_REROUTE, layers: [] } as RerouteSettings, keys.reroute);
  const embedding = pick(DEFAULT_EMBEDDING as EmbeddingSettings, keys.embedding);
  const headroom = pick({ ...DEFAULT_HEADROOM, layers: [] } as HeadroomSettings, keys.headroom);
  checkC3poSettings(c3po);
  checkRerouteSettings(reroute);
  checkHeadroomSettings(headroom);
  return { c3po, reroute, embedding, headroom };
}
