// Llama 4 beyond the parity fixtures: config fields and transformers' defaults, the nested vision-language config,
// contradictions refused naming the field, the routing rule (top-k by logit, where sigmoid saturates), decoding
// through the KV cache across attention chunks, the vision tower left alone, and headroom refused with the reason.
#include <cmath>
#include <string>
#include <vector>

#include "cpu/router.h"
#include "model/config.h"
#include "routescope/adapt.h"
#include "routescope/engine.h"
#include "test.h"
#include "util/json.h"

using namespace routescope;

namespace {
using rstest::config_error;
using rstest::config_with;

const char* kText = R"({"model_type": "llama4_text", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
  "num_hidden_layers": 4, "vocab_size": 64, "head_dim": 8, "intermediate_size": 16, "intermediate_size_mlp": 48,
  "num_local_experts": 8, "num_experts_per_tok": 1, "interleave_moe_layer_step": 2, "attention_chunk_size": 8,
  "floor_scale": 4, "attn_scale": 0.5,
  "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 16}, "rope_theta": 10000.0})";

// The vision-language wrapper around a text config.
std::string nested(const std::string& text, const std::string& extra = "") {
  return R"({"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"], "tie_word_embeddings": false,
    "vision_config": {"model_type": "llama4_vision_model"}, "text_config": )" + text + extra + "}";
}

void expect_error(const std::string& text, const std::string& part) {
  const std::string err = config_error(text);
  CHECK_MSG(err.find(part) != std::string::npos, "expected \"" << part << "\", got \"" << err << "\"");
  CHECK_MSG(err.find('\n') == std::string::npos, err);
}

}  // namespace

TEST("llama4 config: the fields read, transformers' defaults, the routing-rule line") {
  ModelInfo info;
  ModelConfig c = parse_config(Json::parse(kText), "config.json", info);
  CHECK(c.arch == Arch::Llama4 && c.router.scoring == Scoring::Sigmoid && !c.router.renorm && c.router.select_by_logit);
  CHECK(c.expert_mlp.input_scaled && c.shared_width == 16 && !c.shared_gated && c.dense_width == 48);
  CHECK((c.moe_layer == std::vector<bool>{false, true, false, true}));  // interleave_moe_layer_step 2
  // no_rope_layer_interval 4: layer 3 is NoPE; layer_types default: chunked on the RoPE layers.
  CHECK((c.layer_nope == std::vector<uint8_t>{0, 0, 0, 1}));
  CHECK((c.layer_chunk == std::vector<int>{8, 8, 8, 0}));
  CHECK(c.qk_norm == QKNorm::PerHeadL2 && c.temperature.on && c.temperature.floor_scale == 4 && c.temperature.attn_scale == 0.5);
  CHECK(c.rope.llama3 && c.rope.factor == 8 && c.rope.original_max_positions == 16 && c.rope.layout == RopeLayout::Interleaved);
  CHECK(c.eps == 1e-5f && c.max_positions == 131072 && c.weight_prefix.empty());
  // log1p(floor((p + 1) / 4)) · 0.5 + 1
  CHECK(c.temperature.factor(2) == 1.f && std::fabs(c.temperature.factor(3) - (std::log1p(1.0) * 0.5 + 1)) < 1e-6);
  CHECK_MSG(info.routing_rule == "sigmoid, top-1 of 8 by logit, not renormalised, the weight scales the expert's input",
            info.routing_rule);
  CHECK(info.router_scoring == "sigmoid");
  // Absent fields take Llama4TextConfig's defaults: head_dim 128, theta 500000, 16 experts, chunk 8192.
  ModelInfo di;
  ModelConfig d = parse_config(Json::parse(config_with(kText, {{"head_dim", ""}, {"rope_scaling", ""}, {"rope_theta", ""},
                                                        {"num_local_experts", ""}, {"attention_chunk_size", ""}})),
                               "config.json", di);
  CHECK(d.head_dim == 128 && d.rope.theta == 500000.0 && !d.rope.llama3 && d.experts == 16 && d.layer_chunk[0] == 8192);
  ModelConfig n = parse_config(Json::parse(config_with(kText, {{"head_dim", "null"}})), "config.json", di);
  CHECK(n.head_dim == 8);  // null: hidden_size / num_attention_heads
  // Explicit lists.
  ModelConfig e = parse_config(Json::parse(config_with(kText, {{"moe_layers", "[0, 2]"}, {"no_rope_layers", "[1, 0, 1, 1]"},
      {"layer_types", R"(["chunked_attention", "full_attention", "full_attention", "chunked_attention"])"},
      {"use_qk_norm", "false"}, {"attn_temperature_tuning", "false"}})), "config.json", di);
  CHECK((e.moe_layer == std::vector<bool>{true, false, true, false}));
  CHECK((e.layer_nope == std::vector<uint8_t>{0, 1, 0, 0}));
  CHECK((e.layer_chunk == std::vector<int>{8, 0, 0, 8}));
  CHECK(e.qk_norm == QKNorm::None && !e.temperature.on);
  // Scout and Maverick ship "attn_temperature_tuning": 4 (transformers tests its truth).
  CHECK(parse_config(Json::parse(config_with(kText, {{"attn_temperature_tuning", "4"}})), "config.json", di).temperature.on);
  CHECK(!parse_config(Json::parse(config_with(kText, {{"attn_temperature_tuning", "0"}})), "config.json", di).temperature.on);
}

TEST("llama4 config: the vision-language checkpoint's nested text_config, its weights under language_model.") {
  ModelInfo info;
  ModelConfig c = parse_config(Json::parse(nested(config_with(kText, {{"torch_dtype", "\"bfloat16\""}}))), "config.json", info);
  CHECK(info.model_type == "llama4" && c.arch == Arch::Llama4 && c.weight_prefix == "language_model.");
  CHECK(c.dtype == "bfloat16" && c.experts == 8 && c.layer_chunk[0] == 8);
  // The text config may omit its model_type; the wrapper's dtype applies when the text config has none.
  ModelConfig d = parse_config(Json::parse(config_with(nested(config_with(kText, {{"model_type", ""}})), {{"torch_dtype", "\"float32\""}})),
                               "config.json", info);
  CHECK(d.dtype == "float32" && d.weight_prefix == "language_model.");
  expect_error(config_with(nested(kText), {{"text_config", ""}}), "config.json: \"text_config\" must be an object holding the text "
                                                           "model's config (model_type llama4)");
  expect_error(nested(config_with(kText, {{"model_type", "\"mixtral\""}})),
               "config.json: text_config: model_type \"mixtral\" is not the text model of llama4");
  expect_error(config_with(nested(config_with(kText, {{"tie_word_embeddings", "true"}})), {}),
               "\"tie_word_embeddings\" and \"text_config.tie_word_embeddings\" disagree");
  expect_error(nested(config_with(kText, {{"quantization_config", R"({"quant_method": "fp8"})"}})),
               "text_config: \"quantization_config\" belongs at the top level of config.json");
  expect_error(nested(config_with(kText, {{"attention_chunk_size", "0"}})),
               "config.json: text_config: \"attention_chunk_size\" = 0 must be positive");
}

TEST("llama4 config: contradictions refused in one line naming the field") {
  expect_error(config_with(kText, {{"num_experts_per_tok", "9"}}), "num_experts_per_tok (9) must be between 1 and the number of experts (8)");
  expect_error(config_with(kText, {{"no_rope_layers", "[1, 1, 0]"}}),
               "\"no_rope_layers\" has 3 entries; it needs one per layer (4, num_hidden_layers)");
  expect_error(config_with(kText, {{"no_rope_layers", "[1, 1, 2, 1]"}}), "\"no_rope_layers\" holds 2; entries are 0 (NoPE) or 1 (RoPE)");
  expect_error(config_with(kText, {{"attention_chunk_size", "0"}}), "\"attention_chunk_size\" = 0 must be positive");
  expect_error(config_with(kText, {{"attention_chunk_size", "-8"}}), "\"attention_chunk_size\" = -8 must be positive");
  expect_error(config_with(kText, {{"attention_chunk_size", "null"}}),
               "layer 0 is chunked_attention but \"attention_chunk_size\" is null");
  expect_error(config_with(kText, {{"layer_types", R"(["chunked_attention", "sliding_attention", "full_attention", "full_attention"])"}}),
               "\"layer_types\"[1] is \"sliding_attention\" (chunked_attention or full_attention)");
  expect_error(config_with(kText, {{"layer_types", R"(["full_attention"])"}}),
               "\"layer_types\" must list chunked_attention or full_attention once per layer (4, num_hidden_layers)");
  expect_error(config_with(kText, {{"moe_layers", "[1, 4]"}}), "\"moe_layers\" holds 4, not a layer number below num_hidden_layers (4)");
  expect_error(config_with(kText, {{"interleave_moe_layer_step", "0"}}), "\"interleave_moe_layer_step\" = 0 is out of range");
  expect_error(config_with(kText, {{"hidden_act", "\"gelu\""}}), "\"hidden_act\" \"gelu\" is not supported for llama4 (silu is)");
  expect_error(config_with(kText, {{"floor_scale", "0"}}), "\"floor_scale\" = 0 is out of range");
  expect_error(config_with(kText, {{"head_dim", "7"}}), "\"head_dim\" (7) must be even and at least 2");
  expect_error(config_with(kText, {{"rope_scaling", R"({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                                                 "original_max_position_embeddings": 16})"}}),
               "rope_scaling: missing \"low_freq_factor\" (rope_type llama3 needs factor, low_freq_factor, high_freq_factor "
               "and original_max_position_embeddings)");
  expect_error(config_with(kText, {{"rope_scaling", R"({"rope_type": "yarn", "factor": 8.0})"}}),
               "rope type \"yarn\" is not supported for llama4");
  expect_error(config_with(kText, {{"partial_rotary_factor", "0.5"}}), "\"partial_rotary_factor\" is not supported for llama4");
}

TEST("llama4 router: top-k by logit where sigmoid rounds both to 1, the weight is sigmoid of the logit") {
  RouterRule rule;
  rule.scoring = Scoring::Sigmoid;
  rule.select_by_logit = true;
  const std::vector<float> z = {20.f, 31.f, -3.f, 25.f};  // sigmoid(20) == sigmoid(25) == sigmoid(31) == 1 in fp32
  std::vector<float> s(4), w(2);
  std::vector<int32_t> sel(2);
  bool mixed = false;
  route_token(rule, z.data(), 4, 2, nullptr, nullptr, 0, s.data(), sel.data(), w.data(), &mixed);
  CHECK_MSG(sel[0] == 1 && sel[1] == 3, sel[0] << ", " << sel[1]);
  CHECK(w[0] == 1.f && w[1] == 1.f && s[2] > 0.f);
  // A bias patch moves the logits the selection ranks; a mask removes an expert.
  LayerPatch lp;
  lp.bias = {12.f, 0.f, 0.f, 0.f};
  lp.mask = {1};
  route_token(rule, z.data(), 4, 2, nullptr, &lp, 0, s.data(), sel.data(), w.data(), &mixed);
  CHECK_MSG(sel[0] == 0 && sel[1] == 3, sel[0] << ", " << sel[1]);
}

TEST("llama4: token-by-token decoding through the KV cache equals one full forward across attention chunks") {
  for (const char* name : {"llama4_text-fused-f32", "llama4-fused-bf16-sharded"}) {
    auto model = Model::load(rstest::fixture_model(name), LoadOptions{2, "cpu"});
    const int V = model->info().vocab_size;
    // 20 positions: chunks of 8 start at 0, 8 and 16; the NoPE layer's temperature factor changes every 4.
    const std::vector<int> tokens = {5, 17, 3, 88, 41, 9, 60, 2, 33, 71, 14, 50, 8, 19, 77, 23, 64, 1, 45, 30};
    const int l = model->info().moe_layers.front();
    Patch patch = parse_patch(R"({"layers": {")" + std::to_string(l) + R"(": {"mask": [2], "bias": {"4": 0.75}}}})", model->info());
    auto full = model->create_session()->forward(tokens, patch, LogitsMode::All);
    auto session = model->create_session();
    session->forward(std::vector<int>(tokens.begin(), tokens.begin() + 5), patch, LogitsMode::None);
    float worst = 0;
    for (size_t i = 5; i < tokens.size(); ++i) {
      auto step = session->forward({tokens[i]}, patch, LogitsMode::Last);
      for (int v = 0; v < V; ++v) worst = std::max(worst, std::fabs(step.logits[v] - full.logits[i * V + v]));
    }
    CHECK_MSG(worst < 1e-4f, name << ": decode vs full forward differ by " << worst);
  }
}

TEST("llama4: the vision tower is named in a warning; headroom is refused with the reason") {
  auto model = Model::load(rstest::fixture_model("llama4-fused-bf16-sharded"), LoadOptions{2, "cpu"});
  const ModelInfo& info = model->info();
  CHECK(info.model_type == "llama4" && info.expert_layout == "fused");
  bool warned = false;
  for (const auto& w : info.warnings)
    warned |= w.find("3 tensors not used: the vision tower and its projector (the engine runs the text model)") == 0;
  CHECK_MSG(warned, (info.warnings.empty() ? std::string("no warning") : info.warnings.front()));
  std::string err;
  try {
    HeadroomOptions ho;
    ho.label = 3;
    routing_headroom(*model->create_session(), {3, 14, 15, 9, 2, 6}, ho);
  } catch (const Error& e) {
    err = std::string(e.code()) + " " + e.what();
  }
  CHECK_MSG(err.find("UNSUPPORTED routing headroom is not available for llama4: ") == 0, err);
}
