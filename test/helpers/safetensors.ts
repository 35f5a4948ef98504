// A small, independent safetensors reader/writer for the tests (reference outputs, corrupted checkpoints).
// Deliberately not the engine's parser: the tests must not trust the code they check.
import * as fs from 'node:fs';

export interface TensorEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

export interface SafetensorsFile {
  header: Record<string, TensorEntry>;
  metadata?: Record<string, string>;
  /** The bytes after the header (offsets are relative to its start). */
  data: Buffer;
}

export function readSafetensorsRaw(file: string): SafetensorsFile {
  const bytes = fs.readFileSync(file);
  if (bytes.length < 8) throw new Error(`${file}: shorter than the 8-byte header length`);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  if (8 + headerLength > bytes.length) throw new Error(`${file}: header length ${headerLength} past the end`);
  const json = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8')) as Record<string, unknown>;
  const header: Record<string, TensorEntry> = {};
  let metadata: Record<string, string> | undefined;
  for (const [name, value] of Object.entries(json)) {
    if (name === '__metadata__') metadata = value as Record<string, string>;
    else header[name] = value as TensorEntry;
  }
  return { header, ...(metadata ? { metadata } : {}), data: bytes.subarray(8 + headerLength) };
}

/** Writes header + data exactly as given (offsets are not checked: the tests use this to corrupt files). */
export function writeSafetensorsRaw(file: string, st: SafetensorsFile): void {
  const json: Record<string, unknown> = {};
  if (st.metadata) json.__metadata__ = st.metadata;
  for (const [name, entry] of Object.entries(st.header)) json[name] = entry;
  let headerText = JSON.stringify(json);
  while ((8 + Buffer.byteLength(headerText)) % 8 !== 0) headerText += ' ';
  const headerBytes = Buffer.from(headerText, 'utf8');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(headerBytes.length));
  fs.writeFileSync(file, Buffer.concat([length, headerBytes, st.data]));
}

function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

export interface Tensor {
  dtype: string;
  shape: number[];
  /** Values as numbers, row-major. */
  values: Float64Array | Int32Array;
}

export function decodeTensor(st: SafetensorsFile, name: string): Tensor {
  const entry = st.header[name];
  if (!entry) throw new Error(`tensor ${name} not found`);
  const [begin, end] = entry.data_offsets;
  const bytes = st.data.subarray(begin, end);
  const count = entry.shape.reduce((a, b) => a * b, 1);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let values: Float64Array | Int32Array;
  switch (entry.dtype) {
    case 'F32':
      values = Float64Array.from({ length: count }, (_, i) => view.getFloat32(i * 4, true));
      break;
    case 'F64':
      values = Float64Array.from({ length: count }, (_, i) => view.getFloat64(i * 8, true));
      break;
    case 'F16':
      values = Float64Array.from({ length: count }, (_, i) => f16ToF32(view.getUint16(i * 2, true)));
      break;
    case 'BF16': {
      const scratch = new DataView(new ArrayBuffer(4));
      values = Float64Array.from({ length: count }, (_, i) => {
        scratch.setUint32(0, view.getUint16(i * 2, true) << 16, true);
        return scratch.getFloat32(0, true);
      });
      break;
    }
    case 'I32':
      values = Int32Array.from({ length: count }, (_, i) => view.getInt32(i * 4, true));
      break;
    case 'I64':
      values = Int32Array.from({ length: count }, (_, i) => Number(view.getBigInt64(i * 8, true)));
      break;
    default:
      throw new Error(`tensor ${name}: unsupported dtype ${entry.dtype}`);
  }
  if (bytes.length !== count * (values instanceof Int32Array && entry.dtype === 'I64' ? 8 : bytesPerElement(entry.dtype))) {
    throw new Error(`tensor ${name}: ${bytes.length} bytes for shape [${entry.shape}] ${entry.dtype}`);
  }
  return { dtype: entry.dtype, shape: entry.shape, values };
}

export function bytesPerElement(dtype: string): number {
  switch (dtype) {
    case 'F64':
    case 'I64':
      return 8;
    case 'F32':
    case 'I32':
      return 4;
    case 'F16':
    case 'BF16':
      return 2;
    default:
      return 1;
  }
}

/** All tensors of a file by name. */
export function readSafetensors(file: string): Map<string, Tensor> {
  const st = readSafetensorsRaw(file);
  return new Map(Object.keys(st.header).map((name) => [name, decodeTensor(st, name)]));
}

/** Rows of a 2-D tensor. */
export function rows(t: Tensor): number[][] {
  const cols = t.shape[t.shape.length - 1];
  const out: number[][] = [];
  for (let i = 0; i < t.values.length; i += cols) out.push(Array.from(t.values.subarray(i, i + cols)));
  return out;
}
