// What a reference set was built from: the model's identity (so a set from another checkpoint is refused) and the
// embedder's identity (so neighbours are searched in the same embedding space).
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FILE_KINDS, openRegularFile, type FileKind } from '../io/files';

export interface ModelIdentity {
  model_type: string;
  config_sha256: string;
  /** Every *.safetensors file: its size and the hash of its header (names, dtypes, shapes, offsets). */
  weights: { file: string; bytes: number; header_sha256: string }[];
  tokenizer_sha256: string | null;
}

export type EmbedderIdentity =
  /** The model's own hidden state entering `layer`, mean-pooled over the prompt in the prompt's own forward. */
  | { kind: 'self'; layer: number; pooled: 'prompt' }
  | { kind: 'onnx'; dir: string; model_sha256: string; tokenizer_sha256: string };

export function sha256File(file: string, kind?: FileKind): string {
  const hash = crypto.createHash('sha256');
  const { fd } = openRegularFile(file, kind);
  try {
    const buffer = Buffer.alloc(1 << 20);
    for (;;) {
      const n = fs.readSync(fd, buffer, 0, buffer.length, null);
      if (n <= 0) break;
      hash.update(buffer.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}

/** Largest safetensors JSON header read, as in the engine (native/src/util/files.h). */
const MAX_SAFETENSORS_HEADER = 100_000_000;

function safetensorsHeaderHash(file: string): string {
  const { fd, size } = openRegularFile(file);
  try {
    const prefix = Buffer.alloc(8);
    fs.readSync(fd, prefix, 0, 8, 0);
    const n = Number(prefix.readBigUInt64LE(0));
    const header = Buffer.alloc(Math.max(0, Math.min(n, size - 8, MAX_SAFETENSORS_HEADER)));
    fs.readSync(fd, header, 0, header.length, 8);
    return crypto.createHash('sha256').update(prefix).update(header).digest('hex');
  } finally {
    fs.closeSync(fd);
  }
}

export function modelIdentity(dir: string, modelType: string): ModelIdentity {
  const weights = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.safetensors'))
    .sort()
    .map((file) => {
      const full = path.join(dir, file);
      return { file, bytes: fs.statSync(full).size, header_sha256: safetensorsHeaderHash(full) };
    });
  const tokenizer = path.join(dir, 'tokenizer.json');
  return {
    model_type: modelType,
    config_sha256: sha256File(path.join(dir, 'config.json'), FILE_KINDS.config),
    weights,
    tokenizer_sha256: fs.existsSync(tokenizer) ? sha256File(tokenizer, FILE_KINDS.tokenizer) : null,
  };
}

/** The first difference between two model identities, as a phrase; undefined when they match. */
export function identityMismatch(expected: ModelIdentity, actual: ModelIdentity): string | undefined {
  if (expected.model_type !== actual.model_type) return `model_type ${actual.model_type} vs ${expected.model_type}`;
  if (expected.config_sha256 !== actual.config_sha256) return 'config.json differs';
  if (expected.weights.length !== actual.weights.length) return `${actual.weights.length} weight files vs ${expected.weights.length}`;
  for (let i = 0; i < expected.weights.length; i++) {
    const e = expected.weights[i];
    const a = actual.weights[i];
    if (e.file !== a.file) return `weight file ${a.file} vs ${e.file}`;
    if (e.bytes !== a.bytes) return `${a.file} has ${a.bytes} bytes vs ${e.bytes}`;
    if (e.header_sha256 !== a.header_sha256) return `${a.file} header differs`;
  }
  if (expected.tokenizer_sha256 !== actual.tokenizer_sha256) return 'tokenizer.json differs';
  return undefined;
}

export function describeEmbedder(id: EmbedderIdentity): string {
  return id.kind === 'self' ? `the model's own hidden state (layer ${id.layer}, pooled over the prompt)` : `ONNX embedder ${id.dir}`;
}

export function sameEmbedder(a: EmbedderIdentity, b: EmbedderIdentity): boolean {
  if (a.kind === 'self' && b.kind === 'self') return a.layer === b.layer;
  if (a.kind === 'onnx' && b.kind === 'onnx') return a.model_sha256 === b.model_sha256 && a.tokenizer_sha256 === b.tokenizer_sha256;
  return false;
}
