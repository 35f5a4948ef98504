// CUDA backend: weights uploaded once in their stored dtype, fp32 activations, tensor-core grouped GEMMs for
// bf16/f16 weights (fp32 accumulate), the router's top-k on the host with the CPU's route_token so routing
// decisions follow exactly the same rules as the CPU path.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "cpu/forward.h"
#include "cpu/router.h"
#include "cuda/backend.h"

namespace routescope {
namespace cuda {

namespace {

void check(cudaError_t e, const char* what) {
  if (e == cudaErrorMemoryAllocation) throw Error("OOM", std::string("GPU out of memory: ") + what);
  if (e != cudaSuccess) throw Error("CUDA", std::string(what) + ": " + cudaGetErrorString(e));
}

// ----------------------------------------------------------------------------------------------------------
// Device helpers

template <int DT>
__device__ __forceinline__ float load_w(const void* p, size_t i) {
  if (DT == 0) return static_cast<const float*>(p)[i];
  if (DT == 1) return __half2float(static_cast<const __half*>(p)[i]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
__device__ float block_sum(float v) {
  __shared__ float part[32];
  __shared__ float total;
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    float w = threadIdx.x < (blockDim.x + 31) / 32 ? part[threadIdx.x] : 0.f;
    w = warp_sum(w);
    if (threadIdx.x == 0) total = w;
  }
  __syncthreads();
  return total;
}

int dt_code(DType d) { return d == DType::F32 ? 0 : (d == DType::F16 ? 1 : 2); }

// ----------------------------------------------------------------------------------------------------------
// Kernels

template <int DT>
__global__ void k_embed(const int* tokens, const void* W, int H, float* out) {
  const int t = blockIdx.x;
  const size_t row = static_cast<size_t>(tokens[t]) * H;
  for (int d = threadIdx.x; d < H; d += blockDim.x) out[static_cast<size_t>(t) * H + d] = load_w<DT>(W, row + d);
}

// y = x * rsqrt(mean(x^2) + eps) * w, one block per row of n values (rows may be heads of a projection).
__global__ void k_rmsnorm(const float* x, const float* w, int n, float eps, float* y) {
  const size_t r = blockIdx.x;
  const float* xr = x + r * n;
  float ss = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
  const float scale = rsqrtf(block_sum(ss) / n + eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) y[r * n + i] = xr[i] * scale * w[i];
}

__global__ void k_add_bias_clip(float* y, const float* b, int T, int N, float clip) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<size_t>(T) * N) return;
  float v = y[i] + (b ? b[i % N] : 0.f);
  if (clip > 0) v = fminf(clip, fmaxf(-clip, v));
  y[i] = v;
}

// RoPE (rotate_half) on [T, heads, hd] rows at absolute positions pos0 + t.
__global__ void k_rope(float* v, int T, int heads, int hd, int pos0, const float* inv_freq) {
  const int t = blockIdx.x, h = blockIdx.y, half = hd / 2;
  float* x = v + (static_cast<size_t>(t) * heads + h) * hd;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float s, c;
    sincosf((pos0 + t) * inv_freq[i], &s, &c);
    const float a = x[i], b = x[i + half];
    x[i] = a * c - b * s;
    x[i + half] = b * c + a * s;
  }
}

// Copies this call's K/V rows into the cache at positions pos0.. (cache rows = positions, width = nkv*hd).
__global__ void k_store_kv(const float* k, const float* v, int T, int width, int pos0, float* kc, float* vc) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<size_t>(T) * width) return;
  kc[static_cast<size_t>(pos0) * width + i] = k[i];
  vc[static_cast<size_t>(pos0) * width + i] = v[i];
}

// One warp per (query, head): online softmax over the visible keys; each lane owns hd/32 dimensions (hd <= 256).
__global__ void k_attention(const float* q, const float* kc, const float* vc, float* out, int T, int pos0, int nh,
                            int nkv, int hd, int window, float scale) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (warp >= T * nh) return;
  const int i = warp / nh, h = warp % nh, g = h / (nh / nkv), p = pos0 + i;
  const int width = nkv * hd, per = (hd + 31) / 32;
  const float* qi = q + (static_cast<size_t>(i) * nh + h) * hd;
  float qv[8], acc[8];
  for (int c = 0; c < per; ++c) {
    const int d = lane + 32 * c;
    qv[c] = d < hd ? qi[d] : 0.f;
    acc[c] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  const int j0 = window > 0 ? max(0, p - window + 1) : 0;
  for (int j = j0; j <= p; ++j) {
    const float* kj = kc + static_cast<size_t>(j) * width + g * hd;
    float s = 0;
    for (int c = 0; c < per; ++c) {
      const int d = lane + 32 * c;
      if (d < hd) s += qv[c] * kj[d];
    }
    s = warp_sum(s) * scale;
    const float mn = fmaxf(m, s), corr = __expf(m - mn), e = __expf(s - mn);
    l = l * corr + e;
    const float* vj = vc + static_cast<size_t>(j) * width + g * hd;
    for (int c = 0; c < per; ++c) {
      const int d = lane + 32 * c;
      acc[c] = acc[c] * corr + (d < hd ? e * vj[d] : 0.f);
    }
    m = mn;
  }
  float* oi = out + (static_cast<size_t>(i) * nh + h) * hd;
  for (int c = 0; c < per; ++c) {
    const int d = lane + 32 * c;
    if (d < hd) oi[d] = acc[c] / l;
  }
}

// SIMT matmul for small batches or F32 weights: one warp per (row n, block of up to 8 tokens).
template <int DT>
__global__ void k_matmul_simt(const float* x, int T, int K, const void* W, int N, float* y, int accumulate) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  const int tblocks = (T + 7) / 8;
  if (warp >= N * tblocks) return;
  const int n = warp / tblocks, t0 = (warp % tblocks) * 8, tn = min(8, T - t0);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const size_t row = static_cast<size_t>(n) * K;
  for (int k = lane; k < K; k += 32) {
    const float w = load_w<DT>(W, row + k);
    for (int t = 0; t < tn; ++t) acc[t] += w * x[static_cast<size_t>(t0 + t) * K + k];
  }
  for (int t = 0; t < tn; ++t) {
    const float s = warp_sum(acc[t]);
    if (lane == 0) {
      float* dst = y + static_cast<size_t>(t0 + t) * N + n;
      *dst = accumulate ? *dst + s : s;
    }
  }
}

template <typename Half>
__global__ void k_to_half(const float* x, size_t n, size_t n_pad, Half* out);
template <>
__global__ void k_to_half<__nv_bfloat16>(const float* x, size_t n, size_t n_pad, __nv_bfloat16* out) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n_pad) out[i] = __float2bfloat16(i < n ? x[i] : 0.f);
}
template <>
__global__ void k_to_half<__half>(const float* x, size_t n, size_t n_pad, __half* out) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n_pad) out[i] = __float2half(i < n ? x[i] : 0.f);
}

// Grouped GEMM on tensor cores: each tile is 16 rows x 64 columns of one group's output (4 warps x 16x16).
// Group g: rows [row_off[g], row_off[g] + rows[g]) of A (half, [*, K], row-major, rows padded to 16) times
// W_g^T (W_g = [N, K] row-major, i.e. K x N column-major) into Y (fp32, [*, N]).
struct Tile {
  int group, row0, col0;
};
template <typename Half>
__global__ void k_grouped_wmma(const Tile* tiles, const Half* A, int K, const void* const* W, int N, float* Y,
                               int accumulate) {
  using namespace nvcuda;
  const Tile tile = tiles[blockIdx.x];
  const int warp = threadIdx.x >> 5;
  const int col = tile.col0 + warp * 16;
  if (col >= N) return;
  const Half* a = A + static_cast<size_t>(tile.row0) * K;
  const Half* b = static_cast<const Half*>(W[tile.group]) + static_cast<size_t>(col) * K;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, Half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, Half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  float* c = Y + static_cast<size_t>(tile.row0) * N + col;
  if (accumulate) wmma::load_matrix_sync(fc, c, N, wmma::mem_row_major);
  else wmma::fill_fragment(fc, 0.f);
  for (int k = 0; k < K; k += 16) {
    wmma::load_matrix_sync(fa, a + k, K);
    wmma::load_matrix_sync(fb, b + k, K);
    wmma::mma_sync(fc, fa, fb, fc);
  }
  wmma::store_matrix_sync(c, fc, N, wmma::mem_row_major);
}

__global__ void k_gather_rows(const float* x, const int* src_row, int R, int H, float* out) {
  const int r = blockIdx.x;
  if (r >= R) return;
  const float* s = x + static_cast<size_t>(src_row[r]) * H;
  for (int d = threadIdx.x; d < H; d += blockDim.x) out[static_cast<size_t>(r) * H + d] = src_row[r] >= 0 ? s[d] : 0.f;
}

__global__ void k_swiglu(float* g, const float* u, size_t n) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) g[i] = g[i] / (1.f + __expf(-g[i])) * u[i];
}

// y[t] += sum over slots of weight * expert_out[row(t, slot)]: deterministic, no atomics.
__global__ void k_combine(const float* o, const int* row_of, const float* w, int k, int H, float* y) {
  const int t = blockIdx.x;
  for (int d = threadIdx.x; d < H; d += blockDim.x) {
    float s = 0;
    for (int j = 0; j < k; ++j) s += w[t * k + j] * o[static_cast<size_t>(row_of[t * k + j]) * H + d];
    y[static_cast<size_t>(t) * H + d] += s;
  }
}

// qwen2_moe shared expert: y[t] += sigmoid(<x[t], gate_w>) * so[t]
__global__ void k_shared_gate(const float* x, const float* gw, const float* so, int H, float* y) {
  const int t = blockIdx.x;
  float s = 0;
  for (int d = threadIdx.x; d < H; d += blockDim.x) s += x[static_cast<size_t>(t) * H + d] * gw[d];
  const float gate = 1.f / (1.f + __expf(-block_sum(s)));
  for (int d = threadIdx.x; d < H; d += blockDim.x) y[static_cast<size_t>(t) * H + d] += gate * so[static_cast<size_t>(t) * H + d];
}

__global__ void k_add(float* y, const float* x, size_t n) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] += x[i];
}

unsigned blocks_for(size_t n, unsigned threads = 256) { return static_cast<unsigned>((n + threads - 1) / threads); }

// ----------------------------------------------------------------------------------------------------------
// Device memory

struct Buffer {
  void* p = nullptr;
  size_t bytes = 0;
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() {
    if (p) cudaFree(p);
  }
  void ensure(size_t n) {
    if (n <= bytes) return;
    if (p) cudaFree(p);
    p = nullptr;
    check(cudaMalloc(&p, n), "allocating a work buffer");
    bytes = n;
  }
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

struct DMat {
  const void* p = nullptr;
  DType dtype = DType::F32;
  int rows = 0, cols = 0;
};

struct DLayer {
  const float *attn_norm = nullptr, *mlp_norm = nullptr, *q_bias = nullptr, *k_bias = nullptr, *v_bias = nullptr;
  const float *q_norm = nullptr, *k_norm = nullptr, *shared_expert_gate = nullptr;
  DMat q, k, v, o, router, dense_gate, dense_up, dense_down, shared_gate, shared_up, shared_down;
  std::vector<DMat> gate, up, down;
  const void* const* gate_ptrs = nullptr;  // device arrays of expert weight pointers (grouped GEMMs)
  const void* const* up_ptrs = nullptr;
  const void* const* down_ptrs = nullptr;
};

class DeviceModelImpl;

class DeviceSessionImpl : public DeviceSession {
 public:
  DeviceSessionImpl(DeviceModelImpl& m, int max_context);
  void forward(const std::vector<int>& tokens, int pos0, const Patch& patch, const RoutingCallback& on_layer, int first,
               int rows, std::vector<float>& logits, const std::atomic<bool>* cancel) override;

 private:
  void mm(const float* x, int T, const DMat& W, float* y, bool accumulate);
  void grouped(const float* x_rows, const std::vector<int>& counts, const std::vector<int>& offsets,
               const void* const* ptrs, DType dtype, int K, int N, float* y, bool accumulate);
  DeviceModelImpl& m_;
  int max_context_;
  std::vector<Buffer> kcache_, vcache_;
  Buffer h_, x_, q_, k_, v_, attn_, y_, z_, xe_, g_, u_, half_, tiles_, idx_, map_, wts_, so_, tok_, logits_;
  Buffer out_, one_, xr_, gr_, ur_, or_;  // work buffers reused across calls (stream order keeps them safe)
};

class DeviceModelImpl : public DeviceModel {
 public:
  explicit DeviceModelImpl(const Checkpoint& ck) : ck_(ck) {}
  ~DeviceModelImpl() override {
    for (void* p : allocations_) cudaFree(p);
  }
  void upload();
  std::unique_ptr<DeviceSession> session(int max_context) override {
    return std::make_unique<DeviceSessionImpl>(*this, max_context);
  }
  std::string device_name() const override { return name_; }
  size_t weight_bytes() const override { return bytes_; }

  const Checkpoint& ck_;
  DMat embed, lm_head;
  const float* final_norm = nullptr;
  const float* inv_freq = nullptr;
  std::vector<DLayer> layers;

 private:
  void* alloc_copy(const void* host, size_t bytes) {
    void* p = nullptr;
    check(cudaMalloc(&p, bytes), "uploading weights");
    allocations_.push_back(p);
    check(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice), "uploading weights");
    bytes_ += bytes;
    return p;
  }
  DMat mat(const Mat& m) {
    if (!m.data) return {};
    return DMat{alloc_copy(m.data, static_cast<size_t>(m.rows) * m.cols * dtype_size(m.dtype)), m.dtype, m.rows, m.cols};
  }
  const float* vec(const std::vector<float>& v) {
    return v.empty() ? nullptr : static_cast<const float*>(alloc_copy(v.data(), v.size() * sizeof(float)));
  }
  const void* const* ptrs(const std::vector<DMat>& mats) {
    std::vector<const void*> host;
    for (const auto& m : mats) host.push_back(m.p);
    return static_cast<const void* const*>(alloc_copy(host.data(), host.size() * sizeof(void*)));
  }
  std::vector<void*> allocations_;
  size_t bytes_ = 0;
  std::string name_;
};

size_t mat_bytes(const Mat& m) { return m.data ? static_cast<size_t>(m.rows) * m.cols * dtype_size(m.dtype) : 0; }

void DeviceModelImpl::upload() {
  const ModelConfig& cfg = ck_.config;
  // Refuse before allocating anything when the weights cannot fit.
  size_t need = mat_bytes(ck_.embed) + (ck_.lm_head.data == ck_.embed.data ? 0 : mat_bytes(ck_.lm_head));
  for (const auto& l : ck_.layers) {
    for (const Mat* m : {&l.q, &l.k, &l.v, &l.o, &l.router, &l.dense_gate, &l.dense_up, &l.dense_down, &l.shared_gate,
                         &l.shared_up, &l.shared_down})
      need += mat_bytes(*m);
    for (size_t e = 0; e < l.gate.size(); ++e) need += mat_bytes(l.gate[e]) + mat_bytes(l.up[e]) + mat_bytes(l.down[e]);
  }
  size_t free_b = 0, total_b = 0;
  check(cudaMemGetInfo(&free_b, &total_b), "querying GPU memory");
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, 0), "querying the GPU");
  name_ = prop.name;
  const size_t margin = size_t(512) << 20;
  if (need + margin > free_b)
    throw Error("OOM", "the model's weights need " + std::to_string(need >> 20) + " MiB on the GPU but " + name_ +
                           " has " + std::to_string(free_b >> 20) + " MiB free; use --backend cpu");
  embed = mat(ck_.embed);
  lm_head = ck_.lm_head.data == ck_.embed.data ? embed : mat(ck_.lm_head);
  final_norm = vec(ck_.final_norm);
  std::vector<float> inv(cfg.head_dim / 2);
  for (int i = 0; i < cfg.head_dim / 2; ++i) inv[i] = static_cast<float>(1.0 / std::pow(cfg.rope.theta, 2.0 * i / cfg.head_dim));
  inv_freq = vec(inv);
  layers.resize(cfg.layers);
  for (int li = 0; li < cfg.layers; ++li) {
    const LayerWeights& w = ck_.layers[li];
    DLayer& d = layers[li];
    d.attn_norm = vec(w.attn_norm);
    d.mlp_norm = vec(w.mlp_norm);
    d.q = mat(w.q), d.k = mat(w.k), d.v = mat(w.v), d.o = mat(w.o);
    d.q_bias = vec(w.q_bias), d.k_bias = vec(w.k_bias), d.v_bias = vec(w.v_bias);
    d.q_norm = vec(w.q_norm), d.k_norm = vec(w.k_norm);
    d.router = mat(w.router);
    d.dense_gate = mat(w.dense_gate), d.dense_up = mat(w.dense_up), d.dense_down = mat(w.dense_down);
    d.shared_gate = mat(w.shared_gate), d.shared_up = mat(w.shared_up), d.shared_down = mat(w.shared_down);
    d.shared_expert_gate = vec(w.shared_expert_gate);
    for (size_t e = 0; e < w.gate.size(); ++e) {
      d.gate.push_back(mat(w.gate[e]));
      d.up.push_back(mat(w.up[e]));
      d.down.push_back(mat(w.down[e]));
    }
    if (!d.gate.empty()) {
      d.gate_ptrs = ptrs(d.gate);
      d.up_ptrs = ptrs(d.up);
      d.down_ptrs = ptrs(d.down);
    }
  }
}

DeviceSessionImpl::DeviceSessionImpl(DeviceModelImpl& m, int max_context)
    : m_(m), max_context_(max_context), kcache_(m.ck_.config.layers), vcache_(m.ck_.config.layers) {
  const ModelConfig& cfg = m.ck_.config;
  const size_t width = static_cast<size_t>(cfg.kv_heads) * cfg.head_dim;
  for (int l = 0; l < cfg.layers; ++l) {
    kcache_[l].ensure(static_cast<size_t>(max_context) * width * sizeof(float));
    vcache_[l].ensure(static_cast<size_t>(max_context) * width * sizeof(float));
  }
}

void DeviceSessionImpl::mm(const float* x, int T, const DMat& W, float* y, bool accumulate) {
  const int dt = dt_code(W.dtype);
  const bool tensor = W.dtype != DType::F32 && W.cols % 16 == 0 && W.rows % 16 == 0 && T > 8;
  if (tensor) {
    std::vector<int> counts{T}, offsets{0};
    const void* host_ptr = W.p;
    one_.ensure(sizeof(void*));
    check(cudaMemcpy(one_.p, &host_ptr, sizeof(void*), cudaMemcpyHostToDevice), "matmul setup");
    grouped(x, counts, offsets, one_.as<const void* const>(), W.dtype, W.cols, W.rows, y, accumulate);
    return;
  }
  const int warps = W.rows * ((T + 7) / 8);
  const unsigned threads = 256, grid = blocks_for(static_cast<size_t>(warps) * 32, threads);
  if (dt == 0) k_matmul_simt<0><<<grid, threads>>>(x, T, W.cols, W.p, W.rows, y, accumulate);
  else if (dt == 1) k_matmul_simt<1><<<grid, threads>>>(x, T, W.cols, W.p, W.rows, y, accumulate);
  else k_matmul_simt<2><<<grid, threads>>>(x, T, W.cols, W.p, W.rows, y, accumulate);
  check(cudaGetLastError(), "matmul");
}

// Rows of group g are x_rows[offsets[g] .. offsets[g] + counts[g]); each group's block is padded to 16 rows in
// the half-precision copy so every tile is full.
void DeviceSessionImpl::grouped(const float* x_rows, const std::vector<int>& counts, const std::vector<int>& offsets,
                                const void* const* ptrs, DType dtype, int K, int N, float* y, bool accumulate) {
  std::vector<int> pad_off(counts.size());
  int padded = 0;
  for (size_t g = 0; g < counts.size(); ++g) {
    pad_off[g] = padded;
    padded += (counts[g] + 15) / 16 * 16;
  }
  if (padded == 0) return;
  // Gather rows into the padded layout (missing rows = -1 -> zeros), convert to half, run, scatter back.
  std::vector<int> src(padded, -1);
  for (size_t g = 0; g < counts.size(); ++g)
    for (int r = 0; r < counts[g]; ++r) src[pad_off[g] + r] = offsets[g] + r;
  idx_.ensure(src.size() * sizeof(int));
  check(cudaMemcpy(idx_.p, src.data(), src.size() * sizeof(int), cudaMemcpyHostToDevice), "grouped gemm setup");
  xe_.ensure(static_cast<size_t>(padded) * K * sizeof(float));
  k_gather_rows<<<padded, 256>>>(x_rows, idx_.as<int>(), padded, K, xe_.as<float>());
  half_.ensure(static_cast<size_t>(padded) * K * 2);
  const size_t n = static_cast<size_t>(padded) * K;
  if (dtype == DType::BF16) k_to_half<__nv_bfloat16><<<blocks_for(n), 256>>>(xe_.as<float>(), n, n, half_.as<__nv_bfloat16>());
  else k_to_half<__half><<<blocks_for(n), 256>>>(xe_.as<float>(), n, n, half_.as<__half>());
  std::vector<Tile> tiles;
  for (size_t g = 0; g < counts.size(); ++g)
    for (int r = 0; r < counts[g]; r += 16)
      for (int c = 0; c < N; c += 64) tiles.push_back({static_cast<int>(g), pad_off[g] + r, c});
  tiles_.ensure(tiles.size() * sizeof(Tile));
  check(cudaMemcpy(tiles_.p, tiles.data(), tiles.size() * sizeof(Tile), cudaMemcpyHostToDevice), "grouped gemm setup");
  Buffer& out = out_;
  out.ensure(static_cast<size_t>(padded) * N * sizeof(float));
  if (dtype == DType::BF16)
    k_grouped_wmma<__nv_bfloat16><<<static_cast<unsigned>(tiles.size()), 128>>>(tiles_.as<Tile>(), half_.as<__nv_bfloat16>(), K, ptrs, N, out.as<float>(), 0);
  else
    k_grouped_wmma<__half><<<static_cast<unsigned>(tiles.size()), 128>>>(tiles_.as<Tile>(), half_.as<__half>(), K, ptrs, N, out.as<float>(), 0);
  check(cudaGetLastError(), "grouped gemm");
  // Back to the dense row order of x_rows (added for a residual when accumulating).
  for (size_t g = 0; g < counts.size(); ++g) {
    if (counts[g] == 0) continue;
    float* dst = y + static_cast<size_t>(offsets[g]) * N;
    const float* from = out.as<float>() + static_cast<size_t>(pad_off[g]) * N;
    const size_t n_out = static_cast<size_t>(counts[g]) * N;
    if (accumulate) k_add<<<blocks_for(n_out), 256>>>(dst, from, n_out);
    else check(cudaMemcpy(dst, from, n_out * sizeof(float), cudaMemcpyDeviceToDevice), "grouped gemm");
  }
}

void DeviceSessionImpl::forward(const std::vector<int>& tokens, int pos0, const Patch& patch,
                                const RoutingCallback& on_layer, int first, int rows, std::vector<float>& logits,
                                const std::atomic<bool>* cancel) {
  const ModelConfig& cfg = m_.ck_.config;
  const int T = static_cast<int>(tokens.size()), H = cfg.hidden, nh = cfg.heads, nkv = cfg.kv_heads, hd = cfg.head_dim;
  const int qw = nh * hd, kvw = nkv * hd, E = cfg.experts, k = cfg.top_k, I = cfg.expert_width;
  if (pos0 + T > max_context_) throw Error("TOO_LONG", "the GPU KV cache holds " + std::to_string(max_context_) + " positions");
  if (hd > 256) throw Error("UNSUPPORTED", "head_dim above 256 is not supported by the CUDA attention kernel");
  const size_t TH = static_cast<size_t>(T) * H;
  tok_.ensure(T * sizeof(int));
  check(cudaMemcpy(tok_.p, tokens.data(), T * sizeof(int), cudaMemcpyHostToDevice), "tokens");
  h_.ensure(TH * 4), x_.ensure(TH * 4), y_.ensure(TH * 4), so_.ensure(TH * 4);
  q_.ensure(static_cast<size_t>(T) * qw * 4), k_.ensure(static_cast<size_t>(T) * kvw * 4), v_.ensure(static_cast<size_t>(T) * kvw * 4);
  attn_.ensure(static_cast<size_t>(T) * qw * 4);
  float *h = h_.as<float>(), *x = x_.as<float>(), *y = y_.as<float>();
  const int edt = dt_code(m_.embed.dtype);
  if (edt == 0) k_embed<0><<<T, 256>>>(tok_.as<int>(), m_.embed.p, H, h);
  else if (edt == 1) k_embed<1><<<T, 256>>>(tok_.as<int>(), m_.embed.p, H, h);
  else k_embed<2><<<T, 256>>>(tok_.as<int>(), m_.embed.p, H, h);
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  std::vector<float> z_host, p(E), w_host(static_cast<size_t>(T) * k);
  std::vector<int32_t> sel(static_cast<size_t>(T) * k);
  for (int l = 0; l < cfg.layers; ++l) {
    const DLayer& d = m_.layers[l];
    k_rmsnorm<<<T, 256>>>(h, d.attn_norm, H, cfg.eps, x);
    mm(x, T, d.q, q_.as<float>(), false);
    mm(x, T, d.k, k_.as<float>(), false);
    mm(x, T, d.v, v_.as<float>(), false);
    if (d.q_bias || cfg.clip_qkv > 0) {
      k_add_bias_clip<<<blocks_for(static_cast<size_t>(T) * qw), 256>>>(q_.as<float>(), d.q_bias, T, qw, cfg.clip_qkv);
      k_add_bias_clip<<<blocks_for(static_cast<size_t>(T) * kvw), 256>>>(k_.as<float>(), d.k_bias, T, kvw, cfg.clip_qkv);
      k_add_bias_clip<<<blocks_for(static_cast<size_t>(T) * kvw), 256>>>(v_.as<float>(), d.v_bias, T, kvw, cfg.clip_qkv);
    }
    if (cfg.qk_norm == QKNorm::Whole) {
      k_rmsnorm<<<T, 256>>>(q_.as<float>(), d.q_norm, qw, cfg.eps, q_.as<float>());
      k_rmsnorm<<<T, 256>>>(k_.as<float>(), d.k_norm, kvw, cfg.eps, k_.as<float>());
    } else if (cfg.qk_norm == QKNorm::PerHead) {
      k_rmsnorm<<<T * nh, 128>>>(q_.as<float>(), d.q_norm, hd, cfg.eps, q_.as<float>());
      k_rmsnorm<<<T * nkv, 128>>>(k_.as<float>(), d.k_norm, hd, cfg.eps, k_.as<float>());
    }
    k_rope<<<dim3(T, nh), 64>>>(q_.as<float>(), T, nh, hd, pos0, m_.inv_freq);
    k_rope<<<dim3(T, nkv), 64>>>(k_.as<float>(), T, nkv, hd, pos0, m_.inv_freq);
    k_store_kv<<<blocks_for(static_cast<size_t>(T) * kvw), 256>>>(k_.as<float>(), v_.as<float>(), T, kvw, pos0,
                                                                 kcache_[l].as<float>(), vcache_[l].as<float>());
    k_attention<<<blocks_for(static_cast<size_t>(T) * nh * 32), 256>>>(q_.as<float>(), kcache_[l].as<float>(),
                                                                       vcache_[l].as<float>(), attn_.as<float>(), T, pos0,
                                                                       nh, nkv, hd, cfg.sliding_window, scale);
    mm(attn_.as<float>(), T, d.o, h, true);
    k_rmsnorm<<<T, 256>>>(h, d.mlp_norm, H, cfg.eps, x);
    check(cudaMemset(y, 0, TH * 4), "mlp");
    if (d.gate.empty()) {
      const int D = cfg.dense_width;
      g_.ensure(static_cast<size_t>(T) * D * 4), u_.ensure(static_cast<size_t>(T) * D * 4);
      mm(x, T, d.dense_gate, g_.as<float>(), false);
      mm(x, T, d.dense_up, u_.as<float>(), false);
      k_swiglu<<<blocks_for(static_cast<size_t>(T) * D), 256>>>(g_.as<float>(), u_.as<float>(), static_cast<size_t>(T) * D);
      mm(g_.as<float>(), T, d.dense_down, y, false);
    } else {
      // Router logits to the host: routing decisions use the CPU's route_token (identical semantics).
      z_.ensure(static_cast<size_t>(T) * E * 4);
      mm(x, T, d.router, z_.as<float>(), false);
      z_host.resize(static_cast<size_t>(T) * E);
      check(cudaMemcpy(z_host.data(), z_.p, z_host.size() * 4, cudaMemcpyDeviceToHost), "router logits");
      auto it = patch.layers.find(l);
      const LayerPatch* lp = it == patch.layers.end() ? nullptr : &it->second;
      for (int t = 0; t < T; ++t) {
        bool mixed = false;
        route_token(cfg.router, &z_host[static_cast<size_t>(t) * E], E, k,
                    m_.ck_.layers[l].selection_bias.empty() ? nullptr : m_.ck_.layers[l].selection_bias.data(), lp,
                    pos0 + t, p.data(),
                    &sel[static_cast<size_t>(t) * k], &w_host[static_cast<size_t>(t) * k], &mixed);
      }
      if (on_layer) {
        LayerRouting rec;
        rec.layer = l, rec.start = pos0, rec.count = T, rec.num_experts = E, rec.top_k = k;
        rec.router_logits = z_host.data(), rec.experts = sel.data(), rec.weights = w_host.data();
        on_layer(rec);
      }
      // Rows grouped by expert: row r of expert e's block holds token rows[e][r]; row_of maps (t, slot) back.
      std::vector<std::vector<int>> by_expert(E);
      for (int t = 0; t < T; ++t)
        for (int j = 0; j < k; ++j) by_expert[sel[static_cast<size_t>(t) * k + j]].push_back(t * k + j);
      std::vector<int> counts(E), offsets(E), src, row_of(static_cast<size_t>(T) * k);
      int R = 0;
      for (int e = 0; e < E; ++e) {
        offsets[e] = R;
        counts[e] = static_cast<int>(by_expert[e].size());
        for (int ts : by_expert[e]) {
          row_of[ts] = R++;
          src.push_back(ts / k);
        }
      }
      map_.ensure(src.size() * sizeof(int) + row_of.size() * sizeof(int));
      int* d_src = map_.as<int>();
      int* d_row_of = d_src + src.size();
      check(cudaMemcpy(d_src, src.data(), src.size() * sizeof(int), cudaMemcpyHostToDevice), "moe setup");
      check(cudaMemcpy(d_row_of, row_of.data(), row_of.size() * sizeof(int), cudaMemcpyHostToDevice), "moe setup");
      wts_.ensure(w_host.size() * 4);
      check(cudaMemcpy(wts_.p, w_host.data(), w_host.size() * 4, cudaMemcpyHostToDevice), "moe setup");
      Buffer &xr = xr_, &gr = gr_, &ur = ur_, &orr = or_;
      xr.ensure(static_cast<size_t>(R) * H * 4), gr.ensure(static_cast<size_t>(R) * I * 4), ur.ensure(static_cast<size_t>(R) * I * 4);
      orr.ensure(static_cast<size_t>(R) * H * 4);
      k_gather_rows<<<R, 256>>>(x, d_src, R, H, xr.as<float>());
      const DType wd = d.gate[0].dtype;
      if (wd != DType::F32 && H % 16 == 0 && I % 16 == 0) {
        grouped(xr.as<float>(), counts, offsets, d.gate_ptrs, wd, H, I, gr.as<float>(), false);
        grouped(xr.as<float>(), counts, offsets, d.up_ptrs, wd, H, I, ur.as<float>(), false);
        k_swiglu<<<blocks_for(static_cast<size_t>(R) * I), 256>>>(gr.as<float>(), ur.as<float>(), static_cast<size_t>(R) * I);
        grouped(gr.as<float>(), counts, offsets, d.down_ptrs, wd, I, H, orr.as<float>(), false);
      } else {
        for (int e = 0; e < E; ++e) {
          if (!counts[e]) continue;
          const size_t o0 = static_cast<size_t>(offsets[e]);
          mm(xr.as<float>() + o0 * H, counts[e], d.gate[e], gr.as<float>() + o0 * I, false);
          mm(xr.as<float>() + o0 * H, counts[e], d.up[e], ur.as<float>() + o0 * I, false);
        }
        k_swiglu<<<blocks_for(static_cast<size_t>(R) * I), 256>>>(gr.as<float>(), ur.as<float>(), static_cast<size_t>(R) * I);
        for (int e = 0; e < E; ++e) {
          if (!counts[e]) continue;
          const size_t o0 = static_cast<size_t>(offsets[e]);
          mm(gr.as<float>() + o0 * I, counts[e], d.down[e], orr.as<float>() + o0 * H, false);
        }
      }
      k_combine<<<T, 256>>>(orr.as<float>(), d_row_of, wts_.as<float>(), k, H, y);
      if (d.shared_expert_gate) {
        const int S = cfg.shared_width;
        g_.ensure(static_cast<size_t>(T) * S * 4), u_.ensure(static_cast<size_t>(T) * S * 4);
        mm(x, T, d.shared_gate, g_.as<float>(), false);
        mm(x, T, d.shared_up, u_.as<float>(), false);
        k_swiglu<<<blocks_for(static_cast<size_t>(T) * S), 256>>>(g_.as<float>(), u_.as<float>(), static_cast<size_t>(T) * S);
        mm(g_.as<float>(), T, d.shared_down, so_.as<float>(), false);
        k_shared_gate<<<T, 256>>>(x, d.shared_expert_gate, so_.as<float>(), H, y);
      }
    }
    k_add<<<blocks_for(TH), 256>>>(h, y, TH);
    check(cudaGetLastError(), "layer kernels");
    if (cancel && cancel->load()) throw Error("CANCELLED", "cancelled");
  }
  if (rows > 0) {
    k_rmsnorm<<<rows, 256>>>(h + static_cast<size_t>(first) * H, m_.final_norm, H, cfg.eps, x);
    logits_.ensure(static_cast<size_t>(rows) * cfg.vocab * 4);
    mm(x, rows, m_.lm_head, logits_.as<float>(), false);
    logits.resize(static_cast<size_t>(rows) * cfg.vocab);
    check(cudaMemcpy(logits.data(), logits_.p, logits.size() * 4, cudaMemcpyDeviceToHost), "logits");
  }
  check(cudaDeviceSynchronize(), "forward");
}

}  // namespace

bool compiled() { return true; }

std::string probe() {
  int driver = 0, runtime = 0, n = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0) return "no NVIDIA driver found";
  cudaRuntimeGetVersion(&runtime);
  if (driver < runtime)
    return "the NVIDIA driver (CUDA " + std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10) +
           ") is older than this build needs (CUDA " + std::to_string(runtime / 1000) + ")";
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) return std::string("no CUDA device: ") + (e != cudaSuccess ? cudaGetErrorString(e) : "none found");
  return "";
}

std::unique_ptr<DeviceModel> DeviceModel::upload(const Checkpoint& ck) {
  const std::string why = probe();
  if (!why.empty()) throw Error("NO_CUDA", why);
  auto m = std::make_unique<DeviceModelImpl>(ck);
  m->upload();
  return m;
}

}  // namespace cuda
}  // namespace routescope
