// CUDA backend: the same decoder on an NVIDIA GPU. This header has no CUDA types so the engine compiles with or
// without the toolkit; the implementation lives in backend.cu (built when CMake finds nvcc).
//
// Status: compiled in CI; not yet validated on a GPU (see README "CUDA backend"). The engine therefore selects it
// only for an explicit backend "cuda"; "auto" stays on the CPU until the GPU parity suite has run.
#pragma once
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "routescope/engine.h"

namespace routescope {
namespace cuda {

// Empty when a device can be used; otherwise why not (no driver, no device, old driver, not compiled).
std::string probe();
// Empty when the CUDA path implements everything this model needs; otherwise the first feature it lacks.
inline std::string unsupported(const ModelConfig& cfg) {
  if (cfg.attention != AttentionKind::Standard) return "multi-head latent attention";
  if (cfg.router.scoring != Scoring::Softmax || cfg.router.groups > 1 || cfg.router.scale != 1.f)
    return "its router rule (" + describe_router(cfg.router, cfg.experts, cfg.top_k) + ")";
  if (cfg.shared_width > 0 && !cfg.shared_gated) return "ungated shared experts";
  if (cfg.rope.yarn || cfg.rope.dims != cfg.head_dim || cfg.rope.layout != RopeLayout::Half)
    return "YaRN, partial or interleaved RoPE";
  if (cfg.fp8_block_rows > 0) return "FP8 block-scaled weights";
  if (cfg.layer_norm || cfg.o_bias || cfg.lm_head_bias) return "LayerNorm, o_proj or LM head biases";
  if (cfg.rope.longrope) return "LongRoPE";
  if (cfg.embedding_multiplier != 1.f || cfg.residual_multiplier != 1.f || cfg.logits_scaling != 1.f)
    return "embedding, residual or logits multipliers";
  if (cfg.arch == Arch::GptOss) return "gpt-oss (attention sinks, biases, clamped experts, MXFP4)";
  if (cfg.arch == Arch::Llama4)
    return "Llama 4 (input-scaled experts stored transposed, chunked attention, NoPE layers with temperature tuning)";
  if (cfg.rope.llama3) return "llama3 RoPE scaling";
  return "";
}
bool compiled();

class DeviceSession {
 public:
  virtual ~DeviceSession() = default;
  // Runs tokens at positions pos0.., appending to the device KV cache; routing as on the CPU (identical patch
  // semantics: the router's softmax/patch/top-k run through the same route_token on the host); logits for
  // `rows` positions starting at `first` (relative to this call) into `logits` ([rows, V]).
  virtual void forward(const std::vector<int>& tokens, int pos0, const Patch& patch, const RoutingCallback& on_layer,
                       int first, int rows, std::vector<float>& logits, const std::atomic<bool>* cancel) = 0;
};

class DeviceModel {
 public:
  virtual ~DeviceModel() = default;
  // Uploads every weight once; throws Error("OOM") before allocating when the model does not fit.
  static std::unique_ptr<DeviceModel> upload(const Checkpoint& ck);
  virtual std::unique_ptr<DeviceSession> session(int max_context) = 0;
  virtual std::string device_name() const = 0;
  virtual size_t weight_bytes() const = 0;
};

}  // namespace cuda
}  // namespace routescope
