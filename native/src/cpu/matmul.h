// The engine's matrix kernels. Weights stay in their stored dtype (F32/F16/BF16) and are widened on the fly;
// activations and accumulation are fp32.
#pragma once
#include "model/model.h"
#include <vector>

#include "util/threadpool.h"

namespace routescope {

// Products of up to this many rows stream the weights (dot_rows, memory-bound decode); more rows pack them into
// panels (compute-bound prefill), where bf16 activations pay off.
constexpr int kStreamRows = 4;

// y[T,N] = x[T,K] · W[N,K]^T  (y += ... when accumulate). x rows are contiguous (ld = K), y rows ld = N.
void matmul(ThreadPool& pool, const float* x, int T, const Mat& W, float* y, bool accumulate = false);
// dx[T,K] = dy[T,N] · W[N,K]  (dx += ... when accumulate): the input gradient of matmul.
void matmul_backward_input(ThreadPool& pool, const float* dy, int T, const Mat& W, float* dx, bool accumulate);
// matmul and matmul_backward_input on the calling thread only, for callers that already run one task per thread
// (an expert, an attention head each).
void matmul_serial(const float* x, int T, const Mat& W, float* y, bool accumulate = false);
void matmul_backward_input_serial(const float* dy, int T, const Mat& W, float* dx, bool accumulate);
// matmul with every activation rounded to bf16 first (llama.cpp's BF16 precision; LoadOptions::activations "bf16"):
// BF16 W on AVX512_BF16 CPUs multiplies with vdpbf16ps (bf16 products, fp32 sums) at twice the fp32 rate; anything
// else runs the rounded rows through matmul (the same products: bf16 x bf16 is exact in fp32), the reference path.
void matmul_bf16_rounded(ThreadPool& pool, const float* x, int T, const Mat& W, float* y, bool accumulate = false);
// Several independent products in one dispatch (e.g. every selected expert's gate and up projections), split
// into row blocks that threads take dynamically so small and large jobs balance.
struct MatmulJob {
  const float* x;
  int T;
  Mat W;
  float* y;
  bool accumulate = false;
};
void matmul_batch(ThreadPool& pool, const std::vector<MatmulJob>& jobs);
// matmul_bf16_rounded for several products in one dispatch; jobs reading the same x convert it to bf16 once.
void matmul_bf16_rounded_batch(ThreadPool& pool, const std::vector<MatmulJob>& jobs);
// Cross-entropy of target[t] under softmax(x[t] · Wᵀ) for a few rows x (an LM head over the vocabulary) into
// loss[t], and with dx, dx[t] += weight[t] · dloss[t]/dx[t], reading W once (matmul then matmul_backward_input read it
// twice): each slab of W's rows gives its logits and, while in cache, its share of Σ_v exp(z_v − m) W_v with a running
// max m per row. Fixed parts of the vocabulary, merged in order, make the result independent of the thread count.
void lm_head_cross_entropy(ThreadPool& pool, const float* x, int T, const Mat& W, const int* target, const float* weight,
                           double* loss, float* dx);
// Tiled weights (Mat::tiled(): block-scaled FP8, MXFP4, transposed storage; matmul_tiled.cpp): tiles of rows widened
// to f32, then the f32 kernels above. matmul / matmul_backward_input / matmul_batch dispatch here by themselves.
void matmul_tiled(ThreadPool& pool, const float* x, int T, const Mat& W, float* y, bool accumulate);
void matmul_tiled_backward_input(ThreadPool& pool, const float* dy, int T, const Mat& W, float* dx, bool accumulate);
void fp8_to_f32(const uint8_t* src, float* dst, size_t n);  // unscaled E4M3 values
// The same on the calling thread only (for callers already inside a pool job).
void matmul_tiled_serial(const float* x, int T, const Mat& W, float* y, bool accumulate);
void matmul_tiled_backward_input_serial(const float* dy, int T, const Mat& W, float* dx, bool accumulate);
// The routed experts of one MoE block with tiled weights (moe_experts.cpp's layout): expert e's rows are
// order[count[e]..count[e+1]) (original rows t*k+s) of tokens tokens[...]; outputs go to o in that expert-sorted
// order, gate/up pre-activations to save_g/save_u at the original rows (when non-null).
void moe_experts_tiled(ThreadPool& pool, const float* x, int H, const int32_t* tokens, const int32_t* order,
                     const int* count, int E, const std::vector<Mat>& gate, const std::vector<Mat>& up,
                     const std::vector<Mat>& down, float* o, float* save_g, float* save_u);
// Name of the kernel family in use ("avx512" or "generic").
const char* matmul_isa();
// CPU features the kernels dispatch on (false when ROUTESCOPE_GENERIC_KERNELS is set).
bool cpu_has_avx512();
bool cpu_has_avx512_bf16();

}  // namespace routescope
