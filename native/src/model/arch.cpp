// The model_type table: which families the engine reads, and why some known ones are refused.
#include "model/arch.h"

#include <cstring>

namespace routescope {

namespace {
const ArchFamily* const kFamilies[] = {&kMixtral, &kOlmoe, &kQwen2Moe, &kQwen3Moe, &kDeepseekV2, &kDeepseekV3, &kGlm4Moe,
                                       &kPhimoe, &kGraniteMoe, &kGptOss};

struct Refusal {
  const char* model_type;
  const char* why;
};
constexpr const char* kLlama4Missing =
    "Llama 4 is not implemented yet: its router scales each expert's input (not its output) by sigmoid(logit), its "
    "experts are stored transposed (feed_forward.experts.gate_up_proj [E, hidden, 2·width]) where the expert kernels "
    "read [E, 2·width, hidden], and its chunked attention, NoPE layers with attention temperature tuning and llama3 "
    "RoPE scaling are missing";
// Hybrid decoders mix attention with linear-attention or state-space layers the engine does not implement.
const Refusal kRefused[] = {
    {"qwen3_next", "a hybrid of gated linear attention (Gated DeltaNet) and attention layers"},
    {"nemotron_h", "a hybrid of Mamba-2 and attention layers"},
    {"granitemoehybrid", "a hybrid of Mamba-2 and attention layers"},
    {"jamba", "a hybrid of Mamba and attention layers"},
    {"granitemoeshared", "GraniteMoE with a shared expert is not implemented yet"},
    {"deepseek", "DeepSeekMoE (16B) ships as remote code; no transformers model class to check it against yet"},
    // Llama 4 (Scout, Maverick): what the engine lacks, so that nothing half-works.
    {"llama4", kLlama4Missing},
    {"llama4_text", kLlama4Missing},
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
