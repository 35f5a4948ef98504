// The engine process's handlers of the statistics requests (stats/protocol.ts), registered with serveEngine by
// extension/src/engineProcess.ts: the prompt set is run and aggregated here, next to the model, so the extension
// host and the webview only ever hold the aggregate.
import type { HandlerTable } from '../engine/worker';
import { EngineError } from '../engine/protocol';
import { validatePatch } from '../../../common/src/patch';
import type { RoutingStatsResult } from '../../../common/src/routingStats';
import { collectStats } from './collect';
import { evaluateSteering } from './steer';
import type { StatsMethods, TokenTexts } from './protocol';

/** How often progress (with the load so far) is streamed to the host. */
const PROGRESS_MS = 250;

/** The token ids a result names, with their text. */
function tokenTexts(result: RoutingStatsResult, text: (id: number) => string): TokenTexts {
  const ids = new Set<number>();
  for (const id of result.topTokens.ids) if (id >= 0) ids.add(id);
  for (let i = 0; i < result.topContexts.prompts.length; i++) if (result.topContexts.prompts[i] >= 0) ids.add(result.topContexts.tokens[i]);
  const sorted = Int32Array.from([...ids].sort((a, b) => a - b));
  return { ids: sorted, texts: Array.from(sorted, text) };
}

function checkGroups(prompts: { group: number }[], groups: string[]): void {
  if (prompts.length === 0) throw new EngineError('BAD_PROMPTS', 'the prompt set is empty');
  const bad = prompts.find((p) => !Number.isInteger(p.group) || p.group < 0 || p.group >= groups.length);
  if (bad) throw new EngineError('BAD_PROMPTS', `a prompt names group ${bad.group}, but the set has ${groups.length} groups`);
}

export const statsHandlers: HandlerTable<StatsMethods> = {
  async collectStats(params, { emit, track, isCancelled, model, tokenizer: requireTokenizer }) {
    const l = model();
    const tokenizer = requireTokenizer();
    checkGroups(params.prompts, params.groups);
    const session = l.model.createSession();
    track(session);
    let last = 0;
    const outcome = await collectStats({
      session,
      info: l.info,
      encode: (t) => tokenizer.encode(t),
      prompts: params.prompts,
      groups: params.groups,
      topTokens: params.topTokens ?? 32,
      ...(params.tokenSlots !== undefined ? { tokenSlots: params.tokenSlots } : {}),
      shouldStop: isCancelled,
      onProgress: (p, stats) => {
        const now = performance.now();
        if (now - last < PROGRESS_MS && p.done < p.total) return;
        last = now;
        emit({ kind: 'progress', ...p, load: stats.totalActivations() });
      },
    });
    return { ...outcome, tokenTexts: tokenTexts(outcome.result, (id) => tokenizer.tokenText(id)) };
  },
  async steerStats(params, { emit, track, isCancelled, model, tokenizer: requireTokenizer }) {
    const l = model();
    const tokenizer = requireTokenizer();
    checkGroups(params.prompts, params.groups);
    const patch = validatePatch(params.patch, 'steering patch', l.info);
    const session = l.model.createSession();
    track(session);
    return evaluateSteering({
      session,
      info: l.info,
      tokenizer,
      prompts: params.prompts,
      groups: params.groups,
      run: params.run,
      patch,
      shouldStop: isCancelled,
      onProgress: (done, total) => emit({ kind: 'progress', done, total }),
    });
  },
};
