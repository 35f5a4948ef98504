// C3PO reference sets: the labelled items the model answers correctly, each with its last-token routing ω (full
// router softmax of every MoE layer) and its embedding. On disk (all inspectable):
//   REF/routing.safetensors     "routing"    F32 [N, L_moe, E]   (metadata: moe_layers)
//   REF/embeddings.safetensors  "embeddings" F32 [N, D]          (L2-normalised)
//   REF/index.jsonl             one line per row: id, skill, question, prompt, answer, answer_token
//   REF/manifest.json           format, model identity, embedder identity, counts
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NativeModelInfo, NativeSession } from '../engine/native';
import type { Embedder } from './embedder';
import { describeEmbedder, identityMismatch, modelIdentity, sameEmbedder, type EmbedderIdentity, type ModelIdentity } from './identity';
import { readSafetensors, writeSafetensors } from './safetensors';
import { questionText, type TaskItem, type TaskRunner } from './tasks';

export const REFERENCE_FORMAT = 'routescope-reference/1';

export interface ReferenceEntry {
  id: string;
  skill: string;
  question: string;
  prompt: string;
  answer: string;
  answer_token: number;
}

export interface ReferenceManifest {
  format: string;
  created: string;
  model: ModelIdentity;
  embedder: EmbedderIdentity;
  moe_layers: number[];
  num_experts: number;
  embedding_dim: number;
  items: number;
  source: { file: string; items: number; correct: number };
}

export interface ReferenceSet {
  dir: string;
  manifest: ReferenceManifest;
  entries: ReferenceEntry[];
  /** Per row: ω per MoE layer (moe_layers order), each of size E. */
  routing: Float32Array[][];
  embeddings: Float32Array[];
}

export class ReferenceError extends Error {
  readonly code = 'BAD_REFERENCE';
}

export interface BuildProgress {
  done: number;
  total: number;
  kept: number;
  item: TaskItem;
  correct: boolean;
}

export interface BuildOptions {
  session: NativeSession;
  runner: TaskRunner;
  embedder: Embedder;
  items: TaskItem[];
  source: string;
  onProgress?: (p: BuildProgress) => void;
  /** Polled between items; when it returns true the build stops and throws a CANCELLED error. */
  shouldStop?: () => boolean;
}

export class CancelledError extends Error {
  readonly code = 'CANCELLED';
  constructor() {
    super('cancelled');
  }
}

/** Runs every item and keeps the correctly answered ones (routing of the plain model, no patch). */
export async function buildReference(o: BuildOptions): Promise<Omit<ReferenceSet, 'dir' | 'manifest'> & { correct: number }> {
  const { info } = o.runner;
  const entries: ReferenceEntry[] = [];
  const routing: Float32Array[][] = [];
  const embeddings: Float32Array[] = [];
  let done = 0;
  for (const item of o.items) {
    if (o.shouldStop?.()) throw new CancelledError();
    const tokens = o.runner.encode(item.prompt);
    const fwd = await o.runner.forward(o.session, tokens);
    let correct: boolean;
    let answerToken: number;
    if (item.kind === 'mc') {
      correct = o.runner.scoreMc(item, fwd.logits).correct;
      answerToken = o.runner.answerToken(item);
    } else {
      const gen = await o.runner.generate(o.session, item, tokens);
      correct = gen.correct;
      answerToken = gen.tokens[0] ?? -1;
      if (answerToken < 0) correct = false;
    }
    if (correct) {
      entries.push({ id: item.id, skill: item.skill, question: questionText(item), prompt: item.prompt, answer: item.answer, answer_token: answerToken });
      routing.push(info.moeLayers.map((l) => fwd.omega.get(l)!));
      embeddings.push(await o.embedder.embed(questionText(item)));
    }
    done++;
    o.onProgress?.({ done, total: o.items.length, kept: entries.length, item, correct });
  }
  return { entries, routing, embeddings, correct: entries.length };
}

export function writeReference(dir: string, set: Omit<ReferenceSet, 'dir'>): void {
  fs.mkdirSync(dir, { recursive: true });
  const N = set.entries.length;
  const Lm = set.manifest.moe_layers.length;
  const E = set.manifest.num_experts;
  const D = set.manifest.embedding_dim;
  const routing = new Float32Array(N * Lm * E);
  set.routing.forEach((rows, i) => rows.forEach((row, j) => routing.set(row, (i * Lm + j) * E)));
  const embeddings = new Float32Array(N * D);
  set.embeddings.forEach((e, i) => embeddings.set(e, i * D));
  writeSafetensors(path.join(dir, 'routing.safetensors'), { routing: { shape: [N, Lm, E], data: routing } }, {
    moe_layers: JSON.stringify(set.manifest.moe_layers),
    description: 'last prompt token: the router scores (softmax, or sigmoid for sigmoid routers) of the raw router logits per MoE layer',
  });
  writeSafetensors(path.join(dir, 'embeddings.safetensors'), { embeddings: { shape: [N, D], data: embeddings } }, {
    embedder: describeEmbedder(set.manifest.embedder),
  });
  fs.writeFileSync(path.join(dir, 'index.jsonl'), set.entries.map((e) => JSON.stringify(e)).join('\n') + (N ? '\n' : ''));
  fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(set.manifest, null, 2) + '\n');
}

/** Writes what buildReference returned as a reference set in `dir`, with its manifest (model identity, embedder,
 *  dimensions and source, all derived from the build); returns the manifest. */
export function saveReference(
  dir: string,
  info: NativeModelInfo,
  modelDir: string,
  embedder: EmbedderIdentity,
  built: Omit<ReferenceSet, 'dir' | 'manifest'> & { correct: number },
  source: { file: string; items: number },
): ReferenceManifest {
  const manifest = makeManifest(info, modelDir, embedder, built.embeddings[0]?.length ?? 0, built.entries.length, { ...source, correct: built.correct });
  writeReference(dir, { manifest, entries: built.entries, routing: built.routing, embeddings: built.embeddings });
  return manifest;
}

export function makeManifest(
  info: NativeModelInfo,
  modelDir: string,
  embedder: EmbedderIdentity,
  embeddingDim: number,
  items: number,
  source: { file: string; items: number; correct: number },
): ReferenceManifest {
  return {
    format: REFERENCE_FORMAT,
    created: new Date().toISOString(),
    model: modelIdentity(modelDir, info.modelType),
    embedder,
    moe_layers: [...info.moeLayers],
    num_experts: info.numExperts,
    embedding_dim: embeddingDim,
    items,
    source,
  };
}

/** Loads a reference set and checks it belongs to this model (and, when given, this embedder). */
export function loadReference(dir: string, info: NativeModelInfo, modelDir: string, embedder?: EmbedderIdentity): ReferenceSet {
  const manifestFile = path.join(dir, 'manifest.json');
  if (!fs.existsSync(manifestFile)) throw new ReferenceError(`${dir}: not a reference set (manifest.json missing; build one with routescope reference build)`);
  let manifest: ReferenceManifest;
  try {
    manifest = JSON.parse(fs.readFileSync(manifestFile, 'utf8'));
  } catch (error) {
    throw new ReferenceError(`${manifestFile}: invalid JSON (${(error as Error).message})`);
  }
  if (manifest.format !== REFERENCE_FORMAT) throw new ReferenceError(`${manifestFile}: format ${JSON.stringify(manifest.format)}, expected ${REFERENCE_FORMAT}`);
  const mismatch = identityMismatch(manifest.model, modelIdentity(modelDir, info.modelType));
  if (mismatch) {
    throw new ReferenceError(`${dir}: this reference set was built for another model (${mismatch}); rebuild it with routescope reference build --model ${modelDir}`);
  }
  if (embedder && !sameEmbedder(manifest.embedder, embedder)) {
    throw new ReferenceError(
      `${dir}: built with ${describeEmbedder(manifest.embedder)}, but ${describeEmbedder(embedder)} is configured; use the same embedder or rebuild the set`,
    );
  }
  const entries = fs
    .readFileSync(path.join(dir, 'index.jsonl'), 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as ReferenceEntry);
  const r = readSafetensors(path.join(dir, 'routing.safetensors')).tensors.routing;
  const e = readSafetensors(path.join(dir, 'embeddings.safetensors')).tensors.embeddings;
  const N = entries.length;
  const Lm = manifest.moe_layers.length;
  const E = manifest.num_experts;
  const D = manifest.embedding_dim;
  if (!r || r.shape.join() !== [N, Lm, E].join()) throw new ReferenceError(`${dir}: routing.safetensors does not match index.jsonl (${N} rows × ${Lm} layers × ${E})`);
  if (!e || e.shape.join() !== [N, D].join()) throw new ReferenceError(`${dir}: embeddings.safetensors does not match index.jsonl (${N} rows × ${D})`);
  if (N === 0) throw new ReferenceError(`${dir}: the reference set is empty (the model answered none of its items correctly)`);
  const routing = entries.map((_, i) => Array.from({ length: Lm }, (_, j) => r.data.subarray((i * Lm + j) * E, (i * Lm + j + 1) * E)));
  const embeddings = entries.map((_, i) => e.data.subarray(i * D, (i + 1) * D));
  return { dir, manifest, entries, routing, embeddings };
}
