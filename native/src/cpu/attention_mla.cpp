// Multi-head latent attention (DeepSeek-V2/V3), forward and backward side by side. Per token:
//   q            = q_b(norm_q(q_a x))  or  q_proj x                     [heads × (nope + rope)]
//   [c, k_rope]  = kv_a x                                               [kv_lora_rank + rope]
//   [k_nope, v]  = kv_b(norm_kv(c)) per head                            [heads × (nope + v_dim)]
//   k            = [k_nope, RoPE(k_rope)] (k_rope shared by every head), q's rope part rotated the same way.
// The KV cache holds the expanded per-head k and v, so attention itself is the standard kernel with
// head_dim = nope + rope and v_head_dim = v_dim. The two latent RMSNorms use eps 1e-6 as transformers builds them.
#include <cstring>

#include "cpu/forward.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"

namespace routescope {

namespace {
constexpr float kLatentEps = 1e-6f;
}

void Decoder::latent_qkv(int l, const float* x, int T, int pos0, std::vector<float>& q, std::vector<float>& k,
                         std::vector<float>& v, LayerSave* save) {
  const LayerWeights& w = ck_.layers[l];
  const LatentAttention& m = cfg_.mla;
  const int nh = cfg_.heads, hd = cfg_.head_dim, vd = cfg_.v_head_dim, nope = m.qk_nope_dim, rope = m.qk_rope_dim;
  const int lat = m.kv_lora_rank, kva = lat + rope, kvb = nope + vd;
  q.resize(static_cast<size_t>(T) * nh * hd);
  if (m.q_lora_rank > 0) {
    const int R = m.q_lora_rank;
    std::vector<float> qa(static_cast<size_t>(T) * R), r(T);
    project(x, T, w.q_a, qa.data(), false, save != nullptr);
    if (save) save->q_lat = qa;
    for (int t = 0; t < T; ++t) r[t] = rmsnorm_row(&qa[static_cast<size_t>(t) * R], w.q_a_norm.data(), R, kLatentEps, &qa[static_cast<size_t>(t) * R]);
    if (save) save->r_q_lat = r;
    project(qa.data(), T, w.q_b, q.data(), false, save != nullptr);
  } else {
    project(x, T, w.q, q.data(), false, save != nullptr);
  }
  std::vector<float> ckv(static_cast<size_t>(T) * kva), cn(static_cast<size_t>(T) * lat), r(T);
  project(x, T, w.kv_a, ckv.data(), false, save != nullptr);
  for (int t = 0; t < T; ++t)
    r[t] = rmsnorm_row(&ckv[static_cast<size_t>(t) * kva], w.kv_a_norm.data(), lat, kLatentEps, &cn[static_cast<size_t>(t) * lat]);
  if (save) {
    save->kv_lat.resize(static_cast<size_t>(T) * lat);
    for (int t = 0; t < T; ++t)
      std::memcpy(&save->kv_lat[static_cast<size_t>(t) * lat], &ckv[static_cast<size_t>(t) * kva], lat * sizeof(float));
    save->r_kv_lat = r;
  }
  std::vector<float> kv(static_cast<size_t>(T) * nh * kvb);
  project(cn.data(), T, w.kv_b, kv.data(), false, save != nullptr);
  // RoPE on the shared k_rope (one head of width rope, stride kva, at offset lat) and on q's rope parts.
  rope_rows(ckv.data(), T, pos0, 1, kva, lat, 1.f);
  rope_rows(q.data(), T, pos0, nh, hd, nope, 1.f);
  k.resize(static_cast<size_t>(T) * nh * hd);
  v.resize(static_cast<size_t>(T) * nh * vd);
  for (int t = 0; t < T; ++t)
    for (int hh = 0; hh < nh; ++hh) {
      const float* src = &kv[(static_cast<size_t>(t) * nh + hh) * kvb];
      float* kt = &k[(static_cast<size_t>(t) * nh + hh) * hd];
      std::memcpy(kt, src, nope * sizeof(float));
      std::memcpy(kt + nope, &ckv[static_cast<size_t>(t) * kva + lat], rope * sizeof(float));
      std::memcpy(&v[(static_cast<size_t>(t) * nh + hh) * vd], src + nope, vd * sizeof(float));
    }
}

void Decoder::latent_qkv_backward(int l, const LayerSave& s, std::vector<float>& dq, std::vector<float>& dk,
                                  std::vector<float>& dv, float* dx) {
  const LayerWeights& w = ck_.layers[l];
  const LatentAttention& m = cfg_.mla;
  const int T = s.T, nh = cfg_.heads, hd = cfg_.head_dim, vd = cfg_.v_head_dim, nope = m.qk_nope_dim, rope = m.qk_rope_dim;
  const int lat = m.kv_lora_rank, kva = lat + rope, kvb = nope + vd;
  // Queries: undo RoPE on the rope parts, then back through q_b / its norm / q_a, or q_proj.
  rope_rows(dq.data(), T, s.pos0, nh, hd, nope, -1.f);
  if (m.q_lora_rank > 0) {
    const int R = m.q_lora_rank;
    std::vector<float> dqn(static_cast<size_t>(T) * R);
    matmul_backward_input(pool_, dq.data(), T, w.q_b, dqn.data(), false);
    for (int t = 0; t < T; ++t)
      rmsnorm_row_backward(&s.q_lat[static_cast<size_t>(t) * R], s.r_q_lat[t], w.q_a_norm.data(), &dqn[static_cast<size_t>(t) * R], R,
                           &dqn[static_cast<size_t>(t) * R], false);
    matmul_backward_input(pool_, dqn.data(), T, w.q_a, dx, true);
  } else {
    matmul_backward_input(pool_, dq.data(), T, w.q, dx, true);
  }
  // Keys and values: per-head nope / v parts go back through kv_b and the latent norm; the shared rope part sums
  // over heads, then undoes RoPE.
  std::vector<float> dkv(static_cast<size_t>(T) * nh * kvb), dckv(static_cast<size_t>(T) * kva, 0.f);
  for (int t = 0; t < T; ++t)
    for (int hh = 0; hh < nh; ++hh) {
      const float* dkt = &dk[(static_cast<size_t>(t) * nh + hh) * hd];
      float* dst = &dkv[(static_cast<size_t>(t) * nh + hh) * kvb];
      std::memcpy(dst, dkt, nope * sizeof(float));
      std::memcpy(dst + nope, &dv[(static_cast<size_t>(t) * nh + hh) * vd], vd * sizeof(float));
      float* dpe = &dckv[static_cast<size_t>(t) * kva + lat];
      for (int c = 0; c < rope; ++c) dpe[c] += dkt[nope + c];
    }
  rope_rows(dckv.data(), T, s.pos0, 1, kva, lat, -1.f);
  std::vector<float> dcn(static_cast<size_t>(T) * lat);
  matmul_backward_input(pool_, dkv.data(), T, w.kv_b, dcn.data(), false);
  for (int t = 0; t < T; ++t)
    rmsnorm_row_backward(&s.kv_lat[static_cast<size_t>(t) * lat], s.r_kv_lat[t], w.kv_a_norm.data(), &dcn[static_cast<size_t>(t) * lat], lat,
                         &dckv[static_cast<size_t>(t) * kva], false);
  matmul_backward_input(pool_, dckv.data(), T, w.kv_a, dx, true);
}

}  // namespace routescope
