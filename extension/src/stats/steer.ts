// What a steering patch (common/src/statsQueries.ts steeringPatch: the top experts of one side of a pair masked or
// forced) does to the two sets: each prompt runs without and with the patch in the same run. Labelled items are
// scored as the evaluation harness scores them (adapt/tasks.ts: the option letter with the highest log-probability,
// or greedy generation with exact match): accuracy before and after, and the flips. Prompts without labels report
// how the next-token distribution after the prompt moved: mean total variation, mean KL(before ‖ after) in nats, and
// how often the most likely token changed. Shared by `routescope stats --steer` and the statistics panel.
import type { NativeModelInfo, NativeSession } from '../engine/native';
import type { ModelTokenizer } from '../checkpoint/tokenizer';
import { argmax, klDivergence, softmax, totalVariation } from '../../../common/src/math';
import { serializePatch, type RoutingPatch } from '../../../common/src/patch';
import type { GroupSteering, SteeringOutcome } from '../../../common/src/statsQueries';
import { TaskRunner, type TaskItem } from '../adapt/tasks';

export type { GroupSteering, SteeringOutcome };

export interface SteerPrompt {
  text: string;
  group: number;
  task?: TaskItem;
}

export interface SteerOptions {
  session: NativeSession;
  info: NativeModelInfo;
  tokenizer: ModelTokenizer;
  prompts: readonly SteerPrompt[];
  groups: readonly string[];
  /** The groups to run (indices into `groups`). */
  run: readonly number[];
  patch: RoutingPatch;
  onProgress?(done: number, total: number): void;
  shouldStop?(): boolean;
}

const isCancel = (error: unknown): boolean => (error as { code?: unknown }).code === 'CANCELLED';

export async function evaluateSteering(o: SteerOptions): Promise<SteeringOutcome> {
  const runner = new TaskRunner(o.info, o.tokenizer);
  const patchJson = serializePatch(o.patch);
  const chosen = o.prompts.filter((p) => o.run.includes(p.group));
  const acc = new Map<number, { prompts: number; labelled: number; before: number; after: number; w2r: number; r2w: number; unlabelled: number; tv: number; kl: number; top1: number }>();
  for (const g of o.run) acc.set(g, { prompts: 0, labelled: 0, before: 0, after: 0, w2r: 0, r2w: 0, unlabelled: 0, tv: 0, kl: 0, top1: 0 });
  let completed = 0;
  let cancelled = false;
  const lastProbs = async (tokens: number[], patch?: string): Promise<Float32Array> => {
    o.session.reset();
    const out = await o.session.forward(Int32Array.from(tokens), { logits: 'last', ...(patch ? { patch } : {}) });
    return softmax(out.logits.subarray(out.logits.length - o.info.vocabSize));
  };
  for (const p of chosen) {
    if (o.shouldStop?.()) {
      cancelled = true;
      break;
    }
    const a = acc.get(p.group)!;
    try {
      if (p.task) {
        const task = p.task;
        const tokens = runner.encode(task.prompt);
        let before: boolean;
        let after: boolean;
        if (task.kind === 'mc') {
          before = runner.scoreMc(task, (await runner.forward(o.session, tokens)).logits).correct;
          after = runner.scoreMc(task, (await runner.forward(o.session, tokens, o.patch)).logits).correct;
        } else {
          before = (await runner.generate(o.session, task, tokens)).correct;
          after = (await runner.generate(o.session, task, tokens, o.patch)).correct;
        }
        a.labelled++;
        a.before += before ? 1 : 0;
        a.after += after ? 1 : 0;
        if (!before && after) a.w2r++;
        if (before && !after) a.r2w++;
      } else {
        const tokens = o.tokenizer.encode(p.text);
        if (tokens.length === 0) continue;
        const before = await lastProbs(tokens);
        const after = await lastProbs(tokens, patchJson);
        a.unlabelled++;
        a.tv += totalVariation(before, after);
        a.kl += klDivergence(before, after);
        a.top1 += argmax(before) !== argmax(after) ? 1 : 0;
      }
      a.prompts++;
    } catch (error) {
      if (isCancel(error)) {
        cancelled = true;
        break;
      }
      throw error;
    }
    completed++;
    o.onProgress?.(completed, chosen.length);
  }
  o.session.reset();
  return {
    groups: o.run.map((g) => {
      const a = acc.get(g)!;
      const out: GroupSteering = { group: o.groups[g], prompts: a.prompts, labelled: a.labelled, unlabelled: a.unlabelled };
      if (a.labelled) {
        out.accuracy = { before: a.before / a.labelled, after: a.after / a.labelled };
        out.flips = { wrongToRight: a.w2r, rightToWrong: a.r2w };
      }
      if (a.unlabelled) out.nextToken = { meanTotalVariation: a.tv / a.unlabelled, meanKl: a.kl / a.unlabelled, top1Changed: a.top1 / a.unlabelled };
      return out;
    }),
    completed,
    total: chosen.length,
    cancelled,
  };
}
