// PhiMoE (Phi-3.5-MoE) and GraniteMoE: Mixtral-shaped decoders with their own routers.
// PhiMoE: LayerNorm (weight and bias) instead of RMSNorm, q/k/v/o biases (attention_bias), an optional LM head
// bias, LongRoPE, and the sparsemixer router (inference path: two slots, each the best remaining logit, weighted by
// a softmax over the logits within 2·router_jitter_noise of it, relative).
// GraniteMoE: top-k of the logits then a softmax over the k (= softmax renormalised over the chosen), and four
// multipliers (embedding, attention score scale, residual, logits ÷ logits_scaling).
#include "model/arch.h"

namespace routescope {

namespace {

constexpr WeightReader::ExpertNames kPhimoeHubNames{"w1.weight", "w3.weight", "w2.weight"};

void require_silu(const ConfigReader& c) {
  const std::string act = c.string("hidden_act", "silu");
  if (act != "silu") c.fail("\"hidden_act\" \"" + act + "\" is not supported (silu is)");
}

void read_phimoe(const ConfigReader& c, ModelConfig& cfg) {
  require_silu(c);
  cfg.experts = c.integer_alias("num_local_experts", "num_experts", 1, limits::kExperts);
  cfg.expert_width = c.integer("intermediate_size", 1, limits::kWidth);
  cfg.head_dim = c.integer("head_dim", 2, limits::kHeadDim, 0);
  if (cfg.top_k != 2)
    c.fail("\"num_experts_per_tok\" = " + std::to_string(cfg.top_k) +
           ": phimoe's sparsemixer router always selects two experts per token (transformers ignores other values)");
  if (cfg.experts < 2) c.fail("phimoe's sparsemixer router needs at least two experts (num_local_experts)");
  cfg.router.scoring = Scoring::SparseMixer;
  cfg.router.renorm = false;
  cfg.router.jitter_eps = static_cast<float>(c.number("router_jitter_noise", 0.01, 0.0, 1e3));
  cfg.layer_norm = true;
  cfg.eps = static_cast<float>(c.number("rms_norm_eps", 1e-5, 0.0, 1.0, true));  // LayerNorm's eps
  cfg.qkv_bias = cfg.o_bias = c.boolean("attention_bias", false);
  cfg.lm_head_bias = c.boolean("lm_head_bias", false);
  cfg.sliding_window = c.integer("sliding_window", 0, limits::kPositions, 0);
  cfg.rope.theta = 1000000.0;  // PhimoeConfig.default_theta
}

void read_granitemoe(const ConfigReader& c, ModelConfig& cfg) {
  require_silu(c);
  cfg.experts = c.integer_alias("num_local_experts", "num_experts", 1, limits::kExperts);
  cfg.expert_width = c.integer("intermediate_size", 1, limits::kWidth);
  cfg.router.scoring = Scoring::Softmax;
  cfg.router.renorm = true;  // softmax over the top-k logits = softmax over all, renormalised over the chosen
  cfg.qkv_bias = cfg.o_bias = c.boolean("attention_bias", false);
  cfg.eps = static_cast<float>(c.number("rms_norm_eps", 1e-6, 0.0, 1.0, true));
  cfg.embedding_multiplier = static_cast<float>(c.number("embedding_multiplier", 1.0, -1e6, 1e6));
  cfg.residual_multiplier = static_cast<float>(c.number("residual_multiplier", 1.0, -1e6, 1e6));
  if (cfg.residual_multiplier == 0.f) c.fail("\"residual_multiplier\" = 0 would discard every attention and MLP output");
  cfg.logits_scaling = static_cast<float>(c.number("logits_scaling", 1.0, 0.0, 1e6, true));
  cfg.softmax_scale = static_cast<float>(c.number("attention_multiplier", 1.0, 0.0, 1e6, true));
}

void load_phimoe(WeightReader& r, const ModelConfig& cfg, int l, LayerWeights& w) {
  const int H = cfg.hidden, E = cfg.experts, I = cfg.expert_width;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  w.attn_norm = r.vec(p + "input_layernorm.weight", H);
  w.attn_norm_bias = r.vec(p + "input_layernorm.bias", H);
  w.mlp_norm = r.vec(p + "post_attention_layernorm.weight", H);
  w.mlp_norm_bias = r.vec(p + "post_attention_layernorm.bias", H);
  r.standard_attention(cfg, p, w);
  w.moe = true;
  // The Hub's layout (block_sparse_moe.gate, experts.<e>.w1/w3/w2) or transformers v5's (mlp.router, fused experts).
  const bool hub = r.has(p + "block_sparse_moe.gate.weight");
  const std::string block = p + (hub ? "block_sparse_moe." : "mlp.");
  w.router = r.mat(block + (hub ? "gate.weight" : "router.weight"), E, H);
  r.active += static_cast<uint64_t>(E) * H + 3ull * cfg.top_k * I * H;
  r.experts(block, kPhimoeHubNames, E, I, H, w);
}

void load_granitemoe(WeightReader& r, const ModelConfig& cfg, int l, LayerWeights& w) {
  const int H = cfg.hidden, E = cfg.experts, I = cfg.expert_width;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  w.attn_norm = r.vec(p + "input_layernorm.weight", H);
  w.mlp_norm = r.vec(p + "post_attention_layernorm.weight", H);
  r.standard_attention(cfg, p, w);
  w.moe = true;
  // GraniteMoeParallelExperts: input_linear [E, 2I, H] (gate rows, then up rows), output_linear [E, H, I].
  const std::string b = p + "block_sparse_moe.";
  w.router = r.mat(b + "router.layer.weight", E, H);
  r.active += static_cast<uint64_t>(E) * H + 3ull * cfg.top_k * I * H;
  r.fused_experts(b + "input_linear.weight", b + "output_linear.weight", E, I, H, w);
}

const char* no_extras(const std::string&, const ModelConfig&) { return nullptr; }

}  // namespace

const ArchFamily kPhimoe{Arch::Phimoe, "phimoe", read_phimoe, load_phimoe, no_extras};
const ArchFamily kGraniteMoe{Arch::GraniteMoe, "granitemoe", read_granitemoe, load_granitemoe, no_extras};

}  // namespace routescope
