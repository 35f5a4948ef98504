// Config validation (bounds, finiteness, contradictions) and the router rule (groups, selection bias, patches).
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "cpu/router.h"
#include "model/config.h"
#include "routescope/engine.h"
#include "test.h"
#include "util/json.h"

using namespace routescope;
namespace fs = std::filesystem;

namespace {
using rstest::config_error;

std::string read_text(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The demo model's config.json with fields replaced or added (raw JSON text of the values).
std::string demo_with(const std::string& key, const std::string& raw, std::map<std::string, std::string> more = {}) {
  more[key] = raw;
  const fs::path demo = fs::path(rstest::fixtures_dir) / ".." / ".." / "media" / "demo-model" / "config.json";
  return rstest::config_with(read_text(demo), {more.begin(), more.end()});
}

}  // namespace

TEST("config: 1073741856 heads of 4 (heads × head_dim overflows 32 bits) are refused naming the field, not run") {
  const std::string text = demo_with("num_attention_heads", "1073741856", {{"num_key_value_heads", "1073741856"}, {"head_dim", "4"}});
  const std::string err = config_error(text);
  CHECK_MSG(err.find("\"num_attention_heads\" = 1073741856 is out of range") != std::string::npos, err);
  // The same overflow through the whole engine: Model::load refuses before mapping anything large.
  const fs::path dir = fs::temp_directory_path() / "routescope-config-test";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path demo = fs::path(rstest::fixtures_dir) / ".." / ".." / "media" / "demo-model";
  for (const auto& f : fs::directory_iterator(demo)) fs::copy(f.path(), dir / f.path().filename());
  { std::ofstream(dir / "config.json") << text; }
  try {
    Model::load(dir.string(), LoadOptions{1, "cpu"});
    CHECK_MSG(false, "loaded");
  } catch (const Error& e) {
    CHECK_MSG(e.code() == "BAD_CONFIG" && std::string(e.what()).find("num_attention_heads") != std::string::npos, e.what());
  }
  fs::remove_all(dir);
}

TEST("config: non-finite or non-positive floats are refused (rms_norm_eps, rope_theta)") {
  for (const char* raw : {"0", "-1e-6", "NaN", "Infinity"}) {
    const std::string err = config_error(demo_with("rms_norm_eps", raw));
    CHECK_MSG(err.find("\"rms_norm_eps\"") != std::string::npos && err.find("out of range") != std::string::npos, raw << ": " << err);
  }
  for (const char* raw : {"-10000.0", "0", "NaN", "-Infinity"}) {
    const std::string err = config_error(demo_with("rope_theta", raw));
    CHECK_MSG(err.find("\"rope_theta\"") != std::string::npos, raw << ": " << err);
  }
  CHECK(config_error(demo_with("rms_norm_eps", "1e-5")).empty());
}

TEST("config: DeepSeek-V2-Lite's and Moonlight's config.json read as their models define them") {
  const std::string lite = R"({"architectures":["DeepseekV2ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,
    "aux_loss_alpha":0.001,"bos_token_id":100000,"eos_token_id":100001,"first_k_dense_replace":1,"hidden_act":"silu",
    "hidden_size":2048,"initializer_range":0.02,"intermediate_size":10944,"kv_lora_rank":512,
    "max_position_embeddings":163840,"model_type":"deepseek_v2","moe_intermediate_size":1408,"moe_layer_freq":1,
    "n_group":1,"n_routed_experts":64,"n_shared_experts":2,"norm_topk_prob":false,"num_attention_heads":16,
    "num_experts_per_tok":6,"num_hidden_layers":27,"num_key_value_heads":16,"pretraining_tp":1,"q_lora_rank":null,
    "qk_nope_head_dim":128,"qk_rope_head_dim":64,"rms_norm_eps":1e-06,"rope_scaling":{"beta_fast":32,"beta_slow":1,
    "factor":40,"mscale":0.707,"mscale_all_dim":0.707,"original_max_position_embeddings":4096,"type":"yarn"},
    "rope_theta":10000,"routed_scaling_factor":1.0,"scoring_func":"softmax","seq_aux":true,"tie_word_embeddings":false,
    "topk_group":1,"topk_method":"greedy","torch_dtype":"bfloat16","transformers_version":"4.33.1","use_cache":true,
    "v_head_dim":128,"vocab_size":102400})";
  ModelInfo info;
  ModelConfig c = parse_config(Json::parse(lite), "config.json", info);
  CHECK(c.attention == AttentionKind::Latent && c.mla.q_lora_rank == 0 && c.mla.kv_lora_rank == 512);
  CHECK(c.head_dim == 192 && c.v_head_dim == 128 && c.rope.dims == 64 && c.rope.layout == RopeLayout::Interleaved);
  CHECK(c.rope.yarn && c.rope.factor == 40 && std::fabs(c.rope.attention_factor - 1.0) < 1e-12);
  const double mscale = 0.1 * 0.707 * std::log(40.0) + 1.0;
  CHECK_MSG(std::fabs(c.softmax_scale - 1.0 / std::sqrt(192.0) * mscale * mscale) < 1e-7, c.softmax_scale);
  CHECK(c.experts == 64 && c.top_k == 6 && c.shared_width == 2 * 1408 && !c.moe_layer[0] && c.moe_layer[1]);
  CHECK_MSG(info.routing_rule == "softmax, top-6 of 64, not renormalised", info.routing_rule);

  const std::string moonlight = R"({"architectures":["DeepseekV3ForCausalLM"],"attention_bias":false,
    "attention_dropout":0.0,"aux_loss_alpha":0.001,"bos_token_id":163584,"eos_token_id":163586,"ep_size":1,
    "first_k_dense_replace":1,"hidden_act":"silu","hidden_size":2048,"initializer_range":0.02,
    "intermediate_size":11264,"kv_lora_rank":512,"max_position_embeddings":8192,"model_type":"deepseek_v3",
    "moe_intermediate_size":1408,"moe_layer_freq":1,"n_group":1,"n_routed_experts":64,"n_shared_experts":2,
    "norm_topk_prob":true,"num_attention_heads":16,"num_experts_per_tok":6,"num_hidden_layers":27,
    "num_key_value_heads":16,"num_nextn_predict_layers":0,"pretraining_tp":1,"q_lora_rank":null,
    "qk_nope_head_dim":128,"qk_rope_head_dim":64,"rms_norm_eps":1e-05,"rope_theta":50000.0,
    "routed_scaling_factor":2.446,"scoring_func":"sigmoid","seq_aux":true,"tie_word_embeddings":false,
    "topk_group":1,"topk_method":"noaux_tc","torch_dtype":"bfloat16","transformers_version":"4.46.3",
    "use_cache":true,"v_head_dim":128,"vocab_size":163840})";
  ModelInfo info3;
  ModelConfig m = parse_config(Json::parse(moonlight), "config.json", info3);
  CHECK(m.router.scoring == Scoring::Sigmoid && m.router.selection_bias && m.router.renorm && m.router.groups == 1);
  CHECK(!m.rope.yarn && m.rope.theta == 50000.0 && std::fabs(m.softmax_scale - 1.0 / std::sqrt(192.0)) < 1e-7);
  CHECK_MSG(info3.routing_rule == "sigmoid + selection bias, top-6 of 64, renormalised, ×2.446", info3.routing_rule);
}

TEST("router: group-limited selection, selection bias for choice only, masks and forced experts") {
  // 8 experts in 4 groups of 2; sigmoid scores; keep 2 groups by the sum of their two best choices.
  RouterRule r;
  r.scoring = Scoring::Sigmoid;
  r.selection_bias = true;
  r.groups = 4;
  r.groups_kept = 2;
  r.group_score = GroupScore::TopTwoSum;
  r.renorm = true;
  r.scale = 2.f;
  auto z_of = [&](std::initializer_list<float> s) {  // logits whose sigmoids are s
    std::vector<float> z;
    for (float v : s) z.push_back(std::log(v / (1 - v)));
    return z;
  };
  std::vector<float> z = z_of({0.9f, 0.1f, 0.6f, 0.6f, 0.8f, 0.05f, 0.3f, 0.3f});
  std::vector<float> bias = {0, 0, 0, 0, 0, 0, 0.35f, 0};
  std::vector<float> s(8), w(2);
  std::vector<int32_t> sel(2);
  bool mixed = false;
  route_token(r, z.data(), 8, 2, bias.data(), nullptr, 0, s.data(), sel.data(), w.data(), &mixed);
  // Group sums of the two best choices: g0 1.0, g1 1.2, g2 0.85, g3 0.95 (0.65 + 0.3): g1 and g0 are kept.
  // Chosen by choice: 0 (0.9) and 2 or 3 (0.6, lower index 2). Weights from the unbiased scores, renormalised × 2.
  CHECK_MSG(sel[0] == 0 && sel[1] == 2, sel[0] << "," << sel[1]);
  CHECK(std::fabs(w[0] - 2 * 0.9f / 1.5f) < 1e-5 && std::fabs(w[1] - 2 * 0.6f / 1.5f) < 1e-5);
  // Masking expert 0 drops group 0's score to 0.1: groups 1 and 3 stay; expert 6 (choice 0.65) beats 2 and 3 (0.6).
  LayerPatch lp;
  lp.mask = {0};
  route_token(r, z.data(), 8, 2, bias.data(), &lp, 0, s.data(), sel.data(), w.data(), &mixed);
  CHECK_MSG(((sel[0] == 2 && sel[1] == 6) || (sel[0] == 6 && sel[1] == 2)), sel[0] << "," << sel[1]);
  CHECK(s[0] == 0.f);
  // A forced expert outside the kept groups is taken; the other slot comes from the kept groups.
  LayerPatch force;
  force.force = {5};
  route_token(r, z.data(), 8, 2, bias.data(), &force, 0, s.data(), sel.data(), w.data(), &mixed);
  CHECK_MSG((sel[0] == 0 && sel[1] == 5), sel[0] << "," << sel[1]);
  // Softmax router, group score = max (DeepSeek-V2 group_limited_greedy), not renormalised.
  RouterRule v2;
  v2.groups = 4;
  v2.groups_kept = 1;
  v2.scale = 1.5f;
  std::vector<float> zs = {0, 0, 1, 3, 2.9f, 2.9f, 0, 0};
  route_token(v2, zs.data(), 8, 2, nullptr, nullptr, 0, s.data(), sel.data(), w.data(), &mixed);
  CHECK_MSG(sel[0] == 3 && sel[1] == 2, sel[0] << "," << sel[1]);  // group 1 has the max (3), not group 2 (2.9 + 2.9)
  double sum = 0;
  for (float v : s) sum += v;
  CHECK(std::fabs(sum - 1) < 1e-6 && std::fabs(w[0] - 1.5f * s[3]) < 1e-6);
}

TEST("router: the weight and scoring backward match finite differences (sigmoid, renormalised, scaled)") {
  RouterRule r;
  r.scoring = Scoring::Sigmoid;
  r.renorm = true;
  r.scale = 2.5f;
  const int E = 6, k = 3;
  std::vector<float> z = {0.3f, -1.2f, 0.8f, 0.1f, -0.4f, 1.1f};
  const double a[k] = {0.7, -0.2, 0.4};  // dLoss/dweight_j / scale-free outputs
  std::vector<float> s(E), w(k);
  std::vector<int32_t> sel(k);
  bool mixed;
  route_token(r, z.data(), E, k, nullptr, nullptr, 0, s.data(), sel.data(), w.data(), &mixed);
  std::vector<double> ds(E);
  std::vector<float> dz(E);
  weights_backward(r, E, k, s.data(), sel.data(), a, ds.data());
  scoring_backward(r.scoring, E, s.data(), ds.data(), dz.data());
  auto loss = [&](const std::vector<float>& zz) {  // sum_j a_j w_j with the selection held as `sel`
    std::vector<float> ss(E), ww(k);
    std::vector<int32_t> se(k);
    bool m;
    route_token(r, zz.data(), E, k, nullptr, nullptr, 0, ss.data(), se.data(), ww.data(), &m);
    double L = 0;
    for (int j = 0; j < k; ++j)
      for (int i = 0; i < k; ++i)
        if (se[i] == sel[j]) L += a[j] * ww[i];
    return L;
  };
  for (int e = 0; e < E; ++e) {
    std::vector<float> zp = z, zm = z;
    zp[e] += 1e-3f, zm[e] -= 1e-3f;
    const double fd = (loss(zp) - loss(zm)) / 2e-3;
    CHECK_MSG(std::fabs(fd - dz[e]) < 2e-4, "expert " << e << ": " << dz[e] << " vs " << fd);
  }
}

TEST("config: per-layer lists name real layers and known kinds (mlp_only_layers, layer_types), read as one rule") {
  const std::string qwen = demo_with("model_type", "\"qwen2_moe\"", {{"shared_expert_intermediate_size", "64"}, {"moe_intermediate_size", "32"}});
  CHECK_MSG(config_error(qwen).empty(), config_error(qwen));
  std::string err = config_error(demo_with("model_type", "\"qwen2_moe\"", {{"shared_expert_intermediate_size", "64"}, {"moe_intermediate_size", "32"}, {"mlp_only_layers", "[1, 4]"}}));
  CHECK_MSG(err.find("\"mlp_only_layers\" holds 4, not a layer number below num_hidden_layers (4)") != std::string::npos, err);
  err = config_error(demo_with("model_type", "\"qwen2_moe\"", {{"shared_expert_intermediate_size", "64"}, {"moe_intermediate_size", "32"}, {"mlp_only_layers", "2"}}));
  CHECK_MSG(err.find("\"mlp_only_layers\" must be a list of layer numbers") != std::string::npos, err);
  ModelInfo info;
  const ModelConfig cfg = parse_config(Json::parse(demo_with("model_type", "\"qwen2_moe\"", {{"shared_expert_intermediate_size", "64"}, {"moe_intermediate_size", "32"}, {"mlp_only_layers", "[0, 3]"}})), "config.json", info);
  CHECK(cfg.moe_layer == std::vector<bool>({false, true, true, false}));
}
