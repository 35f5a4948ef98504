// Labelled task items (media/tasks/*.jsonl) and how the model answers them:
//   multiple choice {"id","skill","question","options":{"A".."D"},"answer","prompt"}: the option whose letter token
//     (" A" … " D") has the highest log-probability at the last prompt position;
//   generative {"id","skill","prompt","answer"}: greedy decoding (at most 16 tokens, cut at the first newline),
//     exact match of the trimmed text.
import { FILE_KINDS, readTextFile } from '../io/files';
import type { NativeModelInfo, NativeSession } from '../engine/native';
import type { RoutingSpan } from '../../../common/src/routing';
import type { ModelTokenizer } from '../checkpoint/tokenizer';
import { serializePatch, type RoutingPatch } from '../../../common/src/patch';
import { logSumExp, routerScores } from '../../../common/src/math';
import { jsonErrorText } from '../../../common/src/jsonError';

export interface McItem {
  kind: 'mc';
  id: string;
  skill: string;
  question: string;
  options: Record<string, string>;
  answer: string;
  prompt: string;
}
export interface GenItem {
  kind: 'gen';
  id: string;
  skill: string;
  question?: string;
  prompt: string;
  answer: string;
}
export type TaskItem = McItem | GenItem;

export class TaskError extends Error {
  readonly code = 'BAD_TASKS';
}

export const GEN_MAX_NEW_TOKENS = 16;

export function readTasks(file: string): TaskItem[] {
  return parseTasks(readTextFile(file, FILE_KINDS.tasks, (message) => new TaskError(message)), file);
}

/** Task items from the text of a task file (`file` names it in messages), e.g. an open editor's JSONL. */
export function parseTasks(text: string, file: string): TaskItem[] {
  const items: TaskItem[] = [];
  const ids = new Set<string>();
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    const where = `${file}:${i + 1}`;
    let v: Record<string, unknown>;
    try {
      v = JSON.parse(line);
    } catch (error) {
      throw new TaskError(`${where}: invalid JSON (${jsonErrorText(error)})`);
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new TaskError(`${where}: expected a JSON object (an item), got ${v === null ? 'null' : Array.isArray(v) ? 'a list' : typeof v}`);
    const str = (key: string): string => {
      if (typeof v[key] !== 'string' || v[key] === '') throw new TaskError(`${where}: "${key}" must be a non-empty string`);
      return v[key] as string;
    };
    const id = str('id');
    if (ids.has(id)) throw new TaskError(`${where}: duplicate id "${id}"`);
    ids.add(id);
    const skill = typeof v.skill === 'string' ? v.skill : '';
    if (v.options !== undefined) {
      const options = v.options as Record<string, unknown>;
      if (typeof options !== 'object' || options === null || Array.isArray(options) || Object.keys(options).length < 2) {
        throw new TaskError(`${where}: "options" must be an object of at least two letters → texts`);
      }
      for (const [letter, value] of Object.entries(options)) {
        if (!/^[A-Z]$/.test(letter) || typeof value !== 'string') throw new TaskError(`${where}: option keys must be single capital letters with text values`);
      }
      const answer = str('answer');
      if (!Object.hasOwn(options, answer)) throw new TaskError(`${where}: answer "${answer}" is not one of the options`);
      items.push({ kind: 'mc', id, skill, question: str('question'), options: options as Record<string, string>, answer, prompt: str('prompt') });
    } else {
      items.push({
        kind: 'gen',
        id,
        skill,
        ...(typeof v.question === 'string' ? { question: v.question } : {}),
        prompt: str('prompt'),
        answer: typeof v.answer === 'string' ? v.answer : String(v.answer ?? ''),
      });
    }
  });
  if (items.length === 0) throw new TaskError(`${file}: no items`);
  return items;
}

export class CancelledError extends Error {
  readonly code = 'CANCELLED';
  constructor() {
    super('cancelled');
  }
}

/** Runs labelled items one at a time; a cancel (polled between items, or the engine's CANCELLED during one) stops
 *  the loop and keeps the records that finished. */
export async function runItems<R>(
  items: readonly TaskItem[],
  run: (item: TaskItem) => Promise<R>,
  o: { shouldStop?: () => boolean; onRecord?: (record: R) => void; onItemDone?: (records: readonly R[]) => void },
): Promise<{ records: R[]; cancelled: boolean }> {
  const records: R[] = [];
  for (const item of items) {
    if (o.shouldStop?.()) return { records, cancelled: true };
    try {
      const record = await run(item);
      records.push(record);
      o.onRecord?.(record);
    } catch (error) {
      if ((error as { code?: string }).code === 'CANCELLED') return { records, cancelled: true };
      throw error;
    }
    o.onItemDone?.(records);
  }
  return { records, cancelled: false };
}

/** The text embedded for the neighbour search: the question (the prompt when there is none). */
export function questionText(item: TaskItem): string {
  return item.question ?? item.prompt;
}

/** Last-position routing: per MoE layer, the router scores of the raw router logits (softmax, or sigmoid for sigmoid routers; before top-k and patches). */
export type Omega = Map<number, Float32Array>;

export interface ForwardOutcome {
  logits: Float32Array;   // last position, [V]
  omega: Omega;
  /** With embedLayer: the mean over the call's tokens of the hidden state entering that layer (not normalised). */
  embedding?: Float32Array;
}

export interface McOutcome {
  choice: string;
  correct: boolean;
  logprobs: Record<string, number>;
}

export interface GenOutcome {
  tokens: number[];
  text: string;
  correct: boolean;
}

/** Runs items on one session: tokenisation, letter tokens, forward with routing capture, scoring, generation. */
export class TaskRunner {
  private readonly letters = new Map<string, number>();

  constructor(
    readonly info: NativeModelInfo,
    readonly tokenizer: ModelTokenizer,
  ) {}

  encode(text: string): number[] {
    const tokens = this.tokenizer.encode(text);
    if (tokens.length === 0) throw new TaskError(`the prompt "${text.slice(0, 40)}" encodes to no tokens`);
    const limit = this.info.maxPositionEmbeddings;
    if (limit > 0 && tokens.length + GEN_MAX_NEW_TOKENS > limit) {
      throw new TaskError(`a prompt of ${tokens.length} tokens leaves no room for the answer within max_position_embeddings=${limit}`);
    }
    return tokens;
  }

  /** The token of an option letter after "Answer:" — " A" when that is one token, else "A". */
  letterToken(letter: string): number {
    const cached = this.letters.get(letter);
    if (cached !== undefined) return cached;
    const base = this.tokenizer.encode('');
    const strip = (ids: number[]): number[] => (base.length && ids[0] === base[0] ? ids.slice(base.length) : ids);
    let ids = strip(this.tokenizer.encode(` ${letter}`));
    if (ids.length !== 1) ids = strip(this.tokenizer.encode(letter));
    if (ids.length !== 1) throw new TaskError(`option letter ${letter} is not a single token in this tokenizer`);
    this.letters.set(letter, ids[0]);
    return ids[0];
  }

  answerToken(item: McItem): number {
    return this.letterToken(item.answer);
  }

  /** The option letters' tokens, in letter order (what scoreMc compares). */
  optionTokens(item: McItem): number[] {
    return Object.keys(item.options).sort().map((letter) => this.letterToken(letter));
  }

  /** A fresh forward of the prompt; `onRouting` sees every layer's routing of every position; with embedLayer the
   *  outcome carries the mean hidden state entering that layer over the prompt (the self-embedding). */
  async forward(session: NativeSession, tokens: number[], patch?: RoutingPatch,
    onRouting?: (routing: RoutingSpan) => void, embedLayer?: number): Promise<ForwardOutcome> {
    session.reset();
    const out = await this.run(session, tokens, tokens.length - 1, patch, onRouting, embedLayer);
    session.reset();
    return out;
  }

  /** forward(), after which the session keeps the prompt but its last token, ready for forwardLast: one pass gives
   *  the plain answer, ω (and the self-embedding), and the prefix a patched last position re-runs against. */
  async forwardKeepingPrefix(session: NativeSession, tokens: number[], embedLayer?: number): Promise<ForwardOutcome> {
    session.reset();
    const out = await this.run(session, tokens, tokens.length - 1, undefined, undefined, embedLayer);
    session.truncate(tokens.length - 1);
    return out;
  }

  /** Caches every prompt token but the last in the session, for forwardLast (which re-runs only the last). */
  async prefill(session: NativeSession, tokens: number[]): Promise<void> {
    session.reset();
    if (tokens.length > 1) await session.forward(Int32Array.from(tokens.slice(0, -1)), { logits: 'none' });
  }

  /** The last prompt token after prefill(session, tokens), with an optional patch: the same logits and ω as
   *  forward(), for the cost of one position. Leaves the prefix cached, so it can run again with another patch. */
  async forwardLast(session: NativeSession, tokens: number[], patch?: RoutingPatch): Promise<ForwardOutcome> {
    const last = tokens.length - 1;
    if (session.position !== last) throw new Error(`forwardLast: the session holds ${session.position} positions, not the ${last} of the prefill`);
    try {
      return await this.run(session, tokens.slice(last), last, patch);
    } finally {
      session.truncate(last);
    }
  }

  private async run(session: NativeSession, tokens: number[], last: number, patch?: RoutingPatch,
    onRouting?: (routing: RoutingSpan) => void, embedLayer?: number): Promise<ForwardOutcome> {
    const omega: Omega = new Map();
    const result = await session.forward(Int32Array.from(tokens), {
      ...(patch ? { patch: serializePatch(patch) } : {}),
      ...(embedLayer !== undefined ? { embedLayer } : {}),
      logits: 'last',
      onLayer: (r) => {
        onRouting?.(r);
        if (last < r.start || last >= r.start + r.count) return;
        const row = r.routerLogits.subarray((last - r.start) * r.numExperts, (last - r.start + 1) * r.numExperts);
        omega.set(r.layer, routerScores(this.info.routerScoring, row));
      },
    });
    return {
      logits: result.logits.subarray(result.logits.length - this.info.vocabSize),
      omega,
      ...(result.embedding ? { embedding: result.embedding } : {}),
    };
  }

  scoreMc(item: McItem, logits: Float32Array): McOutcome {
    const lse = logSumExp(logits);
    const logprobs: Record<string, number> = {};
    let choice = '';
    for (const letter of Object.keys(item.options).sort()) {
      logprobs[letter] = logits[this.letterToken(letter)] - lse;
      if (choice === '' || logprobs[letter] > logprobs[choice]) choice = letter;
    }
    return { choice, correct: choice === item.answer, logprobs };
  }

  /** Greedy continuation, cut at the first newline; `run` lets the caller pick plain or rerouted generation. */
  finishGeneration(item: GenItem, tokens: number[]): GenOutcome {
    let text = this.tokenizer.decode(tokens);
    const cut = text.indexOf('\n');
    if (cut >= 0) text = text.slice(0, cut);
    return { tokens, text, correct: text.trim() === item.answer.trim() };
  }

  async generate(session: NativeSession, item: GenItem, tokens: number[], patch?: RoutingPatch): Promise<GenOutcome> {
    session.reset();
    const result = await session.generate(Int32Array.from(tokens), {
      ...(patch ? { patch: serializePatch(patch) } : {}),
      maxNewTokens: GEN_MAX_NEW_TOKENS,
      temperature: 0,
      topP: 1,
      seed: 0,
      stopTokens: this.info.eosTokenIds,
    });
    session.reset();
    return this.finishGeneration(item, [...result.tokens]);
  }
}
