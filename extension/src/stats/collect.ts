// Runs a prompt set through the engine and aggregates its routing (common/src/routingStats.ts) as the spans stream:
// one forward pass per prompt, no logits, nothing kept per token. Shared by `routescope stats` (cli/stats.ts) and the
// engine process behind the statistics panel (stats/requests.ts), so both count the same way. A prompt the engine
// cannot take (longer than the model's context, or no tokens) is skipped and counted as such; a cancel stops the
// prompt in flight, which then counts nowhere.
import type { NativeModelInfo, NativeSession } from '../engine/native';
import { RoutingStats, type RoutingStatsResult } from '../../../common/src/routingStats';

export interface CollectPrompt {
  text: string;
  group: number;
}

export interface CollectProgress {
  done: number;
  total: number;
  tokens: number;
  skipped: number;
}

export interface CollectOptions {
  session: NativeSession;
  info: NativeModelInfo;
  encode(text: string): number[];
  prompts: readonly CollectPrompt[];
  groups: readonly string[];
  tokenSlots?: number;
  contexts?: number;
  /** The top tokens listed per expert in the result (default 32). */
  topTokens?: number;
  /** Called after every prompt, with the aggregate so far. */
  onProgress?(progress: CollectProgress, stats: RoutingStats): void;
  /** Checked between prompts. */
  shouldStop?(): boolean;
}

export interface CollectOutcome {
  result: RoutingStatsResult;
  completed: number;
  cancelled: boolean;
  seconds: number;
}

const isCancel = (error: unknown): boolean => (error as { code?: unknown }).code === 'CANCELLED';

export async function collectStats(o: CollectOptions): Promise<CollectOutcome> {
  const started = performance.now();
  const { info } = o;
  const stats = new RoutingStats(
    { layers: info.moeLayers, numExperts: info.numExperts, topK: info.topK, vocabSize: info.vocabSize },
    { groups: [...o.groups], ...(o.tokenSlots !== undefined ? { tokenSlots: o.tokenSlots } : {}), ...(o.contexts !== undefined ? { contexts: o.contexts } : {}) },
  );
  const limit = info.maxPositionEmbeddings > 0 ? info.maxPositionEmbeddings : Number.POSITIVE_INFINITY;
  let tokensSeen = 0;
  let skipped = 0;
  let cancelled = false;
  let done = 0;
  for (let i = 0; i < o.prompts.length; i++) {
    if (o.shouldStop?.()) {
      cancelled = true;
      break;
    }
    const prompt = o.prompts[i];
    const tokens = o.encode(prompt.text);
    if (tokens.length === 0 || tokens.length > limit || tokens.some((t) => t < 0 || t >= info.vocabSize)) {
      stats.skip();
      skipped++;
    } else {
      o.session.reset();
      stats.beginPrompt(i, prompt.group, tokens);
      try {
        await o.session.forward(Int32Array.from(tokens), { logits: 'none', onLayer: (span) => stats.add(span) });
      } catch (error) {
        stats.abortPrompt();
        if (isCancel(error)) {
          cancelled = true;
          break;
        }
        throw error;
      }
      stats.endPrompt();
      tokensSeen += tokens.length;
    }
    done = i + 1;
    o.onProgress?.({ done, total: o.prompts.length, tokens: tokensSeen, skipped }, stats);
  }
  o.session.reset();
  return { result: stats.result(o.topTokens), completed: done, cancelled, seconds: (performance.now() - started) / 1000 };
}
