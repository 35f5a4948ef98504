// Continuous rerouting (arXiv:2510.14853): during generation, a router-logit offset delta per adapted layer is
// optimised on the self-supervised next-token loss of the context, after prefill and then every `interval` tokens.
// A round runs only the layers at and above the lowest layer it adapts, from hidden states kept at the lowest
// candidate layer, and chooses its layers from routing confidences recorded while the context was routed. The prompt
// runs as the first round's first step would run it (delta is zero then), and that step takes its activations.
#include <algorithm>
#include <cmath>

#include "adapt/optimizer.h"
#include "cpu/router.h"
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

// One request: delta, the optimiser state, and every candidate layer's routing confidence per position, kept up to
// date by the forwards that route (prefill, decoding, the rebuild after each round) so that a round knows which
// layers to adapt before it runs any of them.
class Rerouter {
 public:
  Rerouter(SessionImpl& s, const Patch& base, const RerouteOptions& o, const std::vector<int>& candidates)
      : s_(s), cfg_(s.m_.checkpoint().config), base_(base), o_(o), candidates_(candidates), current_(base) {
    for (int l : candidates) confidence_[l];
  }

  const Patch& patch() const { return current_; }
  const std::map<int, std::vector<float>>& delta() const { return delta_; }

  // Records C_t = -(1/k) sum over the selected experts of log p for every position a forward routes.
  RoutingCallback confidence_callback() {
    return [this](const LayerRouting& r) {
      auto it = confidence_.find(r.layer);
      if (it == confidence_.end()) return;
      std::vector<float>& c = it->second;
      if (static_cast<int>(c.size()) < r.start + r.count) c.resize(r.start + r.count);
      auto lp_it = current_.layers.find(r.layer);
      const LayerPatch* lp = lp_it == current_.layers.end() ? nullptr : &lp_it->second;
      const int E = r.num_experts, k = r.top_k;
      const std::vector<float>& selection = s_.m_.checkpoint().layers[r.layer].selection_bias;
      const float* bias = selection.empty() ? nullptr : selection.data();
      std::vector<float> p(E), w(k);
      std::vector<int32_t> sel(k);
      for (int i = 0; i < r.count; ++i) {
        bool mixed = false;
        route_token(cfg_.router, r.router_logits + static_cast<size_t>(i) * E, E, k, bias, lp, r.start + i, p.data(), sel.data(),
                    w.data(), &mixed);
        double v = 0;
        for (int j = 0; j < k; ++j) v -= std::log(std::max(1e-30f, p[sel[j]])) / k;
        c[r.start + i] = static_cast<float>(v);
      }
    };
  }

  // The prompt's forward as the first round's first step runs it (delta is zero then: the same patch), keeping what
  // that step needs: every layer's activations from the lowest candidate up, and the last layer's output. The step
  // then skips its forward. Returns the last position's logits.
  std::vector<float> prefill(const std::vector<int>& prompt) {
    s_.check_tokens(prompt, 0);
    const int T = static_cast<int>(prompt.size()), H = cfg_.hidden, L = cfg_.layers;
    s_.prepare_grad_workspace();
    prompt_h_.resize(static_cast<size_t>(T) * H);
    s_.dec_.embed(prompt, prompt_h_.data());
    const RoutingCallback record = confidence_callback();
    for (int l = 0; l < L; ++l) {
      if (l == s_.keep_layer_) s_.hidden_.assign(prompt_h_.begin(), prompt_h_.end());
      s_.dec_.layer_forward(l, prompt_h_.data(), T, 0, s_.cache_[l], current_, record,
                            l >= s_.keep_layer_ ? &s_.grad_saves_[l] : nullptr);
    }
    s_.pos_ = T;
    prompt_saved_ = true;
    std::vector<float> logits(cfg_.vocab);
    s_.dec_.logits(prompt_h_.data() + static_cast<size_t>(T - 1) * H, 1, logits.data());
    return logits;
  }

  // Optimises delta of the selected layers on the next-token loss of the window, then rebuilds the KV cache of the
  // layers at and above the lowest adapted one over the window with the final delta. Returns the last position's
  // logits.
  std::vector<float> round(const std::vector<int>& context, RerouteRound& round) {
    const int T = static_cast<int>(context.size()), H = cfg_.hidden, E = cfg_.experts, L = cfg_.layers;
    const int pos0 = o_.since_last_round ? std::min(last_round_end_, T - 2) : 0, Tw = T - pos0;
    round.position = T;
    round.window_start = pos0;
    // Layer selection by routing confidence over the context (with delta before the round).
    std::vector<std::pair<double, int>> ranked;
    for (int l : candidates_) {
      const std::vector<float>& c = confidence_[l];
      double mean = 0;
      for (int t = 0; t < T; ++t) mean += c[t];
      mean /= T;
      round.confidence[l] = static_cast<float>(mean);
      ranked.push_back({o_.least_confident_first ? -mean : mean, l});
    }
    std::sort(ranked.begin(), ranked.end());
    const int n = std::max(1, static_cast<int>(std::lround(o_.layer_fraction * candidates_.size())));
    std::vector<int> selected;
    for (int i = 0; i < n && i < static_cast<int>(ranked.size()); ++i) selected.push_back(ranked[i].second);
    std::sort(selected.begin(), selected.end());
    round.layers = selected;
    for (int l : selected)
      if (!delta_.count(l)) delta_[l].assign(E, 0.f);
    if (o_.reset_adam_each_round) adam_.clear();
    const int low = selected.front();
    // The first round right after prefill() starts from the prompt's forward: its saves are step 0's.
    const bool reuse = prompt_saved_ && pos0 == 0 && static_cast<size_t>(T) * H == prompt_h_.size();
    prompt_saved_ = false;
    // The window's hidden states entering the lowest adapted layer: the layers below it do not change in this round.
    std::vector<float> h_low;
    if (reuse) {
      h_low = s_.grad_saves_[low].h_in;
    } else {
      h_low.assign(s_.hidden_.begin() + static_cast<size_t>(pos0) * H, s_.hidden_.begin() + static_cast<size_t>(T) * H);
      for (int l = s_.keep_layer_; l < low; ++l)
        s_.dec_.layer_forward(l, h_low.data(), Tw, pos0, s_.cache_[l], current_, nullptr, nullptr);
    }
    const std::vector<int> window(context.begin() + pos0, context.end());
    // Steps: the window's rows from the lowest adapted layer up, writing their keys and values into the session's
    // cache (the rebuild below overwrites them; older positions stay as cached).
    s_.prepare_grad_workspace();
    std::vector<LayerSave>& saves = s_.grad_saves_;
    std::vector<float> h, dh(static_cast<size_t>(Tw) * H);
    std::map<int, std::vector<float>> grads;
    const std::map<int, float*> none;
    for (int step = 0; step < o_.steps; ++step) {
      s_.check_cancelled();
      if (step == 0 && reuse) {
        h = prompt_h_;
      } else {
        h = h_low;
        for (int l = low; l < L; ++l) s_.dec_.layer_forward(l, h.data(), Tw, pos0, s_.cache_[l], current_, nullptr, &saves[l]);
      }
      round.losses.push_back(s_.loss_and_grad(window, h.data(), 1, Tw, dh.data()));
      for (int l : selected) grads[l].assign(E, 0.f);
      for (int l = L - 1; l >= low; --l) {
        auto g = grads.find(l);
        s_.dec_.layer_backward(l, saves[l], dh.data(), l == low, g == grads.end() ? nullptr : g->second.data(), none);
      }
      for (int l : selected) {
        if (o_.adam) adam_[l].step(delta_[l], grads[l], o_.lr);
        else
          for (int e = 0; e < E; ++e) delta_[l][e] -= o_.lr * grads[l][e];
      }
      current_ = with_delta(base_, delta_, E);
    }
    s_.trim_grad_workspace();
    // Rebuild with the final delta (and the routing confidence of the rebuilt positions).
    h = h_low;
    const RoutingCallback record = confidence_callback();
    for (int l = low; l < L; ++l) s_.dec_.layer_forward(l, h.data(), Tw, pos0, s_.cache_[l], current_, record, nullptr);
    last_round_end_ = T;
    std::vector<float> logits(cfg_.vocab);
    s_.dec_.logits(h.data() + static_cast<size_t>(Tw - 1) * H, 1, logits.data());
    return logits;
  }

 private:
  SessionImpl& s_;
  const ModelConfig& cfg_;
  const Patch& base_;
  const RerouteOptions& o_;
  const std::vector<int> candidates_;
  Patch current_;                                // base + delta
  std::map<int, std::vector<float>> delta_;
  std::map<int, Adam> adam_;
  std::map<int, std::vector<float>> confidence_;  // per candidate layer, per position
  int last_round_end_ = 0;
  bool prompt_saved_ = false;      // prefill() left the first round's step-0 activations in the session
  std::vector<float> prompt_h_;    // the prompt's last-layer output from prefill()
};

}  // namespace

RerouteResult generate_rerouted(Session& session, const std::vector<int>& prompt, const Patch& patch,
                                const SampleOptions& opts, const RerouteOptions& o,
                                const std::function<bool(int)>& on_token,
                                const std::function<void(const RerouteRound&)>& on_round) {
  SessionImpl& s = engine_session(session, "generate_rerouted");
  SessionImpl::CallScope scope(s);
  const ModelConfig& cfg = s.m_.checkpoint().config;
  require_score_router(cfg.router, "continuous rerouting");
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
  Rerouter rr(s, patch, o, candidates);
  try {
    const RoutingCallback record = rr.confidence_callback();
    // With a round to come right after it, the prompt runs as that round's first step would run it.
    std::vector<float> logits = o.steps > 0 && prompt.size() >= 2
                                    ? rr.prefill(prompt)
                                    : s.forward(prompt, rr.patch(), LogitsMode::Last, record).logits;
    int since = 0;
    auto maybe_round = [&] {
      if (o.steps == 0 || context.size() < 2) return;
      RerouteRound round;
      logits = rr.round(context, round);
      round.delta = rr.delta();
      res.rounds.push_back(round);
      if (on_round) on_round(round);
      since = 0;
    };
    maybe_round();
    res.tokens = s.decode(logits, opts, on_token, [&](int token) {
      context.push_back(token);
      logits = s.forward({token}, rr.patch(), LogitsMode::Last, record).logits;
      if (++since >= o.interval) maybe_round();
      return logits;
    });
  } catch (...) {
    s.keep_layer_ = -1;
    throw;
  }
  res.delta = rr.delta();
  s.keep_layer_ = -1;
  return res;
}

}  // namespace routescope
