// Minimal float32 safetensors reader/writer for reference sets (any safetensors tool can open the files).
import * as fs from 'node:fs';

export interface F32Tensor {
  shape: number[];
  data: Float32Array;
}

export function writeSafetensors(file: string, tensors: Record<string, F32Tensor>, metadata: Record<string, string> = {}): void {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  const names = Object.keys(tensors).sort();
  for (const name of names) {
    const t = tensors[name];
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) throw new Error(`${file}: tensor ${name} has ${t.data.length} values for shape [${t.shape}]`);
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const head = Buffer.from(json, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(head.length));
  const parts: Buffer[] = [prefix, head];
  for (const name of names) {
    const d = tensors[name].data;
    parts.push(Buffer.from(d.buffer, d.byteOffset, d.byteLength));
  }
  fs.writeFileSync(file, Buffer.concat(parts));
}

export function readSafetensors(file: string): { tensors: Record<string, F32Tensor>; metadata: Record<string, string> } {
  const bytes = fs.readFileSync(file);
  const fail = (why: string): never => {
    throw new Error(`${file}: not a valid safetensors file (${why})`);
  };
  if (bytes.length < 8) fail('too short');
  const n = Number(bytes.readBigUInt64LE(0));
  if (n > bytes.length - 8) fail('header length beyond the end of the file');
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>>;
  try {
    header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8'));
  } catch (error) {
    return fail(`header: ${(error as Error).message}`);
  }
  const base = 8 + n;
  const tensors: Record<string, F32Tensor> = {};
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = entry as Record<string, string>;
      continue;
    }
    const t = entry as { dtype: string; shape: number[]; data_offsets: [number, number] };
    if (t.dtype !== 'F32') fail(`tensor ${name} has dtype ${t.dtype}, expected F32`);
    const [start, end] = t.data_offsets;
    if (base + end > bytes.length || end < start) fail(`tensor ${name} lies outside the file`);
    const count = t.shape.reduce((a, b) => a * b, 1);
    if ((end - start) !== count * 4) fail(`tensor ${name} size does not match its shape`);
    const copy = new Float32Array(count);
    Buffer.from(copy.buffer).set(bytes.subarray(base + start, base + end));
    tensors[name] = { shape: t.shape, data: copy };
  }
  return { tensors, metadata };
}
