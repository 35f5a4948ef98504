// What the editor's adaptation panel shows, computed in one place (engine objects as parameters, so it can run in
// the extension's engine worker or in-process): for "Re-mix (C3PO)" the routing before/after per critical layer,
// the neighbours and their weights, the selected experts and the answer with and without the re-mix; for
// "Generate with rerouting" the text with and without rerouting, the rounds and the final δ per layer.
import type { NativeRerouteRound, NativeSession, RouterScoring } from '../engine/native';
import type { ModelTokenizer } from '../checkpoint/tokenizer';
import { serializePatch } from '../../../common/src/patch';
import { C3po, c3poPatch, type C3poOutcome } from './c3po';
import { routerScores, softmax, topIndices } from '../../../common/src/math';
import { generateRerouted } from './reroute';
import type { C3poMethod, RerouteSettings } from './settings';
import type { Omega } from './tasks';

export interface NextTokens {
  text: string;                        // greedy continuation
  tokens: number[];
  top: { token: number; text: string; prob: number }[]; // most likely next tokens at the last prompt position
}

export interface RemixComparison {
  outcome: C3poOutcome;
  /** Per critical layer: the top-k experts selected at the last prompt position before and after the re-mix. */
  selected: Record<string, { before: number[]; after: number[] }>;
  before: NextTokens;
  after: NextTokens;
}

async function continuation(
  session: NativeSession,
  tokenizer: ModelTokenizer,
  scoring: RouterScoring,
  prompt: number[],
  maxNewTokens: number,
  stopTokens: number[],
  patch?: string,
  embedLayer?: number,
): Promise<NextTokens & { omega: Omega; embedding?: Float32Array }> {
  session.reset();
  const omega: Omega = new Map();
  const last = prompt.length - 1;
  const fwd = await session.forward(Int32Array.from(prompt), {
    ...(patch ? { patch } : {}),
    ...(embedLayer !== undefined ? { embedLayer } : {}),
    logits: 'last',
    onLayer: (r) => {
      if (last < r.start || last >= r.start + r.count) return;
      omega.set(r.layer, routerScores(scoring, r.routerLogits.subarray((last - r.start) * r.numExperts, (last - r.start + 1) * r.numExperts)));
    },
  });
  session.reset();
  const probs = softmax(fwd.logits);
  const top = topIndices(probs, 5).map((token) => ({ token, text: tokenizer.tokenText(token), prob: probs[token] }));
  const gen = await session.generate(Int32Array.from(prompt), {
    ...(patch ? { patch } : {}),
    maxNewTokens,
    temperature: 0,
    topP: 1,
    seed: 0,
    stopTokens,
  });
  session.reset();
  const tokens = [...gen.tokens];
  return { text: tokenizer.decode(tokens), tokens, top, omega, ...(fwd.embedding ? { embedding: fwd.embedding } : {}) };
}

/** Re-mixes one prompt with C3PO and compares the model with and without it. */
export async function compareRemix(
  c3po: C3po,
  session: NativeSession,
  tokenizer: ModelTokenizer,
  o: {
    prompt: number[];
    question: string;
    method: Exclude<C3poMethod, 'oracle'>;
    topK: number;
    maxNewTokens: number;
    stopTokens: number[];
    applyTo: 'every-token' | 'prefill-only';
    /** The self-embedding layer (forwardLayer of the embedder): taken from the plain forward. */
    embedLayer?: number;
  },
): Promise<RemixComparison> {
  const base = await continuation(session, tokenizer, c3po.scoring, o.prompt, o.maxNewTokens, o.stopTokens, undefined, o.embedLayer);
  const text = tokenizer.decode(o.prompt);
  const outcome = await c3po.adapt(
    o.method,
    { tokens: o.prompt, question: o.question, prompt: text, omega: base.omega, ...(base.embedding ? { forwardEmbedding: base.embedding } : {}) },
    { finalLoss: true },
  );
  const patch = serializePatch(c3poPatch(outcome.omegaAfter, o.prompt.length - 1, o.applyTo));
  const after = await continuation(session, tokenizer, c3po.scoring, o.prompt, o.maxNewTokens, o.stopTokens, patch);
  const selected: RemixComparison['selected'] = {};
  for (const l of outcome.layers) {
    selected[String(l)] = {
      before: topIndices(outcome.omegaBefore[String(l)], o.topK),
      after: topIndices(outcome.omegaAfter[String(l)], o.topK),
    };
  }
  const strip = ({ text, tokens, top }: NextTokens): NextTokens => ({ text, tokens, top });
  return { outcome, selected, before: strip(base), after: strip(after) };
}

export interface RerouteComparison {
  plain: { tokens: number[]; text: string };
  rerouted: { tokens: number[]; text: string };
  rounds: NativeRerouteRound[];
  /** The final δ per adapted layer (each round's δ is in rounds[i].delta). */
  delta: Record<string, number[]>;
}

/** Greedy generation with and without continuous rerouting from the same prompt. */
export async function compareReroute(
  session: NativeSession,
  tokenizer: ModelTokenizer,
  settings: RerouteSettings,
  o: { prompt: number[]; maxNewTokens: number; stopTokens: number[]; onRound?: (round: NativeRerouteRound) => void },
): Promise<RerouteComparison> {
  session.reset();
  const plain = await session.generate(Int32Array.from(o.prompt), { maxNewTokens: o.maxNewTokens, temperature: 0, topP: 1, seed: 0, stopTokens: o.stopTokens });
  session.reset();
  const r = await generateRerouted(session, settings, { prompt: o.prompt, maxNewTokens: o.maxNewTokens, stopTokens: o.stopTokens, ...(o.onRound ? { onRound: o.onRound } : {}) });
  session.reset();
  const delta: Record<string, number[]> = {};
  for (const [l, d] of Object.entries(r.delta)) delta[l] = Array.from(d);
  return {
    plain: { tokens: [...plain.tokens], text: tokenizer.decode([...plain.tokens]) },
    rerouted: { tokens: [...r.tokens], text: tokenizer.decode([...r.tokens]) },
    rounds: r.rounds,
    delta,
  };
}
