// Writes a Hugging Face checkpoint with random BF16 weights, streamed to disk (no full copy in memory), shaped as
// OLMoE-1B-7B, DeepSeek-V2-Lite, Moonlight-16B-A3B, gpt-oss-20b or Llama-4-Scout-17B-16E (their config.json with num_hidden_layers shrunk;
// head dims, expert counts and routing fields exact; gpt-oss's experts in MXFP4 as released). Small float32 tensors (DeepSeek-V3's e_score_correction_bias) as the
// real checkpoints store them.
//
// Random values: every tensor draws from its own seeded mulberry32 stream (seed = hash(bench seed, tensor name)),
// each 32-bit draw gives two 16-bit indices into a table of the bf16-rounded normal quantiles
// std * PHI^-1((i + 0.5) / 65536): exact-enough N(0, std^2) samples at memcpy-like speed.
import fs from 'node:fs';
import path from 'node:path';

export const GENERATOR_VERSION = 2;

/** The OLMoE-1B-7B shape with `layers` layers. */
export function olmoeConfig(layers) {
  return {
    architectures: ['OlmoeForCausalLM'],
    model_type: 'olmoe',
    hidden_size: 2048,
    intermediate_size: 1024,
    num_attention_heads: 16,
    num_key_value_heads: 16,
    num_hidden_layers: layers,
    num_experts: 64,
    num_experts_per_tok: 8,
    vocab_size: 50304,
    hidden_act: 'silu',
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    rope_scaling: null,
    max_position_embeddings: 4096,
    norm_topk_prob: false,
    clip_qkv: null,
    attention_bias: false,
    attention_dropout: 0.0,
    tie_word_embeddings: false,
    output_router_logits: false,
    router_aux_loss_coef: 0.01,
    initializer_range: 0.02,
    pad_token_id: 1,
    bos_token_id: null,
    eos_token_id: 50279,
    use_cache: true,
    torch_dtype: 'bfloat16',
  };
}

/** DeepSeek-V2-Lite's config.json (deepseek-ai/DeepSeek-V2-Lite) with `layers` layers (the first one dense). */
export function deepseekV2LiteConfig(layers) {
  return {
    architectures: ['DeepseekV2ForCausalLM'],
    attention_bias: false,
    attention_dropout: 0.0,
    aux_loss_alpha: 0.001,
    bos_token_id: 100000,
    eos_token_id: 100001,
    first_k_dense_replace: 1,
    hidden_act: 'silu',
    hidden_size: 2048,
    initializer_range: 0.02,
    intermediate_size: 10944,
    kv_lora_rank: 512,
    max_position_embeddings: 163840,
    model_type: 'deepseek_v2',
    moe_intermediate_size: 1408,
    moe_layer_freq: 1,
    n_group: 1,
    n_routed_experts: 64,
    n_shared_experts: 2,
    norm_topk_prob: false,
    num_attention_heads: 16,
    num_experts_per_tok: 6,
    num_hidden_layers: layers,
    num_key_value_heads: 16,
    pretraining_tp: 1,
    q_lora_rank: null,
    qk_nope_head_dim: 128,
    qk_rope_head_dim: 64,
    rms_norm_eps: 1e-6,
    rope_scaling: { beta_fast: 32, beta_slow: 1, factor: 40, mscale: 0.707, mscale_all_dim: 0.707, original_max_position_embeddings: 4096, type: 'yarn' },
    rope_theta: 10000,
    routed_scaling_factor: 1.0,
    scoring_func: 'softmax',
    seq_aux: true,
    tie_word_embeddings: false,
    topk_group: 1,
    topk_method: 'greedy',
    torch_dtype: 'bfloat16',
    transformers_version: '4.33.1',
    use_cache: true,
    v_head_dim: 128,
    vocab_size: 102400,
  };
}

/** Moonlight-16B-A3B's config.json (moonshotai/Moonlight-16B-A3B, the DeepSeek-V3 architecture, as Kimi-K2) with
 * `layers` layers. */
export function moonlightConfig(layers) {
  return {
    architectures: ['DeepseekV3ForCausalLM'],
    attention_bias: false,
    attention_dropout: 0.0,
    aux_loss_alpha: 0.001,
    bos_token_id: 163584,
    eos_token_id: 163586,
    ep_size: 1,
    first_k_dense_replace: 1,
    hidden_act: 'silu',
    hidden_size: 2048,
    initializer_range: 0.02,
    intermediate_size: 11264,
    kv_lora_rank: 512,
    max_position_embeddings: 8192,
    model_type: 'deepseek_v3',
    moe_intermediate_size: 1408,
    moe_layer_freq: 1,
    n_group: 1,
    n_routed_experts: 64,
    n_shared_experts: 2,
    norm_topk_prob: true,
    num_attention_heads: 16,
    num_experts_per_tok: 6,
    num_hidden_layers: layers,
    num_key_value_heads: 16,
    num_nextn_predict_layers: 0,
    pretraining_tp: 1,
    q_lora_rank: null,
    qk_nope_head_dim: 128,
    qk_rope_head_dim: 64,
    rms_norm_eps: 1e-5,
    rope_theta: 50000.0,
    routed_scaling_factor: 2.446,
    scoring_func: 'sigmoid',
    seq_aux: true,
    tie_word_embeddings: false,
    topk_group: 1,
    topk_method: 'noaux_tc',
    torch_dtype: 'bfloat16',
    transformers_version: '4.46.3',
    use_cache: true,
    v_head_dim: 128,
    vocab_size: 163840,
  };
}

/** gpt-oss-20b's config.json (openai/gpt-oss-20b: MXFP4 experts, everything else BF16) with `layers` layers
 * (layer_types alternate sliding and full attention, as there). */
export function gptOss20bConfig(layers) {
  return {
    architectures: ['GptOssForCausalLM'],
    attention_bias: true,
    attention_dropout: 0.0,
    eos_token_id: 200002,
    experts_per_token: 4,
    head_dim: 64,
    hidden_act: 'silu',
    hidden_size: 2880,
    initial_context_length: 4096,
    initializer_range: 0.02,
    intermediate_size: 2880,
    layer_types: Array.from({ length: layers }, (_, l) => (l % 2 === 0 ? 'sliding_attention' : 'full_attention')),
    max_position_embeddings: 131072,
    model_type: 'gpt_oss',
    num_attention_heads: 64,
    num_experts_per_tok: 4,
    num_hidden_layers: layers,
    num_key_value_heads: 8,
    num_local_experts: 32,
    output_router_logits: false,
    pad_token_id: 199999,
    quantization_config: {
      modules_to_not_convert: ['model.layers.*.self_attn', 'model.layers.*.mlp.router', 'model.embed_tokens', 'lm_head'],
      quant_method: 'mxfp4',
    },
    rms_norm_eps: 1e-5,
    rope_scaling: { beta_fast: 32.0, beta_slow: 1.0, factor: 32.0, original_max_position_embeddings: 4096, rope_type: 'yarn', truncate: false },
    rope_theta: 150000,
    router_aux_loss_coef: 0.9,
    sliding_window: 128,
    swiglu_limit: 7.0,
    tie_word_embeddings: false,
    transformers_version: '4.55.0.dev0',
    use_cache: true,
    vocab_size: 201088,
  };
}

/** Llama-4-Scout-17B-16E's config.json (meta-llama/Llama-4-Scout-17B-16E: the vision-language checkpoint, the text
 * model's config under text_config, its weights under language_model.*) with `layers` layers: no_rope_layers keeps
 * the release's pattern (three RoPE layers, then a NoPE one) from its start. The vision tower is not written (the
 * engine reads the text model only). */
export function llama4ScoutConfig(layers) {
  return {
    architectures: ['Llama4ForConditionalGeneration'],
    boi_token_index: 200080,
    eoi_token_index: 200081,
    image_token_index: 200092,
    model_type: 'llama4',
    text_config: {
      attention_bias: false,
      attention_chunk_size: 8192,
      attention_dropout: 0.0,
      attn_scale: 0.1,
      attn_temperature_tuning: 4,
      bos_token_id: 200000,
      eos_token_id: [200001, 200007, 200008],
      floor_scale: 8192,
      for_llm_compressor: false,
      head_dim: 128,
      hidden_act: 'silu',
      hidden_size: 5120,
      initializer_range: 0.02,
      interleave_moe_layer_step: 1,
      intermediate_size: 8192,
      intermediate_size_mlp: 16384,
      max_position_embeddings: 262144,
      model_type: 'llama4_text',
      moe_layers: Array.from({ length: layers }, (_, l) => l),
      no_rope_layers: Array.from({ length: layers }, (_, l) => ((l + 1) % 4 === 0 ? 0 : 1)),
      num_attention_heads: 40,
      num_experts_per_tok: 1,
      num_hidden_layers: layers,
      num_key_value_heads: 8,
      num_local_experts: 16,
      output_router_logits: false,
      pad_token_id: 200018,
      rms_norm_eps: 1e-5,
      rope_scaling: { factor: 8.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
      rope_theta: 500000.0,
      router_aux_loss_coef: 0.001,
      router_jitter_noise: 0.0,
      torch_dtype: 'bfloat16',
      use_cache: true,
      use_qk_norm: true,
      vocab_size: 202048,
    },
    tie_word_embeddings: false,
    torch_dtype: 'bfloat16',
    transformers_version: '4.51.0',
  };
}

/** The text model's config of a shape (llama4 nests it under text_config). */
export const textConfig = (config) => config.text_config ?? config;

/** --shape names of the checkpoint writer. */
export const SHAPES = {
  olmoe: olmoeConfig,
  'deepseek-v2-lite': deepseekV2LiteConfig,
  moonlight: moonlightConfig,
  'gpt-oss-20b': gptOss20bConfig,
  'llama4-scout': llama4ScoutConfig,
};

/** [name, shape, init, dtype] in file order; init is {std} or {const}; dtype BF16 unless given. */
export function tensorList(cfg) {
  if (cfg.model_type === 'deepseek_v2' || cfg.model_type === 'deepseek_v3') return deepseekTensors(cfg);
  if (cfg.model_type === 'gpt_oss') return gptOssTensors(cfg);
  if (cfg.model_type === 'llama4') return llama4Tensors(cfg);
  const H = cfg.hidden_size;
  const I = cfg.intermediate_size;
  const hd = H / cfg.num_attention_heads;
  const kv = cfg.num_key_value_heads * hd;
  const proj = { std: cfg.initializer_range };
  const ones = { const: 1 };
  const list = [['model.embed_tokens.weight', [cfg.vocab_size, H], { std: 1 }]];
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    list.push([`${p}input_layernorm.weight`, [H], ones]);
    list.push([`${p}self_attn.q_proj.weight`, [H, H], proj]);
    list.push([`${p}self_attn.k_proj.weight`, [kv, H], proj]);
    list.push([`${p}self_attn.v_proj.weight`, [kv, H], proj]);
    list.push([`${p}self_attn.o_proj.weight`, [H, H], proj]);
    list.push([`${p}self_attn.q_norm.weight`, [H], ones]);
    list.push([`${p}self_attn.k_norm.weight`, [kv], ones]);
    list.push([`${p}post_attention_layernorm.weight`, [H], ones]);
    list.push([`${p}mlp.gate.weight`, [cfg.num_experts, H], proj]);
    for (let e = 0; e < cfg.num_experts; e++) {
      list.push([`${p}mlp.experts.${e}.gate_proj.weight`, [I, H], proj]);
      list.push([`${p}mlp.experts.${e}.up_proj.weight`, [I, H], proj]);
      list.push([`${p}mlp.experts.${e}.down_proj.weight`, [H, I], proj]);
    }
  }
  list.push(['model.norm.weight', [H], ones]);
  list.push(['lm_head.weight', [cfg.vocab_size, H], proj]);
  return list;
}

/** DeepSeek-V2 / V3 tensors in the Hub's per-expert layout: MLA, dense leading layers, routed + shared experts. */
function deepseekTensors(cfg) {
  const H = cfg.hidden_size;
  const nh = cfg.num_attention_heads;
  const qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim;
  const proj = { std: cfg.initializer_range };
  const ones = { const: 1 };
  const list = [['model.embed_tokens.weight', [cfg.vocab_size, H], { std: 1 }]];
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    const a = `${p}self_attn.`;
    list.push([`${p}input_layernorm.weight`, [H], ones]);
    if (cfg.q_lora_rank) {
      list.push([`${a}q_a_proj.weight`, [cfg.q_lora_rank, H], proj]);
      list.push([`${a}q_a_layernorm.weight`, [cfg.q_lora_rank], ones]);
      list.push([`${a}q_b_proj.weight`, [nh * qk, cfg.q_lora_rank], proj]);
    } else {
      list.push([`${a}q_proj.weight`, [nh * qk, H], proj]);
    }
    list.push([`${a}kv_a_proj_with_mqa.weight`, [cfg.kv_lora_rank + cfg.qk_rope_head_dim, H], proj]);
    list.push([`${a}kv_a_layernorm.weight`, [cfg.kv_lora_rank], ones]);
    list.push([`${a}kv_b_proj.weight`, [nh * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank], proj]);
    list.push([`${a}o_proj.weight`, [H, nh * cfg.v_head_dim], proj]);
    list.push([`${p}post_attention_layernorm.weight`, [H], ones]);
    const moe = l >= cfg.first_k_dense_replace && l % (cfg.moe_layer_freq ?? 1) === 0;
    if (!moe) {
      const D = cfg.intermediate_size;
      list.push([`${p}mlp.gate_proj.weight`, [D, H], proj], [`${p}mlp.up_proj.weight`, [D, H], proj], [`${p}mlp.down_proj.weight`, [H, D], proj]);
      continue;
    }
    const I = cfg.moe_intermediate_size;
    list.push([`${p}mlp.gate.weight`, [cfg.n_routed_experts, H], proj]);
    if (cfg.model_type === 'deepseek_v3') list.push([`${p}mlp.gate.e_score_correction_bias`, [cfg.n_routed_experts], { std: 0.02 }, 'F32']);
    for (let e = 0; e < cfg.n_routed_experts; e++) {
      list.push([`${p}mlp.experts.${e}.gate_proj.weight`, [I, H], proj]);
      list.push([`${p}mlp.experts.${e}.up_proj.weight`, [I, H], proj]);
      list.push([`${p}mlp.experts.${e}.down_proj.weight`, [H, I], proj]);
    }
    const S = I * cfg.n_shared_experts;
    list.push([`${p}mlp.shared_experts.gate_proj.weight`, [S, H], proj]);
    list.push([`${p}mlp.shared_experts.up_proj.weight`, [S, H], proj]);
    list.push([`${p}mlp.shared_experts.down_proj.weight`, [H, S], proj]);
  }
  list.push(['model.norm.weight', [H], ones]);
  list.push(['lm_head.weight', [cfg.vocab_size, H], proj]);
  return list;
}

/** gpt-oss tensors as the released checkpoints name them: attention with biases and sinks, a router with a bias, and
 * MXFP4 experts (U8 *_blocks of random FP4 codes, *_scales 2^-7 so that weights have a std of about 0.024) with BF16
 * biases. */
function gptOssTensors(cfg) {
  const H = cfg.hidden_size;
  const I = cfg.intermediate_size;
  const E = cfg.num_local_experts;
  const hd = cfg.head_dim;
  const q = cfg.num_attention_heads * hd;
  const kv = cfg.num_key_value_heads * hd;
  const proj = { std: cfg.initializer_range };
  const ones = { const: 1 };
  const list = [['model.embed_tokens.weight', [cfg.vocab_size, H], { std: 1 }]];
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    const a = `${p}self_attn.`;
    list.push([`${p}input_layernorm.weight`, [H], ones]);
    list.push([`${a}q_proj.weight`, [q, H], proj], [`${a}q_proj.bias`, [q], proj]);
    list.push([`${a}k_proj.weight`, [kv, H], proj], [`${a}k_proj.bias`, [kv], proj]);
    list.push([`${a}v_proj.weight`, [kv, H], proj], [`${a}v_proj.bias`, [kv], proj]);
    list.push([`${a}o_proj.weight`, [H, q], proj], [`${a}o_proj.bias`, [H], proj]);
    list.push([`${a}sinks`, [cfg.num_attention_heads], { std: 1 }]);
    list.push([`${p}post_attention_layernorm.weight`, [H], ones]);
    list.push([`${p}mlp.router.weight`, [E, H], proj], [`${p}mlp.router.bias`, [E], proj]);
    const x = `${p}mlp.experts.`;
    list.push([`${x}gate_up_proj_blocks`, [E, 2 * I, H / 32, 16], { bytes: 'random' }, 'U8']);
    list.push([`${x}gate_up_proj_scales`, [E, 2 * I, H / 32], { bytes: 120 }, 'U8']);
    list.push([`${x}gate_up_proj_bias`, [E, 2 * I], proj]);
    list.push([`${x}down_proj_blocks`, [E, H, I / 32, 16], { bytes: 'random' }, 'U8']);
    list.push([`${x}down_proj_scales`, [E, H, I / 32], { bytes: 120 }, 'U8']);
    list.push([`${x}down_proj_bias`, [E, H], proj]);
  }
  list.push(['model.norm.weight', [H], ones]);
  list.push(['lm_head.weight', [cfg.vocab_size, H], proj]);
  return list;
}

/** Llama 4's text tensors as the vision-language release names them (language_model.*): attention without biases,
 * a router, fused experts stored transposed (gate_up_proj [E, H, 2I], down_proj [E, I, H]), a shared expert; dense
 * layers (intermediate_size_mlp) where moe_layers leaves them out. */
function llama4Tensors(cfg) {
  const t = cfg.text_config;
  const H = t.hidden_size;
  const I = t.intermediate_size;
  const E = t.num_local_experts;
  const q = t.num_attention_heads * t.head_dim;
  const kv = t.num_key_value_heads * t.head_dim;
  const proj = { std: t.initializer_range };
  const ones = { const: 1 };
  const m = 'language_model.model.';
  const list = [[`${m}embed_tokens.weight`, [t.vocab_size, H], { std: 1 }]];
  for (let l = 0; l < t.num_hidden_layers; l++) {
    const p = `${m}layers.${l}.`;
    const a = `${p}self_attn.`;
    const f = `${p}feed_forward.`;
    list.push([`${p}input_layernorm.weight`, [H], ones]);
    list.push([`${a}q_proj.weight`, [q, H], proj], [`${a}k_proj.weight`, [kv, H], proj]);
    list.push([`${a}v_proj.weight`, [kv, H], proj], [`${a}o_proj.weight`, [H, q], proj]);
    list.push([`${p}post_attention_layernorm.weight`, [H], ones]);
    if (!t.moe_layers.includes(l)) {
      const D = t.intermediate_size_mlp;
      list.push([`${f}gate_proj.weight`, [D, H], proj], [`${f}up_proj.weight`, [D, H], proj], [`${f}down_proj.weight`, [H, D], proj]);
      continue;
    }
    list.push([`${f}router.weight`, [E, H], proj]);
    list.push([`${f}experts.gate_up_proj`, [E, H, 2 * I], proj], [`${f}experts.down_proj`, [E, I, H], proj]);
    list.push([`${f}shared_expert.gate_proj.weight`, [I, H], proj], [`${f}shared_expert.up_proj.weight`, [I, H], proj]);
    list.push([`${f}shared_expert.down_proj.weight`, [H, I], proj]);
  }
  list.push([`${m}norm.weight`, [H], ones]);
  list.push(['language_model.lm_head.weight', [t.vocab_size, H], proj]);
  return list;
}

const numel = (shape) => shape.reduce((a, b) => a * b, 1);
const dtypeBytes = (dtype) => (dtype === 'F32' ? 4 : dtype === 'U8' ? 1 : 2);

/**
 * Bytes one decode step reads from the weights: every tensor once, except the embedding (one row) and the routed
 * experts (num_experts_per_tok of them per MoE layer).
 */
export function activeDecodeBytes(cfg) {
  const t = textConfig(cfg);  // llama4: the text model's config is nested
  const E = t.num_experts ?? t.n_routed_experts ?? t.num_local_experts;
  let bytes = 0;
  for (const [name, shape, , dtype] of tensorList(cfg)) {
    const b = numel(shape) * dtypeBytes(dtype);
    if (/(^|\.)model\.embed_tokens\.weight$/.test(name)) bytes += b / t.vocab_size;
    else if (/\.(mlp|feed_forward)\.experts\.(\d+\.|(gate_up|down)_proj)/.test(name)) bytes += (b * t.num_experts_per_tok) / E;
    else bytes += b;
  }
  return bytes;
}

// ---- random bf16 ---------------------------------------------------------------------------------------------

/** Inverse standard normal CDF (Acklam; relative error < 1.2e-9, plenty for bf16). */
function normalQuantile(p) {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  if (p < lo) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  if (p > 1 - lo) return -normalQuantile(1 - p);
  const q = p - 0.5;
  const r = q * q;
  return ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q) / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float → bf16 bits, round to nearest even (finite inputs). */
export function toBf16(x) {
  f32[0] = x;
  const bits = u32[0];
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

const tables = new Map();
function normalTable(std) {
  let t = tables.get(std);
  if (!t) {
    t = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) t[i] = toBf16(std * normalQuantile((i + 0.5) / 65536));
    tables.set(std, t);
  }
  return t;
}

let uniform = null;
/** The identity table: fillNormal through it gives uniform random 16-bit words. */
function uniformTable() {
  if (!uniform) uniform = Uint16Array.from({ length: 65536 }, (_, i) => i);
  return uniform;
}

/** FNV-1a over the text, mixed with the seed. */
function hashSeed(seed, text) {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** Fills out (Uint16Array, even length) with bf16 samples; returns the new PRNG state. */
function fillNormal(out, table, state) {
  const n = out.length;
  for (let i = 0; i < n; i += 2) {
    state = (state + 0x6d2b79f5) | 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    t = (t ^ (t >>> 14)) >>> 0;
    out[i] = table[t & 0xffff];
    out[i + 1] = table[t >>> 16];
  }
  return state;
}

// ---- safetensors writer --------------------------------------------------------------------------------------

/** The header bytes (8-byte LE length + JSON padded with spaces to a multiple of 8) and the data size. */
export function safetensorsHeader(tensors, metadata = { format: 'pt' }) {
  const header = { __metadata__: metadata };
  let offset = 0;
  for (const [name, shape, , dtype = 'BF16'] of tensors) {
    const bytes = numel(shape) * dtypeBytes(dtype);
    header[name] = { dtype, shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  json = Buffer.concat([json, Buffer.alloc(padded - json.length, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return { head: Buffer.concat([len, json]), dataBytes: offset };
}

const CHUNK = 1 << 21; // bf16 values per write (4 MiB)

/** Streams the tensors into file; calls progress(bytesWritten, total). */
export function writeSafetensors(file, tensors, seed, progress = () => {}) {
  const { head, dataBytes } = safetensorsHeader(tensors);
  const total = head.length + dataBytes;
  const fd = fs.openSync(file, 'w');
  try {
    fs.writeSync(fd, head);
    let written = head.length;
    const buf = new Uint16Array(CHUNK);
    const bytes = Buffer.from(buf.buffer);
    for (const [name, shape, init, dtype = 'BF16'] of tensors) {
      let left = numel(shape);
      let state = hashSeed(seed, name) | 0;
      if (dtype === 'U8') {  // raw bytes: random (MXFP4 codes) or one value (E8M0 scales)
        const out = Buffer.alloc(left);
        if (init.bytes === 'random') {
          const words = new Uint16Array(out.buffer, out.byteOffset, left >> 1);
          fillNormal(words, uniformTable(), state);
        } else {
          out.fill(init.bytes);
        }
        fs.writeSync(fd, out);
        written += out.length;
        progress(written, total);
        continue;
      }
      const table = init.std !== undefined ? normalTable(init.std) : null;
      if (!table) buf.fill(toBf16(init.const));
      if (dtype === 'F32') {  // small tensors: the bf16 samples widened to f32
        const vals = new Uint16Array(left + (left & 1));
        if (table) fillNormal(vals, table, state);
        else vals.fill(toBf16(init.const));
        const out = Buffer.alloc(left * 4);
        for (let i = 0; i < left; i++) out.writeUInt32LE((vals[i] << 16) >>> 0, i * 4);
        fs.writeSync(fd, out);
        written += out.length;
        progress(written, total);
        continue;
      }
      while (left > 0) {
        const n = Math.min(left, CHUNK);
        if (table) state = fillNormal(n === CHUNK ? buf : buf.subarray(0, n + (n & 1)), table, state);
        fs.writeSync(fd, bytes, 0, n * 2);
        left -= n;
        written += n * 2;
        progress(written, total);
      }
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return total;
}

/**
 * Makes dir a checkpoint of the given shape (SHAPES) with `layers` layers unless a complete one with the same config
 * is there (stamp file written last). Returns {dir, config, reused, seconds}.
 */
export function ensureCheckpoint(dir, layers, seed, log = () => {}, shape = 'olmoe') {
  const make = SHAPES[shape];
  if (!make) throw new Error(`unknown checkpoint shape ${JSON.stringify(shape)} (${Object.keys(SHAPES).join(', ')})`);
  const config = make(layers);
  const tensors = tensorList(config);
  const { head, dataBytes } = safetensorsHeader(tensors);
  const expectedSize = head.length + dataBytes;
  const stamp = JSON.stringify({ generator: GENERATOR_VERSION, seed, config, file_bytes: expectedSize }, null, 2) + '\n';
  const stampFile = path.join(dir, 'bench-stamp.json');
  const weights = path.join(dir, 'model.safetensors');
  try {
    if (fs.readFileSync(stampFile, 'utf8') === stamp && fs.statSync(weights).size === expectedSize) {
      return { dir, config, reused: true, seconds: 0, fileBytes: expectedSize };
    }
  } catch {
    // not there or incomplete: write it
  }
  fs.mkdirSync(dir, { recursive: true });
  fs.rmSync(stampFile, { force: true });
  const t0 = performance.now();
  log(`writing ${dir} (${(expectedSize / 1e9).toFixed(2)} GB of random bf16 weights, seed ${seed}) ...`);
  let lastPct = -1;
  writeSafetensors(weights, tensors, seed, (w, total) => {
    const pct = Math.floor((100 * w) / total / 10) * 10;
    if (pct !== lastPct) {
      lastPct = pct;
      if (pct > 0) log(`  ${pct}%`);
    }
  });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2) + '\n');
  fs.writeFileSync(
    path.join(dir, 'generation_config.json'),
    JSON.stringify({ eos_token_id: textConfig(config).eos_token_id, pad_token_id: textConfig(config).pad_token_id }, null, 2) + '\n',
  );
  fs.writeFileSync(stampFile, stamp);
  return { dir, config, reused: false, seconds: (performance.now() - t0) / 1000, fileBytes: expectedSize };
}
