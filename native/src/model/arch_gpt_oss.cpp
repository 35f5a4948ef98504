// gpt-oss (gpt-oss-20b / -120b) as transformers v5.2 implements it: GQA attention with q/k/v/o biases, a learned
// sink logit per head in every softmax, sliding-window and full layers per layer_types, YaRN; a router with a bias
// (top-k of the logits, softmax over the k: softmax then renormalised top-k, the same weights); experts stored
// transposed ([E, H, 2I] with gate and up interleaved, [E, I, H]) with biases and the clamped SwiGLU, or as the
// released MXFP4 blocks (*_blocks [E, rows, cols/32, 16] + E8M0 *_scales [E, rows, cols/32], rows = outputs).
#include <cmath>
#include <cstring>
#include <utility>

#include "model/arch.h"

namespace routescope {

namespace {

void read_gpt_oss(const ConfigReader& c, ModelConfig& cfg) {
  cfg.experts = c.integer_alias("num_local_experts", "num_experts", 1, limits::kExperts);
  if (c.get("experts_per_token") && c.integer("experts_per_token", 1, limits::kExperts) != cfg.top_k)
    c.fail("\"experts_per_token\" and \"num_experts_per_tok\" disagree");
  cfg.expert_width = c.integer("intermediate_size", 1, limits::kWidth);
  cfg.head_dim = c.integer("head_dim", 2, limits::kHeadDim, 0);
  if (cfg.head_dim == 0) cfg.head_dim = cfg.hidden / cfg.heads;  // transformers: hidden_size // heads
  cfg.router.renorm = true;
  cfg.router_bias = true;
  cfg.qkv_bias = true;  // GptOssConfig sets attention_bias = True whatever config.json says
  cfg.o_bias = true;
  cfg.attention_sinks = true;
  cfg.expert_mlp.clamped = true;
  cfg.expert_mlp.bias = true;
  // transformers' eager GptOssExperts fixes alpha 1.702 and limit 7.0 (its MXFP4 kernels read swiglu_limit); the
  // released configs say 7.0, so the field is read and must agree.
  cfg.expert_mlp.limit = static_cast<float>(c.number("swiglu_limit", 7.0, 0.0, 1e6, true));
  // Sliding window per layer: layer_types, or transformers' default (even layers sliding, odd ones full).
  const int window = c.integer("sliding_window", 0, limits::kPositions, 0);
  cfg.layer_window.assign(cfg.layers, 0);
  if (c.get("layer_types")) {
    const std::vector<int> kind = c.layer_kinds("layer_types", cfg.layers, {"sliding_attention", "full_attention"});
    for (int l = 0; l < cfg.layers; ++l) cfg.layer_window[l] = kind[l] == 0 ? -1 : 0;
  } else {
    for (int l = 0; l < cfg.layers; l += 2) cfg.layer_window[l] = -1;
  }
  for (int l = 0; l < cfg.layers; ++l)
    if (cfg.layer_window[l] < 0) {
      if (window <= 0) c.fail("layer " + std::to_string(l) + " is sliding_attention but \"sliding_window\" is missing");
      cfg.layer_window[l] = window;
    }
  // RoPE: GptOssConfig's defaults (theta 150000, YaRN ×32 from 4096, truncate false) when config.json has none.
  if (!c.get("rope_parameters") && !c.get("rope_scaling")) {
    if (cfg.head_dim < 2 || cfg.head_dim % 2 != 0)
      c.fail("RoPE rotates the whole head, so \"head_dim\" (" + std::to_string(cfg.head_dim) + ") must be even and at least 2");
    RopeConfig& r = cfg.rope;
    r.theta = c.number("rope_theta", 150000.0, 0.0, 1e12, true);
    r.dims = cfg.head_dim;
    r.yarn = true;
    r.factor = 32.0;
    r.original_max_positions = 4096;
    r.truncate = false;
    r.attention_factor = 0.1 * std::log(32.0) + 1.0;
  } else {
    read_rope_config(c, cfg, cfg.head_dim);
    const Json* nested = c.get("rope_parameters");
    if (!c.get("rope_theta") && !(nested && nested->is_object() && nested->find("rope_theta"))) cfg.rope.theta = 150000.0;
  }
}

// One expert projection stored as MXFP4: `rows` output rows of `cols` inputs taken every `step` storage rows from
// `offset` of expert e, out of `stored` rows per expert.
Mat mxfp4_mat(const TensorView& blocks, const TensorView& scales, int e, int stored, int rows, int cols, int step,
              int offset) {
  Mat m;
  m.enc = Encoding::Mxfp4;
  m.rows = rows;
  m.cols = cols;
  m.data = blocks.data + static_cast<size_t>(e) * stored * (cols / 2);
  m.mx_scales = scales.data + static_cast<size_t>(e) * stored * (cols / 32);
  m.rstep = step;
  m.roff = offset;
  return m;
}

// <name>_blocks and <name>_scales of `rows` outputs × `cols` inputs per expert, checked.
std::pair<const TensorView*, const TensorView*> mxfp4_tensors(WeightReader& r, const ModelConfig& cfg,
                                                              const std::string& name, int E, int rows, int cols) {
  const std::string bn = name + "_blocks", sn = name + "_scales";
  const TensorView* b = r.find(bn);
  if (!cfg.mxfp4)
    throw Error("BAD_CHECKPOINT", b->file + ": tensor \"" + bn + "\" is MXFP4 but config.json has no " +
                                      "quantization_config with quant_method \"mxfp4\"");
  if (cols % 32 != 0)
    throw Error("BAD_CHECKPOINT", b->file + ": tensor \"" + bn + "\": MXFP4 blocks of 32 need an input width that is " +
                                      "a multiple of 32 (it is " + std::to_string(cols) + ")");
  if (!r.has(sn))
    throw Error("BAD_CHECKPOINT", b->file + ": tensor \"" + bn + "\" is MXFP4 but its scales \"" + sn + "\" are missing");
  const TensorView& blocks = r.bytes(bn, {E, rows, cols / 32, 16});
  const TensorView& scales = r.bytes(sn, {E, rows, cols / 32});
  // E8M0 0xFF is NaN (transformers' ldexp would give inf): refused rather than propagated.
  if (std::memchr(scales.data, 0xFF, scales.nbytes))
    throw Error("BAD_CHECKPOINT", scales.file + ": tensor \"" + sn + "\" holds the E8M0 NaN scale 0xFF");
  r.mxfp4_values += static_cast<uint64_t>(E) * rows * cols;
  return {&blocks, &scales};
}

void load_gpt_oss(WeightReader& r, const ModelConfig& cfg, int l, LayerWeights& w) {
  const int H = cfg.hidden, E = cfg.experts, I = cfg.expert_width;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  w.attn_norm = r.vec(p + "input_layernorm.weight", H);
  w.mlp_norm = r.vec(p + "post_attention_layernorm.weight", H);
  r.standard_attention(cfg, p, w);
  w.sinks = r.vec(p + "self_attn.sinks", cfg.heads);
  w.moe = true;
  w.router = r.mat(p + "mlp.router.weight", E, H);
  w.router_bias = r.vec(p + "mlp.router.bias", E);
  r.active += static_cast<uint64_t>(E) * H + 3ull * cfg.top_k * I * H;
  const std::string block = p + "mlp.experts.";
  // Biases: gate_up interleaved like the weights (gate at even, up at odd columns).
  const std::vector<float> gub = to_f32(r.require(block + "gate_up_proj_bias", {E, 2 * I}));
  w.gate_bias.resize(static_cast<size_t>(E) * I);
  w.up_bias.resize(static_cast<size_t>(E) * I);
  for (size_t j = 0; j < w.gate_bias.size(); ++j) {
    w.gate_bias[j] = gub[2 * j];
    w.up_bias[j] = gub[2 * j + 1];
  }
  w.down_bias = to_f32(r.require(block + "down_proj_bias", {E, H}));
  r.any_fused = true;
  if (r.has(block + "gate_up_proj_blocks") || r.has(block + "down_proj_blocks")) {
    if (!r.has(block + "gate_up_proj_blocks") || !r.has(block + "down_proj_blocks"))
      throw Error("BAD_CHECKPOINT", "layer " + std::to_string(l) + ": \"" + block +
                                        "gate_up_proj_blocks\" and \"down_proj_blocks\" must both be present (MXFP4)");
    auto [gb, gs] = mxfp4_tensors(r, cfg, block + "gate_up_proj", E, 2 * I, H);
    auto [db, ds] = mxfp4_tensors(r, cfg, block + "down_proj", E, H, I);
    for (int e = 0; e < E; ++e) {
      w.gate.push_back(mxfp4_mat(*gb, *gs, e, 2 * I, I, H, 2, 0));
      w.up.push_back(mxfp4_mat(*gb, *gs, e, 2 * I, I, H, 2, 1));
      w.down.push_back(mxfp4_mat(*db, *ds, e, H, H, I, 1, 0));
    }
    return;
  }
  const TensorView& gu = r.require(block + "gate_up_proj", {E, H, 2 * I});
  const TensorView& dn = r.require(block + "down_proj", {E, I, H});
  for (int e = 0; e < E; ++e) {
    w.gate.push_back(transposed_mat(gu, e, 2 * I, I, H, 2, 0));
    w.up.push_back(transposed_mat(gu, e, 2 * I, I, H, 2, 1));
    w.down.push_back(transposed_mat(dn, e, H, H, I, 1, 0));
  }
}

const char* no_extras(const std::string&, const ModelConfig&) { return nullptr; }

}  // namespace

const ArchFamily kGptOss{Arch::GptOss, "gpt_oss", read_gpt_oss, load_gpt_oss, no_extras};

}  // namespace routescope
