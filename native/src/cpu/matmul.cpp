#include "cpu/matmul.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "cpu/convert.h"
#include "cpu/matmul_avx512.h"
#include "cpu/matmul_bf16.h"

namespace routescope {

namespace {
bool has_avx512() {
  // ROUTESCOPE_GENERIC_KERNELS=1 forces the portable path (used by the tests to cover both).
#if defined(__clang__) && __clang_major__ < 15
  const bool f16c = true;  // clang 14 (the fuzz build) cannot query f16c; every AVX-512 CPU has it
#else
  const bool f16c = __builtin_cpu_supports("f16c");
#endif
  static const bool yes = !std::getenv("ROUTESCOPE_GENERIC_KERNELS") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && f16c;
  return yes;
}
int dt_code(DType d) { return d == DType::F32 ? 0 : (d == DType::F16 ? 1 : 2); }

// Portable path for CPUs without AVX-512: widen one weight row at a time.
void generic_rows(const float* x, int T, const Mat& W, int n0, int n1, float* y, bool accumulate) {
  std::vector<float> row(W.cols);
  for (int n = n0; n < n1; ++n) {
    convert_to_f32(W.row(n), W.dtype, row.data(), W.cols);
    for (int t = 0; t < T; ++t) {
      const float* xr = x + static_cast<size_t>(t) * W.cols;
      float s = 0;
      for (int k = 0; k < W.cols; ++k) s += xr[k] * row[k];
      float& dst = y[static_cast<size_t>(t) * W.rows + n];
      dst = accumulate ? dst + s : s;
    }
  }
}
}  // namespace

const char* matmul_isa() { return has_avx512() ? "avx512" : "generic"; }
bool cpu_has_avx512() { return has_avx512(); }
bool cpu_has_avx512_bf16() {
  static const bool yes = has_avx512() && __builtin_cpu_supports("avx512bf16");
  return yes;
}

void matmul(ThreadPool& pool, const float* x, int T, const Mat& W, float* y, bool accumulate) {
  if (T <= 0 || W.rows <= 0) return;
  if (W.tiled()) return matmul_tiled(pool, x, T, W, y, accumulate);
  const int N = W.rows, K = W.cols;
  const int64_t work = int64_t(T) * N * K;
  if (!has_avx512()) {
    pool.parallel_for(N, 16, [&](int64_t a, int64_t b, int) { generic_rows(x, T, W, int(a), int(b), y, accumulate); }, work);
    return;
  }
  const int dt = dt_code(W.dtype);
  if (T <= kStreamRows) {
    // Memory-bound: slabs of rows (about 256 KiB of weights each) taken dynamically, so a thread the OS delays does
    // not hold up the others at the end; small matrices (tiny models, one-position C3PO steps) run on the calling
    // thread rather than pay for waking the pool.
    const int64_t row_bytes = int64_t(K) * (dt == 0 ? 4 : 2);
    const int slab = static_cast<int>(std::max<int64_t>(16, ((int64_t(256) << 10) / row_bytes + 3) / 4 * 4));
    const int slabs = (N + slab - 1) / slab;
    if (slabs < 2 || pool.size() == 1) {
      avx512::dot_rows(x, T, K, W.data, dt, 0, N, y, N, accumulate);
      return;
    }
    std::atomic<int> next{0};
    pool.run_on_all([&](int) {
      for (int u; (u = next.fetch_add(1)) < slabs;)
        avx512::dot_rows(x, T, K, W.data, dt, u * slab, std::min(N, (u + 1) * slab), y, N, accumulate);
    });
    return;
  }
  int64_t panels = (N + 31) / 32;
  pool.parallel_for(panels, 1, [&](int64_t a, int64_t b, int) {
    thread_local std::vector<float> panel;
    if (panel.size() < 256 * 32) panel.resize(256 * 32);
    avx512::gemm_panel(x, T, K, W.data, dt, int(a * 32), int(std::min<int64_t>(N, b * 32)), y, N, accumulate,
                       panel.data());
  }, work);
}

void matmul_bf16_rounded(ThreadPool& pool, const float* x, int T, const Mat& W, float* y, bool accumulate) {
  matmul_bf16_rounded_batch(pool, {{x, T, W, y, accumulate}});
}

void matmul_bf16_rounded_batch(ThreadPool& pool, const std::vector<MatmulJob>& jobs) {
  const bool pairs = cpu_has_avx512_bf16();
  // Each distinct x converted to bf16 pairs once (q/k/v, gate/up share theirs), P = (K + 1) / 2 pairs per row.
  struct Split {
    const float* x;
    int T, K;
    uint32_t* xb;
  };
  // The inputs' pairs go to buffers the calling thread keeps (a prompt's are MBs: fresh ones each call cost page
  // faults and zero-filling on the calling thread alone); one above 64 MiB goes when a call needs under a quarter.
  thread_local std::vector<std::vector<uint32_t>> keep;
  std::vector<Split> splits;
  std::vector<int> split_of(jobs.size(), -1);
  for (size_t i = 0; i < jobs.size(); ++i) {
    const MatmulJob& j = jobs[i];
    if (j.T <= 0 || j.W.rows <= 0) continue;
    if (!pairs || j.W.dtype != DType::BF16 || j.W.tiled()) {  // the reference path: rounded rows through matmul
      std::vector<float> xr(static_cast<size_t>(j.T) * j.W.cols);
      for (size_t k = 0; k < xr.size(); ++k) xr[k] = round_to_bf16(j.x[k]);
      matmul(pool, xr.data(), j.T, j.W, j.y, j.accumulate);
      continue;
    }
    auto same = std::find_if(splits.begin(), splits.end(),
                             [&](const Split& s) { return s.x == j.x && s.T == j.T && s.K == j.W.cols; });
    split_of[i] = static_cast<int>(same - splits.begin());
    if (same == splits.end()) splits.push_back({j.x, j.T, j.W.cols, {}});
  }
  if (splits.empty()) return;
  if (keep.size() < splits.size()) keep.resize(splits.size());
  for (size_t i = 0; i < splits.size(); ++i) {
    Split& s = splits[i];
    const int K = s.K, P = (K + 1) / 2;
    const size_t n = static_cast<size_t>(s.T) * P;
    std::vector<uint32_t>& b = keep[i];
    constexpr size_t kKeepPairs = (size_t(64) << 20) / sizeof(uint32_t);
    if (b.size() > kKeepPairs && n < b.size() / 4) std::vector<uint32_t>().swap(b);
    if (b.size() < n) b.resize(n);
    s.xb = b.data();
    pool.parallel_for(s.T, 64, [&](int64_t a, int64_t e, int) {
      bf16dp::split_rows(s.x + a * K, K, nullptr, static_cast<int>(e - a), K, s.xb + a * P, nullptr);
    });
  }
  // Units of 256 rows x 128 columns, rows outermost within a job: a unit's rows stay in cache across the columns
  // that follow. Every job's units go to one dispatch.
  constexpr int kUnitRows = 256, kUnitCols = 128;
  struct Unit {
    int job, t0, n0;
  };
  std::vector<Unit> units;
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (split_of[i] < 0) continue;
    const int T = jobs[i].T, N = jobs[i].W.rows;
    for (int t0 = 0; t0 < T; t0 += kUnitRows)
      for (int n0 = 0; n0 < N; n0 += kUnitCols) units.push_back({static_cast<int>(i), t0, n0});
  }
  std::atomic<size_t> next{0};
  pool.run_on_all([&](int) {
    thread_local std::vector<uint32_t> panel;
    if (panel.size() < static_cast<size_t>(bf16dp::kKCP) * bf16dp::kNR) panel.resize(static_cast<size_t>(bf16dp::kKCP) * bf16dp::kNR);
    for (size_t u; (u = next.fetch_add(1)) < units.size();) {
      const Unit& un = units[u];
      const MatmulJob& j = jobs[un.job];
      const int N = j.W.rows, K = j.W.cols, P = (K + 1) / 2;
      bf16dp::gemm_rows(splits[split_of[un.job]].xb + static_cast<size_t>(un.t0) * P, nullptr,
                        std::min(kUnitRows, j.T - un.t0), K, j.W.data, un.n0, std::min(kUnitCols, N - un.n0),
                        j.y + static_cast<size_t>(un.t0) * N + un.n0, N, j.accumulate, panel.data());
    }
  });
}

void matmul_batch(ThreadPool& pool, const std::vector<MatmulJob>& jobs) {
  if (jobs.empty()) return;
  if (!has_avx512() || std::any_of(jobs.begin(), jobs.end(), [](const MatmulJob& j) { return j.W.tiled(); })) {
    for (const auto& j : jobs) matmul(pool, j.x, j.T, j.W, j.y, j.accumulate);
    return;
  }
  struct Unit {
    int job, n0, n1;
  };
  std::vector<Unit> units;
  int64_t work = 0;
  for (int i = 0; i < static_cast<int>(jobs.size()); ++i) {
    const auto& j = jobs[i];
    if (j.T <= 0) continue;
    work += int64_t(j.T) * j.W.rows * j.W.cols;
    const int step = j.T <= kStreamRows ? 64 : 32;  // decode: 64-row slabs; prefill: one packed panel
    for (int n = 0; n < j.W.rows; n += step) units.push_back({i, n, std::min(j.W.rows, n + step)});
  }
  std::atomic<size_t> next{0};
  pool.run_on_all([&](int) {
    thread_local std::vector<float> panel;
    if (panel.size() < 256 * 32) panel.resize(256 * 32);
    for (size_t u; (u = next.fetch_add(1)) < units.size();) {
      const Unit& un = units[u];
      const MatmulJob& j = jobs[un.job];
      const int dt = dt_code(j.W.dtype);
      if (j.T <= kStreamRows) avx512::dot_rows(j.x, j.T, j.W.cols, j.W.data, dt, un.n0, un.n1, j.y, j.W.rows, j.accumulate);
      else avx512::gemm_panel(j.x, j.T, j.W.cols, j.W.data, dt, un.n0, un.n1, j.y, j.W.rows, j.accumulate, panel.data());
    }
  }, work);
}

namespace {
// From this many rows of dy on, the input gradient runs as a packed GEMM (backward_gemm).
constexpr int kGemmBackwardRows = 16;
// Up to this many rows, matmul_backward_input_serial streams W instead (backward_stream).
constexpr int kStreamBackwardRows = 4;
}  // namespace

void matmul_serial(const float* x, int T, const Mat& W, float* y, bool accumulate) {
  if (T <= 0 || W.rows <= 0) return;
  if (W.tiled()) return matmul_tiled_serial(x, T, W, y, accumulate);
  const int N = W.rows, K = W.cols;
  if (!has_avx512()) return generic_rows(x, T, W, 0, N, y, accumulate);
  const int dt = dt_code(W.dtype);
  if (T <= kStreamRows) return avx512::dot_rows(x, T, K, W.data, dt, 0, N, y, N, accumulate);
  thread_local std::vector<float> panel;
  panel.resize(256 * 32);
  avx512::gemm_panel(x, T, K, W.data, dt, 0, N, y, N, accumulate, panel.data());
}

// out[t, :] += sum_{n in [n0, n1)} dy[t, n] W[n, :] for a few rows t (AVX-512), W's rows in one chain per output.
// From 512 KiB of rows (the experts' and attention's backward in C3PO steps) it goes by 128 KiB slabs that fit in
// cache: each is summed from cache (backward_cached, the same chains, so the same bits) while the next one is fetched
// in address order. On A the experts' backward for three rows went from 18.5-20 to 29-37 GB/s one expert per thread
// (slabs of 64-128 KiB; 256: 22-23, 512: 13-18, split across threads); smaller W is streamed row by row.
static void few_rows_backward(const float* dy, int T, const Mat& W, int dt, int n0, int n1, float* out) {
  constexpr int64_t kCachedPartBytes = int64_t(512) << 10, kCachedSlabBytes = int64_t(128) << 10;
  const int N = W.rows, K = W.cols;
  const int64_t rb = int64_t(K) * dtype_size(W.dtype);
  if (int64_t(n1 - n0) * rb < kCachedPartBytes) {
    avx512::backward_stream(dy, T, N, W.data, dt, K, n0, n1, out);
    return;
  }
  const int slab = std::max<int>(4, int(kCachedSlabBytes / rb) / 4 * 4);
  for (int64_t x = 0; x < int64_t(slab) * rb; x += 64) __builtin_prefetch(W.row(n0) + x);
  for (int n = n0; n < n1; n += slab) {
    const int e = std::min(n1, n + slab);
    const int64_t next_bytes = e < n1 ? (std::min(n1, e + slab) - e) * rb : 0;
    avx512::backward_cached(dy, T, N, W.data, dt, K, n, e, out, W.row(e), next_bytes);
  }
}

void matmul_backward_input_serial(const float* dy, int T, const Mat& W, float* dx, bool accumulate) {
  if (T <= 0) return;
  if (W.tiled()) return matmul_tiled_backward_input_serial(dy, T, W, dx, accumulate);
  const int N = W.rows, K = W.cols;
  if (!has_avx512()) {
    std::vector<float> row(K);
    for (int t = 0; t < T; ++t) {
      float* out = dx + static_cast<size_t>(t) * K;
      if (!accumulate) std::fill(out, out + K, 0.f);
      for (int n = 0; n < N; ++n) {
        const float g = dy[static_cast<size_t>(t) * N + n];
        if (g == 0.f) continue;
        convert_to_f32(W.row(n), W.dtype, row.data(), K);
        for (int k = 0; k < K; ++k) out[k] += g * row[k];
      }
    }
    return;
  }
  if (T <= kStreamBackwardRows) {
    // A few rows (an expert's share of C3PO's stacked rows, decoding-size backward): W read once (few_rows_backward);
    // packing it into panels for so few rows costs more than the products.
    if (!accumulate) std::fill(dx, dx + static_cast<size_t>(T) * K, 0.f);
    few_rows_backward(dy, T, W, dt_code(W.dtype), 0, N, dx);
    return;
  }
  thread_local std::vector<float> panel;
  panel.resize(256 * 32);
  avx512::backward_gemm(dy, T, N, W.data, dt_code(W.dtype), K, 0, N, 0, K, dx, accumulate, panel.data());
}

void matmul_backward_input(ThreadPool& pool, const float* dy, int T, const Mat& W, float* dx, bool accumulate) {
  if (T <= 0) return;
  if (W.tiled()) return matmul_tiled_backward_input(pool, dy, T, W, dx, accumulate);
  const int N = W.rows, K = W.cols;
  const int64_t work = int64_t(T) * N * K;
  if (!has_avx512()) {
    pool.parallel_for(T, 1, [&](int64_t a, int64_t b, int) {
      std::vector<float> row(K);
      for (int64_t t = a; t < b; ++t) {
        float* out = dx + t * K;
        if (!accumulate) std::fill(out, out + K, 0.f);
        for (int n = 0; n < N; ++n) {
          float g = dy[t * N + n];
          if (g == 0.f) continue;
          convert_to_f32(W.row(n), W.dtype, row.data(), K);
          for (int k = 0; k < K; ++k) out[k] += g * row[k];
        }
      }
    }, work);
    return;
  }
  const int dt = dt_code(W.dtype);
  if (T >= kGemmBackwardRows) {
    // Many rows (gradient passes over a sequence): a packed GEMM that reads W once. Threads own column panels of dx
    // and walk W in chunks of rows, so each chunk of dy stays in cache across their panels; with fewer panels than
    // threads (narrow dx), they own blocks of rows instead.
    const int panels = (K + 31) / 32, threads = pool.size();
    const int64_t flops = int64_t(T) * N * K;
    if (flops < (int64_t(1) << 21) || threads == 1) {
      thread_local std::vector<float> panel;
      panel.resize(256 * 32);
      avx512::backward_gemm(dy, T, N, W.data, dt, K, 0, N, 0, K, dx, accumulate, panel.data());
      return;
    }
    pool.run_on_all([&](int thread) {
      thread_local std::vector<float> panel;
      panel.resize(256 * 32);
      if (panels >= threads) {
        const int p0 = static_cast<int>(int64_t(panels) * thread / threads), p1 = static_cast<int>(int64_t(panels) * (thread + 1) / threads);
        if (p0 == p1) return;
        const int k0 = p0 * 32, k1 = std::min(K, p1 * 32), chunk = 1024;
        for (int n = 0; n < N; n += chunk)
          avx512::backward_gemm(dy, T, N, W.data, dt, K, n, std::min(N, n + chunk), k0, k1, dx, accumulate || n > 0, panel.data());
      } else {
        const int blocks = (T + 7) / 8;
        const int b0 = static_cast<int>(int64_t(blocks) * thread / threads), b1 = static_cast<int>(int64_t(blocks) * (thread + 1) / threads);
        const int t0 = b0 * 8, t1 = std::min(T, b1 * 8);
        if (t0 >= t1) return;
        avx512::backward_gemm(dy + static_cast<size_t>(t0) * N, t1 - t0, N, W.data, dt, K, 0, N, 0, K,
                              dx + static_cast<size_t>(t0) * K, accumulate, panel.data());
      }
    });
    return;
  }
  // Column tiles (below) re-read W once per 8 rows of dy: right for many rows against a W that stays in cache (the
  // attention's probabilities times V), wrong for a few rows against a large W (the LM head's backward), which
  // streams W row by row instead.
  const bool small_w = static_cast<int64_t>(N) * K * (dt == 0 ? 4 : 2) <= (int64_t(4) << 20);
  // A few rows against a small W (C3PO's stacked rows, one query's probabilities times V) stream it too: the column
  // tiles would walk W once per row with one chain of multiply-adds each. Each output sums over n in the same order
  // either way, so the bits are the tiles'.
  const bool few_rows = T <= kStreamBackwardRows && static_cast<int64_t>(N) * K * T < (int64_t(1) << 20);
  if ((N >= 256 && !(T >= 8 && small_w)) || few_rows) {
    // Stream W row by row (contiguous reads), each part of its rows summing into its own K-wide partials for a block
    // of up to 16 rows of dy, then reduce. The column-block kernel below reads W with a 32-float stride and once per
    // 8 rows, which made the LM-head backward (N = vocab) of C3PO steps and rerouting rounds bandwidth-starved.
    // Small products run on the calling thread: waking the pool costs more than the work.
    const bool inline_only = static_cast<int64_t>(N) * K * T < (int64_t(1) << 20);
    const int TB = std::min(T, 16);
    // Fixed parts of W's rows (by the product's shape alone), each summed in order into its own partials and then
    // added in part order: the same bits for any thread count and whichever thread takes which part (per-thread
    // partials made the same gradient differ in its last bits from one run to the next). A product small enough for
    // the calling thread alone is one part, one chain over n; a larger one has up to ~16 parts for the threads.
    const int part_rows = inline_only ? N : std::max(256, ((N + 15) / 16 + 255) / 256 * 256);
    const int parts = (N + part_rows - 1) / part_rows;
    thread_local std::vector<float> partials_kept;  // the calling thread's, kept across calls (zeroed below)
    partials_kept.resize(static_cast<size_t>(parts) * TB * K);
    std::vector<float>& partials = partials_kept;  // a reference: the pool's threads must use the caller's buffer
    for (int t0 = 0; t0 < T; t0 += TB) {
      const int tb = std::min(TB, T - t0);
      std::fill(partials.begin(), partials.end(), 0.f);
      auto run_part = [&](int p) {
        few_rows_backward(dy + static_cast<size_t>(t0) * N, tb, W, dt, p * part_rows, std::min(N, (p + 1) * part_rows),
                          partials.data() + static_cast<size_t>(p) * TB * K);
      };
      if (parts == 1 || pool.size() == 1) {
        for (int p = 0; p < parts; ++p) run_part(p);
      } else {
        std::atomic<int> next{0};
        pool.run_on_all([&](int) {
          for (int p; (p = next.fetch_add(1)) < parts;) run_part(p);
        });
      }
      for (int t = 0; t < tb; ++t) {
        float* out = dx + static_cast<size_t>(t0 + t) * K;
        if (!accumulate) std::fill(out, out + K, 0.f);
        for (int p = 0; p < parts; ++p) {
          const float* part = partials.data() + (static_cast<size_t>(p) * TB + t) * K;
          for (int k = 0; k < K; ++k) out[k] += part[k];
        }
      }
    }
    return;
  }
  int64_t blocks = (K + 31) / 32;
  pool.parallel_for(blocks, 1, [&](int64_t a, int64_t b, int) {
    avx512::backward_rows(dy, T, N, W.data, dt, K, int(a * 32), int(std::min<int64_t>(K, b * 32)), dx, accumulate);
  }, work);
}

void lm_head_cross_entropy(ThreadPool& pool, const float* x, int T, const Mat& W, const int* target, const float* weight,
                           double* loss, float* dx) {
  if (T <= 0) return;
  const int V = W.rows, K = W.cols;
  if (W.tiled() || !has_avx512()) {  // two reads of W: logits, then the input gradient
    std::vector<float> z(static_cast<size_t>(T) * V);
    matmul(pool, x, T, W, z.data());
    for (int t = 0; t < T; ++t) {
      float* zt = z.data() + static_cast<size_t>(t) * V;
      const float mx = *std::max_element(zt, zt + V), za = zt[target[t]];
      double sum = 0;
      for (int v = 0; v < V; ++v) sum += (zt[v] = std::exp(zt[v] - mx));
      loss[t] = -(za - mx - std::log(sum));
      if (!dx) continue;
      const float scale = static_cast<float>(weight[t] / sum);
      for (int v = 0; v < V; ++v) zt[v] *= scale;
      zt[target[t]] -= weight[t];
    }
    if (dx) matmul_backward_input(pool, z.data(), T, W, dx, true);
    return;
  }
  const int dt = dt_code(W.dtype);
  constexpr int kSlab = 64;  // rows of W per slab: 256 KiB of a 2048-wide bf16 head, re-read from L2
  const int slabs = (V + kSlab - 1) / kSlab, parts = std::min(slabs, 16);
  std::vector<float> m(static_cast<size_t>(parts) * T, -INFINITY), za(T, 0.f);
  std::vector<double> s(static_cast<size_t>(parts) * T, 0.0);
  // Each part's share of Σ_v exp(z_v − m) W_v, kept across calls (one C3PO step after another) by the calling thread.
  thread_local std::vector<float> acc_kept;
  if (dx && acc_kept.size() < static_cast<size_t>(parts) * T * K) acc_kept.resize(static_cast<size_t>(parts) * T * K);
  float* const acc = acc_kept.data();  // the calling thread's buffer, named so inside the workers' loop
  std::atomic<int> next{0};
  pool.run_on_all([&](int) {
    thread_local std::vector<float> z;  // one slab's logits [T][kSlab]
    if (z.size() < static_cast<size_t>(T) * kSlab) z.resize(static_cast<size_t>(T) * kSlab);
    for (int p; (p = next.fetch_add(1)) < parts;) {
      float* mp = m.data() + static_cast<size_t>(p) * T;
      double* sp = s.data() + static_cast<size_t>(p) * T;
      float* ap = dx ? acc + static_cast<size_t>(p) * T * K : nullptr;
      if (ap) std::fill(ap, ap + static_cast<size_t>(T) * K, 0.f);
      const int b_end = slabs * (p + 1) / parts;
      for (int b = slabs * p / parts; b < b_end; ++b) {
        // Rows n0..n1 of W as rows 0..n of the slab (the kernels walk them from their first row either way).
        const int n0 = b * kSlab, n = std::min(V, n0 + kSlab) - n0;
        const uint8_t* Ws = W.row(n0);
        // With a gradient, the next slab is fetched while this one is worked on from cache: its first half during the
        // logits, the rest during the gradient, so the reads spread over both (one C3PO head pass for three rows on A:
        // 8.5-11.5 -> 7.9-10.2 ms in alternated runs, against all of it during the gradient). A part's first slab
        // streams from memory with dot_rows' own fetches, and its gradient fetches the whole next slab.
        const bool streamed = !ap || b == slabs * p / parts;
        const long next_bytes = b + 1 < b_end ? long(std::min(V, n0 + n + kSlab) - n0 - n) * K * dtype_size(W.dtype) : 0;
        const long in_logits = streamed ? 0 : next_bytes / 2 / 64 * 64;
        const uint8_t* Wn = Ws + long(n) * K * dtype_size(W.dtype);  // the next slab's first row
        if (streamed) avx512::dot_rows(x, T, K, Ws, dt, 0, n, z.data(), kSlab, 0);
        else avx512::dot_rows_cached(x, T, K, Ws, dt, 0, n, z.data(), kSlab, 0, Wn, in_logits);
        for (int t = 0; t < T; ++t) {
          float* zt = z.data() + static_cast<size_t>(t) * kSlab;
          if (target[t] >= n0 && target[t] < n0 + n) za[t] = zt[target[t] - n0];
          const float bm = *std::max_element(zt, zt + n);
          if (bm > mp[t]) {  // a new running max: what was summed against the old one shrinks
            if (sp[t] > 0) {
              const float r = std::exp(mp[t] - bm);
              sp[t] *= r;
              if (ap)
                for (int k = 0; k < K; ++k) ap[static_cast<size_t>(t) * K + k] *= r;
            }
            mp[t] = bm;
          }
          double sum = 0;
          for (int v = 0; v < n; ++v) sum += (zt[v] = std::exp(zt[v] - mp[t]));
          sp[t] += sum;
        }
        // The slab is in cache: its rows' share of the sums, while the rest of the next slab comes in.
        if (ap) avx512::backward_cached(z.data(), T, kSlab, Ws, dt, K, 0, n, ap, Wn + in_logits, next_bytes - in_logits);
      }
    }
  }, int64_t(T) * V * K * (dx ? 2 : 1));
  std::vector<float> row(dx ? K : 0);
  for (int t = 0; t < T; ++t) {
    float mx = -INFINITY;
    for (int p = 0; p < parts; ++p) mx = std::max(mx, m[static_cast<size_t>(p) * T + t]);
    double sum = 0;
    for (int p = 0; p < parts; ++p) sum += s[static_cast<size_t>(p) * T + t] * std::exp(double(m[static_cast<size_t>(p) * T + t]) - mx);
    loss[t] = -(za[t] - mx - std::log(sum));
    if (!dx) continue;
    float* out = dx + static_cast<size_t>(t) * K;
    for (int p = 0; p < parts; ++p) {
      const float f = static_cast<float>(weight[t] * std::exp(double(m[static_cast<size_t>(p) * T + t]) - mx) / sum);
      const float* a = acc + (static_cast<size_t>(p) * T + t) * K;
      for (int k = 0; k < K; ++k) out[k] += f * a[k];
    }
    convert_to_f32(W.row(target[t]), W.dtype, row.data(), K);
    for (int k = 0; k < K; ++k) out[k] -= weight[t] * row[k];
  }
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400));
      bits = sign | ((127 - 15 - e) << 23) | ((mant & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void convert_to_f32(const uint8_t* src, DType dt, float* dst, size_t n) {
  if (dt == DType::F8E4M3) return fp8_to_f32(src, dst, n);
  if (has_avx512()) {
    avx512::convert(src, dt_code(dt), dst, static_cast<long>(n));
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    if (dt == DType::F32) {
      std::memcpy(dst + i, src + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      dst[i] = dt == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
  }
}

}  // namespace routescope
