// The routing panel's host↔webview protocol: the ONE module both sides import (host: extension/src/views/
// routingPanel.ts and runStream.ts; webview: webview/src/*).
//
// Style (after GitLens' IpcNotification / IpcCommand): each message type is a constant that knows its method name,
// builds a message (`create`) and recognises one (`is`). Notifications go host → webview, commands webview → host;
// neither expects a reply (the host answers an edit with a `patch/didChange` notification).
//
// Routing crosses as RoutingSpans (routing.ts) whose typed arrays are the ones the host received from the engine
// process: webview.postMessage sends their buffers without turning them into JSON number lists.
import type { RoutingPatch } from './patch';
import type { PatchEdit } from './patchEdit';
import { checkSpan, type RoutingSpan } from './routing';
import type { RunInfo } from './run';

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

/** What the grid colours by. 'entropy' is the router entropy in nats, on a colour scale from 0 to ln E (uniform). */
export type Metric = 'expert' | 'entropy' | 'weight' | 'change';
export const METRICS: readonly Metric[] = ['expert', 'entropy', 'weight', 'change'];
/** The metrics a panel may open with (routescope.routingPanel.defaultMetric); 'change' needs a compared run. */
export const DEFAULT_METRICS: readonly Metric[] = ['expert', 'entropy', 'weight'];

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
/** New routing rows of one layer of a run (streaming, or a finished run's layers after `run/init`). */
export const RunLayerNotification = new IpcNotification<{ runId: number; span: RoutingSpan }>('run/layer');
/** Tokens appended while generating: tokens[from..] and their text. */
export const RunTokensNotification = new IpcNotification<{ runId: number; from: number; tokens: number[]; tokenText: string[] }>('run/tokens');
export const RunFinishedNotification = new IpcNotification<{
  runId: number;
  finishedAt: number;
  nextTokens?: RunInfo['nextTokens'];
  nextTokenProbs?: Float32Array;
  generatedText?: string;
  error?: string;
}>('run/finished');
/** The comparison ended (the compared run was removed, or the user closed compare). */
export const CompareClearedNotification = new IpcNotification<Record<string, never>>('compare/cleared');
/** The run behind a restored panel is gone (window reload, run store cleared). */
export const RunUnavailableNotification = new IpcNotification<{ label?: string; prompt?: string; reason: string }>('run/unavailable');
/** The session's patch after an edit (or set elsewhere); `error` when the last edit was refused. */
export const PatchChangedNotification = new IpcNotification<{ patch: RoutingPatch; error?: string }>('patch/didChange');
export const SettingsChangedNotification = new IpcNotification<{ defaultMetric: Metric }>('settings/didChange');

// ---- webview → host ----------------------------------------------------------------------------------------------

/** Sent once the webview listens; carries the restored view state (if any). */
export const ReadyCommand = new IpcCommand<{ state?: PanelState }>('webview/ready');
export const EditPatchCommand = new IpcCommand<{ edit: PatchEdit }>('patch/edit');
/** Re-run the shown run's prompt with the session's patch (the host holds it); shown as a diff against the run. */
export const RerunCommand = new IpcCommand<Record<string, never>>('run/rerun');
/** Re-run a run that is no longer available, from the prompt the webview kept (with the session's patch). */
export const RerunUnavailableCommand = new IpcCommand<{ prompt: string; modelDir?: string }>('run/rerunUnavailable');
/** Ask the host to pick a run to compare with; `runId` undefined → let the user choose; -1 → stop comparing. */
export const RequestCompareCommand = new IpcCommand<{ runId?: number }>('compare/request');
export const ExportCommand = new IpcCommand<{ runId: number; format: ExportFormat }>('run/export');
/** Cancel a run that is still running (the toolbar's Cancel). */
export const CancelRunCommand = new IpcCommand<{ runId: number }>('run/cancel');

export type HostMessage =
  | ReturnType<typeof RunInitNotification.create>
  | ReturnType<typeof RunLayerNotification.create>
  | ReturnType<typeof RunTokensNotification.create>
  | ReturnType<typeof RunFinishedNotification.create>
  | ReturnType<typeof CompareClearedNotification.create>
  | ReturnType<typeof RunUnavailableNotification.create>
  | ReturnType<typeof PatchChangedNotification.create>
  | ReturnType<typeof SettingsChangedNotification.create>;

// ---- decoding ----------------------------------------------------------------------------------------------------

/** A `run/layer` message's params, checked (shapes, typed arrays); throws with what is wrong. */
export function decodeLayerMessage(params: unknown): { runId: number; span: RoutingSpan } {
  const p = params as { runId?: unknown; span?: unknown } | null;
  if (typeof p !== 'object' || p === null || typeof p.runId !== 'number') throw new Error('routing message: no run id');
  return { runId: p.runId, span: checkSpan(p.span) };
}

/** A command from the webview, checked: only known methods with object params get through. */
export function decodeWebviewMessage(raw: unknown): IpcMessage<unknown> | undefined {
  if (typeof raw !== 'object' || raw === null) return undefined;
  const m = raw as IpcMessage<unknown>;
  const known = [ReadyCommand, EditPatchCommand, RerunCommand, RerunUnavailableCommand, RequestCompareCommand, ExportCommand, CancelRunCommand];
  if (!known.some((t) => t.is(m))) return undefined;
  if (typeof m.params !== 'object' || m.params === null) return undefined;
  return m;
}
