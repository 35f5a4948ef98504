// AVX512_BF16 kernels (vdpbf16ps) for BF16 weights with fp32 activations, shared with a translation unit compiled
// with -mavx512bf16: raw pointers only.
//
// Activations are split exactly enough into two bf16 parts, x = hi + lo with hi = bf16(x), lo = bf16(x - hi)
// (|x - hi - lo| <= 2^-16 |x|), and y = W·hi + W·lo is accumulated in fp32: two exact bf16 products per weight,
// so the result keeps fp32-level accuracy (tested against float64) while the weights are read as stored. A null lo
// (out_lo, x_lo, act_lo) means one part only: activations rounded to bf16 (8 significant bits, llama.cpp's BF16
// precision), half the products.
// Pairs: operands are (k, k+1) pairs packed in one uint32 (low half = even k), the unit vdpbf16ps consumes.
#pragma once
#include <cstdint>

namespace routescope {
namespace bf16dp {

// Panel width (weight rows per packed panel) and depth (pairs per K block).
constexpr int kNR = 32;
constexpr int kKCP = 128;

// out_hi/out_lo[i][p] = pairs of row i of x (rows[i] of x when rows is non-null, else row i), P = (K + 1) / 2
// pairs per row (an odd K is padded with a zero). ldx: floats between rows of x.
void split_rows(const float* x, long ldx, const int32_t* rows, int m, int K, uint32_t* out_hi, uint32_t* out_lo);

// y[m][0..nr) (+)= x[m] · W[n0 .. n0+nr)^T over all K for BF16 W [N][K] (row-major, any alignment), with x given as
// hi/lo pairs [m][P]. ldy: floats between rows of y. panel: scratch of kKCP * kNR uint32.
void gemm_rows(const uint32_t* x_hi, const uint32_t* x_lo, int m, int K, const uint8_t* W, int n0, int nr, float* y,
               long ldy, int accumulate, uint32_t* panel);

// act = silu(g) * u for an [m][nr] tile (ld = ldt floats), written as hi/lo pairs into act_hi/act_lo at pair column
// n0 / 2 (n0 and nr even) of rows with ldp pairs.
void silu_mul_split(const float* g, const float* u, int m, int nr, long ldt, uint32_t* act_hi, uint32_t* act_lo,
                    long ldp, int n0);

}  // namespace bf16dp
}  // namespace routescope
