// The heavy parts of the decoder's backward pass (activation gradients only), as matrix products that run one task
// per thread: the attention core given the saved probabilities, and the routed experts given their saved
// pre-activations. Decoder::attn_backward and Decoder::mlp_backward call them.
#pragma once
#include <cstdint>
#include <vector>

#include "cpu/forward.h"
#include "model/model.h"
#include "util/threadpool.h"

namespace routescope {

// Causal attention of T query rows at positions pos0.. against `cache` (keys/values of positions < pos0 are
// constants), given the saved probabilities probs [nh, T, pos0 + T] (zero outside each row's window), the queries
// q [T, nh*hd] (after QK-norm and RoPE) and dattn = dLoss/d(attention output) [T, nh*vd]: writes dq [T, nh*hd],
// dk [T, nkv*hd] and dv [T, nkv*vd] for the rows of this call (overwritten). Query heads sharing a KV head run
// stacked; KV heads run in parallel. A bf16 cache is read as stored, the keys and values the forward used: the
// gradient of that forward, its rounding of this call's keys and values passed straight through.
void attention_backward(ThreadPool& pool, int T, int pos0, int nh, int nkv, int hd, int vd, float scale,
                        const float* probs, const float* q, const float* dattn, const KVCache& cache, float* dq,
                        float* dk, float* dv);

// The routed experts' input gradient: dx[t] += sum over slots s of w[t,s] * (d expert_e(x_t) / d x_t)^T dy[t] with
// e = sel[t,s], for experts y = down(act(gate x, up x)) (act per `mlp`: SwiGLU or gpt-oss's clamped one) whose
// pre-activations were saved as g, u [T*k, I] (row t*k+s). Experts run in parallel, each on one thread; dx is [T, H].
void moe_experts_backward(ThreadPool& pool, const ExpertMlp& mlp, const float* dy, int T, int k, const int32_t* sel, const float* w,
                          const float* g, const float* u, const std::vector<Mat>& gate, const std::vector<Mat>& up,
                          const std::vector<Mat>& down, float* dx);

}  // namespace routescope
