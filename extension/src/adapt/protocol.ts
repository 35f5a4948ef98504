// The adaptation requests the engine process serves for the editor (handlers: adapt/requests.ts): a C3PO re-mix of
// one prompt, a generation with and without continuous rerouting, and the routing headroom of labelled items
// (analysis only). They extend engine/protocol.ts's CoreMethods.
import type { NativeRerouteRound } from '../engine/native';
import type { RemixComparison, RerouteComparison } from './compare';
import type { HeadroomItemRecord, HeadroomSummary } from './headroom';
import type { C3poMethod, C3poSettings, EmbeddingSettings, HeadroomSettings, RerouteSettings } from './settings';
import type { TaskItem } from './tasks';

/** A prompt for the adaptation requests: text (needs the model's tokenizer) or token ids. */
export interface AdaptPrompt {
  text?: string;
  tokens?: number[];
}

export interface RemixParams extends AdaptPrompt {
  /** The C3PO reference set folder (routescope reference build). */
  referenceDir: string;
  method: Exclude<C3poMethod, 'oracle'>;
  c3po: C3poSettings;
  embedding: EmbeddingSettings;
  maxNewTokens: number;
  /** Defaults to the model's EOS ids. */
  stopTokens?: number[];
}

export interface RemixResult {
  comparison: RemixComparison;
  /** The neighbours used, with their question text from the reference set. */
  neighbours: { id: string; question: string; similarity: number; weight: number }[];
  referenceDir: string;
  referenceItems: number;
  promptTokens: number;
}

export interface RerouteParams extends AdaptPrompt {
  settings: RerouteSettings;
  maxNewTokens: number;
  stopTokens?: number[];
}

export interface RerouteResult {
  comparison: RerouteComparison;
  promptTokens: number;
}

/** One finished rerouting round (streamed by the reroute request). */
export interface RoundEvent {
  kind: 'round';
  round: NativeRerouteRound;
}

export interface HeadroomParams {
  items: TaskItem[];
  settings: HeadroomSettings;
}

export interface HeadroomResult {
  summary: HeadroomSummary;
  records: HeadroomItemRecord[];
}

/** One labelled item searched (streamed by the headroom request). */
export interface HeadroomEvent {
  kind: 'item';
  record: HeadroomItemRecord;
  done: number;
  total: number;
}

export type AdaptMethods = {
  /** C3PO re-mix of one prompt with a reference set: before/after (adapt/compare.ts compareRemix). */
  remix: { params: RemixParams; result: RemixResult; event: never };
  /** Greedy generation with and without continuous rerouting (adapt/compare.ts compareReroute). */
  reroute: { params: RerouteParams; result: RerouteResult; event: RoundEvent };
  /** Routing headroom of labelled items (adapt/headroom.ts; ANALYSIS ONLY); a cancel keeps the items finished. */
  headroom: { params: HeadroomParams; result: HeadroomResult; event: HeadroomEvent };
};
