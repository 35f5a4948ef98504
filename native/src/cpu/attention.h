// Causal softmax attention of a block of query positions against a KV cache, fused: scores, online softmax and the
// weighted sum of values per block of keys, in cache, without materialising the [queries x keys] score matrix.
// Used for inference; the backward pass needs the probabilities and keeps the two-product path in forward.cpp.
#pragma once
#include <cstdint>
#include <vector>

#include "cpu/attention_keys.h"

#include "util/threadpool.h"

namespace routescope {

struct AttentionShape {
  int heads = 0, kv_heads = 0;  // query heads share kv head h / (heads / kv_heads)
  int k_dim = 0, v_dim = 0;     // per-head widths of queries/keys and of values
  float scale = 1.f;            // multiplies q·k before the softmax
  int window = 0;               // > 0: position p sees keys (p - window, p]
  const float* sinks = nullptr; // [heads] or null: a logit per head that joins every softmax's denominator (gpt-oss)
  int chunk = 0;                // > 0: position p sees keys of its own chunk, [p - p % chunk, p] (Llama 4)
};

// out[i, h*v_dim ..] = sum_j softmax_j(scale · q[i, h] · k_j) v_j over the keys position pos0 + i may see, for
// T query rows (q: [T, heads*k_dim], out: [T, heads*v_dim]); keys/values per kv head: k[g] [positions, k_dim],
// v[g] [positions, v_dim] (fp32, head-major like KVCache), holding at least pos0 + T positions.
// Returns false (and does nothing) when this CPU has no fused kernel; the caller then runs its own path.
bool attention_fused(ThreadPool& pool, const AttentionShape& shape, const float* q, int T, int pos0,
                     const std::vector<std::vector<float>>& k, const std::vector<std::vector<float>>& v, float* out);
// The same over keys and values stored as bf16 (KVCache in bf16), widened to fp32 as the kernel loads them.
bool attention_fused(ThreadPool& pool, const AttentionShape& shape, const float* q, int T, int pos0,
                     const std::vector<std::vector<uint16_t>>& k, const std::vector<std::vector<uint16_t>>& v, float* out);

}  // namespace routescope
