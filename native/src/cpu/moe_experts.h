// The routed experts of one MoE block, grouped by expert: every selected expert's rows are gathered and run as one
// GEMM per projection, each expert's weights read once per call.
#pragma once
#include <cstdint>
#include <vector>

#include "model/model.h"
#include "util/threadpool.h"

namespace routescope {

// Kernel families of the expert GEMMs: generic (portable C++, the reference path), avx512 (fp32 FMA, weights widened
// while packing; what Auto picks on AVX-512 CPUs) and avx512_bf16 (vdpbf16ps on BF16 weights, each fp32 activation
// split into two bf16 parts: ~17 significant bits instead of 24, and on CPUs where vdpbf16ps issues at the FMA rate,
// as on Zen 4/5, no faster than fp32 FMA, so it is opt-in) and avx512_bf16_rounded (vdpbf16ps with each activation
// rounded to one bf16, 8 significant bits: llama.cpp's BF16 precision at twice the fp32 rate; opt-in, never Auto,
// for the speed comparison at equal precision). ROUTESCOPE_EXPERT_KERNELS=generic|avx512|avx512_bf16|
// avx512_bf16_rounded pins Auto (for A/B measurements); ROUTESCOPE_GENERIC_KERNELS=1 forces generic everywhere.
enum class ExpertKernels { Auto, Generic, Avx512, Avx512Bf16, Avx512Bf16Rounded };

// y[t] = sum over slots s of w[t,s] * down_e(silu(gate_e x_t) * up_e x_t) with e = sel[t,s], for T tokens with k
// slots each (x, y: [T, H]; y is overwritten). gate/up: [I, H] per expert, down: [H, I]. When non-null, save_g and
// save_u receive the gate and up pre-activations [T*k, I] and save_o the expert outputs [T*k, H] (row t*k+s), for
// the backward pass. Results do not depend on which thread ran which expert nor on the order of the slots (each
// token sums its experts in ascending expert order).
void moe_experts_forward(ThreadPool& pool, const float* x, int T, int k, const int32_t* sel, const float* w,
                         const std::vector<Mat>& gate, const std::vector<Mat>& up, const std::vector<Mat>& down,
                         float* y, float* save_g = nullptr, float* save_u = nullptr, float* save_o = nullptr,
                         ExpertKernels kernels = ExpertKernels::Auto);

// The family Auto resolves to for these weights on this CPU ("avx512_bf16_rounded", "avx512_bf16", "avx512" or
// "generic").
const char* expert_kernels_name(ExpertKernels kernels, DType weights);
// Whether this CPU (and build) can run the family.
bool expert_kernels_available(ExpertKernels kernels);

}  // namespace routescope
