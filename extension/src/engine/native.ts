// The Node-API addon's surface (native/binding/addon.cpp mirrors this file). In the editor the addon runs only in
// the engine process (engine/worker.ts, adapt/requests.ts); the CLI and the adaptation library call it in-process.
import type { RoutingSpan } from '../../../common/src/routing';

export type Backend = 'auto' | 'cpu' | 'cuda';
/** fp32 (default, held to transformers by the parity tests) or bf16: prefill activations rounded to bf16 before the
 *  products with BF16 weights, as llama.cpp's BF16 matmul (AVX512_BF16 CPUs; README "Activation precision"). */
export type Activations = 'fp32' | 'bf16';
/** fp32 (default) or bf16: the dtype of the sessions' KV caches — bf16 halves their memory and the bytes a decode
 *  step's attention reads; CPU backend (README "KV cache precision"). */
export type KvCache = 'fp32' | 'bf16';
/** Where the engine keeps the weights: `auto` (in memory when they take at most half of what is available), `mapped`, `resident`. */
export type WeightsChoice = 'auto' | 'mapped' | 'resident';
export type LogitsMode = 'none' | 'last' | 'all';
export type RouterScoring = 'softmax' | 'sigmoid' | 'sparsemixer';

export interface NativeModelInfo {
  modelType: string;            // config.json model_type
  dir: string;
  numLayers: number;
  hiddenSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  numExperts: number;
  topK: number;
  expertWidth: number;
  sharedExpertWidth: number;
  normTopkProb: boolean;
  routingRule: string;          // one line, e.g. "sigmoid + selection bias, group-limited top-8 of 256 (...), ×2.5"
  routerScoring: RouterScoring; // how router logits become the scores the weights are taken from
  maxPositionEmbeddings: number;
  moeLayers: number[];
  dtype: string;                // F32 | F16 | BF16
  expertLayout: string;         // per-expert | fused
  shards: number;
  parameters: number;
  activeParameters: number;
  weightBytes: number;
  eosTokenIds: number[];
  warnings: string[];           // e.g. checkpoint tensors present but not used (DeepSeek-V3's MTP layer)
  backend: string;              // cpu | cuda
  threads: number;
  activations: Activations;     // what the requested activations resolved to (warnings say why bf16 was not used)
  weights: 'mapped' | 'resident'; // what the requested weights choice resolved to
  kvCache: KvCache;             // what the requested KV cache dtype resolved to (warnings say why bf16 was not used)
}

export interface NativeForwardOptions {
  patch?: string;               // patch JSON (see README "Routing patches"); validated natively
  logits: LogitsMode;
  /** Return the mean over this call's tokens of the hidden state entering this layer (numLayers = last output). */
  embedLayer?: number;
  onLayer?: (span: RoutingSpan) => void;
}

export interface NativeGenerateOptions {
  patch?: string;
  maxNewTokens: number;
  temperature: number;          // 0 = greedy
  topP: number;
  seed: number;
  stopTokens: number[];
  onToken?: (token: number) => void;
  onLayer?: (span: RoutingSpan) => void;
}

export interface NativeGradOptions {
  patch?: string;
  layers: number[];
  target?: [number, number];    // target token indices [start, end)
  mix?: { layer: number; position: number; logits: Float32Array };
}

export interface NativeGradResult {
  loss: number;
  biasGrad: Record<string, Float32Array>;
  mixGrad?: Float32Array;
}

export interface NativeRerouteOptions {
  layers?: number[];            // candidate layers; default every MoE layer
  interval: number;             // m: a round after prefill, then every m generated tokens
  steps: number;                // optimiser steps per round
  lr: number;
  optimizer: 'adam' | 'sgd';
  layerFraction: number;        // adapt this fraction of the candidates, ranked by routing confidence
  leastConfidentFirst: boolean;
  /** Reset Adam's moments at every round (default: one optimiser per layer for the whole request). */
  resetAdamEachRound?: boolean;
  /** A round's loss over the tokens since the previous round only, older keys/values from the cache. */
  sinceLastRound?: boolean;
}

export interface NativeRerouteRound {
  position: number;             // context length when the round ran
  windowStart: number;          // first position of the round's loss window
  layers: number[];             // adapted in this round
  losses: number[];             // self-supervised loss before each step
  confidence: Record<string, number>; // C_l per candidate layer
  delta: Record<string, Float32Array>; // delta of every layer adapted so far, after this round
}

export interface NativeRerouteResult {
  tokens: Int32Array;
  rounds: NativeRerouteRound[];
  delta: Record<string, Float32Array>; // final delta per adapted layer
}

export interface NativeHeadroomOptions {
  label: number;                // the correct next token
  options?: number[];           // competing tokens (the label among them); default the whole vocabulary
  layers?: number[];            // searched one by one; default every MoE layer
  joint?: boolean;              // also all together (default true)
  candidates?: number;          // swaps run exactly per greedy move (0 = all)
  moves?: number;               // greedy moves per layer (0 = top-k)
  steps?: number;               // Adam steps on log ω after the greedy search
  lrStart?: number;
  lrEnd?: number;
}

export interface NativeHeadroomChange {
  layer: number;                // -1: all searched layers together
  flipped: boolean;             // the answer changed
  margin: number;               // the label's logit minus the best other competing token's, after the change
  answer: number;               // the answer after the change
  swaps: { layer: number; out: number; in: number }[];
  gradient: boolean;            // Adam on log ω ran after the greedy search
  omega: Record<string, Float32Array>; // the changed rows; empty when nothing moved the margin
  evaluations: number;
}

export interface NativeHeadroomResult {
  margin: number;               // with the model's own routing
  answer: number;
  correct: boolean;
  layers: NativeHeadroomChange[];
  joint?: NativeHeadroomChange;
}

export interface NativeSession {
  /** Generation with continuous rerouting (arXiv:2510.14853); resets the session first. */
  generateRerouted(prompt: Int32Array, options: NativeGenerateOptions & { reroute: NativeRerouteOptions;
    onRound?: (round: NativeRerouteRound) => void }): Promise<NativeRerouteResult>;
  /** Mean over positions of the hidden state entering `layer` (numLayers = last layer's output); resets. */
  meanHidden(tokens: Int32Array, layer: number): Promise<Float32Array>;
  /** Routing headroom of one prompt and its label (ANALYSIS ONLY); resets the session and leaves it empty. */
  routingHeadroom(prompt: Int32Array, options: NativeHeadroomOptions): Promise<NativeHeadroomResult>;
  /** Appends tokens after the cached context; runs on a worker thread; callbacks arrive on the JS thread. */
  forward(tokens: Int32Array, options: NativeForwardOptions): Promise<{ logits: Float32Array; rows: number; embedding?: Float32Array }>;
  generate(prompt: Int32Array, options: NativeGenerateOptions): Promise<{ tokens: Int32Array }>;
  grad(tokens: Int32Array, options: NativeGradOptions): Promise<NativeGradResult>;
  reset(): void;
  /** Forgets the cached positions >= position (0 <= position <= this.position). */
  truncate(position: number): void;
  cancel(): void;
  readonly position: number;
}

/** A reference item's prompt cached for C3PO (opaque; keeps memory until released or garbage-collected). */
export interface NativeC3poPrefix {
  readonly tokens: number;
  readonly firstLayer: number;
  release(): void;
}

export interface NativeC3poOptions {
  layers: number[];             // critical layers
  coreExperts: number;
  steps: number;
  lrStart: number;
  lrEnd: number;
  /** Evaluate the loss once more after the last step (one forward; off: losses holds the loss before each step). */
  finalLoss?: boolean;
}

export interface NativeC3poNeighbour {
  prefix: NativeC3poPrefix;
  answer: number;
  weight: number;
  /** Multiple choice: the option tokens; the loss is then the cross-entropy over these tokens only. */
  options?: number[];
}

export interface NativeC3poResult {
  omegaBefore: Record<string, Float32Array>;
  omegaAfter: Record<string, Float32Array>;
  core: Record<string, Int32Array>;
  losses: number[];             // surrogate loss before each step, then after the last when finalLoss
  firstGrad: Record<string, Float32Array>;
}

export interface NativeModel {
  info(): NativeModelInfo;
  /** Runs the prompt except its last token through every layer and the last token up to firstLayer; unless
   *  cacheFirstLayer is false, also keeps that MoE layer's attention output, router logits and every expert's output
   *  at the last token, so NGD steps need not run it. */
  c3poPrefix(prompt: Int32Array, firstLayer: number, options?: { cacheFirstLayer?: boolean }): Promise<NativeC3poPrefix>;
  /** NGD on the last-position mix logits of the critical layers against weighted neighbours. steps = 0 only
   *  evaluates the surrogate loss (and its gradient) at omegaInit. */
  c3poNgd(omegaInit: Record<string, Float32Array>,
          neighbours: NativeC3poNeighbour[],
          options: NativeC3poOptions): Promise<NativeC3poResult>;
  createSession(maxContext?: number): NativeSession;
  /** Unmaps the weights; the model and its sessions are unusable afterwards. */
  close(): void;
}

/** Errors thrown by the addon carry `code` (e.g. BAD_CHECKPOINT, BAD_CONFIG, UNKNOWN_ARCH, BAD_TOKENS,
 *  BAD_PATCH, TOO_LONG, CANCELLED) and a one-line message naming the file or argument. */
export interface NativeAddon {
  version: string;
  cudaCompiled: boolean;
  loadModel(dir: string, options?: { threads?: number; backend?: Backend; activations?: Activations; weights?: WeightsChoice; kvCache?: KvCache }): NativeModel;
}
