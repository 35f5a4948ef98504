// The grouped expert kernels and the fused attention against float64 loops: every kernel family the CPU has, every
// weight dtype, ragged shapes, routings from one token to a few hundred.
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>

#include "cpu/attention.h"
#include "cpu/backward.h"
#include "cpu/convert.h"
#include "cpu/forward.h"
#include "cpu/matmul.h"
#include "cpu/matmul_avx512.h"
#include "cpu/matmul_bf16.h"
#include "cpu/moe_experts.h"
#include "model/model.h"
#include "test.h"

using namespace routescope;
using rstest::misaligned_matrix;
using rstest::round_bf16;
using rstest::TestMatrix;

namespace {

const char* family_name(ExpertKernels f) {
  switch (f) {
    case ExpertKernels::Generic: return "generic";
    case ExpertKernels::Avx512: return "avx512";
    case ExpertKernels::Avx512Bf16: return "avx512_bf16";
    case ExpertKernels::Avx512Bf16Rounded: return "avx512_bf16_rounded";
    default: return "auto";
  }
}

// The LM head's slab kernels against their streamed counterparts: every dtype, ragged slabs (N rows, K columns) and
// row counts of x, each with a matrix whose rows start off their natural alignment. code: the kernels' dtype code.
template <class Check>
void for_each_slab_shape(unsigned seed, Check check) {
  std::mt19937 rng(seed);
  for (DType dt : {DType::BF16, DType::F16, DType::F32})
    for (int N : {3, 8, 61, 64})
      for (int K : {16, 72, 130, 2048})
        for (int T : {1, 2, 3, 4, 7}) {
          const rstest::TestMatrix W = misaligned_matrix(N, K, dt, 0.5f, rng);
          check(W, dt == DType::F32 ? 0 : dt == DType::F16 ? 1 : 2, N, K, T, rng);
        }
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST("kernels: grouped experts (gate/up, SiLU, down, weighted combine) match a float64 loop for every family") {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  ThreadPool pool1(1), pool2(2);
  struct Shape {
    int H, I, E, k;
  };
  for (DType dt : {DType::BF16, DType::F16, DType::F32})
    for (Shape sh : {Shape{64, 48, 6, 2}, Shape{37, 22, 5, 3}, Shape{130, 70, 8, 4}})
      for (int T : {1, 3, 5, 17, 70, 300}) {
        const int H = sh.H, I = sh.I, E = sh.E, k = sh.k;
        std::vector<TestMatrix> gw, uw, dw;
        std::vector<Mat> gate, up, down;
        for (int e = 0; e < E; ++e) {
          gw.push_back(misaligned_matrix(I, H, dt, 0.3f, rng));
          uw.push_back(misaligned_matrix(I, H, dt, 0.3f, rng));
          dw.push_back(misaligned_matrix(H, I, dt, 0.3f, rng));
        }
        for (int e = 0; e < E; ++e) gate.push_back(gw[e].mat), up.push_back(uw[e].mat), down.push_back(dw[e].mat);
        std::vector<float> x(size_t(T) * H), w(size_t(T) * k);
        std::vector<int32_t> sel(size_t(T) * k);
        for (auto& v : x) v = nd(rng);
        for (int t = 0; t < T; ++t) {
          // Skewed routing: expert 0 takes most tokens, so one expert's rows span several work units.
          std::vector<int> perm(E);
          for (int e = 0; e < E; ++e) perm[e] = e;
          std::shuffle(perm.begin() + 1, perm.end(), rng);
          if (rng() % 4 == 0) std::swap(perm[0], perm[1 + rng() % (E - 1)]);
          for (int s = 0; s < k; ++s) sel[size_t(t) * k + s] = perm[s], w[size_t(t) * k + s] = 0.2f + 0.1f * s;
        }
        // float64 reference; with round_bf16, the activations (x and silu(g)·u) rounded to bf16 first, as the
        // rounded kernels define them, so those are held to the same tight bound.
        auto reference = [&](bool rounded_acts, std::vector<double>& ref, std::vector<double>& ref_g,
                             std::vector<double>& ref_u, std::vector<double>& ref_o) {
          ref.assign(size_t(T) * H, 0.0), ref_g.resize(size_t(T) * k * I), ref_u.resize(size_t(T) * k * I);
          ref_o.resize(size_t(T) * k * H);
          auto act = [&](double v) { return rounded_acts ? double(bf16_to_f32(round_bf16(float(v)))) : v; };
          for (int t = 0; t < T; ++t)
            for (int s = 0; s < k; ++s) {
              const int e = sel[size_t(t) * k + s], r = t * k + s;
              std::vector<double> a(I);
              for (int i = 0; i < I; ++i) {
                double g = 0, u = 0;
                for (int c = 0; c < H; ++c) {
                  g += act(x[size_t(t) * H + c]) * gw[e].values[size_t(i) * H + c];
                  u += act(x[size_t(t) * H + c]) * uw[e].values[size_t(i) * H + c];
                }
                ref_g[size_t(r) * I + i] = g, ref_u[size_t(r) * I + i] = u;
                a[i] = act(g / (1 + std::exp(-g)) * u);
              }
              for (int d = 0; d < H; ++d) {
                double o = 0;
                for (int i = 0; i < I; ++i) o += a[i] * dw[e].values[size_t(d) * I + i];
                ref_o[size_t(r) * H + d] = o;
                ref[size_t(t) * H + d] += w[size_t(t) * k + s] * o;
              }
            }
        };
        std::vector<double> ref, ref_g, ref_u, ref_o, rref, rref_g, rref_u, rref_o;
        reference(false, ref, ref_g, ref_u, ref_o);
        if (dt == DType::BF16) reference(true, rref, rref_g, rref_u, rref_o);
        auto worst = [](const std::vector<float>& got, const std::vector<double>& want) {
          double m = 0;
          for (size_t i = 0; i < want.size(); ++i) m = std::max(m, std::fabs(got[i] - want[i]) / (1 + std::fabs(want[i])));
          return m;
        };
        for (ExpertKernels f : {ExpertKernels::Generic, ExpertKernels::Avx512, ExpertKernels::Avx512Bf16,
                                ExpertKernels::Avx512Bf16Rounded}) {
          if (!expert_kernels_available(f)) continue;
          std::vector<float> y(size_t(T) * H, 7.f), y2(size_t(T) * H, -3.f), g(size_t(T) * k * I), u(g.size()),
              o(size_t(T) * k * H);
          moe_experts_forward(pool2, x.data(), T, k, sel.data(), w.data(), gate, up, down, y.data(), g.data(), u.data(),
                              o.data(), f);
          moe_experts_forward(pool1, x.data(), T, k, sel.data(), w.data(), gate, up, down, y2.data(), nullptr, nullptr,
                              nullptr, f);
          // The pair kernels keep ~17 bits of each activation (x = hi + lo in bf16): a looser, stated bound.
          const bool pairs = f == ExpertKernels::Avx512Bf16 && dt == DType::BF16;
          // The rounded kernels keep 8 bits of each activation (llama.cpp's BF16 precision): checked against the
          // reference that rounds the same activations. g and u differ only by fp32 accumulation; an activation
          // whose fp32 and float64 values round to neighbouring bf16 moves y and o by one bf16 step of its term.
          const bool rounded = f == ExpertKernels::Avx512Bf16Rounded && dt == DType::BF16;
          const double tol = rounded ? 1e-2 : pairs ? 2e-3 : 1e-4;
          // An expert with at most 4 rows streams its weights in fp32 (decode), so each value matches one of the two.
          auto check = [&](const std::vector<float>& got, const std::vector<double>& exact, const std::vector<double>& rnd) {
            if (!rounded) return worst(got, exact);
            double m = 0;
            for (size_t i = 0; i < exact.size(); ++i)
              m = std::max(m, std::min(std::fabs(got[i] - exact[i]), std::fabs(got[i] - rnd[i])) / (1 + std::fabs(exact[i])));
            return m;
          };
          const double ey = check(y, ref, rref), eg = check(g, ref_g, rref_g), eu = check(u, ref_u, rref_u),
                       eo = check(o, ref_o, rref_o);
          if (rounded)
            CHECK_MSG(std::max(eg, eu) < 1e-4, "avx512_bf16_rounded H=" << H << " T=" << T << ": error g " << eg << ", u " << eu);
          const double e = std::max(std::max(ey, eo), std::max(eg, eu));
          CHECK_MSG(e < tol, family_name(f) << " " << dtype_name(dt) << " H=" << H << " I=" << I << " T=" << T
                                            << ": error y " << ey << ", g " << eg << ", u " << eu << ", o " << eo);
          CHECK_MSG(y == y2, family_name(f) << " " << dtype_name(dt) << " T=" << T << ": 1 and 2 threads differ");
          // The same routing with every token's slots listed in reverse gives the same bits.
          std::vector<int32_t> rsel(sel.size());
          std::vector<float> rw(w.size()), y3(size_t(T) * H);
          for (int t = 0; t < T; ++t)
            for (int s = 0; s < k; ++s) rsel[size_t(t) * k + s] = sel[size_t(t) * k + k - 1 - s], rw[size_t(t) * k + s] = w[size_t(t) * k + k - 1 - s];
          moe_experts_forward(pool2, x.data(), T, k, rsel.data(), rw.data(), gate, up, down, y3.data(), nullptr, nullptr,
                              nullptr, f);
          CHECK_MSG(y == y3, family_name(f) << " " << dtype_name(dt) << " T=" << T << ": slot order changes the result");
          if (T == 300 && sh.H == 130)
            std::printf("     %-12s %-5s worst relative error vs float64 (T=300, H=130): %.2e\n", family_name(f),
                        dtype_name(dt), e);
        }
      }
}

TEST("kernels: bf16 pair split keeps 16 bits of every activation (|x - hi - lo| <= 2^-16 |x|)") {
  if (!cpu_has_avx512_bf16()) SKIP("no AVX512_BF16 on this CPU");
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> mant(1.f, 2.f);
  std::uniform_int_distribution<int> ex(-40, 40);
  const int K = 77;
  std::vector<float> x(size_t(3) * K);
  for (auto& v : x) v = std::ldexp(mant(rng), ex(rng)) * (rng() % 2 ? 1.f : -1.f);
  const int P = (K + 1) / 2;
  std::vector<uint32_t> hi(size_t(3) * P), lo(size_t(3) * P);
  bf16dp::split_rows(x.data(), K, nullptr, 3, K, hi.data(), lo.data());
  double worst = 0;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < K; ++c) {
      const uint32_t h = hi[size_t(r) * P + c / 2], l = lo[size_t(r) * P + c / 2];
      const float hv = bf16_to_f32(static_cast<uint16_t>(c % 2 ? h >> 16 : h & 0xFFFF));
      const float lv = bf16_to_f32(static_cast<uint16_t>(c % 2 ? l >> 16 : l & 0xFFFF));
      const double v = x[size_t(r) * K + c];
      worst = std::max(worst, std::fabs(v - double(hv) - double(lv)) / std::fabs(v));
    }
  // The padding element of the odd tail is zero in both halves.
  CHECK((hi[P - 1] >> 16) == 0 && (lo[P - 1] >> 16) == 0);
  std::printf("     worst |x - hi - lo| / |x| = %.2e (2^-16 = %.2e)\n", worst, std::ldexp(1.0, -16));
  CHECK_MSG(worst <= std::ldexp(1.0, -16), "split error " << worst);
}

// The cases of the fused attention's tests: GQA and MHA, key and value widths apart (MLA), decode rows (T = 1) and
// prefill blocks, a cache before them (pos0), sliding windows.
struct AttentionCase {
  int heads, kv_heads, k_dim, v_dim, T, pos0, window;
};
const AttentionCase kAttentionCases[] = {
    {2, 2, 16, 16, 1, 0, 0},    {4, 2, 24, 40, 5, 37, 0},     {2, 1, 128, 128, 70, 0, 0}, {4, 4, 64, 72, 130, 33, 0},
    {2, 2, 32, 32, 90, 20, 50}, {3, 1, 20, 8, 1, 200, 0},     {2, 2, 128, 128, 3, 4000, 0},
    {2, 2, 128, 128, 1, 4000, 0}, {2, 1, 32, 32, 1, 300, 50}, {4, 2, 24, 40, 1, 37, 0}};

// Largest |o - out| / (1 + |o|) of attention outputs `out` [T, heads*v_dim] against a float64 loop over keys K and
// values V (per kv head, as the kernel was given them, or their fp32 values).
double attention_error_vs_float64(const AttentionCase& c, float scale, const std::vector<float>& q,
                                  const std::vector<std::vector<float>>& K, const std::vector<std::vector<float>>& V,
                                  const std::vector<float>& out) {
  double worst = 0;
  const int group = c.heads / c.kv_heads;
  for (int i = 0; i < c.T; ++i)
    for (int h = 0; h < c.heads; ++h) {
      const int p = c.pos0 + i, g = h / group, j0 = c.window > 0 ? std::max(0, p - c.window + 1) : 0;
      std::vector<double> sc(p + 1);
      double mx = -1e300, sum = 0;
      for (int j = j0; j <= p; ++j) {
        double d = 0;
        for (int t = 0; t < c.k_dim; ++t) d += double(q[(size_t(i) * c.heads + h) * c.k_dim + t]) * K[g][size_t(j) * c.k_dim + t];
        sc[j] = d * scale;
        mx = std::max(mx, sc[j]);
      }
      for (int j = j0; j <= p; ++j) sum += std::exp(sc[j] - mx);
      for (int t = 0; t < c.v_dim; ++t) {
        double o = 0;
        for (int j = j0; j <= p; ++j) o += std::exp(sc[j] - mx) / sum * V[g][size_t(j) * c.v_dim + t];
        worst = std::max(worst, std::fabs(o - out[(size_t(i) * c.heads + h) * c.v_dim + t]) / (1 + std::fabs(o)));
      }
    }
  return worst;
}

TEST("kernels: fused causal attention (online softmax per block of keys) matches a float64 loop") {
  ThreadPool pool(2);
  std::mt19937 rng(17);
  std::normal_distribution<float> nd(0.f, 1.f);
  double worst_all = 0;
  for (const AttentionCase& c : kAttentionCases) {
    AttentionShape s{c.heads, c.kv_heads, c.k_dim, c.v_dim, 1.f / std::sqrt(float(c.k_dim)), c.window};
    const int P = c.pos0 + c.T;
    std::vector<std::vector<float>> K(c.kv_heads, std::vector<float>(size_t(P) * c.k_dim)),
        V(c.kv_heads, std::vector<float>(size_t(P) * c.v_dim));
    for (auto& h : K) for (auto& x : h) x = nd(rng);
    for (auto& h : V) for (auto& x : h) x = nd(rng);
    std::vector<float> q(size_t(c.T) * c.heads * c.k_dim), out(size_t(c.T) * c.heads * c.v_dim, 9.f);
    for (auto& x : q) x = 2.f * nd(rng);
    if (!attention_fused(pool, s, q.data(), c.T, c.pos0, K, V, out.data())) SKIP("no fused attention kernel on this CPU");
    const double worst = attention_error_vs_float64(c, s.scale, q, K, V, out);
    CHECK_MSG(worst < 1e-5, "heads " << c.heads << "/" << c.kv_heads << " dims " << c.k_dim << "/" << c.v_dim << " T=" << c.T
                                     << " pos0=" << c.pos0 << " window=" << c.window << ": error " << worst);
    worst_all = std::max(worst_all, worst);
  }
  std::printf("     worst relative error vs float64: %.2e\n", worst_all);
}

TEST("kernels: fused attention over bf16 keys and values (a bf16 KV cache) matches a float64 loop on the rounded values") {
  // The bf16 entry widens each key and value exactly as it loads them, so it must also give the fp32 entry's bits on
  // the rounded values (prefill blocks and decode rows alike).
  ThreadPool pool(2);
  std::mt19937 rng(19);
  std::normal_distribution<float> nd(0.f, 1.f);
  double worst_all = 0;
  for (const AttentionCase& c : kAttentionCases) {
    AttentionShape s{c.heads, c.kv_heads, c.k_dim, c.v_dim, 1.f / std::sqrt(float(c.k_dim)), c.window};
    const int P = c.pos0 + c.T;
    std::vector<std::vector<uint16_t>> K16(c.kv_heads), V16(c.kv_heads);
    std::vector<std::vector<float>> K(c.kv_heads), V(c.kv_heads);  // the rounded values in fp32
    for (int g = 0; g < c.kv_heads; ++g) {
      for (size_t i = 0; i < size_t(P) * c.k_dim; ++i) K16[g].push_back(f32_to_bf16(nd(rng))), K[g].push_back(bf16_to_f32(K16[g].back()));
      for (size_t i = 0; i < size_t(P) * c.v_dim; ++i) V16[g].push_back(f32_to_bf16(nd(rng))), V[g].push_back(bf16_to_f32(V16[g].back()));
    }
    std::vector<float> q(size_t(c.T) * c.heads * c.k_dim), out(size_t(c.T) * c.heads * c.v_dim, 9.f), out32(out.size(), 7.f);
    for (auto& x : q) x = 2.f * nd(rng);
    if (!attention_fused(pool, s, q.data(), c.T, c.pos0, K16, V16, out.data())) SKIP("no fused attention kernel on this CPU");
    attention_fused(pool, s, q.data(), c.T, c.pos0, K, V, out32.data());
    const double worst = attention_error_vs_float64(c, s.scale, q, K, V, out);
    const std::string label = "heads " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " T=" + std::to_string(c.T) +
                              " pos0=" + std::to_string(c.pos0) + " window=" + std::to_string(c.window);
    CHECK_MSG(worst < 1e-5, label << ": error " << worst);
    CHECK_MSG(out == out32, label << ": the bf16 entry differs from the fp32 one on the rounded values");
    worst_all = std::max(worst_all, worst);
  }
  std::printf("     worst relative error vs float64 (on the rounded keys and values): %.2e\n", worst_all);
}

TEST("kernels: the attention backward reads a bf16 KV cache as the fp32 cache of its rounded keys and values") {
  // The gradient of the forward that ran on the rounded keys and values: a bf16 cache and an fp32 cache holding the
  // same rounded numbers give the same dq, dk and dv (the matrix kernels widen bf16 exactly).
  ThreadPool pool(2);
  std::mt19937 rng(31);
  std::normal_distribution<float> nd(0.f, 1.f);
  struct Case {
    int nh, nkv, hd, vd, T, pos0;
  };
  for (Case c : {Case{4, 2, 24, 40, 5, 37}, Case{2, 2, 16, 16, 70, 0}, Case{4, 1, 32, 32, 1, 90}}) {
    const int P = c.pos0 + c.T;
    KVCache b16, f32;
    b16.ensure(P, c.nkv, c.hd, c.vd, DType::BF16);
    f32.ensure(P, c.nkv, c.hd, c.vd, DType::F32);
    std::vector<float> key(c.hd), value(c.vd), kr(c.hd), vr(c.vd);
    for (int g = 0; g < c.nkv; ++g)
      for (int p = 0; p < P; ++p) {
        for (int i = 0; i < c.hd; ++i) key[i] = nd(rng), kr[i] = round_to_bf16(key[i]);
        for (int i = 0; i < c.vd; ++i) value[i] = nd(rng), vr[i] = round_to_bf16(value[i]);
        b16.store(g, p, key.data(), value.data());
        f32.store(g, p, kr.data(), vr.data());
      }
    CHECK(b16.bytes() * 2 == f32.bytes());
    std::vector<float> probs(size_t(c.nh) * c.T * P), q(size_t(c.T) * c.nh * c.hd), dattn(size_t(c.T) * c.nh * c.vd);
    for (auto& x : probs) x = std::fabs(nd(rng)) / P;
    for (auto& x : q) x = nd(rng);
    for (auto& x : dattn) x = nd(rng);
    std::vector<float> dq[2], dk[2], dv[2];
    for (int i = 0; i < 2; ++i) {
      dq[i].assign(q.size(), 0.f), dk[i].assign(size_t(c.T) * c.nkv * c.hd, 0.f), dv[i].assign(size_t(c.T) * c.nkv * c.vd, 0.f);
      attention_backward(pool, c.T, c.pos0, c.nh, c.nkv, c.hd, c.vd, 0.3f, probs.data(), q.data(), dattn.data(),
                         i == 0 ? b16 : f32, dq[i].data(), dk[i].data(), dv[i].data());
    }
    auto worst = [](const std::vector<float>& a, const std::vector<float>& b) {
      double w = 0, scale = 0;
      for (size_t i = 0; i < a.size(); ++i) w = std::max(w, double(std::fabs(a[i] - b[i]))), scale = std::max(scale, double(std::fabs(b[i])));
      return w / (scale + 1e-30);
    };
    const std::string label = "nh " + std::to_string(c.nh) + "/" + std::to_string(c.nkv) + " T=" + std::to_string(c.T) + " pos0=" + std::to_string(c.pos0);
    CHECK_MSG(worst(dq[0], dq[1]) < 1e-6, label << ": dq differs by " << worst(dq[0], dq[1]));
    CHECK_MSG(dk[0] == dk[1] && dv[0] == dv[1], label << ": dk/dv differ");
  }
}

TEST("kernels: loops below the pool's work threshold run on the calling thread with the pooled bits") {
  // The same pool size twice: one sends every loop to the workers, the other none; results must be identical.
  ThreadPool pooled(2), inline_pool(2);
  pooled.set_min_parallel_work(0);
  inline_pool.set_min_parallel_work(INT64_MAX);
  CHECK(pooled.splits(1) && !inline_pool.splits(int64_t(1) << 40) && !ThreadPool(1).splits(-1));
  std::mt19937 rng(23);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto fill = [&](std::vector<float>& v) {
    for (auto& x : v) x = nd(rng);
  };
  for (DType dt : {DType::BF16, DType::F32})
    for (int T : {1, 3, 7, 20, 70})
      for (auto nk : {std::pair<int, int>{48, 40}, std::pair<int, int>{300, 130}}) {
        const int N = nk.first, K = nk.second;
        rstest::TestMatrix w = misaligned_matrix(N, K, dt, 0.3f, rng);
        std::vector<float> x(size_t(T) * K), dy(size_t(T) * N), y1(size_t(T) * N), y2(y1.size()), dx1(x.size()), dx2(x.size());
        fill(x), fill(dy);
        matmul(pooled, x.data(), T, w.mat, y1.data());
        matmul(inline_pool, x.data(), T, w.mat, y2.data());
        CHECK_MSG(y1 == y2, "matmul " << dtype_name(dt) << " T=" << T << " N=" << N);
        matmul_backward_input(pooled, dy.data(), T, w.mat, dx1.data(), false);
        matmul_backward_input(inline_pool, dy.data(), T, w.mat, dx2.data(), false);
        CHECK_MSG(dx1 == dx2, "matmul_backward_input " << dtype_name(dt) << " T=" << T << " N=" << N);
      }
  // Grouped experts.
  {
    const int H = 40, I = 24, E = 6, k = 2;
    std::vector<rstest::TestMatrix> gw, uw, dw;
    std::vector<Mat> gate, up, down;
    for (int e = 0; e < E; ++e) {
      gw.push_back(misaligned_matrix(I, H, DType::BF16, 0.3f, rng));
      uw.push_back(misaligned_matrix(I, H, DType::BF16, 0.3f, rng));
      dw.push_back(misaligned_matrix(H, I, DType::BF16, 0.3f, rng));
    }
    for (int e = 0; e < E; ++e) gate.push_back(gw[e].mat), up.push_back(uw[e].mat), down.push_back(dw[e].mat);
    for (int T : {1, 3, 40}) {
      std::vector<float> x(size_t(T) * H), w(size_t(T) * k), y1(size_t(T) * H), y2(y1.size());
      std::vector<int32_t> sel(size_t(T) * k);
      fill(x);
      for (int t = 0; t < T; ++t)
        for (int s = 0; s < k; ++s) sel[size_t(t) * k + s] = (t * 3 + s * 2) % E, w[size_t(t) * k + s] = 0.3f + 0.2f * s;
      moe_experts_forward(pooled, x.data(), T, k, sel.data(), w.data(), gate, up, down, y1.data(), nullptr, nullptr, nullptr);
      moe_experts_forward(inline_pool, x.data(), T, k, sel.data(), w.data(), gate, up, down, y2.data(), nullptr, nullptr, nullptr);
      CHECK_MSG(y1 == y2, "moe_experts_forward T=" << T);
    }
  }
  // Fused attention.
  if (cpu_has_avx512()) {
    AttentionShape s{4, 2, 16, 16, 0.25f, 0};
    for (int T : {1, 9}) {
      const int pos0 = 11, P = pos0 + T;
      std::vector<std::vector<float>> Kc(2, std::vector<float>(size_t(P) * 16)), Vc(2, std::vector<float>(size_t(P) * 16));
      for (auto& h : Kc) fill(h);
      for (auto& h : Vc) fill(h);
      std::vector<float> q(size_t(T) * 4 * 16), o1(size_t(T) * 4 * 16), o2(o1.size());
      fill(q);
      attention_fused(pooled, s, q.data(), T, pos0, Kc, Vc, o1.data());
      attention_fused(inline_pool, s, q.data(), T, pos0, Kc, Vc, o2.data());
      CHECK_MSG(o1 == o2, "attention_fused T=" << T);
    }
  }
}

TEST("kernels: the LM head's one-pass cross-entropy and input gradient match a float64 loop, for any thread count") {
  ThreadPool pool1(1), pool2(2);
  pool2.set_min_parallel_work(0);
  std::mt19937 rng(29);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (DType dt : {DType::BF16, DType::F32})
    for (int V : {5, 261, 1000, 4099})
      for (int T : {1, 3, 6, 30, 50}) {  // 30, 50: the input gradient widens W for four rows at a time, in chunks
        const int K = 72;
        rstest::TestMatrix w = misaligned_matrix(V, K, dt, 0.5f, rng);
        std::vector<float> x(size_t(T) * K), weight(T);
        std::vector<int> target(T);
        for (auto& v : x) v = 2.f * nd(rng);
        for (int t = 0; t < T; ++t) target[t] = int(rng() % V), weight[t] = 0.5f + 0.25f * t;
        // Row 0's logits rise along the vocabulary, so its running max moves at every slab.
        if (V > 64)
          for (int k = 0; k < K; ++k) x[k] = 0.f;
        std::vector<double> loss1(T), loss2(T), loss3(T);
        std::vector<float> dx1(x.size(), 0.5f), dx2(x.size(), 0.5f);
        rstest::TestMatrix ramp = w;
        if (V > 64) {  // a head whose row v scores row 0 by v/100
          for (int v = 0; v < V; ++v) ramp.values[size_t(v) * K] = v / 100.0;
          for (int v = 0; v < V; ++v) {
            const float f = float(v / 100.0);
            if (dt == DType::F32) std::memcpy(&ramp.bytes[2 + 4 * (size_t(v) * K)], &f, 4);
            else {
              const uint16_t h = round_bf16(f);
              std::memcpy(&ramp.bytes[2 + 2 * (size_t(v) * K)], &h, 2);
              ramp.values[size_t(v) * K] = bf16_to_f32(h);
            }
          }
          x[0] = 3.f;
        }
        ramp.mat = Mat{ramp.bytes.data() + 2, dt, V, K};
        lm_head_cross_entropy(pool1, x.data(), T, ramp.mat, target.data(), weight.data(), loss1.data(), dx1.data());
        lm_head_cross_entropy(pool2, x.data(), T, ramp.mat, target.data(), weight.data(), loss2.data(), dx2.data());
        lm_head_cross_entropy(pool2, x.data(), T, ramp.mat, target.data(), weight.data(), loss3.data(), nullptr);
        CHECK_MSG(loss1 == loss2 && dx1 == dx2, dtype_name(dt) << " V=" << V << " T=" << T << ": 1 and 2 threads differ");
        CHECK_MSG(loss1 == loss3, dtype_name(dt) << " V=" << V << " T=" << T << ": the loss alone differs");
        double worst = 0;
        for (int t = 0; t < T; ++t) {
          std::vector<double> z(V);
          double mx = -1e300;
          for (int v = 0; v < V; ++v) {
            double d = 0;
            for (int k = 0; k < K; ++k) d += double(x[size_t(t) * K + k]) * ramp.values[size_t(v) * K + k];
            mx = std::max(mx, z[v] = d);
          }
          double sum = 0;
          for (int v = 0; v < V; ++v) sum += std::exp(z[v] - mx);
          const double want = -(z[target[t]] - mx - std::log(sum));
          worst = std::max(worst, std::fabs(loss1[t] - want) / (1 + std::fabs(want)));
          for (int k = 0; k < K; ++k) {
            double g = 0;
            for (int v = 0; v < V; ++v) g += (std::exp(z[v] - mx) / sum - (v == target[t])) * ramp.values[size_t(v) * K + k];
            const double want_dx = 0.5 + weight[t] * g;
            worst = std::max(worst, std::fabs(dx1[size_t(t) * K + k] - want_dx) / (1 + std::fabs(want_dx)));
          }
        }
        // Without AVX-512 the input gradient is one float sum over the whole vocabulary (matmul_backward_input), not
        // the fused path's per-slab partials: its error grows with V (2.6e-5 at V = 4099).
        // 30 and 50 rows: the worst of that many rows' float32 errors, as large on either path (the generic path's
        // one float sum reads 6.4e-5 at V = 4099, T = 50).
        const double tol = T > 6 ? 1e-4 : (cpu_has_avx512() ? 2e-5 : 6e-5);
        CHECK_MSG(worst < tol, dtype_name(dt) << " V=" << V << " T=" << T << ": error " << worst);
      }
}

TEST("kernels: decode's streaming products (1-4 rows, prefetched slabs on 1 and 2 threads) match a float64 loop") {
  std::mt19937 rng(17);
  std::normal_distribution<float> nd(0.f, 1.f);
  ThreadPool pool1(1), pool2(2);
  // Rows of 4 KiB and more (the prefetch runs inside a row and into the next block's rows), row counts that leave a
  // partial block of 4 and several slabs, a K with a tail shorter than one line.
  for (DType dt : {DType::BF16, DType::F16, DType::F32})
    for (int K : {2048, 2053, 40})
      for (int N : {1, 6, 521})
        for (int T : {1, 2, 3, 4}) {
          rstest::TestMatrix W = misaligned_matrix(N, K, dt, 0.5f, rng);
          std::vector<float> x(size_t(T) * K);
          for (auto& v : x) v = nd(rng);
          for (bool accumulate : {false, true}) {
            std::vector<float> y1(size_t(T) * N, 0.25f), y2(y1);
            matmul(pool1, x.data(), T, W.mat, y1.data(), accumulate);
            matmul(pool2, x.data(), T, W.mat, y2.data(), accumulate);
            double worst = 0;
            for (int t = 0; t < T; ++t)
              for (int n = 0; n < N; ++n) {
                double s = accumulate ? 0.25 : 0.0;
                for (int c = 0; c < K; ++c) s += double(x[size_t(t) * K + c]) * W.values[size_t(n) * K + c];
                worst = std::max(worst, std::fabs(s - y2[size_t(t) * N + n]) / (1 + std::fabs(s)));
              }
            CHECK_MSG(worst < 1e-4, "stream " << dtype_name(dt) << " T=" << T << " N=" << N << " K=" << K << " error " << worst);
            CHECK_MSG(y1 == y2, "stream " << dtype_name(dt) << " T=" << T << " N=" << N << " K=" << K << ": 1 and 2 threads differ");
          }
        }
}

TEST("kernels: decode's streaming products sum each row's lanes in _mm512_reduce_add_ps's order, bit for bit") {
  // The products keep 16 partial sums per output (lane c % 16 takes column c, one fused multiply-add each) and add
  // them the way GCC's _mm512_reduce_add_ps does: halves, quarters, then lanes 0+2 and 1+3, then those two. The
  // sums of four outputs are taken together; this holds them to the bits of one reduction per output.
  if (!cpu_has_avx512()) return;
  std::mt19937 rng(23);
  std::normal_distribution<float> nd(0.f, 1.f);
  // Small matrices read four rows side by side; from 128 KiB of weights on, one row of x reads them one row after
  // another (K = 4100: a 16-wide tail; N = 37: a block of one row): both must keep the order.
  struct Shape {
    int K, N;
  };
  std::vector<Shape> shapes;
  for (int K : {16, 40, 128, 7})
    for (int N : {1, 2, 3, 4, 5, 7, 37}) shapes.push_back({K, N});
  shapes.push_back({4100, 37});
  shapes.push_back({4096, 40});
  ThreadPool pool1(1);
  for (DType dt : {DType::BF16, DType::F16, DType::F32})
    for (const Shape& shape : shapes)
      for (int T : {1, 2, 3, 4}) {
        const int K = shape.K, N = shape.N;
        rstest::TestMatrix W = misaligned_matrix(N, K, dt, 0.5f, rng);
        std::vector<float> x(size_t(T) * K);
        for (auto& v : x) v = nd(rng);
        for (bool accumulate : {false, true}) {
          std::vector<float> y(size_t(T) * N), before(y.size());
          for (auto& v : before) v = nd(rng);
          y = before;
          matmul(pool1, x.data(), T, W.mat, y.data(), accumulate);
          bool same = true;
          for (int t = 0; t < T; ++t)
            for (int n = 0; n < N; ++n) {
              float lane[16] = {};
              for (int c0 = 0; c0 < K; c0 += 16)
                for (int i = 0; i < 16; ++i) {
                  const int c = c0 + i;  // past K: the masked loads' zeros
                  lane[i] = std::fma(c < K ? W.values[size_t(n) * K + c] : 0.f, c < K ? x[size_t(t) * K + c] : 0.f, lane[i]);
                }
              float half[8], quarter[4];
              for (int i = 0; i < 8; ++i) half[i] = lane[i + 8] + lane[i];
              for (int i = 0; i < 4; ++i) quarter[i] = half[i + 4] + half[i];
              const float sum = (quarter[0] + quarter[2]) + (quarter[1] + quarter[3]);
              const float want = accumulate ? before[size_t(t) * N + n] + sum : sum;
              same = same && std::memcmp(&want, &y[size_t(t) * N + n], sizeof(float)) == 0;
            }
          CHECK_MSG(same, "stream order " << dtype_name(dt) << " T=" << T << " N=" << N << " K=" << K << " accumulate=" << accumulate);
        }
      }
}

TEST("kernels: input gradients against a tall W (the LM head's) give the same bits on every run and thread count") {
  // Run after run on two threads, whichever thread takes which rows of W, and on one thread: fixed parts of W's rows,
  // added in order (per-thread partials made \`routescope grad\` differ in its last bits from one run to the next).
  std::mt19937 rng(31);
  std::normal_distribution<float> nd(0.f, 1.f);
  ThreadPool pool1(1), pool2(2);
  pool2.set_min_parallel_work(0);
  for (DType dt : {DType::BF16, DType::F32})
    for (int T : {1, 3, 6, 17}) {
      const int N = 9001, K = 96;
      rstest::TestMatrix W = misaligned_matrix(N, K, dt, 0.5f, rng);
      std::vector<float> dy(size_t(T) * N);
      for (auto& v : dy) v = nd(rng);
      std::vector<float> want(size_t(T) * K), got(want.size());
      matmul_backward_input(pool1, dy.data(), T, W.mat, want.data(), false);
      bool same = true;
      for (int run = 0; run < 6; ++run) {
        matmul_backward_input(pool2, dy.data(), T, W.mat, got.data(), false);
        same = same && std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0;
      }
      double worst = 0;
      for (int t = 0; t < T; ++t)
        for (int k = 0; k < K; ++k) {
          double g = 0, scale = 0;
          for (int n = 0; n < N; ++n) {
            g += double(dy[size_t(t) * N + n]) * W.values[size_t(n) * K + k];
            scale += std::fabs(double(dy[size_t(t) * N + n]) * W.values[size_t(n) * K + k]);
          }
          worst = std::max(worst, std::fabs(want[size_t(t) * K + k] - g) / (scale + 1e-30));
        }
      CHECK_MSG(same, dtype_name(dt) << " T=" << T << ": the bits moved between runs or thread counts");
      CHECK_MSG(worst < 1e-6, dtype_name(dt) << " T=" << T << ": error " << worst);
    }
}

TEST("kernels: few-row input gradients (C3PO's stacked rows) sum each output over n in order, bit for bit") {
  // dx[t, k] (+)= sum_n dy[t, n] W[n, k]: whether W is streamed row by row or walked in column tiles, each output is
  // one chain of fused multiply-adds over n from zero, added to the old value when accumulating (the AVX-512 kernels).
  if (!cpu_has_avx512()) return;
  std::mt19937 rng(29);
  std::normal_distribution<float> nd(0.f, 1.f);
  ThreadPool pool1(1), pool2(2);
  // The last shape's parts of W pass 512 KiB, which are summed slab by slab from cache (uneven slabs, masked columns).
  const std::vector<std::array<int, 2>> shapes = {{5, 32},  {5, 40},  {5, 128},  {81, 32},  {81, 40},  {81, 128},
                                                  {128, 32}, {128, 40}, {128, 128}, {300, 32}, {300, 40}, {300, 128},
                                                  {1024, 1040}};
  for (DType dt : {DType::BF16, DType::F16, DType::F32})
    for (const auto& [N, K] : shapes)
      for (int T : {1, 2, 3, 4, 5, 7}) {
        if (N * K > 100000 && T != 3 && T != 4) continue;  // the float loop below is slow at that size
        rstest::TestMatrix W = misaligned_matrix(N, K, dt, 0.5f, rng);
        std::vector<float> dy(size_t(T) * N);
        for (auto& v : dy) v = nd(rng);
        // Rows of zeros are skipped (a whole row, and one block of four weight rows in another): the rows still
        // summed share each widened slice of W, up to four at a time, and keep their own chains' bits.
        if (T >= 2) std::fill(dy.begin() + N, dy.begin() + 2 * N, 0.f);
        if (T >= 3 && N >= 8) std::fill(dy.begin() + 2 * N + 4, dy.begin() + 2 * N + 8, 0.f);
        for (bool accumulate : {false, true}) {
          std::vector<float> before(size_t(T) * K);
          for (auto& v : before) v = nd(rng);
          std::vector<float> dx1(before), dx2(before);
          matmul_backward_input(pool1, dy.data(), T, W.mat, dx1.data(), accumulate);
          matmul_backward_input(pool2, dy.data(), T, W.mat, dx2.data(), accumulate);
          bool same = dx1 == dx2;
          // A product past a million multiply-adds sums fixed parts of W's rows, each one chain, added in order.
          const int part_rows = int64_t(N) * K * T < (int64_t(1) << 20) ? N : std::max(256, ((N + 15) / 16 + 255) / 256 * 256);
          for (int t = 0; t < T; ++t)
            for (int k = 0; k < K; ++k) {
              float want = accumulate ? before[size_t(t) * K + k] : 0.f;
              for (int p0 = 0; p0 < N; p0 += part_rows) {
                float acc = 0.f;
                for (int n = p0; n < std::min(N, p0 + part_rows); ++n)
                  acc = std::fma(dy[size_t(t) * N + n], W.values[size_t(n) * K + k], acc);
                want = part_rows == N && !accumulate ? acc : want + acc;
              }
              same = same && want == dx1[size_t(t) * K + k];
            }
          CHECK_MSG(same, "backward " << dtype_name(dt) << " T=" << T << " N=" << N << " K=" << K << " accumulate=" << accumulate);
          // On the calling thread alone (an expert's rows), up to four rows stream W: one chain over all of it from
          // the old value (more rows go to the packed GEMM, which adds its blocks' chains).
          if (T > 4) continue;
          std::vector<float> dx3(before);
          matmul_backward_input_serial(dy.data(), T, W.mat, dx3.data(), accumulate);
          bool serial_same = true;
          for (int t = 0; t < T; ++t)
            for (int k = 0; k < K; ++k) {
              float acc = accumulate ? before[size_t(t) * K + k] : 0.f;
              for (int n = 0; n < N; ++n) acc = std::fma(dy[size_t(t) * N + n], W.values[size_t(n) * K + k], acc);
              serial_same = serial_same && acc == dx3[size_t(t) * K + k];
            }
          CHECK_MSG(serial_same, "serial backward " << dtype_name(dt) << " T=" << T << " N=" << N << " K=" << K << " accumulate=" << accumulate);
        }
      }
}

TEST("kernels: the LM head's input gradient over a cached slab gives the streamed rows' bits") {
  // backward_cached keeps 64 columns in registers across the slab's rows; each sum must still be backward_stream's
  // chain over n: four rows per fused step, rows of zeros skipped, the remainder one by one, masked last columns.
  if (!cpu_has_avx512()) return;
  for_each_slab_shape(31, [](const rstest::TestMatrix& W, int code, int N, int K, int T, std::mt19937& rng) {
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<float> dy(size_t(T) * N);
    for (auto& v : dy) v = nd(rng);
    if (T >= 2) std::fill(dy.begin() + N, dy.begin() + 2 * N, 0.f);  // a row of zeros
    if (T >= 3 && N >= 8) std::fill(dy.begin() + 2 * N + 4, dy.begin() + 2 * N + 8, 0.f);  // four rows of it
    if (N % 4) dy[size_t(T - 1) * N + N - 1] = 0.f;  // a zero among the remainder rows
    std::vector<float> streamed(size_t(T) * K), cached;
    for (auto& v : streamed) v = nd(rng);
    cached = streamed;
    avx512::backward_stream(dy.data(), T, N, W.mat.data, code, K, 0, N, streamed.data());
    // Fetching lines meanwhile (here the matrix's own, as the LM head fetches its next slab) changes no sum.
    const long bytes = long(N) * K * (code == 0 ? 4 : 2);
    avx512::backward_cached(dy.data(), T, N, W.mat.data, code, K, 0, N, cached.data(), T % 2 ? W.mat.data : nullptr,
                            T % 2 ? bytes : 0);
    CHECK_MSG(same_bits(cached, streamed), "backward_cached " << dtype_name(W.mat.dtype) << " T=" << T << " N=" << N
                                                              << " K=" << K);
  });
}

TEST("kernels: the LM head's logits over a cached slab give dot_rows' bits") {
  // dot_rows_cached runs four weight rows side by side for every row count (one row of x included, which dot_rows
  // streams row after row from 128 KiB on) while fetching the caller's next slab; each logit must be dot_rows' chain.
  if (!cpu_has_avx512()) return;
  for_each_slab_shape(37, [](const rstest::TestMatrix& W, int code, int N, int K, int T, std::mt19937& rng) {
    std::normal_distribution<float> nd(0.f, 1.f);
    for (int accumulate : {0, 1}) {
      std::vector<float> x(size_t(T) * K);
      for (auto& v : x) v = nd(rng);
      const int ldy = N + 3;
      std::vector<float> plain(size_t(T) * ldy), cached;
      for (auto& v : plain) v = nd(rng);
      cached = plain;
      const long bytes = long(N) * K * (code == 0 ? 4 : 2);
      avx512::dot_rows(x.data(), T, K, W.mat.data, code, 1, N, plain.data(), ldy, accumulate);
      avx512::dot_rows_cached(x.data(), T, K, W.mat.data, code, 1, N, cached.data(), ldy, accumulate, W.mat.data, bytes);
      CHECK_MSG(same_bits(cached, plain), "dot_rows_cached " << dtype_name(W.mat.dtype) << " T=" << T << " N=" << N
                                                             << " K=" << K << " accumulate=" << accumulate);
    }
  });
}

TEST("kernels: matmul with bf16-rounded activations (vdpbf16ps, and the reference path) matches a float64 loop") {
  std::mt19937 rng(19);
  std::normal_distribution<float> nd(0.f, 1.f);
  ThreadPool pool1(1), pool2(2);
  // BF16 weights take vdpbf16ps where the CPU has it; F16 weights always the reference path (rounded rows through
  // the fp32 kernels). Odd K (a zero-padded last pair), N past a 128-column unit, T past a 256-row unit and below
  // the 12-row micro-kernel.
  for (DType dt : {DType::BF16, DType::F16})
    for (int K : {77, 256, 2050})
      for (int N : {5, 33, 130})
        for (int T : {5, 13, 300}) {
          rstest::TestMatrix W = misaligned_matrix(N, K, dt, 0.5f, rng);
          std::vector<float> x(size_t(T) * K);
          for (auto& v : x) v = nd(rng);
          for (bool accumulate : {false, true}) {
            std::vector<float> y1(size_t(T) * N, -0.5f), y2(y1);
            matmul_bf16_rounded(pool1, x.data(), T, W.mat, y1.data(), accumulate);
            matmul_bf16_rounded(pool2, x.data(), T, W.mat, y2.data(), accumulate);
            double worst = 0;
            for (int t = 0; t < T; ++t)
              for (int n = 0; n < N; ++n) {
                double s = accumulate ? -0.5 : 0.0, mag = 0;
                for (int c = 0; c < K; ++c) {
                  const double p = double(round_to_bf16(x[size_t(t) * K + c])) * W.values[size_t(n) * K + c];
                  s += p, mag += std::fabs(p);
                }
                // fp32 sums of exact products: the error scales with the sum of magnitudes, not the result.
                worst = std::max(worst, std::fabs(s - y2[size_t(t) * N + n]) / (1 + mag));
              }
            CHECK_MSG(worst < 1e-6, "rounded " << dtype_name(dt) << " T=" << T << " N=" << N << " K=" << K << " error " << worst);
            CHECK_MSG(y1 == y2, "rounded " << dtype_name(dt) << " T=" << T << " N=" << N << " K=" << K << ": 1 and 2 threads differ");
          }
        }
}

TEST("kernels: matmul_bf16_rounded_batch gives matmul_bf16_rounded's bits, one product after another") {
  std::mt19937 rng(23);
  std::normal_distribution<float> nd(0.f, 1.f);
  ThreadPool pool(2);
  // q/k/v-like jobs sharing x (one bf16 split), one with its own x, one F16 weight (the reference path), one empty.
  for (int T : {5, 300}) {
    const int K = 130;
    std::vector<float> x(size_t(T) * K), x2(x.size());
    for (auto& v : x) v = nd(rng);
    for (auto& v : x2) v = nd(rng);
    std::vector<rstest::TestMatrix> W;
    for (auto [N, dt] : {std::pair{300, DType::BF16}, {33, DType::BF16}, {33, DType::BF16}, {40, DType::BF16}, {17, DType::F16}})
      W.push_back(misaligned_matrix(N, K, dt, 0.5f, rng));
    std::vector<std::vector<float>> batched, single;
    for (const auto& w : W) batched.emplace_back(size_t(T) * w.mat.rows, 0.25f);
    single = batched;
    const float* xs[] = {x.data(), x.data(), x.data(), x2.data(), x.data()};
    std::vector<MatmulJob> jobs;
    for (size_t i = 0; i < W.size(); ++i) jobs.push_back({xs[i], T, W[i].mat, batched[i].data(), i == 1});
    jobs.push_back({x.data(), 0, W[0].mat, nullptr});
    matmul_bf16_rounded_batch(pool, jobs);
    for (size_t i = 0; i < W.size(); ++i) {
      matmul_bf16_rounded(pool, xs[i], T, W[i].mat, single[i].data(), i == 1);
      CHECK_MSG(batched[i] == single[i], "T=" << T << " job " << i << ": batched and single products differ");
    }
  }
}

TEST("kernels: round_to_bf16 rounds to nearest even and keeps NaN and infinities") {
  auto bits = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  };
  auto from = [](uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  CHECK(bits(round_to_bf16(from(0x3F808000u))) == 0x3F800000u);  // tie, even below: down
  CHECK(bits(round_to_bf16(from(0x3F818000u))) == 0x3F820000u);  // tie, odd below: up
  CHECK(bits(round_to_bf16(from(0x3F808001u))) == 0x3F810000u);  // above the tie: up
  CHECK(bits(round_to_bf16(from(0x7F7FFFFFu))) == 0x7F800000u);  // the largest float rounds to infinity
  CHECK(std::isinf(round_to_bf16(from(0xFF800000u))) && round_to_bf16(from(0xFF800000u)) < 0);
  CHECK(std::isnan(round_to_bf16(from(0x7FC00001u))));
  CHECK(std::isnan(round_to_bf16(from(0x7F800001u))));  // a signalling NaN whose rounding would carry into infinity
}
