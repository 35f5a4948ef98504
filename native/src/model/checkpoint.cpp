#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "cpu/convert.h"
#include "model/model.h"
#include "util/files.h"
#include "util/json.h"

namespace routescope {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Mixtral: return "mixtral";
    case Arch::Olmoe: return "olmoe";
    case Arch::Qwen2Moe: return "qwen2_moe";
    case Arch::Qwen3Moe: return "qwen3_moe";
  }
  return "?";
}

namespace {

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

// Present in any form (a FIFO or a device counts: reading it then says what is wrong); stat only, never blocks.
bool file_exists(const std::string& path) { return path_type(path) != PathType::Missing; }

// A JSON file of the model folder: a regular file inside the folder, within its kind's size limit.
Json read_json_file(const std::string& dir, const std::string& path, const FileKind& kind, const char* code) {
  check_inside_folder(dir, path, code);
  const std::string text = read_text_file(path, kind, code);
  try {
    return Json::parse(text);
  } catch (const std::exception& e) {
    throw Error(code, path + ": " + e.what());
  }
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Reads config.json fields with clear errors for missing or mistyped values.
class ConfigReader {
 public:
  ConfigReader(const Json& root, std::string path) : root_(root), path_(std::move(path)) {}
  const Json* get(const std::string& key) const {
    const Json* v = root_.find(key);
    if (v && v->is_null()) return nullptr;
    return v;
  }
  int integer(const std::string& key, int fallback = INT_MIN) const {
    const Json* v = get(key);
    if (!v) {
      if (fallback != INT_MIN) return fallback;
      throw Error("BAD_CONFIG", path_ + ": missing \"" + key + "\"");
    }
    int64_t x;
    if (!v->as_int64(x) || x < 0 || x > INT_MAX) throw Error("BAD_CONFIG", path_ + ": \"" + key + "\" must be a non-negative integer");
    return static_cast<int>(x);
  }
  // A field transformers reads under two names (its config classes' attribute_map): either may be present; both
  // must then agree.
  int integer_alias(const std::string& key, const std::string& alias) const {
    const Json* a = get(key);
    const Json* b = get(alias);
    if (a && b && a->dump() != b->dump())
      throw Error("BAD_CONFIG", path_ + ": \"" + key + "\" and \"" + alias + "\" disagree");
    if (!a && !b) throw Error("BAD_CONFIG", path_ + ": missing \"" + key + "\" (or \"" + alias + "\")");
    return integer(a ? key : alias);
  }
  double number(const std::string& key, double fallback) const {
    const Json* v = get(key);
    if (!v) return fallback;
    if (!v->is_number()) throw Error("BAD_CONFIG", path_ + ": \"" + key + "\" must be a number");
    return v->as_number();
  }
  bool boolean(const std::string& key, bool fallback) const {
    const Json* v = get(key);
    if (!v) return fallback;
    if (!v->is_bool()) throw Error("BAD_CONFIG", path_ + ": \"" + key + "\" must be true or false");
    return v->as_bool();
  }
  const std::string& path() const { return path_; }

 private:
  const Json& root_;
  std::string path_;
};

ModelConfig parse_config(const Json& root, const std::string& path, ModelInfo& info) {
  if (!root.is_object()) throw Error("BAD_CONFIG", path + ": not a JSON object");
  ConfigReader c(root, path);
  const Json* mt = c.get("model_type");
  if (!mt || !mt->is_string()) throw Error("BAD_CONFIG", path + ": missing \"model_type\"");
  ModelConfig cfg;
  const std::string& type = mt->as_string();
  if (type == "mixtral") cfg.arch = Arch::Mixtral;
  else if (type == "olmoe") cfg.arch = Arch::Olmoe;
  else if (type == "qwen2_moe") cfg.arch = Arch::Qwen2Moe;
  else if (type == "qwen3_moe") cfg.arch = Arch::Qwen3Moe;
  else
    throw Error("UNKNOWN_ARCH", path + ": unknown model_type \"" + type +
                                    "\" (supported: mixtral, olmoe, qwen2_moe, qwen3_moe)");
  info.model_type = type;
  cfg.hidden = c.integer("hidden_size");
  cfg.heads = c.integer("num_attention_heads");
  cfg.kv_heads = c.integer("num_key_value_heads", cfg.heads);
  cfg.layers = c.integer("num_hidden_layers");
  cfg.vocab = c.integer("vocab_size");
  if (cfg.hidden <= 0 || cfg.heads <= 0 || cfg.kv_heads <= 0 || cfg.layers <= 0 || cfg.vocab <= 0)
    throw Error("BAD_CONFIG", path + ": hidden_size, num_attention_heads, num_key_value_heads, num_hidden_layers and vocab_size must be positive");
  if (cfg.heads % cfg.kv_heads != 0)
    throw Error("BAD_CONFIG", path + ": num_attention_heads is not a multiple of num_key_value_heads");
  cfg.head_dim = c.integer("head_dim", 0);
  if (cfg.head_dim == 0) {
    if (cfg.hidden % cfg.heads != 0) throw Error("BAD_CONFIG", path + ": hidden_size is not a multiple of num_attention_heads");
    cfg.head_dim = cfg.hidden / cfg.heads;
  }
  if (cfg.head_dim % 2 != 0) throw Error("BAD_CONFIG", path + ": head_dim must be even for RoPE");
  cfg.eps = static_cast<float>(c.number("rms_norm_eps", 1e-6));
  cfg.max_positions = c.integer("max_position_embeddings", 4096);
  cfg.tie_embeddings = c.boolean("tie_word_embeddings", false);
  // RoPE: top level rope_theta, or rope_parameters / rope_scaling dicts (transformers v5).
  cfg.rope_theta = c.number("rope_theta", 0.0);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    const Json* rp = c.get(key);
    if (!rp) continue;
    if (!rp->is_object()) throw Error("BAD_CONFIG", path + ": \"" + key + "\" must be an object");
    if (const Json* th = rp->find("rope_theta"); th && th->is_number() && cfg.rope_theta == 0.0) cfg.rope_theta = th->as_number();
    const Json* rt = rp->find("rope_type");
    if (!rt) rt = rp->find("type");
    if (rt && rt->is_string() && rt->as_string() != "default")
      throw Error("BAD_CONFIG", path + ": rope type \"" + rt->as_string() + "\" is not supported yet (only default RoPE)");
  }
  if (cfg.rope_theta == 0.0) cfg.rope_theta = 10000.0;

  switch (cfg.arch) {
    case Arch::Mixtral:
      cfg.experts = c.integer_alias("num_local_experts", "num_experts");
      cfg.expert_width = c.integer("intermediate_size");
      cfg.norm_topk = true;
      cfg.sliding_window = c.integer("sliding_window", 0);
      break;
    case Arch::Olmoe:
      cfg.experts = c.integer_alias("num_experts", "num_local_experts");
      cfg.expert_width = c.integer("intermediate_size");
      cfg.norm_topk = c.boolean("norm_topk_prob", false);
      cfg.qk_norm = QKNorm::Whole;
      cfg.clip_qkv = static_cast<float>(c.number("clip_qkv", 0.0));
      break;
    case Arch::Qwen2Moe:
      cfg.experts = c.integer("num_experts");
      cfg.expert_width = c.integer("moe_intermediate_size");
      cfg.shared_width = c.integer("shared_expert_intermediate_size", 0);
      cfg.dense_width = c.integer("intermediate_size", 0);
      cfg.norm_topk = c.boolean("norm_topk_prob", false);
      cfg.qkv_bias = true;
      if (c.boolean("use_sliding_window", false)) cfg.sliding_window = c.integer("sliding_window", 0);
      break;
    case Arch::Qwen3Moe:
      cfg.experts = c.integer_alias("num_experts", "num_local_experts");
      cfg.expert_width = c.integer("moe_intermediate_size");
      cfg.dense_width = c.integer("intermediate_size", 0);
      cfg.norm_topk = c.boolean("norm_topk_prob", true);
      cfg.qk_norm = QKNorm::PerHead;
      if (c.boolean("use_sliding_window", false)) cfg.sliding_window = c.integer("sliding_window", 0);
      break;
  }
  cfg.top_k = c.integer("num_experts_per_tok");
  if (cfg.experts <= 0 || cfg.top_k <= 0 || cfg.top_k > cfg.experts)
    throw Error("BAD_CONFIG", path + ": need 0 < num_experts_per_tok <= number of experts");
  cfg.moe_layer.assign(cfg.layers, true);
  if (cfg.arch == Arch::Qwen2Moe || cfg.arch == Arch::Qwen3Moe) {
    int step = c.integer("decoder_sparse_step", 1);
    std::set<int> dense;
    if (const Json* m = c.get("mlp_only_layers")) {
      if (!m->is_array()) throw Error("BAD_CONFIG", path + ": \"mlp_only_layers\" must be a list");
      for (const auto& x : m->items()) {
        int64_t l;
        if (!x.as_int64(l)) throw Error("BAD_CONFIG", path + ": \"mlp_only_layers\" must hold layer numbers");
        dense.insert(static_cast<int>(l));
      }
    }
    for (int l = 0; l < cfg.layers; ++l)
      cfg.moe_layer[l] = !dense.count(l) && step > 0 && (l + 1) % step == 0;
    for (int l = 0; l < cfg.layers; ++l)
      if (!cfg.moe_layer[l] && cfg.dense_width <= 0)
        throw Error("BAD_CONFIG", path + ": layer " + std::to_string(l) + " is dense but \"intermediate_size\" is missing");
  }
  // EOS ids
  if (const Json* eos = c.get("eos_token_id")) {
    if (eos->is_array()) {
      for (const auto& x : eos->items()) {
        int64_t v;
        if (x.as_int64(v)) info.eos_token_ids.push_back(static_cast<int>(v));
      }
    } else {
      int64_t v;
      if (eos->as_int64(v)) info.eos_token_ids.push_back(static_cast<int>(v));
    }
  }
  return cfg;
}

}  // namespace

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  convert_to_f32(t.data, t.dtype, out.data(), out.size());
  return out;
}

std::unique_ptr<Checkpoint> Checkpoint::open(const std::string& dir_in) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  auto ck = std::unique_ptr<Checkpoint>(new Checkpoint());
  ModelInfo& info = ck->info;
  info.dir = dir;
  const std::string config_path = join_path(dir, "config.json");
  if (!file_exists(config_path)) {
    if (!file_exists(dir)) throw Error("BAD_CHECKPOINT", dir + ": model folder not found");
    throw Error("BAD_CHECKPOINT", config_path + ": file not found (is this a Hugging Face model folder?)");
  }
  Json cfg_json = read_json_file(dir, config_path, kConfigFile, "BAD_CONFIG");
  ModelConfig& cfg = ck->config;
  cfg = parse_config(cfg_json, config_path, info);
  // generation_config.json may name more EOS ids.
  const std::string gen_path = join_path(dir, "generation_config.json");
  if (file_exists(gen_path)) {
    // Optional, but when present it must be readable: a broken one would silently lose EOS ids.
    Json g = read_json_file(dir, gen_path, kGenerationConfigFile, "BAD_CONFIG");
    if (!g.is_object()) throw Error("BAD_CONFIG", gen_path + ": not a JSON object");
    if (const Json* eos = g.find("eos_token_id"); eos && !eos->is_null()) {
      std::vector<const Json*> ids;
      if (eos->is_array()) for (const auto& x : eos->items()) ids.push_back(&x);
      else ids.push_back(eos);
      for (const Json* x : ids) {
        int64_t v;
        if (!x->as_int64(v) || v < 0 || v >= cfg.vocab)
          throw Error("BAD_CONFIG", gen_path + ": \"eos_token_id\" must be token ids within the vocabulary (0.." +
                                        std::to_string(cfg.vocab - 1) + ")");
        if (std::find(info.eos_token_ids.begin(), info.eos_token_ids.end(), v) == info.eos_token_ids.end())
          info.eos_token_ids.push_back(static_cast<int>(v));
      }
    }
  }

  // Shards.
  std::map<std::string, std::string> weight_map;  // tensor -> file name
  std::vector<std::string> shard_names;
  const std::string index_path = join_path(dir, "model.safetensors.index.json");
  if (file_exists(index_path)) {
    Json idx = read_json_file(dir, index_path, kIndexFile, "BAD_CHECKPOINT");
    const Json* wm = idx.is_object() ? idx.find("weight_map") : nullptr;
    if (!wm || !wm->is_object()) throw Error("BAD_CHECKPOINT", index_path + ": missing \"weight_map\" object");
    for (const auto& kv : wm->members()) {
      if (!kv.second.is_string()) throw Error("BAD_CHECKPOINT", index_path + ": weight_map entry \"" + kv.first + "\" is not a file name");
      const std::string& f = kv.second.as_string();
      if (f.empty() || f.find('/') != std::string::npos || f.find('\\') != std::string::npos || f == "." || f == "..")
        throw Error("BAD_CHECKPOINT", index_path + ": shard name \"" + f + "\" is not a plain file name inside the model folder");
      weight_map[kv.first] = f;
      if (std::find(shard_names.begin(), shard_names.end(), f) == shard_names.end()) shard_names.push_back(f);
    }
    if (shard_names.empty()) throw Error("BAD_CHECKPOINT", index_path + ": weight_map is empty");
  } else if (file_exists(join_path(dir, "model.safetensors"))) {
    shard_names.push_back("model.safetensors");
  } else {
    throw Error("BAD_CHECKPOINT", dir + ": no model.safetensors or model.safetensors.index.json");
  }
  std::map<std::string, const TensorView*> all;
  for (const auto& name : shard_names) {
    check_inside_folder(dir, join_path(dir, name), "BAD_CHECKPOINT");
    ck->files_.push_back(std::make_unique<SafetensorsFile>(join_path(dir, name)));
    info.weight_bytes += ck->files_.back()->size();
    for (const auto& kv : ck->files_.back()->tensors()) {
      if (!weight_map.empty()) {
        auto it = weight_map.find(kv.first);
        if (it == weight_map.end() || it->second != name) continue;  // the index is authoritative
      }
      if (all.count(kv.first)) throw Error("BAD_CHECKPOINT", kv.second.file + ": tensor \"" + kv.first + "\" appears in two shards");
      all[kv.first] = &kv.second;
    }
  }
  for (const auto& kv : weight_map)
    if (!all.count(kv.first))
      throw Error("BAD_CHECKPOINT", join_path(dir, kv.second) + ": tensor \"" + kv.first + "\" listed in the index is missing");
  info.shards = static_cast<int>(shard_names.size());

  std::map<DType, uint64_t> dtype_params;
  std::set<std::string> used;
  auto find = [&](const std::string& name) -> const TensorView* {
    auto it = all.find(name);
    return it == all.end() ? nullptr : it->second;
  };
  auto require = [&](const std::string& name, std::vector<int64_t> shape) -> const TensorView& {
    const TensorView* t = find(name);
    if (!t) throw Error("BAD_CHECKPOINT", dir + ": tensor \"" + name + "\" not found in the checkpoint");
    if (t->dtype == DType::Other)
      throw Error("BAD_CHECKPOINT", t->file + ": tensor \"" + name + "\" has dtype " + t->dtype_text + "; expected F32, F16 or BF16");
    if (t->shape != shape)
      throw Error("BAD_CONFIG", t->file + ": tensor \"" + name + "\" has shape " + shape_text(t->shape) +
                                    " but config.json implies " + shape_text(shape));
    used.insert(name);
    dtype_params[t->dtype] += static_cast<uint64_t>(t->numel());
    return *t;
  };
  auto mat = [&](const std::string& name, int rows, int cols) {
    const TensorView& t = require(name, {rows, cols});
    return Mat{t.data, t.dtype, rows, cols};
  };
  auto vec = [&](const std::string& name, int n) { return to_f32(require(name, {n})); };

  const int H = cfg.hidden, nh = cfg.heads, nkv = cfg.kv_heads, hd = cfg.head_dim, E = cfg.experts;
  ck->embed = mat("model.embed_tokens.weight", cfg.vocab, H);
  ck->final_norm = vec("model.norm.weight", H);
  if (find("lm_head.weight") || !cfg.tie_embeddings) ck->lm_head = mat("lm_head.weight", cfg.vocab, H);
  else ck->lm_head = ck->embed;

  bool any_fused = false, any_per_expert = false;
  uint64_t active = static_cast<uint64_t>(cfg.vocab) * H;  // lm head (embedding lookup is not a matmul)
  ck->layers.resize(cfg.layers);
  for (int l = 0; l < cfg.layers; ++l) {
    LayerWeights& w = ck->layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    w.attn_norm = vec(p + "input_layernorm.weight", H);
    w.mlp_norm = vec(p + "post_attention_layernorm.weight", H);
    w.q = mat(p + "self_attn.q_proj.weight", nh * hd, H);
    w.k = mat(p + "self_attn.k_proj.weight", nkv * hd, H);
    w.v = mat(p + "self_attn.v_proj.weight", nkv * hd, H);
    w.o = mat(p + "self_attn.o_proj.weight", H, nh * hd);
    active += static_cast<uint64_t>(2 * nh * hd + 2 * nkv * hd) * H;
    if (cfg.qkv_bias) {
      w.q_bias = vec(p + "self_attn.q_proj.bias", nh * hd);
      w.k_bias = vec(p + "self_attn.k_proj.bias", nkv * hd);
      w.v_bias = vec(p + "self_attn.v_proj.bias", nkv * hd);
    }
    if (cfg.qk_norm == QKNorm::Whole) {
      w.q_norm = vec(p + "self_attn.q_norm.weight", nh * hd);
      w.k_norm = vec(p + "self_attn.k_norm.weight", nkv * hd);
    } else if (cfg.qk_norm == QKNorm::PerHead) {
      w.q_norm = vec(p + "self_attn.q_norm.weight", hd);
      w.k_norm = vec(p + "self_attn.k_norm.weight", hd);
    }
    w.moe = cfg.moe_layer[l];
    if (!w.moe) {
      const int D = cfg.dense_width;
      w.dense_gate = mat(p + "mlp.gate_proj.weight", D, H);
      w.dense_up = mat(p + "mlp.up_proj.weight", D, H);
      w.dense_down = mat(p + "mlp.down_proj.weight", H, D);
      active += 3ull * D * H;
      continue;
    }
    const int I = cfg.expert_width;
    // Router and experts: fused (transformers v5) or per-expert tensors (mixtral: block_sparse_moe.w1/w3/w2).
    std::string mp = p + "mlp.";
    if (cfg.arch == Arch::Mixtral && find(p + "block_sparse_moe.gate.weight")) mp = p + "block_sparse_moe.";
    w.router = mat(mp + "gate.weight", E, H);
    active += static_cast<uint64_t>(E) * H + 3ull * cfg.top_k * I * H;
    if (find(mp + "experts.gate_up_proj")) {
      any_fused = true;
      const TensorView& gu = require(mp + "experts.gate_up_proj", {E, 2 * I, H});
      const TensorView& dn = require(mp + "experts.down_proj", {E, H, I});
      Mat gu_all{gu.data, gu.dtype, E * 2 * I, H}, dn_all{dn.data, dn.dtype, E * H, I};
      for (int e = 0; e < E; ++e) {
        w.gate.push_back(gu_all.slice_rows(e * 2 * I, I));
        w.up.push_back(gu_all.slice_rows(e * 2 * I + I, I));
        w.down.push_back(dn_all.slice_rows(e * H, H));
      }
    } else {
      any_per_expert = true;
      for (int e = 0; e < E; ++e) {
        const std::string ep = mp + "experts." + std::to_string(e) + ".";
        if (cfg.arch == Arch::Mixtral && mp.find("block_sparse_moe") != std::string::npos) {
          w.gate.push_back(mat(ep + "w1.weight", I, H));
          w.up.push_back(mat(ep + "w3.weight", I, H));
          w.down.push_back(mat(ep + "w2.weight", H, I));
        } else {
          w.gate.push_back(mat(ep + "gate_proj.weight", I, H));
          w.up.push_back(mat(ep + "up_proj.weight", I, H));
          w.down.push_back(mat(ep + "down_proj.weight", H, I));
        }
      }
    }
    if (cfg.arch == Arch::Qwen2Moe && cfg.shared_width > 0) {
      const int S = cfg.shared_width;
      w.shared_gate = mat(p + "mlp.shared_expert.gate_proj.weight", S, H);
      w.shared_up = mat(p + "mlp.shared_expert.up_proj.weight", S, H);
      w.shared_down = mat(p + "mlp.shared_expert.down_proj.weight", H, S);
      w.shared_expert_gate = to_f32(require(p + "mlp.shared_expert_gate.weight", {1, H}));
      active += 3ull * S * H + H;
    }
  }
  uint64_t params = 0, best = 0;
  DType dominant = DType::F32;
  for (const auto& kv : all) params += static_cast<uint64_t>(kv.second->numel());
  for (const auto& kv : dtype_params)
    if (kv.second > best) best = kv.second, dominant = kv.first;

  info.num_layers = cfg.layers;
  info.hidden_size = H;
  info.num_heads = nh;
  info.num_kv_heads = nkv;
  info.head_dim = hd;
  info.vocab_size = cfg.vocab;
  info.num_experts = E;
  info.top_k = cfg.top_k;
  info.expert_width = cfg.expert_width;
  info.shared_expert_width = cfg.shared_width;
  info.norm_topk_prob = cfg.norm_topk;
  info.max_position_embeddings = cfg.max_positions;
  for (int l = 0; l < cfg.layers; ++l)
    if (cfg.moe_layer[l]) info.moe_layers.push_back(l);
  info.dtype = dtype_name(dominant);
  info.expert_layout = any_fused && any_per_expert ? "mixed" : (any_fused ? "fused" : "per-expert");
  info.parameters = params;
  info.active_parameters = active;
  return ck;
}

}  // namespace routescope
