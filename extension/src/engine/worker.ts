// The engine process (dist/engine-worker.js): started by engine/host.ts with child_process.fork and
// serialization 'advanced'. It loads the native addon and serves engine/protocol.ts, one engine call at a time,
// one model at a time. A native crash here ends only this process; the extension host reports it and restarts it.
import type { NativeAddon, NativeModel, NativeModelInfo, NativeSession } from './native';
import { loadAddon } from './addon';
import { loadTokenizer, type ModelTokenizer } from '../checkpoint/tokenizer';
import { C3po } from '../adapt/c3po';
import { compareRemix, compareReroute } from '../adapt/compare';
import { OnnxEmbedder, SelfEmbedder, type Embedder } from '../adapt/embedder';
import { describeEmbedder, sameEmbedder } from '../adapt/identity';
import { loadReference, ReferenceError } from '../adapt/reference';
import { checkC3poSettings, checkRerouteSettings } from '../adapt/settings';
import type {
  AdaptPrompt,
  EngineErrorPayload,
  EngineMethod,
  EngineMethods,
  EngineEvent,
  HostMessage,
  LoadResult,
  NextToken,
  ParamsOf,
  RequestMessage,
  ResultOf,
  WorkerMessage,
} from './protocol';

const send = (message: WorkerMessage): void => {
  if (process.connected) process.send!(message);
};

const log = (line: string): void => send({ type: 'log', line });

class WorkerError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

let addon: NativeAddon | undefined;
let addonError: string | undefined;
try {
  addon = loadAddon();
} catch (error) {
  addonError = error instanceof Error ? error.message : String(error);
}

interface Loaded {
  model: NativeModel;
  info: NativeModelInfo;
  tokenizer?: ModelTokenizer;
  tokenizerError?: string;
}

let loaded: Loaded | undefined;

/** The engine call now running and its session (cancel targets it). */
let active: { id: number; session?: NativeSession; cancelled: boolean } | undefined;
/** Requests wait here so engine calls never overlap. */
const queue: RequestMessage[] = [];
const cancelledQueued = new Set<number>();

function requireModel(): Loaded {
  if (!loaded) throw new WorkerError('NO_MODEL', 'no model is loaded: open a model first');
  return loaded;
}

function requireTokenizer(l: Loaded): ModelTokenizer {
  if (!l.tokenizer) throw new WorkerError('NO_TOKENIZER', l.tokenizerError ?? `${l.info.dir}: no tokenizer`);
  return l.tokenizer;
}

function tokenText(l: Loaded, id: number): string {
  return l.tokenizer ? l.tokenizer.tokenText(id) : `#${id}`;
}

function unload(): boolean {
  if (!loaded) return false;
  const dir = loaded.info.dir;
  loaded.model.close();
  loaded = undefined;
  log(`unloaded ${dir}`);
  return true;
}

function topTokens(l: Loaded, row: Float32Array, n: number): { next: NextToken[]; probs: Float32Array } {
  let max = -Infinity;
  for (const v of row) if (v > max) max = v;
  const probs = new Float32Array(row.length);
  let sum = 0;
  for (let i = 0; i < row.length; i++) {
    const p = Math.exp(row[i] - max);
    probs[i] = p;
    sum += p;
  }
  for (let i = 0; i < row.length; i++) probs[i] /= sum;
  const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a] || a - b).slice(0, n);
  return { next: order.map((token) => ({ token, text: tokenText(l, token), prob: probs[token] })), probs };
}

function promptTokens(l: Loaded, p: AdaptPrompt): number[] {
  const tokens = p.tokens ?? (p.text !== undefined ? requireTokenizer(l).encode(p.text) : []);
  if (tokens.length === 0) throw new WorkerError('BAD_TOKENS', 'the prompt is empty');
  const bad = tokens.find((t) => !Number.isInteger(t) || t < 0 || t >= l.info.vocabSize);
  if (bad !== undefined) throw new WorkerError('BAD_TOKENS', `token id ${bad} is outside the vocabulary (0..${l.info.vocabSize - 1})`);
  return tokens;
}

type Handler<M extends EngineMethod> = (
  params: ParamsOf<M>,
  emit: (event: EngineEvent) => void,
  track: (session: NativeSession) => void,
) => Promise<ResultOf<M>> | ResultOf<M>;

const handlers: { [M in EngineMethod]: Handler<M> } = {
  load(params) {
    if (!addon) throw new WorkerError('NO_ENGINE', addonError ?? 'native engine not available');
    unload();
    const model = addon.loadModel(params.dir, {
      ...(params.threads ? { threads: params.threads } : {}),
      ...(params.backend ? { backend: params.backend } : {}),
    });
    const info = model.info();
    let tokenizer: ModelTokenizer | undefined;
    let tokenizerError: string | undefined;
    try {
      tokenizer = loadTokenizer(params.dir);
    } catch (error) {
      tokenizerError = error instanceof Error ? error.message : String(error);
    }
    loaded = { model, info, ...(tokenizer ? { tokenizer } : {}), ...(tokenizerError ? { tokenizerError } : {}) };
    log(`loaded ${info.modelType} from ${info.dir}: ${info.numLayers} layers, ${info.numExperts} experts, top-${info.topK}, ${info.dtype}, ${info.backend} (${info.threads} threads)`);
    return describeLoaded(loaded);
  },
  unload() {
    return { unloaded: unload() };
  },
  info() {
    return loaded ? describeLoaded(loaded) : null;
  },
  tokenize(params) {
    const l = requireModel();
    const tokens = requireTokenizer(l).encode(params.text);
    return { tokens, tokenText: tokens.map((t) => tokenText(l, t)) };
  },
  decode(params) {
    const l = requireModel();
    return { text: requireTokenizer(l).decode(params.tokens), tokenText: params.tokens.map((t) => tokenText(l, t)) };
  },
  async inspect(params, emit, track) {
    const l = requireModel();
    const session = l.model.createSession(params.tokens.length);
    track(session);
    const out = await session.forward(params.tokens, {
      ...(params.patch ? { patch: params.patch } : {}),
      logits: params.logits,
      onLayer: (routing) => emit({ kind: 'layer', routing }),
    });
    if (out.rows === 0) return { logits: out.logits, rows: 0, nextTokens: [] };
    const V = l.info.vocabSize;
    const last = out.logits.subarray((out.rows - 1) * V, out.rows * V);
    const { next, probs } = topTokens(l, last, params.topTokens ?? 10);
    return { logits: out.logits, rows: out.rows, nextTokens: next, nextTokenProbs: probs };
  },
  async generate(params, emit, track) {
    const l = requireModel();
    const session = l.model.createSession(params.prompt.length + params.maxNewTokens);
    track(session);
    const result = await session.generate(params.prompt, {
      ...(params.patch ? { patch: params.patch } : {}),
      maxNewTokens: params.maxNewTokens,
      temperature: params.temperature,
      topP: params.topP,
      seed: params.seed,
      stopTokens: params.stopTokens ?? l.info.eosTokenIds,
      onToken: (token) => emit({ kind: 'token', token, text: tokenText(l, token) }),
      ...(params.routing ? { onLayer: (routing) => emit({ kind: 'layer', routing }) } : {}),
    });
    return { tokens: result.tokens, text: l.tokenizer ? l.tokenizer.decode([...result.tokens]) : null };
  },
  async grad(params, _emit, track) {
    const l = requireModel();
    const session = l.model.createSession(params.tokens.length);
    track(session);
    return session.grad(params.tokens, {
      ...(params.patch ? { patch: params.patch } : {}),
      layers: params.layers,
      ...(params.target ? { target: params.target } : {}),
      ...(params.mix ? { mix: params.mix } : {}),
    });
  },
  async remix(params, _emit, track) {
    const l = requireModel();
    const tokenizer = requireTokenizer(l);
    checkC3poSettings(params.c3po);
    const tokens = promptTokens(l, params);
    const session = l.model.createSession();
    track(session);
    // The reference set must belong to this model; the embedder is the configured ONNX one, else the one the set
    // was built with (and must match it).
    const reference = loadReference(params.referenceDir, l.info, l.info.dir);
    const recorded = reference.manifest.embedder;
    const encode = (t: string): number[] => tokenizer.encode(t);
    const embedder: Embedder = params.embedding.embedder
      ? await OnnxEmbedder.open(params.embedding.embedder, params.embedding.maxTokens)
      : recorded.kind === 'onnx'
        ? await OnnxEmbedder.open(recorded.dir, params.embedding.maxTokens)
        : new SelfEmbedder(session, encode, recorded.layer, params.embedding.maxTokens);
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
  async reroute(params, emit, track) {
    const l = requireModel();
    const tokenizer = requireTokenizer(l);
    checkRerouteSettings(params.settings);
    const tokens = promptTokens(l, params);
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
};

function describeLoaded(l: Loaded): LoadResult {
  return {
    info: l.info,
    tokenizer: l.tokenizer !== undefined,
    ...(l.tokenizerError ? { tokenizerError: l.tokenizerError } : {}),
    rssBytes: process.memoryUsage.rss(),
  };
}

function toPayload(error: unknown): EngineErrorPayload {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    const message = error.message.split('\n')[0];
    return { code: typeof code === 'string' && code !== '' ? code : 'INTERNAL', message };
  }
  return { code: 'INTERNAL', message: String(error) };
}

async function serve(request: RequestMessage): Promise<void> {
  const { id } = request;
  if (cancelledQueued.delete(id)) {
    send({ type: 'error', id, error: { code: 'CANCELLED', message: 'cancelled' } });
    return;
  }
  active = { id, cancelled: false };
  try {
    const handler = handlers[request.method] as Handler<EngineMethod>;
    const result = await handler(
      request.params as never,
      (event) => send({ type: 'event', id, event }),
      (session) => {
        active!.session = session;
        if (active!.cancelled) session.cancel();
      },
    );
    send({ type: 'result', id, result });
  } catch (error) {
    send({ type: 'error', id, error: toPayload(error) });
  } finally {
    active = undefined;
  }
}

let draining = false;
async function drain(): Promise<void> {
  if (draining) return;
  draining = true;
  try {
    while (queue.length > 0) await serve(queue.shift()!);
  } finally {
    draining = false;
  }
}

process.on('message', (message: HostMessage) => {
  if (message.type === 'cancel') {
    if (active?.id === message.id) {
      active.cancelled = true;
      active.session?.cancel();
    } else if (queue.some((r) => r.id === message.id)) {
      cancelledQueued.add(message.id);
    }
    return;
  }
  queue.push(message);
  void drain();
});

// The host going away (window closed, extension host restarted) ends the engine too.
process.on('disconnect', () => {
  unload();
  process.exit(0);
});

process.on('uncaughtException', (error) => {
  log(`engine process: uncaught error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  process.exit(70);
});

send({
  type: 'ready',
  version: addon?.version ?? null,
  cudaCompiled: addon?.cudaCompiled ?? false,
  pid: process.pid,
  ...(addonError ? { error: addonError } : {}),
});

export type { EngineMethods };
