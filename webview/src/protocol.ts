// The routing panel's host↔webview protocol: the ONE module both sides import (host:
// extension/src/views/routingPanel.ts; webview: webview/src/*). No DOM and no vscode imports here.
//
// Style (after GitLens' IpcNotification / IpcCommand): each message type is a constant that knows its method name,
// builds a message (`create`) and recognises one (`is`). Notifications go host → webview, commands webview → host;
// neither expects a reply (the host answers an edit with a `patch/didChange` notification).
//
// Tensors cross as typed arrays (Float32Array / Int32Array): webview.postMessage structured-clones them without
// turning them into JSON number lists. `decodeLayerChunk` re-checks shapes on arrival and converts the plain
// objects an older transport may produce.
import type { RoutingPatch } from '../../common/src/patch';
import type { PatchEdit } from '../../common/src/patchEdit';
import type { LayerRouting, Run, RunKind, RunModel } from '../../extension/src/runs/run';

export interface IpcMessage<P> {
  method: string;
  params: P;
}

class IpcMessageType<P> {
  constructor(readonly method: string) {}
  create(params: P): IpcMessage<P> {
    return { method: this.method, params };
  }
  is(message: unknown): message is IpcMessage<P> {
    return typeof message === 'object' && message !== null && (message as IpcMessage<unknown>).method === this.method;
  }
}
/** Host → webview. */
export class IpcNotification<P> extends IpcMessageType<P> {}
/** Webview → host. */
export class IpcCommand<P> extends IpcMessageType<P> {}

// ---- values ------------------------------------------------------------------------------------------------------

/** A run without its routing tensors (those follow as LayerChunks). */
export interface RunInfo {
  id: number;
  kind: RunKind;
  label: string;
  prompt: string;
  model: RunModel;
  patch: RoutingPatch | undefined;
  tokens: number[];
  tokenText: string[];
  promptTokens: number;
  startedAt: number;
  finishedAt?: number;
  nextTokens?: { token: number; text: string; prob: number }[];
  generatedText?: string;
  error?: string;
  baseRunId?: number;
}

/** Rows [start, start+count) of one MoE layer's routing, as typed arrays (row = position). */
export interface LayerChunk {
  runId: number;
  layer: number;
  start: number;
  count: number;
  numExperts: number;
  topK: number;
  routerLogits: Float32Array; // [count * E]
  experts: Int32Array;        // [count * k]
  weights: Float32Array;      // [count * k]
}

export type Metric = 'expert' | 'entropy' | 'weight' | 'change';
export const METRICS: readonly Metric[] = ['expert', 'entropy', 'weight', 'change'];

/** Which run a message is about: the one shown, or the one it is compared with. */
export type RunRole = 'primary' | 'compare';


/** What the webview keeps with vscode.setState and hands back to the serializer after a reload. */
export interface PanelState {
  runId?: number;
  compareRunId?: number;
  /** Enough to offer a re-run when the run store no longer holds the run. */
  label?: string;
  prompt?: string;
  modelDir?: string;
  patch?: RoutingPatch;
  metric?: Metric;
  /** CSS pixels per token column. */
  zoom?: number;
  scrollLeft?: number;
  scrollTop?: number;
  selected?: { layer: number; position: number };
  pinned?: { layer: number; position: number };
}

export type ExportFormat = 'safetensors' | 'csv';

// ---- host → webview ----------------------------------------------------------------------------------------------

/** A run to show (role primary) or to compare with (role compare); its routing follows as `run/layer`. */
export const RunInitNotification = new IpcNotification<{ role: RunRole; run: RunInfo }>('run/init');
/** New routing rows of a layer (streaming) — also used to send a finished run's layers after `run/init`. */
export const RunLayerNotification = new IpcNotification<{ chunk: LayerChunk }>('run/layer');
/** Tokens appended while generating: tokens[from..] and their text. */
export const RunTokensNotification = new IpcNotification<{ runId: number; from: number; tokens: number[]; tokenText: string[] }>('run/tokens');
export const RunFinishedNotification = new IpcNotification<{
  runId: number;
  finishedAt: number;
  nextTokens?: RunInfo['nextTokens'];
  generatedText?: string;
  error?: string;
}>('run/finished');
/** The comparison ended (the compared run was removed, or the user closed compare). */
export const CompareClearedNotification = new IpcNotification<Record<string, never>>('compare/cleared');
/** The run behind a restored panel is gone (window reload, run store cleared). */
export const RunUnavailableNotification = new IpcNotification<{ label?: string; prompt?: string; reason: string }>('run/unavailable');
/** The draft patch after an edit (or set by the host); `error` when the last edit was rejected. */
export const PatchChangedNotification = new IpcNotification<{ patch: RoutingPatch; error?: string }>('patch/didChange');
export const SettingsChangedNotification = new IpcNotification<{ defaultMetric: Metric }>('settings/didChange');

// ---- webview → host ----------------------------------------------------------------------------------------------

/** Sent once the webview listens; carries the restored view state (if any). */
export const ReadyCommand = new IpcCommand<{ state?: PanelState }>('webview/ready');
export const EditPatchCommand = new IpcCommand<{ edit: PatchEdit }>('patch/edit');
/** Re-run the shown run's prompt with this patch (the result is shown as a diff against the shown run). */
export const RerunCommand = new IpcCommand<{ patch: RoutingPatch }>('run/rerun');
/** Re-run a run that is no longer available, from the prompt the webview kept. */
export const RerunUnavailableCommand = new IpcCommand<{ prompt: string; modelDir?: string; patch?: RoutingPatch }>('run/rerunUnavailable');
export const SelectCellCommand = new IpcCommand<{ runId: number; layer: number; position: number; pinned: boolean }>('cell/select');
/** Ask the host to pick a run to compare with; `runId` undefined → let the user choose; -1 → stop comparing. */
export const RequestCompareCommand = new IpcCommand<{ runId?: number }>('compare/request');
export const ExportCommand = new IpcCommand<{ runId: number; format: ExportFormat }>('run/export');

export type HostMessage =
  | ReturnType<typeof RunInitNotification.create>
  | ReturnType<typeof RunLayerNotification.create>
  | ReturnType<typeof RunTokensNotification.create>
  | ReturnType<typeof RunFinishedNotification.create>
  | ReturnType<typeof CompareClearedNotification.create>
  | ReturnType<typeof RunUnavailableNotification.create>
  | ReturnType<typeof PatchChangedNotification.create>
  | ReturnType<typeof SettingsChangedNotification.create>;

// ---- encoding ----------------------------------------------------------------------------------------------------

/** A Run's metadata for `run/init` (no tensors; arrays copied so later pushes on the host do not leak). */
export function encodeRunInfo(run: Run): RunInfo {
  const info: RunInfo = {
    id: run.id,
    kind: run.kind,
    label: run.label,
    prompt: run.prompt,
    model: { ...run.model, moeLayers: [...run.model.moeLayers] },
    patch: run.patch,
    tokens: [...run.tokens],
    tokenText: [...run.tokenText],
    promptTokens: run.promptTokens,
    startedAt: run.startedAt,
  };
  if (run.finishedAt !== undefined) info.finishedAt = run.finishedAt;
  if (run.nextTokens) info.nextTokens = run.nextTokens.map((t) => ({ ...t }));
  if (run.generatedText !== undefined) info.generatedText = run.generatedText;
  if (run.error !== undefined) info.error = run.error;
  if (run.baseRunId !== undefined) info.baseRunId = run.baseRunId;
  return info;
}

/** Rows [from, to) of a layer as a chunk; the typed arrays are copies of just those rows. */
export function encodeLayerChunk(runId: number, routing: LayerRouting, numExperts: number, topK: number, from = 0, to = routing.filled): LayerChunk {
  const start = Math.max(0, from);
  const end = Math.min(to, routing.filled);
  const count = Math.max(0, end - start);
  return {
    runId,
    layer: routing.layer,
    start,
    count,
    numExperts,
    topK,
    routerLogits: routing.routerLogits.slice(start * numExperts, (start + count) * numExperts),
    experts: routing.experts.slice(start * topK, (start + count) * topK),
    weights: routing.weights.slice(start * topK, (start + count) * topK),
  };
}

function toTyped<T extends Float32Array | Int32Array>(value: unknown, make: (values: ArrayLike<number>) => T, name: string): T {
  if (value instanceof Float32Array || value instanceof Int32Array) {
    // Already typed: keep as-is when the kind matches, else convert.
    const converted = make(value);
    return (value.constructor === converted.constructor ? value : converted) as T;
  }
  if (Array.isArray(value)) return make(value as number[]);
  // Some transports turn typed arrays into {"0": x, "1": y, ...}.
  if (typeof value === 'object' && value !== null) return make(Object.values(value as Record<string, number>));
  throw new Error(`routing chunk: ${name} is not an array`);
}

/** Checks a chunk's shape (and repairs typed arrays flattened by the transport); throws with what is wrong. */
export function decodeLayerChunk(raw: unknown): LayerChunk {
  if (typeof raw !== 'object' || raw === null) throw new Error('routing chunk: not an object');
  const c = raw as Record<string, unknown>;
  const int = (name: string, min = 0): number => {
    const v = c[name];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new Error(`routing chunk: ${name} must be an integer >= ${min}`);
    return v;
  };
  const chunk: LayerChunk = {
    runId: int('runId', -Infinity),
    layer: int('layer'),
    start: int('start'),
    count: int('count'),
    numExperts: int('numExperts', 1),
    topK: int('topK', 1),
    routerLogits: toTyped(c.routerLogits, (v) => Float32Array.from(v), 'routerLogits'),
    experts: toTyped(c.experts, (v) => Int32Array.from(v), 'experts'),
    weights: toTyped(c.weights, (v) => Float32Array.from(v), 'weights'),
  };
  const { count, numExperts: E, topK: k } = chunk;
  if (chunk.routerLogits.length !== count * E) throw new Error(`routing chunk: routerLogits has ${chunk.routerLogits.length} values, expected ${count}×${E}`);
  if (chunk.experts.length !== count * k) throw new Error(`routing chunk: experts has ${chunk.experts.length} values, expected ${count}×${k}`);
  if (chunk.weights.length !== count * k) throw new Error(`routing chunk: weights has ${chunk.weights.length} values, expected ${count}×${k}`);
  return chunk;
}

/** A command from the webview, checked: only known methods with object params get through. */
export function decodeWebviewMessage(raw: unknown): IpcMessage<unknown> | undefined {
  if (typeof raw !== 'object' || raw === null) return undefined;
  const m = raw as IpcMessage<unknown>;
  const known = [ReadyCommand, EditPatchCommand, RerunCommand, RerunUnavailableCommand, SelectCellCommand, RequestCompareCommand, ExportCommand];
  if (!known.some((t) => t.is(m))) return undefined;
  if (typeof m.params !== 'object' || m.params === null) return undefined;
  return m;
}
