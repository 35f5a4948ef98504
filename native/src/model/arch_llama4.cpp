// Llama 4 (Scout, Maverick) text model as transformers v5.2 implements Llama4ForCausalLM: a linear router without
// bias whose top-k logits go through a sigmoid (the others score 0), the weight multiplying the chosen expert's
// INPUT; a shared expert always added; experts stored fused and transposed (gate_up_proj [E, H, 2I] with gate then up
// along the last axis, down_proj [E, I, H]), read in place as transposed matrices; dense MLP layers
// (intermediate_size_mlp) where moe_layers / interleave_moe_layer_step say; RoPE in the complex (adjacent-pair)
// layout on the layers no_rope_layers marks 1, with the weightless L2 QK-norm there (use_qk_norm); NoPE layers with
// attention temperature tuning; chunked attention on the chunked_attention layers; llama3 RoPE scaling.
// model_type llama4 is the vision-language checkpoint: its text config under text_config, the text weights under
// language_model.*; the vision tower and projector are not read.
#include <set>

#include "model/arch.h"

namespace routescope {

namespace {

// A list of integers from config.json, each checked by `ok` (the message says what is expected).
std::vector<int64_t> int_list(const ConfigReader& c, const char* key, const char* expected) {
  const Json* v = c.get(key);
  std::vector<int64_t> out;
  if (!v->is_array()) c.fail(std::string("\"") + key + "\" must be a list of " + expected);
  for (const Json& x : v->items()) {
    int64_t i;
    if (!x.as_int64(i)) c.fail(std::string("\"") + key + "\" holds " + x.dump() + "; it must be a list of " + expected);
    out.push_back(i);
  }
  return out;
}

void read_llama4(const ConfigReader& c, ModelConfig& cfg) {
  const int L = cfg.layers;
  // Llama4TextConfig's defaults where config.json is silent.
  cfg.eps = static_cast<float>(c.number("rms_norm_eps", 1e-5, 0.0, 1.0, true));
  cfg.max_positions = c.integer("max_position_embeddings", 1, limits::kPositions, 4096 * 32);
  cfg.experts = c.integer("num_local_experts", 1, limits::kExperts, 16);
  cfg.expert_width = c.integer("intermediate_size", 1, limits::kWidth, 8192);
  cfg.shared_width = cfg.expert_width;  // the shared expert is a Llama4TextMLP of intermediate_size
  cfg.dense_width = c.integer("intermediate_size_mlp", 1, limits::kWidth, 16384);
  // head_dim: absent means Llama4TextConfig's 128, null means hidden_size / heads.
  if (const Json* hd = c.root().find("head_dim"); hd && hd->is_null()) cfg.head_dim = cfg.hidden / cfg.heads;
  else cfg.head_dim = c.integer("head_dim", 2, limits::kHeadDim, 128);
  const std::string act = c.string("hidden_act", "silu");
  if (act != "silu") c.fail("\"hidden_act\" \"" + act + "\" is not supported for llama4 (silu is)");
  cfg.router.scoring = Scoring::Sigmoid;
  cfg.router.renorm = false;
  cfg.router.select_by_logit = true;
  cfg.expert_mlp.input_scaled = true;
  // Llama4TextConfig sets attention_bias = False whatever config.json says.

  // MoE layers: moe_layers, else every interleave_moe_layer_step-th layer from step - 1.
  std::vector<bool> moe(L, false);
  if (c.get("moe_layers")) {
    moe = c.layer_set("moe_layers", L);
  } else {
    const int step = c.integer("interleave_moe_layer_step", 1, limits::kLayers, 1);
    for (int l = step - 1; l < L; l += step) moe[l] = true;
  }
  cfg.moe_layer = moe;

  // RoPE layers: no_rope_layers[l] = 1 uses RoPE, 0 is a NoPE layer; absent or [] means a NoPE layer every
  // no_rope_layer_interval layers (the last of each group).
  std::vector<int64_t> rope_flags;
  if (const Json* nr = c.get("no_rope_layers"); nr && !(nr->is_array() && nr->items().empty())) {
    rope_flags = int_list(c, "no_rope_layers", "0 (NoPE) or 1 (RoPE) per layer");
    if (static_cast<int>(rope_flags.size()) != L)
      c.fail("\"no_rope_layers\" has " + std::to_string(rope_flags.size()) + " entries; it needs one per layer (" +
             std::to_string(L) + ", num_hidden_layers)");
    for (int64_t f : rope_flags)
      if (f != 0 && f != 1) c.fail("\"no_rope_layers\" holds " + std::to_string(f) + "; entries are 0 (NoPE) or 1 (RoPE)");
  } else {
    const int interval = c.integer("no_rope_layer_interval", 1, limits::kLayers, 4);
    for (int l = 0; l < L; ++l) rope_flags.push_back((l + 1) % interval != 0);
  }
  cfg.layer_nope.assign(L, 0);
  for (int l = 0; l < L; ++l) cfg.layer_nope[l] = rope_flags[l] == 0;

  // Attention per layer: layer_types, else chunked on the RoPE layers and full on the NoPE ones.
  std::vector<bool> chunked(L);
  if (c.get("layer_types")) {
    const std::vector<int> kind = c.layer_kinds("layer_types", L, {"chunked_attention", "full_attention"});
    for (int l = 0; l < L; ++l) chunked[l] = kind[l] == 0;
  } else {
    for (int l = 0; l < L; ++l) chunked[l] = rope_flags[l] != 0;
  }
  const Json* chunk_json = c.get("attention_chunk_size");
  int chunk = 8192;
  if (chunk_json) {
    int64_t v;
    if (!chunk_json->as_int64(v)) c.fail("\"attention_chunk_size\" must be an integer (got " + chunk_json->dump() + ")");
    if (v <= 0) c.fail("\"attention_chunk_size\" = " + std::to_string(v) + " must be positive");
    chunk = c.integer("attention_chunk_size", 1, limits::kPositions);
  } else if (c.root().find("attention_chunk_size")) {  // null: transformers raises when a chunked layer needs it
    for (int l = 0; l < L; ++l)
      if (chunked[l]) c.fail("layer " + std::to_string(l) + " is chunked_attention but \"attention_chunk_size\" is null");
  }
  cfg.layer_chunk.assign(L, 0);
  for (int l = 0; l < L; ++l)
    if (chunked[l]) cfg.layer_chunk[l] = chunk;

  if (c.boolean("use_qk_norm", true)) cfg.qk_norm = QKNorm::PerHeadL2;
  // transformers tests its truth: Llama 4 Scout and Maverick ship 4.
  if (const Json* tt = c.get("attn_temperature_tuning"); tt && tt->is_number()) cfg.temperature.on = tt->as_number() != 0;
  else cfg.temperature.on = c.boolean("attn_temperature_tuning", true);
  cfg.temperature.floor_scale = c.number("floor_scale", 8192.0, 0.0, 1e12, true);
  cfg.temperature.attn_scale = c.number("attn_scale", 0.1, -1e6, 1e6);

  // RoPE: Llama4TextConfig's default theta 500000, transformers' complex (adjacent-pair) layout.
  cfg.rope.theta = 500000.0;
  if (cfg.head_dim < 2 || cfg.head_dim % 2 != 0)
    c.fail("\"head_dim\" (" + std::to_string(cfg.head_dim) + ") must be even and at least 2 (RoPE rotates pairs)");
  read_rope_config(c, cfg, cfg.head_dim);
  cfg.rope.layout = RopeLayout::Interleaved;
  if (cfg.rope.dims != cfg.head_dim)
    c.fail("\"partial_rotary_factor\" is not supported for llama4 (its RoPE rotates the whole head)");
  if (cfg.rope.yarn) c.fail("rope type \"yarn\" is not supported for llama4 (default and llama3 are)");
}

void load_llama4(WeightReader& r, const ModelConfig& cfg, int l, LayerWeights& w) {
  const int H = cfg.hidden, E = cfg.experts, I = cfg.expert_width, hd = cfg.head_dim;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  w.attn_norm = r.vec(p + "input_layernorm.weight", H);
  w.mlp_norm = r.vec(p + "post_attention_layernorm.weight", H);
  r.standard_attention(cfg, p, w);
  if (cfg.qk_norm == QKNorm::PerHeadL2 && cfg.rope_on(l)) w.q_norm = w.k_norm = std::vector<float>(hd, 1.f);
  const std::string ff = p + "feed_forward.";
  w.moe = cfg.moe_layer[l];
  if (!w.moe) return r.dense_mlp(ff, cfg.dense_width, H, w);
  w.router = r.mat(ff + "router.weight", E, H);
  const TensorView& gu = r.require(ff + "experts.gate_up_proj", {E, H, 2 * I});
  const TensorView& dn = r.require(ff + "experts.down_proj", {E, I, H});
  r.any_fused = true;
  for (int e = 0; e < E; ++e) {  // gate_up's last axis: gate columns [0, I), up columns [I, 2I)
    w.gate.push_back(transposed_mat(gu, e, 2 * I, I, H, 1, 0));
    w.up.push_back(transposed_mat(gu, e, 2 * I, I, H, 1, I));
    w.down.push_back(transposed_mat(dn, e, H, H, I, 1, 0));
  }
  const int S = cfg.shared_width;
  w.shared_gate = r.mat(ff + "shared_expert.gate_proj.weight", S, H);
  w.shared_up = r.mat(ff + "shared_expert.up_proj.weight", S, H);
  w.shared_down = r.mat(ff + "shared_expert.down_proj.weight", H, S);
  r.active += static_cast<uint64_t>(E) * H + 3ull * cfg.top_k * I * H + 3ull * S * H;
}

const char* no_extras(const std::string&, const ModelConfig&) { return nullptr; }

// The vision-language checkpoint's image side: read by transformers' Llama4ForConditionalGeneration, not here.
const char* vision_tower(const std::string& tensor, const ModelConfig&) {
  for (const char* prefix : {"vision_model.", "multi_modal_projector."})
    if (tensor.rfind(prefix, 0) == 0) return "the vision tower and its projector (the engine runs the text model)";
  return nullptr;
}

}  // namespace

const ArchFamily kLlama4Text{Arch::Llama4, "llama4_text", read_llama4, load_llama4, no_extras};
const ArchFamily kLlama4{Arch::Llama4, "llama4", read_llama4, load_llama4, vision_tower, "text_config", "language_model."};

}  // namespace routescope
