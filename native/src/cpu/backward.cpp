#include "cpu/backward.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "cpu/experts_general.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"

namespace routescope {

namespace {
// Per-thread scratch that keeps its capacity across calls (no fresh pages to fault in on every layer); contents are
// not initialised.
float* scratch(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}
Mat f32_mat(const float* data, int rows, int cols) { return Mat{reinterpret_cast<const uint8_t*>(data), DType::F32, rows, cols}; }
constexpr int kQueryBlock = 64;  // queries per causal block of the attention backward
}  // namespace

void attention_backward(ThreadPool& pool, int T, int pos0, int nh, int nkv, int hd, int vd, float scale,
                        const float* probs, const float* q, const float* dattn, const KVCache& cache, float* dq,
                        float* dk, float* dv) {
  const int group = nh / nkv, R = group * T, all = pos0 + T;
  const int qw = nh * hd, ow = nh * vd, kw = nkv * hd, vw = nkv * vd;
  pool.parallel_for(nkv, 1, [&](int64_t a, int64_t b, int) {
    thread_local std::vector<float> s_do, s_q, s_ds, s_dq, s_t, s_own, s_blk;
    for (int g = static_cast<int>(a); g < b; ++g) {
      // Rows of the group's query heads stacked: row h*T + i is head g*group + h at query i.
      float* dO = scratch(s_do, static_cast<size_t>(R) * vd);
      float* Q = scratch(s_q, static_cast<size_t>(R) * hd);
      for (int h = 0; h < group; ++h)
        for (int i = 0; i < T; ++i) {
          const int head = g * group + h;
          std::memcpy(dO + (static_cast<size_t>(h) * T + i) * vd, dattn + static_cast<size_t>(i) * ow + head * vd, vd * sizeof(float));
          std::memcpy(Q + (static_cast<size_t>(h) * T + i) * hd, q + static_cast<size_t>(i) * qw + head * hd, hd * sizeof(float));
        }
      const float* P = probs + static_cast<size_t>(g) * group * T * all;  // [R, all]
      // dS = P * (dO V^T - rowsum(P * dO V^T)) * scale: the softmax backward, zero wherever P is. Causal: a block of
      // queries i0..i1-1 sees keys below pos0 + i1 only, so dO V^T and dS K run over those keys (P is zero beyond).
      float* dS = scratch(s_ds, static_cast<size_t>(R) * all);
      float* dQ = scratch(s_dq, static_cast<size_t>(R) * hd);
      float* blk = scratch(s_blk, static_cast<size_t>(kQueryBlock) * all);
      for (int h = 0; h < group; ++h)
        for (int i0 = 0; i0 < T; i0 += kQueryBlock) {
          const int rows = std::min(T, i0 + kQueryBlock) - i0, keys = pos0 + i0 + rows;
          const size_t r0 = static_cast<size_t>(h) * T + i0;
          matmul_serial(dO + r0 * vd, rows, cache.values(g, keys), blk);
          for (int r = 0; r < rows; ++r) {
            const float* pr = P + (r0 + r) * all;
            float* br = blk + static_cast<size_t>(r) * keys;
            float* sr = dS + (r0 + r) * all;
            double dot = 0;
            for (int j = 0; j < keys; ++j) dot += static_cast<double>(pr[j]) * br[j];
            const float d = static_cast<float>(dot);
            for (int j = 0; j < keys; ++j) sr[j] = br[j] = pr[j] * (br[j] - d) * scale;
            std::fill(sr + keys, sr + all, 0.f);
          }
          matmul_backward_input_serial(blk, rows, cache.keys(g, keys), dQ + r0 * hd, false);
        }
      for (int h = 0; h < group; ++h)
        for (int i = 0; i < T; ++i)
          std::memcpy(dq + static_cast<size_t>(i) * qw + (g * group + h) * hd, dQ + (static_cast<size_t>(h) * T + i) * hd, hd * sizeof(float));
      // This call's own keys and values (positions pos0..): dK = dS^T Q and dV = P^T dO over those columns.
      float* Tr = scratch(s_t, static_cast<size_t>(T) * R);
      float* own = scratch(s_own, static_cast<size_t>(T) * std::max(hd, vd));
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < T; ++j) Tr[static_cast<size_t>(j) * R + r] = dS[static_cast<size_t>(r) * all + pos0 + j];
      matmul_backward_input_serial(Tr, T, f32_mat(Q, R, hd), own, false);
      for (int j = 0; j < T; ++j) std::memcpy(dk + static_cast<size_t>(j) * kw + g * hd, own + static_cast<size_t>(j) * hd, hd * sizeof(float));
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < T; ++j) Tr[static_cast<size_t>(j) * R + r] = P[static_cast<size_t>(r) * all + pos0 + j];
      matmul_backward_input_serial(Tr, T, f32_mat(dO, R, vd), own, false);
      for (int j = 0; j < T; ++j) std::memcpy(dv + static_cast<size_t>(j) * vw + g * vd, own + static_cast<size_t>(j) * vd, vd * sizeof(float));
    }
  }, int64_t(nh) * T * all * (hd + vd) * 2);
}

void moe_experts_backward(ThreadPool& pool, const ExpertMlp& mlp, const float* dy, int T, int k, const int32_t* sel, const float* w,
                          const float* g, const float* u, const std::vector<Mat>& gate, const std::vector<Mat>& up,
                          const std::vector<Mat>& down, float* dx) {
  const int E = static_cast<int>(gate.size());
  if (E == 0 || T <= 0) return;
  const int H = gate[0].cols, I = gate[0].rows, R = T * k;
  // Slots grouped by expert (counting sort, slot order kept within an expert).
  thread_local std::vector<int> offset, order;
  offset.assign(E + 1, 0);
  order.resize(R);
  for (int r = 0; r < R; ++r) ++offset[sel[r] + 1];
  for (int e = 0; e < E; ++e) offset[e + 1] += offset[e];
  {
    thread_local std::vector<int> fill;
    fill.assign(offset.begin(), offset.end() - 1);
    for (int r = 0; r < R; ++r) order[fill[sel[r]]++] = r;
  }
  // Each slot's input gradient lands in its own row, then every token sums its slots in slot order: the result does
  // not depend on which thread ran which expert.
  thread_local std::vector<float> slots_store;
  float* slots = scratch(slots_store, static_cast<size_t>(R) * H);
  std::vector<int> experts;
  for (int e = 0; e < E; ++e)
    if (offset[e + 1] > offset[e]) experts.push_back(e);
  // Largest first, so the last unit a thread takes is a small one.
  std::stable_sort(experts.begin(), experts.end(), [&](int a, int b) { return offset[a + 1] - offset[a] > offset[b + 1] - offset[b]; });
  std::atomic<int> next{0};
  const int* off = offset.data();
  const int* ord = order.data();
  pool.run_on_all([&](int) {
    thread_local std::vector<float> s_dy, s_g, s_u, s_da, s_dx;
    for (int unit; (unit = next.fetch_add(1)) < static_cast<int>(experts.size());) {
      const int e = experts[unit], n = off[e + 1] - off[e];
      const int* rows = ord + off[e];
      float* dye = scratch(s_dy, static_cast<size_t>(n) * H);
      float* ge = scratch(s_g, static_cast<size_t>(n) * I);
      float* ue = scratch(s_u, static_cast<size_t>(n) * I);
      for (int i = 0; i < n; ++i) {
        const int r = rows[i];
        const float wt = w[r];
        const float* dyt = dy + static_cast<size_t>(r / k) * H;
        for (int d = 0; d < H; ++d) dye[static_cast<size_t>(i) * H + d] = wt * dyt[d];
        std::memcpy(ge + static_cast<size_t>(i) * I, g + static_cast<size_t>(r) * I, I * sizeof(float));
        std::memcpy(ue + static_cast<size_t>(i) * I, u + static_cast<size_t>(r) * I, I * sizeof(float));
      }
      float* da = scratch(s_da, static_cast<size_t>(n) * I);
      matmul_backward_input_serial(dye, n, down[e], da, false);
      for (size_t i = 0; i < static_cast<size_t>(n) * I; ++i) {
        float ag, au;
        expert_act(mlp, ge[i], ue[i], &ag, &au);
        ue[i] = da[i] * ag;  // d gate pre-activation
        ge[i] = da[i] * au;  // d up pre-activation
      }
      float* dxe = scratch(s_dx, static_cast<size_t>(n) * H);
      matmul_backward_input_serial(ue, n, gate[e], dxe, false);
      matmul_backward_input_serial(ge, n, up[e], dxe, true);
      for (int i = 0; i < n; ++i)
        std::memcpy(slots + static_cast<size_t>(rows[i]) * H, dxe + static_cast<size_t>(i) * H, H * sizeof(float));
    }
  }, int64_t(R) * 3 * H * I);
  pool.parallel_for(T, 16, [&](int64_t a, int64_t b, int) {
    for (int64_t t = a; t < b; ++t) {
      float* out = dx + t * H;
      for (int s = 0; s < k; ++s) {
        const float* in = slots + (t * k + s) * H;
        for (int d = 0; d < H; ++d) out[d] += in[d];
      }
    }
  }, int64_t(T) * k * H);
}

}  // namespace routescope
