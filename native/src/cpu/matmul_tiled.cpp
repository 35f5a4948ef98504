// Weights that are not plain row-major F32/F16/BF16 — block-scaled FP8 (E4M3), MXFP4 blocks, transposed storage
// (gpt-oss experts) — are multiplied a tile of rows at a time: the tile is widened to f32 (with its scales), run
// through the f32 kernels, and dropped; no dequantised or transposed copy larger than one tile (about 4 MiB) exists.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/convert.h"
#include "cpu/matmul.h"
#include "cpu/matmul_avx512.h"

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

// The 16 FP4 (E2M1) values, low nibble first within a byte (transformers' integrations/mxfp4.py).
const float kFp4[16] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -0.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};

// The 256 E8M0 scales 2^(e - 127) as widen_rows computes them (e = 255 gives inf, as there).
struct E8M0Table {
  float v[256];
  E8M0Table() {
    for (int e = 0; e < 256; ++e) v[e] = std::ldexp(1.f, e - 127);
  }
};
const E8M0Table kE8M0;

// Decode-sized products with MXFP4 weights read the blocks where they are stored (avx512::mxfp4_rows): widening a
// tile to f32 first writes and reads eight times the bytes the weights take, and decode is bound by those reads.
bool mxfp4_direct(const Mat& W, int T) { return W.enc == Encoding::Mxfp4 && T <= kStreamRows && cpu_has_avx512(); }
void mxfp4_rows(const float* x, int T, const Mat& W, int n0, int n1, float* y, bool accumulate) {
  avx512::mxfp4_rows(x, T, W.cols, W.data, W.mx_scales, W.rstep, W.roff, kFp4, kE8M0.v, n0, n1, y, W.rows, accumulate);
}

// Rows per tile: whole scale blocks, about 4 MiB of f32.
int tile_rows(const Mat& W) {
  const int per_block = W.dtype == DType::F8E4M3 ? W.block_rows : 8;
  const int64_t want = std::max<int64_t>(1, (int64_t(4) << 20) / (int64_t(4) * W.cols) / per_block);
  return static_cast<int>(std::min<int64_t>(want * per_block, W.rows));
}

// Rows [r0 + a, r0 + b) of W as f32 into out's rows [a, b) (out is [r1 - r0, cols]).
void widen_rows(const Mat& W, int r0, int64_t a, int64_t b, float* out) {
  const int K = W.cols;
  for (int64_t i = a; i < b; ++i) {
    const int r = r0 + static_cast<int>(i);
    float* o = out + static_cast<size_t>(i) * K;
    if (W.enc == Encoding::Mxfp4) {
      const size_t srow = static_cast<size_t>(r) * W.rstep + W.roff;
      const uint8_t* q = W.data + srow * (K / 2);
      const uint8_t* e = W.mx_scales + srow * (K / 32);
      if (cpu_has_avx512()) {
        avx512::mxfp4_widen_row(q, e, K, kFp4, kE8M0.v, o);
        continue;
      }
      for (int blk = 0; blk < K / 32; ++blk) {
        const float s = std::ldexp(1.f, int(e[blk]) - 127);
        for (int j = 0; j < 16; ++j) {
          const uint8_t byte = q[blk * 16 + j];
          o[blk * 32 + 2 * j] = kFp4[byte & 0xF] * s;
          o[blk * 32 + 2 * j + 1] = kFp4[byte >> 4] * s;
        }
      }
    } else if (W.enc == Encoding::Transposed) {  // element (r, c) at storage [c, r·rstep + roff]
      const size_t esize = dtype_size(W.dtype), col = static_cast<size_t>(r) * W.rstep + W.roff;
      for (int c = 0; c < K; ++c) {
        const uint8_t* p = W.data + (static_cast<size_t>(c) * W.ld + col) * esize;
        if (W.dtype == DType::F32) {
          std::memcpy(&o[c], p, 4);
        } else {
          uint16_t v;
          std::memcpy(&v, p, 2);
          o[c] = W.dtype == DType::BF16 ? bf16_to_f32(v) : f16_to_f32(v);
        }
      }
    } else {  // block-scaled FP8
      const uint8_t* q = W.row(r);
      const float* s = W.scale + static_cast<size_t>(r / W.block_rows) * W.scale_cols();
      for (int c = 0; c < K; ++c) o[c] = kE4M3.v[q[c]] * s[c / W.block_cols];
    }
  }
}

// Rows [r0, r1) of W as f32 into out ([r1 - r0, cols]).
void widen_rows(ThreadPool& pool, const Mat& W, int r0, int r1, float* out) {
  pool.parallel_for(r1 - r0, 8, [&](int64_t a, int64_t b, int) { widen_rows(W, r0, a, b, out); }, int64_t(r1 - r0) * W.cols);
}

}  // namespace

void fp8_to_f32(const uint8_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = kE4M3.v[src[i]];
}

void matmul_tiled(ThreadPool& pool, const float* x, int T, const Mat& W, float* y, bool accumulate) {
  const int N = W.rows, K = W.cols, R = tile_rows(W);
  if (mxfp4_direct(W, T)) {  // slabs of 64 rows (about 46 KiB of blocks at K = 2880) taken dynamically, as matmul's
    constexpr int kSlab = 64;
    const int slabs = (N + kSlab - 1) / kSlab;
    std::atomic<int> next{0};
    pool.run_on_all([&](int) {
      for (int u; (u = next.fetch_add(1)) < slabs;) mxfp4_rows(x, T, W, u * kSlab, std::min(N, (u + 1) * kSlab), y, accumulate);
    }, int64_t(T) * N * K);
    return;
  }
  std::vector<float> tile(static_cast<size_t>(R) * K), part(static_cast<size_t>(T) * R);
  for (int r0 = 0; r0 < N; r0 += R) {
    const int r1 = std::min(N, r0 + R), n = r1 - r0;
    widen_rows(pool, W, r0, r1, tile.data());
    matmul(pool, x, T, Mat{reinterpret_cast<const uint8_t*>(tile.data()), DType::F32, n, K}, part.data());
    for (int t = 0; t < T; ++t) {
      float* yt = y + static_cast<size_t>(t) * N + r0;
      const float* pt = &part[static_cast<size_t>(t) * n];
      for (int i = 0; i < n; ++i) yt[i] = accumulate ? yt[i] + pt[i] : pt[i];
    }
  }
}

void matmul_tiled_backward_input(ThreadPool& pool, const float* dy, int T, const Mat& W, float* dx, bool accumulate) {
  const int N = W.rows, K = W.cols, R = tile_rows(W);
  if (!accumulate) std::fill(dx, dx + static_cast<size_t>(T) * K, 0.f);
  std::vector<float> tile(static_cast<size_t>(R) * K), dyt(static_cast<size_t>(T) * R);
  for (int r0 = 0; r0 < N; r0 += R) {
    const int r1 = std::min(N, r0 + R), n = r1 - r0;
    widen_rows(pool, W, r0, r1, tile.data());
    for (int t = 0; t < T; ++t) std::memcpy(&dyt[static_cast<size_t>(t) * n], dy + static_cast<size_t>(t) * N + r0, n * sizeof(float));
    matmul_backward_input(pool, dyt.data(), T, Mat{reinterpret_cast<const uint8_t*>(tile.data()), DType::F32, n, K}, dx, true);
  }
}

// The serial kernels' tiled path: called from a pool worker (one expert per thread), so tiles are widened on this thread.
void matmul_tiled_serial(const float* x, int T, const Mat& W, float* y, bool accumulate) {
  const int N = W.rows, K = W.cols, R = tile_rows(W);
  if (mxfp4_direct(W, T)) return mxfp4_rows(x, T, W, 0, N, y, accumulate);
  thread_local std::vector<float> tile, part;
  tile.resize(static_cast<size_t>(R) * K), part.resize(static_cast<size_t>(T) * R);
  for (int r0 = 0; r0 < N; r0 += R) {
    const int r1 = std::min(N, r0 + R), n = r1 - r0;
    widen_rows(W, r0, 0, n, tile.data());
    matmul_serial(x, T, Mat{reinterpret_cast<const uint8_t*>(tile.data()), DType::F32, n, K}, part.data(), false);
    for (int t = 0; t < T; ++t) {
      float* yt = y + static_cast<size_t>(t) * N + r0;
      const float* pt = &part[static_cast<size_t>(t) * n];
      for (int i = 0; i < n; ++i) yt[i] = accumulate ? yt[i] + pt[i] : pt[i];
    }
  }
}

void matmul_tiled_backward_input_serial(const float* dy, int T, const Mat& W, float* dx, bool accumulate) {
  const int N = W.rows, K = W.cols, R = tile_rows(W);
  if (!accumulate) std::fill(dx, dx + static_cast<size_t>(T) * K, 0.f);
  thread_local std::vector<float> tile, dyt;
  tile.resize(static_cast<size_t>(R) * K), dyt.resize(static_cast<size_t>(T) * R);
  for (int r0 = 0; r0 < N; r0 += R) {
    const int r1 = std::min(N, r0 + R), n = r1 - r0;
    widen_rows(W, r0, 0, n, tile.data());
    for (int t = 0; t < T; ++t) std::memcpy(&dyt[static_cast<size_t>(t) * n], dy + static_cast<size_t>(t) * N + r0, n * sizeof(float));
    matmul_backward_input_serial(dyt.data(), T, Mat{reinterpret_cast<const uint8_t*>(tile.data()), DType::F32, n, K}, dx, true);
  }
}

void moe_experts_tiled(ThreadPool& pool, const float* x, int H, const int32_t* tokens, const int32_t* order,
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
