// Writes a Hugging Face MoE checkpoint (safetensors) as a GGUF file that llama.cpp loads, for the bench's llama.cpp
// peer: the same weights under llama.cpp's tensor names and metadata keys, streamed tensor by tensor. Three of
// llama.cpp's architectures: `olmoe`, `deepseek2` (DeepSeek-V2/V3: MLA with kv_b split into attn_k_b / attn_v_b,
// leading dense layers, shared experts, YaRN) and `gpt-oss` (MXFP4 experts repacked into ggml's blocks, attention
// sinks and biases, alternating sliding-window layers). Facts from llama.cpp's loader (src/models/*.cpp) and
// convert_hf_to_gguf.py of the release node-llama-cpp 3.22.1 bundles.
//
// Types follow llama.cpp's own converter: norms, biases, sinks and the router (ffn_gate_inp) are F32 (exact widenings
// of the bf16 values), MXFP4 experts stay MXFP4 (a lossless repack), every other matrix is BF16 (a byte copy) or
// Q8_0 (quantised like quantize_row_q8_0_ref: blocks of 32, fp16 scale amax/127, roundf). The vocabulary is synthetic
// (byte-level tokens, then placeholders up to vocab_size): the bench feeds token ids, so only the size has to match.
import fs from 'node:fs';
import path from 'node:path';

import { toBf16 } from './checkpoint.mjs';

export const GGUF_WRITER_VERSION = 2;

export const GGML = { F32: 0, Q8_0: 8, BF16: 30, MXFP4: 39 };
const FILE_TYPE = { bf16: 32, q8_0: 7 }; // LLAMA_FTYPE_MOSTLY_BF16 / _Q8_0
/** GGUF metadata value types. */
export const KV = { U8: 0, I8: 1, U16: 2, I16: 3, U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9, U64: 10, I64: 11, F64: 12 };
const ALIGNMENT = 32;
const QK8_0 = 32;
const QK_MXFP4 = 32;
// llama_expert_gating_func_type
const GATING = { softmax: 1, sigmoid: 2 };

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

// ---- layouts -------------------------------------------------------------------------------------------------
//
// A layout is [{name, ne (ggml order, innermost first), kind, sources}]: kind 'f32' (norms, biases, sinks, router),
// 'matrix' (BF16 / Q8_0) or 'mxfp4'; sources are concatenated in order, each an HF tensor name (streamed) or
// {tensor, transform(values) -> values} (small tensors, read whole) or, for 'mxfp4', {blocks, scales, parity}.

/** The GGUF architecture name llama.cpp uses for a config.json's model_type, or null when the writer has none. */
export function ggufArchitecture(cfg) {
  return { olmoe: 'olmoe', deepseek_v2: 'deepseek2', deepseek_v3: 'deepseek2', gpt_oss: 'gpt-oss' }[cfg.model_type] ?? null;
}

/** llama.cpp's tensors for a config.json (throws for a model_type the writer does not know). */
export function ggufTensors(cfg) {
  switch (ggufArchitecture(cfg)) {
    case 'olmoe': return olmoeTensors(cfg);
    case 'deepseek2': return deepseek2Tensors(cfg);
    case 'gpt-oss': return gptOssTensors(cfg);
    default: throw new Error(`GGUF export supports model_type olmoe, deepseek_v2, deepseek_v3 and gpt_oss, not ${cfg.model_type}`);
  }
}

const f32 = (name, ne, ...sources) => ({ name, ne, kind: 'f32', sources });
const matrix = (name, ne, ...sources) => ({ name, ne, kind: 'matrix', sources });

function olmoeTensors(cfg) {
  const H = cfg.hidden_size;
  const I = cfg.intermediate_size;
  const E = cfg.num_experts;
  const hd = cfg.head_dim ?? H / cfg.num_attention_heads;
  const kv = cfg.num_key_value_heads * hd;
  const V = cfg.vocab_size;
  const list = [matrix('token_embd.weight', [H, V], 'model.embed_tokens.weight')];
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    const b = `blk.${l}.`;
    const experts = (proj) => Array.from({ length: E }, (_, e) => `${p}mlp.experts.${e}.${proj}.weight`);
    list.push(
      f32(`${b}attn_norm.weight`, [H], `${p}input_layernorm.weight`),
      matrix(`${b}attn_q.weight`, [H, H], `${p}self_attn.q_proj.weight`),
      matrix(`${b}attn_k.weight`, [H, kv], `${p}self_attn.k_proj.weight`),
      matrix(`${b}attn_v.weight`, [H, kv], `${p}self_attn.v_proj.weight`),
      matrix(`${b}attn_output.weight`, [H, H], `${p}self_attn.o_proj.weight`),
      f32(`${b}attn_q_norm.weight`, [H], `${p}self_attn.q_norm.weight`),
      f32(`${b}attn_k_norm.weight`, [kv], `${p}self_attn.k_norm.weight`),
      f32(`${b}ffn_norm.weight`, [H], `${p}post_attention_layernorm.weight`),
      f32(`${b}ffn_gate_inp.weight`, [H, E], `${p}mlp.gate.weight`),
      matrix(`${b}ffn_gate_exps.weight`, [H, I, E], ...experts('gate_proj')),
      matrix(`${b}ffn_down_exps.weight`, [I, H, E], ...experts('down_proj')),
      matrix(`${b}ffn_up_exps.weight`, [H, I, E], ...experts('up_proj')),
    );
  }
  list.push(f32('output_norm.weight', [H], 'model.norm.weight'));
  // Tied embeddings: llama.cpp falls back to token_embd when `output` is absent.
  if (!cfg.tie_word_embeddings) list.push(matrix('output.weight', [H, V], 'lm_head.weight'));
  return list;
}

/**
 * MLA's kv_b_proj [heads * (nope + v), rank] as llama.cpp's absorbed form: attn_k_b {nope, rank, heads} (each head's
 * key block transposed) and attn_v_b {rank, v, heads} (each head's value rows), as convert_hf_to_gguf.py splits it.
 */
export function splitKvB(values, heads, nope, v, rank) {
  const k = new values.constructor(heads * rank * nope);
  const vb = new values.constructor(heads * v * rank);
  for (let h = 0; h < heads; h++) {
    const base = h * (nope + v);
    for (let d = 0; d < nope; d++) {
      const row = (base + d) * rank;
      for (let r = 0; r < rank; r++) k[(h * rank + r) * nope + d] = values[row + r];
    }
    vb.set(values.subarray((base + nope) * rank, (base + nope + v) * rank), h * v * rank);
  }
  return { k, v: vb };
}

function deepseek2Tensors(cfg) {
  const H = cfg.hidden_size;
  const nh = cfg.num_attention_heads;
  const nope = cfg.qk_nope_head_dim;
  const rope = cfg.qk_rope_head_dim;
  const vd = cfg.v_head_dim;
  const R = cfg.kv_lora_rank;
  const E = cfg.n_routed_experts;
  const I = cfg.moe_intermediate_size;
  const S = I * cfg.n_shared_experts;
  const D = cfg.intermediate_size;
  const V = cfg.vocab_size;
  if ((cfg.moe_layer_freq ?? 1) !== 1) throw new Error(`llama.cpp's deepseek2 has MoE in every layer after the leading dense ones (moe_layer_freq ${cfg.moe_layer_freq})`);
  const list = [matrix('token_embd.weight', [H, V], 'model.embed_tokens.weight')];
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    const a = `${p}self_attn.`;
    const b = `blk.${l}.`;
    list.push(f32(`${b}attn_norm.weight`, [H], `${p}input_layernorm.weight`));
    if (cfg.q_lora_rank) {
      list.push(
        matrix(`${b}attn_q_a.weight`, [H, cfg.q_lora_rank], `${a}q_a_proj.weight`),
        f32(`${b}attn_q_a_norm.weight`, [cfg.q_lora_rank], `${a}q_a_layernorm.weight`),
        matrix(`${b}attn_q_b.weight`, [cfg.q_lora_rank, nh * (nope + rope)], `${a}q_b_proj.weight`),
      );
    } else {
      list.push(matrix(`${b}attn_q.weight`, [H, nh * (nope + rope)], `${a}q_proj.weight`));
    }
    const kvB = `${a}kv_b_proj.weight`;
    list.push(
      matrix(`${b}attn_kv_a_mqa.weight`, [H, R + rope], `${a}kv_a_proj_with_mqa.weight`),
      f32(`${b}attn_kv_a_norm.weight`, [R], `${a}kv_a_layernorm.weight`),
      matrix(`${b}attn_k_b.weight`, [nope, R, nh], { tensor: kvB, transform: (x) => splitKvB(x, nh, nope, vd, R).k }),
      matrix(`${b}attn_v_b.weight`, [R, vd, nh], { tensor: kvB, transform: (x) => splitKvB(x, nh, nope, vd, R).v }),
      matrix(`${b}attn_output.weight`, [nh * vd, H], `${a}o_proj.weight`),
      f32(`${b}ffn_norm.weight`, [H], `${p}post_attention_layernorm.weight`),
    );
    if (l < cfg.first_k_dense_replace) {
      list.push(
        matrix(`${b}ffn_gate.weight`, [H, D], `${p}mlp.gate_proj.weight`),
        matrix(`${b}ffn_down.weight`, [D, H], `${p}mlp.down_proj.weight`),
        matrix(`${b}ffn_up.weight`, [H, D], `${p}mlp.up_proj.weight`),
      );
      continue;
    }
    const experts = (proj) => Array.from({ length: E }, (_, e) => `${p}mlp.experts.${e}.${proj}.weight`);
    list.push(f32(`${b}ffn_gate_inp.weight`, [H, E], `${p}mlp.gate.weight`));
    if (cfg.model_type === 'deepseek_v3') list.push(f32(`${b}exp_probs_b.bias`, [E], `${p}mlp.gate.e_score_correction_bias`));
    list.push(
      matrix(`${b}ffn_gate_exps.weight`, [H, I, E], ...experts('gate_proj')),
      matrix(`${b}ffn_down_exps.weight`, [I, H, E], ...experts('down_proj')),
      matrix(`${b}ffn_up_exps.weight`, [H, I, E], ...experts('up_proj')),
      matrix(`${b}ffn_gate_shexp.weight`, [H, S], `${p}mlp.shared_experts.gate_proj.weight`),
      matrix(`${b}ffn_down_shexp.weight`, [S, H], `${p}mlp.shared_experts.down_proj.weight`),
      matrix(`${b}ffn_up_shexp.weight`, [H, S], `${p}mlp.shared_experts.up_proj.weight`),
    );
  }
  list.push(f32('output_norm.weight', [H], 'model.norm.weight'));
  if (!cfg.tie_word_embeddings) list.push(matrix('output.weight', [H, V], 'lm_head.weight'));
  return list;
}

/** Every other element of the last dimension (gpt-oss interleaves gate and up: gate even, up odd). */
const everyOther = (parity) => (x) => x.filter((_, i) => (i & 1) === parity);

function gptOssTensors(cfg) {
  const H = cfg.hidden_size;
  const I = cfg.intermediate_size;
  const E = cfg.num_local_experts;
  const hd = cfg.head_dim;
  const q = cfg.num_attention_heads * hd;
  const kv = cfg.num_key_value_heads * hd;
  const V = cfg.vocab_size;
  const types = cfg.layer_types ?? [];
  types.forEach((t, l) => {
    // llama.cpp's gpt-oss: sliding window on even layers (its default sliding_window_pattern of 2).
    if (t !== (l % 2 === 0 ? 'sliding_attention' : 'full_attention')) throw new Error(`llama.cpp's gpt-oss alternates sliding (even) and full (odd) layers; layer ${l} is ${t}`);
  });
  const list = [matrix('token_embd.weight', [H, V], 'model.embed_tokens.weight')];
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    const a = `${p}self_attn.`;
    const x = `${p}mlp.experts.`;
    const b = `blk.${l}.`;
    list.push(
      f32(`${b}attn_norm.weight`, [H], `${p}input_layernorm.weight`),
      matrix(`${b}attn_q.weight`, [H, q], `${a}q_proj.weight`),
      f32(`${b}attn_q.bias`, [q], `${a}q_proj.bias`),
      matrix(`${b}attn_k.weight`, [H, kv], `${a}k_proj.weight`),
      f32(`${b}attn_k.bias`, [kv], `${a}k_proj.bias`),
      matrix(`${b}attn_v.weight`, [H, kv], `${a}v_proj.weight`),
      f32(`${b}attn_v.bias`, [kv], `${a}v_proj.bias`),
      matrix(`${b}attn_output.weight`, [q, H], `${a}o_proj.weight`),
      f32(`${b}attn_output.bias`, [H], `${a}o_proj.bias`),
      f32(`${b}attn_sinks.weight`, [cfg.num_attention_heads], `${a}sinks`),
      f32(`${b}post_attention_norm.weight`, [H], `${p}post_attention_layernorm.weight`),
      f32(`${b}ffn_gate_inp.weight`, [H, E], `${p}mlp.router.weight`),
      f32(`${b}ffn_gate_inp.bias`, [E], `${p}mlp.router.bias`),
      { name: `${b}ffn_gate_exps.weight`, ne: [H, I, E], kind: 'mxfp4', sources: [{ blocks: `${x}gate_up_proj_blocks`, scales: `${x}gate_up_proj_scales`, parity: 0 }] },
      f32(`${b}ffn_gate_exps.bias`, [I, E], { tensor: `${x}gate_up_proj_bias`, transform: everyOther(0) }),
      { name: `${b}ffn_up_exps.weight`, ne: [H, I, E], kind: 'mxfp4', sources: [{ blocks: `${x}gate_up_proj_blocks`, scales: `${x}gate_up_proj_scales`, parity: 1 }] },
      f32(`${b}ffn_up_exps.bias`, [I, E], { tensor: `${x}gate_up_proj_bias`, transform: everyOther(1) }),
      { name: `${b}ffn_down_exps.weight`, ne: [I, H, E], kind: 'mxfp4', sources: [{ blocks: `${x}down_proj_blocks`, scales: `${x}down_proj_scales`, parity: null }] },
      f32(`${b}ffn_down_exps.bias`, [H, E], `${x}down_proj_bias`),
    );
  }
  list.push(f32('output_norm.weight', [H], 'model.norm.weight'));
  if (!cfg.tie_word_embeddings) list.push(matrix('output.weight', [H, V], 'lm_head.weight'));
  return list;
}

// ---- metadata ------------------------------------------------------------------------------------------------

/** A synthetic byte-level vocabulary of vocab_size (GPT-2's byte <-> printable character map, then placeholders). */
function vocabulary(cfg) {
  const V = cfg.vocab_size;
  const eos = Number.isInteger(cfg.eos_token_id) && cfg.eos_token_id < V ? cfg.eos_token_id : V - 1;
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
    } else {
      tokens.push(i < 256 ? byteChar[i] : `<|rs_${i}|>`);
      types.push(1); // NORMAL
    }
  }
  return [
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

/** YaRN keys as convert_hf_to_gguf.py writes them (none without rope_scaling). */
function yarnKeys(arch, rs) {
  if (!rs) return [];
  const type = rs.rope_type ?? rs.type;
  if (type !== 'yarn') throw new Error(`GGUF export writes YaRN rope scaling only, not ${type}`);
  return [
    [`${arch}.rope.scaling.type`, KV.STRING, 'yarn'],
    [`${arch}.rope.scaling.factor`, KV.F32, rs.factor],
    [`${arch}.rope.scaling.original_context_length`, KV.U32, rs.original_max_position_embeddings],
    [`${arch}.rope.scaling.yarn_beta_fast`, KV.F32, rs.beta_fast ?? 32],
    [`${arch}.rope.scaling.yarn_beta_slow`, KV.F32, rs.beta_slow ?? 1],
  ];
}

/** Metadata in llama.cpp's key names (src/llama-arch.cpp) for a config.json. */
export function ggufMetadata(cfg, type, name) {
  const arch = ggufArchitecture(cfg);
  if (!arch) throw new Error(`GGUF export does not know model_type ${cfg.model_type}`);
  const u32 = (key, v) => [`${arch}.${key}`, KV.U32, v];
  const f = (key, v) => [`${arch}.${key}`, KV.F32, v];
  const meta = [
    ['general.architecture', KV.STRING, arch],
    ['general.name', KV.STRING, name],
    ['general.file_type', KV.U32, FILE_TYPE[type]],
    ['general.alignment', KV.U32, ALIGNMENT],
    u32('context_length', cfg.max_position_embeddings),
    u32('embedding_length', cfg.hidden_size),
    u32('block_count', cfg.num_hidden_layers),
    u32('feed_forward_length', cfg.intermediate_size),
    u32('attention.head_count', cfg.num_attention_heads),
    f('rope.freq_base', cfg.rope_theta ?? 10000),
    f('attention.layer_norm_rms_epsilon', cfg.rms_norm_eps),
    u32('expert_used_count', cfg.num_experts_per_tok),
  ];
  if (arch === 'olmoe') {
    const hd = cfg.head_dim ?? cfg.hidden_size / cfg.num_attention_heads;
    meta.push(
      u32('attention.head_count_kv', cfg.num_key_value_heads),
      u32('attention.key_length', hd),
      u32('attention.value_length', hd),
      u32('expert_count', cfg.num_experts),
    );
  } else if (arch === 'deepseek2') {
    const R = cfg.kv_lora_rank;
    meta.push(
      u32('vocab_size', cfg.vocab_size),
      // MLA runs as MQA over the compressed cache: one KV head of kv_lora_rank + rope dims, values kv_lora_rank wide;
      // the *_mla lengths are the decompressed per-head sizes (and mark the file as split attn_k_b / attn_v_b).
      u32('attention.head_count_kv', 1),
      u32('attention.key_length', R + cfg.qk_rope_head_dim),
      u32('attention.value_length', R),
      u32('attention.key_length_mla', cfg.qk_nope_head_dim + cfg.qk_rope_head_dim),
      u32('attention.value_length_mla', cfg.v_head_dim),
      u32('attention.kv_lora_rank', R),
      // The loader requires q_lora_rank unless the layer count is one of the Lite models' (26, 27): 0 = plain attn_q.
      u32('attention.q_lora_rank', cfg.q_lora_rank ?? 0),
      u32('leading_dense_block_count', cfg.first_k_dense_replace ?? 0),
      u32('expert_count', cfg.n_routed_experts),
      u32('expert_feed_forward_length', cfg.moe_intermediate_size),
      u32('expert_shared_count', cfg.n_shared_experts ?? 0),
      f('expert_weights_scale', cfg.routed_scaling_factor ?? 1),
      [`${arch}.expert_weights_norm`, KV.BOOL, Boolean(cfg.norm_topk_prob)],
      u32('expert_gating_func', cfg.scoring_func === 'sigmoid' ? GATING.sigmoid : GATING.softmax),
      u32('rope.dimension_count', cfg.qk_rope_head_dim),
      ...yarnKeys(arch, cfg.rope_scaling),
    );
    // llama.cpp divides this by 0.1 again when loading ([TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]).
    if (cfg.rope_scaling?.mscale_all_dim !== undefined) meta.push(f('rope.scaling.yarn_log_multiplier', 0.1 * cfg.rope_scaling.mscale_all_dim));
  } else if (arch === 'gpt-oss') {
    meta.push(
      u32('attention.head_count_kv', cfg.num_key_value_heads),
      u32('attention.key_length', cfg.head_dim),
      u32('attention.value_length', cfg.head_dim),
      u32('rope.dimension_count', cfg.head_dim),
      u32('expert_count', cfg.num_local_experts),
      u32('expert_feed_forward_length', cfg.intermediate_size),
      u32('attention.sliding_window', cfg.sliding_window),
      ...yarnKeys(arch, cfg.rope_scaling),
    );
  }
  return [...meta, ...vocabulary(cfg)];
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
  if (kind === 'mxfp4') return GGML.MXFP4;
  return type === 'q8_0' ? GGML.Q8_0 : GGML.BF16;
}

/** Bytes of a tensor of ne elements in a ggml type. */
export function tensorBytes(ne, ggml) {
  const n = ne.reduce((a, b) => a * b, 1);
  if (ggml === GGML.F32) return n * 4;
  if (ggml === GGML.BF16) return n * 2;
  const [qk, block] = ggml === GGML.Q8_0 ? [QK8_0, 34] : [QK_MXFP4, 17];
  if (ne[0] % qk) throw new Error(`ggml type ${ggml} needs rows that are a multiple of ${qk} (got ${ne[0]})`);
  return (n / qk) * block;
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

/** Source bytes (BF16 or F32 values, whole rows) as bytes of the ggml type. */
function encode(raw, dtype, ggml) {
  if ((dtype === 'BF16' && ggml === GGML.BF16) || (dtype === 'F32' && ggml === GGML.F32)) return raw;
  const copy = raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length); // aligned
  let vals;
  if (dtype === 'BF16') {
    const bits = new Uint16Array(copy);
    vals = new Float32Array(bits.length);
    const o = new Uint32Array(vals.buffer);
    for (let i = 0; i < bits.length; i++) o[i] = bits[i] << 16;
  } else {
    vals = new Float32Array(copy);
  }
  if (ggml === GGML.F32) return Buffer.from(vals.buffer);
  if (ggml === GGML.BF16) return Buffer.from(Uint16Array.from(vals, toBf16).buffer);
  if (ggml === GGML.Q8_0) {
    const out = Buffer.alloc((vals.length / QK8_0) * 34);
    quantizeQ8_0(vals, out);
    return out;
  }
  throw new Error(`no conversion from ${dtype} to ggml type ${ggml}`);
}

function readBytes(src, start, length) {
  const buf = Buffer.alloc(length);
  const fd = fs.openSync(src.file, 'r');
  try {
    if (fs.readSync(fd, buf, 0, length, src.offset + start) !== length) throw new Error(`short read in ${src.file}`);
  } finally {
    fs.closeSync(fd);
  }
  return buf;
}

const CHUNK_ELEMENTS = 1 << 20; // per read (2-4 MiB)

/** One source of a 'f32' / 'matrix' tensor as chunks of {raw, dtype} (whole rows). */
function* valueChunks(index, piece) {
  const name = typeof piece === 'string' ? piece : piece.tensor;
  const src = index.get(name);
  if (!src) throw new Error(`the checkpoint lacks tensor ${name}`);
  if (src.dtype !== 'BF16' && src.dtype !== 'F32') throw new Error(`GGUF export reads BF16/F32 tensors here, not ${src.dtype} (${name})`);
  const elem = src.dtype === 'BF16' ? 2 : 4;
  if (typeof piece !== 'string') {
    const raw = readBytes(src, 0, src.bytes);
    const copy = raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length);
    const out = piece.transform(src.dtype === 'BF16' ? new Uint16Array(copy) : new Float32Array(copy));
    yield { raw: Buffer.from(out.buffer, out.byteOffset, out.byteLength), dtype: src.dtype };
    return;
  }
  const total = src.bytes / elem;
  const rowLen = src.shape[src.shape.length - 1] ?? 1;
  const chunk = Math.max(rowLen, Math.floor(CHUNK_ELEMENTS / rowLen) * rowLen);
  for (let done = 0; done < total; done += chunk) {
    const n = Math.min(chunk, total - done);
    yield { raw: readBytes(src, done * elem, n * elem), dtype: src.dtype };
  }
}

/** Element k (0..31) of an MXFP4 block as the released checkpoints pack it: element 2j low nibble, 2j+1 high. */
const hfNibble = (bytes, at, k) => (bytes[at + (k >> 1)] >> ((k & 1) << 2)) & 15;

/**
 * One HF MXFP4 block (16 bytes at `at`) with its E8M0 scale as ggml's block_mxfp4 (17 bytes at `o` of out): the
 * scale byte, then qs[j] = element j | element j + 16 << 4 (ggml's nibble order).
 */
export function repackMxfp4Block(blocks, at, scale, out, o) {
  out[o] = scale;
  for (let j = 0; j < 16; j++) out[o + 1 + j] = hfNibble(blocks, at, j) | (hfNibble(blocks, at, j + 16) << 4);
}

// FP4 (E2M1) code -> value: sign bit 3, magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6.
const FP4 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];
const fp4Bf16 = new Map();
/** The 16 FP4 values times the E8M0 scale 2^(scale - 127) as bf16 bits (exact: 2 significant bits at most). */
function fp4Table(scale) {
  let t = fp4Bf16.get(scale);
  if (!t) {
    t = Uint16Array.from(FP4, (v) => toBf16(v * 2 ** (scale - 127)));
    fp4Bf16.set(scale, t);
  }
  return t;
}

/**
 * An MXFP4 expert tensor (HF *_blocks [E, rows, nb, 16] + *_scales [E, rows, nb]) expert by expert: as ggml
 * block_mxfp4, or with dequantize as the exact BF16 values (for a llama.cpp run without its MXFP4 kernel).
 */
function* mxfp4Chunks(index, piece, ne, dequantize = false) {
  const blocks = index.get(piece.blocks);
  const scales = index.get(piece.scales);
  if (!blocks || !scales) throw new Error(`the checkpoint lacks ${blocks ? piece.scales : piece.blocks}`);
  if (blocks.dtype !== 'U8' || scales.dtype !== 'U8') throw new Error(`${piece.blocks} / ${piece.scales} must be U8 (MXFP4 blocks and E8M0 scales)`);
  const [E, rows, nb, width] = blocks.shape;
  const outRows = piece.parity === null ? rows : rows / 2;
  if (width !== 16 || nb * QK_MXFP4 !== ne[0] || outRows !== ne[1] || E !== ne[2] || scales.shape.join() !== [E, rows, nb].join()) {
    throw new Error(`${piece.blocks} ${JSON.stringify(blocks.shape)} does not make a {${ne.join(', ')}} MXFP4 tensor`);
  }
  for (let e = 0; e < E; e++) {
    const bl = readBytes(blocks, e * rows * nb * 16, rows * nb * 16);
    const sc = readBytes(scales, e * rows * nb, rows * nb);
    const out = dequantize ? new Uint16Array(outRows * nb * QK_MXFP4) : Buffer.alloc(outRows * nb * 17);
    for (let r = 0; r < outRows; r++) {
      const from = piece.parity === null ? r : 2 * r + piece.parity;
      for (let b = 0; b < nb; b++) {
        const at = (from * nb + b) * 16;
        const scale = sc[from * nb + b];
        if (!dequantize) {
          repackMxfp4Block(bl, at, scale, out, (r * nb + b) * 17);
          continue;
        }
        const table = fp4Table(scale);
        const o = (r * nb + b) * QK_MXFP4;
        for (let k = 0; k < QK_MXFP4; k++) out[o + k] = table[hfNibble(bl, at, k)];
      }
    }
    yield dequantize ? Buffer.from(out.buffer) : out;
  }
}

/**
 * Writes modelDir (config.json + safetensors) as a GGUF of `type` ('bf16' or 'q8_0') to outFile (via a temporary
 * name, renamed when complete). options.dequantizeMxfp4 writes MXFP4 experts as their exact BF16 values instead
 * (llama.cpp's MXFP4 kernel rounds the activations to Q8_0; its BF16 one to bf16). Returns {file, bytes, seconds}.
 */
export function writeGguf(modelDir, outFile, type, log = () => {}, options = {}) {
  if (!(type in FILE_TYPE)) throw new Error(`GGUF type must be bf16 or q8_0, got ${type}`);
  const t0 = performance.now();
  const cfg = JSON.parse(fs.readFileSync(path.join(modelDir, 'config.json'), 'utf8'));
  const index = readSafetensorsIndex(modelDir);
  const plan = ggufTensors(cfg).map((t) => {
    for (const s of t.sources) {
      for (const name of typeof s === 'string' ? [s] : [s.tensor ?? s.blocks, s.scales].filter(Boolean)) {
        if (!index.has(name)) throw new Error(`${modelDir} lacks tensor ${name}`);
      }
    }
    const ggml = t.kind === 'mxfp4' && options.dequantizeMxfp4 ? GGML.BF16 : ggmlType(t.kind, type);
    return { ...t, ggml, bytes: tensorBytes(t.ne, ggml) };
  });
  const head = new ByteSink();
  head.push(Buffer.from('GGUF', 'ascii'));
  head.u32(3);
  const meta = ggufMetadata(cfg, type, `routescope bench ${path.basename(modelDir)} ${type}`);
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
      for (const s of t.sources) {
        const chunks = t.kind === 'mxfp4' ? mxfp4Chunks(index, s, t.ne, Boolean(options.dequantizeMxfp4)) : valueChunks(index, s);
        for (const c of chunks) {
          const out = t.kind === 'mxfp4' ? c : encode(c.raw, c.dtype, t.ggml);
          fs.writeSync(fd, out, 0, out.length, pos);
          pos += out.length;
        }
      }
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
 * A GGUF file's header: {version, metadata (key -> value; arrays as JS arrays), tensors [{name, ne, type, offset}],
 * dataStart}. Reads at most the first 256 MiB (the vocabulary is the large part).
 */
export function readGgufHeader(file) {
  const size = fs.statSync(file).size;
  const buf = Buffer.alloc(Math.min(size, 256 << 20));
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, buf, 0, buf.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  let at = 0;
  const need = (n) => {
    if (at + n > buf.length) throw new Error(`${file}: GGUF header runs past ${buf.length} bytes`);
    const p = at;
    at += n;
    return p;
  };
  const u32 = () => buf.readUInt32LE(need(4));
  const u64 = () => Number(buf.readBigUInt64LE(need(8)));
  const str = () => {
    const n = u64();
    return buf.toString('utf8', need(n), at);
  };
  const value = (t) => {
    switch (t) {
      case KV.U8: return buf.readUInt8(need(1));
      case KV.I8: return buf.readInt8(need(1));
      case KV.U16: return buf.readUInt16LE(need(2));
      case KV.I16: return buf.readInt16LE(need(2));
      case KV.U32: return u32();
      case KV.I32: return buf.readInt32LE(need(4));
      case KV.F32: return buf.readFloatLE(need(4));
      case KV.BOOL: return buf.readUInt8(need(1)) !== 0;
      case KV.STRING: return str();
      case KV.U64: return u64();
      case KV.I64: return Number(buf.readBigInt64LE(need(8)));
      case KV.F64: return buf.readDoubleLE(need(8));
      case KV.ARRAY: {
        const et = u32();
        const n = u64();
        return Array.from({ length: n }, () => value(et));
      }
      default: throw new Error(`${file}: unknown GGUF value type ${t}`);
    }
  };
  if (buf.toString('ascii', 0, 4) !== 'GGUF') throw new Error(`${file} is not a GGUF file`);
  need(4);
  const version = u32();
  const nTensors = u64();
  const nKv = u64();
  const metadata = {};
  for (let i = 0; i < nKv; i++) {
    const key = str();
    metadata[key] = value(u32());
  }
  const tensors = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const nd = u32();
    const ne = Array.from({ length: nd }, () => u64());
    tensors.push({ name, ne, type: u32(), offset: u64() });
  }
  const alignment = metadata['general.alignment'] ?? ALIGNMENT;
  return { version, metadata, tensors, dataStart: Math.ceil(at / alignment) * alignment };
}

/**
 * The GGUF of modelDir in `type`, written once next to the bench's outputs and reused while its stamp (writer
 * version + the checkpoint's own stamp) matches. options as writeGguf's (part of the file name and the stamp).
 */
export function ensureGguf(modelDir, outDir, type, log = () => {}, options = {}) {
  const variant = options.dequantizeMxfp4 ? '-experts-bf16' : '';
  const file = path.join(outDir, `${path.basename(modelDir)}-${type}${variant}.gguf`);
  const stampFile = `${file}.stamp.json`;
  let source = '';
  try {
    source = fs.readFileSync(path.join(modelDir, 'bench-stamp.json'), 'utf8');
  } catch {
    source = fs.readFileSync(path.join(modelDir, 'config.json'), 'utf8');
  }
  const stamp = JSON.stringify({ writer: GGUF_WRITER_VERSION, type, ...(variant ? { experts: 'bf16' } : {}), source }) + '\n';
  try {
    if (fs.readFileSync(stampFile, 'utf8') === stamp && fs.existsSync(file)) return { file, reused: true, seconds: 0, bytes: fs.statSync(file).size };
  } catch {
    // write it
  }
  fs.rmSync(stampFile, { force: true });
  const arch = ggufArchitecture(JSON.parse(fs.readFileSync(path.join(modelDir, 'config.json'), 'utf8')));
  log(`writing ${path.relative(process.cwd(), file)} (llama.cpp ${arch} layout, ${type}${variant ? ', MXFP4 experts as BF16' : ''}) ...`);
  const r = writeGguf(modelDir, file, type, log, options);
  fs.writeFileSync(stampFile, stamp);
  return { ...r, reused: false };
}
