// The model_type table: which families the engine reads, and why some known ones are refused.
#include "model/arch.h"

#include <cstring>

namespace routescope {

namespace {
const ArchFamily* const kFamilies[] = {&kMixtral, &kOlmoe, &kQwen2Moe, &kQwen3Moe, &kDeepseekV2, &kDeepseekV3, &kGlm4Moe,
                                       &kPhimoe, &kGraniteMoe, &kGptOss, &kLlama4Text, &kLlama4};

struct Refusal {
  const char* model_type;
  const char* why;
};
// Hybrid decoders mix attention with linear-attention or state-space layers the engine does not implement.
const Refusal kRefused[] = {
    {"qwen3_next", "a hybrid of gated linear attention (Gated DeltaNet) and attention layers"},
    {"nemotron_h", "a hybrid of Mamba-2 and attention layers"},
    {"granitemoehybrid", "a hybrid of Mamba-2 and attention layers"},
    {"jamba", "a hybrid of Mamba and attention layers"},
    {"granitemoeshared", "GraniteMoE with a shared expert is not implemented yet"},
    {"deepseek", "DeepSeekMoE (16B) ships as remote code; no transformers model class to check it against yet"},
};
}  // namespace

const ArchFamily* find_arch(const std::string& model_type) {
  for (const ArchFamily* f : kFamilies)
    if (model_type == f->model_type) return f;
  return nullptr;
}

const char* unsupported_reason(const std::string& model_type) {
  for (const Refusal& r : kRefused)
    if (model_type == r.model_type) return r.why;
  return nullptr;
}

std::string supported_model_types() {
  std::string s;
  for (const ArchFamily* f : kFamilies) s += (s.empty() ? "" : ", ") + std::string(f->model_type);
  return s;
}

}  // namespace routescope
