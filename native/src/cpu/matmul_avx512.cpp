// Compiled with AVX-512 flags and called only when the CPU has them. No standard-library templates here:
// instantiating them with AVX-512 code could leak into other translation units through the linker.
#include "cpu/matmul_avx512.h"

#include <immintrin.h>

#include "cpu/block_prefetch.h"
#include "cpu/vecmath_avx512.h"

namespace routescope {
namespace avx512 {

namespace {
constexpr int kKC = 256;
constexpr int kNR = 32;
constexpr int kMR = 8;

inline int imin(int a, int b) { return a < b ? a : b; }

template <int DT>
inline __m512 load16(const uint8_t* base, long index) {
  if (DT == 0) return _mm512_loadu_ps(reinterpret_cast<const float*>(base) + index);
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(reinterpret_cast<const uint16_t*>(base) + index));
  if (DT == 1) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <int DT>
inline __m512 load16_masked(const uint8_t* base, long index, __mmask16 m) {
  if (DT == 0) return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(base) + index);
  __m256i h = _mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(base) + index);
  if (DT == 1) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline long elem_bytes(int dt) { return dt == 0 ? 4 : 2; }

// Bytes ahead of the reads at which the streaming products prefetch each row. Every row of a 2048-wide bf16 matrix
// is one 4 KiB page and the hardware stream prefetchers stop at page boundaries, so without this each block of rows
// pays DRAM latency while the prefetchers retrain; this far ahead keeps enough lines in flight for the bandwidth.
constexpr long kStreamAhead = 1024;

// Lines a kernel reads next (its rows further on, or the caller's next slab), fetched a few per step of its loop in
// address order (one sequential stream): the near prefetches alone (each row kStreamAhead ahead) left a few-row
// product at 55-75 % of the read rate.
struct NextLines {
  const char* at = nullptr;
  const char* end = nullptr;
  long per_step = 0;
  NextLines() = default;
  NextLines(const uint8_t* begin, long bytes, long steps)
      : at(reinterpret_cast<const char*>(begin)), end(at + (begin ? bytes : 0)),
        per_step(steps > 0 ? ((bytes + 63) / 64 + steps - 1) / steps : 0) {}
  void fetch() {
    for (long i = 0; i < per_step && at < end; ++i, at += 64) _mm_prefetch(at, _MM_HINT_T1);
  }
};

// Rows [n0, n1) of a streamed matrix, fetched kFarAhead bytes ahead of where four rows side by side read (four lines
// per step of 64 bytes along them): the next block of rows arrives in address order, one stream the memory serves at
// its rate. On a Zen 4, three-row products went from 21-25 to 29-36 GB/s forward (16 KiB; 32 KiB: 27-30, 64 KiB: 25).
// Only from kFarFrom bytes of rows: smaller matrices are likely in cache already (the demo model's, 32 KiB each, ran
// 1-9 % slower per C3PO item with these fetches).
constexpr long kFarAhead = 16 << 10, kFarFrom = 128 << 10;
inline NextLines lead_lines(const uint8_t* W, long rb, int n0, int n1) {
  NextLines far;
  if ((long)(n1 - n0) * rb >= kFarFrom) {
    far.at = reinterpret_cast<const char*>(W + (long)n0 * rb + kFarAhead);
    far.end = reinterpret_cast<const char*>(W + (long)n1 * rb);
    far.per_step = 4;
  }
  return far;
}

// The horizontal sums of four vectors, each added in the order of GCC's _mm512_reduce_add_ps (the 256-bit halves,
// then the 128-bit quarters, then lanes 0+2 and 1+3, then those two), so the same bits, with the shuffles of the four
// done together (a third of them; one vector's sums alone left them a large share of a short product's time).
inline __m128 reduce_add4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
  __m512 q = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
  q = _mm512_add_ps(q, _mm512_permute_ps(q, _MM_SHUFFLE(1, 0, 3, 2)));
  q = _mm512_add_ps(q, _mm512_permute_ps(q, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, q));
}

// The sums of four rows' accumulators into dst[0..rows), added to what is there when accumulate.
inline void store_sums4(__m512 a, __m512 b, __m512 c, __m512 d, int rows, float* dst, int accumulate) {
  const __mmask8 live = (__mmask8)((1u << rows) - 1);
  __m128 s = reduce_add4(a, b, c, d);
  if (accumulate) s = _mm_add_ps(_mm_maskz_loadu_ps(live, dst), s);
  _mm_mask_storeu_ps(dst, live, s);
}

// Up to 4 rows of W against up to 4 rows of x, reduced horizontally at the end (C3PO's stacked rows, a few tokens per
// expert, decode on small matrices); each x vector serves four weight rows. next: the rows of the block that follows
// (null where there is none), prefetched once the reads run past these rows' end.
template <int DT, int TT>
void dot_block(const float* x, int K, const uint8_t* W, long row_bytes, int n, int rows, float* y, int ldy,
               int accumulate, const uint8_t* const* next, NextLines& far) {
  constexpr int kLine = DT == 0 ? 16 : 32;  // elements of one 64-byte line of W
  __m512 acc[4][TT];
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  const uint8_t* wr[4];
  for (int r = 0; r < 4; ++r) wr[r] = W + (long)(n + (r < rows ? r : 0)) * row_bytes;
  const long eb = elem_bytes(DT);
  int k = 0;
  for (; k + kLine <= K; k += kLine) {
    const long ahead = (long)k * eb + kStreamAhead;
    for (int r = 0; r < 4; ++r) {
      if (ahead < row_bytes) {
        if (r < rows) _mm_prefetch((const char*)(wr[r] + ahead), _MM_HINT_T0);
      } else if (next[r]) {
        _mm_prefetch((const char*)(next[r] + (ahead - row_bytes)), _MM_HINT_T0);
      }
    }
    far.fetch();
    for (int h = 0; h < kLine; h += 16) {
      __m512 xv[TT];
      for (int t = 0; t < TT; ++t) xv[t] = _mm512_loadu_ps(x + (long)t * K + k + h);
      for (int r = 0; r < 4; ++r) {
        __m512 w = load16<DT>(wr[r], k + h);
        for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_fmadd_ps(w, xv[t], acc[r][t]);
      }
    }
  }
  for (; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
    __m512 xv[TT];
    for (int t = 0; t < TT; ++t) xv[t] = _mm512_maskz_loadu_ps(m, x + (long)t * K + k);
    for (int r = 0; r < 4; ++r) {
      __m512 w = load16_masked<DT>(wr[r], k, m);
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_fmadd_ps(w, xv[t], acc[r][t]);
    }
  }
  for (int t = 0; t < TT; ++t)
    store_sums4(acc[0][t], acc[1][t], acc[2][t], acc[3][t], rows, y + (long)t * ldy + n, accumulate);
}

// From this many bytes of W per call, one row of x reads W's rows one after another (below it the rows are likely in
// cache, where dot_block's four independent chains ran 10-15 % faster).
constexpr long kSequentialBytes = 128 << 10;

// One row of x against up to 4 rows of W (decode): adjacent rows read in turn make one sequential stream, which the
// prefetchers follow (four rows side by side, four streams, reached 55-65 % of its rate on a Zen 4); each row's chain
// of multiply-adds is dot_block's, so the same bits.
template <int DT>
void dot_block_sequential(const float* x, int K, const uint8_t* W, long row_bytes, int n, int rows, float* y,
                          int accumulate) {
  __m512 acc[4];
  for (int r = 0; r < 4; ++r) acc[r] = _mm512_setzero_ps();
  for (int r = 0; r < rows; ++r) {
    const uint8_t* wr = W + (long)(n + r) * row_bytes;
    int k = 0;
    for (; k + 16 <= K; k += 16) acc[r] = _mm512_fmadd_ps(load16<DT>(wr, k), _mm512_loadu_ps(x + k), acc[r]);
    if (k < K) {
      const __mmask16 m = (__mmask16)((1u << (K - k)) - 1);
      acc[r] = _mm512_fmadd_ps(load16_masked<DT>(wr, k, m), _mm512_maskz_loadu_ps(m, x + k), acc[r]);
    }
  }
  store_sums4(acc[0], acc[1], acc[2], acc[3], rows, y + n, accumulate);
}

template <int DT, int TT>
void dot_rows_t(const float* x, int K, const uint8_t* W, int n0, int n1, float* y, int ldy, int accumulate,
                const NextLines* fetch = nullptr) {
  const long rb = (long)K * elem_bytes(DT);
  if (!fetch && TT == 1 && (long)(n1 - n0) * rb >= kSequentialBytes) {
    for (int n = n0; n < n1; n += 4) dot_block_sequential<DT>(x, K, W, rb, n, imin(4, n1 - n), y, accumulate);
    return;
  }
  // The first block's leading lines (later ones are fetched from inside dot_block, kStreamAhead ahead).
  const long lead = rb < kStreamAhead ? rb : kStreamAhead;
  for (int r = 0; r < 4 && n0 + r < n1; ++r)
    for (long b = 0; b < lead; b += 64) _mm_prefetch((const char*)(W + (long)(n0 + r) * rb + b), _MM_HINT_T0);
  NextLines far = fetch ? *fetch : lead_lines(W, rb, n0, n1);
  for (int n = n0; n < n1; n += 4) {
    const uint8_t* next[4];
    for (int r = 0; r < 4; ++r) next[r] = n + 4 + r < n1 ? W + (long)(n + 4 + r) * rb : nullptr;
    dot_block<DT, TT>(x, K, W, rb, n, imin(4, n1 - n), y, ldy, accumulate, next, far);
  }
}

// fetch: lines the first four rows' pass fetches instead of these rows' own (dot_rows_cached); the later passes
// re-read the rows from cache.
template <int DT>
void dot_rows_dt(const float* x, int T, int K, const uint8_t* W, int n0, int n1, float* y, int ldy, int accumulate,
                 const NextLines* fetch = nullptr) {
  for (int t = 0; t < T; t += 4) {
    int tt = imin(4, T - t);
    const float* xs = x + (long)t * K;
    float* ys = y + (long)t * ldy;
    const NextLines* f = t == 0 ? fetch : nullptr;
    switch (tt) {
      case 1: dot_rows_t<DT, 1>(xs, K, W, n0, n1, ys, ldy, accumulate, f); break;
      case 2: dot_rows_t<DT, 2>(xs, K, W, n0, n1, ys, ldy, accumulate, f); break;
      case 3: dot_rows_t<DT, 3>(xs, K, W, n0, n1, ys, ldy, accumulate, f); break;
      default: dot_rows_t<DT, 4>(xs, K, W, n0, n1, ys, ldy, accumulate, f); break;
    }
  }
}

// Packs W[n..n+nr, kc..kc+kb] as fp32 panel[kk][kNR] (zero padded past nr), 16x16 blocks transposed in registers.
template <int DT>
void pack_panel(const uint8_t* W, int K, int n, int nr, int kc, int kb, float* panel) {
  const long rb = (long)K * elem_bytes(DT);
  __m512 r[16];
  for (int jb = 0; jb < kNR; jb += 16) {
    for (int kk = 0; kk < kb; kk += 16) {
      const int kw = imin(16, kb - kk);
      const __mmask16 m = kw == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << kw) - 1);
      for (int i = 0; i < 16; ++i) {
        const int j = jb + i;
        if (j >= nr) {
          r[i] = _mm512_setzero_ps();
          continue;
        }
        const uint8_t* row = W + (long)(n + j) * rb;
        r[i] = load16_masked<DT>(row, kc + kk, m);
      }
      avx512math::transpose16(r);
      for (int c = 0; c < kw; ++c) _mm512_storeu_ps(panel + (long)(kk + c) * kNR + jb, r[c]);
    }
  }
}

template <int MR>
void micro(const float* x, int ldx, const float* panel, int kb, float* y, int ldy, int nr, int add) {
  __m512 acc0[MR], acc1[MR];
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  for (int kk = 0; kk < kb; ++kk) {
    __m512 w0 = _mm512_loadu_ps(panel + kk * kNR);
    __m512 w1 = _mm512_loadu_ps(panel + kk * kNR + 16);
    for (int i = 0; i < MR; ++i) {
      __m512 b = _mm512_set1_ps(x[(long)i * ldx + kk]);
      acc0[i] = _mm512_fmadd_ps(b, w0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(b, w1, acc1[i]);
    }
  }
  __mmask16 m0 = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
  __mmask16 m1 = nr >= 32 ? (__mmask16)0xFFFF : (nr <= 16 ? (__mmask16)0 : (__mmask16)((1u << (nr - 16)) - 1));
  for (int i = 0; i < MR; ++i) {
    float* yr = y + (long)i * ldy;
    if (add) {
      acc0[i] = _mm512_add_ps(acc0[i], _mm512_maskz_loadu_ps(m0, yr));
      acc1[i] = _mm512_add_ps(acc1[i], _mm512_maskz_loadu_ps(m1, yr + 16));
    }
    _mm512_mask_storeu_ps(yr, m0, acc0[i]);
    _mm512_mask_storeu_ps(yr + 16, m1, acc1[i]);
  }
}

template <int DT>
void gemm_panel_dt(const float* x, int T, int K, const uint8_t* W, int n0, int n1, float* y, int ldy,
                   int accumulate, float* panel) {
  const long eb = elem_bytes(DT), rb = (long)K * eb;
  const int calls = T / kMR + (T % kMR ? 1 : 0);
  BlockPrefetch ahead;
  for (int n = n0; n < n1; n += kNR) {
    int nr = imin(kNR, n1 - n);
    for (int kc = 0; kc < K; kc += kKC) {
      int kb = imin(kKC, K - kc);
      pack_panel<DT>(W, K, n, nr, kc, kb, panel);
      // The block packed next (the next K block of these rows, or the first of the next panel) is fetched while
      // this one is multiplied.
      if (kc + kKC < K) ahead.set(W, rb, n, nr, (kc + kKC) * eb, (long)imin(kKC, K - kc - kKC) * eb);
      else if (n + kNR < n1) ahead.set(W, rb, n + kNR, imin(kNR, n1 - n - kNR), 0, (long)imin(kKC, K) * eb);
      else ahead.clear();
      const int per_call = (ahead.total + calls - 1) / calls;
      int add = accumulate || kc > 0;
      int t = 0;
      for (; t + kMR <= T; t += kMR) {
        ahead.issue(per_call);
        micro<kMR>(x + (long)t * K + kc, K, panel, kb, y + (long)t * ldy + n, ldy, nr, add);
      }
      ahead.issue(ahead.total);
      const float* xs = x + (long)t * K + kc;
      float* ys = y + (long)t * ldy + n;
      switch (T - t) {
        case 0: break;
        case 1: micro<1>(xs, K, panel, kb, ys, ldy, nr, add); break;
        case 2: micro<2>(xs, K, panel, kb, ys, ldy, nr, add); break;
        case 3: micro<3>(xs, K, panel, kb, ys, ldy, nr, add); break;
        case 4: micro<4>(xs, K, panel, kb, ys, ldy, nr, add); break;
        case 5: micro<5>(xs, K, panel, kb, ys, ldy, nr, add); break;
        case 6: micro<6>(xs, K, panel, kb, ys, ldy, nr, add); break;
        default: micro<7>(xs, K, panel, kb, ys, ldy, nr, add); break;
      }
    }
  }
}

// dx[t, k0:k1] (+)= sum_n dy[t, n] W[n, k0:k1], tiles of 8 rows x 32 columns.
template <int DT, int MR>
void backward_tile(const float* dy, int N, const uint8_t* W, int K, int k, int kw, float* dx, int accumulate) {
  __m512 acc0[MR], acc1[MR];
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  __mmask16 m0 = kw >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << kw) - 1);
  __mmask16 m1 = kw >= 32 ? (__mmask16)0xFFFF : (kw <= 16 ? (__mmask16)0 : (__mmask16)((1u << (kw - 16)) - 1));
  long rb = (long)K * elem_bytes(DT);
  for (int n = 0; n < N; ++n) {
    const uint8_t* row = W + (long)n * rb;
    __m512 w0 = load16_masked<DT>(row, k, m0);
    __m512 w1 = load16_masked<DT>(row, k + 16, m1);
    for (int i = 0; i < MR; ++i) {
      __m512 b = _mm512_set1_ps(dy[(long)i * N + n]);
      acc0[i] = _mm512_fmadd_ps(b, w0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(b, w1, acc1[i]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    float* r = dx + (long)i * K + k;
    if (accumulate) {
      acc0[i] = _mm512_add_ps(acc0[i], _mm512_maskz_loadu_ps(m0, r));
      acc1[i] = _mm512_add_ps(acc1[i], _mm512_maskz_loadu_ps(m1, r + 16));
    }
    _mm512_mask_storeu_ps(r, m0, acc0[i]);
    _mm512_mask_storeu_ps(r + 16, m1, acc1[i]);
  }
}

template <int DT>
void backward_rows_dt(const float* dy, int T, int N, const uint8_t* W, int K, int k0, int k1, float* dx,
                      int accumulate) {
  for (int k = k0; k < k1; k += 32) {
    int kw = imin(32, k1 - k);
    int t = 0;
    for (; t + 8 <= T; t += 8) backward_tile<DT, 8>(dy + (long)t * N, N, W, K, k, kw, dx + (long)t * K, accumulate);
    for (; t < T; ++t) backward_tile<DT, 1>(dy + (long)t * N, N, W, K, k, kw, dx + (long)t * K, accumulate);
  }
}
}  // namespace

namespace {
// One MXFP4 block: 16 bytes = 32 E2M1 codes (low nibble first), as 32 f32 values fp4[code] · s in w0 (columns 0-15)
// and w1 (16-31). Each byte widened to 16 bits becomes [low nibble, high nibble] as two bytes: the codes in order.
inline void mxfp4_block32(const uint8_t* q16, __m512 table, __m512 s, __m512& w0, __m512& w1) {
  const __m256i w16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)q16));
  const __m256i codes = _mm256_or_si256(_mm256_and_si256(w16, _mm256_set1_epi16(0x000F)),
                                        _mm256_slli_epi16(_mm256_and_si256(w16, _mm256_set1_epi16(0x00F0)), 4));
  w0 = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(codes)), table), s);
  w1 = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(codes, 1)), table), s);
}

// Up to 4 MXFP4 rows against TT rows of x, as dot_block<0, TT> runs on the same rows widened to f32: per row and x
// row one accumulator, fused multiply-adds over 16 columns at a time in column order, then reduce_add4.
template <int TT>
void mxfp4_block(const float* x, int K, const uint8_t* const* q, const uint8_t* const* e, int rows, const float* fp4,
                 const float* scale, float* y, int ldy, int n, int accumulate) {
  const __m512 table = _mm512_loadu_ps(fp4);
  __m512 acc[4][TT];
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int b = 0; b < K / 32; ++b) {
    const int k = b * 32;
    __m512 x0[TT], x1[TT];
    for (int t = 0; t < TT; ++t) x0[t] = _mm512_loadu_ps(x + (long)t * K + k), x1[t] = _mm512_loadu_ps(x + (long)t * K + k + 16);
    for (int r = 0; r < 4; ++r) {
      if (b % 4 == 0) _mm_prefetch((const char*)(q[r] + b * 16 + 512), _MM_HINT_T0);
      __m512 w0, w1;
      mxfp4_block32(q[r] + b * 16, table, _mm512_set1_ps(scale[e[r][b]]), w0, w1);
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_fmadd_ps(w0, x0[t], acc[r][t]);
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_fmadd_ps(w1, x1[t], acc[r][t]);
    }
  }
  for (int t = 0; t < TT; ++t)
    store_sums4(acc[0][t], acc[1][t], acc[2][t], acc[3][t], rows, y + (long)t * ldy + n, accumulate);
}

template <int TT>
void mxfp4_rows_t(const float* x, int K, const uint8_t* q, const uint8_t* e, int rstep, int roff, const float* fp4,
                  const float* scale, int n0, int n1, float* y, int ldy, int accumulate) {
  for (int n = n0; n < n1; n += 4) {
    const int rows = imin(4, n1 - n);
    const uint8_t* qr[4];
    const uint8_t* er[4];
    for (int r = 0; r < 4; ++r) {
      const long row = (long)(n + (r < rows ? r : 0)) * rstep + roff;
      qr[r] = q + row * (K / 2);
      er[r] = e + row * (K / 32);
    }
    mxfp4_block<TT>(x, K, qr, er, rows, fp4, scale, y, ldy, n, accumulate);
  }
}
}  // namespace

void mxfp4_widen_row(const uint8_t* q, const uint8_t* e, int K, const float* fp4, const float* scale, float* out) {
  const __m512 table = _mm512_loadu_ps(fp4);
  for (int b = 0; b < K / 32; ++b) {
    __m512 w0, w1;
    mxfp4_block32(q + b * 16, table, _mm512_set1_ps(scale[e[b]]), w0, w1);
    _mm512_storeu_ps(out + b * 32, w0);
    _mm512_storeu_ps(out + b * 32 + 16, w1);
  }
}

void mxfp4_rows(const float* x, int T, int K, const uint8_t* q, const uint8_t* e, int rstep, int roff, const float* fp4,
                const float* scale, int n0, int n1, float* y, int ldy, int accumulate) {
  for (int t = 0; t < T; t += 4) {
    const int tt = imin(4, T - t);
    const float* xs = x + (long)t * K;
    float* ys = y + (long)t * ldy;
    switch (tt) {
      case 1: mxfp4_rows_t<1>(xs, K, q, e, rstep, roff, fp4, scale, n0, n1, ys, ldy, accumulate); break;
      case 2: mxfp4_rows_t<2>(xs, K, q, e, rstep, roff, fp4, scale, n0, n1, ys, ldy, accumulate); break;
      case 3: mxfp4_rows_t<3>(xs, K, q, e, rstep, roff, fp4, scale, n0, n1, ys, ldy, accumulate); break;
      default: mxfp4_rows_t<4>(xs, K, q, e, rstep, roff, fp4, scale, n0, n1, ys, ldy, accumulate); break;
    }
  }
}

void dot_rows(const float* x, int T, int K, const uint8_t* W, int dt, int n0, int n1, float* y, int ldy,
              int accumulate) {
  if (dt == 0) dot_rows_dt<0>(x, T, K, W, n0, n1, y, ldy, accumulate);
  else if (dt == 1) dot_rows_dt<1>(x, T, K, W, n0, n1, y, ldy, accumulate);
  else dot_rows_dt<2>(x, T, K, W, n0, n1, y, ldy, accumulate);
}

void dot_rows_cached(const float* x, int T, int K, const uint8_t* W, int dt, int n0, int n1, float* y, int ldy,
                     int accumulate, const uint8_t* fetch, long fetch_bytes) {
  const long line = dt == 0 ? 16 : 32;  // elements per 64-byte line: one step of dot_block's loop
  const NextLines far(fetch, fetch_bytes, (long)(n1 - n0 + 3) / 4 * ((K + line - 1) / line));
  if (dt == 0) dot_rows_dt<0>(x, T, K, W, n0, n1, y, ldy, accumulate, &far);
  else if (dt == 1) dot_rows_dt<1>(x, T, K, W, n0, n1, y, ldy, accumulate, &far);
  else dot_rows_dt<2>(x, T, K, W, n0, n1, y, ldy, accumulate, &far);
}

void gemm_panel(const float* x, int T, int K, const uint8_t* W, int dt, int n0, int n1, float* y, int ldy,
                int accumulate, float* panel) {
  if (dt == 0) gemm_panel_dt<0>(x, T, K, W, n0, n1, y, ldy, accumulate, panel);
  else if (dt == 1) gemm_panel_dt<1>(x, T, K, W, n0, n1, y, ldy, accumulate, panel);
  else gemm_panel_dt<2>(x, T, K, W, n0, n1, y, ldy, accumulate, panel);
}

namespace {
// acc + b0·w0 + b1·w1 + b2·w2 + b3·w3, one FMA after another (the order every streamed input gradient sums in).
inline __m512 fma_four(__m512 acc, const __m512 (&b)[4], __m512 w0, __m512 w1, __m512 w2, __m512 w3) {
  acc = _mm512_fmadd_ps(b[0], w0, acc);
  acc = _mm512_fmadd_ps(b[1], w1, acc);
  acc = _mm512_fmadd_ps(b[2], w2, acc);
  return _mm512_fmadd_ps(b[3], w3, acc);
}

// Four consecutive weight rows from r0 into the partial sums of C rows at once (C <= 4): each 16-wide slice of the
// four rows is widened once for all C rows, and every partial sum gets the same four FMAs in the same order as one row
// at a time would. The rows are prefetched kStreamAhead ahead, as the forward's dot_block does (the next block's once
// past their end, when next_block): a 2048-wide bf16 row is one 4 KiB page, and the hardware prefetchers stop there.
template <int DT, int C>
inline void stream_four_rows(const uint8_t* r0, int K, const __m512 (&b)[4][4], float* const (&out)[4], bool next_block,
                             NextLines& far) {
  const long rb = (long)K * elem_bytes(DT);
  const uint8_t* rows[4] = {r0, r0 + rb, r0 + 2 * rb, r0 + 3 * rb};
  int k = 0;
  for (; k + 16 <= K; k += 16) {
    const long at = (long)k * elem_bytes(DT);
    if ((at & 63) == 0) {
      const long ahead = at + kStreamAhead;  // row i's next line, or the next block's row i (3 rows on) past its end
      for (int i = 0; i < 4; ++i) {
        if (ahead < rb) _mm_prefetch((const char*)(rows[i] + ahead), _MM_HINT_T0);
        else if (next_block) _mm_prefetch((const char*)(rows[i] + 3 * rb + ahead), _MM_HINT_T0);
      }
      far.fetch();
    }
    const __m512 w0 = load16<DT>(rows[0], k), w1 = load16<DT>(rows[1], k), w2 = load16<DT>(rows[2], k),
                 w3 = load16<DT>(rows[3], k);
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(out[c] + k, fma_four(_mm512_loadu_ps(out[c] + k), b[c], w0, w1, w2, w3));
  }
  if (k < K) {
    const __mmask16 m = (__mmask16)((1u << (K - k)) - 1);
    const __m512 w0 = load16_masked<DT>(rows[0], k, m), w1 = load16_masked<DT>(rows[1], k, m),
                 w2 = load16_masked<DT>(rows[2], k, m), w3 = load16_masked<DT>(rows[3], k, m);
    for (int c = 0; c < C; ++c)
      _mm512_mask_storeu_ps(out[c] + k, m, fma_four(_mm512_maskz_loadu_ps(m, out[c] + k), b[c], w0, w1, w2, w3));
  }
}

// partial[t, :] += sum_{n in [n0, n1)} dy[t, n] W[n, :] for a few rows t: W streamed row by row (contiguous reads,
// the K-wide partial sums stay in cache). Four weight rows per pass, widened once for up to four rows t whose dy
// there is not all zero (rows of zeros are skipped, as before: their sums keep their bits).
template <int DT>
void backward_stream_dt(const float* dy, int T, int N, const uint8_t* W, int K, int n0, int n1, float* partial) {
  const long rb = (long)K * elem_bytes(DT);
  NextLines far = lead_lines(W, rb, n0, n1), none;
  int n = n0;
  for (; n + 4 <= n1; n += 4) {
    const uint8_t* r0 = W + (long)n * rb;
    const bool next_block = n + 8 <= n1;
    __m512 b[4][4];
    float* out[4];
    int c = 0;
    bool first = true;  // the first pass over these rows fetches ahead; more rows t re-read them from cache
    auto flush = [&] {
      NextLines& f = first ? far : none;
      switch (c) {
        case 1: stream_four_rows<DT, 1>(r0, K, b, out, next_block, f); break;
        case 2: stream_four_rows<DT, 2>(r0, K, b, out, next_block, f); break;
        case 3: stream_four_rows<DT, 3>(r0, K, b, out, next_block, f); break;
        case 4: stream_four_rows<DT, 4>(r0, K, b, out, next_block, f); break;
        default: break;
      }
      first = first && c == 0;
      c = 0;
    };
    for (int t = 0; t < T; ++t) {
      const float* g = dy + (long)t * N + n;
      if (g[0] == 0.f && g[1] == 0.f && g[2] == 0.f && g[3] == 0.f) continue;
      for (int i = 0; i < 4; ++i) b[c][i] = _mm512_set1_ps(g[i]);
      out[c++] = partial + (long)t * K;
      if (c == 4) flush();
    }
    flush();
  }
  for (; n < n1; ++n) {
    const uint8_t* r0 = W + (long)n * rb;
    for (int t = 0; t < T; ++t) {
      const float g = dy[(long)t * N + n];
      if (g == 0.f) continue;
      const __m512 b0 = _mm512_set1_ps(g);
      float* out = partial + (long)t * K;
      for (int k = 0; k < K; k += 16) {
        const __mmask16 m = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
        _mm512_mask_storeu_ps(out + k, m, _mm512_fmadd_ps(b0, load16_masked<DT>(r0, k, m), _mm512_maskz_loadu_ps(m, out + k)));
      }
    }
  }
}

// backward_stream for rows of W already in cache (the LM head's slab, just read for its logits): 64 columns of C
// rows' sums stay in registers across all the rows instead of a load and a store per four rows. Each sum is the same
// chain over n (fma_four per four rows, the remainder one by one: one multiply-add per row in turn), so the same bits;
// every dy here is non-zero (the caller checks), so no row is skipped and the loop has no branch per row.
template <int DT, int C, int KV, bool kMasked>
inline void cached_strip(const float* const (&g)[C], const uint8_t* W, long rb, int n0, int n1, int k, __mmask16 m,
                         float* const (&out)[C], NextLines& next) {
  __m512 acc[C][KV];
  for (int c = 0; c < C; ++c)
    for (int v = 0; v < KV; ++v)
      acc[c][v] = kMasked ? _mm512_maskz_loadu_ps(m, out[c] + k + 16 * v) : _mm512_loadu_ps(out[c] + k + 16 * v);
  // Locals, not the caller's objects: a store through `next` may alias them for the compiler, which then reloads
  // every pointer after each fetch.
  NextLines ahead = next;
  const float* gr[C];
  for (int c = 0; c < C; ++c) gr[c] = g[c];
  // One row at a time: each sum's chain is fma_four's (four rows in turn), with fewer registers live than four rows'
  // widened vectors and broadcasts at once (which ran at two thirds of this loop's rate).
  const uint8_t* r = W + (long)n0 * rb + (long)k * elem_bytes(DT);
  for (int n = n0; n < n1; ++n, r += rb) {
    ahead.fetch();
    __m512 b[C];
    for (int c = 0; c < C; ++c) b[c] = _mm512_set1_ps(gr[c][n]);
    for (int v = 0; v < KV; ++v) {
      const __m512 w = kMasked ? load16_masked<DT>(r, 16 * v, m) : load16<DT>(r, 16 * v);
      for (int c = 0; c < C; ++c) acc[c][v] = _mm512_fmadd_ps(b[c], w, acc[c][v]);
    }
  }
  next = ahead;
  for (int c = 0; c < C; ++c)
    for (int v = 0; v < KV; ++v) {
      if (kMasked) _mm512_mask_storeu_ps(out[c] + k + 16 * v, m, acc[c][v]);
      else _mm512_storeu_ps(out[c] + k + 16 * v, acc[c][v]);
    }
}

template <int DT, int C>
void cached_rows(const float* dy, int N, const uint8_t* W, int K, int n0, int n1, float* partial, int t0,
                 const uint8_t* fetch, long fetch_bytes) {
  const long rb = (long)K * elem_bytes(DT);
  const float* g[C];
  float* out[C];
  bool all = true;  // every dy non-zero; otherwise the streamed kernel, which skips zeros (the same bits)
  for (int c = 0; c < C; ++c) {
    g[c] = dy + (long)(t0 + c) * N;
    out[c] = partial + (long)(t0 + c) * K;
    for (int n = n0; n < n1; ++n) all = all && g[c][n] != 0.f;
  }
  if (!all) {
    backward_stream_dt<DT>(dy + (long)t0 * N, C, N, W, K, n0, n1, partial + (long)t0 * K);
    return;
  }
  // Spread over every row of every strip.
  NextLines next(fetch, fetch_bytes, (long)(n1 - n0) * (K / 64 + (K % 64 + 15) / 16));
  int k = 0;
  for (; k + 64 <= K; k += 64) cached_strip<DT, C, 4, false>(g, W, rb, n0, n1, k, 0xFFFF, out, next);
  for (; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
    cached_strip<DT, C, 1, true>(g, W, rb, n0, n1, k, m, out, next);
  }
}

template <int DT>
void backward_cached_dt(const float* dy, int T, int N, const uint8_t* W, int K, int n0, int n1, float* partial,
                        const uint8_t* fetch, long fetch_bytes) {
  int t = 0;
  for (; t + 3 <= T; t += 3) cached_rows<DT, 3>(dy, N, W, K, n0, n1, partial, t, t == 0 ? fetch : nullptr, fetch_bytes);
  if (T - t == 2) cached_rows<DT, 2>(dy, N, W, K, n0, n1, partial, t, t == 0 ? fetch : nullptr, fetch_bytes);
  else if (T - t == 1) cached_rows<DT, 1>(dy, N, W, K, n0, n1, partial, t, t == 0 ? fetch : nullptr, fetch_bytes);
}
}  // namespace

void backward_stream(const float* dy, int T, int N, const uint8_t* W, int dt, int K, int n0, int n1, float* partial) {
  if (dt == 0) backward_stream_dt<0>(dy, T, N, W, K, n0, n1, partial);
  else if (dt == 1) backward_stream_dt<1>(dy, T, N, W, K, n0, n1, partial);
  else backward_stream_dt<2>(dy, T, N, W, K, n0, n1, partial);
}

void backward_cached(const float* dy, int T, int N, const uint8_t* W, int dt, int K, int n0, int n1, float* partial,
                     const uint8_t* fetch, long fetch_bytes) {
  if (dt == 0) backward_cached_dt<0>(dy, T, N, W, K, n0, n1, partial, fetch, fetch_bytes);
  else if (dt == 1) backward_cached_dt<1>(dy, T, N, W, K, n0, n1, partial, fetch, fetch_bytes);
  else backward_cached_dt<2>(dy, T, N, W, K, n0, n1, partial, fetch, fetch_bytes);
}

void backward_rows(const float* dy, int T, int N, const uint8_t* W, int dt, int K, int k0, int k1, float* dx,
                   int accumulate) {
  if (dt == 0) backward_rows_dt<0>(dy, T, N, W, K, k0, k1, dx, accumulate);
  else if (dt == 1) backward_rows_dt<1>(dy, T, N, W, K, k0, k1, dx, accumulate);
  else backward_rows_dt<2>(dy, T, N, W, K, k0, k1, dx, accumulate);
}

namespace {
// Packs W[n..n+nb, k..k+kw] as fp32 panel[nn][kNR] (zero padded past kw): rows of W already run along k, so no
// transpose, only widening.
template <int DT>
void pack_rows(const uint8_t* W, int K, int n, int nb, int k, int kw, float* panel) {
  const long rb = (long)K * elem_bytes(DT);
  const __mmask16 m0 = kw >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << kw) - 1);
  const __mmask16 m1 = kw >= 32 ? (__mmask16)0xFFFF : (kw <= 16 ? (__mmask16)0 : (__mmask16)((1u << (kw - 16)) - 1));
  for (int i = 0; i < nb; ++i) {
    const uint8_t* row = W + (long)(n + i) * rb;
    _mm512_storeu_ps(panel + (long)i * kNR, load16_masked<DT>(row, k, m0));
    _mm512_storeu_ps(panel + (long)i * kNR + 16, m1 ? load16_masked<DT>(row, k + 16, m1) : _mm512_setzero_ps());
  }
}

template <int DT>
void backward_gemm_dt(const float* dy, int T, int N, const uint8_t* W, int K, int n0, int n1, int k0, int k1,
                      float* dx, int accumulate, float* panel) {
  for (int k = k0; k < k1; k += kNR) {
    const int kw = imin(kNR, k1 - k);
    for (int n = n0; n < n1; n += kKC) {
      const int nb = imin(kKC, n1 - n);
      pack_rows<DT>(W, K, n, nb, k, kw, panel);
      const int add = accumulate || n > n0;
      int t = 0;
      for (; t + kMR <= T; t += kMR) micro<kMR>(dy + (long)t * N + n, N, panel, nb, dx + (long)t * K + k, K, kw, add);
      const float* ds = dy + (long)t * N + n;
      float* xs = dx + (long)t * K + k;
      switch (T - t) {
        case 0: break;
        case 1: micro<1>(ds, N, panel, nb, xs, K, kw, add); break;
        case 2: micro<2>(ds, N, panel, nb, xs, K, kw, add); break;
        case 3: micro<3>(ds, N, panel, nb, xs, K, kw, add); break;
        case 4: micro<4>(ds, N, panel, nb, xs, K, kw, add); break;
        case 5: micro<5>(ds, N, panel, nb, xs, K, kw, add); break;
        case 6: micro<6>(ds, N, panel, nb, xs, K, kw, add); break;
        default: micro<7>(ds, N, panel, nb, xs, K, kw, add); break;
      }
    }
  }
}
}  // namespace

void backward_gemm(const float* dy, int T, int N, const uint8_t* W, int dt, int K, int n0, int n1, int k0, int k1,
                   float* dx, int accumulate, float* panel) {
  if (dt == 0) backward_gemm_dt<0>(dy, T, N, W, K, n0, n1, k0, k1, dx, accumulate, panel);
  else if (dt == 1) backward_gemm_dt<1>(dy, T, N, W, K, n0, n1, k0, k1, dx, accumulate, panel);
  else backward_gemm_dt<2>(dy, T, N, W, K, n0, n1, k0, k1, dx, accumulate, panel);
}

void convert(const uint8_t* src, int dt, float* dst, long n) {
  long i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = dt == 0 ? load16<0>(src, i) : (dt == 1 ? load16<1>(src, i) : load16<2>(src, i));
    _mm512_storeu_ps(dst + i, v);
  }
  if (i < n) {
    __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    __m512 v = dt == 0 ? load16_masked<0>(src, i, m) : (dt == 1 ? load16_masked<1>(src, i, m) : load16_masked<2>(src, i, m));
    _mm512_mask_storeu_ps(dst + i, m, v);
  }
}

void silu_mul(const float* g, const float* u, int m, int n, long ldg, float* out, long ldo) {
  for (int i = 0; i < m; ++i) {
    const float* gi = g + i * ldg;
    const float* ui = u + i * ldg;
    float* oi = out + i * ldo;
    for (int c = 0; c < n; c += 16) {
      const __mmask16 mk = n - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - c)) - 1);
      _mm512_mask_storeu_ps(oi + c, mk, avx512math::silu_mul_ps(_mm512_maskz_loadu_ps(mk, gi + c), _mm512_maskz_loadu_ps(mk, ui + c)));
    }
  }
}

void weighted_sum(const float* const* rows, const float* w, int count, int n, float* y, int accumulate) {
  for (int c = 0; c < n; c += 16) {
    const __mmask16 mk = n - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - c)) - 1);
    __m512 acc = accumulate ? _mm512_maskz_loadu_ps(mk, y + c) : _mm512_setzero_ps();
    for (int i = 0; i < count; ++i) acc = _mm512_fmadd_ps(_mm512_set1_ps(w[i]), _mm512_maskz_loadu_ps(mk, rows[i] + c), acc);
    _mm512_mask_storeu_ps(y + c, mk, acc);
  }
}

}  // namespace avx512
}  // namespace routescope
