// config.json -> ModelConfig: the fields every architecture shares, RoPE, and the dispatch to arch_*.cpp.
#include "model/config.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <set>

#include "model/arch.h"

namespace routescope {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Mixtral: return "mixtral";
    case Arch::Olmoe: return "olmoe";
    case Arch::Qwen2Moe: return "qwen2_moe";
    case Arch::Qwen3Moe: return "qwen3_moe";
    case Arch::DeepseekV2: return "deepseek_v2";
    case Arch::DeepseekV3: return "deepseek_v3";
    case Arch::Glm4Moe: return "glm4_moe";
    case Arch::Phimoe: return "phimoe";
    case Arch::GraniteMoe: return "granitemoe";
    case Arch::GptOss: return "gpt_oss";
    case Arch::Llama4: return "llama4_text";
  }
  return "?";
}

namespace {

std::string format_number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

}  // namespace

const char* scoring_name(Scoring s) {
  switch (s) {
    case Scoring::Softmax: return "softmax";
    case Scoring::Sigmoid: return "sigmoid";
    case Scoring::SparseMixer: return "sparsemixer";
  }
  return "?";
}

std::string describe_router(const RouterRule& r, int experts, int top_k) {
  if (r.scoring == Scoring::SparseMixer)
    return "sparsemixer top-" + std::to_string(top_k) + " of " + std::to_string(experts) +
           " (each slot: best remaining logit, softmax over the logits within 2×" + format_number(r.jitter_eps) +
           " relative of it), not renormalised";
  std::string s = scoring_name(r.scoring);
  if (r.selection_bias) s += " + selection bias";
  s += ", ";
  if (r.groups > 1) s += "group-limited ";
  s += "top-" + std::to_string(top_k) + " of " + std::to_string(experts);
  if (r.groups > 1)
    s += " (" + std::to_string(r.groups) + " groups, " + std::to_string(r.groups_kept) + " kept, group score " +
         (r.group_score == GroupScore::Max ? "max" : "sum of top-2") + ")";
  if (r.select_by_logit) s += " by logit";
  s += r.renorm ? ", renormalised" : ", not renormalised";
  if (r.scale != 1.f) s += ", ×" + format_number(r.scale);
  return s;
}

const Json* ConfigReader::get(const std::string& key) const {
  const Json* v = root_.find(key);
  if (v && v->is_null()) return nullptr;
  return v;
}

void ConfigReader::fail(const std::string& what) const { throw Error("BAD_CONFIG", path_ + ": " + what); }

int ConfigReader::integer(const std::string& key, int lo, int hi) const {
  const Json* v = get(key);
  if (!v) fail("missing \"" + key + "\"");
  int64_t x;
  if (!v->as_int64(x)) fail("\"" + key + "\" must be an integer (got " + v->dump() + ")");
  if (x < lo || x > hi)
    fail("\"" + key + "\" = " + std::to_string(x) + " is out of range (" + std::to_string(lo) + ".." + std::to_string(hi) + ")");
  return static_cast<int>(x);
}

int ConfigReader::integer(const std::string& key, int lo, int hi, int fallback) const {
  return get(key) ? integer(key, lo, hi) : fallback;
}

int ConfigReader::integer_alias(const std::string& key, const std::string& alias, int lo, int hi) const {
  const Json* a = get(key);
  const Json* b = get(alias);
  if (a && b && a->dump() != b->dump()) fail("\"" + key + "\" and \"" + alias + "\" disagree (" + a->dump() + " vs " + b->dump() + ")");
  if (!a && !b) fail("missing \"" + key + "\" (or \"" + alias + "\")");
  return integer(a ? key : alias, lo, hi);
}

double ConfigReader::number(const std::string& key, double fallback, double lo, double hi, bool lo_open) const {
  const Json* v = get(key);
  if (!v) return fallback;
  if (!v->is_number()) fail("\"" + key + "\" must be a number (got " + v->dump() + ")");
  const double x = v->as_number();
  if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
    fail("\"" + key + "\" = " + v->dump() + " is out of range (" + (lo_open ? "> " : ">= ") + format_number(lo) +
         (std::isinf(hi) ? "" : " and <= " + format_number(hi)) + ", finite)");
  return x;
}

bool ConfigReader::boolean(const std::string& key, bool fallback) const {
  const Json* v = get(key);
  if (!v) return fallback;
  if (!v->is_bool()) fail("\"" + key + "\" must be true or false");
  return v->as_bool();
}

std::string ConfigReader::string(const std::string& key, const std::string& fallback) const {
  const Json* v = get(key);
  if (!v) return fallback;
  if (!v->is_string()) fail("\"" + key + "\" must be a string");
  return v->as_string();
}

std::vector<bool> ConfigReader::layer_set(const std::string& key, int layers) const {
  const Json* v = get(key);
  if (!v->is_array()) fail("\"" + key + "\" must be a list of layer numbers");
  std::vector<bool> in(layers, false);
  for (const Json& x : v->items()) {
    int64_t l;
    if (!x.as_int64(l) || l < 0 || l >= layers)
      fail("\"" + key + "\" holds " + x.dump() + ", not a layer number below num_hidden_layers (" + std::to_string(layers) + ")");
    in[l] = true;
  }
  return in;
}

std::vector<int> ConfigReader::layer_kinds(const std::string& key, int layers, const std::vector<std::string>& kinds) const {
  std::string names;
  for (const std::string& k : kinds) names += (names.empty() ? "" : " or ") + k;
  const Json* v = get(key);
  if (!v->is_array() || static_cast<int>(v->items().size()) != layers)
    fail("\"" + key + "\" must list " + names + " once per layer (" + std::to_string(layers) + ", num_hidden_layers)");
  std::vector<int> out(layers);
  for (int l = 0; l < layers; ++l) {
    const Json& t = v->items()[l];
    const auto it = t.is_string() ? std::find(kinds.begin(), kinds.end(), t.as_string()) : kinds.end();
    if (it == kinds.end()) fail("\"" + key + "\"[" + std::to_string(l) + "] is " + t.dump() + " (" + names + ")");
    out[l] = static_cast<int>(it - kinds.begin());
  }
  return out;
}

namespace {

constexpr double kInf = INFINITY;

// LongRoPE as PhiMoE uses it: short/long per-frequency factors and the cos/sin factors short_mscale/long_mscale
// (which replace the attention_factor transformers' generic LongRoPE derives).
void read_longrope(const ConfigReader& d, ModelConfig& cfg) {
  RopeConfig& r = cfg.rope;
  r.longrope = true;
  r.original_max_positions = d.integer("original_max_position_embeddings", 1, limits::kPositions);
  for (const char* key : {"short_factor", "long_factor"}) {
    const Json* f = d.get(key);
    if (!f || !f->is_array()) d.fail(std::string("\"") + key + "\" must be a list of numbers (LongRoPE)");
    std::vector<double>& out = std::string(key) == "short_factor" ? r.short_factor : r.long_factor;
    for (const Json& x : f->items()) {
      if (!x.is_number() || !std::isfinite(x.as_number()) || !(x.as_number() > 0))
        d.fail(std::string("\"") + key + "\" holds " + x.dump() + "; LongRoPE factors must be positive numbers");
      out.push_back(x.as_number());
    }
  }
  for (const char* key : {"short_mscale", "long_mscale"})
    if (!d.get(key)) d.fail(std::string("missing \"") + key + "\" (PhiMoE's LongRoPE needs short_mscale and long_mscale)");
  r.short_mscale = d.number("short_mscale", 1.0, 0.0, 1e3, true);
  r.long_mscale = d.number("long_mscale", 1.0, 0.0, 1e3, true);
}

// RoPE as transformers reads it: a nested rope_parameters (v5) or rope_scaling (v4) dict, whose own rope_theta
// wins over the top-level one; partial_rotary_factor at either level (the top-level one wins).
void read_rope(const ConfigReader& c, ModelConfig& cfg, int rotary_head_dim) {
  const Json* dict = nullptr;
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    const Json* rp = c.get(key);
    if (!rp) continue;
    if (!rp->is_object()) c.fail("\"" + std::string(key) + "\" must be an object");
    if (!dict || rp->members().size() > dict->members().size()) dict = rp;  // rope_parameters may be {} beside rope_scaling
  }
  RopeConfig& r = cfg.rope;
  r.theta = c.number("rope_theta", r.theta, 0.0, kInf, true);  // a family may set its default first
  double partial = c.number("partial_rotary_factor", 1.0, 0.0, 1.0, true);
  std::string type = "default";
  if (dict) {
    ConfigReader d(*dict, c.path() + ": " + (dict == c.get("rope_parameters") ? "rope_parameters" : "rope_scaling"));
    r.theta = d.number("rope_theta", r.theta, 0.0, kInf, true);  // the nested one wins, as in transformers
    if (!c.get("partial_rotary_factor")) partial = d.number("partial_rotary_factor", 1.0, 0.0, 1.0, true);
    type = d.string("rope_type", d.string("type", "default"));
    if (type == "yarn") {
      r.yarn = true;
      const double orig = d.number("original_max_position_embeddings", cfg.max_positions, 1.0, limits::kPositions);
      r.original_max_positions = orig;
      r.factor = d.number("factor", cfg.max_positions / orig, 1.0, 1e6);
      r.beta_fast = d.number("beta_fast", 32.0, 0.0, 1e6, true);
      r.beta_slow = d.number("beta_slow", 1.0, 0.0, 1e6, true);
      r.truncate = d.boolean("truncate", true);
      const double mscale = d.number("mscale", 0.0, 0.0, 1e3);
      const double mscale_all = d.number("mscale_all_dim", 0.0, 0.0, 1e3);
      r.mscale_all_dim = mscale_all;
      auto get_mscale = [&](double m) { return r.factor <= 1 ? 1.0 : 0.1 * m * std::log(r.factor) + 1.0; };
      if (d.get("attention_factor")) r.attention_factor = d.number("attention_factor", 1.0, 0.0, 1e3, true);
      else if (mscale > 0 && mscale_all > 0) r.attention_factor = get_mscale(mscale) / get_mscale(mscale_all);
      else r.attention_factor = get_mscale(1.0);
    } else if (type == "longrope" && cfg.arch == Arch::Phimoe) {
      read_longrope(d, cfg);
    } else if (type == "llama3") {
      // transformers' _compute_llama3_parameters reads all four (KeyError without them); attention factor 1.
      for (const char* key : {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})
        if (!d.get(key)) d.fail(std::string("missing \"") + key + "\" (rope_type llama3 needs factor, low_freq_factor, " +
                                "high_freq_factor and original_max_position_embeddings)");
      r.llama3 = true;
      r.factor = d.number("factor", 1.0, 0.0, 1e6, true);
      r.low_freq_factor = d.number("low_freq_factor", 1.0, 0.0, 1e6, true);
      r.high_freq_factor = d.number("high_freq_factor", 4.0, 0.0, 1e6, true);
      r.original_max_positions = d.number("original_max_position_embeddings", 0.0, 0.0, limits::kPositions, true);
    } else if (type != "default") {
      c.fail("rope type \"" + type + "\" is not supported (default, yarn and llama3 are" +
             (cfg.arch == Arch::Phimoe ? ", and longrope for phimoe)" : ")"));
    }
  }
  r.dims = static_cast<int>(rotary_head_dim * partial);
  if (r.dims < 2 || r.dims % 2 != 0)
    c.fail("RoPE rotates " + std::to_string(r.dims) + " dims per head (head dim " + std::to_string(rotary_head_dim) +
           " × partial_rotary_factor " + format_number(partial) + "); it must be even and at least 2");
  if (r.longrope)
    for (const auto* f : {&r.short_factor, &r.long_factor})
      if (static_cast<int>(f->size()) != r.dims / 2)
        c.fail(std::string("rope_parameters: \"") + (f == &r.short_factor ? "short_factor" : "long_factor") + "\" has " +
               std::to_string(f->size()) + " values; LongRoPE needs one per rotated pair (" + std::to_string(r.dims / 2) + ")");
}

// quantization_config: FP8 (E4M3) weights with one scale per weight_block_size block, as DeepSeek-V3 and the
// Qwen3 FP8 checkpoints ship; other methods are refused by name.
void read_quantization(const ConfigReader& c, ModelConfig& cfg) {
  const Json* q = c.get("quantization_config");
  if (!q) return;
  if (!q->is_object()) c.fail("\"quantization_config\" must be an object");
  ConfigReader r(*q, c.path() + ": quantization_config");
  const std::string method = r.string("quant_method", "");
  if (method == "mxfp4") {  // gpt-oss: experts as *_blocks + *_scales (arch_gpt_oss.cpp); the rest unquantised
    if (cfg.arch != Arch::GptOss) r.fail("quant_method \"mxfp4\" is read for gpt_oss experts only");
    cfg.mxfp4 = true;
    return;
  }
  if (method != "fp8")
    r.fail("quant_method \"" + method + "\" is not supported (fp8 with weight_block_size, and mxfp4 for gpt_oss, are; dequantise others first)");
  const std::string fmt = r.string("fmt", "e4m3");
  if (fmt != "e4m3") r.fail("\"fmt\" \"" + fmt + "\" is not supported (e4m3 is)");
  const Json* bs = r.get("weight_block_size");
  if (!bs || !bs->is_array() || bs->items().size() != 2)
    r.fail("\"weight_block_size\" must be [rows, cols] (per-tensor FP8 scales are not supported)");
  int64_t br, bc;
  if (!bs->items()[0].as_int64(br) || !bs->items()[1].as_int64(bc) || br < 1 || bc < 1 || br > 65536 || bc > 65536)
    r.fail("\"weight_block_size\" must hold two integers in 1..65536");
  cfg.fp8_block_rows = static_cast<int>(br);
  cfg.fp8_block_cols = static_cast<int>(bc);
}

// eos_token_id: one id or a list.
void read_eos(const ConfigReader& c, ModelInfo& info) {
  const Json* eos = c.get("eos_token_id");
  if (!eos) return;
  std::vector<const Json*> ids;
  if (eos->is_array())
    for (const auto& x : eos->items()) ids.push_back(&x);
  else
    ids.push_back(eos);
  for (const Json* x : ids) {
    int64_t v;
    if (x->as_int64(v) && v >= 0 && v <= INT_MAX) info.eos_token_ids.push_back(static_cast<int>(v));
  }
}

}  // namespace

namespace {

const ArchFamily& family_of(const ConfigReader& c, std::string* type_out) {
  const Json* mt = c.get("model_type");
  if (!mt || !mt->is_string()) c.fail("missing \"model_type\"");
  const std::string& type = mt->as_string();
  const std::string& path = c.path();
  const ArchFamily* family = find_arch(type);
  if (!family) {
    if (const char* why = unsupported_reason(type))
      throw Error("UNKNOWN_ARCH", path + ": model_type \"" + type + "\" is not supported: " + why + " (supported: " +
                                      supported_model_types() + ")");
    throw Error("UNKNOWN_ARCH", path + ": unknown model_type \"" + type + "\" (supported: " + supported_model_types() + ")");
  }
  *type_out = type;
  return *family;
}

// The text model's config; quantization_config is read from `quant` (the top level).
ModelConfig parse_text_config(const ConfigReader& c, const ArchFamily& family, ModelInfo& info, const ConfigReader& quant);

// A vision-language wrapper (llama4): the text model's config under `text_config`, its weights under
// family.weight_prefix; the vision tower is not read. The wrapper's own fields that concern the text model
// (tie_word_embeddings, dtype, quantization_config) must agree with the nested ones.
ModelConfig parse_nested_config(const ConfigReader& top, const ArchFamily& family, ModelInfo& info) {
  const Json* text = top.get(family.text_config);
  if (!text || !text->is_object())
    top.fail(std::string("\"") + family.text_config + "\" must be an object holding the text model's config (model_type " +
             info.model_type + ")");
  ConfigReader c(*text, top.path() + ": " + family.text_config);
  const ArchFamily* inner = &family;
  if (c.get("model_type")) {
    std::string inner_type;
    inner = &family_of(c, &inner_type);
    if (inner->arch != family.arch || inner->text_config)
      c.fail("model_type \"" + inner_type + "\" is not the text model of " + info.model_type);
  }
  if (c.get("quantization_config")) c.fail("\"quantization_config\" belongs at the top level of config.json");
  ModelConfig cfg = parse_text_config(c, *inner, info, top);
  cfg.weight_prefix = family.weight_prefix;
  const Json* tie_top = top.get("tie_word_embeddings");
  if (tie_top && tie_top->is_bool() && c.get("tie_word_embeddings") && tie_top->as_bool() != cfg.tie_embeddings)
    top.fail("\"tie_word_embeddings\" and \"" + std::string(family.text_config) + ".tie_word_embeddings\" disagree");
  if (!c.get("tie_word_embeddings")) cfg.tie_embeddings = top.boolean("tie_word_embeddings", false);
  if (cfg.dtype.empty()) cfg.dtype = top.string("dtype", top.string("torch_dtype", ""));
  if (info.eos_token_ids.empty()) read_eos(top, info);
  return cfg;
}

}  // namespace

ModelConfig parse_config(const Json& root, const std::string& path, ModelInfo& info) {
  if (!root.is_object()) throw Error("BAD_CONFIG", path + ": not a JSON object");
  ConfigReader c(root, path);
  std::string type;
  const ArchFamily& family = family_of(c, &type);
  info.model_type = type;
  if (family.text_config) return parse_nested_config(c, family, info);
  return parse_text_config(c, family, info, c);
}

namespace {

ModelConfig parse_text_config(const ConfigReader& c, const ArchFamily& fam, ModelInfo& info, const ConfigReader& quant) {
  const ArchFamily* family = &fam;
  ModelConfig cfg;
  cfg.arch = family->arch;

  cfg.hidden = c.integer("hidden_size", 1, limits::kHidden);
  cfg.heads = c.integer("num_attention_heads", 1, limits::kHeads);
  cfg.kv_heads = c.integer("num_key_value_heads", 1, limits::kHeads, cfg.heads);
  cfg.layers = c.integer("num_hidden_layers", 1, limits::kLayers);
  cfg.vocab = c.integer("vocab_size", 1, limits::kVocab);
  if (cfg.heads % cfg.kv_heads != 0)
    c.fail("num_attention_heads (" + std::to_string(cfg.heads) + ") is not a multiple of num_key_value_heads (" +
           std::to_string(cfg.kv_heads) + ")");
  cfg.eps = static_cast<float>(c.number("rms_norm_eps", 1e-6, 0.0, 1.0, true));
  cfg.max_positions = c.integer("max_position_embeddings", 1, limits::kPositions, 4096);
  cfg.tie_embeddings = c.boolean("tie_word_embeddings", false);
  cfg.dtype = c.string("dtype", c.string("torch_dtype", ""));
  cfg.top_k = c.integer("num_experts_per_tok", 1, limits::kExperts);
  cfg.moe_layer.assign(cfg.layers, true);

  family->read_config(c, cfg);
  read_quantization(quant, cfg);

  if (cfg.experts < 1 || cfg.top_k > cfg.experts)
    c.fail("num_experts_per_tok (" + std::to_string(cfg.top_k) + ") must be between 1 and the number of experts (" +
           std::to_string(cfg.experts) + ")");
  if (cfg.attention == AttentionKind::Standard) {
    if (cfg.head_dim == 0) {
      if (cfg.hidden % cfg.heads != 0)
        c.fail("hidden_size (" + std::to_string(cfg.hidden) + ") is not a multiple of num_attention_heads (" +
               std::to_string(cfg.heads) + ") and there is no \"head_dim\"");
      cfg.head_dim = cfg.hidden / cfg.heads;
    }
    cfg.v_head_dim = cfg.head_dim;
  }
  // Every projection width the engine forms must fit an int (64-bit products, then the bound).
  const int64_t widths[] = {int64_t(cfg.heads) * cfg.head_dim, int64_t(cfg.heads) * cfg.v_head_dim,
                            int64_t(cfg.kv_heads) * cfg.head_dim, int64_t(cfg.experts) * 2 * cfg.expert_width,
                            int64_t(cfg.experts) * cfg.hidden};
  for (int64_t w : widths)
    if (w > (int64_t(1) << 24))
      c.fail("the attention or expert projections would be " + std::to_string(w) + " wide, above the limit of 2^24 (" +
             "num_attention_heads × head_dim, num_experts × 2 × expert width)");
  if (cfg.softmax_scale == 0.f) cfg.softmax_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(cfg.head_dim)));
  if (cfg.rope.dims == 0) read_rope(c, cfg, cfg.attention == AttentionKind::Latent ? cfg.mla.qk_rope_dim : cfg.head_dim);
  for (int l = 0; l < cfg.layers; ++l)
    if (!cfg.moe_layer[l] && cfg.dense_width <= 0)
      c.fail("layer " + std::to_string(l) + " is a dense MLP but \"intermediate_size\" is missing");
  read_eos(c, info);
  info.routing_rule = describe_router(cfg.router, cfg.experts, cfg.top_k);
  if (cfg.expert_mlp.input_scaled) info.routing_rule += ", the weight scales the expert's input";
  info.router_scoring = scoring_name(cfg.router.scoring);
  return cfg;
}

}  // namespace

void read_rope_config(const ConfigReader& c, ModelConfig& cfg, int rotary_head_dim) { read_rope(c, cfg, rotary_head_dim); }

}  // namespace routescope
