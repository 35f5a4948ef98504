// The statistics panel's host↔webview protocol: the ONE module both sides import (host: extension/src/views/
// statsPanel.ts; webview: webview/src/stats/*). Message types are built like the routing panel's
// (panelProtocol.ts: IpcNotification host → webview, IpcCommand webview → host). The statistics cross as the
// aggregate the engine process computed (routingStats.ts RoutingStatsResult: typed arrays, never per token); every
// figure the panel shows is computed from it by statsQueries.ts, as `routescope stats` computes its own.
import { IpcCommand, IpcNotification, type IpcMessage } from './panelProtocol';
import type { RoutingPatch } from './patch';
import type { RoutingStatsResult } from './routingStats';
import type { ExpertDifference, PairSide, SteerMode, SteeringOutcome } from './statsQueries';

export interface StatsPanelData {
  /** What was run ("eval.jsonl", "a.txt, b.txt"). */
  source: string;
  /** The files and folders read (absolute paths): a panel restored after a window reload runs them again. */
  sources: string[];
  /** The model, in one line. */
  model: string;
  /** How prompts were grouped: by input file, by their "skill" field, or not. */
  groupBy: string;
  result: RoutingStatsResult;
  /** Text of the token ids the result names (sorted ids). */
  tokenTexts: { ids: Int32Array; texts: string[] };
  /** Prompt ids by prompt index (contexts name prompts by index). */
  promptIds: string[];
  /** Every prompt carries a label: steering reports accuracy. */
  labelled: boolean;
  /** Prompts read, of total; a cancelled run shows what finished. */
  completed: number;
  total: number;
  cancelled: boolean;
  seconds: number;
}

export interface StatsRunStart {
  source: string;
  /** The files and folders read (absolute paths): a panel restored after a window reload runs them again. */
  sources: string[];
  model: string;
  total: number;
  groups: string[];
  layers: number[];
  numExperts: number;
}

export interface StatsContext {
  prompt: number;
  id: string;
  group: string;
  /** The prompt's tokens as text, in order; `position` is the one highlighted. */
  tokens: string[];
  position: number;
  /** Layer and expert the context was listed for, with its mixing weight there. */
  layer: number;
  expert: number;
  weight: number;
}

export interface SteeringState {
  status: 'running' | 'done' | 'cancelled' | 'failed';
  a: string;
  b: string;
  side: PairSide;
  mode: SteerMode;
  /** The experts in the patch (rank order), those left out and why, and the patch itself. */
  experts: ExpertDifference[];
  skipped: { layer: number; expert: number; reason: string }[];
  patch: RoutingPatch;
  done: number;
  total: number;
  outcome?: SteeringOutcome;
  error?: string;
}

// ---- values ----

type Typed = Float64Array | Float32Array | Int32Array;
type TypedKind<T extends Typed> = { new (n: number): T; from(v: ArrayLike<number>): T };

/** A typed array back from a transport: kept when it arrived as one; a list or {"0": x, "1": y, …} (what some
 *  webview transports make of typed arrays, as routing.ts checkSpan notes) converted. */
function typed<T extends Typed>(value: unknown, kind: TypedKind<T>, name: string): T {
  if (value instanceof kind) return value;
  if (ArrayBuffer.isView(value) || Array.isArray(value)) return kind.from(value as unknown as ArrayLike<number>);
  if (typeof value === 'object' && value !== null) {
    const o = value as Record<string, number>;
    const n = Object.keys(o).length;
    const out = new kind(n);
    for (let i = 0; i < n; i++) out[i] = o[i];
    return out;
  }
  throw new Error(`statistics: ${name} is not an array`);
}

/** The statistics as the webview received them, with every typed array restored (checked by length). */
export function reviveStatsData(raw: StatsPanelData): StatsPanelData {
  const r = raw.result;
  const { layers, numExperts: E, vocabSize: V } = r.shape;
  const L = layers.length;
  const f64 = (v: unknown, n: number, name: string): Float64Array => {
    const a = typed(v, Float64Array, name);
    if (a.length !== n) throw new Error(`statistics: ${name} has ${a.length} values, expected ${n}`);
    return a;
  };
  const tn = r.topTokens.n;
  const cn = r.topContexts.n;
  return {
    ...raw,
    result: {
      ...r,
      groups: r.groups.map((g) => ({
        ...g,
        activations: f64(g.activations, L * E, 'activations'),
        top1: f64(g.top1, L * E, 'top1'),
        weight: f64(g.weight, L * E, 'weight'),
        entropy: f64(g.entropy, L, 'entropy'),
      })),
      coActivation: f64(r.coActivation, L * E * E, 'coActivation'),
      flow: f64(r.flow, Math.max(0, L - 1) * E * E, 'flow'),
      tokenCounts: f64(r.tokenCounts, V, 'tokenCounts'),
      topTokens: { n: tn, ids: typed(r.topTokens.ids, Int32Array, 'topTokens.ids'), counts: f64(r.topTokens.counts, L * E * tn, 'topTokens.counts'), errors: f64(r.topTokens.errors, L * E * tn, 'topTokens.errors') },
      topContexts: {
        n: cn,
        prompts: typed(r.topContexts.prompts, Int32Array, 'topContexts.prompts'),
        positions: typed(r.topContexts.positions, Int32Array, 'topContexts.positions'),
        tokens: typed(r.topContexts.tokens, Int32Array, 'topContexts.tokens'),
        weights: typed(r.topContexts.weights, Float32Array, 'topContexts.weights'),
      },
    },
    tokenTexts: { ids: typed(raw.tokenTexts.ids, Int32Array, 'tokenTexts.ids'), texts: raw.tokenTexts.texts },
  };
}

/** The load so far of a progress message, restored like reviveStatsData's arrays. */
export function reviveLoad(raw: unknown): Float64Array | undefined {
  return raw === undefined ? undefined : typed(raw, Float64Array, 'load');
}

// ---- host → webview ----------------------------------------------------------------------------------------------

export const StatsStartedNotification = new IpcNotification<StatsRunStart>('stats/started');
/** Prompts done so far; `load` = activations so far per (layer, expert), [L × E]. */
export const StatsProgressNotification = new IpcNotification<{ done: number; total: number; tokens: number; skipped: number; load?: Float64Array }>('stats/progress');
export const StatsResultNotification = new IpcNotification<StatsPanelData>('stats/result');
export const StatsFailedNotification = new IpcNotification<{ message: string }>('stats/failed');
/** A panel restored after a window reload: the statistics were not kept; Run again computes them anew. */
export const StatsUnavailableNotification = new IpcNotification<{ reason: string }>('stats/unavailable');
export const StatsContextNotification = new IpcNotification<StatsContext>('stats/context');
export const SteeringNotification = new IpcNotification<SteeringState>('stats/steering');

// ---- webview → host ----------------------------------------------------------------------------------------------

export const StatsReadyCommand = new IpcCommand<Record<string, never>>('stats/ready');
/** Show prompt `prompt` with the token at `position` highlighted (a top context was clicked). */
export const OpenContextCommand = new IpcCommand<{ prompt: number; position: number; layer: number; expert: number; weight: number }>('stats/openContext');
/** Make the patch masking / forcing the top `n` experts of one side of the pair (a, b) and re-run both sets. */
export const SteerCommand = new IpcCommand<{ a: string; b: string; side: PairSide; n: number; mode: SteerMode }>('stats/steer');
/** The last steering patch becomes the session's routing patch (for Inspect / Generate). */
export const ApplySteeringPatchCommand = new IpcCommand<Record<string, never>>('stats/applyPatch');
/** Export the statistics (and the pair's ranking, when a pair is chosen) as the CLI writes them. */
export const StatsExportCommand = new IpcCommand<{ format: 'safetensors' | 'csv'; pair?: [string, string] }>('stats/export');
/** Inspect the routing of one prompt of the set in the routing panel. */
export const InspectPromptCommand = new IpcCommand<{ prompt: number }>('stats/inspectPrompt');
/** Run the statistics of the same set again. */
export const StatsRerunCommand = new IpcCommand<Record<string, never>>('stats/rerun');

/** A command from the webview, checked: only known methods with object params get through. */
export function decodeStatsMessage(raw: unknown): IpcMessage<unknown> | undefined {
  if (typeof raw !== 'object' || raw === null) return undefined;
  const m = raw as IpcMessage<unknown>;
  const known = [StatsReadyCommand, OpenContextCommand, SteerCommand, ApplySteeringPatchCommand, StatsExportCommand, InspectPromptCommand, StatsRerunCommand];
  if (!known.some((t) => t.is(m))) return undefined;
  if (typeof m.params !== 'object' || m.params === null) return undefined;
  return m;
}
