// Mixtral, OLMoE, Qwen2-MoE and Qwen3-MoE: GQA attention with RoPE (rotate_half), softmax routers.

#include "model/arch.h"

namespace routescope {

namespace {

constexpr WeightReader::ExpertNames kHubNames{"gate_proj.weight", "up_proj.weight", "down_proj.weight"};
constexpr WeightReader::ExpertNames kMixtralNames{"w1.weight", "w3.weight", "w2.weight"};

// qwen2_moe / qwen3_moe: dense MLP layers via mlp_only_layers and decoder_sparse_step.
void read_sparse_step(const ConfigReader& c, ModelConfig& cfg) {
  const int step = c.integer("decoder_sparse_step", 0, limits::kLayers, 1);
  const std::vector<bool> dense = c.get("mlp_only_layers") ? c.layer_set("mlp_only_layers", cfg.layers) : std::vector<bool>(cfg.layers, false);
  for (int l = 0; l < cfg.layers; ++l) cfg.moe_layer[l] = !dense[l] && step > 0 && (l + 1) % step == 0;
}

void read_mixtral(const ConfigReader& c, ModelConfig& cfg) {
  cfg.experts = c.integer_alias("num_local_experts", "num_experts", 1, limits::kExperts);
  cfg.expert_width = c.integer("intermediate_size", 1, limits::kWidth);
  cfg.head_dim = c.integer("head_dim", 2, limits::kHeadDim, 0);
  cfg.rope.theta = 1000000.0;  // MixtralConfig.default_theta
  cfg.router.renorm = true;
  cfg.sliding_window = c.integer("sliding_window", 0, limits::kPositions, 0);
}

void read_olmoe(const ConfigReader& c, ModelConfig& cfg) {
  cfg.experts = c.integer_alias("num_experts", "num_local_experts", 1, limits::kExperts);
  cfg.expert_width = c.integer("intermediate_size", 1, limits::kWidth);
  cfg.router.renorm = c.boolean("norm_topk_prob", false);
  cfg.qk_norm = QKNorm::Whole;
  cfg.clip_qkv = static_cast<float>(c.number("clip_qkv", 0.0, 0.0, 1e30));
}

void read_qwen2_moe(const ConfigReader& c, ModelConfig& cfg) {
  cfg.experts = c.integer("num_experts", 1, limits::kExperts);
  cfg.expert_width = c.integer("moe_intermediate_size", 1, limits::kWidth);
  cfg.shared_width = c.integer("shared_expert_intermediate_size", 0, limits::kWidth, 0);
  cfg.shared_gated = true;
  cfg.dense_width = c.integer("intermediate_size", 0, limits::kWidth, 0);
  cfg.router.renorm = c.boolean("norm_topk_prob", false);
  cfg.qkv_bias = true;
  if (c.boolean("use_sliding_window", false)) cfg.sliding_window = c.integer("sliding_window", 0, limits::kPositions, 0);
  read_sparse_step(c, cfg);
}

void read_qwen3_moe(const ConfigReader& c, ModelConfig& cfg) {
  cfg.experts = c.integer_alias("num_experts", "num_local_experts", 1, limits::kExperts);
  cfg.expert_width = c.integer("moe_intermediate_size", 1, limits::kWidth);
  cfg.dense_width = c.integer("intermediate_size", 0, limits::kWidth, 0);
  cfg.head_dim = c.integer("head_dim", 2, limits::kHeadDim, 0);
  cfg.router.renorm = c.boolean("norm_topk_prob", true);
  cfg.qk_norm = QKNorm::PerHead;
  if (c.boolean("use_sliding_window", false)) cfg.sliding_window = c.integer("sliding_window", 0, limits::kPositions, 0);
  read_sparse_step(c, cfg);
}

// Router and experts of one MoE layer under "mlp." (Mixtral's Hub layout: "block_sparse_moe.").
void load_classic(WeightReader& r, const ModelConfig& cfg, int l, LayerWeights& w) {
  const int H = cfg.hidden, E = cfg.experts, I = cfg.expert_width;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  w.attn_norm = r.vec(p + "input_layernorm.weight", H);
  w.mlp_norm = r.vec(p + "post_attention_layernorm.weight", H);
  r.standard_attention(cfg, p, w);
  w.moe = cfg.moe_layer[l];
  if (!w.moe) return r.dense_mlp(p + "mlp.", cfg.dense_width, H, w);
  const bool mixtral_hub = cfg.arch == Arch::Mixtral && r.has(p + "block_sparse_moe.gate.weight");
  const std::string block = p + (mixtral_hub ? "block_sparse_moe." : "mlp.");
  w.router = r.mat(block + "gate.weight", E, H);
  r.active += static_cast<uint64_t>(E) * H + 3ull * cfg.top_k * I * H;
  r.experts(block, mixtral_hub ? kMixtralNames : kHubNames, E, I, H, w);
  if (cfg.shared_width > 0) {
    const int S = cfg.shared_width;
    w.shared_gate = r.mat(p + "mlp.shared_expert.gate_proj.weight", S, H);
    w.shared_up = r.mat(p + "mlp.shared_expert.up_proj.weight", S, H);
    w.shared_down = r.mat(p + "mlp.shared_expert.down_proj.weight", H, S);
    w.shared_expert_gate = to_f32(r.require(p + "mlp.shared_expert_gate.weight", {1, H}));
    r.active += 3ull * S * H + H;
  }
}

const char* no_extras(const std::string&, const ModelConfig&) { return nullptr; }

}  // namespace

const ArchFamily kMixtral{Arch::Mixtral, "mixtral", read_mixtral, load_classic, no_extras};
const ArchFamily kOlmoe{Arch::Olmoe, "olmoe", read_olmoe, load_classic, no_extras};
const ArchFamily kQwen2Moe{Arch::Qwen2Moe, "qwen2_moe", read_qwen2_moe, load_classic, no_extras};
const ArchFamily kQwen3Moe{Arch::Qwen3Moe, "qwen3_moe", read_qwen3_moe, load_classic, no_extras};

}  // namespace routescope
