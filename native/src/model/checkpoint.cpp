#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <sys/stat.h>

#include "cpu/convert.h"
#include "model/arch.h"
#include "model/model.h"
#include "model/weights.h"
#include "util/files.h"
#include "util/json.h"

namespace routescope {

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

// Every tensor of the checkpoint is read, or is a known extra of its family (named in a warning): a config that
// does not describe its weights (e.g. model_type mixtral over OLMoE tensors) is refused.
void check_unused(const std::map<std::string, const TensorView*>& all, const std::set<std::string>& used,
                  const ArchFamily& family, const ModelConfig& cfg, const std::string& dir, ModelInfo& info) {
  std::map<std::string, std::vector<std::string>> extras;  // why -> tensors
  std::vector<std::string> unused;
  for (const auto& kv : all) {
    if (used.count(kv.first)) continue;
    const std::string& name = kv.first;
    const char* why = nullptr;
    const std::string inv_freq = "rotary_emb.inv_freq";
    if (name.size() >= inv_freq.size() && name.compare(name.size() - inv_freq.size(), inv_freq.size(), inv_freq) == 0)
      why = "RoPE frequency buffers (the engine computes them from the config)";
    else
      why = family.known_extra(name, cfg);
    if (why) extras[why].push_back(name);
    else unused.push_back(name);
  }
  if (!unused.empty()) {
    std::string list;
    for (size_t i = 0; i < unused.size() && i < 3; ++i) list += (i ? ", " : "") + std::string("\"") + unused[i] + "\"";
    if (unused.size() > 3) list += " and " + std::to_string(unused.size() - 3) + " more";
    throw Error("BAD_CHECKPOINT", dir + ": " + std::to_string(unused.size()) + " tensor" + (unused.size() == 1 ? "" : "s") +
                                      " that config.json (model_type " + info.model_type + ") does not use: " + list +
                                      " — is model_type right?");
  }
  for (const auto& kv : extras) {
    const auto& names = kv.second;
    info.warnings.push_back(std::to_string(names.size()) + " tensor" + (names.size() == 1 ? "" : "s") + " not used: " +
                            kv.first + " (e.g. \"" + names.front() + "\")");
  }
}

// config.json's torch_dtype / dtype names the dtype the weights were saved in: a checkpoint with no weight of that
// dtype contradicts it.
void check_declared_dtype(const ModelConfig& cfg, const std::map<DType, uint64_t>& by_dtype, const std::string& path) {
  static const std::map<std::string, DType> names = {{"float32", DType::F32}, {"float16", DType::F16},
                                                     {"bfloat16", DType::BF16}};
  auto it = names.find(cfg.dtype);
  if (it == names.end() || by_dtype.count(it->second)) return;
  std::string found;
  for (const auto& kv : by_dtype) found += (found.empty() ? "" : " and ") + std::string(dtype_name(kv.first));
  throw Error("BAD_CHECKPOINT", path + ": torch_dtype is " + cfg.dtype + " but every weight is " + found);
}

}  // namespace

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  convert_to_f32(t.data, t.dtype, out.data(), out.size());
  return out;
}

namespace {
// MemAvailable of /proc/meminfo in bytes; 0 where unknown.
uint64_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  uint64_t kib = 0;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}
}  // namespace

void check_weights_choice(const std::string& choice) {
  if (choice != "auto" && choice != "mapped" && choice != "resident")
    throw Error("BAD_ARGUMENT", "weights must be auto, mapped or resident (got \"" + choice + "\")");
}

WeightResidency choose_residency(const std::string& choice, uint64_t weight_bytes, const std::string& dir) {
  check_weights_choice(choice);
  if (choice == "mapped") return WeightResidency::Mapped;
  const uint64_t available = available_memory_bytes();
  if (choice == "resident") {
    if (available && weight_bytes > available / 10 * 9)
      throw Error("OOM", dir + ": the weights need " + std::to_string(weight_bytes >> 20) + " MiB in memory, " +
                             std::to_string(available >> 20) + " MiB are available; load them mapped (weights: mapped)");
    return WeightResidency::Resident;
  }
  return available && weight_bytes <= available / 2 ? WeightResidency::Resident : WeightResidency::Mapped;
}

std::unique_ptr<Checkpoint> Checkpoint::open(const std::string& dir_in,
                                             const std::function<WeightResidency(uint64_t)>& residency_for) {
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
  WeightResidency residency = WeightResidency::Mapped;
  if (residency_for) {
    uint64_t total = 0;
    for (const auto& name : shard_names) {
      struct stat st;
      if (::stat(join_path(dir, name).c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_size);
    }
    residency = residency_for(total);
  }
  info.weights = residency == WeightResidency::Resident ? "resident" : "mapped";
  std::map<std::string, const TensorView*> all;
  for (const auto& name : shard_names) {
    check_inside_folder(dir, join_path(dir, name), "BAD_CHECKPOINT");
    ck->files_.push_back(std::make_unique<SafetensorsFile>(join_path(dir, name), residency));
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

  WeightReader r(all, dir, cfg, ck->scales_);
  const ArchFamily& family = *find_arch(info.model_type);
  const int H = cfg.hidden;
  ck->embed = r.mat("model.embed_tokens.weight", cfg.vocab, H);
  if (ck->embed.dtype == DType::F8E4M3)
    throw Error("BAD_CHECKPOINT", dir + ": \"model.embed_tokens.weight\" is F8_E4M3; FP8 is read for projections only");
  ck->final_norm = r.vec("model.norm.weight", H);
  if (cfg.layer_norm) ck->final_norm_bias = r.vec("model.norm.bias", H);
  if (r.has("lm_head.weight") || !cfg.tie_embeddings) ck->lm_head = r.mat("lm_head.weight", cfg.vocab, H);
  else ck->lm_head = ck->embed;
  if (cfg.lm_head_bias) ck->lm_head_bias = r.vec("lm_head.bias", cfg.vocab);
  if (cfg.logits_scaling != 1.f)  // GraniteMoE's logits ÷ logits_scaling, folded into the (linear) final norm's output
    for (auto* v : {&ck->final_norm, &ck->final_norm_bias, &ck->lm_head_bias})
      for (float& x : *v) x /= cfg.logits_scaling;
  r.active = static_cast<uint64_t>(cfg.vocab) * H;  // lm head (the embedding lookup is not a matmul)
  ck->layers.resize(cfg.layers);
  for (int l = 0; l < cfg.layers; ++l) family.load_layer(r, cfg, l, ck->layers[l]);
  check_unused(all, r.used(), family, cfg, dir, info);
  check_declared_dtype(cfg, r.params_by_dtype(), config_path);
  const std::map<DType, uint64_t>& dtype_params = r.params_by_dtype();
  const bool any_fused = r.any_fused, any_per_expert = r.any_per_expert;
  const uint64_t active = r.active;
  uint64_t params = 0, best = 0;
  DType dominant = DType::F32;
  for (const auto& name : r.used())
    if (all.at(name)->dtype != DType::Other) params += static_cast<uint64_t>(all.at(name)->numel());
  params += r.mxfp4_values;
  for (const auto& kv : dtype_params)
    if (kv.second > best) best = kv.second, dominant = kv.first;

  info.num_layers = cfg.layers;
  info.hidden_size = H;
  info.num_heads = cfg.heads;
  info.num_kv_heads = cfg.kv_heads;
  info.head_dim = cfg.head_dim;
  info.vocab_size = cfg.vocab;
  info.num_experts = cfg.experts;
  info.top_k = cfg.top_k;
  info.expert_width = cfg.expert_width;
  info.shared_expert_width = cfg.shared_width;
  info.norm_topk_prob = cfg.router.renorm;
  info.max_position_embeddings = cfg.max_positions;
  for (int l = 0; l < cfg.layers; ++l)
    if (cfg.moe_layer[l]) info.moe_layers.push_back(l);
  info.dtype = r.mxfp4_values > best ? "MXFP4" : dtype_name(dominant);
  info.expert_layout = any_fused && any_per_expert ? "mixed" : (any_fused ? "fused" : "per-expert");
  info.parameters = params;
  info.active_parameters = active;
  return ck;
}

}  // namespace routescope
