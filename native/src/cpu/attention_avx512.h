// AVX-512 kernel of the fused attention (attention.h); shared with a translation unit compiled with -mavx512*:
// raw pointers only.
#pragma once
#include <stdint.h>

namespace routescope {
namespace avx512 {

// Scratch floats attention_rows needs for `rows` query rows of width v_dim.
long attention_scratch_floats(int rows, int k_dim, int v_dim);

// One query head, query rows i = 0..rows-1 at absolute positions p0 + i (stride ldq), keys/values of its kv head
// (K: [*, k_dim], V: [*, v_dim], row-major): out row i (stride ldo) = softmax over the keys j in
// [first_visible_key(p, window, chunk), p] (attention_keys.h) of scale · q_i·k_j, times V. A non-null sink is one more logit
// in every row's softmax that takes no value.
void attention_rows(const float* q, long ldq, int rows, int p0, const float* K, const float* V, int k_dim, int v_dim,
                    float scale, int window, int chunk, const float* sink, float* out, long ldo, float* scratch);
// The same over keys and values stored as bf16 (a KV cache in bf16): each row widened to fp32 as it is loaded, so
// the arithmetic is the fp32 kernel's on the rounded values, and a decode step reads half the bytes.
void attention_rows(const float* q, long ldq, int rows, int p0, const uint16_t* K, const uint16_t* V, int k_dim,
                    int v_dim, float scale, int window, int chunk, const float* sink, float* out, long ldo,
                    float* scratch);

// The attention probabilities of one score row in place (the path that keeps them for a backward pass): row[j] for j
// in [j0, p] becomes softmax over those keys of scale · row[j] (a non-null sink joins the denominator), every other
// entry of [0, keys) becomes 0.
void softmax_row(float* row, int keys, int j0, int p, float scale, const float* sink);

}  // namespace avx512
}  // namespace routescope
