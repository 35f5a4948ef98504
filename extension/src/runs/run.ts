// A run: one prompt through the engine with one routing patch, and the routing it produced. Runs are what the
// side panel lists, the routing panel draws and compare/diff works on. Routing is kept as flat typed arrays per
// layer so it can be streamed to a webview without copying into JS number arrays.
import type { RoutingPatch } from '../../../common/src/patch';

export type RunKind = 'inspect' | 'generate' | 'c3po' | 'reroute';

export interface LayerRouting {
  layer: number;
  /** [T * E] raw router logits (fp32, before patch and softmax), row = position. */
  routerLogits: Float32Array;
  /** [T * k] selected experts, highest weight first. */
  experts: Int32Array;
  /** [T * k] mixing weights applied. */
  weights: Float32Array;
  /** Positions filled so far (rows 0..filled-1 are valid); grows while the engine streams. */
  filled: number;
}

export interface RunModel {
  dir: string;
  name: string;          // folder name, for display
  modelType: string;
  numLayers: number;
  numExperts: number;
  topK: number;
  moeLayers: number[];
  vocabSize: number;
}

export interface Run {
  id: number;
  kind: RunKind;
  label: string;                 // short text for lists ("Inspect: What is 47 + 38?")
  prompt: string;
  model: RunModel;
  patch: RoutingPatch | undefined;
  /** Token ids of the whole sequence (prompt, then generated tokens). */
  tokens: number[];
  /** Decoded text of each token, for the token strip. */
  tokenText: string[];
  promptTokens: number;          // tokens[0..promptTokens) are the prompt
  startedAt: number;             // Date.now()
  finishedAt?: number;
  /** MoE layers only, keyed by layer index. */
  layers: Map<number, LayerRouting>;
  /** Next-token distribution after the prompt: top entries (token, probability), most likely first. */
  nextTokens?: { token: number; text: string; prob: number }[];
  /** The whole next-token distribution after the prompt ([vocab], sums to 1), for comparing runs. */
  nextTokenProbs?: Float32Array;
  generatedText?: string;
  error?: string;
  /** Id of the run this one was compared against / derived from (e.g. the unpatched run of a patched re-run). */
  baseRunId?: number;
}
