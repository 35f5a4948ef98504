// The engine process's handlers of the adaptation requests (adapt/protocol.ts), registered with serveEngine by
// extension/src/engineProcess.ts: they run C3PO and rerouting next to the model, cancellable like any engine call.
import type { HandlerTable, Loaded } from '../engine/worker';
import { EngineError } from '../engine/protocol';
import { C3po } from './c3po';
import { compareRemix, compareReroute } from './compare';
import { forwardLayer, OnnxEmbedder, SelfEmbedder, type Embedder } from './embedder';
import { describeEmbedder, sameEmbedder } from './identity';
import type { AdaptMethods, AdaptPrompt } from './protocol';
import { loadReference, ReferenceError } from './reference';
import { checkC3poSettings, checkHeadroomSettings, checkRerouteSettings } from './settings';
import { runHeadroom, type HeadroomItemRecord } from './headroom';
import { TaskRunner } from './tasks';

/** The prompt's token ids, checked against the vocabulary. */
function promptTokens(l: Loaded, encode: (text: string) => number[], p: AdaptPrompt): number[] {
  const tokens = p.tokens ?? (p.text !== undefined ? encode(p.text) : []);
  if (tokens.length === 0) throw new EngineError('BAD_TOKENS', 'the prompt is empty');
  const bad = tokens.find((t) => !Number.isInteger(t) || t < 0 || t >= l.info.vocabSize);
  if (bad !== undefined) throw new EngineError('BAD_TOKENS', `token id ${bad} is outside the vocabulary (0..${l.info.vocabSize - 1})`);
  return tokens;
}

export const adaptHandlers: HandlerTable<AdaptMethods> = {
  async remix(params, { track, model, tokenizer: requireTokenizer }) {
    const l = model();
    const tokenizer = requireTokenizer();
    checkC3poSettings(params.c3po);
    const encode = (t: string): number[] => tokenizer.encode(t);
    const tokens = promptTokens(l, encode, params);
    const session = l.model.createSession();
    track(session);
    // The reference set must belong to this model; the embedder is the configured ONNX one, else the one the set
    // was built with (and must match it).
    const reference = loadReference(params.referenceDir, l.info, l.info.dir);
    const recorded = reference.manifest.embedder;
    const embedder: Embedder = params.embedding.embedder
      ? await OnnxEmbedder.open(params.embedding.embedder, params.embedding.maxTokens)
      : recorded.kind === 'onnx'
        ? await OnnxEmbedder.open(recorded.dir, params.embedding.maxTokens)
        : new SelfEmbedder(session, encode, recorded.layer);
    const c3po = new C3po({ model: l.model, info: l.info, reference, embedder, settings: params.c3po, encode });
    try {
      if (!sameEmbedder(recorded, embedder.identity)) {
        throw new ReferenceError(
          `${params.referenceDir}: built with ${describeEmbedder(recorded)}, but ${describeEmbedder(embedder.identity)} is configured; use the same embedder or rebuild the set`,
        );
      }
      const comparison = await compareRemix(c3po, session, tokenizer, {
        prompt: tokens,
        question: params.text ?? tokenizer.decode(tokens),
        method: params.method,
        topK: l.info.topK,
        maxNewTokens: params.maxNewTokens,
        stopTokens: params.stopTokens ?? l.info.eosTokenIds,
        applyTo: params.c3po.applyTo,
        embedLayer: forwardLayer(embedder),
      });
      const byId = new Map(reference.entries.map((e) => [e.id, e.question]));
      return {
        comparison,
        neighbours: comparison.outcome.neighbours.map((n) => ({ ...n, question: byId.get(n.id) ?? '' })),
        referenceDir: params.referenceDir,
        referenceItems: reference.entries.length,
        promptTokens: tokens.length,
      };
    } finally {
      c3po.dispose();
      await embedder.dispose();
    }
  },
  async reroute(params, { emit, track, model, tokenizer: requireTokenizer }) {
    const l = model();
    const tokenizer = requireTokenizer();
    checkRerouteSettings(params.settings);
    const tokens = promptTokens(l, (t) => tokenizer.encode(t), params);
    const session = l.model.createSession(tokens.length + params.maxNewTokens);
    track(session);
    const comparison = await compareReroute(session, tokenizer, params.settings, {
      prompt: tokens,
      maxNewTokens: params.maxNewTokens,
      stopTokens: params.stopTokens ?? l.info.eosTokenIds,
      onRound: (round) => emit({ kind: 'round', round }),
    });
    return { comparison, promptTokens: tokens.length };
  },
  async headroom(params, { emit, track, isCancelled, model, tokenizer: requireTokenizer }) {
    const l = model();
    const tokenizer = requireTokenizer();
    checkHeadroomSettings(params.settings);
    const bad = params.settings.layers.find((layer) => !l.info.moeLayers.includes(layer));
    if (bad !== undefined) throw new EngineError('BAD_SETTING', `routescope.headroom.layers: layer ${bad} has no router (MoE layers: ${l.info.moeLayers.join(', ')})`);
    const session = l.model.createSession();
    track(session);
    const records: HeadroomItemRecord[] = [];
    const summary = await runHeadroom({
      session,
      runner: new TaskRunner(l.info, tokenizer),
      items: params.items,
      settings: params.settings,
      shouldStop: isCancelled,
      onRecord: (record) => {
        records.push(record);
        emit({ kind: 'item', record, done: records.length, total: params.items.length });
      },
    });
    return { summary, records };
  },
};
