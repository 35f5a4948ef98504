// Writes a Hugging Face MoE checkpoint (safetensors, BF16) as a GGUF file that llama.cpp loads, for the bench's
// llama.cpp peer: the same weights under llama.cpp's tensor names and metadata keys, streamed tensor by tensor.
//
// Types follow llama.cpp's own converter (convert_hf_to_gguf.py): norms and the router (ffn_gate_inp) stay F32 (exact
// widenings of the bf16 values), every other matrix is BF16 (a byte copy) or Q8_0 (quantised like
// quantize_row_q8_0_ref: blocks of 32, fp16 scale amax/127, roundf). The vocabulary is synthetic (byte-level tokens,
// then placeholders up to vocab_size): the bench feeds token ids, so only the size has to match.
import fs from 'node:fs';
import path from 'node:path';

export const GGUF_WRITER_VERSION = 1;

const GGML = { F32: 0, Q8_0: 8, BF16: 30 };
const FILE_TYPE = { bf16: 32, q8_0: 7 }; // LLAMA_FTYPE_MOSTLY_BF16 / _Q8_0
const KV = { U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9 };
const ALIGNMENT = 32;
const QK8_0 = 32;

/** The model folder's tensors: name -> {dtype, shape, file, offset (absolute), bytes}. */
export function readSafetensorsIndex(dir) {
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
  if (files.length === 0) throw new Error(`${dir} has no *.safetensors file`);
  const tensors = new Map();
  for (const f of files) {
    const file = path.join(dir, f);
    const fd = fs.openSync(file, 'r');
    try {
      const len = Buffer.alloc(8);
      fs.readSync(fd, len, 0, 8, 0);
      const n = Number(len.readBigUInt64LE(0));
      const json = Buffer.alloc(n);
      fs.readSync(fd, json, 0, n, 8);
      const header = JSON.parse(json.toString('utf8'));
      for (const [name, t] of Object.entries(header)) {
        if (name === '__metadata__') continue;
        tensors.set(name, { dtype: t.dtype, shape: t.shape, file, offset: 8 + n + t.data_offsets[0], bytes: t.data_offsets[1] - t.data_offsets[0] });
      }
    } finally {
      fs.closeSync(fd);
    }
  }
  return tensors;
}

/**
 * llama.cpp's `olmoe` layout for a config.json: [{name, ne (ggml order, innermost first), kind, sources}], kind
 * 'f32' (norms, router) or 'matrix' (BF16 / Q8_0), sources = the HF tensors concatenated in order.
 */
export function olmoeGgufTensors(cfg) {
  if (cfg.model_type !== 'olmoe') throw new Error(`GGUF export supports model_type olmoe only, not ${cfg.model_type}`);
  const H = cfg.hidden_size;
  const I = cfg.intermediate_size;
  const E = cfg.num_experts;
  const hd = cfg.head_dim ?? H / cfg.num_attention_heads;
  const kv = cfg.num_key_value_heads * hd;
  const V = cfg.vocab_size;
  const list = [{ name: 'token_embd.weight', ne: [H, V], kind: 'matrix', sources: ['model.embed_tokens.weight'] }];
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    const b = `blk.${l}.`;
    const experts = (proj) => Array.from({ length: E }, (_, e) => `${p}mlp.experts.${e}.${proj}.weight`);
    list.push(
      { name: `${b}attn_norm.weight`, ne: [H], kind: 'f32', sources: [`${p}input_layernorm.weight`] },
      { name: `${b}attn_q.weight`, ne: [H, H], kind: 'matrix', sources: [`${p}self_attn.q_proj.weight`] },
      { name: `${b}attn_k.weight`, ne: [H, kv], kind: 'matrix', sources: [`${p}self_attn.k_proj.weight`] },
      { name: `${b}attn_v.weight`, ne: [H, kv], kind: 'matrix', sources: [`${p}self_attn.v_proj.weight`] },
      { name: `${b}attn_output.weight`, ne: [H, H], kind: 'matrix', sources: [`${p}self_attn.o_proj.weight`] },
      { name: `${b}attn_q_norm.weight`, ne: [H], kind: 'f32', sources: [`${p}self_attn.q_norm.weight`] },
      { name: `${b}attn_k_norm.weight`, ne: [kv], kind: 'f32', sources: [`${p}self_attn.k_norm.weight`] },
      { name: `${b}ffn_norm.weight`, ne: [H], kind: 'f32', sources: [`${p}post_attention_layernorm.weight`] },
      { name: `${b}ffn_gate_inp.weight`, ne: [H, E], kind: 'f32', sources: [`${p}mlp.gate.weight`] },
      { name: `${b}ffn_gate_exps.weight`, ne: [H, I, E], kind: 'matrix', sources: experts('gate_proj') },
      { name: `${b}ffn_down_exps.weight`, ne: [I, H, E], kind: 'matrix', sources: experts('down_proj') },
      { name: `${b}ffn_up_exps.weight`, ne: [H, I, E], kind: 'matrix', sources: experts('up_proj') },
    );
  }
  list.push({ name: 'output_norm.weight', ne: [H], kind: 'f32', sources: ['model.norm.weight'] });
  // Tied embeddings: llama.cpp falls back to token_embd when `output` is absent.
  if (!cfg.tie_word_embeddings) list.push({ name: 'output.weight', ne: [H, V], kind: 'matrix', sources: ['lm_head.weight'] });
  return list;
}

/** Metadata in llama.cpp's key names (src/llama-arch.cpp), with a synthetic byte-level vocabulary of vocab_size. */
export function olmoeGgufMetadata(cfg, type, name) {
  const arch = 'olmoe';
  const V = cfg.vocab_size;
  const eos = Number.isInteger(cfg.eos_token_id) && cfg.eos_token_id < V ? cfg.eos_token_id : V - 1;
  // GPT-2's byte <-> printable character map, so the first 256 tokens are a real byte-level vocabulary.
  const printable = [];
  for (let c = 33; c <= 126; c++) printable.push(c);
  for (let c = 161; c <= 172; c++) printable.push(c);
  for (let c = 174; c <= 255; c++) printable.push(c);
  const byteChar = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) byteChar[b] = String.fromCodePoint(printable.includes(b) ? b : 256 + extra++);
  const tokens = [];
  const types = [];
  for (let i = 0; i < V; i++) {
    if (i === eos) {
      tokens.push('<|endoftext|>');
      types.push(3); // CONTROL
    } else if (i < 256) {
      tokens.push(byteChar[i]);
      types.push(1); // NORMAL
    } else {
      tokens.push(`<|rs_${i}|>`);
      types.push(1);
    }
  }
  const hd = cfg.head_dim ?? cfg.hidden_size / cfg.num_attention_heads;
  return [
    ['general.architecture', KV.STRING, arch],
    ['general.name', KV.STRING, name],
    ['general.file_type', KV.U32, FILE_TYPE[type]],
    ['general.alignment', KV.U32, ALIGNMENT],
    [`${arch}.context_length`, KV.U32, cfg.max_position_embeddings],
    [`${arch}.embedding_length`, KV.U32, cfg.hidden_size],
    [`${arch}.block_count`, KV.U32, cfg.num_hidden_layers],
    [`${arch}.feed_forward_length`, KV.U32, cfg.intermediate_size],
    [`${arch}.attention.head_count`, KV.U32, cfg.num_attention_heads],
    [`${arch}.attention.head_count_kv`, KV.U32, cfg.num_key_value_heads],
    [`${arch}.attention.key_length`, KV.U32, hd],
    [`${arch}.attention.value_length`, KV.U32, hd],
    [`${arch}.rope.freq_base`, KV.F32, cfg.rope_theta ?? 10000],
    [`${arch}.attention.layer_norm_rms_epsilon`, KV.F32, cfg.rms_norm_eps],
    [`${arch}.expert_count`, KV.U32, cfg.num_experts],
    [`${arch}.expert_used_count`, KV.U32, cfg.num_experts_per_tok],
    ['tokenizer.ggml.model', KV.STRING, 'gpt2'],
    ['tokenizer.ggml.pre', KV.STRING, 'default'],
    ['tokenizer.ggml.tokens', KV.ARRAY, { type: KV.STRING, values: tokens }],
    ['tokenizer.ggml.token_type', KV.ARRAY, { type: KV.I32, values: types }],
    ['tokenizer.ggml.merges', KV.ARRAY, { type: KV.STRING, values: [] }],
    ['tokenizer.ggml.eos_token_id', KV.U32, eos],
    ['tokenizer.ggml.bos_token_id', KV.U32, eos],
    ['tokenizer.ggml.add_bos_token', KV.BOOL, false],
  ];
}

// ---- encoding ------------------------------------------------------------------------------------------------

class ByteSink {
  constructor() {
    this.parts = [];
    this.length = 0;
  }
  push(buf) {
    this.parts.push(buf);
    this.length += buf.length;
  }
  u32(v) {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0);
    this.push(b);
  }
  i32(v) {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v | 0);
    this.push(b);
  }
  u64(v) {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  f32(v) {
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    this.push(b);
  }
  str(s) {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
  value(type, v) {
    switch (type) {
      case KV.U32: return this.u32(v);
      case KV.I32: return this.i32(v);
      case KV.F32: return this.f32(v);
      case KV.BOOL: return this.push(Buffer.from([v ? 1 : 0]));
      case KV.STRING: return this.str(v);
      case KV.ARRAY:
        this.u32(v.type);
        this.u64(v.values.length);
        for (const x of v.values) this.value(v.type, x);
        return undefined;
      default: throw new Error(`GGUF value type ${type} not written`);
    }
  }
  buffer() {
    return Buffer.concat(this.parts, this.length);
  }
}

function ggmlType(kind, type) {
  if (kind === 'f32') return GGML.F32;
  return type === 'q8_0' ? GGML.Q8_0 : GGML.BF16;
}

function tensorBytes(ne, ggml) {
  const n = ne.reduce((a, b) => a * b, 1);
  if (ggml === GGML.F32) return n * 4;
  if (ggml === GGML.BF16) return n * 2;
  if (ne[0] % QK8_0) throw new Error(`Q8_0 needs rows that are a multiple of ${QK8_0} (got ${ne[0]})`);
  return (n / QK8_0) * 34;
}

const align = (x) => Math.ceil(x / ALIGNMENT) * ALIGNMENT;

// ---- conversion ----------------------------------------------------------------------------------------------

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** float32 -> IEEE half bits, round to nearest even (ggml's GGML_FP32_TO_FP16 for finite values). */
function toF16(x) {
  f32buf[0] = x;
  const u = u32buf[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
  return sign | h;
}

/** Widens bf16 (Uint16Array) to float32 values in out. */
function bf16ToF32(src, out) {
  const o = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < src.length; i++) o[i] = src[i] << 16;
}

/** Q8_0 blocks of the float32 values (length a multiple of 32) into out (34 bytes per block). */
function quantizeQ8_0(x, out) {
  const nb = x.length / QK8_0;
  for (let b = 0; b < nb; b++) {
    const base = b * QK8_0;
    let amax = 0;
    for (let j = 0; j < QK8_0; j++) amax = Math.max(amax, Math.abs(x[base + j]));
    const d = Math.fround(amax / 127);
    const id = d ? Math.fround(1 / d) : 0;
    const o = b * 34;
    const h = toF16(d);
    out[o] = h & 0xff;
    out[o + 1] = h >>> 8;
    for (let j = 0; j < QK8_0; j++) {
      const v = Math.fround(x[base + j] * id);
      const q = v < 0 ? -Math.floor(-v + 0.5) : Math.floor(v + 0.5); // roundf: halves away from zero
      out[o + 2 + j] = q & 0xff;
    }
  }
}

const ROWS_PER_CHUNK = 1 << 20; // elements per read (4 MiB as f32)

/** Streams one HF tensor (BF16 or F32) converted to the GGUF type into fd at position pos; returns bytes written. */
function writeSource(fd, pos, src, ggml) {
  if (src.dtype !== 'BF16' && src.dtype !== 'F32') throw new Error(`GGUF export reads BF16/F32 tensors, not ${src.dtype}`);
  const inFd = fs.openSync(src.file, 'r');
  const elemIn = src.dtype === 'BF16' ? 2 : 4;
  const total = src.bytes / elemIn;
  const rowLen = src.shape[src.shape.length - 1];
  const chunk = Math.max(rowLen, Math.floor(ROWS_PER_CHUNK / rowLen) * rowLen);
  const inBuf = Buffer.alloc(chunk * elemIn);
  const f32 = new Float32Array(chunk);
  const outBuf = Buffer.alloc(ggml === GGML.Q8_0 ? (chunk / QK8_0) * 34 : chunk * 4);
  let written = 0;
  try {
    for (let done = 0; done < total; ) {
      const n = Math.min(chunk, total - done);
      const got = fs.readSync(inFd, inBuf, 0, n * elemIn, src.offset + done * elemIn);
      if (got !== n * elemIn) throw new Error(`short read in ${src.file}`);
      let out;
      if (ggml === GGML.BF16 && src.dtype === 'BF16') {
        out = inBuf.subarray(0, n * 2);
      } else {
        const vals = f32.subarray(0, n);
        if (src.dtype === 'BF16') bf16ToF32(new Uint16Array(inBuf.buffer, inBuf.byteOffset, n), vals);
        else vals.set(new Float32Array(inBuf.buffer.slice(inBuf.byteOffset, inBuf.byteOffset + n * 4)));
        if (ggml === GGML.F32) {
          out = Buffer.from(vals.buffer, vals.byteOffset, n * 4);
        } else if (ggml === GGML.Q8_0) {
          quantizeQ8_0(vals, outBuf);
          out = outBuf.subarray(0, (n / QK8_0) * 34);
        } else {
          throw new Error('F32 -> BF16 is not needed by the bench');
        }
      }
      fs.writeSync(fd, out, 0, out.length, pos + written);
      written += out.length;
      done += n;
    }
  } finally {
    fs.closeSync(inFd);
  }
  return written;
}

/**
 * Writes modelDir (config.json + safetensors) as a GGUF of `type` ('bf16' or 'q8_0') to outFile (via a temporary
 * name, renamed when complete). Returns {file, bytes, seconds}.
 */
export function writeGguf(modelDir, outFile, type, log = () => {}) {
  if (!(type in FILE_TYPE)) throw new Error(`GGUF type must be bf16 or q8_0, got ${type}`);
  const t0 = performance.now();
  const cfg = JSON.parse(fs.readFileSync(path.join(modelDir, 'config.json'), 'utf8'));
  const index = readSafetensorsIndex(modelDir);
  const plan = olmoeGgufTensors(cfg).map((t) => {
    const sources = t.sources.map((s) => {
      const src = index.get(s);
      if (!src) throw new Error(`${modelDir} lacks tensor ${s}`);
      return src;
    });
    const ggml = ggmlType(t.kind, type);
    return { ...t, ggml, srcs: sources, bytes: tensorBytes(t.ne, ggml) };
  });
  const head = new ByteSink();
  head.push(Buffer.from('GGUF', 'ascii'));
  head.u32(3);
  const meta = olmoeGgufMetadata(cfg, type, `routescope bench ${path.basename(modelDir)} ${type}`);
  head.u64(plan.length);
  head.u64(meta.length);
  for (const [key, vt, v] of meta) {
    head.str(key);
    head.u32(vt);
    head.value(vt, v);
  }
  let offset = 0;
  for (const t of plan) {
    head.str(t.name);
    head.u32(t.ne.length);
    for (const d of t.ne) head.u64(d);
    head.u32(t.ggml);
    head.u64(offset);
    t.offset = offset;
    offset = align(offset + t.bytes);
  }
  const headBuf = head.buffer();
  const dataStart = align(headBuf.length);
  const tmp = `${outFile}.partial`;
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, headBuf, 0, headBuf.length, 0);
    let lastPct = -1;
    for (const t of plan) {
      let pos = dataStart + t.offset;
      for (const src of t.srcs) pos += writeSource(fd, pos, src, t.ggml);
      if (pos - dataStart - t.offset !== t.bytes) throw new Error(`${t.name}: wrote ${pos - dataStart - t.offset} bytes, expected ${t.bytes}`);
      const pct = Math.floor((100 * (t.offset + t.bytes)) / offset / 10) * 10;
      if (pct !== lastPct && pct > 0) log(`  ${pct}%`);
      lastPct = pct;
    }
    fs.ftruncateSync(fd, dataStart + offset);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, outFile);
  return { file: outFile, bytes: dataStart + offset, seconds: (performance.now() - t0) / 1000 };
}

/**
 * The GGUF of modelDir in `type`, written once next to the bench's outputs and reused while its stamp (writer
 * version + the checkpoint's own stamp) matches.
 */
export function ensureGguf(modelDir, outDir, type, log = () => {}) {
  const file = path.join(outDir, `${path.basename(modelDir)}-${type}.gguf`);
  const stampFile = `${file}.stamp.json`;
  let source = '';
  try {
    source = fs.readFileSync(path.join(modelDir, 'bench-stamp.json'), 'utf8');
  } catch {
    source = fs.readFileSync(path.join(modelDir, 'config.json'), 'utf8');
  }
  const stamp = JSON.stringify({ writer: GGUF_WRITER_VERSION, type, source }) + '\n';
  try {
    if (fs.readFileSync(stampFile, 'utf8') === stamp && fs.existsSync(file)) return { file, reused: true, seconds: 0, bytes: fs.statSync(file).size };
  } catch {
    // write it
  }
  fs.rmSync(stampFile, { force: true });
  log(`writing ${path.relative(process.cwd(), file)} (llama.cpp olmoe layout, ${type}) ...`);
  const r = writeGguf(modelDir, file, type, log);
  fs.writeFileSync(stampFile, stamp);
  return { ...r, reused: false };
}
