// DeepSeek-V2 (V2-Lite), DeepSeek-V3 (V3/R1, Kimi-K2, Moonlight) and GLM-4.5 (glm4_moe): routed experts plus
// unweighted shared experts, dense leading layers; MLA attention (DeepSeek) or GQA with partial RoPE (GLM).
// Router rules as transformers implements them: V2 softmax, top-k (greedy) or group-limited by the group's max,
// × routed_scaling_factor; V3 / GLM sigmoid, e_score_correction_bias for selection only, group-limited by the sum
// of each group's two best scores, renormalised (norm_topk_prob), × routed_scaling_factor.
#include <cmath>
#include <cstdlib>

#include "model/arch.h"

namespace routescope {

namespace {

constexpr WeightReader::ExpertNames kHubNames{"gate_proj.weight", "up_proj.weight", "down_proj.weight"};

// Routed and shared experts, dense leading layers (first_k_dense_replace, moe_layer_freq as DeepSeek's own code
// reads them; transformers 5.2 ignores moe_layer_freq, which is 1 in every released config).
void read_experts(const ConfigReader& c, ModelConfig& cfg, bool alias) {
  cfg.experts = alias ? c.integer_alias("n_routed_experts", "num_local_experts", 1, limits::kExperts)
                      : c.integer("n_routed_experts", 1, limits::kExperts);
  cfg.expert_width = c.integer("moe_intermediate_size", 1, limits::kWidth);
  cfg.dense_width = c.integer("intermediate_size", 0, limits::kWidth, 0);
  const int shared = c.integer("n_shared_experts", 0, 64, cfg.arch == Arch::DeepseekV2 ? 2 : 1);
  cfg.shared_width = shared * cfg.expert_width;
  cfg.shared_gated = false;
  const int first_dense = c.integer("first_k_dense_replace", 0, limits::kLayers, cfg.arch == Arch::DeepseekV3 ? 3 : cfg.arch == Arch::Glm4Moe ? 1 : 0);
  const int freq = c.integer("moe_layer_freq", 1, limits::kLayers, 1);
  for (int l = 0; l < cfg.layers; ++l) cfg.moe_layer[l] = l >= first_dense && l % freq == 0;
  if (c.boolean("mlp_bias", false)) c.fail("\"mlp_bias\": true is not supported (MLP projections with biases)");
}

// Group limit: n_group groups of equal size, topk_group of them kept; contradictions are named.
void read_groups(const ConfigReader& c, ModelConfig& cfg, int default_groups, int default_kept) {
  RouterRule& r = cfg.router;
  r.groups = c.integer("n_group", 1, limits::kExperts, default_groups);
  r.groups_kept = c.integer("topk_group", 1, limits::kExperts, default_kept);
  if (cfg.experts % r.groups != 0)
    c.fail("n_group (" + std::to_string(r.groups) + ") does not divide the " + std::to_string(cfg.experts) +
           " routed experts (n_routed_experts)");
  if (r.groups_kept > r.groups)
    c.fail("topk_group (" + std::to_string(r.groups_kept) + ") is larger than n_group (" + std::to_string(r.groups) + ")");
  const int per_group = cfg.experts / r.groups;
  if (r.groups > 1 && static_cast<int64_t>(r.groups_kept) * per_group < cfg.top_k)
    c.fail("topk_group (" + std::to_string(r.groups_kept) + ") groups of " + std::to_string(per_group) +
           " experts hold fewer than num_experts_per_tok (" + std::to_string(cfg.top_k) + ")");
  if (r.groups > 1 && r.group_score == GroupScore::TopTwoSum && per_group < 2)
    c.fail("n_group (" + std::to_string(r.groups) + ") leaves groups of one expert; the group score sums the top two");
  if (r.groups == 1) r.groups_kept = 1;
}

// MLA sizes (transformers' defaults when absent) and DeepSeek's attention score scale.
void read_latent_attention(const ConfigReader& c, ModelConfig& cfg, bool interleave_default) {
  LatentAttention& m = cfg.mla;
  cfg.attention = AttentionKind::Latent;
  const Json* ql = c.get("q_lora_rank");
  m.q_lora_rank = ql ? c.integer("q_lora_rank", 1, limits::kRank) : 0;  // null: a plain q_proj
  m.kv_lora_rank = c.integer("kv_lora_rank", 1, limits::kRank, 512);
  m.qk_nope_dim = c.integer("qk_nope_head_dim", 0, limits::kHeadDim, 128);
  m.qk_rope_dim = c.integer("qk_rope_head_dim", 2, limits::kHeadDim, 64);
  m.v_dim = c.integer("v_head_dim", 1, limits::kHeadDim, 128);
  if (cfg.kv_heads != cfg.heads)
    c.fail("num_key_value_heads (" + std::to_string(cfg.kv_heads) + ") must equal num_attention_heads (" +
           std::to_string(cfg.heads) + ") in multi-head latent attention");
  if (c.boolean("attention_bias", false)) c.fail("\"attention_bias\": true is not supported for latent attention");
  cfg.head_dim = m.qk_nope_dim + m.qk_rope_dim;
  cfg.v_head_dim = m.v_dim;
  read_rope_config(c, cfg, m.qk_rope_dim);
  cfg.rope.layout = c.boolean("rope_interleave", interleave_default) ? RopeLayout::Interleaved : RopeLayout::Half;
  // YaRN: DeepSeek multiplies the score scale by mscale(factor, mscale_all_dim)² (its own code, and transformers'
  // deepseek_v3; transformers 5.2's deepseek_v2 omits it, see tools/hf-reference/README.md).
  double scale = 1.0 / std::sqrt(static_cast<double>(cfg.head_dim));
  if (cfg.rope.yarn && cfg.rope.mscale_all_dim > 0 && cfg.rope.factor > 1) {
    const double mscale = 0.1 * cfg.rope.mscale_all_dim * std::log(cfg.rope.factor) + 1.0;
    scale *= mscale * mscale;
  }
  cfg.softmax_scale = static_cast<float>(scale);
}

void read_deepseek_v2(const ConfigReader& c, ModelConfig& cfg) {
  read_experts(c, cfg, false);
  RouterRule& r = cfg.router;
  r.scoring = Scoring::Softmax;
  const std::string scoring = c.string("scoring_func", "softmax");
  if (scoring != "softmax") c.fail("\"scoring_func\" \"" + scoring + "\" is not DeepSeek-V2's (softmax)");
  // norm_topk_prob as DeepSeek's code applies it (false in every released V2 config; transformers 5.2 ignores it).
  r.renorm = c.boolean("norm_topk_prob", false) && cfg.top_k > 1;
  r.scale = static_cast<float>(c.number("routed_scaling_factor", 1.0, 0.0, 1e6, true));
  const std::string method = c.string("topk_method", "greedy");
  r.group_score = GroupScore::Max;
  if (method == "greedy") {
    r.groups = r.groups_kept = 1;
  } else if (method == "group_limited_greedy") {
    read_groups(c, cfg, 1, 1);
  } else {
    c.fail("\"topk_method\" \"" + method + "\" is not supported for deepseek_v2 (greedy, group_limited_greedy)");
  }
  read_latent_attention(c, cfg, true);
}

// DeepSeek-V3's experts and router, which GLM-4.5 shares with other defaults: sigmoid scores with a selection bias,
// groups ranked by their top-two sum, and the multi-token-prediction layers the checkpoint may carry.
void read_sigmoid_router(const ConfigReader& c, ModelConfig& cfg, double default_scale, int default_groups,
                         int default_kept) {
  read_experts(c, cfg, true);
  RouterRule& r = cfg.router;
  r.scoring = Scoring::Sigmoid;
  r.selection_bias = true;
  r.group_score = GroupScore::TopTwoSum;
  r.renorm = c.boolean("norm_topk_prob", true);
  r.scale = static_cast<float>(c.number("routed_scaling_factor", default_scale, 0.0, 1e6, true));
  read_groups(c, cfg, default_groups, default_kept);
  cfg.extra_layers = c.integer("num_nextn_predict_layers", 0, 16, 0);
}

void read_deepseek_v3(const ConfigReader& c, ModelConfig& cfg) {
  read_sigmoid_router(c, cfg, 2.5, 8, 4);
  read_latent_attention(c, cfg, true);
}

void read_glm4_moe(const ConfigReader& c, ModelConfig& cfg) {
  read_sigmoid_router(c, cfg, 1.0, 1, 1);
  cfg.head_dim = c.integer("head_dim", 2, limits::kHeadDim, 0);
  if (cfg.head_dim == 0) {
    if (cfg.hidden % cfg.heads != 0) c.fail("hidden_size is not a multiple of num_attention_heads and there is no \"head_dim\"");
    cfg.head_dim = cfg.hidden / cfg.heads;
  }
  cfg.qkv_bias = c.boolean("attention_bias", false);
  cfg.qk_norm = c.boolean("use_qk_norm", false) ? QKNorm::PerHead : QKNorm::None;
  // transformers' Glm4MoeConfig defaults partial_rotary_factor to 0.5 (top level, which wins over a nested one).
  read_rope_config(c, cfg, cfg.head_dim);
  const double partial = c.number("partial_rotary_factor", 0.5, 0.0, 1.0, true);
  cfg.rope.dims = static_cast<int>(cfg.head_dim * partial);
  if (cfg.rope.dims < 2 || cfg.rope.dims % 2 != 0)
    c.fail("RoPE rotates " + std::to_string(cfg.rope.dims) + " dims per head (head_dim × partial_rotary_factor); it must be even");
}

void load_moe_block(WeightReader& r, const ModelConfig& cfg, const std::string& p, LayerWeights& w) {
  const int H = cfg.hidden, E = cfg.experts, I = cfg.expert_width;
  w.router = r.mat(p + "mlp.gate.weight", E, H);
  if (cfg.router.selection_bias) w.selection_bias = to_f32(r.require(p + "mlp.gate.e_score_correction_bias", {E}));
  r.active += static_cast<uint64_t>(E) * H + 3ull * cfg.top_k * I * H;
  r.experts(p + "mlp.", kHubNames, E, I, H, w);
  if (cfg.shared_width > 0) {
    const int S = cfg.shared_width;
    w.shared_gate = r.mat(p + "mlp.shared_experts.gate_proj.weight", S, H);
    w.shared_up = r.mat(p + "mlp.shared_experts.up_proj.weight", S, H);
    w.shared_down = r.mat(p + "mlp.shared_experts.down_proj.weight", H, S);
    r.active += 3ull * S * H;
  }
}

void load_deepseek(WeightReader& r, const ModelConfig& cfg, int l, LayerWeights& w) {
  const int H = cfg.hidden, nh = cfg.heads;
  const LatentAttention& m = cfg.mla;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  w.attn_norm = r.vec(p + "input_layernorm.weight", H);
  w.mlp_norm = r.vec(p + "post_attention_layernorm.weight", H);
  const std::string a = p + "self_attn.";
  if (m.q_lora_rank > 0) {
    w.q_a = r.mat(a + "q_a_proj.weight", m.q_lora_rank, H);
    w.q_a_norm = r.vec(a + "q_a_layernorm.weight", m.q_lora_rank);
    w.q_b = r.mat(a + "q_b_proj.weight", nh * cfg.head_dim, m.q_lora_rank);
    r.active += static_cast<uint64_t>(m.q_lora_rank) * (H + nh * cfg.head_dim);
  } else {
    w.q = r.mat(a + "q_proj.weight", nh * cfg.head_dim, H);
    r.active += static_cast<uint64_t>(nh) * cfg.head_dim * H;
  }
  w.kv_a = r.mat(a + "kv_a_proj_with_mqa.weight", m.kv_lora_rank + m.qk_rope_dim, H);
  w.kv_a_norm = r.vec(a + "kv_a_layernorm.weight", m.kv_lora_rank);
  w.kv_b = r.mat(a + "kv_b_proj.weight", nh * (m.qk_nope_dim + m.v_dim), m.kv_lora_rank);
  w.o = r.mat(a + "o_proj.weight", H, nh * m.v_dim);
  r.active += static_cast<uint64_t>(m.kv_lora_rank + m.qk_rope_dim) * H +
              static_cast<uint64_t>(nh) * (m.qk_nope_dim + m.v_dim) * m.kv_lora_rank + static_cast<uint64_t>(H) * nh * m.v_dim;
  w.moe = cfg.moe_layer[l];
  if (!w.moe) return r.dense_mlp(p + "mlp.", cfg.dense_width, H, w);
  load_moe_block(r, cfg, p, w);
}

void load_glm4_moe(WeightReader& r, const ModelConfig& cfg, int l, LayerWeights& w) {
  const int H = cfg.hidden;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  w.attn_norm = r.vec(p + "input_layernorm.weight", H);
  w.mlp_norm = r.vec(p + "post_attention_layernorm.weight", H);
  r.standard_attention(cfg, p, w);
  w.moe = cfg.moe_layer[l];
  if (!w.moe) return r.dense_mlp(p + "mlp.", cfg.dense_width, H, w);
  load_moe_block(r, cfg, p, w);
}

// Layers past num_hidden_layers: DeepSeek-V3's and GLM-4.5's multi-token prediction module(s), which
// transformers does not load either.
const char* mtp_layers(const std::string& tensor, const ModelConfig& cfg) {
  const std::string prefix = "model.layers.";
  if (tensor.compare(0, prefix.size(), prefix) != 0) return nullptr;
  const long layer = std::strtol(tensor.c_str() + prefix.size(), nullptr, 10);
  if (layer >= cfg.layers && layer < cfg.layers + std::max(1, cfg.extra_layers))
    return "multi-token prediction layer(s) past num_hidden_layers (speculative decoding only)";
  return nullptr;
}
const char* no_extras(const std::string&, const ModelConfig&) { return nullptr; }

}  // namespace

const ArchFamily kDeepseekV2{Arch::DeepseekV2, "deepseek_v2", read_deepseek_v2, load_deepseek, no_extras};
const ArchFamily kDeepseekV3{Arch::DeepseekV3, "deepseek_v3", read_deepseek_v3, load_deepseek, mtp_layers};
const ArchFamily kGlm4Moe{Arch::Glm4Moe, "glm4_moe", read_glm4_moe, load_glm4_moe, mtp_layers};

}  // namespace routescope
