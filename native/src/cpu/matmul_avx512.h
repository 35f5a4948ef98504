// AVX-512 kernels; this header is shared with a translation unit compiled with -mavx512*: raw pointers only.
#pragma once
#include <cstdint>

namespace routescope {
namespace avx512 {
// dtype codes: 0 = F32, 1 = F16, 2 = BF16
void dot_rows(const float* x, int T, int K, const uint8_t* W, int dt, int n0, int n1, float* y, int ldy, int accumulate);
void gemm_panel(const float* x, int T, int K, const uint8_t* W, int dt, int n0, int n1, float* y, int ldy,
                int accumulate, float* panel /* KC*32 floats */);
void backward_rows(const float* dy, int T, int N, const uint8_t* W, int dt, int K, int k0, int k1, float* dx,
                   int accumulate);
// partial[t, :] += sum_{n in [n0, n1)} dy[t, n] W[n, :], W read row by row (for few rows T: decode-time backward).
void backward_stream(const float* dy, int T, int N, const uint8_t* W, int dt, int K, int n0, int n1, float* partial);
// The same sums, the same bits, for rows of W already in cache: columns in registers across the rows. With
// fetch_bytes from fetch (the caller's next slab, or part of it) are fetched meanwhile, a few lines per row.
void backward_cached(const float* dy, int T, int N, const uint8_t* W, int dt, int K, int n0, int n1, float* partial,
                     const uint8_t* fetch, long fetch_bytes);
// dot_rows over rows of W already in cache: the first four rows of x fetch fetch_bytes from fetch meanwhile in address
// order, spread over their pass (the caller's next slab, or part of it); the same bits as dot_rows.
void dot_rows_cached(const float* x, int T, int K, const uint8_t* W, int dt, int n0, int n1, float* y, int ldy,
                     int accumulate, const uint8_t* fetch, long fetch_bytes);
// dx[t, k0:k1] (+)= sum_{n in [n0, n1)} dy[t, n] W[n, k0:k1] as a packed GEMM: W read once per call, in panels
// of KC rows x 32 columns widened to fp32 (many rows T: the gradient passes). dx rows have stride K; the first
// KC block of each column panel overwrites unless accumulate.
void backward_gemm(const float* dy, int T, int N, const uint8_t* W, int dt, int K, int n0, int n1, int k0, int k1,
                   float* dx, int accumulate, float* panel /* KC*32 floats */);
// y[t, n] (+)= sum_k W[n, k] x[t, k] over MXFP4 rows n in [n0, n1), up to 4 rows of x (decode): row n is storage
// row n·rstep + roff, its K/2 bytes of E2M1 pairs (low nibble first) at q + row·K/2 and its K/32 E8M0 exponents at
// e + row·K/32; fp4: the 16 E2M1 values, scale: the 256 values 2^(e - 127). Read where stored (no widened copy), with
// the same products in the same order as widening the rows to f32 and dot_rows, so the same bits.
void mxfp4_rows(const float* x, int T, int K, const uint8_t* q, const uint8_t* e, int rstep, int roff, const float* fp4,
                const float* scale, int n0, int n1, float* y, int ldy, int accumulate);
// One MXFP4 row (K/2 bytes of E2M1 pairs at q, K/32 exponents at e) as K f32 values: fp4[code] · scale[exponent], the
// products widen_rows forms one by one.
void mxfp4_widen_row(const uint8_t* q, const uint8_t* e, int K, const float* fp4, const float* scale, float* out);
void convert(const uint8_t* src, int dt, float* dst, long n);
// out[i][c] = silu(g[i][c]) * u[i][c] for an [m][n] tile (row strides ldg, ldo).
void silu_mul(const float* g, const float* u, int m, int n, long ldg, float* out, long ldo);
// y (+)= sum_i w[i] * rows[i], rows of n floats (the MoE combine of one token, slots in order).
void weighted_sum(const float* const* rows, const float* w, int count, int n, float* y, int accumulate);
}  // namespace avx512
}  // namespace routescope
