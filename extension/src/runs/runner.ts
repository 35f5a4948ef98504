// Runs a prompt through the engine process and assembles the Run the UI works on: each streamed routing span is
// copied once, into the run's LayerRouting of its layer, and handed to onUpdate as it arrived (the routing panel
// posts it on without another copy). No vscode import.
import * as path from 'node:path';
import type { CancellationLike, EngineHost } from '../engine/host';
import type { LoadResult } from '../engine/protocol';
import { serializePatch, isEmptyPatch, type RoutingPatch } from '../../../common/src/patch';
import { LayerRouting, type RoutingSpan } from '../../../common/src/routing';
import { oneLineText } from '../../../common/src/format';
import type { Run, RunKind, RunModel } from './run';

export type PromptInput = { text: string } | { tokens: number[] };

export interface RunRequest {
  id: number;
  input: PromptInput;
  patch?: RoutingPatch;
  label?: string;
  baseRunId?: number;
  token?: CancellationLike;
  /** Called after each streamed piece: a routing span (already in the run) or a generated token (no span). */
  onUpdate?: (run: Run, span?: RoutingSpan) => void;
}

export interface GenerateRequest extends RunRequest {
  maxNewTokens: number;
  temperature?: number;
  topP?: number;
  seed?: number;
}

const NO_MODEL_MESSAGE = 'no model is open: run "Routescope: Open Model…" or "Routescope: Open Demo Model" first';

export function runModel(loaded: LoadResult): RunModel {
  const info = loaded.info;
  return {
    dir: info.dir,
    name: path.basename(info.dir),
    modelType: info.modelType,
    numLayers: info.numLayers,
    numExperts: info.numExperts,
    topK: info.topK,
    moeLayers: [...info.moeLayers],
    vocabSize: info.vocabSize,
    routerScoring: info.routerScoring,
  };
}

async function resolveTokens(host: EngineHost, input: PromptInput): Promise<{ prompt: string; tokens: number[]; tokenText: string[] }> {
  if ('text' in input) {
    const { tokens, tokenText } = await host.request('tokenize', { text: input.text });
    return { prompt: input.text, tokens, tokenText };
  }
  const loaded = host.loaded;
  let tokenText = input.tokens.map((t) => `#${t}`);
  if (loaded?.tokenizer) tokenText = (await host.request('decode', { tokens: input.tokens })).tokenText;
  return { prompt: input.tokens.join(' '), tokens: [...input.tokens], tokenText };
}

function newRun(kind: RunKind, request: RunRequest, model: RunModel, prompt: string, tokens: number[], tokenText: string[], capacity: number): Run {
  const patch = request.patch && !isEmptyPatch(request.patch) ? request.patch : undefined;
  const verb = kind === 'generate' ? 'Generate' : 'Inspect';
  return {
    id: request.id,
    kind,
    label: request.label ?? `${verb}${patch ? ' (patched)' : ''}: ${oneLineText(prompt)}`,
    prompt,
    model,
    patch,
    tokens: [...tokens],
    tokenText: [...tokenText],
    promptTokens: tokens.length,
    startedAt: Date.now(),
    layers: new Map(model.moeLayers.map((layer) => [layer, new LayerRouting(layer, model.numExperts, model.topK, capacity, model.routerScoring)])),
    ...(request.baseRunId !== undefined ? { baseRunId: request.baseRunId } : {}),
  };
}

/** The open model and the prompt's tokens; `makeRun` allocates the run for that many routed positions. */
async function prepare(host: EngineHost, kind: RunKind, request: RunRequest) {
  const loaded = host.loaded;
  if (!loaded) throw new Error(NO_MODEL_MESSAGE);
  const model = runModel(loaded);
  const { prompt, tokens, tokenText } = await resolveTokens(host, request.input);
  return { tokens, info: loaded.info, makeRun: (capacity: number): Run => newRun(kind, request, model, prompt, tokens, tokenText, capacity) };
}

/** Copies streamed spans into their layers (the host's one copy) and reports them; a span that does not fit the run
 *  (an engine bug) is kept as the error the run then fails with, instead of escaping the message handler. */
function absorber(run: Run, request: RunRequest): { absorb(span: RoutingSpan): void; check(): void } {
  let error: Error | undefined;
  return {
    absorb(span) {
      if (error) return;
      try {
        run.layers.get(span.layer)?.write(span);
      } catch (e) {
        error = e as Error;
        return;
      }
      request.onUpdate?.(run, span);
    },
    check() {
      if (error) throw error;
    },
  };
}

/** One forward pass with routing capture and the next-token distribution. */
export async function inspectRun(host: EngineHost, request: RunRequest, onStart?: (run: Run) => void): Promise<Run> {
  const { tokens, makeRun } = await prepare(host, 'inspect', request);
  const run = makeRun(tokens.length);
  onStart?.(run);
  const patch = run.patch ? serializePatch(run.patch) : undefined;
  const spans = absorber(run, request);
  const result = await host.request(
    'inspect',
    { tokens: Int32Array.from(tokens), logits: 'last', topTokens: 10, ...(patch ? { patch } : {}) },
    {
      ...(request.token ? { token: request.token } : {}),
      onEvent: (event) => spans.absorb(event.routing),
    },
  );
  spans.check();
  run.nextTokens = result.nextTokens;
  if (result.nextTokenProbs) run.nextTokenProbs = result.nextTokenProbs;
  run.finishedAt = Date.now();
  return run;
}

/** Generation with routing of every position streamed; the run's tokens grow as they are generated. */
export async function generateRun(host: EngineHost, request: GenerateRequest, onStart?: (run: Run) => void): Promise<Run> {
  const { tokens, makeRun, info } = await prepare(host, 'generate', request);
  const context = info.maxPositionEmbeddings > 0 ? info.maxPositionEmbeddings : Number.POSITIVE_INFINITY;
  const maxNewTokens = Math.max(0, Math.min(request.maxNewTokens, context - tokens.length));
  if (maxNewTokens === 0) throw new Error(`the prompt (${tokens.length} tokens) leaves no room to generate within the model's context of ${context}`);
  // The last generated token is never fed back through the model: prompt + maxNewTokens - 1 positions are routed.
  const run = makeRun(tokens.length + maxNewTokens - 1);
  onStart?.(run);
  const patch = run.patch ? serializePatch(run.patch) : undefined;
  const spans = absorber(run, request);
  const result = await host.request(
    'generate',
    {
      prompt: Int32Array.from(tokens),
      maxNewTokens,
      temperature: request.temperature ?? 0,
      topP: request.topP ?? 1,
      seed: request.seed ?? 0,
      routing: true,
      ...(patch ? { patch } : {}),
    },
    {
      ...(request.token ? { token: request.token } : {}),
      onEvent: (event) => {
        if (event.kind === 'token') {
          run.tokens.push(event.token);
          run.tokenText.push(event.text);
          request.onUpdate?.(run);
        } else {
          spans.absorb(event.routing);
        }
      },
    },
  );
  spans.check();
  run.generatedText = result.text ?? [...result.tokens].join(' ');
  run.finishedAt = Date.now();
  return run;
}
