#include "cpu/forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "cpu/attention.h"
#include "cpu/attention_avx512.h"
#include "cpu/backward.h"
#include "cpu/convert.h"
#include "cpu/matmul.h"
#include "cpu/moe_experts.h"
#include "cpu/ops.h"
#include "cpu/experts_general.h"
#include "cpu/router.h"
#include "cpu/scratch.h"

namespace routescope {

void KVCache::ensure(int positions, int kv_heads, int key_dim, int value_dim, DType dt) {
  if (dt != dtype) {
    *this = KVCache();
    dtype = dt;
  }
  k_dim = key_dim, v_dim = value_dim;
  const bool bf16 = dtype == DType::BF16;
  if (positions <= capacity && static_cast<int>(bf16 ? k16.size() : k.size()) == kv_heads) return;
  // Headroom past a prompt: the decode steps after a prefill do not pay a copy and fresh page faults at once.
  int cap = std::max({positions + std::max(64, positions / 4), capacity * 2});
  auto grow = [&](auto& keys, auto& values) {
    keys.resize(kv_heads);
    values.resize(kv_heads);
    for (int g = 0; g < kv_heads; ++g) {
      keys[g].resize(static_cast<size_t>(cap) * k_dim);
      values[g].resize(static_cast<size_t>(cap) * v_dim);
    }
  };
  if (bf16) grow(k16, v16);
  else grow(k, v);
  capacity = cap;
}

void KVCache::store(int g, int pos, const float* key, const float* value) {
  if (dtype == DType::BF16) {
    uint16_t* kd = &k16[g][static_cast<size_t>(pos) * k_dim];
    uint16_t* vd = &v16[g][static_cast<size_t>(pos) * v_dim];
    for (int i = 0; i < k_dim; ++i) kd[i] = f32_to_bf16(key[i]);
    for (int i = 0; i < v_dim; ++i) vd[i] = f32_to_bf16(value[i]);
    return;
  }
  std::memcpy(&k[g][static_cast<size_t>(pos) * k_dim], key, k_dim * sizeof(float));
  std::memcpy(&v[g][static_cast<size_t>(pos) * v_dim], value, v_dim * sizeof(float));
}

Mat KVCache::keys(int g, int positions) const {
  const uint8_t* data = dtype == DType::BF16 ? reinterpret_cast<const uint8_t*>(k16[g].data())
                                             : reinterpret_cast<const uint8_t*>(k[g].data());
  return Mat{data, dtype, positions, k_dim};
}

Mat KVCache::values(int g, int positions) const {
  const uint8_t* data = dtype == DType::BF16 ? reinterpret_cast<const uint8_t*>(v16[g].data())
                                             : reinterpret_cast<const uint8_t*>(v[g].data());
  return Mat{data, dtype, positions, v_dim};
}

size_t KVCache::bytes() const {
  size_t n = 0;
  for (const auto* heads : {&k, &v})
    for (const auto& h : *heads) n += h.capacity() * sizeof(float);
  for (const auto* heads : {&k16, &v16})
    for (const auto& h : *heads) n += h.capacity() * sizeof(uint16_t);
  return n;
}

DType kv_cache_dtype(const std::string& choice) {
  if (choice == "fp32") return DType::F32;
  if (choice == "bf16") return DType::BF16;
  throw Error("BAD_ARGUMENT", "kv cache must be fp32 or bf16 (got \"" + choice + "\")");
}

// inv_freq as transformers computes it: θ^(−2i/d) over the rotated dims d, or YaRN's blend of interpolated and
// extrapolated frequencies with a linear ramp between the correction dims.
void Decoder::init_rope() {
  const RopeConfig& r = cfg_.rope;
  const int d = r.dims, half = d / 2;
  inv_freq_.resize(half);
  for (int i = 0; i < half; ++i) inv_freq_[i] = 1.0 / std::pow(r.theta, (2.0 * i) / d);
  if (r.longrope) {  // LongRoPE: the short and the long frequency sets, chosen per forward call (rope_rows)
    inv_freq_long_.resize(half);
    for (int i = 0; i < half; ++i) {
      inv_freq_long_[i] = inv_freq_[i] / r.long_factor[i];
      inv_freq_[i] /= r.short_factor[i];
    }
  }
  const double pi = 3.14159265358979323846;
  if (r.llama3) {  // transformers' _compute_llama3_parameters
    const double low_wavelen = r.original_max_positions / r.low_freq_factor;
    const double high_wavelen = r.original_max_positions / r.high_freq_factor;
    for (int i = 0; i < half; ++i) {
      const double f = inv_freq_[i], wavelen = 2 * pi / f;
      double g = wavelen > low_wavelen ? f / r.factor : f;
      if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen) && r.high_freq_factor != r.low_freq_factor) {
        const double smooth = (r.original_max_positions / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        g = (1 - smooth) * g / r.factor + smooth * g;
      }
      inv_freq_[i] = g;
    }
  }
  if (!r.yarn) return;
  auto correction_dim = [&](double rotations) {
    return d * std::log(r.original_max_positions / (rotations * 2 * pi)) / (2 * std::log(r.theta));
  };
  double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
  if (r.truncate) low = std::floor(low), high = std::ceil(high);
  low = std::max(low, 0.0), high = std::min(high, static_cast<double>(d - 1));
  if (low == high) high += 0.001;
  for (int i = 0; i < half; ++i) {
    const double ramp = std::min(1.0, std::max(0.0, (i - low) / (high - low)));
    const double extrapolation = 1.0 - ramp;
    inv_freq_[i] = inv_freq_[i] / r.factor * (1.0 - extrapolation) + inv_freq_[i] * extrapolation;
  }
}

void Decoder::rope_angles(int pos, int call_end, std::vector<float>& cos_t, std::vector<float>& sin_t) const {
  const int h = cfg_.rope.dims / 2;
  const RopeConfig& r = cfg_.rope;
  // LongRoPE: transformers picks the long set when the call's sequence (last position + 1) passes the original length.
  const bool long_set = r.longrope && call_end > r.original_max_positions;
  const double af = r.longrope ? (long_set ? r.long_mscale : r.short_mscale) : r.attention_factor;
  const std::vector<double>& inv_freq = long_set ? inv_freq_long_ : inv_freq_;
  cos_t.resize(h);
  sin_t.resize(h);
  for (int i = 0; i < h; ++i) {
    double a = pos * inv_freq[i];
    cos_t[i] = static_cast<float>(std::cos(a) * af);
    sin_t[i] = static_cast<float>(std::sin(a) * af);
  }
}

std::vector<float>& Decoder::scratch(Scratch which, size_t n) {
  std::vector<float>& v = scratch_[static_cast<int>(which)];
  v.resize(n);  // zero-fills only what grows past the last size
  return v;
}

size_t Decoder::scratch_bytes() const {
  size_t n = 0;
  for (const auto& v : scratch_) n += v.capacity();
  return n * sizeof(float);
}

void Decoder::release_scratch() {
  for (auto& v : scratch_) std::vector<float>().swap(v);
}

void Decoder::embed(const std::vector<int>& tokens, float* h) const {
  ck_.check_files_unchanged();  // every call that starts from tokens: a truncated file is an error, not SIGBUS
  const int H = cfg_.hidden;
  for (size_t t = 0; t < tokens.size(); ++t) convert_to_f32(ck_.embed.row(tokens[t]), ck_.embed.dtype, h + t * H, H);
  if (cfg_.embedding_multiplier != 1.f)  // GraniteMoE
    for (size_t i = 0; i < tokens.size() * H; ++i) h[i] *= cfg_.embedding_multiplier;
}

void Decoder::logits(const float* h, int rows, float* out) {
  const int H = cfg_.hidden;
  std::vector<float> x(static_cast<size_t>(rows) * H);
  for (int t = 0; t < rows; ++t)
    norm_row(h + static_cast<size_t>(t) * H, ck_.final_norm.data(), bias_or_null(ck_.final_norm_bias), H, cfg_.eps,
             x.data() + static_cast<size_t>(t) * H);
  matmul(pool_, x.data(), rows, ck_.lm_head, out);
  if (!ck_.lm_head_bias.empty())
    for (int t = 0; t < rows; ++t)
      for (int v = 0; v < cfg_.vocab; ++v) out[static_cast<size_t>(t) * cfg_.vocab + v] += ck_.lm_head_bias[v];
}

// Causal attention as two matrix products per KV head and block of queries: scores = Q K^T over the keys the
// block can see, then out = softmax(scores) V. Query heads sharing a KV head (GQA) are stacked as rows.
// Keys are head_dim wide, values v_head_dim (they differ in MLA).
// gpt-oss: a per-head sink logit joins each softmax's denominator (and takes no value), and the window is per layer.
// Llama 4: chunked layers see only their own chunk's keys (first_visible_key).
void Decoder::attention(int l, int T, int pos0, const float* q, const KVCache& cache, float* out, float* probs) {
  const int nh = cfg_.heads, nkv = cfg_.kv_heads, hd = cfg_.head_dim, vd = cfg_.v_head_dim, group = nh / nkv;
  const int qw = nh * hd, ow = nh * vd;
  const float scale = cfg_.softmax_scale;
  const int window = cfg_.window(l), chunk = cfg_.chunk(l);
  const float* sinks = ck_.layers[l].sinks.empty() ? nullptr : ck_.layers[l].sinks.data();
  const AttentionShape shape{nh, nkv, hd, vd, scale, window, sinks, chunk};
  if (!probs && (cache.dtype == DType::BF16 ? attention_fused(pool_, shape, q, T, pos0, cache.k16, cache.v16, out)
                                            : attention_fused(pool_, shape, q, T, pos0, cache.k, cache.v, out)))
    return;  // inference: scores, softmax and values fused per block of keys (cpu/attention.h)
  const int block = 64;
  const bool vector_softmax = cpu_has_avx512();
  for (int g = 0; g < nkv; ++g) {
    for (int i0 = 0; i0 < T; i0 += block) {
      const int i1 = std::min(T, i0 + block), bi = i1 - i0, rows = group * bi, keys = pos0 + i1;
      std::vector<float>& qb = scratch(Scratch::Queries, static_cast<size_t>(rows) * hd);
      for (int a = 0; a < group; ++a)
        for (int i = i0; i < i1; ++i)
          std::memcpy(&qb[(static_cast<size_t>(a) * bi + (i - i0)) * hd], q + static_cast<size_t>(i) * qw + (g * group + a) * hd,
                      hd * sizeof(float));
      std::vector<float>& scores = scratch(Scratch::Scores, static_cast<size_t>(rows) * keys);
      matmul(pool_, qb.data(), rows, cache.keys(g, keys), scores.data());
      pool_.parallel_for(rows, 8, [&](int64_t a0, int64_t a1, int) {
        for (int64_t r = a0; r < a1; ++r) {
          const int i = i0 + static_cast<int>(r % bi), p = pos0 + i;
          const int j0 = first_visible_key(p, window, chunk);
          float* srow = &scores[static_cast<size_t>(r) * keys];
          if (vector_softmax) {
            avx512::softmax_row(srow, keys, j0, p, scale, sinks ? sinks + g * group + static_cast<int>(r / bi) : nullptr);
            continue;
          }
          float mx = -std::numeric_limits<float>::infinity();
          for (int j = j0; j <= p; ++j) mx = std::max(mx, srow[j] * scale);
          const float sink = sinks ? sinks[g * group + static_cast<int>(r / bi)] : 0.f;
          if (sinks) mx = std::max(mx, sink);
          double sum = sinks ? std::exp(static_cast<double>(sink) - mx) : 0.0;
          for (int j = j0; j <= p; ++j) {
            srow[j] = std::exp(srow[j] * scale - mx);
            sum += srow[j];
          }
          const float inv = static_cast<float>(1.0 / sum);
          for (int j = 0; j < keys; ++j) srow[j] = (j >= j0 && j <= p) ? srow[j] * inv : 0.f;
        }
      }, int64_t(rows) * keys * 8);  // an exp is worth several multiply-adds
      std::vector<float>& ob = scratch(Scratch::Values, static_cast<size_t>(rows) * vd);
      matmul_backward_input(pool_, scores.data(), rows, cache.values(g, keys), ob.data(), false);
      for (int a = 0; a < group; ++a) {
        const int hh = g * group + a;
        for (int i = i0; i < i1; ++i) {
          const size_t r = static_cast<size_t>(a) * bi + (i - i0);
          std::memcpy(out + static_cast<size_t>(i) * ow + hh * vd, &ob[r * vd], vd * sizeof(float));
          if (probs) {  // [head, i, key] over all pos0 + T keys
            const int all = pos0 + T;
            float* prow = probs + (static_cast<size_t>(hh) * T + i) * all;
            std::memcpy(prow, &scores[r * keys], keys * sizeof(float));
            std::fill(prow + keys, prow + all, 0.f);
          }
        }
      }
    }
  }
}

void Decoder::project(const float* x, int T, const Mat& W, float* y, bool accumulate, bool saving) {
  if (rounds(T, saving)) matmul_bf16_rounded(pool_, x, T, W, y, accumulate);
  else matmul(pool_, x, T, W, y, accumulate);
}

void Decoder::project(const std::vector<MatmulJob>& jobs, bool saving) {
  if (jobs.empty()) return;
  if (rounds(jobs.front().T, saving)) matmul_bf16_rounded_batch(pool_, jobs);
  else matmul_batch(pool_, jobs);
}

// y = down(silu(gate x) * up x) for T rows; keeps pre-activations when asked.
void Decoder::swiglu(const float* x, int T, const Mat& gate, const Mat& up, const Mat& down, float* y, float,
                     std::vector<float>* g_save, std::vector<float>* u_save) {
  const int I = gate.rows;
  const bool saving = g_save || u_save;
  std::vector<float> g(static_cast<size_t>(T) * I), u(static_cast<size_t>(T) * I);
  project({{x, T, gate, g.data()}, {x, T, up, u.data()}}, saving);
  if (g_save) *g_save = g;
  if (u_save) *u_save = u;
  for (size_t i = 0; i < g.size(); ++i) g[i] = silu(g[i]) * u[i];
  project(g.data(), T, down, y, false, saving);
}

void Decoder::moe_forward(int l, const float* x, int T, int pos0, const Patch& patch, float* y,
                          const RoutingCallback& on_layer, LayerSave* save) {
  const LayerWeights& w = ck_.layers[l];
  const int H = cfg_.hidden, E = cfg_.experts, k = cfg_.top_k, I = cfg_.expert_width;
  const int P = router_score_width(cfg_.router.scoring, E, k);  // the scores route_token writes per token
  std::vector<float> z(static_cast<size_t>(T) * E), p(static_cast<size_t>(T) * P), wts(static_cast<size_t>(T) * k);
  std::vector<int32_t> sel(static_cast<size_t>(T) * k);
  std::vector<uint8_t> mixed(T);
  matmul(pool_, x, T, w.router, z.data());
  if (!w.router_bias.empty())  // part of the router logits (reported and patched as such)
    for (int t = 0; t < T; ++t)
      for (int e = 0; e < E; ++e) z[static_cast<size_t>(t) * E + e] += w.router_bias[e];
  auto it = patch.layers.find(l);
  const LayerPatch* lp = it == patch.layers.end() ? nullptr : &it->second;
  const float* selection_bias = w.selection_bias.empty() ? nullptr : w.selection_bias.data();
  for (int t = 0; t < T; ++t) {
    bool m = false;
    route_token(cfg_.router, z.data() + static_cast<size_t>(t) * E, E, k, selection_bias, lp, pos0 + t,
                p.data() + static_cast<size_t>(t) * P, sel.data() + static_cast<size_t>(t) * k,
                wts.data() + static_cast<size_t>(t) * k, &m);
    mixed[t] = m;
  }
  if (save) {  // every slot's row is written by moe_experts_forward: no zero-fill
    save->g.resize(static_cast<size_t>(T) * k * I);
    save->u.resize(static_cast<size_t>(T) * k * I);
    save->o.resize(static_cast<size_t>(T) * k * H);
  }
  if (cfg_.expert_mlp.clamped || cfg_.expert_mlp.bias || cfg_.expert_mlp.input_scaled)  // gpt-oss, Llama 4
    experts_forward_general(pool_, cfg_.expert_mlp, x, T, k, sel.data(), wts.data(), w, y, save ? save->g.data() : nullptr,
                            save ? save->u.data() : nullptr, save ? save->o.data() : nullptr);
  else
    moe_experts_forward(pool_, x, T, k, sel.data(), wts.data(), w.gate, w.up, w.down, y, save ? save->g.data() : nullptr,
                        save ? save->u.data() : nullptr, save ? save->o.data() : nullptr,
                        rounds(T, save != nullptr) ? ExpertKernels::Avx512Bf16Rounded : ExpertKernels::Auto);
  if (w.has_shared()) {  // qwen2_moe: × sigmoid(shared_expert_gate · x); DeepSeek / GLM: added as is
    std::vector<float> so(static_cast<size_t>(T) * H);
    swiglu(x, T, w.shared_gate, w.shared_up, w.shared_down, so.data(), 1.f, save ? &save->sg : nullptr,
           save ? &save->su : nullptr);
    if (save) {
      save->so = so;
      save->sgate.assign(T, 1.f);
    }
    for (int t = 0; t < T; ++t) {
      float sgv = 1.f;
      if (!w.shared_expert_gate.empty()) {
        const float* xt = x + static_cast<size_t>(t) * H;
        float gl = 0;
        for (int d = 0; d < H; ++d) gl += xt[d] * w.shared_expert_gate[d];
        sgv = sigmoid(gl);
        if (save) save->sgate[t] = sgv;
      }
      for (int d = 0; d < H; ++d) y[static_cast<size_t>(t) * H + d] += sgv * so[static_cast<size_t>(t) * H + d];
    }
  }
  if (save) {
    save->p = p;
    save->sel = sel;
    save->w = wts;
    save->mixed = mixed;
  }
  if (on_layer) {
    LayerRouting rec;
    rec.layer = l;
    rec.start = pos0;
    rec.count = T;
    rec.num_experts = E;
    rec.top_k = k;
    rec.router_logits = z.data();
    rec.experts = sel.data();
    rec.weights = wts.data();
    on_layer(rec);
  }
}

void Decoder::layer_forward(int l, float* h, int T, int pos0, KVCache& cache, const Patch& patch,
                            const RoutingCallback& on_layer, LayerSave* save) {
  attn_forward(l, h, T, pos0, cache, save);
  mlp_forward(l, h, T, pos0, patch, on_layer, save);
}

// The attention's input: the pre-attention norm of h's T rows (kept in save with h for the backward).
std::vector<float>& Decoder::attn_input(int l, const float* h, int T, LayerSave* save) {
  const LayerWeights& w = ck_.layers[l];
  const int H = cfg_.hidden;
  const size_t TH = static_cast<size_t>(T) * H;
  std::vector<float>& x = save ? save->x_attn : layer_buffer(LayerBuffer::AttnInput, TH);
  x.resize(TH);
  std::vector<float> r_attn(T);
  for (int t = 0; t < T; ++t)
    r_attn[t] = norm_row(h + t * H, w.attn_norm.data(), bias_or_null(w.attn_norm_bias), H, cfg_.eps, x.data() + t * H);
  if (save) {
    save->T = T;
    save->h_in.assign(h, h + TH);
    save->r_attn = std::move(r_attn);
  }
  return x;
}

void Decoder::attn_forward(int l, float* h, int T, int pos0, KVCache& cache, LayerSave* save) {
  const int nh = cfg_.heads, nkv = cfg_.kv_heads, hd = cfg_.head_dim, vd = cfg_.v_head_dim;
  std::vector<float>& x = attn_input(l, h, T, save);
  // [T, nh·hd], [T, nkv·hd], [T, nkv·vd], RoPE applied; written into the save when there is one (no copy)
  std::vector<float>& q = save ? save->q : layer_buffer(LayerBuffer::Query, static_cast<size_t>(T) * nh * hd);
  std::vector<float>& kk = save ? save->k : layer_buffer(LayerBuffer::Key, static_cast<size_t>(T) * nkv * hd);
  std::vector<float>& vv = save ? save->v : layer_buffer(LayerBuffer::Value, static_cast<size_t>(T) * nkv * vd);
  if (cfg_.attention == AttentionKind::Latent) latent_qkv(l, x.data(), T, pos0, q, kk, vv, save);
  else standard_qkv(l, x.data(), T, pos0, q, kk, vv, save);
  const int kw = nkv * hd, vw = nkv * vd;
  cache.ensure(pos0 + T, nkv, hd, vd, kv_dtype);
  for (int t = 0; t < T; ++t)
    for (int g = 0; g < nkv; ++g)
      cache.store(g, pos0 + t, &kk[static_cast<size_t>(t) * kw + g * hd], &vv[static_cast<size_t>(t) * vw + g * vd]);
  std::vector<float>& attn = save ? save->attn : layer_buffer(LayerBuffer::AttnOutput, static_cast<size_t>(T) * nh * vd);
  if (save) {
    attn.resize(static_cast<size_t>(T) * nh * vd);
    save->probs.resize(static_cast<size_t>(nh) * T * (pos0 + T));  // attention() writes every entry
    save->pos0 = pos0;
    save->cache = &cache;
    save->row_pos.clear();
  }
  attention(l, T, pos0, q.data(), cache, attn.data(), save ? save->probs.data() : nullptr);
  attn_output(l, attn.data(), T, h, save != nullptr);
}

void Decoder::attn_forward_rows(int l, float* h, const std::vector<KVCache*>& caches, const std::vector<int>& pos,
                                LayerSave* save) {
  if (!stacks_attention()) throw Error("UNSUPPORTED", "stacked attention rows need standard attention");
  const int T = static_cast<int>(pos.size());
  const int nh = cfg_.heads, nkv = cfg_.kv_heads, hd = cfg_.head_dim, vd = cfg_.v_head_dim;
  std::vector<float>& x = attn_input(l, h, T, save);
  if (save) {
    save->pos0 = 0;
    save->row_pos = pos;
    save->row_cache.assign(caches.begin(), caches.end());
  }
  std::vector<float>& q = layer_buffer(LayerBuffer::Query, static_cast<size_t>(T) * nh * hd);
  std::vector<float>& kk = layer_buffer(LayerBuffer::Key, static_cast<size_t>(T) * nkv * hd);
  std::vector<float>& vv = layer_buffer(LayerBuffer::Value, static_cast<size_t>(T) * nkv * vd);
  standard_qkv(l, x.data(), T, 0, q, kk, vv, save, pos.data());
  const int qw = nh * hd, kw = nkv * hd, vw = nkv * vd, ow = nh * vd;
  std::vector<float>& attn = layer_buffer(LayerBuffer::AttnOutput, static_cast<size_t>(T) * ow);
  if (save) {
    save->q = q;
    save->k = kk;
    save->v = vv;
    save->row_probs.resize(T);
    size_t n = 0;
    for (int t = 0; t < T; ++t) save->row_probs[t] = n, n += static_cast<size_t>(nh) * (pos[t] + 1);
    save->probs.resize(n);
  }
  for (int t = 0; t < T; ++t) {
    KVCache& cache = *caches[t];
    cache.ensure(pos[t] + 1, nkv, hd, vd, kv_dtype);
    for (int g = 0; g < nkv; ++g)
      cache.store(g, pos[t], &kk[static_cast<size_t>(t) * kw + g * hd], &vv[static_cast<size_t>(t) * vw + g * vd]);
    attention(l, 1, pos[t], q.data() + static_cast<size_t>(t) * qw, cache, attn.data() + static_cast<size_t>(t) * ow,
              save ? save->probs.data() + save->row_probs[t] : nullptr);
  }
  if (save) save->attn = attn;
  attn_output(l, attn.data(), T, h, save != nullptr);
}

void Decoder::attn_output(int l, const float* attn, int T, float* h, bool saving) {
  const LayerWeights& w = ck_.layers[l];
  const int H = cfg_.hidden;
  const size_t TH = static_cast<size_t>(T) * H;
  if (w.o_bias.empty() && cfg_.residual_multiplier == 1.f) {
    project(attn, T, w.o, h, /*accumulate=*/true, saving);  // residual
    return;
  }
  // o_proj bias (phimoe) and GraniteMoE's residual multiplier: h += m · (o(attn) + b)
  std::vector<float>& y = layer_buffer(LayerBuffer::MlpOutput, TH);
  project(attn, T, w.o, y.data(), false, saving);
  const float m = cfg_.residual_multiplier;
  for (int t = 0; t < T; ++t)
    for (int d = 0; d < H; ++d)
      h[static_cast<size_t>(t) * H + d] += m * (y[static_cast<size_t>(t) * H + d] + (w.o_bias.empty() ? 0.f : w.o_bias[d]));
}

void Decoder::grow_rope_table(int positions) const {
  const int h = cfg_.rope.dims / 2;
  const int n = std::max({positions, 2 * rope_positions_, 64});
  rope_cos_.resize(static_cast<size_t>(n) * h);
  rope_sin_.resize(static_cast<size_t>(n) * h);
  std::vector<float> cs, sn;
  for (int p = rope_positions_; p < n; ++p) {
    rope_angles(p, p + 1, cs, sn);
    std::copy(cs.begin(), cs.end(), rope_cos_.begin() + static_cast<size_t>(p) * h);
    std::copy(sn.begin(), sn.end(), rope_sin_.begin() + static_cast<size_t>(p) * h);
  }
  rope_positions_ = n;
}

void Decoder::rope_rows(float* rows, int T, int pos0, int heads, int stride, int offset, float sign,
                        const int* row_pos) const {
  std::vector<float> cs, sn;
  const bool interleaved = cfg_.rope.layout == RopeLayout::Interleaved;
  const int h = cfg_.rope.dims / 2;
  for (int t = 0; t < T; ++t) {
    const int pos = row_pos ? row_pos[t] : pos0 + t;
    const float *c, *s;
    if (cfg_.rope.longrope) {  // the frequency set depends on the call's last position
      rope_angles(pos, row_pos ? pos + 1 : pos0 + T, cs, sn);
      c = cs.data(), s = sn.data();
    } else {
      if (pos >= rope_positions_) grow_rope_table(pos + 1);
      c = &rope_cos_[static_cast<size_t>(pos) * h], s = &rope_sin_[static_cast<size_t>(pos) * h];
    }
    for (int hh = 0; hh < heads; ++hh)
      rope_head(rows + static_cast<size_t>(t) * heads * stride + hh * stride + offset, c, s, cfg_.rope.dims, interleaved,
                sign);
  }
}

// q, k, v projections (+ bias, clip, QK-norm over the whole projection or per head), then RoPE on q and k.
void Decoder::standard_qkv(int l, const float* x, int T, int pos0, std::vector<float>& q, std::vector<float>& kk,
                           std::vector<float>& vv, LayerSave* save, const int* row_pos) {
  const LayerWeights& w = ck_.layers[l];
  const int nh = cfg_.heads, nkv = cfg_.kv_heads, hd = cfg_.head_dim;
  const int qw = nh * hd, kvw = nkv * hd;
  q.resize(static_cast<size_t>(T) * qw), kk.resize(static_cast<size_t>(T) * kvw), vv.resize(static_cast<size_t>(T) * kvw);
  project({{x, T, w.q, q.data()}, {x, T, w.k, kk.data()}, {x, T, w.v, vv.data()}}, save != nullptr);
  if (cfg_.qkv_bias)
    for (int t = 0; t < T; ++t) {
      for (int i = 0; i < qw; ++i) q[t * qw + i] += w.q_bias[i];
      for (int i = 0; i < kvw; ++i) kk[t * kvw + i] += w.k_bias[i], vv[t * kvw + i] += w.v_bias[i];
    }
  if (cfg_.clip_qkv > 0) {
    const float c = cfg_.clip_qkv;
    for (auto* a : {&q, &kk, &vv})
      for (auto& f : *a) f = std::min(c, std::max(-c, f));
  }
  if (save) {
    save->q_pre = q;
    save->k_pre = kk;
  }
  const QKNorm qk_norm = layer_qk_norm(l);
  if (qk_norm == QKNorm::Whole) {
    if (save) save->r_q.resize(T), save->r_k.resize(T);
    for (int t = 0; t < T; ++t) {
      float rq = rmsnorm_row(&q[t * qw], w.q_norm.data(), qw, cfg_.eps, &q[t * qw]);
      float rk = rmsnorm_row(&kk[t * kvw], w.k_norm.data(), kvw, cfg_.eps, &kk[t * kvw]);
      if (save) save->r_q[t] = rq, save->r_k[t] = rk;
    }
  } else if (qk_norm == QKNorm::PerHead) {
    if (save) save->r_q.resize(static_cast<size_t>(T) * nh), save->r_k.resize(static_cast<size_t>(T) * nkv);
    for (int t = 0; t < T; ++t) {
      for (int hh = 0; hh < nh; ++hh) {
        float r = rmsnorm_row(&q[t * qw + hh * hd], w.q_norm.data(), hd, cfg_.eps, &q[t * qw + hh * hd]);
        if (save) save->r_q[t * nh + hh] = r;
      }
      for (int hh = 0; hh < nkv; ++hh) {
        float r = rmsnorm_row(&kk[t * kvw + hh * hd], w.k_norm.data(), hd, cfg_.eps, &kk[t * kvw + hh * hd]);
        if (save) save->r_k[t * nkv + hh] = r;
      }
    }
  }
  // Llama 4: RoPE after its L2 norm here (transformers norms after RoPE: the same, a rotation keeps each head's
  // norm); its NoPE layers take no RoPE and scale queries by the temperature tuning.
  if (cfg_.rope_on(l)) {
    rope_rows(q.data(), T, pos0, nh, hd, 0, 1.f, row_pos);
    rope_rows(kk.data(), T, pos0, nkv, hd, 0, 1.f, row_pos);
  } else if (cfg_.temperature.on) {
    scale_query_rows(q.data(), T, pos0, qw, row_pos);
  }
}

QKNorm Decoder::layer_qk_norm(int l) const {
  // Weights loaded on the layers that have the norm (Llama 4: unit weights on its RoPE layers only).
  if (cfg_.qk_norm == QKNorm::None || ck_.layers[l].q_norm.empty()) return QKNorm::None;
  return cfg_.qk_norm == QKNorm::PerHeadL2 ? QKNorm::PerHead : cfg_.qk_norm;
}

void Decoder::scale_query_rows(float* q, int T, int pos0, int width, const int* row_pos) const {
  for (int t = 0; t < T; ++t) {
    const float f = cfg_.temperature.factor(row_pos ? row_pos[t] : pos0 + t);
    for (int i = 0; i < width; ++i) q[static_cast<size_t>(t) * width + i] *= f;
  }
}

void Decoder::mlp_forward(int l, float* h, int T, int pos0, const Patch& patch, const RoutingCallback& on_layer,
                          LayerSave* save) {
  const LayerWeights& w = ck_.layers[l];
  const int H = cfg_.hidden;
  const size_t TH = static_cast<size_t>(T) * H;
  std::vector<float>& x = save ? save->x_mlp : layer_buffer(LayerBuffer::MlpInput, TH);
  x.resize(TH);
  if (save) save->T = T, save->pos0 = pos0;
  std::vector<float> r_mlp(T);
  for (int t = 0; t < T; ++t)
    r_mlp[t] = norm_row(h + t * H, w.mlp_norm.data(), bias_or_null(w.mlp_norm_bias), H, cfg_.eps, x.data() + t * H);
  if (save) {
    save->h_mid.assign(h, h + TH);
    save->r_mlp = r_mlp;
  }
  std::vector<float>& y = layer_buffer(LayerBuffer::MlpOutput, TH);
  if (w.moe) {
    moe_forward(l, x.data(), T, pos0, patch, y.data(), on_layer, save);
  } else {
    swiglu(x.data(), T, w.dense_gate, w.dense_up, w.dense_down, y.data(), 1.f, save ? &save->dg : nullptr,
           save ? &save->du : nullptr);
  }
  const float m = cfg_.residual_multiplier;  // GraniteMoE; 1 elsewhere
  for (size_t i = 0; i < TH; ++i) h[i] += m * y[i];
  if (cancel_flag && cancel_flag->load()) throw Error("CANCELLED", "cancelled");
  ck_.check_files_unchanged(true);
}

void Decoder::layer_backward(int l, const LayerSave& s, float* dh, bool stop_at_router, float* bias_grad,
                             const std::map<int, float*>& mix_grads) {
  if (mlp_backward(l, s, dh, stop_at_router, bias_grad, mix_grads)) attn_backward(l, s, dh);
}

bool Decoder::mlp_backward(int l, const LayerSave& s, float* dh, bool stop_at_router, float* bias_grad,
                           const std::map<int, float*>& mix_grads) {
  const LayerWeights& w = ck_.layers[l];
  const int T = s.T, H = cfg_.hidden, E = cfg_.experts, k = cfg_.top_k;
  const size_t TH = static_cast<size_t>(T) * H;
  std::vector<float>& dx = scratch(Scratch::DMlpInput, TH);  // gradient w.r.t. the normed MLP input
  std::fill(dx.begin(), dx.end(), 0.f);
  std::vector<float> dy_scaled;    // dLoss/d(block output) when a residual multiplier scales it (GraniteMoE)
  const float* dy = dh;
  if (cfg_.residual_multiplier != 1.f) {
    dy_scaled.assign(dh, dh + TH);
    for (float& v : dy_scaled) v *= cfg_.residual_multiplier;
    dy = dy_scaled.data();
  }
  if (w.moe) {
    std::vector<float>& dz = scratch(Scratch::DRouter, static_cast<size_t>(T) * E);
    std::fill(dz.begin(), dz.end(), 0.f);
    std::vector<double> dp;
    // Router: a_e = <dy, o_e>; dLoss/dscores by the weight rule; dz through the scoring function (selection fixed).
    for (int t = 0; t < T; ++t) {
      const float* dyt = dy + static_cast<size_t>(t) * H;
      double a[256];
      std::vector<double> abig;
      double* av = k <= 256 ? a : (abig.resize(k), abig.data());
      for (int j = 0; j < k; ++j) {
        const float* o = &s.o[(static_cast<size_t>(t) * k + j) * H];
        double dot = 0;
        for (int d = 0; d < H; ++d) dot += static_cast<double>(dyt[d]) * o[d];
        av[j] = dot;
      }
      float* dzt = &dz[static_cast<size_t>(t) * E];
      if (cfg_.router.scoring == Scoring::SparseMixer) {  // each slot's softmax over its own candidates
        sparsemixer_backward(E, k, &s.p[static_cast<size_t>(t) * k * E], &s.w[static_cast<size_t>(t) * k],
                             &s.sel[static_cast<size_t>(t) * k], av, dzt);
        if (bias_grad)
          for (int e = 0; e < E; ++e) bias_grad[e] += dzt[e];
        continue;
      }
      dp.assign(E, 0.0);
      const float* pt = &s.p[static_cast<size_t>(t) * E];
      const int32_t* st = &s.sel[static_cast<size_t>(t) * k];
      weights_backward(cfg_.router, E, k, pt, st, av, dp.data());
      if (s.mixed[t]) {
        // The mix row ω = scoring(θ) replaced the scores: dθ by the same Jacobian; the router logits get nothing.
        auto mg = mix_grads.find(s.pos0 + t);
        if (mg != mix_grads.end()) scoring_backward(cfg_.router.scoring, E, pt, dp.data(), mg->second);
        continue;
      }
      scoring_backward(cfg_.router.scoring, E, pt, dp.data(), dzt);
      if (bias_grad)
        for (int e = 0; e < E; ++e) bias_grad[e] += dzt[e];
    }
    if (stop_at_router) return false;
    matmul_backward_input(pool_, dz.data(), T, w.router, dx.data(), true);
    moe_experts_backward(pool_, cfg_.expert_mlp, dy, T, k, s.sel.data(), s.w.data(), s.g.data(), s.u.data(), w.gate, w.up,
                         w.down, dx.data());
    if (w.has_shared()) {
      std::vector<float> dso(TH);
      for (int t = 0; t < T; ++t) {
        const float sgv = s.sgate[t];
        const float* dyt = dy + static_cast<size_t>(t) * H;
        double dot = 0;
        for (int d = 0; d < H; ++d) {
          dso[static_cast<size_t>(t) * H + d] = sgv * dyt[d];
          dot += static_cast<double>(dyt[d]) * s.so[static_cast<size_t>(t) * H + d];
        }
        if (w.shared_expert_gate.empty()) continue;
        const float dgl = static_cast<float>(dot) * sgv * (1.f - sgv);
        for (int d = 0; d < H; ++d) dx[static_cast<size_t>(t) * H + d] += dgl * w.shared_expert_gate[d];
      }
      expert_mlp_backward(pool_, ExpertMlp{}, dso.data(), T, s.sg.data(), s.su.data(), w.shared_gate, w.shared_up, w.shared_down,
                      dx.data());
    }
  } else {
    if (stop_at_router) return false;
    expert_mlp_backward(pool_, ExpertMlp{}, dy, T, s.dg.data(), s.du.data(), w.dense_gate, w.dense_up, w.dense_down, dx.data());
  }
  // Through the post-attention norm into the residual stream: dh_mid = dh + norm'(dx).
  for (int t = 0; t < T; ++t)
    norm_row_backward(&s.h_mid[static_cast<size_t>(t) * H], s.r_mlp[t], w.mlp_norm.data(), bias_or_null(w.mlp_norm_bias),
                      &dx[static_cast<size_t>(t) * H], H, dh + static_cast<size_t>(t) * H, true);
  return true;
}

void Decoder::attn_backward(int l, const LayerSave& s, float* dh) {
  const LayerWeights& w = ck_.layers[l];
  const int T = s.T, H = cfg_.hidden;
  const size_t TH = static_cast<size_t>(T) * H;
  const int nh = cfg_.heads, nkv = cfg_.kv_heads, hd = cfg_.head_dim, vd = cfg_.v_head_dim;
  const int qw = nh * hd, kw = nkv * hd, ow = nh * vd, vw = nkv * vd;
  const float scale = cfg_.softmax_scale;
  std::vector<float>& dattn = scratch(Scratch::DAttn, static_cast<size_t>(T) * ow);
  if (cfg_.residual_multiplier != 1.f) {  // GraniteMoE: h += m · o(attn)
    std::vector<float> dy(dh, dh + TH);
    for (float& v : dy) v *= cfg_.residual_multiplier;
    matmul_backward_input(pool_, dy.data(), T, w.o, dattn.data(), false);
  } else {
    matmul_backward_input(pool_, dh, T, w.o, dattn.data(), false);
  }
  // Every entry written by attention_backward.
  std::vector<float>& dq = scratch(Scratch::DQuery, static_cast<size_t>(T) * qw);
  std::vector<float>& dk = scratch(Scratch::DKey, static_cast<size_t>(T) * kw);
  std::vector<float>& dv = scratch(Scratch::DValue, static_cast<size_t>(T) * vw);
  // Keys before pos0 come from the cache and are constants; rows of this call get dk/dv.
  if (s.row_pos.empty()) {
    attention_backward(pool_, T, s.pos0, nh, nkv, hd, vd, scale, s.probs.data(), s.q.data(), dattn.data(), *s.cache,
                       dq.data(), dk.data(), dv.data());
  } else {  // attn_forward_rows: each row against its own cache
    for (int t = 0; t < T; ++t)
      attention_backward(pool_, 1, s.row_pos[t], nh, nkv, hd, vd, scale, s.probs.data() + s.row_probs[t],
                         s.q.data() + static_cast<size_t>(t) * qw, dattn.data() + static_cast<size_t>(t) * ow,
                         *s.row_cache[t], dq.data() + static_cast<size_t>(t) * qw, dk.data() + static_cast<size_t>(t) * kw,
                         dv.data() + static_cast<size_t>(t) * vw);
  }
  std::vector<float>& dxa = scratch(Scratch::DAttnInput, TH);
  std::fill(dxa.begin(), dxa.end(), 0.f);
  if (cfg_.attention == AttentionKind::Latent) latent_qkv_backward(l, s, dq, dk, dv, dxa.data());
  else standard_qkv_backward(l, s, dq, dk, dv, dxa.data());
  for (int t = 0; t < T; ++t)
    norm_row_backward(&s.h_in[static_cast<size_t>(t) * H], s.r_attn[t], w.attn_norm.data(), bias_or_null(w.attn_norm_bias),
                      &dxa[static_cast<size_t>(t) * H], H, dh + static_cast<size_t>(t) * H, true);
}

// Back through RoPE (rotate back), the QK-norm, the clip and the projections into dx (accumulated).
void Decoder::standard_qkv_backward(int l, const LayerSave& s, std::vector<float>& dq, std::vector<float>& dk,
                                    std::vector<float>& dv, float* dx) {
  const LayerWeights& w = ck_.layers[l];
  const int T = s.T, nh = cfg_.heads, nkv = cfg_.kv_heads, hd = cfg_.head_dim;
  const int qw = nh * hd, kvw = nkv * hd;
  const int* row_pos = s.row_pos.empty() ? nullptr : s.row_pos.data();
  if (cfg_.rope_on(l)) {
    rope_rows(dq.data(), T, s.pos0, nh, hd, 0, -1.f, row_pos);
    rope_rows(dk.data(), T, s.pos0, nkv, hd, 0, -1.f, row_pos);
  } else if (cfg_.temperature.on) {
    scale_query_rows(dq.data(), T, s.pos0, qw, row_pos);
  }
  const QKNorm qk_norm = layer_qk_norm(l);
  if (qk_norm == QKNorm::Whole) {
    for (int t = 0; t < T; ++t) {
      rmsnorm_row_backward(&s.q_pre[t * qw], s.r_q[t], w.q_norm.data(), &dq[t * qw], qw, &dq[t * qw], false);
      rmsnorm_row_backward(&s.k_pre[t * kvw], s.r_k[t], w.k_norm.data(), &dk[t * kvw], kvw, &dk[t * kvw], false);
    }
  } else if (qk_norm == QKNorm::PerHead) {
    for (int t = 0; t < T; ++t) {
      for (int hh = 0; hh < nh; ++hh)
        rmsnorm_row_backward(&s.q_pre[t * qw + hh * hd], s.r_q[t * nh + hh], w.q_norm.data(), &dq[t * qw + hh * hd], hd,
                             &dq[t * qw + hh * hd], false);
      for (int hh = 0; hh < nkv; ++hh)
        rmsnorm_row_backward(&s.k_pre[t * kvw + hh * hd], s.r_k[t * nkv + hh], w.k_norm.data(), &dk[t * kvw + hh * hd],
                             hd, &dk[t * kvw + hh * hd], false);
    }
  }
  if (cfg_.clip_qkv > 0) {  // clamped entries pass no gradient
    const float c = cfg_.clip_qkv;
    for (size_t i = 0; i < dq.size(); ++i)
      if (std::fabs(s.q_pre[i]) >= c) dq[i] = 0;
    for (size_t i = 0; i < dk.size(); ++i) {
      if (std::fabs(s.k_pre[i]) >= c) dk[i] = 0;
      if (std::fabs(s.v[i]) >= c) dv[i] = 0;
    }
  }
  matmul_backward_input(pool_, dq.data(), T, w.q, dx, true);
  matmul_backward_input(pool_, dk.data(), T, w.k, dx, true);
  matmul_backward_input(pool_, dv.data(), T, w.v, dx, true);
}

void Decoder::moe_parts(int l, const float* h_mid, float* z, float* experts, float* shared) {
  const LayerWeights& w = ck_.layers[l];
  const int H = cfg_.hidden, E = cfg_.experts, I = cfg_.expert_width;
  if (!w.moe) throw Error("BAD_ARGUMENT", "layer " + std::to_string(l) + " has no router");
  require_output_mixing(cfg_.expert_mlp, "splitting layer " + std::to_string(l) + "'s MoE block into expert outputs");
  std::vector<float> x(H);
  norm_row(h_mid, w.mlp_norm.data(), bias_or_null(w.mlp_norm_bias), H, cfg_.eps, x.data());
  matmul(pool_, x.data(), 1, w.router, z);
  for (size_t e = 0; e < w.router_bias.size(); ++e) z[e] += w.router_bias[e];
  if (cfg_.expert_mlp.clamped || cfg_.expert_mlp.bias) {  // gpt-oss: every expert as one selected slot of weight 1
    std::vector<int32_t> all(E);
    std::iota(all.begin(), all.end(), 0);
    std::vector<float> ones(E, 1.f), sum(H);
    experts_forward_general(pool_, cfg_.expert_mlp, x.data(), 1, E, all.data(), ones.data(), w, sum.data(), nullptr,
                            nullptr, experts);
  } else {
    std::vector<float> g(static_cast<size_t>(E) * I), u(static_cast<size_t>(E) * I);
    std::vector<MatmulJob> jobs;
    for (int e = 0; e < E; ++e) {
      jobs.push_back({x.data(), 1, w.gate[e], &g[static_cast<size_t>(e) * I]});
      jobs.push_back({x.data(), 1, w.up[e], &u[static_cast<size_t>(e) * I]});
    }
    matmul_batch(pool_, jobs);
    for (size_t i = 0; i < g.size(); ++i) g[i] = silu(g[i]) * u[i];
    jobs.clear();
    for (int e = 0; e < E; ++e) jobs.push_back({&g[static_cast<size_t>(e) * I], 1, w.down[e], experts + static_cast<size_t>(e) * H});
    matmul_batch(pool_, jobs);
  }
  std::fill(shared, shared + H, 0.f);
  if (w.has_shared()) {  // as moe_forward: gated (qwen2_moe) or added as is (DeepSeek / GLM)
    swiglu(x.data(), 1, w.shared_gate, w.shared_up, w.shared_down, shared, 1.f, nullptr, nullptr);
    if (!w.shared_expert_gate.empty()) {
      float gl = 0;
      for (int d = 0; d < H; ++d) gl += x[d] * w.shared_expert_gate[d];
      const float sgv = sigmoid(gl);
      for (int d = 0; d < H; ++d) shared[d] *= sgv;
    }
  }
  if (cfg_.residual_multiplier != 1.f) {  // GraniteMoE: the block's output enters the residual scaled
    for (size_t i = 0; i < static_cast<size_t>(E) * H; ++i) experts[i] *= cfg_.residual_multiplier;
    for (int d = 0; d < H; ++d) shared[d] *= cfg_.residual_multiplier;
  }
}

}  // namespace routescope
