// CPU forward and backward of the decoder, shared by sessions (KV cache) and gradient requests.
#pragma once
#include <atomic>
#include <map>
#include <string>
#include <vector>

#include "cpu/matmul.h"
#include "model/model.h"
#include "routescope/engine.h"
#include "util/threadpool.h"

namespace routescope {

// Per-layer key/value cache, head-major so each KV head's keys form one [positions, head_dim] matrix, stored in the
// dtype of the decoder that writes it (Decoder::kv_dtype, LoadOptions::kv_cache): fp32, or bf16 rounded to nearest
// even, which every attention path (fused, two-product, backward) reads as stored.
struct KVCache {
  DType dtype = DType::F32;
  std::vector<std::vector<float>> k, v;          // F32: [kv_head][capacity * head_dim] (v: v_head_dim)
  std::vector<std::vector<uint16_t>> k16, v16;   // BF16: the same layout, bf16 bits
  int capacity = 0, k_dim = 0, v_dim = 0;
  // Room for `positions` per head; a cache asked for another dtype starts over empty in it.
  void ensure(int positions, int kv_heads, int key_dim, int value_dim, DType dt);
  // Writes kv head g's key [k_dim] and value [v_dim] at position pos (rounded in a bf16 cache).
  void store(int g, int pos, const float* key, const float* value);
  // Kv head g's keys / values at positions [0, positions) as a matrix in the stored dtype (matmul widens bf16).
  Mat keys(int g, int positions) const;
  Mat values(int g, int positions) const;
  size_t bytes() const;  // memory held (capacity, every head)
};

// The cache dtype LoadOptions::kv_cache names ("fp32" or "bf16"); anything else is Error("BAD_ARGUMENT").
DType kv_cache_dtype(const std::string& choice);

// Activations of one layer kept for the backward pass (only filled when requested).
struct LayerSave {
  int T = 0;
  int pos0 = 0;                                // absolute position of the first row
  const KVCache* cache = nullptr;              // keys/values of every position (prefix ones are constants)
  std::vector<float> h_in, r_attn, x_attn;     // input, rmsnorm factor, normed input
  std::vector<float> q_pre, k_pre, r_q, r_k;   // projections before QK-norm (after bias/clip), norm factors
  std::vector<float> q, k, v;                  // after QK-norm and RoPE
  // MLA: q_a output and kv_a's latent part before their RMSNorms, and the norm factors
  std::vector<float> q_lat, r_q_lat, kv_lat, r_kv_lat;
  std::vector<float> probs;                    // attention probabilities [heads, T, pos0 + T]
  std::vector<float> attn;                     // attention output before o_proj [T, heads*head_dim]
  // attn_forward_rows: row t continues its own cache, at position row_pos[t] of row_cache[t]; its probabilities
  // [heads, row_pos[t] + 1] start at probs[row_probs[t]]. Empty for consecutive positions of one cache.
  std::vector<int> row_pos;
  std::vector<const KVCache*> row_cache;
  std::vector<size_t> row_probs;
  std::vector<float> h_mid, r_mlp, x_mlp;      // after attention residual; rmsnorm factor; normed
  // MoE
  std::vector<float> p;                        // routing scores used (after patch / mix) [T, E]; sparsemixer [T, k, E]
  std::vector<int32_t> sel;                    // [T, k]
  std::vector<float> w;                        // [T, k]
  std::vector<uint8_t> mixed;                  // [T] 1 where a mix row replaced the softmax
  std::vector<float> g, u, o;                  // per (t, slot): gate and up pre-activations [T*k, I], expert out [T*k, H]
  // dense MLP or shared expert
  std::vector<float> dg, du, sg, su, so, sgate;
  // Memory held (capacity), to decide whether to keep a save for the next pass.
  size_t bytes() const {
    size_t f = 0;
    for (const auto* v : {&h_in, &r_attn, &x_attn, &q_pre, &k_pre, &r_q, &r_k, &q, &k, &v, &probs, &attn, &h_mid, &r_mlp,
                          &x_mlp, &p, &w, &g, &u, &o, &dg, &du, &sg, &su, &so, &sgate})
      f += v->capacity();
    return f * sizeof(float) + sel.capacity() * sizeof(int32_t) + mixed.capacity();
  }
};

class Decoder {
 public:
  Decoder(const Checkpoint& ck, ThreadPool& pool) : ck_(ck), cfg_(ck.config), pool_(pool) { init_rope(); }

  // Runs layer l over h [T, H] in place for absolute positions pos0..pos0+T-1, appending K/V to cache.
  void layer_forward(int l, float* h, int T, int pos0, KVCache& cache, const Patch& patch,
                     const RoutingCallback& on_layer, LayerSave* save);
  // Given dh = dLoss/d(layer output) [T, H], replaces it with dLoss/d(layer input) (unless stop_at_router).
  // Adds the router-logit gradient summed over positions to bias_grad (size E) when non-null; fills mix_grad
  // (dLoss/dtheta at mix_pos) when mix_pos >= 0.
  // Positions listed in mix_grads (absolute position -> output of size E) get dLoss/dtheta for their mix row.
  void layer_backward(int l, const LayerSave& s, float* dh, bool stop_at_router, float* bias_grad,
                      const std::map<int, float*>& mix_grads);

  // The two halves of a layer, for callers that batch the MLP / MoE block over rows whose attention ran against
  // different caches (C3PO steps over several neighbours). layer_forward = attn_forward + mlp_forward;
  // layer_backward = mlp_backward (false when it stopped at the router) + attn_backward. Each half fills (and reads)
  // its own fields of a LayerSave, with its own T and pos0.
  void attn_forward(int l, float* h, int T, int pos0, KVCache& cache, LayerSave* save);
  // attn_forward for T rows that each continue their own cache (the last positions of C3PO's neighbours): row t is
  // position pos[t] of *caches[t], so the projections read their weights once for all rows. attn_backward takes
  // its save. Standard attention only (stacks_attention()).
  bool stacks_attention() const { return cfg_.attention != AttentionKind::Latent; }
  void attn_forward_rows(int l, float* h, const std::vector<KVCache*>& caches, const std::vector<int>& pos,
                         LayerSave* save);
  void mlp_forward(int l, float* h, int T, int pos0, const Patch& patch, const RoutingCallback& on_layer, LayerSave* save);
  bool mlp_backward(int l, const LayerSave& s, float* dh, bool stop_at_router, float* bias_grad,
                    const std::map<int, float*>& mix_grads);
  void attn_backward(int l, const LayerSave& s, float* dh);

  // What MoE layer l computes for one row h_mid (the residual after its attention) whatever the routing: the raw
  // router logits z [E], every routed expert's output [E, H] and the shared expert's gated contribution [H] (zero
  // when the layer has none). The layer's output is then h_mid + shared + sum over the selected e of w_e experts[e]
  // (GraniteMoE's residual multiplier folded into both).
  void moe_parts(int l, const float* h_mid, float* z, float* experts, float* shared);

  void embed(const std::vector<int>& tokens, float* h) const;
  // logits [rows, V] for the given rows of h (after the final norm).
  void logits(const float* h, int rows, float* out);

  const ModelConfig& config() const { return cfg_; }
  ThreadPool& pool() { return pool_; }
  // Temporaries of the backward pass and of the attention that keeps its probabilities, owned by the session's
  // decoder and kept between calls, so that each pass reuses their pages instead of allocating, faulting in and
  // zeroing them per layer. n floats; the contents are whatever the last user left: callers overwrite them.
  enum class Scratch {
    DAttn, DQuery, DKey, DValue, DAttnInput, DMlpInput, DRouter,  // layer backward
    Queries, Scores, Values,                                      // attention keeping its probabilities
    Hidden, DHidden, Logits, DNorm,                               // the session's gradient pass and its loss
    Count
  };
  std::vector<float>& scratch(Scratch which, size_t n);
  size_t scratch_bytes() const;
  void release_scratch();
  std::atomic<bool>* cancel_flag = nullptr;
  // LoadOptions::activations "bf16": inference rows of a prefill (more than 4, no save for a backward pass) round
  // their activations to bf16 before the products with the routed experts, the attention projections and the dense
  // or shared MLPs; the router, decode steps and every gradient pass stay fp32.
  bool bf16_activations = false;
  // LoadOptions::kv_cache: the dtype of every KV cache this decoder writes (the session's, the gradient pass's,
  // C3PO's neighbour prefixes, rerouting's rounds), F32 or BF16.
  DType kv_dtype = DType::F32;

 private:
  void init_rope();
  // Angles at `pos` in a forward call whose last position is call_end - 1 (LongRoPE picks its set per call).
  void rope_angles(int pos, int call_end, std::vector<float>& cos_t, std::vector<float>& sin_t) const;
  // RoPE (sign -1: its inverse) on rows [T, heads × stride], rotating `rope.dims` entries from `offset` per head.
  // row_pos (when non-null): row t is at position row_pos[t], as a call of that one position.
  void rope_rows(float* rows, int T, int pos0, int heads, int stride, int offset, float sign,
                 const int* row_pos = nullptr) const;
  // Attention inputs from the normed hidden state x [T, H]: q [T, nh·hd], k [T, nkv·hd], v [T, nkv·vd], RoPE
  // applied; and their backward into dx (accumulated). Standard (GQA) and latent (MLA, attention_mla.cpp).
  void standard_qkv(int l, const float* x, int T, int pos0, std::vector<float>& q, std::vector<float>& k,
                    std::vector<float>& v, LayerSave* save, const int* row_pos = nullptr);
  void standard_qkv_backward(int l, const LayerSave& s, std::vector<float>& dq, std::vector<float>& dk,
                             std::vector<float>& dv, float* dx);
  void latent_qkv(int l, const float* x, int T, int pos0, std::vector<float>& q, std::vector<float>& k,
                  std::vector<float>& v, LayerSave* save);
  void latent_qkv_backward(int l, const LayerSave& s, std::vector<float>& dq, std::vector<float>& dk,
                           std::vector<float>& dv, float* dx);
  void attention(int l, int T, int pos0, const float* q, const KVCache& cache, float* out, float* probs);
  // The QK-norm layer l applies (None where its weights are absent; Llama 4's L2 norm as PerHead with unit weights).
  QKNorm layer_qk_norm(int l) const;
  // Llama 4's attention temperature tuning: query rows [T, width] at positions pos0.. (or row_pos[t]) times its
  // factor (also the backward, being linear).
  void scale_query_rows(float* q, int T, int pos0, int width, const int* row_pos = nullptr) const;
  std::vector<float>& attn_input(int l, const float* h, int T, LayerSave* save);
  // h += o_proj(attn) (with phimoe's bias and GraniteMoE's residual multiplier); `saving` keeps it fp32 (rounds()).
  void attn_output(int l, const float* attn, int T, float* h, bool saving);
  void moe_forward(int l, const float* x, int T, int pos0, const Patch& patch, float* y,
                   const RoutingCallback& on_layer, LayerSave* save);
  void swiglu(const float* x, int T, const Mat& gate, const Mat& up, const Mat& down, float* y, float scale_rows_unused,
              std::vector<float>* g_save, std::vector<float>* u_save);
  // Whether a product of T rows runs at bf16 activations (see bf16_activations); saving: a backward pass follows.
  bool rounds(int T, bool saving) const { return bf16_activations && !saving && T > kStreamRows; }
  // y (+)= x · W^T at the precision rounds() picks.
  void project(const float* x, int T, const Mat& W, float* y, bool accumulate, bool saving);
  // Several products of the same T rows (q/k/v, gate/up) in one dispatch at that precision.
  void project(const std::vector<MatmulJob>& jobs, bool saving);

  const Checkpoint& ck_;
  const ModelConfig& cfg_;
  ThreadPool& pool_;
  std::vector<double> inv_freq_;
  std::vector<double> inv_freq_long_;  // LongRoPE's long set (inv_freq_ then holds the short one)
  std::vector<float> scratch_[static_cast<int>(Scratch::Count)];
  // cos and sin of every position below rope_positions_ ([position, dims/2] each), grown on demand: the angles do not
  // depend on the call except under LongRoPE, which computes them per call.
  mutable std::vector<float> rope_cos_, rope_sin_;
  mutable int rope_positions_ = 0;
  void grow_rope_table(int positions) const;
};

}  // namespace routescope
