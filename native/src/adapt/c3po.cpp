// C3PO (arXiv:2504.07964), the NGD variant: re-mix a test prompt's last-position routing in critical layers so that
// the kernel-weighted loss of reference neighbours, run with that routing, goes down. Each neighbour's prompt is
// cached once (c3po_prefix), with the first critical MoE layer's routing-independent parts (attention output, router
// logits, every expert's output); an NGD step replays only the neighbours' last positions above that layer, stacked.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "adapt/optimizer.h"
#include "cpu/convert.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "cpu/router.h"
#include "engine_impl.h"
#include "adapt/last_position.h"
#include "routescope/adapt.h"

namespace routescope {

void cache_block(C3poPrefix& p, const float* h_mid) {
  SessionImpl& s = *p.session;
  const ModelConfig& cfg = s.m_.checkpoint().config;
  p.h_base.resize(cfg.hidden);
  p.experts.resize(static_cast<size_t>(cfg.experts) * cfg.hidden);
  p.router.resize(cfg.experts);
  s.dec_.moe_parts(p.first_layer, h_mid, p.router.data(), p.experts.data(), p.h_base.data());
  for (int d = 0; d < cfg.hidden; ++d) p.h_base[d] += h_mid[d];
  p.cached = true;
}

void cached_block(const std::vector<const C3poPrefix*>& rows, const LayerPatch* lp, const ModelConfig& cfg, float* h,
                  LayerSave* save) {
  const int K = static_cast<int>(rows.size()), E = cfg.experts, k = cfg.top_k, H = cfg.hidden;
  if (save) {
    save->T = K;
    save->pos0 = 0;
    save->p.resize(static_cast<size_t>(K) * E);
    save->sel.resize(static_cast<size_t>(K) * k);
    save->w.resize(static_cast<size_t>(K) * k);
    save->mixed.resize(K);
    save->o.resize(static_cast<size_t>(K) * k * H);
  }
  std::vector<float> p(E), w(k);
  std::vector<int32_t> sel(k);
  for (int j = 0; j < K; ++j) {
    const C3poPrefix& px = *rows[j];
    bool mixed = false;
    const std::vector<float>& bias = px.model->checkpoint().layers[px.first_layer].selection_bias;
    route_token(cfg.router, px.router.data(), E, k, bias.empty() ? nullptr : bias.data(), lp, j, p.data(), sel.data(), w.data(),
                &mixed);
    float* hj = h + static_cast<size_t>(j) * H;
    std::copy(px.h_base.begin(), px.h_base.end(), hj);
    for (int s = 0; s < k; ++s) {
      const float* o = px.experts.data() + static_cast<size_t>(sel[s]) * H;
      for (int d = 0; d < H; ++d) hj[d] += w[s] * o[d];
      // The saved expert output is the block's own, before GraniteMoE's residual multiplier (moe_parts folds it
      // into the cached parts; mlp_backward applies it).
      if (save)
        for (int d = 0; d < H; ++d) save->o[(static_cast<size_t>(j) * k + s) * H + d] = o[d] / cfg.residual_multiplier;
    }
    if (save) {
      std::copy(p.begin(), p.end(), save->p.begin() + static_cast<size_t>(j) * E);
      std::copy(sel.begin(), sel.end(), save->sel.begin() + static_cast<size_t>(j) * k);
      std::copy(w.begin(), w.end(), save->w.begin() + static_cast<size_t>(j) * k);
      save->mixed[j] = mixed;
    }
  }
}

std::shared_ptr<C3poPrefix> c3po_prefix(Model& model_in, const std::vector<int>& prompt, int first_layer,
                                        bool cache_first_layer) {
  ModelImpl& model = engine_model(model_in, "c3po_prefix");
  std::lock_guard<std::mutex> lock(model.c3po_mutex());
  const ModelConfig& cfg = model.checkpoint().config;
  if (prompt.empty()) throw Error("BAD_TOKENS", "empty reference prompt");
  require_score_router(cfg.router, "C3PO");
  if (first_layer < 0 || first_layer >= cfg.layers) throw Error("BAD_ARGUMENT", "first critical layer out of range");
  auto p = std::make_shared<C3poPrefix>();
  p->session = std::make_shared<SessionImpl>(model, 0);
  p->session->check_tokens(prompt, 0);  // the last token skips forward(), which checks the others
  p->session->on_device_ = false;  // NGD steps run the CPU decoder against this cache
  p->first_layer = first_layer;
  p->last = static_cast<int>(prompt.size()) - 1;
  p->model = &model;
  Patch none;
  SessionImpl& s = *p->session;
  if (p->last > 0) s.forward(std::vector<int>(prompt.begin(), prompt.end() - 1), none, LogitsMode::None, nullptr);
  std::vector<int> last{prompt.back()};
  if (s.pos_ + 1 > s.max_context_) throw Error("TOO_LONG", "reference prompt exceeds the context");
  p->h.resize(cfg.hidden);
  s.dec_.embed(last, p->h.data());
  for (int l = 0; l < first_layer; ++l) s.dec_.layer_forward(l, p->h.data(), 1, p->last, s.cache_[l], none, nullptr, nullptr);
  // Llama 4's block is not a weighted sum of expert outputs (the weight scales each expert's input): it runs whole.
  if (cache_first_layer && cfg.moe_layer[first_layer] && !cfg.expert_mlp.input_scaled) {
    // Nothing of this layer depends on the routing at the last position but its mixing: keep the parts.
    s.dec_.attn_forward(first_layer, p->h.data(), 1, p->last, s.cache_[first_layer], nullptr);
    cache_block(*p, p->h.data());
    p->h.clear();
  }
  return p;
}

namespace {

// Cross-entropy of `answer` under the softmax over the listed vocabulary rows only, for one normed row x; adds
// weight * dLoss/dx to dx. Returns the loss.
double restricted_loss(const Mat& head, const float* x, int H, const std::vector<int>& options, int answer, double weight,
                       float* dx) {
  const int n = static_cast<int>(options.size());
  std::vector<float> rows(static_cast<size_t>(n) * H);
  std::vector<double> z(n);
  for (int i = 0; i < n; ++i) {
    float* r = &rows[static_cast<size_t>(i) * H];
    convert_to_f32(head.row(options[i]), head.dtype, r, H);
    double dot = 0;
    for (int d = 0; d < H; ++d) dot += static_cast<double>(x[d]) * r[d];
    z[i] = dot;
  }
  const double mx = *std::max_element(z.begin(), z.end());
  double sum = 0;
  for (double v : z) sum += std::exp(v - mx);
  double loss = 0;
  for (int i = 0; i < n; ++i) {
    const double pi = std::exp(z[i] - mx) / sum;
    if (options[i] == answer) loss = -(z[i] - mx - std::log(sum));
    if (!dx) continue;
    const float g = static_cast<float>(weight * (pi - (options[i] == answer)));
    const float* r = &rows[static_cast<size_t>(i) * H];
    for (int d = 0; d < H; ++d) dx[d] += g * r[d];
  }
  return loss;
}

}  // namespace

C3poResult c3po_ngd(Model& model_in, const std::map<int, std::vector<float>>& omega_init,
                    const std::vector<C3poNeighbour>& neighbours, const C3poOptions& o) {
  ModelImpl& model = engine_model(model_in, "c3po_ngd");
  std::lock_guard<std::mutex> lock(model.c3po_mutex());
  const Checkpoint& ck = model.checkpoint();
  const ModelConfig& cfg = ck.config;
  const int E = cfg.experts, L = cfg.layers, H = cfg.hidden, V = cfg.vocab;
  require_score_router(cfg.router, "C3PO");
  if (o.layers.empty()) throw Error("BAD_ARGUMENT", "C3PO needs at least one critical layer");
  if (neighbours.empty()) throw Error("BAD_ARGUMENT", "C3PO needs at least one neighbour");
  if (o.steps < 0) throw Error("BAD_ARGUMENT", "C3PO needs steps >= 0");
  const int first = *std::min_element(o.layers.begin(), o.layers.end());
  C3poResult res;
  std::map<int, std::vector<float>> theta;
  for (int l : o.layers) {
    if (l < 0 || l >= L || !cfg.moe_layer[l]) throw Error("BAD_ARGUMENT", "critical layer " + std::to_string(l) + " has no router");
    auto it = omega_init.find(l);
    if (it == omega_init.end() || static_cast<int>(it->second.size()) != E)
      throw Error("BAD_ARGUMENT", "no initial routing of size E for critical layer " + std::to_string(l));
    res.omega_before[l] = it->second;
    auto& th = theta[l];
    th.resize(E);
    th = logits_of_scores(cfg, it->second);  // scores_row(th) = ω
    std::vector<int> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return it->second[a] > it->second[b]; });
    order.resize(std::min(E, std::max(1, o.core_experts)));
    std::sort(order.begin(), order.end());
    res.core[l] = order;
  }
  const C3poPrefix& p0 = *neighbours.front().prefix;
  double wsum = 0;
  bool any_full = false;
  for (const auto& n : neighbours) {
    if (!n.prefix || n.prefix->model != &model) throw Error("BAD_ARGUMENT", "neighbour prefix belongs to another model");
    if (n.prefix->first_layer > first) throw Error("BAD_ARGUMENT", "neighbour prefix was cached above the first critical layer");
    if (n.prefix->first_layer != p0.first_layer || n.prefix->cached != p0.cached)
      throw Error("BAD_ARGUMENT", "neighbour prefixes of one call must be cached at the same layer, the same way");
    if (n.answer < 0 || n.answer >= V) throw Error("BAD_TOKENS", "neighbour answer token outside the vocabulary");
    for (int t : n.options)
      if (t < 0 || t >= V) throw Error("BAD_TOKENS", "neighbour option token outside the vocabulary");
    if (!n.options.empty() && std::find(n.options.begin(), n.options.end(), n.answer) == n.options.end())
      throw Error("BAD_ARGUMENT", "a neighbour's answer token must be one of its option tokens");
    any_full |= n.options.empty();
    wsum += std::max(0.f, n.weight);
  }
  if (!(wsum > 0)) throw Error("BAD_ARGUMENT", "neighbour weights must not all be zero");

  // The K neighbours' last positions go up together: attention for the K stacked rows, each against its own KV
  // cache, then the MLP / MoE block once for them, so the weights (and the experts omega selects) are read once for
  // all; the final norm and LM head once for all rows, forward and backward. In stacked patches, row j is "position" j.
  const int K = static_cast<int>(neighbours.size());
  std::vector<const C3poPrefix*> prefixes;
  for (const auto& n : neighbours) prefixes.push_back(n.prefix.get());
  Decoder& dec = p0.session->dec_;
  const int c = p0.first_layer;
  const bool block_cached = p0.cached && c == first;  // the first critical layer is a weighted sum of cached parts
  const int start = block_cached ? first + 1 : first;
  // What does not depend on omega, once: each row's state at the input of `start` when the prefix is cached lower.
  std::vector<float> h0(static_cast<size_t>(K) * H);
  if (!block_cached) {
    Patch none;
    for (int j = 0; j < K; ++j) {
      const C3poPrefix& px = *prefixes[j];
      float* h = h0.data() + static_cast<size_t>(j) * H;
      int l = c;
      if (px.cached) {
        cached_block({&px}, nullptr, cfg, h, nullptr);  // routed as the model routes: below the critical layers
        ++l;
      } else {
        std::copy(px.h.begin(), px.h.end(), h);
      }
      for (; l < first; ++l) px.session->dec_.layer_forward(l, h, 1, px.last, px.session->cache_[l], none, nullptr, nullptr);
    }
  }
  std::vector<float> hs(static_cast<size_t>(K) * H), xs(static_cast<size_t>(K) * H), rnorm(K), dnorm(static_cast<size_t>(K) * H),
      dh(static_cast<size_t>(K) * H), gl(static_cast<size_t>(K) * E);
  std::vector<int> full;  // rows scored over the whole vocabulary
  for (int j = 0; j < K; ++j)
    if (neighbours[j].options.empty()) full.push_back(j);
  std::vector<float> xf(static_cast<size_t>(full.size()) * H), dxf(xf.size()), full_weight;
  std::vector<int> answers;
  std::vector<double> row_loss(full.size());
  for (int j : full) {
    answers.push_back(neighbours[j].answer);
    full_weight.push_back(static_cast<float>(std::max(0.f, neighbours[j].weight) / wsum));
  }
  // Attention: the K rows stacked (projections read once; each row against its own cache) where the attention kind
  // allows, else per neighbour.
  const bool stack_attention = dec.stacks_attention();
  std::vector<KVCache*> row_caches(K);
  std::vector<int> row_pos;
  for (const C3poPrefix* px : prefixes) row_pos.push_back(px->last);
  std::vector<std::vector<LayerSave>> saves(stack_attention ? 1 : K, std::vector<LayerSave>(L));  // attention halves
  std::vector<LayerSave> mlp_saves(L);                                        // MLP halves, neighbours stacked
  LayerSave block_save;
  std::map<int, Adam> adam;
  // Kept across steps, rewritten in place at each: the gradients, the stacked patch, each row's mix-gradient slot.
  std::map<int, std::vector<float>> grad;
  Patch stacked;
  std::map<int, float*> row_grads, no_rows;
  for (int j = 0; j < K; ++j) row_grads[j] = gl.data() + static_cast<size_t>(j) * E;
  const int evaluations = std::max(o.steps, 1) + (o.final_loss ? 1 : 0);
  for (int step = 0; step < evaluations; ++step) {
    const bool need_grad = step < std::max(o.steps, 1);
    for (int l : o.layers) grad[l].assign(E, 0.f);
    for (int l : o.layers) {
      const std::vector<float> omega = scores_row(cfg, theta[l]);
      for (int j = 0; j < K; ++j) stacked.layers[l].mix[j] = omega;
    }
    if (block_cached) cached_block(prefixes, &stacked.layers.at(first), cfg, hs.data(), need_grad ? &block_save : nullptr);
    else hs = h0;
    for (int l = start; l < L; ++l) {
      if (stack_attention) {
        for (int j = 0; j < K; ++j) row_caches[j] = &prefixes[j]->session->cache_[l];
        dec.attn_forward_rows(l, hs.data(), row_caches, row_pos, need_grad ? &saves[0][l] : nullptr);
      } else {
        for (int j = 0; j < K; ++j) {
          const C3poPrefix& px = *prefixes[j];
          px.session->dec_.attn_forward(l, hs.data() + static_cast<size_t>(j) * H, 1, px.last, px.session->cache_[l],
                                        need_grad ? &saves[j][l] : nullptr);
        }
      }
      dec.mlp_forward(l, hs.data(), K, 0, stacked, nullptr, need_grad ? &mlp_saves[l] : nullptr);
    }
    // The neighbours' answers at their last positions, through the final norm and the LM head (or its option rows).
    double loss = 0;
    for (int j = 0; j < K; ++j)
      rnorm[j] = rmsnorm_row(hs.data() + static_cast<size_t>(j) * H, ck.final_norm.data(), H, cfg.eps,
                             xs.data() + static_cast<size_t>(j) * H);
    std::fill(dnorm.begin(), dnorm.end(), 0.f);
    for (int j = 0; j < K; ++j) {
      if (neighbours[j].options.empty()) continue;
      const double w = std::max(0.f, neighbours[j].weight) / wsum;
      loss += w * restricted_loss(ck.lm_head, xs.data() + static_cast<size_t>(j) * H, H, neighbours[j].options,
                                  neighbours[j].answer, w, need_grad ? dnorm.data() + static_cast<size_t>(j) * H : nullptr);
    }
    if (any_full) {
      // The whole vocabulary: loss and input gradient in one read of the LM head (cpu/matmul.h).
      const int F = static_cast<int>(full.size());
      for (int i = 0; i < F; ++i)
        std::copy(xs.begin() + static_cast<size_t>(full[i]) * H, xs.begin() + static_cast<size_t>(full[i] + 1) * H,
                  xf.begin() + static_cast<size_t>(i) * H);
      std::fill(dxf.begin(), dxf.end(), 0.f);
      lm_head_cross_entropy(dec.pool(), xf.data(), F, ck.lm_head, answers.data(), full_weight.data(), row_loss.data(),
                            need_grad ? dxf.data() : nullptr);
      for (int i = 0; i < F; ++i) loss += std::max(0.f, neighbours[full[i]].weight) / wsum * row_loss[i];
      if (need_grad)
        for (int i = 0; i < F; ++i)
          for (int d = 0; d < H; ++d) dnorm[static_cast<size_t>(full[i]) * H + d] += dxf[static_cast<size_t>(i) * H + d];
    }
    res.losses.push_back(loss);
    if (!need_grad) break;
    for (int j = 0; j < K; ++j)
      rmsnorm_row_backward(hs.data() + static_cast<size_t>(j) * H, rnorm[j], ck.final_norm.data(),
                           dnorm.data() + static_cast<size_t>(j) * H, H, dh.data() + static_cast<size_t>(j) * H, false);
    // dLoss/dtheta of every critical layer, summed over the neighbours.
    auto take = [&](int l, const LayerSave& s, bool stop) {
      const bool critical = grad.count(l) > 0;
      if (critical) std::fill(gl.begin(), gl.end(), 0.f);
      const bool below = dec.mlp_backward(l, s, dh.data(), stop, nullptr, critical ? row_grads : no_rows);
      if (critical)
        for (int j = 0; j < K; ++j)
          for (int e = 0; e < E; ++e) grad[l][e] += gl[static_cast<size_t>(j) * E + e];
      return below;
    };
    bool below = true;
    for (int l = L - 1; l >= start && below; --l) {
      below = take(l, mlp_saves[l], l == first);
      if (!below) break;
      if (stack_attention) dec.attn_backward(l, saves[0][l], dh.data());
      else
        for (int j = 0; j < K; ++j)
          prefixes[j]->session->dec_.attn_backward(l, saves[j][l], dh.data() + static_cast<size_t>(j) * H);
    }
    if (block_cached) take(first, block_save, true);
    if (step == 0) res.first_grad = grad;
    if (step >= o.steps) break;  // steps = 0: the evaluation only
    const double lr = cosine_lr(step, o.steps, o.lr_start, o.lr_end);
    for (int l : o.layers) adam[l].step(theta[l], grad[l], lr, &res.core[l]);
  }
  for (int l : o.layers) res.omega_after[l] = scores_row(cfg, theta[l]);
  return res;
}

}  // namespace routescope
