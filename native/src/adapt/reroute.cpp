// Continuous rerouting (arXiv:2510.14853): during generation, a router-logit offset delta per adapted layer is
// optimised on the self-supervised next-token loss of the context, after prefill and then every `interval` tokens.
// A round replays the context from the hidden states kept at the lowest candidate layer, so it costs the layers
// above it only.
#include <algorithm>
#include <cmath>

#include "adapt/optimizer.h"
#include "engine_impl.h"
#include "routescope/adapt.h"

namespace routescope {

namespace {

// The base patch plus delta as an additive router-logit bias in every adapted layer.
Patch with_delta(const Patch& base, const std::map<int, std::vector<float>>& delta, int E) {
  Patch p = base;
  for (const auto& kv : delta) {
    LayerPatch& lp = p.layers[kv.first];
    if (lp.bias.empty()) lp.bias.assign(E, 0.f);
    for (int e = 0; e < E; ++e) lp.bias[e] += kv.second[e];
  }
  return p;
}

// One round over the current context: optimise delta of the selected layers on the next-token loss, then rebuild
// the KV cache with the final delta. Returns the last position's logits.
std::vector<float> reroute_round(SessionImpl& s, const std::vector<int>& context, const Patch& base,
                                 const RerouteOptions& o, const std::vector<int>& candidates,
                                 std::map<int, std::vector<float>>& delta, RerouteRound& round) {
  const ModelConfig& cfg = s.m_.checkpoint().config;
  const int T = static_cast<int>(context.size()), H = cfg.hidden, E = cfg.experts, k = cfg.top_k, L = cfg.layers;
  const int store = s.keep_layer_;
  round.position = T;
  std::vector<int> selected;
  std::map<int, Adam> adam;
  int base_layer = store;
  std::vector<float> h_base(s.hidden_.begin(), s.hidden_.begin() + static_cast<size_t>(T) * H);
  for (int step = 0; step < o.steps; ++step) {
    s.check_cancelled();
    const Patch patch = with_delta(base, delta, E);
    const int lowest = selected.empty() ? store : *std::min_element(selected.begin(), selected.end());
    std::vector<float> h = h_base;
    std::vector<KVCache> scratch(L);
    std::vector<LayerSave> saves(L);
    for (int l = base_layer; l < L; ++l)
      s.dec_.layer_forward(l, h.data(), T, 0, scratch[l], patch, nullptr, l >= lowest ? &saves[l] : nullptr);
    if (selected.empty()) {
      // Routing confidence C_l = -(1/k) sum over selected experts of log p, averaged over positions.
      std::vector<std::pair<double, int>> ranked;
      for (int l : candidates) {
        const LayerSave& sv = saves[l];
        double c = 0;
        for (int t = 0; t < T; ++t)
          for (int j = 0; j < k; ++j)
            c -= std::log(std::max(1e-30f, sv.p[static_cast<size_t>(t) * E + sv.sel[static_cast<size_t>(t) * k + j]])) / k;
        c /= T;
        round.confidence[l] = static_cast<float>(c);
        ranked.push_back({o.least_confident_first ? -c : c, l});
      }
      std::sort(ranked.begin(), ranked.end());
      const int n = std::max(1, static_cast<int>(std::lround(o.layer_fraction * candidates.size())));
      for (int i = 0; i < n && i < static_cast<int>(ranked.size()); ++i) selected.push_back(ranked[i].second);
      std::sort(selected.begin(), selected.end());
      round.layers = selected;
      for (int l : selected)
        if (!delta.count(l)) delta[l].assign(E, 0.f);
    }
    std::vector<float> dh(static_cast<size_t>(T) * H);
    round.losses.push_back(s.loss_and_grad(context, h.data(), 1, T, dh.data()));
    const int low = selected.front();
    std::map<int, std::vector<float>> grads;
    std::map<int, float*> none;
    for (int l : selected) grads[l].assign(E, 0.f);
    for (int l = L - 1; l >= low; --l) {
      auto g = grads.find(l);
      s.dec_.layer_backward(l, saves[l], dh.data(), l == low, g == grads.end() ? nullptr : g->second.data(), none);
    }
    if (step == 0 && low > base_layer) {  // later steps start at the lowest adapted layer
      h_base = saves[low].h_in;
      base_layer = low;
    }
    for (int l : selected) {
      if (o.adam) adam[l].step(delta[l], grads[l], o.lr);
      else
        for (int e = 0; e < E; ++e) delta[l][e] -= o.lr * grads[l][e];
    }
  }
  // Rebuild the KV cache of every layer from the stored hidden states with the final delta.
  const Patch patch = with_delta(base, delta, E);
  std::vector<float> h(s.hidden_.begin(), s.hidden_.begin() + static_cast<size_t>(T) * H);
  for (int l = store; l < L; ++l) s.dec_.layer_forward(l, h.data(), T, 0, s.cache_[l], patch, nullptr, nullptr);
  std::vector<float> logits(cfg.vocab);
  s.dec_.logits(h.data() + static_cast<size_t>(T - 1) * H, 1, logits.data());
  return logits;
}

}  // namespace

RerouteResult generate_rerouted(Session& session, const std::vector<int>& prompt, const Patch& patch,
                                const SampleOptions& opts, const RerouteOptions& o,
                                const std::function<bool(int)>& on_token,
                                const std::function<void(const RerouteRound&)>& on_round) {
  SessionImpl& s = engine_session(session, "generate_rerouted");
  SessionImpl::CallScope scope(s);
  const ModelConfig& cfg = s.m_.checkpoint().config;
  std::vector<int> candidates = o.layers;
  if (candidates.empty())
    for (int l = 0; l < cfg.layers; ++l)
      if (cfg.moe_layer[l]) candidates.push_back(l);
  for (int l : candidates)
    if (l < 0 || l >= cfg.layers || !cfg.moe_layer[l])
      throw Error("BAD_ARGUMENT", "rerouting layer " + std::to_string(l) + " has no router");
  if (o.steps < 0 || o.interval < 1 || !(o.layer_fraction > 0 && o.layer_fraction <= 1))
    throw Error("BAD_ARGUMENT", "rerouting needs steps >= 0, interval >= 1 and 0 < layer fraction <= 1");
  s.clear();
  s.on_device_ = false;  // rounds need the CPU decoder's cache and saved activations
  s.keep_layer_ = *std::min_element(candidates.begin(), candidates.end());
  RerouteResult res;
  std::vector<int> context = prompt;
  try {
    std::vector<float> logits = s.forward(prompt, patch, LogitsMode::Last, nullptr).logits;
    int since = 0;
    auto maybe_round = [&] {
      if (o.steps == 0 || context.size() < 2) return;
      RerouteRound round;
      logits = reroute_round(s, context, patch, o, candidates, res.delta, round);
      round.delta = res.delta;
      res.rounds.push_back(round);
      if (on_round) on_round(round);
      since = 0;
    };
    maybe_round();
    res.tokens = s.decode(logits, opts, on_token, [&](int token) {
      context.push_back(token);
      logits = s.forward({token}, with_delta(patch, res.delta, cfg.experts), LogitsMode::Last, nullptr).logits;
      if (++since >= o.interval) maybe_round();
      return logits;
    });
  } catch (...) {
    s.keep_layer_ = -1;
    throw;
  }
  s.keep_layer_ = -1;
  return res;
}

}  // namespace routescope
