// What the engine reads from config.json: one ModelConfig for every architecture, the router rule, RoPE and
// attention variants. Architecture-specific field names live in arch_*.cpp; this header is what the decoder sees.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "routescope/engine.h"
#include "util/json.h"

namespace routescope {

// How a router turns its logits into a selection and mixing weights (the routing patch applies on top, see
// cpu/router.h). scores = softmax(z) or sigmoid(z); choice = scores (+ e_score_correction_bias); optional group
// limit (keep `groups_kept` of `groups` groups by their score); top-k of choice; weights = scores of the chosen,
// renormalised when `renorm`, times `scale`.
// SparseMixer (PhiMoE, inference path): slot by slot, the best remaining expert by logit; its weight is the softmax,
// at that expert, over the remaining experts whose logit lies within 2·jitter_eps (relative) of the chosen one's.
enum class Scoring { Softmax, Sigmoid, SparseMixer };
enum class GroupScore { Max, TopTwoSum };
struct RouterRule {
  Scoring scoring = Scoring::Softmax;
  bool renorm = false;
  float scale = 1.f;           // routed_scaling_factor
  int groups = 1;              // n_group (1 = no group limit)
  int groups_kept = 1;         // topk_group
  GroupScore group_score = GroupScore::Max;
  bool selection_bias = false; // per-layer e_score_correction_bias added to the scores for selection only
  float jitter_eps = 0.f;      // SparseMixer: router_jitter_noise (the relative logit gap that still shares a slot)
  // Llama 4: top-k of the logits themselves (sigmoid(z) rounds to 1 in fp32 above z ≈ 17, where logits still differ).
  bool select_by_logit = false;
};
const char* scoring_name(Scoring s);
// One line for people, e.g. "sigmoid, group-limited top-8 of 256 (8 groups, 4 kept), renormalised, ×2.5".
std::string describe_router(const RouterRule& r, int experts, int top_k);

// PerHeadL2: per head without weights (Llama 4's L2 norm, RMS with rms_norm_eps), on the layers that load unit
// weights for it (its RoPE layers).
enum class QKNorm { None, Whole, PerHead, PerHeadL2 };
enum class AttentionKind { Standard, Latent };  // Latent: DeepSeek's multi-head latent attention (MLA)
enum class RopeLayout { Half, Interleaved };    // rotate_half pairs (i, i + d/2) or adjacent pairs (2i, 2i + 1)

struct RopeConfig {
  double theta = 10000.0;           // transformers' default_theta of the family when config.json has none
  int dims = 0;                     // rotated dims per head (< head dim with partial rotary)
  RopeLayout layout = RopeLayout::Half;
  bool yarn = false;                // YaRN: inv_freq blended between interpolation and extrapolation
  double factor = 1.0, beta_fast = 32.0, beta_slow = 1.0, original_max_positions = 0;
  bool truncate = true;
  double attention_factor = 1.0;    // multiplies cos and sin (YaRN mscale ratio)
  double mscale_all_dim = 0.0;      // YaRN's mscale_all_dim as given (DeepSeek scales attention scores by it)
  // LongRoPE (PhiMoE): per-frequency divisors and a cos/sin factor, "long" ones for a forward call whose last
  // position is past original_max_positions, "short" ones otherwise (decided per call, as transformers does).
  bool longrope = false;
  std::vector<double> short_factor, long_factor;
  double short_mscale = 1.0, long_mscale = 1.0;
  // Llama 3 scaling (rope_type "llama3"): wavelengths above original_max_positions / low_freq_factor are divided by
  // `factor`, those below original_max_positions / high_freq_factor kept, the ones between blended smoothly.
  bool llama3 = false;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
};

struct LatentAttention {           // MLA sizes (DeepSeek-V2/V3)
  int q_lora_rank = 0;             // 0 = a plain q_proj
  int kv_lora_rank = 0;
  int qk_nope_dim = 0, qk_rope_dim = 0, v_dim = 0;
};

// The experts' MLP: down(act(gate x + b_g, up x + b_u)) + b_d. SwiGLU: silu(g)·u. Clamped (gpt-oss):
// (clamp(u, ±limit) + 1) · g'·σ(alpha·g') with g' = min(g, limit).
// input_scaled (Llama 4): the routing weight w multiplies the expert's input, not its output: down(act(w·gate x,
// w·up x)) (no biases), which is not linear in w.
struct ExpertMlp {
  bool clamped = false;
  float alpha = 1.702f, limit = 7.f;
  bool bias = false;  // gate/up and down biases per expert
  bool input_scaled = false;
};

// Llama 4's attention temperature tuning on its NoPE layers: queries at position p are multiplied by
// log1p(floor((p + 1) / floor_scale)) · attn_scale + 1.
struct TemperatureTuning {
  bool on = false;
  double floor_scale = 8192, attn_scale = 0.1;
  float factor(int pos) const {
    return static_cast<float>(std::log1p(std::floor((pos + 1.0) / floor_scale)) * attn_scale + 1.0);
  }
};

struct ModelConfig {
  Arch arch = Arch::Olmoe;
  int hidden = 0, heads = 0, kv_heads = 0, vocab = 0, layers = 0;
  int head_dim = 0;                 // query/key width per head (MLA: nope + rope)
  int v_head_dim = 0;               // value width per head (= head_dim except MLA)
  int experts = 0, top_k = 0, expert_width = 0, dense_width = 0;
  int shared_width = 0;             // 0 = no shared expert
  bool shared_gated = false;        // qwen2_moe: shared expert output × sigmoid(shared_expert_gate · x)
  float eps = 1e-5f;
  RouterRule router;
  RopeConfig rope;
  AttentionKind attention = AttentionKind::Standard;
  LatentAttention mla;
  float softmax_scale = 0.f;        // attention score scale (1/sqrt(head_dim), times YaRN's mscale² for DeepSeek)
  QKNorm qk_norm = QKNorm::None;
  bool qkv_bias = false;
  float clip_qkv = 0.0f;            // 0 = off
  int sliding_window = 0;           // 0 = off
  std::vector<int> layer_window;    // per layer (gpt-oss layer_types); empty = sliding_window everywhere
  bool attention_sinks = false;     // a learned logit per head joins every softmax denominator (gpt-oss)
  bool router_bias = false;         // the router linear has a bias, part of router_logits (gpt-oss)
  ExpertMlp expert_mlp;
  int window(int layer) const { return layer_window.empty() ? sliding_window : layer_window[layer]; }
  // Llama 4: chunked attention per layer (position p sees the keys of its own chunk of layer_chunk[l] positions,
  // up to p; 0 = causal over everything), and the layers without RoPE (NoPE) where temperature tuning applies.
  std::vector<int> layer_chunk;     // empty = no chunked layer
  std::vector<uint8_t> layer_nope;  // empty = RoPE everywhere
  TemperatureTuning temperature;
  int chunk(int layer) const { return layer_chunk.empty() ? 0 : layer_chunk[layer]; }
  bool rope_on(int layer) const { return layer_nope.empty() || !layer_nope[layer]; }
  // Prefix of every tensor name: "language_model." when the text model sits inside Llama 4's vision-language
  // checkpoint (its config nested under text_config).
  std::string weight_prefix;
  bool tie_embeddings = false;
  int max_positions = 0;
  std::vector<bool> moe_layer;
  std::string dtype;                // torch_dtype / dtype as declared ("" when absent)
  int extra_layers = 0;             // layers past num_hidden_layers the checkpoint may carry (DeepSeek-V3's MTP)
  int fp8_block_rows = 0, fp8_block_cols = 0;  // quantization_config.weight_block_size (FP8 block scales)
  bool layer_norm = false;          // LayerNorm (mean removed, weight and bias) instead of RMSNorm (phimoe)
  bool o_bias = false;              // o_proj bias (phimoe's attention_bias; gpt-oss always)
  bool lm_head_bias = false;        // phimoe's lm_head_bias
  // GraniteMoE's multipliers: embeddings × embedding_multiplier, each block's output × residual_multiplier before
  // the residual add, logits ÷ logits_scaling (its attention_multiplier is softmax_scale).
  float embedding_multiplier = 1.f, residual_multiplier = 1.f, logits_scaling = 1.f;
  bool mxfp4 = false;               // quantization_config.quant_method "mxfp4" (gpt-oss experts)
};

// config.json fields with one-line errors naming the field: integers within stated bounds, finite numbers.
class ConfigReader {
 public:
  ConfigReader(const Json& root, std::string path) : root_(root), path_(std::move(path)) {}
  const Json* get(const std::string& key) const;
  // An integer in [lo, hi]; `fallback` when absent (missing is an error when no fallback is given).
  int integer(const std::string& key, int lo, int hi) const;
  int integer(const std::string& key, int lo, int hi, int fallback) const;
  // A field transformers reads under two names (its config classes' attribute_map); both present must agree.
  int integer_alias(const std::string& key, const std::string& alias, int lo, int hi) const;
  // A finite number in [lo, hi] (open at lo when lo_open); fallback when absent.
  double number(const std::string& key, double fallback, double lo, double hi, bool lo_open = false) const;
  bool boolean(const std::string& key, bool fallback) const;
  std::string string(const std::string& key, const std::string& fallback) const;
  // A present list of layer numbers below `layers` (num_hidden_layers), as a per-layer flag.
  std::vector<bool> layer_set(const std::string& key, int layers) const;
  // A present list naming one of `kinds` for each of `layers` layers, as the index of each layer's kind.
  std::vector<int> layer_kinds(const std::string& key, int layers, const std::vector<std::string>& kinds) const;
  [[noreturn]] void fail(const std::string& what) const;
  const std::string& path() const { return path_; }
  const Json& root() const { return root_; }

 private:
  const Json& root_;
  std::string path_;
};

// RoPE fields (rope_theta, rope_parameters / rope_scaling, partial_rotary_factor) for heads whose rotated part is
// `rotary_head_dim` wide; architecture readers call it once they know that width.
void read_rope_config(const ConfigReader& c, ModelConfig& cfg, int rotary_head_dim);

// Reads config.json (already parsed) into a ModelConfig and the static parts of ModelInfo. Refuses unknown and
// unsupported model types, fields out of range and fields that contradict each other, naming the field.
ModelConfig parse_config(const Json& root, const std::string& path, ModelInfo& info);

// Upper bounds of config fields: far above any released model, low enough that every product the engine forms
// (e.g. heads × head_dim, experts × 2 × width) fits the integer types it uses.
namespace limits {
constexpr int kHidden = 1 << 16;
constexpr int kHeads = 1 << 10;
constexpr int kHeadDim = 1 << 12;
constexpr int kLayers = 1 << 10;
constexpr int kVocab = 1 << 22;
constexpr int kExperts = 1 << 12;
constexpr int kWidth = 1 << 18;
constexpr int kPositions = 1 << 24;
constexpr int kRank = 1 << 16;
}  // namespace limits

}  // namespace routescope
