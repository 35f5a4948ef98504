// The engine process (dist/engine-worker.js, entry extension/src/engineProcess.ts): started by engine/host.ts with
// child_process.fork and serialization 'advanced'. It loads the native addon and serves engine/protocol.ts, one
// engine call at a time, one model at a time; other modules add requests through serveEngine's handler table. A
// native crash here ends only this process; the extension host reports it and restarts it.
import type { NativeAddon, NativeModel, NativeModelInfo, NativeSession } from './native';
import { loadAddon } from './addon';
import { loadTokenizer, type ModelTokenizer } from '../checkpoint/tokenizer';
import { plural } from '../../../common/src/format';
import { softmax, topIndices } from '../../../common/src/math';
import type { NextToken } from '../../../common/src/run';
import {
  EngineError,
  type CoreMethods,
  type EngineErrorPayload,
  type HostMessage,
  type LoadResult,
  type MethodTable,
  type RequestMessage,
  type WorkerMessage,
} from './protocol';

/** The model open in this process. */
export interface Loaded {
  model: NativeModel;
  info: NativeModelInfo;
  tokenizer?: ModelTokenizer;
  tokenizerError?: string;
}

/** What a request handler gets besides its parameters. */
export interface RequestContext<Event> {
  /** Streams an event of this request to the host. */
  emit(event: Event): void;
  /** The session the request runs on: a cancel from the host cancels it. */
  track(session: NativeSession): void;
  /** Whether the host cancelled the request (for handlers that work item by item between engine calls). */
  isCancelled(): boolean;
  /** The open model (NO_MODEL when none). */
  model(): Loaded;
  /** The open model's tokenizer (NO_TOKENIZER when it has none). */
  tokenizer(): ModelTokenizer;
  log(line: string): void;
}

export type Handler<S extends { params: unknown; result: unknown; event: unknown }> = (
  params: S['params'],
  context: RequestContext<S['event']>,
) => Promise<S['result']> | S['result'];

export type HandlerTable<M extends MethodTable> = { [K in keyof M]: Handler<M[K]> };

const send = (message: WorkerMessage): void => {
  if (process.connected) process.send!(message);
};

const log = (line: string): void => send({ type: 'log', line });

let addon: NativeAddon | undefined;
let addonError: string | undefined;
let loaded: Loaded | undefined;

function requireModel(): Loaded {
  if (!loaded) throw new EngineError('NO_MODEL', 'no model is loaded: open a model first');
  return loaded;
}

function requireTokenizer(): ModelTokenizer {
  const l = requireModel();
  if (!l.tokenizer) throw new EngineError('NO_TOKENIZER', l.tokenizerError ?? `${l.info.dir}: no tokenizer`);
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

function describeLoaded(l: Loaded): LoadResult {
  return {
    info: l.info,
    tokenizer: l.tokenizer !== undefined,
    ...(l.tokenizerError ? { tokenizerError: l.tokenizerError } : {}),
    rssBytes: process.memoryUsage.rss(),
  };
}

function nextTokens(l: Loaded, row: Float32Array, n: number): { next: NextToken[]; probs: Float32Array } {
  const probs = softmax(row);
  return { next: topIndices(probs, n).map((token) => ({ token, text: tokenText(l, token), prob: probs[token] })), probs };
}

const core: HandlerTable<CoreMethods> = {
  load(params) {
    if (!addon) throw new EngineError('NO_ENGINE', addonError ?? 'native engine not available');
    unload();
    const model = addon.loadModel(params.dir, {
      ...(params.threads ? { threads: params.threads } : {}),
      ...(params.backend ? { backend: params.backend } : {}),
      ...(params.activations ? { activations: params.activations } : {}),
      ...(params.weights ? { weights: params.weights } : {}),
      ...(params.kvCache ? { kvCache: params.kvCache } : {}),
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
    log(`loaded ${info.modelType} from ${info.dir}: ${info.numLayers} layers, ${info.numExperts} experts, top-${info.topK}, ${info.dtype}, ${info.backend} (${plural(info.threads, 'thread')}, ${info.activations} activations, weights ${info.weights}, ${info.kvCache} KV cache)`);
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
    const tokens = requireTokenizer().encode(params.text);
    return { tokens, tokenText: tokens.map((t) => tokenText(l, t)) };
  },
  decode(params) {
    const l = requireModel();
    return { text: requireTokenizer().decode(params.tokens), tokenText: params.tokens.map((t) => tokenText(l, t)) };
  },
  async inspect(params, { emit, track }) {
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
    const { next, probs } = nextTokens(l, last, params.topTokens ?? 10);
    return { logits: out.logits, rows: out.rows, nextTokens: next, nextTokenProbs: probs };
  },
  async generate(params, { emit, track }) {
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
  async grad(params, { track }) {
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
};

function toPayload(error: unknown): EngineErrorPayload {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    const message = error.message.split('\n')[0];
    return { code: typeof code === 'string' && code !== '' ? code : 'INTERNAL', message };
  }
  return { code: 'INTERNAL', message: String(error) };
}

/** Starts serving: the engine's requests plus `extra` (e.g. adaptation's, adapt/requests.ts). */
export function serveEngine<M extends MethodTable>(extra: HandlerTable<M>): void {
  const handlers = { ...extra, ...core } as unknown as Record<string, Handler<{ params: unknown; result: unknown; event: unknown }>>;
  /** The engine call now running and its session (cancel targets it). */
  let active: { id: number; session?: NativeSession; cancelled: boolean } | undefined;
  /** Requests wait here so engine calls never overlap. */
  const queue: RequestMessage[] = [];
  const cancelledQueued = new Set<number>();

  const serve = async (request: RequestMessage): Promise<void> => {
    const { id } = request;
    if (cancelledQueued.delete(id)) {
      send({ type: 'error', id, error: { code: 'CANCELLED', message: 'cancelled' } });
      return;
    }
    active = { id, cancelled: false };
    try {
      const handler = handlers[request.method];
      if (!handler) throw new EngineError('BAD_REQUEST', `unknown engine request "${request.method}"`);
      const result = await handler(request.params, {
        emit: (event) => send({ type: 'event', id, event }),
        track: (session) => {
          active!.session = session;
          if (active!.cancelled) session.cancel();
        },
        isCancelled: () => active?.id === id && active.cancelled,
        model: requireModel,
        tokenizer: requireTokenizer,
        log,
      });
      send({ type: 'result', id, result });
    } catch (error) {
      send({ type: 'error', id, error: toPayload(error) });
    } finally {
      active = undefined;
    }
  };

  let draining = false;
  const drain = async (): Promise<void> => {
    if (draining) return;
    draining = true;
    try {
      while (queue.length > 0) await serve(queue.shift()!);
    } finally {
      draining = false;
    }
  };

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

  try {
    addon = loadAddon();
  } catch (error) {
    addonError = error instanceof Error ? error.message : String(error);
  }
  send({
    type: 'ready',
    version: addon?.version ?? null,
    cudaCompiled: addon?.cudaCompiled ?? false,
    pid: process.pid,
    ...(addonError ? { error: addonError } : {}),
  });
}
