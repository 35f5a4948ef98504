// The evaluation harness: every item is answered by the plain model (method "none") and by the chosen method in
// the same run, so accuracy, flips and the time overhead compare like with like.
//   multiple choice: the option letter with the highest log-probability at the last prompt position;
//   generative: greedy decoding, exact match.
import type { NativeModel, NativeSession } from '../engine/native';
import type { RoutingSpan } from '../../../common/src/routing';
import { C3po, c3poPatch, omegaSummary, type C3poOutcome } from './c3po';
import { deltaPatch, deltaSummary, generateRerouted, type DeltaSummary } from './reroute';
import type { C3poMethod, C3poSettings, RerouteSettings } from './settings';
import { GEN_MAX_NEW_TOKENS, questionText, runItems, type TaskItem, type TaskRunner } from './tasks';

export const EVAL_METHODS = ['none', 'c3po', 'c3po-kr', 'c3po-mode', 'c3po-oracle', 'reroute'] as const;
export type EvalMethod = (typeof EVAL_METHODS)[number];

export const C3PO_METHOD: Record<string, C3poMethod> = { c3po: 'ngd', 'c3po-kr': 'kernel', 'c3po-mode': 'mode', 'c3po-oracle': 'oracle' };

export function describeMethod(method: EvalMethod): string {
  switch (method) {
    case 'none': return 'none (the plain model)';
    case 'c3po': return 'C3PO NGD';
    case 'c3po-kr': return 'C3PO kernel regression';
    case 'c3po-mode': return 'C3PO mode finding';
    case 'c3po-oracle': return 'C3PO oracle (NGD on the test label — analysis only, not a usable method)';
    case 'reroute': return 'continuous rerouting';
  }
}

export interface Answer {
  answer: string;     // MC: the chosen letter; generative: the generated text
  correct: boolean;
  ms: number;
  /** CPU time of the process over the same span (every thread): steadier than wall time on a busy machine. */
  cpu_ms: number;
}

export interface ItemRecord {
  id: string;
  skill: string;
  kind: 'mc' | 'gen';
  expected: string;
  none: Answer;
  method: Answer & {
    omega?: ReturnType<typeof omegaSummary>;
    neighbours?: C3poOutcome['neighbours'];
    surrogate_loss?: number[];
    alpha?: number;
    skipped?: string;
    delta?: DeltaSummary;
  };
  flip: 'wrong→right' | 'right→wrong' | null;
  analysis_only?: true;
}

export interface EvalProgress {
  done: number;
  total: number;
  noneCorrect: number;
  methodCorrect: number;
}

export interface EvalSummary {
  method: EvalMethod;
  analysis_only: boolean;
  items: number;
  completed: number;
  cancelled: boolean;
  accuracy: { none: number; method: number };
  per_skill: Record<string, { items: number; none: number; method: number }>;
  flips: { wrong_to_right: number; right_to_wrong: number };
  mean_ms: { none: number; method: number };
  overhead: number;
  mean_cpu_ms: { none: number; method: number };
  cpu_overhead: number;
}

export interface EvalOptions {
  model: NativeModel;
  session: NativeSession;
  runner: TaskRunner;
  items: TaskItem[];
  method: EvalMethod;
  c3po?: C3po;                     // required by the c3po-* methods
  c3poSettings: C3poSettings;
  rerouteSettings: RerouteSettings;
  onRecord?: (record: ItemRecord) => void;
  onProgress?: (p: EvalProgress) => void;
  shouldStop?: () => boolean;
  /** The plain model's routing of every prompt position of each multiple-choice item (for expert-load tables). */
  onRouting?: (item: TaskItem, routing: RoutingSpan, lastPosition: number) => void;
}

/** Wall and process CPU time since it was made. */
function stopwatch(): () => { ms: number; cpu_ms: number } {
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  return () => {
    const c = process.cpuUsage(c0);
    return { ms: performance.now() - t0, cpu_ms: (c.user + c.system) / 1000 };
  };
}

async function timed<T>(run: () => Promise<T>): Promise<[T, { ms: number; cpu_ms: number }]> {
  const elapsed = stopwatch();
  const value = await run();
  return [value, elapsed()];
}

export async function runEval(o: EvalOptions): Promise<EvalSummary> {
  if (o.method in C3PO_METHOD && !o.c3po) throw new Error(`method ${o.method} needs a reference set (--reference REF)`);
  const { records, cancelled } = await runItems(o.items, (item) => evalItem(o, item), {
    shouldStop: o.shouldStop,
    onRecord: o.onRecord,
    onItemDone: (done) => o.onProgress?.({
      done: done.length,
      total: o.items.length,
      noneCorrect: done.filter((r) => r.none.correct).length,
      methodCorrect: done.filter((r) => r.method.correct).length,
    }),
  });
  return summarise(o.method, o.items.length, records, cancelled);
}

export function summarise(method: EvalMethod, total: number, records: ItemRecord[], cancelled: boolean): EvalSummary {
  const n = records.length;
  const frac = (k: number, of: number): number => (of ? k / of : 0);
  const perSkill: EvalSummary['per_skill'] = Object.create(null); // skills are user text: "__proto__" is a skill too
  for (const r of records) {
    const s = (perSkill[r.skill || '(none)'] ??= { items: 0, none: 0, method: 0 });
    s.items++;
    s.none += r.none.correct ? 1 : 0;
    s.method += r.method.correct ? 1 : 0;
  }
  for (const s of Object.values(perSkill)) {
    s.none = frac(s.none, s.items);
    s.method = frac(s.method, s.items);
  }
  const meanNone = frac(records.reduce((a, r) => a + r.none.ms, 0), n);
  const meanMethod = frac(records.reduce((a, r) => a + r.method.ms, 0), n);
  const cpuNone = frac(records.reduce((a, r) => a + r.none.cpu_ms, 0), n);
  const cpuMethod = frac(records.reduce((a, r) => a + r.method.cpu_ms, 0), n);
  return {
    method,
    analysis_only: method === 'c3po-oracle',
    items: total,
    completed: n,
    cancelled,
    accuracy: { none: frac(records.filter((r) => r.none.correct).length, n), method: frac(records.filter((r) => r.method.correct).length, n) },
    per_skill: perSkill,
    flips: {
      wrong_to_right: records.filter((r) => r.flip === 'wrong→right').length,
      right_to_wrong: records.filter((r) => r.flip === 'right→wrong').length,
    },
    mean_ms: { none: meanNone, method: meanMethod },
    overhead: meanNone > 0 ? meanMethod / meanNone : 0,
    mean_cpu_ms: { none: cpuNone, method: cpuMethod },
    cpu_overhead: cpuNone > 0 ? cpuMethod / cpuNone : 0,
  };
}

async function evalItem(o: EvalOptions, item: TaskItem): Promise<ItemRecord> {
  const { runner, session } = o;
  const tokens = runner.encode(item.prompt);
  const last = tokens.length - 1;

  // The plain model.
  let none: Answer;
  if (item.kind === 'mc') {
    const onRouting = o.onRouting && ((r: RoutingSpan) => o.onRouting!(item, r, last));
    const [fwd, time] = await timed(() => runner.forward(session, tokens, undefined, onRouting));
    const s = runner.scoreMc(item, fwd.logits);
    none = { answer: s.choice, correct: s.correct, ...time };
  } else {
    const [g, time] = await timed(() => runner.generate(session, item, tokens));
    none = { answer: g.text, correct: g.correct, ...time };
  }

  let method: ItemRecord['method'];
  if (o.method === 'none') {
    method = { ...none };
  } else if (o.method === 'reroute') {
    const elapsed = stopwatch();
    let answer: string;
    let correct: boolean;
    let delta: DeltaSummary;
    if (item.kind === 'mc') {
      // A round after prefill (no token generated), then the letters scored with the adapted δ.
      const r = await generateRerouted(session, o.rerouteSettings, { prompt: tokens, maxNewTokens: 0, stopTokens: runner.info.eosTokenIds });
      session.reset();
      const fwd = await runner.forward(session, tokens, deltaPatch(r.delta));
      const s = runner.scoreMc(item, fwd.logits);
      [answer, correct, delta] = [s.choice, s.correct, deltaSummary(r)];
    } else {
      const r = await generateRerouted(session, o.rerouteSettings, {
        prompt: tokens,
        maxNewTokens: GEN_MAX_NEW_TOKENS,
        stopTokens: runner.info.eosTokenIds,
      });
      session.reset();
      const g = runner.finishGeneration(item, [...r.tokens]);
      [answer, correct, delta] = [g.text, g.correct, deltaSummary(r)];
    }
    method = { answer, correct, ...elapsed(), delta };
  } else {
    const c3po = o.c3po!;
    const kind = C3PO_METHOD[o.method];
    const elapsed = stopwatch();
    // One forward of the prompt gives the original routing ω and, with the model's own embeddings, the embedding for
    // the neighbour search (part of the method's cost). Multiple choice: the prefix stays cached, so the adapted ω
    // (which changes only the last position) is scored by re-running that one position.
    const mc = item.kind === 'mc';
    const fwd = mc
      ? await runner.forwardKeepingPrefix(session, tokens, c3po.embedLayer)
      : await runner.forward(session, tokens, undefined, undefined, c3po.embedLayer);
    const outcome = await c3po.adapt(kind, {
      tokens,
      question: questionText(item),
      prompt: item.prompt,
      omega: fwd.omega,
      ...(fwd.embedding ? { forwardEmbedding: fwd.embedding } : {}),
      ...(kind === 'oracle' ? { label: oracleLabel(o, item, tokens) } : {}),
      ...(kind === 'oracle' && item.kind === 'mc' ? { options: runner.optionTokens(item) } : {}),
    });
    let answer: string;
    let correct: boolean;
    if (item.kind === 'mc') {
      const patched = await runner.forwardLast(session, tokens, c3poPatch(outcome.omegaAfter, last, 'prefill-only'));
      session.reset();
      const s = runner.scoreMc(item, patched.logits);
      [answer, correct] = [s.choice, s.correct];
    } else {
      const g = await runner.generate(session, item, tokens, c3poPatch(outcome.omegaAfter, last, o.c3poSettings.applyTo));
      [answer, correct] = [g.text, g.correct];
    }
    method = {
      answer,
      correct,
      ...elapsed(),
      omega: omegaSummary(outcome),
      neighbours: outcome.neighbours,
      surrogate_loss: [outcome.losses[0], outcome.losses[outcome.losses.length - 1]],
      ...(outcome.alpha !== undefined ? { alpha: outcome.alpha } : {}),
      ...(outcome.skipped ? { skipped: outcome.skipped } : {}),
    };
  }
  return {
    id: item.id,
    skill: item.skill,
    kind: item.kind,
    expected: item.answer,
    none,
    method,
    flip: none.correct === method.correct ? null : method.correct ? 'wrong→right' : 'right→wrong',
    ...(o.method === 'c3po-oracle' ? { analysis_only: true as const } : {}),
  };
}

/** The oracle's label: the correct option letter's token, or the first token of the reference answer text. */
function oracleLabel(o: EvalOptions, item: TaskItem, tokens: number[]): number {
  if (item.kind === 'mc') return o.runner.answerToken(item);
  const withAnswer = o.runner.tokenizer.encode(item.prompt + ' ' + item.answer.trim());
  const same = tokens.every((t, i) => withAnswer[i] === t);
  const base = o.runner.tokenizer.encode('').length; // a BOS, where the tokenizer adds one
  const next = same ? withAnswer[tokens.length] : o.runner.tokenizer.encode(' ' + item.answer.trim())[base];
  if (next === undefined) throw new Error(`${item.id}: cannot tokenise the answer for the oracle`);
  return next;
}
