#include "cpu/moe_experts.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "cpu/convert.h"
#include "cpu/matmul.h"
#include "cpu/matmul_avx512.h"
#include "cpu/matmul_bf16.h"
#include "cpu/ops.h"

namespace routescope {

namespace {

constexpr int kUnitRows = 128;                     // rows of one expert per work unit (bounds the scratch)
constexpr size_t kKeepBytes = size_t(64) << 20;    // scratch a thread keeps between calls

// Growable memory owned by one thread and reused across calls, so repeated forwards (and the layers of one forward)
// do not fault in and zero fresh pages: contents are not initialised. Large buffers ask for transparent huge pages;
// a buffer above kKeepBytes is released once a call needs less than a quarter of it (a long prompt's expert outputs
// stay for all its layers, then go at the next decode step).
class Scratch {
 public:
  template <class T>
  T* get(size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes > size_) {
      release();
      size_ = std::max(bytes, size_t(4096));
      const size_t align = size_ >= (size_t(2) << 20) ? (size_t(2) << 20) : 64;
      size_ = (size_ + align - 1) / align * align;
      data_ = static_cast<uint8_t*>(std::aligned_alloc(align, size_));
      if (!data_) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
      if (align > 64) madvise(data_, size_, MADV_HUGEPAGE);
#endif
    } else if (size_ > kKeepBytes && bytes < size_ / 4) {
      release();
      return get<T>(n);
    }
    return reinterpret_cast<T*>(data_);
  }
  ~Scratch() { release(); }

 private:
  void release() {
    std::free(data_);
    data_ = nullptr;
    size_ = 0;
  }
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// One expert's compute on one thread.
struct WorkerScratch {
  Scratch x, xh, xl, g, u, ah, al, panel;
};
// The call's bookkeeping and expert outputs, on the calling thread.
struct CallScratch {
  Scratch count, fill, order, pos, tokens, o;
};

WorkerScratch& worker_scratch() {
  thread_local WorkerScratch s;
  return s;
}
CallScratch& call_scratch() {
  thread_local CallScratch s;
  return s;
}

int dt_code(DType d) { return d == DType::F32 ? 0 : (d == DType::F16 ? 1 : 2); }

struct Unit {
  int expert, begin, count;  // rows [begin, begin + count) of the expert-sorted order
};

// ROUTESCOPE_EXPERT_KERNELS=generic|avx512|avx512_bf16 pins Auto to one family (for A/B measurements); a family
// the CPU lacks falls back to the next one down.
ExpertKernels env_kernels() {
  static const ExpertKernels pinned = [] {
    const char* v = std::getenv("ROUTESCOPE_EXPERT_KERNELS");
    if (!v) return ExpertKernels::Auto;
    const std::string s(v);
    if (s == "generic") return ExpertKernels::Generic;
    if (s == "avx512") return cpu_has_avx512() ? ExpertKernels::Avx512 : ExpertKernels::Generic;
    if (s == "avx512_bf16") return cpu_has_avx512_bf16() ? ExpertKernels::Avx512Bf16 : ExpertKernels::Auto;
    if (s == "avx512_bf16_rounded") return cpu_has_avx512_bf16() ? ExpertKernels::Avx512Bf16Rounded : ExpertKernels::Auto;
    return ExpertKernels::Auto;
  }();
  return pinned;
}

ExpertKernels resolve(ExpertKernels want) {
  if (want == ExpertKernels::Auto) want = env_kernels();
  if (want != ExpertKernels::Auto) return want;
  // The bf16 pair kernels are opt-in: they keep ~17 bits of each activation (not fp32's 24) and, with vdpbf16ps
  // issuing at the FMA rate, two of them per pair do the work of two fp32 FMAs, so they are not faster here.
  return cpu_has_avx512() ? ExpertKernels::Avx512 : ExpertKernels::Generic;
}

// ---- the three families: gate/up -> act -> down for the rows of one unit, outputs into o [m][H] -------------------

// Portable reference: weights widened row by row, fp32 sums in k order.
void unit_generic(const float* x, const int32_t* tok, int m, const Mat& gate, const Mat& up, const Mat& down,
                  float* o, float* save_g, float* save_u, const int32_t* rows, WorkerScratch& ws) {
  const int H = gate.cols, I = gate.rows;
  float* xs = ws.x.get<float>(static_cast<size_t>(m) * H);
  for (int i = 0; i < m; ++i) std::memcpy(xs + static_cast<size_t>(i) * H, x + static_cast<size_t>(tok[i]) * H, H * sizeof(float));
  float* g = ws.g.get<float>(static_cast<size_t>(m) * I);
  float* u = ws.u.get<float>(static_cast<size_t>(m) * I);
  float* wrow = ws.panel.get<float>(std::max(H, I));
  auto rows_times = [&](const Mat& W, const float* in, int K, int N, float* out) {
    for (int n = 0; n < N; ++n) {
      convert_to_f32(W.row(n), W.dtype, wrow, K);
      for (int i = 0; i < m; ++i) {
        const float* xi = in + static_cast<size_t>(i) * K;
        float s = 0;
        for (int c = 0; c < K; ++c) s += xi[c] * wrow[c];
        out[static_cast<size_t>(i) * N + n] = s;
      }
    }
  };
  rows_times(gate, xs, H, I, g);
  rows_times(up, xs, H, I, u);
  for (int i = 0; i < m; ++i) {
    if (save_g) std::memcpy(save_g + static_cast<size_t>(rows[i]) * I, g + static_cast<size_t>(i) * I, I * sizeof(float));
    if (save_u) std::memcpy(save_u + static_cast<size_t>(rows[i]) * I, u + static_cast<size_t>(i) * I, I * sizeof(float));
  }
  for (size_t j = 0; j < static_cast<size_t>(m) * I; ++j) g[j] = silu(g[j]) * u[j];
  rows_times(down, g, I, H, o);
}

// AVX-512 fp32: weights widened while packing (or streamed for a few rows), fp32 FMA.
void unit_avx512(const float* x, const int32_t* tok, int m, const Mat& gate, const Mat& up, const Mat& down, float* o,
                 float* save_g, float* save_u, const int32_t* rows, WorkerScratch& ws) {
  const int H = gate.cols, I = gate.rows;
  float* xs = ws.x.get<float>(static_cast<size_t>(m) * H);
  for (int i = 0; i < m; ++i) std::memcpy(xs + static_cast<size_t>(i) * H, x + static_cast<size_t>(tok[i]) * H, H * sizeof(float));
  float* g = ws.g.get<float>(static_cast<size_t>(m) * I);
  float* u = ws.u.get<float>(static_cast<size_t>(m) * I);
  float* panel = ws.panel.get<float>(256 * 32);
  auto product = [&](const Mat& W, const float* in, int K, int N, float* out) {
    if (m <= kStreamRows) avx512::dot_rows(in, m, K, W.data, dt_code(W.dtype), 0, N, out, N, 0);
    else avx512::gemm_panel(in, m, K, W.data, dt_code(W.dtype), 0, N, out, N, 0, panel);
  };
  product(gate, xs, H, I, g);
  product(up, xs, H, I, u);
  for (int i = 0; i < m; ++i) {
    if (save_g) std::memcpy(save_g + static_cast<size_t>(rows[i]) * I, g + static_cast<size_t>(i) * I, I * sizeof(float));
    if (save_u) std::memcpy(save_u + static_cast<size_t>(rows[i]) * I, u + static_cast<size_t>(i) * I, I * sizeof(float));
  }
  avx512::silu_mul(g, u, m, I, I, g, I);
  product(down, g, I, H, o);
}

// AVX512_BF16: activations split into bf16 hi + lo pairs, vdpbf16ps against packed BF16 weight pairs; gate and up
// panels side by side so the activation of a 32-column slice is formed while its tiles are in cache.
// rounded: one bf16 part per activation (no lo), half the products.
void unit_bf16(const float* x, const int32_t* tok, int m, const Mat& gate, const Mat& up, const Mat& down, float* o,
               float* save_g, float* save_u, const int32_t* rows, WorkerScratch& ws, bool rounded) {
  if (m <= kStreamRows) {  // memory-bound: stream the weights once, no packing
    unit_avx512(x, tok, m, gate, up, down, o, save_g, save_u, rows, ws);
    return;
  }
  const int H = gate.cols, I = gate.rows;
  const int PH = (H + 1) / 2, PI = (I + 1) / 2;
  uint32_t* xh = ws.xh.get<uint32_t>(static_cast<size_t>(m) * PH);
  uint32_t* xl = rounded ? nullptr : ws.xl.get<uint32_t>(static_cast<size_t>(m) * PH);
  bf16dp::split_rows(x, H, tok, m, H, xh, xl);
  constexpr int NR = bf16dp::kNR;
  float* gt = ws.g.get<float>(static_cast<size_t>(m) * NR);
  float* ut = ws.u.get<float>(static_cast<size_t>(m) * NR);
  uint32_t* ah = ws.ah.get<uint32_t>(static_cast<size_t>(m) * PI);
  uint32_t* al = rounded ? nullptr : ws.al.get<uint32_t>(static_cast<size_t>(m) * PI);
  uint32_t* panel = ws.panel.get<uint32_t>(static_cast<size_t>(bf16dp::kKCP) * NR);
  for (int n = 0; n < I; n += NR) {
    const int nr = std::min(NR, I - n);
    bf16dp::gemm_rows(xh, xl, m, H, gate.data, n, nr, gt, NR, 0, panel);
    bf16dp::gemm_rows(xh, xl, m, H, up.data, n, nr, ut, NR, 0, panel);
    if (save_g || save_u)
      for (int i = 0; i < m; ++i) {
        if (save_g) std::memcpy(save_g + static_cast<size_t>(rows[i]) * I + n, gt + static_cast<size_t>(i) * NR, nr * sizeof(float));
        if (save_u) std::memcpy(save_u + static_cast<size_t>(rows[i]) * I + n, ut + static_cast<size_t>(i) * NR, nr * sizeof(float));
      }
    bf16dp::silu_mul_split(gt, ut, m, nr, NR, ah, al, PI, n);
  }
  bf16dp::gemm_rows(ah, al, m, I, down.data, 0, H, o, H, 0, panel);
}

}  // namespace

bool expert_kernels_available(ExpertKernels kernels) {
  switch (kernels) {
    case ExpertKernels::Auto:
    case ExpertKernels::Generic: return true;
    case ExpertKernels::Avx512: return cpu_has_avx512();
    case ExpertKernels::Avx512Bf16:
    case ExpertKernels::Avx512Bf16Rounded: return cpu_has_avx512_bf16();
  }
  return false;
}

const char* expert_kernels_name(ExpertKernels kernels, DType weights) {
  ExpertKernels f = resolve(kernels);
  if ((f == ExpertKernels::Avx512Bf16 || f == ExpertKernels::Avx512Bf16Rounded) && weights != DType::BF16)
    f = ExpertKernels::Avx512;
  switch (f) {
    case ExpertKernels::Avx512Bf16Rounded: return "avx512_bf16_rounded";
    case ExpertKernels::Avx512Bf16: return "avx512_bf16";
    case ExpertKernels::Avx512: return "avx512";
    default: return "generic";
  }
}

void moe_experts_forward(ThreadPool& pool, const float* x, int T, int k, const int32_t* sel, const float* w,
                         const std::vector<Mat>& gate, const std::vector<Mat>& up, const std::vector<Mat>& down,
                         float* y, float* save_g, float* save_u, float* save_o, ExpertKernels kernels) {
  if (T <= 0) return;
  const int E = static_cast<int>(gate.size());
  const int H = gate[0].cols;
  const int R = T * k;
  ExpertKernels family = resolve(kernels);
  // The pair kernels need BF16 weights throughout; anything else runs the fp32 family.
  if ((family == ExpertKernels::Avx512Bf16 || family == ExpertKernels::Avx512Bf16Rounded) &&
      !(gate[0].dtype == DType::BF16 && up[0].dtype == DType::BF16 && down[0].dtype == DType::BF16))
    family = ExpertKernels::Avx512;

  // Rows r = t*k + s grouped by expert (counting sort, stable in r).
  CallScratch& cs = call_scratch();
  int* count = cs.count.get<int>(E + 1);
  std::fill(count, count + E + 1, 0);
  for (int r = 0; r < R; ++r) ++count[sel[r] + 1];
  for (int e = 0; e < E; ++e) count[e + 1] += count[e];
  int32_t* order = cs.order.get<int32_t>(R);  // expert-sorted rows
  int32_t* pos = cs.pos.get<int32_t>(R);      // row r -> its place in order
  int32_t* tokens = cs.tokens.get<int32_t>(R);
  {
    int* fill = cs.fill.get<int>(E);
    std::copy(count, count + E, fill);
    for (int r = 0; r < R; ++r) {
      const int p = fill[sel[r]]++;
      order[p] = r;
      pos[r] = p;
      tokens[p] = r / k;
    }
  }
  float* o = cs.o.get<float>(static_cast<size_t>(R) * H);  // expert outputs in expert-sorted row order
  const bool tiled = gate[0].tiled() || up[0].tiled() || down[0].tiled();
  if (tiled) {  // FP8 / MXFP4 / transposed weights: expert by expert through the tiled matmul (matmul_tiled.cpp)
    moe_experts_tiled(pool, x, H, tokens, order, count, E, gate, up, down, o, save_g, save_u);
    family = ExpertKernels::Generic;
  }
  // Work units: each expert's rows in chunks of at most kUnitRows, largest first so the last ones are short.
  std::vector<Unit> units;
  for (int e = 0; e < E && !tiled; ++e) {
    const int n = count[e + 1] - count[e];
    if (!n) continue;
    const int chunks = (n + kUnitRows - 1) / kUnitRows;
    for (int c = 0; c < chunks; ++c) {
      const int b = n * c / chunks, end = n * (c + 1) / chunks;
      units.push_back({e, count[e] + b, end - b});
    }
  }
  std::stable_sort(units.begin(), units.end(), [](const Unit& a, const Unit& b) { return a.count > b.count; });

  std::atomic<size_t> next{0};
  pool.run_on_all([&](int) {
    WorkerScratch& ws = worker_scratch();
    for (size_t u; (u = next.fetch_add(1)) < units.size();) {
      const Unit& un = units[u];
      const int e = un.expert;
      float* ou = o + static_cast<size_t>(un.begin) * H;
      const int32_t* tok = tokens + un.begin;
      const int32_t* rows = order + un.begin;
      switch (family) {
        case ExpertKernels::Avx512Bf16: unit_bf16(x, tok, un.count, gate[e], up[e], down[e], ou, save_g, save_u, rows, ws, false); break;
        case ExpertKernels::Avx512Bf16Rounded: unit_bf16(x, tok, un.count, gate[e], up[e], down[e], ou, save_g, save_u, rows, ws, true); break;
        case ExpertKernels::Avx512: unit_avx512(x, tok, un.count, gate[e], up[e], down[e], ou, save_g, save_u, rows, ws); break;
        default: unit_generic(x, tok, un.count, gate[e], up[e], down[e], ou, save_g, save_u, rows, ws); break;
      }
    }
  }, int64_t(R) * 3 * H * gate[0].rows);

  // Combine per token in ascending expert order: the same sums whichever thread ran which expert, and whatever order
  // the router listed the slots in (two runs whose weights tie differently still add identically).
  const bool vector = family != ExpertKernels::Generic;
  pool.parallel_for(T, 16, [&](int64_t a, int64_t b, int) {
    std::vector<int> slots(k);
    std::vector<const float*> rp(k);
    std::vector<float> ws(k);
    for (int64_t t = a; t < b; ++t) {
      for (int s = 0; s < k; ++s) slots[s] = s;
      std::sort(slots.begin(), slots.end(), [&](int p, int q) { return pos[t * k + p] < pos[t * k + q]; });
      for (int i = 0; i < k; ++i) {
        rp[i] = o + static_cast<size_t>(pos[t * k + slots[i]]) * H;
        ws[i] = w[t * k + slots[i]];
      }
      float* yt = y + static_cast<size_t>(t) * H;
      if (vector) {
        avx512::weighted_sum(rp.data(), ws.data(), k, H, yt, 0);
      } else {
        std::fill(yt, yt + H, 0.f);
        for (int i = 0; i < k; ++i)
          for (int d = 0; d < H; ++d) yt[d] += ws[i] * rp[i][d];
      }
      if (save_o)
        for (int s = 0; s < k; ++s)
          std::memcpy(save_o + (static_cast<size_t>(t) * k + s) * H, o + static_cast<size_t>(pos[t * k + s]) * H, H * sizeof(float));
    }
  }, int64_t(R) * H);
}

}  // namespace routescope
