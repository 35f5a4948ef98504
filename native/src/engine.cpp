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
#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "model/model.h"
#include "routescope/engine.h"

namespace routescope {

namespace {

class ModelImpl;

class SessionImpl : public Session {
 public:
  SessionImpl(ModelImpl& model, int max_context);
  ForwardResult forward(const std::vector<int>& tokens, const Patch& patch, LogitsMode mode,
                        const RoutingCallback& on_layer) override;
  std::vector<int> generate(const std::vector<int>& prompt, const Patch& patch, const SampleOptions& opts,
                            const std::function<bool(int)>& on_token, const RoutingCallback& on_layer) override;
  GradResult grad(const std::vector<int>& tokens, const Patch& patch, const GradRequest& req) override;
  void reset() override { pos_ = 0; }
  int position() const override { return pos_; }
  void cancel() override { cancel_ = true; }

 private:
  void check_tokens(const std::vector<int>& tokens, int already) const;
  ModelImpl& m_;
  Decoder dec_;
  int max_context_;
  int pos_ = 0;
  std::vector<KVCache> cache_;
  std::atomic<bool> cancel_{false};
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
  }
  const ModelInfo& info() const override { return info_; }
  std::unique_ptr<Session> create_session(int max_context) override {
    return std::make_unique<SessionImpl>(*this, max_context);
  }
  const Checkpoint& checkpoint() const { return *ck_; }
  ThreadPool& pool() { return *pool_; }

 private:
  std::unique_ptr<Checkpoint> ck_;
  std::unique_ptr<ThreadPool> pool_;
  ModelInfo info_;
};

SessionImpl::SessionImpl(ModelImpl& model, int max_context)
    : m_(model), dec_(model.checkpoint(), model.pool()), cache_(model.checkpoint().config.layers) {
  const int limit = model.info().max_position_embeddings;
  max_context_ = max_context > 0 ? std::min(max_context, limit) : limit;
  dec_.cancel_flag = &cancel_;
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
  cancel_ = false;
  if (tokens.empty()) throw Error("BAD_TOKENS", "no tokens to run");
  check_tokens(tokens, pos_);
  const ModelConfig& cfg = m_.checkpoint().config;
  const int T = static_cast<int>(tokens.size()), H = cfg.hidden, pos0 = pos_;
  std::vector<float> h(static_cast<size_t>(T) * H);
  dec_.embed(tokens, h.data());
  try {
    for (int l = 0; l < cfg.layers; ++l) dec_.layer_forward(l, h.data(), T, pos0, cache_[l], patch, on_layer, nullptr);
  } catch (...) {
    pos_ = pos0;  // the cache rows written by the aborted call are not valid
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
  cancel_ = false;
  const ModelConfig& cfg = m_.checkpoint().config;
  const ModelInfo& info = m_.info();
  const int T = static_cast<int>(tokens.size()), H = cfg.hidden, E = cfg.experts, V = cfg.vocab;
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
    float mx = *std::max_element(req.mix_logits.begin(), req.mix_logits.end());
    double sum = 0;
    for (int e = 0; e < E; ++e) sum += (row[e] = std::exp(req.mix_logits[e] - mx));
    for (int e = 0; e < E; ++e) row[e] = static_cast<float>(row[e] / sum);
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
  scratch.clear();

  // Loss over targets [ts, te): rows ts-1 .. te-2 predict them.
  const int rows = te - ts;
  std::vector<float> logits(static_cast<size_t>(rows) * V);
  dec_.logits(h.data() + static_cast<size_t>(ts - 1) * H, rows, logits.data());
  GradResult res;
  double loss = 0;
  std::vector<float> dlogits(logits.size());
  for (int r = 0; r < rows; ++r) {
    const float* z = &logits[static_cast<size_t>(r) * V];
    float mx = *std::max_element(z, z + V);
    double sum = 0;
    for (int i = 0; i < V; ++i) sum += std::exp(static_cast<double>(z[i]) - mx);
    const int target = tokens[ts + r];
    loss += -(z[target] - mx - std::log(sum));
    for (int i = 0; i < V; ++i)
      dlogits[static_cast<size_t>(r) * V + i] = static_cast<float>((std::exp(static_cast<double>(z[i]) - mx) / sum - (i == target)) / rows);
  }
  res.loss = loss / rows;
  // dh at the final norm's output for the target rows, then through the final norm.
  const Checkpoint& ck = m_.checkpoint();
  std::vector<float> dnorm(static_cast<size_t>(rows) * H);
  matmul_backward_input(dec_.pool(), dlogits.data(), rows, ck.lm_head, dnorm.data(), false);
  std::vector<float> dh(static_cast<size_t>(T) * H, 0.f);
  for (int r = 0; r < rows; ++r) {
    const size_t t = static_cast<size_t>(ts - 1 + r);
    const float* x = &h[t * H];
    double ss = 0;
    for (int d = 0; d < H; ++d) ss += static_cast<double>(x[d]) * x[d];
    const float rr = static_cast<float>(1.0 / std::sqrt(ss / H + cfg.eps));
    rmsnorm_row_backward(x, rr, ck.final_norm.data(), &dnorm[static_cast<size_t>(r) * H], H, &dh[t * H], false);
  }
  for (int l : req.bias_layers) res.bias_grad[l].assign(E, 0.f);
  if (req.mix_layer >= 0) res.mix_grad.assign(E, 0.f);
  if (!req.bias_layers.empty() || req.mix_layer >= 0) {
    for (int l = cfg.layers - 1; l >= lowest; --l) {
      if (cancel_) throw Error("CANCELLED", "cancelled");
      auto bg = res.bias_grad.find(l);
      dec_.layer_backward(l, saves[l], dh.data(), l == lowest, bg == res.bias_grad.end() ? nullptr : bg->second.data(),
                          l == req.mix_layer ? req.mix_position : -1, l == req.mix_layer ? res.mix_grad.data() : nullptr);
      saves[l] = LayerSave();
    }
  }
  (void)info;
  return res;
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& opts) {
  if (opts.backend != "auto" && opts.backend != "cpu" && opts.backend != "cuda")
    throw Error("BAD_ARGUMENT", "backend must be auto, cpu or cuda (got \"" + opts.backend + "\")");
  if (opts.backend == "cuda")
    throw Error("NO_CUDA", "the CUDA backend is not available in this build; use --backend cpu or auto");
  return std::make_unique<ModelImpl>(Checkpoint::open(dir), opts);
}

}  // namespace routescope
