#include "cpu/attention.h"

#include <algorithm>
#include <atomic>

#include "cpu/attention_avx512.h"
#include "cpu/matmul.h"

namespace routescope {

namespace {
constexpr int kBlockRows = 256;  // query rows of one work unit (one head): each unit streams its keys and values once

// attention_fused for keys and values stored as KV (float, or bf16 bits).
template <typename KV>
bool fused(ThreadPool& pool, const AttentionShape& s, const float* q, int T, int pos0,
           const std::vector<std::vector<KV>>& k, const std::vector<std::vector<KV>>& v, float* out) {
  if (!cpu_has_avx512() || T <= 0) return false;
  const int group = s.heads / s.kv_heads;
  const long ldq = static_cast<long>(s.heads) * s.k_dim, ldo = static_cast<long>(s.heads) * s.v_dim;
  struct Unit {
    int head, i0, rows;
  };
  // Later query blocks see more keys: deal them first so the short ones fill in at the end.
  std::vector<Unit> units;
  const int blocks = (T + kBlockRows - 1) / kBlockRows;
  for (int b = blocks - 1; b >= 0; --b)
    for (int h = 0; h < s.heads; ++h) units.push_back({h, b * kBlockRows, std::min(kBlockRows, T - b * kBlockRows)});
  const long scratch_floats = avx512::attention_scratch_floats(kBlockRows, s.k_dim, s.v_dim);
  std::atomic<size_t> next{0};
  pool.run_on_all([&](int) {
    thread_local std::vector<float> scratch;
    if (static_cast<long>(scratch.size()) < scratch_floats) scratch.resize(scratch_floats);
    for (size_t u; (u = next.fetch_add(1)) < units.size();) {
      const Unit& un = units[u];
      const int g = un.head / group;
      avx512::attention_rows(q + un.i0 * ldq + static_cast<long>(un.head) * s.k_dim, ldq, un.rows, pos0 + un.i0,
                             k[g].data(), v[g].data(), s.k_dim, s.v_dim, s.scale, s.window, s.chunk, s.sinks ? s.sinks + un.head : nullptr,
                             out + un.i0 * ldo + static_cast<long>(un.head) * s.v_dim, ldo, scratch.data());
    }
  }, int64_t(s.heads) * T * (pos0 + T) * (s.k_dim + s.v_dim));
  return true;
}
}  // namespace

bool attention_fused(ThreadPool& pool, const AttentionShape& s, const float* q, int T, int pos0,
                     const std::vector<std::vector<float>>& k, const std::vector<std::vector<float>>& v, float* out) {
  return fused(pool, s, q, T, pos0, k, v, out);
}

bool attention_fused(ThreadPool& pool, const AttentionShape& s, const float* q, int T, int pos0,
                     const std::vector<std::vector<uint16_t>>& k, const std::vector<std::vector<uint16_t>>& v, float* out) {
  return fused(pool, s, q, T, pos0, k, v, out);
}

}  // namespace routescope
