// Block-scaled FP8 (E4M3) weights: a tile of rows is widened to f32 with its block scales, multiplied by the f32
// kernels, and dropped; no dequantised copy larger than one tile (about 4 MiB) ever exists.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/matmul.h"

namespace routescope {

namespace {

// The 256 E4M3 (FN: no infinities, 0x7F / 0xFF are NaN) values.
struct E4M3Table {
  float v[256];
  E4M3Table() {
    for (int c = 0; c < 256; ++c) {
      const int s = c >> 7, e = (c >> 3) & 0xF, m = c & 7;
      float x;
      if (e == 0xF && m == 7) x = __builtin_nanf("");
      else if (e == 0) x = m / 8.f * (1.f / 64.f);
      else x = (1.f + m / 8.f) * std::ldexp(1.f, e - 7);
      v[c] = s ? -x : x;
    }
  }
};
const E4M3Table kE4M3;

// Rows per tile: whole scale blocks, about 4 MiB of f32.
int tile_rows(const Mat& W) {
  const int per_block = W.block_rows;
  const int64_t want = std::max<int64_t>(1, (int64_t(4) << 20) / (int64_t(4) * W.cols) / per_block);
  return static_cast<int>(std::min<int64_t>(want * per_block, W.rows));
}

// Rows [r0 + a, r0 + b) of W as f32 into out's rows [a, b) (out is [r1 - r0, cols]).
void dequantise_rows(const Mat& W, int r0, int64_t a, int64_t b, float* out) {
  const int sc = W.scale_cols();
  for (int64_t i = a; i < b; ++i) {
    const int r = r0 + static_cast<int>(i);
    const uint8_t* q = W.row(r);
    const float* s = W.scale + static_cast<size_t>(r / W.block_rows) * sc;
    float* o = out + static_cast<size_t>(i) * W.cols;
    for (int c = 0; c < W.cols; ++c) o[c] = kE4M3.v[q[c]] * s[c / W.block_cols];
  }
}

// Rows [r0, r1) of W as f32 into out ([r1 - r0, cols]).
void dequantise(ThreadPool& pool, const Mat& W, int r0, int r1, float* out) {
  pool.parallel_for(r1 - r0, 8, [&](int64_t a, int64_t b, int) { dequantise_rows(W, r0, a, b, out); });
}

}  // namespace

void fp8_to_f32(const uint8_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = kE4M3.v[src[i]];
}

void matmul_fp8(ThreadPool& pool, const float* x, int T, const Mat& W, float* y, bool accumulate) {
  const int N = W.rows, K = W.cols, R = tile_rows(W);
  std::vector<float> tile(static_cast<size_t>(R) * K), part(static_cast<size_t>(T) * R);
  for (int r0 = 0; r0 < N; r0 += R) {
    const int r1 = std::min(N, r0 + R), n = r1 - r0;
    dequantise(pool, W, r0, r1, tile.data());
    matmul(pool, x, T, Mat{reinterpret_cast<const uint8_t*>(tile.data()), DType::F32, n, K}, part.data());
    for (int t = 0; t < T; ++t) {
      float* yt = y + static_cast<size_t>(t) * N + r0;
      const float* pt = &part[static_cast<size_t>(t) * n];
      for (int i = 0; i < n; ++i) yt[i] = accumulate ? yt[i] + pt[i] : pt[i];
    }
  }
}

void matmul_fp8_backward_input(ThreadPool& pool, const float* dy, int T, const Mat& W, float* dx, bool accumulate) {
  const int N = W.rows, K = W.cols, R = tile_rows(W);
  if (!accumulate) std::fill(dx, dx + static_cast<size_t>(T) * K, 0.f);
  std::vector<float> tile(static_cast<size_t>(R) * K), dyt(static_cast<size_t>(T) * R);
  for (int r0 = 0; r0 < N; r0 += R) {
    const int r1 = std::min(N, r0 + R), n = r1 - r0;
    dequantise(pool, W, r0, r1, tile.data());
    for (int t = 0; t < T; ++t) std::memcpy(&dyt[static_cast<size_t>(t) * n], dy + static_cast<size_t>(t) * N + r0, n * sizeof(float));
    matmul_backward_input(pool, dyt.data(), T, Mat{reinterpret_cast<const uint8_t*>(tile.data()), DType::F32, n, K}, dx, true);
  }
}

// The serial kernels' FP8 path: called from a pool worker (one expert per thread), so tiles are widened on this thread.
void matmul_fp8_serial(const float* x, int T, const Mat& W, float* y, bool accumulate) {
  const int N = W.rows, K = W.cols, R = tile_rows(W);
  thread_local std::vector<float> tile, part;
  tile.resize(static_cast<size_t>(R) * K), part.resize(static_cast<size_t>(T) * R);
  for (int r0 = 0; r0 < N; r0 += R) {
    const int r1 = std::min(N, r0 + R), n = r1 - r0;
    dequantise_rows(W, r0, 0, n, tile.data());
    matmul_serial(x, T, Mat{reinterpret_cast<const uint8_t*>(tile.data()), DType::F32, n, K}, part.data(), false);
    for (int t = 0; t < T; ++t) {
      float* yt = y + static_cast<size_t>(t) * N + r0;
      const float* pt = &part[static_cast<size_t>(t) * n];
      for (int i = 0; i < n; ++i) yt[i] = accumulate ? yt[i] + pt[i] : pt[i];
    }
  }
}

void matmul_fp8_backward_input_serial(const float* dy, int T, const Mat& W, float* dx, bool accumulate) {
  const int N = W.rows, K = W.cols, R = tile_rows(W);
  if (!accumulate) std::fill(dx, dx + static_cast<size_t>(T) * K, 0.f);
  thread_local std::vector<float> tile, dyt;
  tile.resize(static_cast<size_t>(R) * K), dyt.resize(static_cast<size_t>(T) * R);
  for (int r0 = 0; r0 < N; r0 += R) {
    const int r1 = std::min(N, r0 + R), n = r1 - r0;
    dequantise_rows(W, r0, 0, n, tile.data());
    for (int t = 0; t < T; ++t) std::memcpy(&dyt[static_cast<size_t>(t) * n], dy + static_cast<size_t>(t) * N + r0, n * sizeof(float));
    matmul_backward_input_serial(dyt.data(), T, Mat{reinterpret_cast<const uint8_t*>(tile.data()), DType::F32, n, K}, dx, true);
  }
}

void moe_experts_fp8(ThreadPool& pool, const float* x, int H, const int32_t* tokens, const int32_t* order,
                     const int* count, int E, const std::vector<Mat>& gate, const std::vector<Mat>& up,
                     const std::vector<Mat>& down, float* o, float* save_g, float* save_u) {
  std::vector<float> xe, g, u;
  for (int e = 0; e < E; ++e) {
    const int b = count[e], n = count[e + 1] - b;
    if (!n) continue;
    const int I = gate[e].rows;
    xe.resize(static_cast<size_t>(n) * H), g.resize(static_cast<size_t>(n) * I), u.resize(static_cast<size_t>(n) * I);
    for (int i = 0; i < n; ++i) std::memcpy(&xe[static_cast<size_t>(i) * H], x + static_cast<size_t>(tokens[b + i]) * H, H * sizeof(float));
    matmul(pool, xe.data(), n, gate[e], g.data());
    matmul(pool, xe.data(), n, up[e], u.data());
    for (int i = 0; i < n; ++i) {
      const size_t row = static_cast<size_t>(order[b + i]);
      if (save_g) std::memcpy(save_g + row * I, &g[static_cast<size_t>(i) * I], I * sizeof(float));
      if (save_u) std::memcpy(save_u + row * I, &u[static_cast<size_t>(i) * I], I * sizeof(float));
    }
    for (size_t j = 0; j < g.size(); ++j) g[j] = g[j] / (1.f + std::exp(-g[j])) * u[j];
    matmul(pool, g.data(), n, down[e], o + static_cast<size_t>(b) * H);
  }
}

}  // namespace routescope
