// A run as every side knows it: one prompt through the engine with one routing patch. The host's run
// (extension/src/runs/run.ts) adds its routing; the routing panel receives this metadata and then the spans.
import type { RoutingPatch } from './patch';
import type { RouterScoring } from './math';

export type RunKind = 'inspect' | 'generate' | 'c3po' | 'reroute';

export interface RunModel {
  dir: string;
  name: string;          // folder name, for display
  modelType: string;
  numLayers: number;
  numExperts: number;
  topK: number;
  moeLayers: number[];
  vocabSize: number;
  /** How the router turns logits into scores (softmax, or a sigmoid per expert: DeepSeek-V3, GLM-4.5). */
  routerScoring?: RouterScoring;
}

/** One entry of a next-token distribution. */
export interface NextToken {
  token: number;
  text: string;
  prob: number;
}

export interface RunInfo {
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
  /** Next-token distribution after the prompt: top entries, most likely first. */
  nextTokens?: NextToken[];
  /** The whole next-token distribution after the prompt ([vocab], sums to 1), for comparing runs. */
  nextTokenProbs?: Float32Array;
  generatedText?: string;
  error?: string;
  /** Id of the run this one was compared against / derived from (e.g. the unpatched run of a patched re-run). */
  baseRunId?: number;
}
