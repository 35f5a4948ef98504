// A loaded checkpoint: config, mapped files and views of every weight the forward pass reads.
#pragma once
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "model/safetensors.h"
#include "routescope/engine.h"

namespace routescope {

// A row-major [rows, cols] weight matrix in its stored dtype, possibly a slice of a fused tensor.
struct Mat {
  const uint8_t* data = nullptr;
  DType dtype = DType::F32;
  int rows = 0, cols = 0;
  const uint8_t* row(int r) const { return data + static_cast<size_t>(r) * cols * dtype_size(dtype); }
  Mat slice_rows(int begin, int count) const { return Mat{row(begin), dtype, count, cols}; }
};

enum class QKNorm { None, Whole, PerHead };

struct ModelConfig {
  Arch arch = Arch::Olmoe;
  int hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, vocab = 0, layers = 0;
  int experts = 0, top_k = 0, expert_width = 0, shared_width = 0, dense_width = 0;
  float eps = 1e-5f;
  double rope_theta = 10000.0;
  bool norm_topk = false;
  QKNorm qk_norm = QKNorm::None;
  bool qkv_bias = false;
  float clip_qkv = 0.0f;  // 0 = off
  int sliding_window = 0; // 0 = off
  bool tie_embeddings = false;
  int max_positions = 0;
  std::vector<bool> moe_layer;
};

struct LayerWeights {
  std::vector<float> attn_norm, mlp_norm;  // small vectors kept in fp32
  Mat q, k, v, o;
  std::vector<float> q_bias, k_bias, v_bias;
  std::vector<float> q_norm, k_norm;
  bool moe = false;
  Mat router;                               // [E, H]
  std::vector<Mat> gate, up, down;          // per expert: [I,H], [I,H], [H,I]
  Mat dense_gate, dense_up, dense_down;     // dense MLP layers
  Mat shared_gate, shared_up, shared_down;  // qwen2_moe shared expert
  std::vector<float> shared_expert_gate;    // [H]
};

class Checkpoint {
 public:
  static std::unique_ptr<Checkpoint> open(const std::string& dir);
  ModelConfig config;
  ModelInfo info;
  Mat embed, lm_head;
  std::vector<float> final_norm;
  std::vector<LayerWeights> layers;
  // Throws Error("MODEL_CHANGED") when a weight file was truncated or rewritten since it was loaded; with
  // `rate_limited` (between layers) it looks at most every 50 ms.
  void check_files_unchanged(bool rate_limited = false) const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  mutable std::atomic<int64_t> last_file_check_ns_{0};
};

std::vector<float> to_f32(const TensorView& t);

}  // namespace routescope
