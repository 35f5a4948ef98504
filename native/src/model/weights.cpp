#include "model/weights.h"

#include <cmath>

#include "cpu/convert.h"

namespace routescope {

namespace {
std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}
}  // namespace

Mat transposed_mat(const TensorView& t, int e, int stored, int rows, int cols, int step, int offset) {
  Mat m;
  m.enc = Encoding::Transposed;
  m.dtype = t.dtype;
  m.rows = rows;
  m.cols = cols;
  m.ld = stored;
  m.data = t.data + static_cast<size_t>(e) * cols * stored * dtype_size(t.dtype);
  m.rstep = step;
  m.roff = offset;
  return m;
}

const TensorView* WeightReader::find(const std::string& name) const {
  auto it = all_.find(prefix_ + name);
  return it == all_.end() ? nullptr : it->second;
}

const TensorView& WeightReader::require(const std::string& short_name, const std::vector<int64_t>& shape, bool allow_fp8) {
  const TensorView* t = find(short_name);
  const std::string name = prefix_ + short_name;
  if (!t) throw Error("BAD_CHECKPOINT", dir_ + ": tensor \"" + name + "\" not found in the checkpoint");
  if (t->dtype == DType::Other || (t->dtype == DType::F8E4M3 && !allow_fp8))
    throw Error("BAD_CHECKPOINT", t->file + ": tensor \"" + name + "\" has dtype " + t->dtype_text + "; expected F32, F16 or BF16" +
                                      (t->dtype == DType::F8E4M3 ? " (F8_E4M3 is read for weight matrices only)" : ""));
  if (t->shape != shape)
    throw Error("BAD_CONFIG", t->file + ": tensor \"" + name + "\" has shape " + shape_text(t->shape) +
                                  " but config.json implies " + shape_text(shape));
  used_.insert(name);
  dtype_params_[t->dtype] += static_cast<uint64_t>(t->numel());
  return *t;
}

Mat WeightReader::mat(const std::string& short_name, int rows, int cols) {
  const TensorView& t = require(short_name, {rows, cols}, true);
  const std::string name = prefix_ + short_name;
  Mat m{t.data, t.dtype, rows, cols};
  if (t.dtype == DType::F8E4M3) {
    if (cfg_.fp8_block_rows <= 0)
      throw Error("BAD_CHECKPOINT", t.file + ": tensor \"" + name + "\" is F8_E4M3 but config.json has no " +
                                        "quantization_config with weight_block_size");
    const std::string scale_name = name + "_scale_inv";
    const TensorView* s = find(short_name + "_scale_inv");
    if (!s)
      throw Error("BAD_CHECKPOINT", t.file + ": tensor \"" + name + "\" is F8_E4M3 but its block scales \"" + scale_name +
                                        "\" are missing");
    const int br = cfg_.fp8_block_rows, bc = cfg_.fp8_block_cols;
    const int sr = (rows + br - 1) / br, sc = (cols + bc - 1) / bc;
    scales_.push_back(to_f32(require(short_name + "_scale_inv", {sr, sc})));
    for (float v : scales_.back())
      if (!std::isfinite(v))
        throw Error("BAD_CHECKPOINT", s->file + ": tensor \"" + scale_name + "\" holds a non-finite scale");
    m.scale = scales_.back().data();
    m.block_rows = br;
    m.block_cols = bc;
  }
  return m;
}

std::vector<float> WeightReader::vec(const std::string& name, int n) { return to_f32(require(name, {n})); }

const TensorView& WeightReader::bytes(const std::string& short_name, const std::vector<int64_t>& shape) {
  const TensorView* t = find(short_name);
  const std::string name = prefix_ + short_name;
  if (!t) throw Error("BAD_CHECKPOINT", dir_ + ": tensor \"" + name + "\" not found in the checkpoint");
  if (t->dtype_text != "U8")
    throw Error("BAD_CHECKPOINT", t->file + ": tensor \"" + name + "\" has dtype " + t->dtype_text + "; expected U8");
  if (t->shape != shape)
    throw Error("BAD_CONFIG", t->file + ": tensor \"" + name + "\" has shape " + shape_text(t->shape) +
                                  " but config.json implies " + shape_text(shape));
  used_.insert(name);
  return *t;
}

void WeightReader::standard_attention(const ModelConfig& cfg, const std::string& p, LayerWeights& w) {
  const int H = cfg.hidden, nh = cfg.heads, nkv = cfg.kv_heads, hd = cfg.head_dim;
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
  if (cfg.o_bias) w.o_bias = vec(p + "self_attn.o_proj.bias", H);
  if (cfg.qk_norm == QKNorm::Whole) {
    w.q_norm = vec(p + "self_attn.q_norm.weight", nh * hd);
    w.k_norm = vec(p + "self_attn.k_norm.weight", nkv * hd);
  } else if (cfg.qk_norm == QKNorm::PerHead) {
    w.q_norm = vec(p + "self_attn.q_norm.weight", hd);
    w.k_norm = vec(p + "self_attn.k_norm.weight", hd);
  }
}

void WeightReader::dense_mlp(const std::string& p, int D, int H, LayerWeights& w) {
  w.dense_gate = mat(p + "gate_proj.weight", D, H);
  w.dense_up = mat(p + "up_proj.weight", D, H);
  w.dense_down = mat(p + "down_proj.weight", H, D);
  active += 3ull * D * H;
}

void WeightReader::experts(const std::string& block, const ExpertNames& names, int E, int I, int H, LayerWeights& w) {
  if (has(block + "experts.gate_up_proj")) return fused_experts(block + "experts.gate_up_proj", block + "experts.down_proj", E, I, H, w);
  any_per_expert = true;
  for (int e = 0; e < E; ++e) {
    const std::string ep = block + "experts." + std::to_string(e) + ".";
    w.gate.push_back(mat(ep + names.gate, I, H));
    w.up.push_back(mat(ep + names.up, I, H));
    w.down.push_back(mat(ep + names.down, H, I));
  }
}

}  // namespace routescope

namespace routescope {

void WeightReader::fused_experts(const std::string& gate_up, const std::string& down, int E, int I, int H, LayerWeights& w) {
  any_fused = true;
  if (const TensorView* t = find(gate_up); t && t->dtype == DType::F8E4M3)
    throw Error("BAD_CHECKPOINT", t->file + ": fused F8_E4M3 experts (\"" + gate_up + "\") are not " +
                                      "supported; FP8 checkpoints as released (per-expert tensors) are");
  const TensorView& gu = require(gate_up, {E, 2 * I, H});
  const TensorView& dn = require(down, {E, H, I});
  Mat gu_all{gu.data, gu.dtype, E * 2 * I, H}, dn_all{dn.data, dn.dtype, E * H, I};
  for (int e = 0; e < E; ++e) {
    w.gate.push_back(gu_all.slice_rows(e * 2 * I, I));
    w.up.push_back(gu_all.slice_rows(e * 2 * I + I, I));
    w.down.push_back(dn_all.slice_rows(e * H, H));
  }
}

}  // namespace routescope
