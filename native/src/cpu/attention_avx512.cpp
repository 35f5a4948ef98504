// Compiled with AVX-512 flags and called only when the CPU has them; raw loops, no standard-library templates
// (see matmul_avx512.cpp).
#include "cpu/attention_avx512.h"
#include "cpu/attention_keys.h"

#include <immintrin.h>
#include <stdint.h>

#include "cpu/vecmath_avx512.h"

namespace routescope {
namespace avx512 {

namespace {
constexpr int kKeys = 32;  // keys per block: two vectors of scores per query row
constexpr int kRows = 4;   // query rows sharing each key vector and each value row
constexpr int kVChunk = 64;  // value columns accumulated in registers at once (4 vectors x 4 rows)

inline int imin(int a, int b) { return a < b ? a : b; }
inline int imax(int a, int b) { return a > b ? a : b; }
inline long round16(long n) { return (n + 15) / 16 * 16; }

inline __mmask16 tail16(int n) { return n >= 16 ? (__mmask16)0xFFFF : (n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1)); }

// Up to 16 entries of a key or value row as fp32: as stored, or bf16 widened (exactly) on load.
inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load16(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

// kt[d][j] = K[kb + j][d] for j < nk (zero beyond), d < k_dim: 16x16 blocks transposed in registers.
template <typename KV>
void pack_keys(const KV* K, int k_dim, int kb, int nk, float* kt) {
  __m512 r[16];
  for (int jb = 0; jb < kKeys; jb += 16)
    for (int db = 0; db < k_dim; db += 16) {
      const __mmask16 m = tail16(k_dim - db);
      for (int i = 0; i < 16; ++i)
        r[i] = jb + i < nk ? load16(K + (long)(kb + jb + i) * k_dim + db, m) : _mm512_setzero_ps();
      avx512math::transpose16(r);
      const int dw = imin(16, k_dim - db);
      for (int c = 0; c < dw; ++c) _mm512_storeu_ps(kt + (long)(db + c) * kKeys + jb, r[c]);
    }
}

// Bits lo..hi (inclusive, 0 <= lo <= hi < 32) set.
inline unsigned bits(int lo, int hi) {
  const unsigned long long upto = hi >= 31 ? 0xFFFFFFFFull : ((1ull << (hi + 1)) - 1);
  return (unsigned)(upto & ~((1ull << lo) - 1));
}
// attention_rows for keys and values stored as KV (float or bf16).
template <typename KV>
void rows_of(const float* q, long ldq, int rows, int p0, const KV* K, const KV* V, int k_dim, int v_dim, float scale,
             int window, int chunk, const float* sink, float* out, long ldo, float* scratch) {
  const long vdp = round16(v_dim);
  float* kt = scratch;                          // [k_dim][32]
  float* o = kt + (long)k_dim * kKeys;          // [rows][vdp], unnormalised outputs
  float* mx = o + (long)rows * vdp;             // running max of the scaled scores, per row
  float* sum = mx + rows;                       // running softmax denominator, per row
  float* pr = sum + rows;                       // [kRows][32] probabilities of the current block
  const float neg_inf = -__builtin_inff();
  for (int r = 0; r < rows; ++r) {
    mx[r] = sink ? *sink : neg_inf;  // the sink starts the running softmax: exp(sink - max) = 1, no value
    sum[r] = sink ? 1.f : 0.f;
    for (long c = 0; c < vdp; c += 16) _mm512_storeu_ps(o + r * vdp + c, _mm512_setzero_ps());
  }
  const int last = p0 + rows - 1;  // the last key any row sees
  const int first = first_visible_key(p0, window, chunk);  // nondecreasing in p: row 0's is the lowest
  const __m512 vscale = _mm512_set1_ps(scale);
  // One row (decode): each key's score is a direct dot product, streaming K once without transposing it.
  float* one = pr + kRows * kKeys;  // kKeys scores of the single row
  for (int kb = first; kb <= last; kb += kKeys) {
    const int nk = imin(kKeys, last + 1 - kb);
    if (rows == 1) {
      for (int j = 0; j < kKeys; ++j) {
        if (j >= nk) {
          one[j] = 0.f;
          continue;
        }
        const KV* kr = K + (long)(kb + j) * k_dim;
        if (kb + kKeys + j <= last) {  // the next block's key and value rows, a block ahead of their reads
          const char* kn = (const char*)(kr + (long)kKeys * k_dim);
          const char* vn = (const char*)(V + (long)(kb + kKeys + j) * v_dim);
          for (long b = 0; b < (long)k_dim * (long)sizeof(KV); b += 64) _mm_prefetch(kn + b, _MM_HINT_T0);
          for (long b = 0; b < (long)v_dim * (long)sizeof(KV); b += 64) _mm_prefetch(vn + b, _MM_HINT_T0);
        }
        __m512 acc = _mm512_setzero_ps();
        for (int d = 0; d < k_dim; d += 16) {
          const __mmask16 m = tail16(k_dim - d);
          acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + d), load16(kr + d, m), acc);
        }
        one[j] = _mm512_reduce_add_ps(acc);
      }
    } else {
      pack_keys(K, k_dim, kb, nk, kt);
    }
    for (int r0 = 0; r0 < rows; r0 += kRows) {
      const int mr = imin(kRows, rows - r0);
      // Which keys of this block each row sees.
      unsigned vis[kRows] = {0, 0, 0, 0};
      bool any = false;
      for (int i = 0; i < mr; ++i) {
        const int p = p0 + r0 + i;
        const int lo = imax(first_visible_key(p, window, chunk), kb) - kb, hi = imin(p, kb + nk - 1) - kb;
        if (hi >= lo) vis[i] = bits(lo, hi), any = true;
      }
      if (!any) continue;
      // Scores of mr rows x 32 keys.
      __m512 s0[kRows], s1[kRows];
      for (int i = 0; i < kRows; ++i) s0[i] = s1[i] = _mm512_setzero_ps();
      if (rows == 1) s0[0] = _mm512_loadu_ps(one), s1[0] = _mm512_loadu_ps(one + 16);
      for (int d = 0; d < k_dim && rows > 1; ++d) {
        const __m512 k0 = _mm512_loadu_ps(kt + (long)d * kKeys), k1 = _mm512_loadu_ps(kt + (long)d * kKeys + 16);
        for (int i = 0; i < mr; ++i) {
          const __m512 b = _mm512_set1_ps(q[(r0 + i) * ldq + d]);
          s0[i] = _mm512_fmadd_ps(b, k0, s0[i]);
          s1[i] = _mm512_fmadd_ps(b, k1, s1[i]);
        }
      }
      // Online softmax: new running max, rescale what is accumulated, probabilities of this block.
      float corr[kRows];
      for (int i = 0; i < mr; ++i) {
        corr[i] = 1.f;
        const int r = r0 + i;
        if (!vis[i]) {
          _mm512_storeu_ps(pr + i * kKeys, _mm512_setzero_ps());
          _mm512_storeu_ps(pr + i * kKeys + 16, _mm512_setzero_ps());
          continue;
        }
        const __mmask16 m0 = (__mmask16)(vis[i] & 0xFFFF), m1 = (__mmask16)(vis[i] >> 16);
        const __m512 a = _mm512_mask_mul_ps(_mm512_set1_ps(neg_inf), m0, s0[i], vscale);
        const __m512 b = _mm512_mask_mul_ps(_mm512_set1_ps(neg_inf), m1, s1[i], vscale);
        const float bmax = _mm512_reduce_max_ps(_mm512_max_ps(a, b));
        const float m_new = mx[r] > bmax ? mx[r] : bmax;
        const __m512 mv = _mm512_set1_ps(m_new);
        const __m512 ea = _mm512_maskz_mov_ps(m0, avx512math::exp_ps(_mm512_sub_ps(a, mv)));
        const __m512 eb = _mm512_maskz_mov_ps(m1, avx512math::exp_ps(_mm512_sub_ps(b, mv)));
        _mm512_storeu_ps(pr + i * kKeys, ea);
        _mm512_storeu_ps(pr + i * kKeys + 16, eb);
        if (mx[r] != neg_inf && mx[r] != m_new) {
          const __m512 c = avx512math::exp_ps(_mm512_set1_ps(mx[r] - m_new));
          corr[i] = _mm512_cvtss_f32(c);
        }
        sum[r] = sum[r] * corr[i] + _mm512_reduce_add_ps(_mm512_add_ps(ea, eb));
        mx[r] = m_new;
      }
      // o[rows] = o * corr + p · V[kb .. kb + nk), value columns in chunks held in registers.
      for (int c0 = 0; c0 < v_dim; c0 += kVChunk) {
        const int cw = imin(kVChunk, v_dim - c0);
        const __mmask16 cm[4] = {tail16(cw), tail16(cw - 16), tail16(cw - 32), tail16(cw - 48)};
        __m512 acc[kRows][4];
        for (int i = 0; i < mr; ++i) {
          const __m512 ci = _mm512_set1_ps(corr[i]);
          for (int u = 0; u < 4; ++u) acc[i][u] = _mm512_mul_ps(ci, _mm512_maskz_loadu_ps(cm[u], o + (r0 + i) * vdp + c0 + 16 * u));
        }
        for (int j = 0; j < nk; ++j) {
          const KV* vr = V + (long)(kb + j) * v_dim + c0;
          __m512 vv[4];
          for (int u = 0; u < 4; ++u) vv[u] = load16(vr + 16 * u, cm[u]);
          for (int i = 0; i < mr; ++i) {
            const __m512 b = _mm512_set1_ps(pr[i * kKeys + j]);
            for (int u = 0; u < 4; ++u) acc[i][u] = _mm512_fmadd_ps(b, vv[u], acc[i][u]);
          }
        }
        for (int i = 0; i < mr; ++i)
          for (int u = 0; u < 4; ++u) _mm512_mask_storeu_ps(o + (r0 + i) * vdp + c0 + 16 * u, cm[u], acc[i][u]);
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    const __m512 inv = _mm512_set1_ps(1.f / sum[r]);
    for (int c = 0; c < v_dim; c += 16) {
      const __mmask16 m = tail16(v_dim - c);
      _mm512_mask_storeu_ps(out + r * ldo + c, m, _mm512_mul_ps(inv, _mm512_maskz_loadu_ps(m, o + r * vdp + c)));
    }
  }
}

}  // namespace

long attention_scratch_floats(int rows, int k_dim, int v_dim) {
  return (long)k_dim * kKeys + (long)rows * round16(v_dim) + 2L * rows + (long)(kRows + 1) * kKeys + 64;
}

void attention_rows(const float* q, long ldq, int rows, int p0, const float* K, const float* V, int k_dim, int v_dim,
                    float scale, int window, int chunk, const float* sink, float* out, long ldo, float* scratch) {
  rows_of(q, ldq, rows, p0, K, V, k_dim, v_dim, scale, window, chunk, sink, out, ldo, scratch);
}

void attention_rows(const float* q, long ldq, int rows, int p0, const uint16_t* K, const uint16_t* V, int k_dim,
                    int v_dim, float scale, int window, int chunk, const float* sink, float* out, long ldo,
                    float* scratch) {
  rows_of(q, ldq, rows, p0, K, V, k_dim, v_dim, scale, window, chunk, sink, out, ldo, scratch);
}

void softmax_row(float* row, int keys, int j0, int p, float scale, const float* sink) {
  const __m512 sc = _mm512_set1_ps(scale);
  auto mask = [](int n) { return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1); };
  __m512 mv = _mm512_set1_ps(-__builtin_inff());
  for (int j = j0; j <= p; j += 16) {
    const __mmask16 m = mask(p + 1 - j);
    mv = _mm512_mask_max_ps(mv, m, mv, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), sc));
  }
  float mx = _mm512_reduce_max_ps(mv);
  if (sink && *sink > mx) mx = *sink;
  const __m512 mxv = _mm512_set1_ps(mx);
  __m512 sum = _mm512_setzero_ps();
  for (int j = j0; j <= p; j += 16) {
    const __mmask16 m = mask(p + 1 - j);
    const __m512 e = _mm512_maskz_mov_ps(m, avx512math::exp_ps(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, row + j), sc, mxv)));
    _mm512_mask_storeu_ps(row + j, m, e);
    sum = _mm512_add_ps(sum, e);
  }
  float total = _mm512_reduce_add_ps(sum);
  if (sink) total += _mm512_cvtss_f32(avx512math::exp_ps(_mm512_set1_ps(*sink - mx)));
  const __m512 inv = _mm512_set1_ps(1.f / total);
  for (int j = 0; j < j0; ++j) row[j] = 0.f;
  for (int j = j0; j <= p; j += 16) {
    const __mmask16 m = mask(p + 1 - j);
    _mm512_mask_storeu_ps(row + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), inv));
  }
  for (int j = p + 1; j < keys; ++j) row[j] = 0.f;
}

}  // namespace avx512
}  // namespace routescope
