// A loaded checkpoint: config, mapped files and views of every weight the forward pass reads.
#pragma once
#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"
#include "routescope/engine.h"

namespace routescope {

// How a weight matrix is laid out in its file. Plain: row-major [rows, cols] (FP8: + block scales). Transposed:
// stored [cols, ld] with this matrix's row r at storage column r·rstep + roff (gpt-oss's [in, out] experts, gate
// and up interleaved). Mxfp4: storage rows of cols/32 blocks of 16 bytes (two FP4 values per byte, low nibble first)
// with one E8M0 scale per block, this matrix's row r at storage row r·rstep + roff.
enum class Encoding : uint8_t { Plain, Transposed, Mxfp4 };

// A [rows, cols] weight matrix in its stored dtype, possibly a slice of a fused tensor. Block-scaled FP8
// (F8E4M3) carries one f32 scale per [block_rows, block_cols] block: w = fp8 × scale (DeepSeek's weight_scale_inv).
// Matrices that are not plain row-major F32/F16/BF16 are multiplied tile by tile (cpu/matmul_tiled.cpp).
struct Mat {
  const uint8_t* data = nullptr;
  DType dtype = DType::F32;
  int rows = 0, cols = 0;
  const float* scale = nullptr;  // [ceil(rows / block_rows), ceil(cols / block_cols)], FP8 only
  int block_rows = 0, block_cols = 0;
  Encoding enc = Encoding::Plain;
  int64_t ld = 0;                 // Transposed: storage row length (elements)
  int rstep = 1, roff = 0;        // Transposed / Mxfp4: this matrix's row r is storage column / row r·rstep + roff
  const uint8_t* mx_scales = nullptr;  // Mxfp4: [storage rows, cols / 32] E8M0 exponents (bias 127)
  bool tiled() const { return dtype == DType::F8E4M3 || enc != Encoding::Plain; }
  const uint8_t* row(int r) const { return data + static_cast<size_t>(r) * cols * dtype_size(dtype); }
  int scale_cols() const { return block_cols ? (cols + block_cols - 1) / block_cols : 0; }
  // Rows [begin, begin + count); for FP8, begin must fall on a block boundary.
  Mat slice_rows(int begin, int count) const {
    Mat m{row(begin), dtype, count, cols, scale, block_rows, block_cols};
    if (scale) m.scale = scale + static_cast<size_t>(begin / block_rows) * scale_cols();
    return m;
  }
};

struct LayerWeights {
  std::vector<float> attn_norm, mlp_norm;  // small vectors kept in fp32
  std::vector<float> attn_norm_bias, mlp_norm_bias;  // LayerNorm biases (phimoe); empty for RMSNorm
  Mat q, k, v, o;                           // standard attention (MLA: q is q_proj when q_lora_rank is null)
  std::vector<float> q_bias, k_bias, v_bias, o_bias;
  std::vector<float> q_norm, k_norm;
  std::vector<float> sinks;                 // [heads] attention sink logits (gpt-oss)
  // Multi-head latent attention (DeepSeek): q = q_b(norm(q_a x)) or q_proj x; [c, k_rope] = kv_a x;
  // [k_nope, v] per head = kv_b(norm(c)).
  Mat q_a, q_b, kv_a, kv_b;
  std::vector<float> q_a_norm, kv_a_norm;
  bool moe = false;
  Mat router;                               // [E, H]
  std::vector<float> selection_bias;        // [E] e_score_correction_bias (DeepSeek-V3 / GLM-4.5), empty if none
  std::vector<float> router_bias;           // [E] router linear bias (gpt-oss), empty if none
  std::vector<float> gate_bias, up_bias, down_bias;  // [E, I], [E, I], [E, H] expert biases (gpt-oss), empty if none
  std::vector<Mat> gate, up, down;          // per expert: [I,H], [I,H], [H,I]
  Mat dense_gate, dense_up, dense_down;     // dense MLP layers
  Mat shared_gate, shared_up, shared_down;  // shared expert(s): qwen2_moe (gated), DeepSeek / GLM (n_shared × width)
  std::vector<float> shared_expert_gate;    // [H] qwen2_moe's sigmoid gate of the shared expert; empty if ungated
  bool has_shared() const { return shared_gate.data != nullptr; }
};

// Where the weights of `dir` live for LoadOptions::weights `choice` (auto | mapped | resident) and files of
// `weight_bytes` in all: auto is resident when they take at most half of the memory available; resident is refused
// (Error "OOM") when they exceed 90 % of it.
WeightResidency choose_residency(const std::string& choice, uint64_t weight_bytes, const std::string& dir);
// Throws Error("BAD_ARGUMENT") unless `choice` is auto, mapped or resident.
void check_weights_choice(const std::string& choice);

class Checkpoint {
 public:
  // `residency_for(weight_bytes)` chooses where the weights live once the shards' total size is known (null: mapped).
  static std::unique_ptr<Checkpoint> open(const std::string& dir,
                                          const std::function<WeightResidency(uint64_t)>& residency_for = nullptr);
  ModelConfig config;
  ModelInfo info;
  Mat embed, lm_head;
  std::vector<float> final_norm;
  std::vector<float> final_norm_bias;  // LayerNorm bias (phimoe); empty for RMSNorm
  std::vector<float> lm_head_bias;     // empty when the LM head has none
  std::vector<LayerWeights> layers;
  // Throws Error("MODEL_CHANGED") when a weight file was truncated or rewritten since it was loaded; with
  // `rate_limited` (between layers) it looks at most every 50 ms.
  void check_files_unchanged(bool rate_limited = false) const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::deque<std::vector<float>> scales_;  // FP8 block scales widened to f32 (small: one per 128 × 128 block)
  mutable std::atomic<int64_t> last_file_check_ns_{0};
};

std::vector<float> to_f32(const TensorView& t);

}  // namespace routescope
