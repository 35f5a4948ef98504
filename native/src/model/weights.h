// Reading a checkpoint's tensors by name with shape and dtype checks; records which tensors were used so that
// the rest can be reported (unused tensors are refused, or named in a warning for known extras).
#pragma once
#include <deque>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "model/model.h"

namespace routescope {

// One expert's projection of a fused tensor stored transposed ([E, cols, stored]: gpt-oss, Llama 4), read in place:
// `rows` outputs × `cols` inputs of expert e, this matrix's row r at storage column r·step + offset.
Mat transposed_mat(const TensorView& t, int e, int stored, int rows, int cols, int step, int offset);

class WeightReader {
 public:
  WeightReader(const std::map<std::string, const TensorView*>& all, std::string dir, const ModelConfig& cfg,
               std::deque<std::vector<float>>& scales)
      : all_(all), dir_(std::move(dir)), cfg_(cfg), scales_(scales), prefix_(cfg.weight_prefix) {}
  // Names are looked up under cfg.weight_prefix (llama4's "language_model."); errors and used() name them in full.
  const TensorView* find(const std::string& name) const;
  bool has(const std::string& name) const { return find(name) != nullptr; }
  // The tensor, which must exist with this shape and a float dtype (F8_E4M3 only where allow_fp8).
  const TensorView& require(const std::string& name, const std::vector<int64_t>& shape, bool allow_fp8 = false);
  // A weight matrix; F8_E4M3 ones (with quantization_config's weight_block_size) come with their
  // <name>_scale_inv block scales.
  Mat mat(const std::string& name, int rows, int cols);
  std::vector<float> vec(const std::string& name, int n);
  // A tensor of raw bytes (dtype U8: MXFP4 blocks and scales), which must exist with this shape.
  const TensorView& bytes(const std::string& name, const std::vector<int64_t>& shape);

  // Norms and projections shared by most families.
  void standard_attention(const ModelConfig& cfg, const std::string& prefix, LayerWeights& w);
  void dense_mlp(const std::string& prefix, int width, int hidden, LayerWeights& w);
  // One MoE block's experts: transformers v5's fused tensors (<block>experts.gate_up_proj [E, 2I, H] and
  // <block>experts.down_proj [E, H, I]) or per-expert ones named <block>experts.<e>.<gate|up|down>.
  struct ExpertNames {
    const char* gate;
    const char* up;
    const char* down;
  };
  void experts(const std::string& block, const ExpertNames& names, int E, int I, int H, LayerWeights& w);
  // Fused experts under any names: gate_up [E, 2I, H] (gate rows, then up rows) and down [E, H, I].
  void fused_experts(const std::string& gate_up, const std::string& down, int E, int I, int H, LayerWeights& w);

  const std::set<std::string>& used() const { return used_; }
  const std::map<DType, uint64_t>& params_by_dtype() const { return dtype_params_; }
  bool any_fused = false, any_per_expert = false;
  uint64_t active = 0;  // parameters one token multiplies with (added to by the loaders)
  uint64_t mxfp4_values = 0;  // weights stored as MXFP4 (two per byte of *_blocks)

 private:
  const std::map<std::string, const TensorView*>& all_;
  std::string dir_;
  const ModelConfig& cfg_;
  std::deque<std::vector<float>>& scales_;
  std::string prefix_;
  std::set<std::string> used_;
  std::map<DType, uint64_t> dtype_params_;
};

}  // namespace routescope
