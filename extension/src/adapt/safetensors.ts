// Minimal float32 safetensors reader/writer for reference sets (any safetensors tool can open the files).
import * as fs from 'node:fs';
import { FILE_KINDS, readRegularFile, type MakeError } from '../io/files';
import { jsonErrorText } from '../../../common/src/jsonError';
import { encodeSafetensors } from '../io/safetensors';

export interface F32Tensor {
  shape: number[];
  data: Float32Array;
}

export function writeSafetensors(file: string, tensors: Record<string, F32Tensor>, metadata: Record<string, string> = {}): void {
  const named = Object.keys(tensors).sort().map((name) => ({ name, dtype: 'F32' as const, shape: tensors[name].shape, data: tensors[name].data }));
  fs.writeFileSync(file, encodeSafetensors(named, metadata));
}

export class SafetensorsError extends Error {
  readonly code = 'BAD_SAFETENSORS';
}

/** Largest JSON header accepted, as in the engine (native/src/util/files.h). */
const MAX_HEADER_BYTES = 100_000_000;

/** Reads a float32 safetensors file, checking it as the engine checks a checkpoint: header length and JSON, every
 *  entry's dtype, shape and data_offsets, offsets tiling the data exactly. Errors are one line naming the file. */
export function readSafetensors(
  file: string,
  makeError: MakeError = (message) => new SafetensorsError(message),
): { tensors: Record<string, F32Tensor>; metadata: Record<string, string> } {
  const bytes = readRegularFile(file, FILE_KINDS.referenceTensors, makeError);
  return parseSafetensors(bytes, file, makeError);
}

export function parseSafetensors(
  bytes: Buffer,
  file: string,
  makeError: MakeError = (message) => new SafetensorsError(message),
): { tensors: Record<string, F32Tensor>; metadata: Record<string, string> } {
  const fail = (why: string): never => {
    throw makeError(`${file}: ${why}`);
  };
  if (bytes.length < 8) fail(`truncated: ${bytes.length} bytes, shorter than the 8-byte header length`);
  const n = bytes.readBigUInt64LE(0);
  if (n > BigInt(MAX_HEADER_BYTES)) fail(`header length ${n} exceeds ${MAX_HEADER_BYTES / 1e6} MB`);
  if (n > BigInt(bytes.length - 8)) fail(`header length ${n} runs past the end of the file (${bytes.length} bytes)`);
  const base = 8 + Number(n);
  let header: unknown;
  try {
    header = JSON.parse(bytes.subarray(8, base).toString('utf8'));
  } catch (error) {
    return fail(`header is not valid JSON (${jsonErrorText(error)})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) return fail('header is not a JSON object');
  const dataLength = bytes.length - base;
  // Null prototypes: tensor names are file content ("__proto__" is a name like any other).
  const tensors: Record<string, F32Tensor> = Object.create(null);
  let metadata: Record<string, string> = Object.create(null);
  const spans: { begin: number; end: number; name: string }[] = [];
  for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) fail('__metadata__ is not an object');
      for (const [key, value] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof value !== 'string') fail(`__metadata__ "${key}" is not a string`);
      }
      metadata = Object.assign(Object.create(null), entry);
      continue;
    }
    const t = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    if (typeof t !== 'object' || t === null || Array.isArray(t) || typeof t.dtype !== 'string' || !Array.isArray(t.shape) ||
      !Array.isArray(t.data_offsets) || t.data_offsets.length !== 2) {
      fail(`tensor "${name}" has a malformed entry (needs dtype, shape, data_offsets)`);
    }
    const { dtype, shape, data_offsets: offsets } = t as { dtype: string; shape: unknown[]; data_offsets: unknown[] };
    if (dtype !== 'F32') fail(`tensor "${name}" has dtype ${dtype}, expected F32`);
    let count = 1;
    for (const d of shape) {
      if (!Number.isSafeInteger(d) || (d as number) < 0) fail(`tensor "${name}" has an invalid shape`);
      count *= d as number;
      if (count * 4 > Number.MAX_SAFE_INTEGER) fail(`tensor "${name}" is impossibly large`);
    }
    const [begin, end] = offsets as number[];
    if (!Number.isSafeInteger(begin) || !Number.isSafeInteger(end) || begin < 0 || end < begin) {
      fail(`tensor "${name}" has invalid data_offsets`);
    }
    if (end - begin !== count * 4) fail(`tensor "${name}" holds ${end - begin} bytes but its dtype and shape need ${count * 4}`);
    if (end > dataLength) fail(`tensor "${name}" data_offsets [${begin}, ${end}) run past the end of the data (${dataLength} bytes; file truncated?)`);
    spans.push({ begin, end, name });
    const copy = new Float32Array(count);
    Buffer.from(copy.buffer).set(bytes.subarray(base + begin, base + end));
    tensors[name] = { shape: shape as number[], data: copy };
  }
  // Offsets must tile the data exactly, as in a checkpoint.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const s of spans) {
    if (s.begin < cursor) fail(`tensor "${s.name}" overlaps another tensor's data (offset ${s.begin})`);
    if (s.begin > cursor) fail(`tensor data does not tile the buffer: a gap of ${s.begin - cursor} bytes before "${s.name}"`);
    cursor = s.end;
  }
  if (cursor !== dataLength) fail(`tensor data does not tile the buffer: ${dataLength - cursor} bytes after the last tensor`);
  return { tensors, metadata };
}
