// The one protocol between the extension host (engine/host.ts) and the engine process (engine/worker.ts).
// Messages cross a child_process channel with serialization 'advanced' (structured clone), so typed arrays
// (router logits, experts, weights, token ids) travel as typed arrays, never as JSON number lists.
// The engine's own requests are CoreMethods; adaptation adds its requests from adapt/ (adapt/protocol.ts types,
// adapt/requests.ts handlers), so nothing here knows about it.
import type { Activations, Backend, KvCache, LogitsMode, NativeGradResult, NativeModelInfo, WeightsChoice } from './native';
import type { RoutingSpan } from '../../../common/src/routing';
import type { NextToken } from '../../../common/src/run';

/** A request's parameters, result and the events streamed while it runs. */
export interface MethodSpec {
  params: unknown;
  result: unknown;
  event: unknown;
}
export type MethodTable = { [method: string]: MethodSpec };

export interface LoadParams {
  dir: string;
  threads?: number;
  backend?: Backend;
  activations?: Activations;
  weights?: WeightsChoice;
  kvCache?: KvCache;
}

export interface LoadResult {
  info: NativeModelInfo;
  /** False when the folder has no usable tokenizer.json; then prompts must be given as token ids. */
  tokenizer: boolean;
  /** Why the tokenizer could not be loaded, when it could not. */
  tokenizerError?: string;
  /** The engine process's resident memory after loading (weights are memory-mapped). */
  rssBytes: number;
}

export interface TokenizeParams {
  text: string;
}

export interface TokenizeResult {
  tokens: number[];
  tokenText: string[];
}

export interface DecodeParams {
  tokens: number[];
}

export interface DecodeResult {
  text: string;
  tokenText: string[];
}

export interface InspectParams {
  tokens: Int32Array;
  /** Patch JSON (common/src/patch.ts serializePatch); validated by the engine too. */
  patch?: string;
  logits: LogitsMode;
  /** How many of the most likely next tokens to report (after the last position). */
  topTokens?: number;
}

export interface InspectResult {
  /** Logits rows as requested ([rows * vocab]). */
  logits: Float32Array;
  rows: number;
  /** Most likely next tokens after the last position, most likely first (when logits were requested). */
  nextTokens: NextToken[];
  /** Softmax of the last position's logits ([vocab]); for comparing next-token distributions between runs. */
  nextTokenProbs?: Float32Array;
}

export interface GenerateParams {
  prompt: Int32Array;
  patch?: string;
  maxNewTokens: number;
  temperature: number;
  topP: number;
  seed: number;
  /** Defaults to the model's EOS ids. */
  stopTokens?: number[];
  /** Stream per-layer routing of every position (prefill and each generated token). */
  routing: boolean;
}

export interface GenerateResult {
  tokens: Int32Array;
  text: string | null;
}

export interface GradParams {
  tokens: Int32Array;
  patch?: string;
  layers: number[];
  target?: [number, number];
  mix?: { layer: number; position: number; logits: Float32Array };
}

/** One routing span, streamed while inspect / generate run. */
export interface LayerEvent {
  kind: 'layer';
  routing: RoutingSpan;
}

export interface TokenEvent {
  kind: 'token';
  token: number;
  /** The token's text as shown in the token strip. */
  text: string;
}

/** The engine's own requests. */
export type CoreMethods = {
  load: { params: LoadParams; result: LoadResult; event: never };
  unload: { params: Record<string, never>; result: { unloaded: boolean }; event: never };
  info: { params: Record<string, never>; result: LoadResult | null; event: never };
  tokenize: { params: TokenizeParams; result: TokenizeResult; event: never };
  decode: { params: DecodeParams; result: DecodeResult; event: never };
  inspect: { params: InspectParams; result: InspectResult; event: LayerEvent };
  generate: { params: GenerateParams; result: GenerateResult; event: LayerEvent | TokenEvent };
  grad: { params: GradParams; result: NativeGradResult; event: never };
};

export type ParamsOf<M extends MethodTable, K extends keyof M> = M[K]['params'];
export type ResultOf<M extends MethodTable, K extends keyof M> = M[K]['result'];
export type EventOf<M extends MethodTable, K extends keyof M> = M[K]['event'];

// ---- wire messages ----

export interface RequestMessage {
  type: 'request';
  id: number;
  method: string;
  params: unknown;
}

export interface CancelMessage {
  type: 'cancel';
  id: number;
}

export type HostMessage = RequestMessage | CancelMessage;

export interface EngineErrorPayload {
  /** BAD_CHECKPOINT, BAD_PATCH, BAD_TOKENS, TOO_LONG, CANCELLED, NO_MODEL, NO_TOKENIZER, NO_ENGINE, INTERNAL, … */
  code: string;
  message: string;
}

export interface ResultMessage {
  type: 'result';
  id: number;
  result: unknown;
}

export interface ErrorMessage {
  type: 'error';
  id: number;
  error: EngineErrorPayload;
}

export interface EventMessage {
  type: 'event';
  id: number;
  event: unknown;
}

/** Sent once when the engine process is up and the addon loaded (or failed to). */
export interface ReadyMessage {
  type: 'ready';
  version: string | null;
  cudaCompiled: boolean;
  pid: number;
  /** Why the addon could not be loaded; requests then fail with NO_ENGINE. */
  error?: string;
}

export interface LogMessage {
  type: 'log';
  line: string;
}

export type WorkerMessage = ResultMessage | ErrorMessage | EventMessage | ReadyMessage | LogMessage;

/** An engine error: a code and a one-line message (on the host: from the engine process). */
export class EngineError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'EngineError';
  }
}

export function isCancelled(error: unknown): boolean {
  return error instanceof EngineError && error.code === 'CANCELLED';
}
