// The routing-statistics requests the engine process serves for the editor (handlers: stats/requests.ts): the
// statistics of a prompt set, aggregated next to the model as its spans stream (stats/collect.ts, the code
// `routescope stats` runs), and the re-run of two sets without and with a steering patch (stats/steer.ts). They
// extend engine/protocol.ts's CoreMethods. Only aggregates come back: counts arrays and bounded top-k lists.
import type { RoutingPatch } from '../../../common/src/patch';
import type { RoutingStatsResult } from '../../../common/src/routingStats';
import type { TaskItem } from '../adapt/tasks';
import type { SteeringOutcome } from './steer';

export interface StatsPrompt {
  text: string;
  /** Index into the request's groups. */
  group: number;
  /** The labelled item (task sets): the steering re-run scores it. */
  task?: TaskItem;
}

export interface CollectStatsParams {
  prompts: StatsPrompt[];
  groups: string[];
  /** Top tokens listed per expert (default 32). */
  topTokens?: number;
  tokenSlots?: number;
}

/** Text of the token ids the result names (top tokens and contexts), so views need no tokenizer. */
export interface TokenTexts {
  ids: Int32Array;
  texts: string[];
}

export interface CollectStatsResult {
  result: RoutingStatsResult;
  tokenTexts: TokenTexts;
  /** Prompts read (counted or skipped) before the end or a cancel. */
  completed: number;
  cancelled: boolean;
  seconds: number;
}

/** Progress of a statistics run, at most a few times a second; `load` is the activations so far ([L × E]). */
export interface CollectStatsEvent {
  kind: 'progress';
  done: number;
  total: number;
  tokens: number;
  skipped: number;
  load?: Float64Array;
}

export interface SteerStatsParams {
  prompts: StatsPrompt[];
  groups: string[];
  /** The groups to run (indices into groups). */
  run: number[];
  patch: RoutingPatch;
}

export interface SteerStatsEvent {
  kind: 'progress';
  done: number;
  total: number;
}

export type StatsMethods = {
  /** Routing statistics of a prompt set (stats/collect.ts); a cancel returns the prompts that finished. */
  collectStats: { params: CollectStatsParams; result: CollectStatsResult; event: CollectStatsEvent };
  /** Both sets without and with a steering patch (stats/steer.ts); a cancel returns the prompts that finished. */
  steerStats: { params: SteerStatsParams; result: SteeringOutcome; event: SteerStatsEvent };
};
