// Architecture families: config fields, tensor names and the tensors a checkpoint may carry that the engine does
// not use. One entry per model_type; the implementations live in arch_<family>.cpp.
#pragma once
#include <string>

#include "model/config.h"
#include "model/weights.h"

namespace routescope {

struct ArchFamily {
  Arch arch;
  const char* model_type;
  // Family-specific config fields (the common ones are read before); fills experts, widths, router rule, ...
  void (*read_config)(const ConfigReader& c, ModelConfig& cfg);
  // Tensors of layer l (prefix "model.layers.<l>.").
  void (*load_layer)(WeightReader& r, const ModelConfig& cfg, int layer, LayerWeights& w);
  // A tensor the checkpoint may hold beside what the engine reads, with why (e.g. DeepSeek-V3's multi-token
  // prediction layer); null = unused tensors of this name are an error.
  const char* (*known_extra)(const std::string& tensor, const ModelConfig& cfg);
  // A vision-language wrapper (llama4): the key of config.json holding the text model's config, and the prefix of
  // the text model's tensor names; null for plain text models.
  const char* text_config = nullptr;
  const char* weight_prefix = "";
};

const ArchFamily* find_arch(const std::string& model_type);
// Why a known model_type is not supported (hybrids, ...); null when unknown altogether.
const char* unsupported_reason(const std::string& model_type);
std::string supported_model_types();

// Families (arch_classic.cpp, arch_deepseek.cpp, arch_phimoe.cpp, arch_gpt_oss.cpp, arch_llama4.cpp).
extern const ArchFamily kMixtral, kOlmoe, kQwen2Moe, kQwen3Moe, kDeepseekV2, kDeepseekV3, kGlm4Moe;
extern const ArchFamily kPhimoe, kGraniteMoe;  // arch_phimoe.cpp
extern const ArchFamily kGptOss;               // arch_gpt_oss.cpp
extern const ArchFamily kLlama4Text, kLlama4;  // arch_llama4.cpp

}  // namespace routescope
