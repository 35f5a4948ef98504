// Runs a prompt through the engine process and assembles the Run the UI works on, filling its per-layer typed
// arrays as the engine streams them (onUpdate fires per streamed span). No vscode import.
import type { CancellationLike, EngineHost } from '../engine/host';
import type { LoadResult, LayerEvent } from '../engine/protocol';
import { serializePatch, isEmptyPatch, type RoutingPatch } from '../../../common/src/patch';
import type { LayerRouting, Run, RunKind, RunModel } from './run';
import * as path from 'node:path';

export type PromptInput = { text: string } | { tokens: number[] };

export interface RunRequest {
  id: number;
  input: PromptInput;
  patch?: RoutingPatch;
  label?: string;
  baseRunId?: number;
  token?: CancellationLike;
  /** Called after each streamed span (layer routing or generated token). */
  onUpdate?: (run: Run, layer?: number) => void;
}

export interface GenerateRequest extends RunRequest {
  maxNewTokens: number;
  temperature?: number;
  topP?: number;
  seed?: number;
}

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
  };
}

function oneLine(text: string, max = 40): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
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

function allocate(model: RunModel, capacity: number): Map<number, LayerRouting> {
  const layers = new Map<number, LayerRouting>();
  for (const layer of model.moeLayers) {
    layers.set(layer, {
      layer,
      routerLogits: new Float32Array(capacity * model.numExperts),
      experts: new Int32Array(capacity * model.topK),
      weights: new Float32Array(capacity * model.topK),
      filled: 0,
    });
  }
  return layers;
}

function absorb(run: Run, event: LayerEvent): void {
  const r = event.routing;
  const target = run.layers.get(r.layer);
  if (!target) return;
  const E = r.numExperts;
  const k = r.topK;
  const capacity = target.experts.length / k;
  const count = Math.min(r.count, capacity - r.start);
  if (count <= 0) return;
  target.routerLogits.set(r.routerLogits.subarray(0, count * E), r.start * E);
  target.experts.set(r.experts.subarray(0, count * k), r.start * k);
  target.weights.set(r.weights.subarray(0, count * k), r.start * k);
  target.filled = Math.max(target.filled, r.start + count);
}

function newRun(kind: RunKind, request: RunRequest, model: RunModel, prompt: string, tokens: number[], tokenText: string[], capacity: number): Run {
  const patch = request.patch && !isEmptyPatch(request.patch) ? request.patch : undefined;
  const verb = kind === 'generate' ? 'Generate' : 'Inspect';
  return {
    id: request.id,
    kind,
    label: request.label ?? `${verb}${patch ? ' (patched)' : ''}: ${oneLine(prompt)}`,
    prompt,
    model,
    patch,
    tokens: [...tokens],
    tokenText: [...tokenText],
    promptTokens: tokens.length,
    startedAt: Date.now(),
    layers: allocate(model, capacity),
    ...(request.baseRunId !== undefined ? { baseRunId: request.baseRunId } : {}),
  };
}

/** One forward pass with routing capture and the next-token distribution. */
export async function inspectRun(host: EngineHost, request: RunRequest, onStart?: (run: Run) => void): Promise<Run> {
  const loaded = host.loaded;
  if (!loaded) throw new Error('no model is open: run "Routescope: Open Model…" or "Routescope: Open Demo Model" first');
  const model = runModel(loaded);
  const { prompt, tokens, tokenText } = await resolveTokens(host, request.input);
  const run = newRun('inspect', request, model, prompt, tokens, tokenText, tokens.length);
  onStart?.(run);
  const patch = run.patch ? serializePatch(run.patch) : undefined;
  const result = await host.request(
    'inspect',
    { tokens: Int32Array.from(tokens), logits: 'last', topTokens: 10, ...(patch ? { patch } : {}) },
    {
      ...(request.token ? { token: request.token } : {}),
      onEvent: (event) => {
        absorb(run, event);
        request.onUpdate?.(run, event.routing.layer);
      },
    },
  );
  run.nextTokens = result.nextTokens;
  if (result.nextTokenProbs) run.nextTokenProbs = result.nextTokenProbs;
  run.finishedAt = Date.now();
  return run;
}

/** Generation with routing of every position streamed; the run's tokens grow as they are generated. */
export async function generateRun(host: EngineHost, request: GenerateRequest, onStart?: (run: Run) => void): Promise<Run> {
  const loaded = host.loaded;
  if (!loaded) throw new Error('no model is open: run "Routescope: Open Model…" or "Routescope: Open Demo Model" first');
  const model = runModel(loaded);
  const { prompt, tokens, tokenText } = await resolveTokens(host, request.input);
  const context = loaded.info.maxPositionEmbeddings > 0 ? loaded.info.maxPositionEmbeddings : Number.POSITIVE_INFINITY;
  const maxNewTokens = Math.max(0, Math.min(request.maxNewTokens, context - tokens.length));
  if (maxNewTokens === 0) throw new Error(`the prompt (${tokens.length} tokens) leaves no room to generate within the model's context of ${context}`);
  const run = newRun('generate', request, model, prompt, tokens, tokenText, tokens.length + maxNewTokens);
  onStart?.(run);
  const patch = run.patch ? serializePatch(run.patch) : undefined;
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
          absorb(run, event);
          request.onUpdate?.(run, event.routing.layer);
        }
      },
    },
  );
  run.generatedText = result.text ?? [...result.tokens].join(' ');
  // Trim the arrays to the routed positions (the last generated token is never fed back through the model).
  for (const l of run.layers.values()) {
    l.routerLogits = l.routerLogits.slice(0, l.filled * model.numExperts);
    l.experts = l.experts.slice(0, l.filled * model.topK);
    l.weights = l.weights.slice(0, l.filled * model.topK);
  }
  run.finishedAt = Date.now();
  return run;
}
