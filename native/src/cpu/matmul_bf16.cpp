// Compiled with AVX512_BF16 flags and called only when the CPU has them; raw loops, no standard-library templates
// (see matmul_avx512.cpp).
#include "cpu/matmul_bf16.h"

#include <immintrin.h>

#include "cpu/block_prefetch.h"
#include "cpu/vecmath_avx512.h"

namespace routescope {
namespace bf16dp {

namespace {
inline int imin(int a, int b) { return a < b ? a : b; }
constexpr int kMR = 6;  // rows per micro-kernel call: 4 x 6 accumulators + 2 weight vectors + broadcasts

// x -> (hi, lo) bf16 halves of 16 pairs: v0 holds x[2i], v1 holds x[2i+1] for i = 0..15 ... is avoided: the pair
// layout is the memory order of x, so 32 consecutive floats become one vector of 16 hi pairs and one of 16 lo pairs.
inline void split32(__m512 a, __m512 b, __m512i* hi, __m512i* lo) {
  // vcvtne2ps2bf16(b, a): elements 0..15 from a, 16..31 from b, round to nearest even.
  const __m512bh h = _mm512_cvtne2ps_pbh(b, a);
  const __m512i hbits = (__m512i)h;
  // Widen hi back to fp32 exactly (bf16 -> fp32 is a shift) and take the remainders, which fp32 holds exactly.
  const __m512 ha = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(hbits)), 16));
  const __m512 hb = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(hbits, 1)), 16));
  *hi = hbits;
  *lo = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(b, hb), _mm512_sub_ps(a, ha));
}

// panel[p][j] = pair p0 + p of weight row n0 + j (zero for j >= nr and for elements past K), p < np.
void pack_pairs(const uint8_t* W, int K, int n0, int nr, int p0, int np, uint32_t* panel) {
  const long rb = (long)K * 2;
  __m512i r[16];
  for (int jb = 0; jb < kNR; jb += 16) {
    for (int pp = 0; pp < np; pp += 16) {
      const int k0 = 2 * (p0 + pp);                  // first element
      const int kw = imin(32, K - k0);                // elements of this block inside the row
      const __mmask32 m = kw >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << kw) - 1);
      for (int i = 0; i < 16; ++i) {
        const int j = jb + i;
        if (j >= nr) {
          r[i] = _mm512_setzero_si512();
          continue;
        }
        const uint16_t* row = reinterpret_cast<const uint16_t*>(W + (long)(n0 + j) * rb) + k0;
        r[i] = _mm512_maskz_loadu_epi16(m, row);
      }
      avx512math::transpose16(r);
      const int pw = imin(16, np - pp);
      for (int c = 0; c < pw; ++c) _mm512_storeu_si512(panel + (long)(pp + c) * kNR + jb, r[c]);
    }
  }
}

// y[MR][32] (+)= x pairs [MR][np] · panel [np][32]. The hi and lo halves of x accumulate into separate sums
// (added at the end), so the two products of a pair do not wait on each other.
// LO = false: x is one rounded bf16 part (xl unused), half the products.
template <int MR, bool LO>
void micro(const uint32_t* xh, const uint32_t* xl, long ldx, const uint32_t* panel, int np, float* y, long ldy, int nr,
           int add) {
  __m512 h0[MR], h1[MR], l0[MR], l1[MR];
  for (int i = 0; i < MR; ++i) h0[i] = h1[i] = l0[i] = l1[i] = _mm512_setzero_ps();
  for (int p = 0; p < np; ++p) {
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(panel + p * kNR);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(panel + p * kNR + 16);
    for (int i = 0; i < MR; ++i) {
      const __m512bh h = (__m512bh)_mm512_set1_epi32((int)xh[i * ldx + p]);
      h0[i] = _mm512_dpbf16_ps(h0[i], h, w0);
      h1[i] = _mm512_dpbf16_ps(h1[i], h, w1);
      if (LO) {
        const __m512bh l = (__m512bh)_mm512_set1_epi32((int)xl[i * ldx + p]);
        l0[i] = _mm512_dpbf16_ps(l0[i], l, w0);
        l1[i] = _mm512_dpbf16_ps(l1[i], l, w1);
      }
    }
  }
  const __mmask16 m0 = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? (__mmask16)0xFFFF : (nr <= 16 ? (__mmask16)0 : (__mmask16)((1u << (nr - 16)) - 1));
  for (int i = 0; i < MR; ++i) {
    float* yr = y + i * ldy;
    __m512 a0 = LO ? _mm512_add_ps(h0[i], l0[i]) : h0[i], a1 = LO ? _mm512_add_ps(h1[i], l1[i]) : h1[i];
    if (add) {
      a0 = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(m0, yr));
      a1 = _mm512_add_ps(a1, _mm512_maskz_loadu_ps(m1, yr + 16));
    }
    _mm512_mask_storeu_ps(yr, m0, a0);
    _mm512_mask_storeu_ps(yr + 16, m1, a1);
  }
}

}  // namespace

void split_rows(const float* x, long ldx, const int32_t* rows, int m, int K, uint32_t* out_hi, uint32_t* out_lo) {
  const int P = (K + 1) / 2;
  for (int i = 0; i < m; ++i) {
    const float* xr = x + (rows ? (long)rows[i] : (long)i) * ldx;
    uint32_t* oh = out_hi + (long)i * P;
    uint32_t* ol = out_lo ? out_lo + (long)i * P : nullptr;
    int k = 0;
    for (; k + 32 <= K; k += 32) {
      __m512i h, l;
      split32(_mm512_loadu_ps(xr + k), _mm512_loadu_ps(xr + k + 16), &h, &l);
      _mm512_storeu_si512(oh + k / 2, h);
      if (ol) _mm512_storeu_si512(ol + k / 2, l);
    }
    if (k < K) {
      const int rest = K - k;  // 1..31 elements, zero padded to whole pairs
      const __mmask16 ma = (__mmask16)(rest >= 16 ? 0xFFFF : (1u << rest) - 1);
      const __mmask16 mb = (__mmask16)(rest <= 16 ? 0 : (1u << (rest - 16)) - 1);
      __m512i h, l;
      split32(_mm512_maskz_loadu_ps(ma, xr + k), _mm512_maskz_loadu_ps(mb, xr + k + 16), &h, &l);
      const int pairs = (rest + 1) / 2;
      const __mmask16 mp = (__mmask16)((1u << pairs) - 1);
      _mm512_mask_storeu_epi32(oh + k / 2, mp, h);
      if (ol) _mm512_mask_storeu_epi32(ol + k / 2, mp, l);
    }
  }
}

namespace {
// Pairs (LO): 6 rows x 4 accumulators; one rounded part: 12 rows x 2 accumulators.
template <bool LO>
void gemm_rows_t(const uint32_t* x_hi, const uint32_t* x_lo, int m, int K, const uint8_t* W, int n0, int nr, float* y,
                 long ldy, int accumulate, uint32_t* panel) {
  constexpr int MR = LO ? kMR : 2 * kMR;
  const int P = (K + 1) / 2;
  const int calls = m / MR + (m % MR ? 1 : 0);
  BlockPrefetch ahead;
  for (int n = 0; n < nr; n += kNR) {
    const int w = imin(kNR, nr - n);
    for (int p0 = 0; p0 < P; p0 += kKCP) {
      const int np = imin(kKCP, P - p0);
      pack_pairs(W, K, n0 + n, w, p0, np, panel);
      // The block after this one: the next K block of these rows, or the first of the next panel.
      if (p0 + kKCP < P) ahead.set(W, (long)K * 2, n0 + n, w, (long)(p0 + kKCP) * 4, (long)imin(kKCP, P - p0 - kKCP) * 4);
      else if (n + kNR < nr) ahead.set(W, (long)K * 2, n0 + n + kNR, imin(kNR, nr - n - kNR), 0, (long)imin(kKCP, P) * 4);
      else ahead.total = 0;
      const int per_call = (ahead.total + calls - 1) / calls;
      const int add = accumulate || p0 > 0;
      int i = 0;
      for (; i + MR <= m; i += MR) {
        ahead.issue(per_call);
        micro<MR, LO>(x_hi + (long)i * P + p0, LO ? x_lo + (long)i * P + p0 : nullptr, P, panel, np, y + i * ldy + n, ldy,
                      w, add);
      }
      ahead.issue(ahead.total);
      const uint32_t* xh = x_hi + (long)i * P + p0;
      const uint32_t* xl = LO ? x_lo + (long)i * P + p0 : nullptr;
      float* ys = y + i * ldy + n;
      switch (m - i) {
        case 0: break;
        case 1: micro<1, LO>(xh, xl, P, panel, np, ys, ldy, w, add); break;
        case 2: micro<2, LO>(xh, xl, P, panel, np, ys, ldy, w, add); break;
        case 3: micro<3, LO>(xh, xl, P, panel, np, ys, ldy, w, add); break;
        case 4: micro<4, LO>(xh, xl, P, panel, np, ys, ldy, w, add); break;
        case 5: micro<5, LO>(xh, xl, P, panel, np, ys, ldy, w, add); break;
        case 6: micro<6, LO>(xh, xl, P, panel, np, ys, ldy, w, add); break;
        case 7: micro<7, LO>(xh, xl, P, panel, np, ys, ldy, w, add); break;
        case 8: micro<8, LO>(xh, xl, P, panel, np, ys, ldy, w, add); break;
        case 9: micro<9, LO>(xh, xl, P, panel, np, ys, ldy, w, add); break;
        case 10: micro<10, LO>(xh, xl, P, panel, np, ys, ldy, w, add); break;
        default: micro<11, LO>(xh, xl, P, panel, np, ys, ldy, w, add); break;
      }
    }
  }
}
}  // namespace

void gemm_rows(const uint32_t* x_hi, const uint32_t* x_lo, int m, int K, const uint8_t* W, int n0, int nr, float* y,
               long ldy, int accumulate, uint32_t* panel) {
  if (x_lo) gemm_rows_t<true>(x_hi, x_lo, m, K, W, n0, nr, y, ldy, accumulate, panel);
  else gemm_rows_t<false>(x_hi, nullptr, m, K, W, n0, nr, y, ldy, accumulate, panel);
}

void silu_mul_split(const float* g, const float* u, int m, int nr, long ldt, uint32_t* act_hi, uint32_t* act_lo,
                    long ldp, int n0) {
  for (int i = 0; i < m; ++i) {
    const float* gi = g + i * ldt;
    const float* ui = u + i * ldt;
    uint32_t* oh = act_hi + i * ldp + n0 / 2;
    uint32_t* ol = act_lo ? act_lo + i * ldp + n0 / 2 : nullptr;
    for (int c = 0; c < nr; c += 32) {
      const int rest = imin(32, nr - c);
      const __mmask16 ma = (__mmask16)(rest >= 16 ? 0xFFFF : (1u << rest) - 1);
      const __mmask16 mb = (__mmask16)(rest <= 16 ? 0 : (rest >= 32 ? 0xFFFF : (1u << (rest - 16)) - 1));
      const __m512 a = avx512math::silu_mul_ps(_mm512_maskz_loadu_ps(ma, gi + c), _mm512_maskz_loadu_ps(ma, ui + c));
      const __m512 b = avx512math::silu_mul_ps(_mm512_maskz_loadu_ps(mb, gi + c + 16), _mm512_maskz_loadu_ps(mb, ui + c + 16));
      __m512i h, l;
      split32(a, b, &h, &l);
      const int pairs = (rest + 1) / 2;
      const __mmask16 mp = (__mmask16)(pairs >= 16 ? 0xFFFF : (1u << pairs) - 1);
      _mm512_mask_storeu_epi32(oh + c / 2, mp, h);
      if (ol) _mm512_mask_storeu_epi32(ol + c / 2, mp, l);
    }
  }
}

}  // namespace bf16dp
}  // namespace routescope
