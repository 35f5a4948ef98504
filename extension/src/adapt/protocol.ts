// The adaptation requests the engine process serves for the editor (handlers: adapt/requests.ts): a C3PO re-mix of
// one prompt and a generation with and without continuous rerouting. They extend engine/protocol.ts's CoreMethods.
import type { NativeRerouteRound } from '../engine/native';
import type { RemixComparison, RerouteComparison } from './compare';
import type { C3poMethod, C3poSettings, EmbeddingSettings, RerouteSettings } from './settings';

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

export type AdaptMethods = {
  /** C3PO re-mix of one prompt with a reference set: before/after (adapt/compare.ts compareRemix). */
  remix: { params: RemixParams; result: RemixResult; event: never };
  /** Greedy generation with and without continuous rerouting (adapt/compare.ts compareReroute). */
  reroute: { params: RerouteParams; result: RerouteResult; event: RoundEvent };
};
