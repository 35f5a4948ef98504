// Writing .safetensors files (the format any safetensors tool opens): tensors of F32, F64, I32 or I64 values in
// the order given, a JSON header with `__metadata__` strings, the data 8-byte aligned. Used by the routing trace
// export (runs/trace.ts), the statistics export (stats/export.ts) and the C3PO reference sets (adapt/safetensors.ts).

export type SafetensorsDtype = 'F32' | 'F64' | 'I32' | 'I64';

export interface NamedTensor {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  data: Float32Array | Float64Array | Int32Array | BigInt64Array;
}

const BYTES: Record<SafetensorsDtype, number> = { F32: 4, F64: 8, I32: 4, I64: 8 };

/** The bytes of a safetensors file holding `tensors` (names unique) and `metadata`. */
export function encodeSafetensors(tensors: NamedTensor[], metadata: Record<string, string> = {}): Buffer {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    if (t.name in header) throw new Error(`safetensors: tensor name "${t.name}" is used twice`);
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) throw new Error(`safetensors: tensor ${t.name} has ${t.data.length} values for shape [${t.shape}]`);
    if (t.data.BYTES_PER_ELEMENT !== BYTES[t.dtype]) throw new Error(`safetensors: tensor ${t.name} is not ${t.dtype} data`);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  // The data starts 8-byte aligned, as the format recommends.
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const head = Buffer.from(json, 'utf8');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(head.length));
  return Buffer.concat([length, head, ...tensors.map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))]);
}
