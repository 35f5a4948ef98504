// PhiMoE and GraniteMoE beyond the parity fixtures: config contradictions named, the routing-rule line, the
// sparsemixer rule with patches and its backward against finite differences, and the methods a sparsemixer router
// refuses (mix, C3PO, rerouting, headroom) with a clear error.
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

const char* kPhimoe = R"({"model_type": "phimoe", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
  "num_hidden_layers": 2, "vocab_size": 64, "intermediate_size": 16, "num_local_experts": 8, "num_experts_per_tok": 2,
  "router_jitter_noise": 0.01, "attention_bias": true, "lm_head_bias": true, "rms_norm_eps": 1e-5,
  "rope_scaling": {"type": "longrope", "original_max_position_embeddings": 16, "short_factor": [1, 1, 1, 1],
                   "long_factor": [1, 2, 3, 4], "short_mscale": 1.1, "long_mscale": 1.2}})";

const char* kGranite = R"({"model_type": "granitemoe", "hidden_size": 32, "num_attention_heads": 4,
  "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 64, "intermediate_size": 16, "num_local_experts": 8,
  "num_experts_per_tok": 2, "embedding_multiplier": 12.0, "attention_multiplier": 0.015625,
  "residual_multiplier": 0.22, "logits_scaling": 6.0})";

}  // namespace

TEST("phimoe / granitemoe config: the fields read, the routing-rule line, contradictions refused naming the field") {
  ModelInfo info;
  ModelConfig c = parse_config(Json::parse(kPhimoe), "config.json", info);
  CHECK(c.router.scoring == Scoring::SparseMixer && c.layer_norm && c.qkv_bias && c.o_bias && c.lm_head_bias);
  CHECK(c.rope.longrope && c.rope.original_max_positions == 16 && c.rope.long_factor[3] == 4.0);
  CHECK(std::fabs(c.rope.theta - 1e6) < 1e-9);  // PhimoeConfig.default_theta
  CHECK_MSG(info.routing_rule == "sparsemixer top-2 of 8 (each slot: best remaining logit, softmax over the logits "
                                 "within 2×0.01 relative of it), not renormalised", info.routing_rule);
  CHECK(info.router_scoring == "sparsemixer");
  CHECK_MSG(config_error(config_with(kPhimoe, {{"num_experts_per_tok", "3"}})).find("\"num_experts_per_tok\" = 3: phimoe's "
                                                                             "sparsemixer router always selects two") != std::string::npos,
            config_error(config_with(kPhimoe, {{"num_experts_per_tok", "3"}})));
  std::string err = config_error(config_with(kPhimoe, {{"rope_scaling", R"({"type": "longrope", "original_max_position_embeddings": 16,
      "short_factor": [1, 1, 1], "long_factor": [1, 2, 3, 4], "short_mscale": 1.1, "long_mscale": 1.2})"}}));
  CHECK_MSG(err.find("\"short_factor\" has 3 values; LongRoPE needs one per rotated pair (4)") != std::string::npos, err);
  err = config_error(config_with(kPhimoe, {{"rope_scaling", R"({"type": "longrope", "original_max_position_embeddings": 16,
      "short_factor": [1, 1, 1, 1], "long_factor": [1, 2, 3, 4], "long_mscale": 1.2})"}}));
  CHECK_MSG(err.find("missing \"short_mscale\"") != std::string::npos, err);
  err = config_error(config_with(kPhimoe, {{"rope_scaling", R"({"type": "longrope", "original_max_position_embeddings": 16,
      "short_factor": [1, 1, 0, 1], "long_factor": [1, 2, 3, 4], "short_mscale": 1.1, "long_mscale": 1.2})"}}));
  CHECK_MSG(err.find("\"short_factor\" holds 0") != std::string::npos, err);
  err = config_error(config_with(kPhimoe, {{"hidden_act", "\"gelu\""}}));
  CHECK_MSG(err.find("\"hidden_act\" \"gelu\" is not supported") != std::string::npos, err);
  err = config_error(config_with(kPhimoe, {{"num_experts", "4"}}));
  CHECK_MSG(err.find("\"num_local_experts\" and \"num_experts\" disagree") != std::string::npos, err);
  // LongRoPE is PhiMoE's: another family naming it is refused.
  err = config_error(config_with(kGranite, {{"rope_scaling", R"({"type": "longrope"})"}}));
  CHECK_MSG(err.find("rope type \"longrope\" is not supported") != std::string::npos, err);

  ModelInfo gi;
  ModelConfig g = parse_config(Json::parse(kGranite), "config.json", gi);
  CHECK(g.router.scoring == Scoring::Softmax && g.router.renorm && !g.layer_norm);
  CHECK(g.embedding_multiplier == 12.f && g.residual_multiplier == 0.22f && g.logits_scaling == 6.f);
  CHECK(g.softmax_scale == 0.015625f);  // attention_multiplier replaces 1/sqrt(head_dim)
  CHECK_MSG(gi.routing_rule == "softmax, top-2 of 8, renormalised", gi.routing_rule);
  err = config_error(config_with(kGranite, {{"logits_scaling", "0"}}));
  CHECK_MSG(err.find("\"logits_scaling\" = 0 is out of range") != std::string::npos, err);
  err = config_error(config_with(kGranite, {{"attention_multiplier", "-1"}}));
  CHECK_MSG(err.find("\"attention_multiplier\" = -1 is out of range") != std::string::npos, err);
}

TEST("sparsemixer: slots, the relative gap, masks and forced experts; the backward matches finite differences") {
  RouterRule rule;
  rule.scoring = Scoring::SparseMixer;
  rule.jitter_eps = 0.1f;  // candidates within 20 % (relative) of the chosen logit share its softmax
  const int E = 6, k = 2;
  const float z[E] = {2.0f, 1.9f, 0.5f, 1.7f, -1.0f, 1.2f};
  std::vector<float> s(k * E);
  int32_t sel[k];
  float w[k];
  bool mixed;
  route_token(rule, z, E, k, nullptr, nullptr, 0, s.data(), sel, w, &mixed);
  // slot 1: expert 0; experts 1 (5 % below) and 3 (15 %) share its softmax. slot 2: expert 1 with 3 (10.5 %).
  const double w0 = std::exp(2.0) / (std::exp(2.0) + std::exp(1.9) + std::exp(1.7));
  const double w1 = std::exp(1.9) / (std::exp(1.9) + std::exp(1.7));
  CHECK(sel[0] == 1 && sel[1] == 0);  // reported by weight: w1 > w0
  CHECK_MSG(std::fabs(w[0] - w1) < 1e-6 && std::fabs(w[1] - w0) < 1e-6, w[0] << " " << w[1]);
  CHECK(s[E + 5] == 0.f && s[E + 2] == 0.f && s[3] > 0.f);

  LayerPatch lp;
  lp.mask = {0};
  lp.force = {4};
  route_token(rule, z, E, k, nullptr, &lp, 0, s.data(), sel, w, &mixed);
  // Forced expert 4 (logit -1): the unmasked experts above it count as within the gap (the rule's ratio is negative
  // for them), so it shares its softmax with all of them; slot 2: expert 1 with 3 (10.5 % below); 0 is masked.
  const double w4 = std::exp(-1.0) / (std::exp(-1.0) + std::exp(1.9) + std::exp(0.5) + std::exp(1.7) + std::exp(1.2));
  CHECK(sel[0] == 1 && std::fabs(w[0] - w1) < 1e-6);
  CHECK_MSG(sel[1] == 4 && std::fabs(w[1] - w4) < 1e-6, w[1] << " vs " << w4);
  lp.mix[0] = std::vector<float>(E, 1.f / E);
  bool threw = false;
  try {
    route_token(rule, z, E, k, nullptr, &lp, 0, s.data(), sel, w, &mixed);
  } catch (const Error& e) {
    threw = std::string(e.what()).find("mix is not defined for the sparsemixer router") != std::string::npos;
  }
  CHECK(threw);

  // d(Σ a_j w_j)/dz against central differences (slots and candidate sets fixed at z).
  route_token(rule, z, E, k, nullptr, nullptr, 0, s.data(), sel, w, &mixed);
  const double a[k] = {0.7, -1.3};
  float dz[E];
  sparsemixer_backward(E, k, s.data(), w, sel, a, dz);
  for (int e = 0; e < E; ++e) {
    auto f = [&](float h) {
      float zz[E];
      for (int i = 0; i < E; ++i) zz[i] = z[i] + (i == e ? h : 0.f);
      std::vector<float> s2(k * E);
      int32_t sel2[k];
      float w2[k];
      bool m2;
      route_token(rule, zz, E, k, nullptr, nullptr, 0, s2.data(), sel2, w2, &m2);
      double v = 0;
      for (int j = 0; j < k; ++j)
        for (int i = 0; i < k; ++i)
          if (sel2[i] == sel[j]) v += a[j] * w2[i];
      return v;
    };
    const double fd = (f(1e-3f) - f(-1e-3f)) / 2e-3;
    CHECK_MSG(std::fabs(fd - dz[e]) < 2e-3, "expert " << e << ": " << dz[e] << " vs " << fd);
  }
}

TEST("phimoe: mix patches, mix gradients, C3PO, rerouting and headroom are refused with the reason") {
  auto model = Model::load(rstest::fixture_model("phimoe-perexpert-f32"), LoadOptions{2, "cpu"});
  std::string err;
  try {
    parse_patch(R"({"layers": {"1": {"mix": {"0": [1, 0, 0, 0, 0, 0, 0, 0]}}}})", model->info());
  } catch (const Error& e) {
    err = e.what();
  }
  CHECK_MSG(err == "patch: layer 1: mix: is not defined for the sparsemixer router (phimoe): it has no score row to replace", err);
  const std::vector<int> tokens = {3, 14, 15, 9, 2, 6};
  auto session = model->create_session();
  GradRequest req;
  req.mix_layer = 1;
  req.mix_position = 2;
  req.mix_logits.assign(8, 0.f);
  err.clear();
  try {
    session->grad(tokens, Patch{}, req);
  } catch (const Error& e) {
    err = std::string(e.code()) + " " + e.what();
  }
  CHECK_MSG(err.find("UNSUPPORTED a mix gradient is not available for the sparsemixer router") == 0, err);
  // Bias gradients are supported (the inference path's softmax per slot).
  GradRequest bias;
  bias.bias_layers = {0, 2};
  GradResult g = session->grad(tokens, Patch{}, bias);
  double norm = 0;
  for (float x : g.bias_grad[2]) norm += std::fabs(x);
  CHECK(std::isfinite(g.loss) && norm > 0);
  err.clear();
  try {
    SampleOptions so;
    so.max_new_tokens = 2;
    generate_rerouted(*model->create_session(), tokens, Patch{}, so, RerouteOptions{});
  } catch (const Error& e) {
    err = e.what();
  }
  CHECK_MSG(err.find("continuous rerouting is not available for the sparsemixer router (phimoe)") == 0, err);
  err.clear();
  try {
    c3po_prefix(*model, tokens, 1, false);
  } catch (const Error& e) {
    err = e.what();
  }
  CHECK_MSG(err.find("C3PO is not available for the sparsemixer router (phimoe)") == 0, err);
  err.clear();
  try {
    HeadroomOptions ho;
    ho.label = 3;
    routing_headroom(*model->create_session(), tokens, ho);
  } catch (const Error& e) {
    err = e.what();
  }
  CHECK_MSG(err.find("routing headroom is not available for the sparsemixer router (phimoe)") == 0, err);
}

TEST("phimoe / granitemoe: token-by-token decoding through the KV cache equals one full forward") {
  for (const char* name : {"phimoe-perexpert-f32", "granitemoe-fused-f32"}) {
    auto model = Model::load(rstest::fixture_model(name), LoadOptions{2, "cpu"});
    const int V = model->info().vocab_size;
    // 12 positions: below phimoe's original_max_position_embeddings (16), so every call uses the short factors.
    const std::vector<int> tokens = {5, 17, 3, 88, 41, 9, 60, 2, 33, 71, 14, 50};
    Patch patch = parse_patch(R"({"layers": {"1": {"mask": [2], "bias": {"4": 0.75}}}})", model->info());
    auto full = model->create_session()->forward(tokens, patch, LogitsMode::All);
    auto session = model->create_session();
    session->forward(std::vector<int>(tokens.begin(), tokens.begin() + 4), patch, LogitsMode::None);
    float worst = 0;
    for (size_t i = 4; i < tokens.size(); ++i) {
      auto step = session->forward({tokens[i]}, patch, LogitsMode::Last);
      for (int v = 0; v < V; ++v) worst = std::max(worst, std::fabs(step.logits[v] - full.logits[i * V + v]));
    }
    CHECK_MSG(worst < 1e-4f, name << ": decode vs full forward differ by " << worst);
  }
}

TEST("phimoe: Phi-3.5-MoE's config.json shape (LongRoPE over 64 pairs, sliding window, biases) reads as released") {
  std::string factors;
  for (int i = 0; i < 64; ++i) factors += (i ? "," : "") + std::to_string(1.0 + 0.03 * i);
  const std::string text = std::string(R"({"architectures": ["PhiMoEForCausalLM"], "attention_bias": true,
    "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 32000, "hidden_act": "silu", "hidden_dropout": 0.0,
    "hidden_size": 4096, "initializer_range": 0.02, "input_jitter_noise": 0.01, "intermediate_size": 6400,
    "lm_head_bias": true, "max_position_embeddings": 131072, "model_type": "phimoe", "num_attention_heads": 32,
    "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 16,
    "original_max_position_embeddings": 4096, "output_router_logits": false, "rms_norm_eps": 1e-05,
    "rope_scaling": {"long_mscale": 1.243163121016122, "original_max_position_embeddings": 4096, "short_mscale": 1.1,
                     "type": "longrope", "long_factor": [)") + factors + R"(], "short_factor": [)" + factors + R"(]},
    "rope_theta": 10000.0, "router_aux_loss_coef": 0.0, "router_jitter_noise": 0.01, "sliding_window": 131072,
    "tie_word_embeddings": false, "torch_dtype": "bfloat16", "vocab_size": 32064})";
  ModelInfo info;
  ModelConfig c = parse_config(Json::parse(text), "config.json", info);
  CHECK(c.head_dim == 128 && c.rope.dims == 128 && c.rope.long_factor.size() == 64 && c.rope.theta == 10000.0);
  CHECK(c.sliding_window == 131072 && c.experts == 16 && c.top_k == 2 && c.expert_width == 6400);
  CHECK(std::fabs(c.router.jitter_eps - 0.01f) < 1e-9 && c.eps == 1e-5f && c.lm_head_bias && c.o_bias);
  CHECK(info.eos_token_ids == std::vector<int>{32000});
}
