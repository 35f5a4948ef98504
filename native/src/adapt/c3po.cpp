// C3PO (arXiv:2504.07964), the NGD variant: re-mix a test prompt's last-position routing in critical layers so that
// the kernel-weighted loss of reference neighbours, run with that routing, goes down. Each neighbour's prompt is
// cached once (c3po_prefix); an NGD step replays only its last position from the first critical layer up.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "adapt/optimizer.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "engine_impl.h"
#include "routescope/adapt.h"

namespace routescope {

struct C3poPrefix {
  std::unique_ptr<SessionImpl> session;  // KV cache: every layer for positions < last, layers < first for last
  std::vector<float> h;                  // hidden state of the last token at the input of first_layer
  int first_layer = 0;
  int last = 0;                          // position of the last prompt token
  const ModelImpl* model = nullptr;      // the model whose caches these are
};

std::shared_ptr<C3poPrefix> c3po_prefix(Model& model_in, const std::vector<int>& prompt, int first_layer) {
  ModelImpl& model = engine_model(model_in, "c3po_prefix");
  std::lock_guard<std::mutex> lock(model.c3po_mutex());
  const ModelConfig& cfg = model.checkpoint().config;
  if (prompt.empty()) throw Error("BAD_TOKENS", "empty reference prompt");
  if (first_layer < 0 || first_layer >= cfg.layers) throw Error("BAD_ARGUMENT", "first critical layer out of range");
  auto p = std::make_shared<C3poPrefix>();
  p->session = std::make_unique<SessionImpl>(model, 0);
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
  return p;
}

C3poResult c3po_ngd(Model& model_in, const std::map<int, std::vector<float>>& omega_init,
                    const std::vector<C3poNeighbour>& neighbours, const C3poOptions& o) {
  ModelImpl& model = engine_model(model_in, "c3po_ngd");
  std::lock_guard<std::mutex> lock(model.c3po_mutex());
  const Checkpoint& ck = model.checkpoint();
  const ModelConfig& cfg = ck.config;
  const int E = cfg.experts, L = cfg.layers, H = cfg.hidden;
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
  double wsum = 0;
  for (const auto& n : neighbours) {
    if (!n.prefix || n.prefix->model != &model) throw Error("BAD_ARGUMENT", "neighbour prefix belongs to another model");
    if (n.prefix->first_layer > first) throw Error("BAD_ARGUMENT", "neighbour prefix was cached above the first critical layer");
    if (n.answer < 0 || n.answer >= cfg.vocab) throw Error("BAD_TOKENS", "neighbour answer token outside the vocabulary");
    wsum += std::max(0.f, n.weight);
  }
  if (!(wsum > 0)) throw Error("BAD_ARGUMENT", "neighbour weights must not all be zero");
  std::map<int, Adam> adam;
  // Per step, the K neighbours' last positions go up together: in each layer from the first critical one, attention
  // per neighbour (its own KV cache), then the MLP / MoE block once for the K stacked rows; the final norm and LM
  // head once for all rows, forward and backward. The largest matrices touched (the LM head, the experts omega
  // selects) are read the same number of times whatever K is.
  const int K = static_cast<int>(neighbours.size());
  std::vector<float> hs(static_cast<size_t>(K) * H), xs(static_cast<size_t>(K) * H), rnorm(K),
      logits(static_cast<size_t>(K) * cfg.vocab), dnorm(static_cast<size_t>(K) * H);
  std::vector<std::vector<LayerSave>> saves(K, std::vector<LayerSave>(L));  // attention halves, per neighbour
  std::vector<LayerSave> mlp_saves(L);                                        // MLP halves, neighbours stacked
  Decoder& dec = neighbours.front().prefix->session->dec_;
  for (int step = 0; step <= o.steps; ++step) {
    double loss = 0;
    std::map<int, std::vector<float>> grad;
    for (int l : o.layers) grad[l].assign(E, 0.f);
    const bool need_grad = !(step == o.steps && step > 0);  // the final evaluation needs no gradient
    std::map<int, std::vector<float>> omega;
    for (int l : o.layers) omega[l] = scores_row(cfg, theta[l]);
    // Layers below the first critical one (a prefix cached lower down) run per neighbour, with its own positions.
    for (int j = 0; j < K; ++j) {
      C3poPrefix& p = *neighbours[j].prefix;
      SessionImpl& s = *p.session;
      Patch patch;
      for (int l : o.layers) patch.layers[l].mix[p.last] = omega[l];
      float* h = hs.data() + static_cast<size_t>(j) * H;
      std::copy(p.h.begin(), p.h.end(), h);
      for (int l = p.first_layer; l < first; ++l) s.dec_.layer_forward(l, h, 1, p.last, s.cache_[l], patch, nullptr, nullptr);
    }
    // From the first critical layer up: attention per neighbour (its own KV cache), then the MLP / MoE block once
    // for the K stacked rows. Every row takes its routing from the same omega, so the selected experts are read
    // once for all neighbours instead of once each. In the stacked patch, row j is "position" j.
    Patch stacked;
    for (int l : o.layers)
      for (int j = 0; j < K; ++j) stacked.layers[l].mix[j] = omega[l];
    for (int l = first; l < L; ++l) {
      for (int j = 0; j < K; ++j) {
        C3poPrefix& p = *neighbours[j].prefix;
        p.session->dec_.attn_forward(l, hs.data() + static_cast<size_t>(j) * H, 1, p.last, p.session->cache_[l],
                                     need_grad ? &saves[j][l] : nullptr);
      }
      dec.mlp_forward(l, hs.data(), K, 0, stacked, nullptr, need_grad ? &mlp_saves[l] : nullptr);
    }
    // Cross-entropy of each neighbour's answer token at its last position, through the final norm and LM head.
    for (int j = 0; j < K; ++j)
      rnorm[j] = rmsnorm_row(hs.data() + static_cast<size_t>(j) * H, ck.final_norm.data(), H, cfg.eps,
                             xs.data() + static_cast<size_t>(j) * H);
    matmul(dec.pool(), xs.data(), K, ck.lm_head, logits.data());
    for (int j = 0; j < K; ++j) {
      float* z = logits.data() + static_cast<size_t>(j) * cfg.vocab;
      const int answer = neighbours[j].answer;
      const float mx = *std::max_element(z, z + cfg.vocab);
      double sum = 0;
      for (int i = 0; i < cfg.vocab; ++i) sum += std::exp(static_cast<double>(z[i]) - mx);
      const double w = std::max(0.f, neighbours[j].weight) / wsum;
      loss += w * -(z[answer] - mx - std::log(sum));
      if (!need_grad) continue;
      for (int i = 0; i < cfg.vocab; ++i)
        z[i] = static_cast<float>(w * (std::exp(static_cast<double>(z[i]) - mx) / sum - (i == answer)));
    }
    if (need_grad) {
      matmul_backward_input(dec.pool(), logits.data(), K, ck.lm_head, dnorm.data(), false);
      std::vector<float> dh(static_cast<size_t>(K) * H);
      for (int j = 0; j < K; ++j)
        rmsnorm_row_backward(hs.data() + static_cast<size_t>(j) * H, rnorm[j], ck.final_norm.data(),
                             dnorm.data() + static_cast<size_t>(j) * H, H, dh.data() + static_cast<size_t>(j) * H, false);
      std::vector<float> gl(static_cast<size_t>(K) * E);
      for (int l = L - 1; l >= first; --l) {
        std::map<int, float*> mg;
        const bool critical = grad.count(l) > 0;
        if (critical) {
          std::fill(gl.begin(), gl.end(), 0.f);
          for (int j = 0; j < K; ++j) mg[j] = gl.data() + static_cast<size_t>(j) * E;
        }
        const bool below = dec.mlp_backward(l, mlp_saves[l], dh.data(), l == first, nullptr, mg);
        if (critical)
          for (int j = 0; j < K; ++j)
            for (int e = 0; e < E; ++e) grad[l][e] += gl[static_cast<size_t>(j) * E + e];
        if (!below) break;
        for (int j = 0; j < K; ++j)
          neighbours[j].prefix->session->dec_.attn_backward(l, saves[j][l], dh.data() + static_cast<size_t>(j) * H);
      }
    }
    res.losses.push_back(loss);
    if (step == 0) res.first_grad = grad;
    if (step == o.steps) break;
    const double lr = cosine_lr(step, o.steps, o.lr_start, o.lr_end);
    for (int l : o.layers) adam[l].step(theta[l], grad[l], lr, &res.core[l]);
  }
  for (int l : o.layers) res.omega_after[l] = scores_row(cfg, theta[l]);
  return res;
}

}  // namespace routescope
