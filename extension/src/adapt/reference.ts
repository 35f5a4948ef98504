// C3PO reference sets: the labelled items the model answers correctly, each with its last-token routing ω (full
// router softmax of every MoE layer) and its embedding. On disk (all inspectable):
//   REF/routing.safetensors     "routing"    F32 [N, L_moe, E]   (metadata: moe_layers)
//   REF/embeddings.safetensors  "embeddings" F32 [N, D]          (L2-normalised)
//   REF/index.jsonl             one line per row: id, skill, question, prompt, answer, answer_token
//   REF/manifest.json           format, model identity, embedder identity, counts
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NativeModelInfo, NativeSession } from '../engine/native';
import { forwardLayer, itemEmbedding, type Embedder } from './embedder';
import { FILE_KINDS, readTextFile } from '../io/files';
import { describeEmbedder, identityMismatch, modelIdentity, sameEmbedder, type EmbedderIdentity, type ModelIdentity } from './identity';
import { readSafetensors, writeSafetensors } from './safetensors';
import { CancelledError, questionText, type TaskItem, type TaskRunner } from './tasks';
import { jsonErrorText } from '../../../common/src/jsonError';

export const REFERENCE_FORMAT = 'routescope-reference/2';
/** Sets of the first format: self-embeddings of the question alone (now pooled over the prompt), no option tokens. */
const EARLIER_FORMATS = ['routescope-reference/1'];

export interface ReferenceEntry {
  id: string;
  skill: string;
  question: string;
  prompt: string;
  answer: string;
  answer_token: number;
  /** Multiple choice: the option letters' tokens in letter order (the option loss); absent for generative items. */
  option_tokens?: number[];
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
    const fwd = await o.runner.forward(o.session, tokens, undefined, undefined, forwardLayer(o.embedder));
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
      entries.push({
        id: item.id,
        skill: item.skill,
        question: questionText(item),
        prompt: item.prompt,
        answer: item.answer,
        answer_token: answerToken,
        ...(item.kind === 'mc' ? { option_tokens: o.runner.optionTokens(item) } : {}),
      });
      routing.push(info.moeLayers.map((l) => fwd.omega.get(l)!));
      embeddings.push(await itemEmbedding(o.embedder, { question: questionText(item), prompt: item.prompt }, fwd.embedding));
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

const REFERENCE_FILES = ['routing.safetensors', 'embeddings.safetensors', 'index.jsonl', 'manifest.json'];

/** Refuses an output folder that a reference build must not write into: a model folder (config.json or weights),
 *  anything but a folder, or a non-empty folder that is not a reference set (an unrelated manifest.json included).
 *  `flag` names the folder in the message (e.g. "--out ref"). */
export function checkReferenceOutput(dir: string, flag: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(dir);
  } catch {
    return; // created by the build
  }
  if (!stat.isDirectory()) throw new ReferenceError(`${flag}: exists and is not a folder`);
  const names = fs.readdirSync(dir);
  const model = names.find((n) => n === 'config.json' || n === 'model.safetensors.index.json' || (n.endsWith('.safetensors') && !REFERENCE_FILES.includes(n)));
  if (model) throw new ReferenceError(`${flag}: is a model folder (it holds ${model}); write the reference set to a folder of its own`);
  if (names.length === 0) return;
  const manifestFile = path.join(dir, 'manifest.json');
  if (!names.includes('manifest.json')) throw new ReferenceError(`${flag}: exists and is not a reference set; choose an empty or new folder`);
  let format: unknown;
  try {
    format = (JSON.parse(readTextFile(manifestFile, FILE_KINDS.referenceManifest)) as { format?: unknown } | null)?.format;
  } catch {
    format = undefined;
  }
  if (format !== REFERENCE_FORMAT && !EARLIER_FORMATS.includes(format as string)) {
    throw new ReferenceError(`${flag}: holds a manifest.json that is not a Routescope reference set (${REFERENCE_FORMAT}); choose an empty or new folder`);
  }
  const other = names.find((n) => !REFERENCE_FILES.includes(n));
  if (other) throw new ReferenceError(`${flag}: holds ${other} besides a reference set; choose an empty or new folder`);
  const linked = names.find((n) => !fs.lstatSync(path.join(dir, n)).isFile());
  if (linked) throw new ReferenceError(`${flag}: ${linked} is not a regular file (a link?); it would be written through`);
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
  checkReferenceOutput(dir, dir); // again at the end of a long build: the folder may have changed meanwhile
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

/** Loads a reference set, validating every file completely before anything uses it (manifest fields and types,
 *  index lines, tensor headers, shapes and values), and checks it belongs to this model (and, when given, this
 *  embedder). Every problem is a ReferenceError with one line naming the file. */
export function loadReference(dir: string, info: NativeModelInfo, modelDir: string, embedder?: EmbedderIdentity): ReferenceSet {
  const makeError = (message: string): Error => new ReferenceError(message);
  const manifestFile = path.join(dir, 'manifest.json');
  if (!fs.existsSync(manifestFile)) throw new ReferenceError(`${dir}: not a reference set (manifest.json missing; build one with routescope reference build)`);
  const manifest = parseManifest(manifestFile, readTextFile(manifestFile, FILE_KINDS.referenceManifest, makeError));
  const mismatch = identityMismatch(manifest.model, modelIdentity(modelDir, info.modelType));
  if (mismatch) {
    throw new ReferenceError(`${dir}: this reference set was built for another model (${mismatch}); rebuild it with routescope reference build --model ${modelDir}`);
  }
  if (manifest.moe_layers.join() !== info.moeLayers.join()) {
    throw new ReferenceError(`${manifestFile}: moe_layers [${manifest.moe_layers}] differ from the model's [${info.moeLayers}]`);
  }
  if (manifest.num_experts !== info.numExperts) {
    throw new ReferenceError(`${manifestFile}: num_experts ${manifest.num_experts} differs from the model's ${info.numExperts}`);
  }
  if (embedder && !sameEmbedder(manifest.embedder, embedder)) {
    throw new ReferenceError(
      `${dir}: built with ${describeEmbedder(manifest.embedder)}, but ${describeEmbedder(embedder)} is configured; use the same embedder or rebuild the set`,
    );
  }
  const indexFile = path.join(dir, 'index.jsonl');
  const entries = parseIndex(indexFile, readTextFile(indexFile, FILE_KINDS.referenceIndex, makeError), info.vocabSize);
  const routingFile = path.join(dir, 'routing.safetensors');
  const embeddingsFile = path.join(dir, 'embeddings.safetensors');
  const r = readSafetensors(routingFile, makeError).tensors.routing;
  const e = readSafetensors(embeddingsFile, makeError).tensors.embeddings;
  const N = entries.length;
  const Lm = manifest.moe_layers.length;
  const E = manifest.num_experts;
  const D = manifest.embedding_dim;
  if (manifest.items !== N) throw new ReferenceError(`${manifestFile}: items ${manifest.items}, but index.jsonl holds ${N}`);
  if (!r) throw new ReferenceError(`${routingFile}: no tensor "routing"`);
  if (!e) throw new ReferenceError(`${embeddingsFile}: no tensor "embeddings"`);
  if (r.shape.join() !== [N, Lm, E].join()) throw new ReferenceError(`${routingFile}: shape [${r.shape}] does not match index.jsonl and the manifest ([${N}, ${Lm}, ${E}]: rows × layers × experts)`);
  if (e.shape.join() !== [N, D].join()) throw new ReferenceError(`${embeddingsFile}: shape [${e.shape}] does not match index.jsonl and the manifest ([${N}, ${D}])`);
  if (N === 0) throw new ReferenceError(`${dir}: the reference set is empty (the model answered none of its items correctly)`);
  // ω rows are router softmaxes: finite, non-negative, summing to 1. Embeddings: finite.
  for (let row = 0; row < N * Lm; row++) {
    let sum = 0;
    for (let x = row * E; x < (row + 1) * E; x++) {
      const v = r.data[x];
      if (!Number.isFinite(v) || v < 0) {
        throw new ReferenceError(`${routingFile}: item ${Math.floor(row / Lm)}, MoE layer ${manifest.moe_layers[row % Lm]}: ${v} is not a routing probability`);
      }
      sum += v;
    }
    if (Math.abs(sum - 1) > 1e-3) {
      throw new ReferenceError(`${routingFile}: item ${Math.floor(row / Lm)}, MoE layer ${manifest.moe_layers[row % Lm]}: the routing sums to ${sum}, not 1`);
    }
  }
  const bad = e.data.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0) throw new ReferenceError(`${embeddingsFile}: item ${Math.floor(bad / D)}: embedding value ${e.data[bad]} is not finite`);
  const routing = entries.map((_, i) => Array.from({ length: Lm }, (_, j) => r.data.subarray((i * Lm + j) * E, (i * Lm + j + 1) * E)));
  const embeddings = entries.map((_, i) => e.data.subarray(i * D, (i + 1) * D));
  return { dir, manifest, entries, routing, embeddings };
}

type Fields = Record<string, unknown>;

function isObject(v: unknown): v is Fields {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  return v === null ? 'null' : Array.isArray(v) ? 'a list' : typeof v === 'string' ? JSON.stringify(v.slice(0, 40)) : typeof v === 'object' ? 'an object' : String(v);
}

/** The manifest with every field checked for type and range (a malformed one must not surface as a TypeError). */
export function parseManifest(file: string, text: string): ReferenceManifest {
  const fail = (why: string): never => {
    throw new ReferenceError(`${file}: ${why}`);
  };
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch (error) {
    return fail(`invalid JSON (${jsonErrorText(error)})`);
  }
  if (!isObject(m)) return fail('not a JSON object');
  if (EARLIER_FORMATS.includes(m.format as string)) {
    fail(`format ${m.format} was written by an earlier version (self-embeddings of the question alone, no option tokens); rebuild the set with routescope reference build`);
  }
  if (m.format !== REFERENCE_FORMAT) fail(`format ${describe(m.format)}, expected ${REFERENCE_FORMAT}`);
  const int = (v: unknown, what: string, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    if (!Number.isSafeInteger(v) || (v as number) < min || (v as number) > max) fail(`${what} must be an integer in ${min}..${max === Number.MAX_SAFE_INTEGER ? '' : max} (found ${describe(v)})`);
    return v as number;
  };
  const str = (v: unknown, what: string): string => (typeof v === 'string' ? v : fail(`${what} must be a string (found ${describe(v)})`));
  const model = m.model;
  if (!isObject(model)) return fail('"model" must be an object (the model identity)');
  str(model.model_type, 'model.model_type');
  str(model.config_sha256, 'model.config_sha256');
  if (model.tokenizer_sha256 !== null) str(model.tokenizer_sha256, 'model.tokenizer_sha256');
  if (!Array.isArray(model.weights)) fail('model.weights must be a list');
  (model.weights as unknown[]).forEach((w, i) => {
    if (!isObject(w)) fail(`model.weights[${i}] must be an object`);
    const weight = w as Fields;
    str(weight.file, `model.weights[${i}].file`);
    int(weight.bytes, `model.weights[${i}].bytes`, 0);
    str(weight.header_sha256, `model.weights[${i}].header_sha256`);
  });
  const embedder = m.embedder;
  if (!isObject(embedder)) return fail('"embedder" must be an object');
  if (embedder.kind === 'self') {
    int(embedder.layer, 'embedder.layer', 0);
    if (embedder.pooled !== 'prompt') fail(`embedder.pooled ${describe(embedder.pooled)}, expected "prompt"`);
  }
  else if (embedder.kind === 'onnx') {
    str(embedder.dir, 'embedder.dir');
    str(embedder.model_sha256, 'embedder.model_sha256');
    str(embedder.tokenizer_sha256, 'embedder.tokenizer_sha256');
  } else fail(`embedder.kind ${describe(embedder.kind)}, expected "self" or "onnx"`);
  if (!Array.isArray(m.moe_layers) || m.moe_layers.length === 0) fail('moe_layers must be a non-empty list of layer numbers');
  (m.moe_layers as unknown[]).forEach((l, i) => int(l, `moe_layers[${i}]`, 0, 1 << 20));
  int(m.num_experts, 'num_experts', 1, 1 << 20);
  int(m.embedding_dim, 'embedding_dim', 1, 1 << 20);
  int(m.items, 'items', 0);
  return m as unknown as ReferenceManifest;
}

/** index.jsonl: one object per line with string fields and an answer token inside the vocabulary. */
export function parseIndex(file: string, text: string, vocabSize: number): ReferenceEntry[] {
  const entries: ReferenceEntry[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    const where = `${file}:${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (error) {
      throw new ReferenceError(`${where}: invalid JSON (${jsonErrorText(error)})`);
    }
    if (!isObject(v)) throw new ReferenceError(`${where}: expected a JSON object, got ${describe(v)}`);
    for (const key of ['id', 'skill', 'question', 'prompt', 'answer']) {
      if (typeof v[key] !== 'string') throw new ReferenceError(`${where}: "${key}" must be a string (found ${describe(v[key])})`);
    }
    if (v.prompt === '') throw new ReferenceError(`${where}: "prompt" is empty`);
    const token = v.answer_token;
    if (!Number.isSafeInteger(token) || (token as number) < 0 || (token as number) >= vocabSize) {
      throw new ReferenceError(`${where}: answer_token ${describe(token)} is outside the vocabulary (0..${vocabSize - 1})`);
    }
    let options: number[] | undefined;
    if (v.option_tokens !== undefined) {
      const list = v.option_tokens;
      if (!Array.isArray(list) || list.length < 2 || !list.every((t) => Number.isSafeInteger(t) && t >= 0 && t < vocabSize)) {
        throw new ReferenceError(`${where}: option_tokens must be a list of at least two token ids (0..${vocabSize - 1})`);
      }
      if (!list.includes(token)) throw new ReferenceError(`${where}: answer_token ${token} is not one of option_tokens`);
      options = list as number[];
    }
    entries.push({
      id: v.id as string,
      skill: v.skill as string,
      question: v.question as string,
      prompt: v.prompt as string,
      answer: v.answer as string,
      answer_token: token as number,
      ...(options ? { option_tokens: options } : {}),
    });
  });
  return entries;
}
