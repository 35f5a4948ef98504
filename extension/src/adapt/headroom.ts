// Routing headroom, the C3PO paper's motivating analysis — ANALYSIS ONLY: every change is searched with the item's
// own label. For each labelled item, the engine (Session.routingHeadroom) searches the routing of the last prompt
// position, in each MoE layer alone and in all together, for the change that fixes a wrong answer or breaks a right
// one; this module runs the items and aggregates the share of wrong items that routing alone can fix and the share
// of right items one layer's routing can break. Shared by the CLI (`routescope headroom`) and the editor.
import type { NativeHeadroomChange, NativeHeadroomResult, NativeSession } from '../engine/native';
import type { HeadroomSettings } from './settings';
import { runItems, TaskError, type TaskItem, type TaskRunner } from './tasks';

export const HEADROOM_NOTICE =
  'ANALYSIS ONLY: every routing change here is searched with the item\'s own label; the figures bound what routing could do, they are not a method.';

/** What one item's search found, per layer and together (compact: no ω rows). */
export interface HeadroomChangeRecord {
  layer: number;            // -1: all layers together
  flipped: boolean;
  margin: number;           // the label's logit minus the best other option's, after the change
  answer: string;           // the answer after the change (an option letter, or the token's text)
  swaps: { layer: number; out: number; in: number }[];
  gradient: boolean;
  evaluations: number;
}

export interface HeadroomItemRecord {
  analysis_only: true;
  id: string;
  skill: string;
  kind: 'mc' | 'gen';
  expected: string;         // the option letter, or the answer's first token's text
  answer: string;           // the model's own answer
  correct: boolean;
  margin: number;           // with the model's own routing
  layers: HeadroomChangeRecord[];
  joint?: HeadroomChangeRecord;
  ms: number;
}

export interface HeadroomLayerFigure {
  layer: number;
  /** Wrong items this layer's routing alone fixes, and their share of the wrong items. */
  fixed: number;
  fixShare: number;
  /** Right items this layer's routing alone breaks, and their share of the right items. */
  broken: number;
  breakShare: number;
}

export interface HeadroomSummary {
  analysis_only: true;
  notice: string;
  items: number;
  completed: number;
  cancelled: boolean;
  right: number;
  wrong: number;
  accuracy: number;
  perLayer: HeadroomLayerFigure[];
  /** Any single layer (the union over layers) and every layer together. */
  anyLayer: { fixed: number; fixShare: number; broken: number; breakShare: number };
  joint?: { fixed: number; fixShare: number; broken: number; breakShare: number };
  /** Accuracy if every item took the best routing change found with its label (all layers together). */
  bestRoutingAccuracy: number;
  /** The wrong items some routing change fixes: which layers alone do, and whether all together do. */
  fixedItems: { id: string; skill: string; expected: string; answer: string; layers: number[]; joint: boolean }[];
  settings: HeadroomSettings;
  meanMs: number;
}

export interface HeadroomOptions {
  session: NativeSession;
  runner: TaskRunner;
  items: TaskItem[];
  settings: HeadroomSettings;
  onRecord?: (record: HeadroomItemRecord) => void;
  onProgress?: (p: { done: number; total: number; right: number; fixed: number }) => void;
  /** Polled between items: stop and summarise what finished. */
  shouldStop?: () => boolean;
}

/** The label and competing tokens of an item: the option letters (multiple choice) or the answer's first token
 *  against the whole vocabulary (generative: headroom of the first answer token). */
export function itemLabel(runner: TaskRunner, item: TaskItem, tokens: number[]): { label: number; options: number[]; expected: string } {
  if (item.kind === 'mc') return { label: runner.answerToken(item), options: runner.optionTokens(item), expected: item.answer };
  if (item.answer.trim() === '') throw new TaskError(`${item.id}: no answer to search the routing with (headroom needs labelled items)`);
  const label = firstAnswerToken(runner, item.prompt, item.answer, tokens);
  return { label, options: [], expected: runner.tokenizer.tokenText(label) };
}

/** The first token of a generative item's answer as it follows its prompt (the continuation the model should
 *  start with), else the answer's own first token. */
export function firstAnswerToken(runner: TaskRunner, prompt: string, answer: string, tokens: number[]): number {
  const withAnswer = runner.tokenizer.encode(prompt + ' ' + answer.trim());
  const same = tokens.every((t, i) => withAnswer[i] === t);
  const base = runner.tokenizer.encode('').length; // a BOS, where the tokenizer adds one
  const next = same ? withAnswer[tokens.length] : runner.tokenizer.encode(' ' + answer.trim())[base];
  if (next === undefined) throw new Error(`cannot tokenise the answer "${answer.slice(0, 40)}" after its prompt`);
  return next;
}

function answerText(runner: TaskRunner, item: TaskItem, token: number): string {
  if (item.kind === 'mc') {
    const letter = Object.keys(item.options).sort().find((l) => runner.letterToken(l) === token);
    if (letter) return letter;
  }
  return runner.tokenizer.tokenText(token);
}

function changeRecord(runner: TaskRunner, item: TaskItem, c: NativeHeadroomChange): HeadroomChangeRecord {
  return {
    layer: c.layer,
    flipped: c.flipped,
    margin: c.margin,
    answer: answerText(runner, item, c.answer),
    swaps: c.swaps,
    gradient: c.gradient,
    evaluations: c.evaluations,
  };
}

/** Runs one item's search. */
export async function headroomItem(session: NativeSession, runner: TaskRunner, item: TaskItem, s: HeadroomSettings): Promise<HeadroomItemRecord> {
  const tokens = runner.encode(item.prompt);
  const { label, options, expected } = itemLabel(runner, item, tokens);
  const t0 = performance.now();
  const r: NativeHeadroomResult = await session.routingHeadroom(Int32Array.from(tokens), {
    label,
    ...(options.length ? { options } : {}),
    ...(s.layers.length ? { layers: s.layers } : {}),
    joint: s.joint,
    candidates: s.candidates,
    moves: s.moves,
    steps: s.steps,
    lrStart: s.lrStart,
    lrEnd: s.lrEnd,
  });
  return {
    analysis_only: true,
    id: item.id,
    skill: item.skill,
    kind: item.kind,
    expected,
    answer: answerText(runner, item, r.answer),
    correct: r.correct,
    margin: r.margin,
    layers: r.layers.map((c) => changeRecord(runner, item, c)),
    ...(r.joint ? { joint: changeRecord(runner, item, r.joint) } : {}),
    ms: performance.now() - t0,
  };
}

/** Runs the items one by one (a cancel between or during items keeps what finished) and summarises them. */
export async function runHeadroom(o: HeadroomOptions): Promise<HeadroomSummary> {
  const { records, cancelled } = await runItems(o.items, (item) => headroomItem(o.session, o.runner, item, o.settings), {
    shouldStop: o.shouldStop,
    onRecord: o.onRecord,
    onItemDone: (done) => o.onProgress?.({
      done: done.length,
      total: o.items.length,
      right: done.filter((r) => r.correct).length,
      fixed: done.filter((r) => !r.correct && (r.joint?.flipped || r.layers.some((c) => c.flipped))).length,
    }),
  });
  return summariseHeadroom(records, o.items.length, cancelled, o.settings);
}

export function summariseHeadroom(records: HeadroomItemRecord[], total: number, cancelled: boolean, settings: HeadroomSettings): HeadroomSummary {
  const right = records.filter((r) => r.correct);
  const wrong = records.filter((r) => !r.correct);
  const share = (k: number, of: number): number => (of ? k / of : 0);
  const layers = [...new Set(records.flatMap((r) => r.layers.map((c) => c.layer)))].sort((a, b) => a - b);
  const flippedAt = (r: HeadroomItemRecord, layer: number): boolean => r.layers.some((c) => c.layer === layer && c.flipped);
  const perLayer = layers.map((layer) => {
    const fixed = wrong.filter((r) => flippedAt(r, layer)).length;
    const broken = right.filter((r) => flippedAt(r, layer)).length;
    return { layer, fixed, fixShare: share(fixed, wrong.length), broken, breakShare: share(broken, right.length) };
  });
  const anyFixed = wrong.filter((r) => r.layers.some((c) => c.flipped)).length;
  const anyBroken = right.filter((r) => r.layers.some((c) => c.flipped)).length;
  const hasJoint = records.some((r) => r.joint);
  const jointFixed = wrong.filter((r) => r.joint?.flipped).length;
  const jointBroken = right.filter((r) => r.joint?.flipped).length;
  // With the label, an item is fixed when any search (one layer or all) flipped it.
  const fixedAny = wrong.filter((r) => r.joint?.flipped || r.layers.some((c) => c.flipped));
  return {
    analysis_only: true,
    notice: HEADROOM_NOTICE,
    items: total,
    completed: records.length,
    cancelled,
    right: right.length,
    wrong: wrong.length,
    accuracy: share(right.length, records.length),
    perLayer,
    anyLayer: { fixed: anyFixed, fixShare: share(anyFixed, wrong.length), broken: anyBroken, breakShare: share(anyBroken, right.length) },
    ...(hasJoint ? { joint: { fixed: jointFixed, fixShare: share(jointFixed, wrong.length), broken: jointBroken, breakShare: share(jointBroken, right.length) } } : {}),
    bestRoutingAccuracy: share(right.length + fixedAny.length, records.length),
    fixedItems: fixedAny.map((r) => ({
      id: r.id,
      skill: r.skill,
      expected: r.expected,
      answer: r.answer,
      layers: r.layers.filter((c) => c.flipped).map((c) => c.layer),
      joint: !!r.joint?.flipped,
    })),
    settings,
    meanMs: share(records.reduce((a, r) => a + r.ms, 0), records.length),
  };
}

const pct = (x: number): string => `${(100 * x).toFixed(1)}%`;

/** The summary as text (CLI). */
export function formatHeadroom(s: HeadroomSummary): string {
  const lines = [`ROUTING HEADROOM — ${s.notice}`];
  lines.push(
    `${s.completed} of ${s.items} items${s.cancelled ? ' (cancelled)' : ''}: ${s.right} right, ${s.wrong} wrong (accuracy ${pct(s.accuracy)}); ` +
      'an answer is the best option letter, or the first answer token, at the last prompt position',
  );
  lines.push('routing of the last prompt position changed in one layer:');
  lines.push('layer   wrong items fixed        right items broken');
  for (const f of s.perLayer) {
    lines.push(`${String(f.layer).padStart(5)}   ${`${f.fixed}/${s.wrong} (${pct(f.fixShare)})`.padEnd(22)}   ${f.broken}/${s.right} (${pct(f.breakShare)})`);
  }
  lines.push(`  any   ${`${s.anyLayer.fixed}/${s.wrong} (${pct(s.anyLayer.fixShare)})`.padEnd(22)}   ${s.anyLayer.broken}/${s.right} (${pct(s.anyLayer.breakShare)})`);
  if (s.joint) {
    lines.push(`every layer together: ${s.joint.fixed}/${s.wrong} wrong items fixed (${pct(s.joint.fixShare)}), ${s.joint.broken}/${s.right} right items broken (${pct(s.joint.breakShare)})`);
  }
  lines.push(`accuracy with the best routing change found for each item: ${pct(s.accuracy)} → ${pct(s.bestRoutingAccuracy)}`);
  lines.push(`time per item: ${s.meanMs.toFixed(1)} ms`);
  return lines.join('\n') + '\n';
}
