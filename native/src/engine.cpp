// Model and Session: the engine's public face over the CPU decoder.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>

#include "cpu/forward.h"
#include "cuda/backend.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "cpu/router.h"
#include "model/model.h"
#include "routescope/engine.h"

namespace routescope {

namespace {

class ModelImpl;

// Marks a public call; the outermost one starts with a cleared cancel flag, nested ones (generate's forwards)
// keep a cancel that arrived in between.
class CallScope {
 public:
  CallScope(int& depth, std::atomic<bool>& cancel) : depth_(depth) {
    if (depth_++ == 0) cancel = false;
  }
  ~CallScope() { --depth_; }

 private:
  int& depth_;
};

class SessionImpl : public Session {
 public:
  SessionImpl(ModelImpl& model, int max_context);
  ForwardResult forward(const std::vector<int>& tokens, const Patch& patch, LogitsMode mode,
                        const RoutingCallback& on_layer) override;
  std::vector<int> generate(const std::vector<int>& prompt, const Patch& patch, const SampleOptions& opts,
                            const std::function<bool(int)>& on_token, const RoutingCallback& on_layer) override;
  GradResult grad(const std::vector<int>& tokens, const Patch& patch, const GradRequest& req) override;
  RerouteResult generate_rerouted(const std::vector<int>& prompt, const Patch& patch, const SampleOptions& opts,
                                  const RerouteOptions& ropts, const std::function<bool(int)>& on_token,
                                  const std::function<void(const RerouteRound&)>& on_round) override;
  std::vector<float> mean_hidden(const std::vector<int>& tokens, int layer) override;
  void reset() override;
  void truncate(int position) override;
  int position() const override { return pos_; }
  void cancel() override { cancel_ = true; }

 private:
  void check_tokens(const std::vector<int>& tokens, int already) const;
  // Loss over target tokens [ts, te) from the last layer's output h (all positions); writes dLoss/dh when dh.
  double loss_and_grad(const std::vector<int>& tokens, const float* h, int ts, int te, float* dh);
  // One optimisation round of rerouting over the current context; returns the last position's logits.
  std::vector<float> reroute_round(const std::vector<int>& context, const Patch& base, const RerouteOptions& o,
                                   const std::vector<int>& candidates, std::map<int, std::vector<float>>& delta,
                                   RerouteRound& round);

 public:
  ModelImpl& m_;
  Decoder dec_;
  int max_context_;
  int pos_ = 0;
  std::vector<KVCache> cache_;
  std::atomic<bool> cancel_{false};
  std::unique_ptr<cuda::DeviceSession> device_;  // GPU KV cache when the model runs on CUDA
  bool on_device_ = false;     // this session's cache lives on the GPU (rerouting and C3PO run on the CPU path)
  int depth_ = 0;              // nesting of public calls: only the outermost clears a pending cancel
  int keep_layer_ = -1;        // when >= 0, forward() keeps the hidden input of this layer for every position
  std::vector<float> hidden_;  // [pos_, H]
};


class ModelImpl : public Model {
 public:
  ModelImpl(std::unique_ptr<Checkpoint> ck, const LoadOptions& opts) : ck_(std::move(ck)) {
    int threads = opts.threads > 0 ? opts.threads : static_cast<int>(std::thread::hardware_concurrency());
    threads = std::max(1, std::min(threads, 256));
    pool_ = std::make_unique<ThreadPool>(threads);
    info_ = ck_->info;
    info_.threads = threads;
    info_.backend = "cpu";
    if (opts.backend == "cuda") {
      const std::string gap = cuda::unsupported(ck_->config);
      if (!gap.empty())
        throw Error("NO_CUDA", "the CUDA backend does not run " + info_.model_type + " models yet (" + gap +
                                   "); use backend cpu");
      device_ = cuda::DeviceModel::upload(*ck_);  // throws NO_CUDA / OOM with the reason
      info_.backend = "cuda";
      info_.device = device_->device_name();
    } else if (opts.backend == "auto") {
      const std::string why = cuda::probe();
      info_.backend_note = why.empty() ? "a CUDA device is present, but auto keeps the CPU until the CUDA backend has been "
                                         "validated on a GPU; pass backend cuda to use it"
                                       : "CPU: " + why;
    }
  }
  cuda::DeviceModel* device() { return device_.get(); }
  const ModelInfo& info() const override { return info_; }
  std::unique_ptr<Session> create_session(int max_context) override {
    return std::make_unique<SessionImpl>(*this, max_context);
  }
  const Checkpoint& checkpoint() const { return *ck_; }
  ThreadPool& pool() { return *pool_; }
  std::shared_ptr<C3poPrefix> c3po_prefix(const std::vector<int>& prompt, int first_layer) override;
  C3poResult c3po_ngd(const std::map<int, std::vector<float>>& omega_init, const std::vector<C3poNeighbour>& neighbours,
                      const C3poOptions& opts) override;

 private:
  std::unique_ptr<Checkpoint> ck_;
  std::unique_ptr<ThreadPool> pool_;
  ModelInfo info_;
  std::unique_ptr<cuda::DeviceModel> device_;  // weights on the GPU when the backend is cuda
};

void SessionImpl::reset() {
  pos_ = 0;
  hidden_.clear();
  on_device_ = m_.device() != nullptr;
}

void SessionImpl::truncate(int position) {
  if (position < 0 || position > pos_)
    throw Error("BAD_ARGUMENT", "truncate(" + std::to_string(position) + "): the session holds " + std::to_string(pos_) +
                                    " positions");
  if (position == 0) return reset();
  pos_ = position;
  const size_t H = static_cast<size_t>(m_.checkpoint().config.hidden);
  if (hidden_.size() > pos_ * H) hidden_.resize(pos_ * H);
}

SessionImpl::SessionImpl(ModelImpl& model, int max_context)
    : m_(model), dec_(model.checkpoint(), model.pool()), cache_(model.checkpoint().config.layers) {
  const int limit = model.info().max_position_embeddings;
  max_context_ = max_context > 0 ? std::min(max_context, limit) : limit;
  dec_.cancel_flag = &cancel_;
  on_device_ = model.device() != nullptr;  // the GPU KV cache is allocated on first use
}

void SessionImpl::check_tokens(const std::vector<int>& tokens, int already) const {
  const int V = m_.info().vocab_size;
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= V)
      throw Error("BAD_TOKENS", "token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                                    " is outside the vocabulary (0.." + std::to_string(V - 1) + ")");
  const int total = already + static_cast<int>(tokens.size());
  if (total > max_context_)
    throw Error("TOO_LONG", std::to_string(tokens.size()) + " tokens" +
                                (already ? " after " + std::to_string(already) + " cached" : std::string()) +
                                " exceed the context of " + std::to_string(max_context_) +
                                " positions (max_position_embeddings " +
                                std::to_string(m_.info().max_position_embeddings) + ")");
}

ForwardResult SessionImpl::forward(const std::vector<int>& tokens, const Patch& patch, LogitsMode mode,
                                   const RoutingCallback& on_layer) {
  CallScope scope(depth_, cancel_);
  if (tokens.empty()) throw Error("BAD_TOKENS", "no tokens to run");
  check_tokens(tokens, pos_);
  const ModelConfig& cfg = m_.checkpoint().config;
  const int T = static_cast<int>(tokens.size()), H = cfg.hidden, pos0 = pos_;
  if (on_device_) {
    if (!device_) device_ = m_.device()->session(max_context_);
    ForwardResult res;
    const int first = mode == LogitsMode::Last ? T - 1 : 0;
    res.rows = mode == LogitsMode::None ? 0 : T - first;
    try {
      device_->forward(tokens, pos0, patch, on_layer, first, res.rows, res.logits, &cancel_);
    } catch (...) {
      pos_ = pos0;
      throw;
    }
    pos_ = pos0 + T;
    return res;
  }
  std::vector<float> h(static_cast<size_t>(T) * H);
  dec_.embed(tokens, h.data());
  try {
    for (int l = 0; l < cfg.layers; ++l) {
      if (l == keep_layer_) {
        hidden_.resize(static_cast<size_t>(pos0) * H);
        hidden_.insert(hidden_.end(), h.begin(), h.end());
      }
      dec_.layer_forward(l, h.data(), T, pos0, cache_[l], patch, on_layer, nullptr);
    }
  } catch (...) {
    pos_ = pos0;  // the cache rows written by the aborted call are not valid
    if (keep_layer_ >= 0) hidden_.resize(static_cast<size_t>(pos0) * H);
    throw;
  }
  pos_ = pos0 + T;
  ForwardResult res;
  if (mode == LogitsMode::None) return res;
  const int first = mode == LogitsMode::Last ? T - 1 : 0;
  res.rows = T - first;
  res.logits.resize(static_cast<size_t>(res.rows) * cfg.vocab);
  dec_.logits(h.data() + static_cast<size_t>(first) * H, res.rows, res.logits.data());
  return res;
}

std::vector<float> SessionImpl::mean_hidden(const std::vector<int>& tokens, int layer) {
  const ModelConfig& cfg = m_.checkpoint().config;
  if (layer < 0 || layer > cfg.layers)
    throw Error("BAD_ARGUMENT", "embedding layer " + std::to_string(layer) + " is outside 0.." + std::to_string(cfg.layers));
  if (tokens.empty()) throw Error("BAD_TOKENS", "no tokens to embed");
  reset();
  CallScope scope(depth_, cancel_);
  check_tokens(tokens, 0);
  const int T = static_cast<int>(tokens.size()), H = cfg.hidden;
  std::vector<float> h(static_cast<size_t>(T) * H);
  dec_.embed(tokens, h.data());
  Patch none;
  for (int l = 0; l < layer; ++l) dec_.layer_forward(l, h.data(), T, 0, cache_[l], none, nullptr, nullptr);
  reset();
  std::vector<float> mean(H, 0.f);
  for (int t = 0; t < T; ++t)
    for (int d = 0; d < H; ++d) mean[d] += h[static_cast<size_t>(t) * H + d] / T;
  return mean;
}

double SessionImpl::loss_and_grad(const std::vector<int>& tokens, const float* h, int ts, int te, float* dh) {
  const ModelConfig& cfg = m_.checkpoint().config;
  const Checkpoint& ck = m_.checkpoint();
  const int H = cfg.hidden, V = cfg.vocab, rows = te - ts;
  std::vector<float> logits(static_cast<size_t>(rows) * V);
  dec_.logits(h + static_cast<size_t>(ts - 1) * H, rows, logits.data());
  double loss = 0;
  for (int r = 0; r < rows; ++r) {
    float* z = &logits[static_cast<size_t>(r) * V];
    const float mx = *std::max_element(z, z + V);
    double sum = 0;
    for (int i = 0; i < V; ++i) sum += std::exp(static_cast<double>(z[i]) - mx);
    const int target = tokens[ts + r];
    loss += -(z[target] - mx - std::log(sum));
    if (dh)  // z becomes dLoss/dz in place
      for (int i = 0; i < V; ++i) z[i] = static_cast<float>((std::exp(static_cast<double>(z[i]) - mx) / sum - (i == target)) / rows);
  }
  if (dh) {
    std::vector<float> dnorm(static_cast<size_t>(rows) * H);
    matmul_backward_input(dec_.pool(), logits.data(), rows, ck.lm_head, dnorm.data(), false);
    const int T = static_cast<int>(tokens.size());
    std::fill(dh, dh + static_cast<size_t>(T) * H, 0.f);
    for (int r = 0; r < rows; ++r) {
      const size_t t = static_cast<size_t>(ts - 1 + r);
      const float* x = h + t * H;
      double ss = 0;
      for (int d = 0; d < H; ++d) ss += static_cast<double>(x[d]) * x[d];
      const float rr = static_cast<float>(1.0 / std::sqrt(ss / H + cfg.eps));
      rmsnorm_row_backward(x, rr, ck.final_norm.data(), &dnorm[static_cast<size_t>(r) * H], H, dh + t * H, false);
    }
  }
  return loss / rows;
}

int sample(const float* logits, int V, const SampleOptions& o, std::mt19937_64& rng) {
  if (o.temperature <= 0.f) {
    int best = 0;
    for (int i = 1; i < V; ++i)
      if (logits[i] > logits[best]) best = i;
    return best;
  }
  std::vector<std::pair<float, int>> p(V);
  float mx = *std::max_element(logits, logits + V);
  double sum = 0;
  for (int i = 0; i < V; ++i) {
    float e = std::exp((logits[i] - mx) / o.temperature);
    p[i] = {e, i};
    sum += e;
  }
  std::sort(p.begin(), p.end(), [](auto& a, auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
  double keep = 0;
  size_t n = 0;
  const double top_p = o.top_p > 0 && o.top_p < 1 ? o.top_p : 1.0;
  while (n < p.size()) {
    keep += p[n].first / sum;
    ++n;
    if (keep >= top_p) break;
  }
  double r = std::uniform_real_distribution<double>(0.0, keep)(rng) * sum, acc = 0;
  for (size_t i = 0; i < n; ++i) {
    acc += p[i].first;
    if (r <= acc) return p[i].second;
  }
  return p[n - 1].second;
}

std::vector<int> SessionImpl::generate(const std::vector<int>& prompt, const Patch& patch, const SampleOptions& opts,
                                       const std::function<bool(int)>& on_token, const RoutingCallback& on_layer) {
  CallScope scope(depth_, cancel_);
  std::mt19937_64 rng(opts.seed);
  std::vector<int> out;
  ForwardResult r = forward(prompt, patch, LogitsMode::Last, on_layer);
  const int V = m_.info().vocab_size;
  while (static_cast<int>(out.size()) < opts.max_new_tokens) {
    int tok = sample(r.logits.data(), V, opts, rng);
    if (std::find(opts.stop_tokens.begin(), opts.stop_tokens.end(), tok) != opts.stop_tokens.end()) break;
    out.push_back(tok);
    if (on_token && !on_token(tok)) break;
    if (static_cast<int>(out.size()) >= opts.max_new_tokens || pos_ + 1 > max_context_) break;
    r = forward({tok}, patch, LogitsMode::Last, on_layer);
  }
  return out;
}

GradResult SessionImpl::grad(const std::vector<int>& tokens, const Patch& patch_in, const GradRequest& req) {
  CallScope scope(depth_, cancel_);
  const ModelConfig& cfg = m_.checkpoint().config;
  const int T = static_cast<int>(tokens.size()), H = cfg.hidden, E = cfg.experts;
  if (T < 2) throw Error("BAD_TOKENS", "a loss needs at least 2 tokens");
  check_tokens(tokens, 0);
  const int ts = req.target_start < 0 ? 1 : req.target_start, te = req.target_end < 0 ? T : req.target_end;
  if (ts < 1 || te > T || ts >= te)
    throw Error("BAD_ARGUMENT", "target span [" + std::to_string(ts) + ", " + std::to_string(te) +
                                    ") must lie within [1, " + std::to_string(T) + ") and be non-empty");
  auto is_moe = [&](int l) { return l >= 0 && l < cfg.layers && cfg.moe_layer[l]; };
  int lowest = cfg.layers;
  for (int l : req.bias_layers) {
    if (!is_moe(l)) throw Error("BAD_ARGUMENT", "layer " + std::to_string(l) + " has no router");
    lowest = std::min(lowest, l);
  }
  Patch patch = patch_in;
  if (req.mix_layer >= 0) {
    if (!is_moe(req.mix_layer)) throw Error("BAD_ARGUMENT", "mix layer " + std::to_string(req.mix_layer) + " has no router");
    if (req.mix_position < 0 || req.mix_position >= T) throw Error("BAD_ARGUMENT", "mix position outside the sequence");
    if (static_cast<int>(req.mix_logits.size()) != E) throw Error("BAD_ARGUMENT", "mix logits need one value per expert");
    std::vector<float> row(E);
    scores_from_logits(cfg.router.scoring, req.mix_logits.data(), E, row.data());  // softmax or sigmoid of θ
    patch.layers[req.mix_layer].mix[req.mix_position] = row;
    lowest = std::min(lowest, req.mix_layer);
  }
  if (lowest == cfg.layers) lowest = cfg.layers - 1;  // loss only

  // Forward: plain below the lowest layer asked for, keeping activations from there up.
  std::vector<float> h(static_cast<size_t>(T) * H);
  dec_.embed(tokens, h.data());
  std::vector<KVCache> scratch(cfg.layers);
  std::vector<LayerSave> saves(cfg.layers);
  for (int l = 0; l < cfg.layers; ++l)
    dec_.layer_forward(l, h.data(), T, 0, scratch[l], patch, nullptr, l >= lowest ? &saves[l] : nullptr);
  GradResult res;
  std::vector<float> dh(static_cast<size_t>(T) * H);
  res.loss = loss_and_grad(tokens, h.data(), ts, te, dh.data());
  for (int l : req.bias_layers) res.bias_grad[l].assign(E, 0.f);
  if (req.mix_layer >= 0) res.mix_grad.assign(E, 0.f);
  if (!req.bias_layers.empty() || req.mix_layer >= 0) {
    std::map<int, float*> none, mix;
    if (req.mix_layer >= 0) mix[req.mix_position] = res.mix_grad.data();
    for (int l = cfg.layers - 1; l >= lowest; --l) {
      if (cancel_) throw Error("CANCELLED", "cancelled");
      auto bg = res.bias_grad.find(l);
      dec_.layer_backward(l, saves[l], dh.data(), l == lowest, bg == res.bias_grad.end() ? nullptr : bg->second.data(),
                          l == req.mix_layer ? mix : none);
      saves[l] = LayerSave();
    }
  }
  return res;
}

Patch with_delta(const Patch& base, const std::map<int, std::vector<float>>& delta, int E) {
  Patch p = base;
  for (const auto& kv : delta) {
    LayerPatch& lp = p.layers[kv.first];
    if (lp.bias.empty()) lp.bias.assign(E, 0.f);
    for (int e = 0; e < E; ++e) lp.bias[e] += kv.second[e];
  }
  return p;
}

struct Adam {
  std::vector<double> m, v;
  int t = 0;
  void step(std::vector<float>& x, const std::vector<float>& g, double lr, const std::vector<int>* only = nullptr) {
    if (m.empty()) m.assign(x.size(), 0.0), v.assign(x.size(), 0.0);
    ++t;
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    const double c1 = 1 - std::pow(b1, t), c2 = 1 - std::pow(b2, t);
    auto upd = [&](size_t i) {
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      x[i] -= static_cast<float>(lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps));
    };
    if (only) for (int i : *only) upd(static_cast<size_t>(i));
    else for (size_t i = 0; i < x.size(); ++i) upd(i);
  }
};

std::vector<float> SessionImpl::reroute_round(const std::vector<int>& context, const Patch& base,
                                              const RerouteOptions& o, const std::vector<int>& candidates,
                                              std::map<int, std::vector<float>>& delta, RerouteRound& round) {
  const ModelConfig& cfg = m_.checkpoint().config;
  const int T = static_cast<int>(context.size()), H = cfg.hidden, E = cfg.experts, k = cfg.top_k, L = cfg.layers;
  const int store = keep_layer_;
  round.position = T;
  std::vector<int> selected;
  std::map<int, Adam> adam;
  int base_layer = store;
  std::vector<float> h_base(hidden_.begin(), hidden_.begin() + static_cast<size_t>(T) * H);
  for (int step = 0; step < o.steps; ++step) {
    if (cancel_) throw Error("CANCELLED", "cancelled");
    const Patch patch = with_delta(base, delta, E);
    const int lowest = selected.empty() ? store : *std::min_element(selected.begin(), selected.end());
    std::vector<float> h = h_base;
    std::vector<KVCache> scratch(L);
    std::vector<LayerSave> saves(L);
    for (int l = base_layer; l < L; ++l)
      dec_.layer_forward(l, h.data(), T, 0, scratch[l], patch, nullptr, l >= lowest ? &saves[l] : nullptr);
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
    round.losses.push_back(loss_and_grad(context, h.data(), 1, T, dh.data()));
    const int low = selected.front();
    std::map<int, std::vector<float>> grads;
    std::map<int, float*> none;
    for (int l : selected) grads[l].assign(E, 0.f);
    for (int l = L - 1; l >= low; --l) {
      auto g = grads.find(l);
      dec_.layer_backward(l, saves[l], dh.data(), l == low, g == grads.end() ? nullptr : g->second.data(), none);
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
  std::vector<float> h(hidden_.begin(), hidden_.begin() + static_cast<size_t>(T) * H);
  for (int l = store; l < L; ++l) dec_.layer_forward(l, h.data(), T, 0, cache_[l], patch, nullptr, nullptr);
  std::vector<float> logits(cfg.vocab);
  dec_.logits(h.data() + static_cast<size_t>(T - 1) * H, 1, logits.data());
  return logits;
}

RerouteResult SessionImpl::generate_rerouted(const std::vector<int>& prompt, const Patch& patch,
                                             const SampleOptions& opts, const RerouteOptions& o,
                                             const std::function<bool(int)>& on_token,
                                             const std::function<void(const RerouteRound&)>& on_round) {
  CallScope scope(depth_, cancel_);
  const ModelConfig& cfg = m_.checkpoint().config;
  std::vector<int> candidates = o.layers;
  if (candidates.empty())
    for (int l = 0; l < cfg.layers; ++l)
      if (cfg.moe_layer[l]) candidates.push_back(l);
  for (int l : candidates)
    if (l < 0 || l >= cfg.layers || !cfg.moe_layer[l])
      throw Error("BAD_ARGUMENT", "rerouting layer " + std::to_string(l) + " has no router");
  if (o.steps < 0 || o.interval < 1 || !(o.layer_fraction > 0 && o.layer_fraction <= 1))
    throw Error("BAD_ARGUMENT", "rerouting needs steps >= 0, interval >= 1 and 0 < layer fraction <= 1");
  reset();
  on_device_ = false;  // rounds need the CPU decoder's cache and saved activations
  keep_layer_ = *std::min_element(candidates.begin(), candidates.end());
  hidden_.clear();
  RerouteResult res;
  std::mt19937_64 rng(opts.seed);
  std::vector<int> context = prompt;
  const int V = cfg.vocab;
  try {
    ForwardResult r = forward(prompt, patch, LogitsMode::Last, nullptr);
    std::vector<float> logits = r.logits;
    int since = 0;
    auto maybe_round = [&] {
      if (o.steps == 0 || context.size() < 2) return;
      RerouteRound round;
      logits = reroute_round(context, patch, o, candidates, res.delta, round);
      round.delta = res.delta;
      res.rounds.push_back(round);
      if (on_round) on_round(round);
      since = 0;
    };
    maybe_round();
    while (static_cast<int>(res.tokens.size()) < opts.max_new_tokens) {
      const int tok = sample(logits.data(), V, opts, rng);
      if (std::find(opts.stop_tokens.begin(), opts.stop_tokens.end(), tok) != opts.stop_tokens.end()) break;
      res.tokens.push_back(tok);
      context.push_back(tok);
      if (on_token && !on_token(tok)) break;
      if (static_cast<int>(res.tokens.size()) >= opts.max_new_tokens || pos_ + 1 > max_context_) break;
      logits = forward({tok}, with_delta(patch, res.delta, cfg.experts), LogitsMode::Last, nullptr).logits;
      if (++since >= o.interval) maybe_round();
    }
  } catch (...) {
    keep_layer_ = -1;
    throw;
  }
  keep_layer_ = -1;
  return res;
}

}  // namespace

struct C3poPrefix {
  std::unique_ptr<SessionImpl> session;  // KV cache: every layer for positions < last, layers < first for last
  std::vector<float> h;                  // hidden state of the last token at the input of first_layer
  int first_layer = 0;
  int last = 0;                          // position of the last prompt token
  const ModelImpl* model = nullptr;
};

namespace {

std::shared_ptr<C3poPrefix> ModelImpl::c3po_prefix(const std::vector<int>& prompt, int first_layer) {
  const ModelConfig& cfg = ck_->config;
  if (prompt.empty()) throw Error("BAD_TOKENS", "empty reference prompt");
  if (first_layer < 0 || first_layer >= cfg.layers) throw Error("BAD_ARGUMENT", "first critical layer out of range");
  auto p = std::make_shared<C3poPrefix>();
  p->session = std::make_unique<SessionImpl>(*this, 0);
  p->session->on_device_ = false;  // NGD steps run the CPU decoder against this cache
  p->first_layer = first_layer;
  p->last = static_cast<int>(prompt.size()) - 1;
  p->model = this;
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

C3poResult ModelImpl::c3po_ngd(const std::map<int, std::vector<float>>& omega_init,
                               const std::vector<C3poNeighbour>& neighbours, const C3poOptions& o) {
  const ModelConfig& cfg = ck_->config;
  const int E = cfg.experts, L = cfg.layers, H = cfg.hidden;
  if (o.layers.empty()) throw Error("BAD_ARGUMENT", "C3PO needs at least one critical layer");
  if (neighbours.empty()) throw Error("BAD_ARGUMENT", "C3PO needs at least one neighbour");
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
    // θ with scoring(θ) = ω: log ω for softmax routers, logit(ω) for sigmoid ones.
    for (int e = 0; e < E; ++e) {
      const float w = std::min(1.f - 1e-7f, std::max(1e-30f, it->second[e]));
      th[e] = cfg.router.scoring == Scoring::Sigmoid ? std::log(w / (1.f - w)) : std::log(std::max(1e-30f, it->second[e]));
    }
    std::vector<int> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return it->second[a] > it->second[b]; });
    order.resize(std::min(E, std::max(1, o.core_experts)));
    std::sort(order.begin(), order.end());
    res.core[l] = order;
  }
  double wsum = 0;
  for (const auto& n : neighbours) {
    if (!n.prefix || n.prefix->model != this) throw Error("BAD_ARGUMENT", "neighbour prefix belongs to another model");
    if (n.prefix->first_layer > first) throw Error("BAD_ARGUMENT", "neighbour prefix was cached above the first critical layer");
    if (n.answer < 0 || n.answer >= cfg.vocab) throw Error("BAD_TOKENS", "neighbour answer token outside the vocabulary");
    wsum += std::max(0.f, n.weight);
  }
  if (!(wsum > 0)) throw Error("BAD_ARGUMENT", "neighbour weights must not all be zero");
  std::map<int, Adam> adam;
  auto softmax = [&](const std::vector<float>& th) {  // ω = the router's scoring of θ (softmax or sigmoid)
    std::vector<float> w(E);
    scores_from_logits(cfg.router.scoring, th.data(), E, w.data());
    return w;
  };
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
    for (int l : o.layers) omega[l] = softmax(theta[l]);
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
      rnorm[j] = rmsnorm_row(hs.data() + static_cast<size_t>(j) * H, ck_->final_norm.data(), H, cfg.eps,
                             xs.data() + static_cast<size_t>(j) * H);
    matmul(dec.pool(), xs.data(), K, ck_->lm_head, logits.data());
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
      matmul_backward_input(dec.pool(), logits.data(), K, ck_->lm_head, dnorm.data(), false);
      std::vector<float> dh(static_cast<size_t>(K) * H);
      for (int j = 0; j < K; ++j)
        rmsnorm_row_backward(hs.data() + static_cast<size_t>(j) * H, rnorm[j], ck_->final_norm.data(),
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
    const double pi = 3.14159265358979323846;
    const double lr = o.steps > 1 ? o.lr_end + 0.5 * (o.lr_start - o.lr_end) * (1 + std::cos(pi * step / (o.steps - 1)))
                                  : o.lr_start;
    for (int l : o.layers) adam[l].step(theta[l], grad[l], lr, &res.core[l]);
  }
  for (int l : o.layers) res.omega_after[l] = softmax(theta[l]);
  return res;
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& opts) {
  if (opts.backend != "auto" && opts.backend != "cpu" && opts.backend != "cuda")
    throw Error("BAD_ARGUMENT", "backend must be auto, cpu or cuda (got \"" + opts.backend + "\")");
  if (opts.backend == "cuda" && !cuda::compiled()) throw Error("NO_CUDA", cuda::probe() + "; use backend cpu or auto");
  return std::make_unique<ModelImpl>(Checkpoint::open(dir), opts);
}

}  // namespace routescope
