// Model and Session: loading a checkpoint, running sessions over the CPU decoder (or the CUDA backend), generation,
// gradients, and the rules every call obeys (one call at a time per session, cancellation, token checks).
// Test-time adaptation (rerouting, C3PO) lives in adapt/ on top of these.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>

#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "cpu/router.h"
#include "engine_impl.h"

namespace routescope {

ModelImpl::ModelImpl(std::unique_ptr<Checkpoint> ck, const LoadOptions& opts) : ck_(std::move(ck)) {
  int threads = opts.threads > 0 ? opts.threads : static_cast<int>(std::thread::hardware_concurrency());
  threads = std::max(1, std::min(threads, 256));
  pool_ = std::make_unique<ThreadPool>(threads);
  info_ = ck_->info;
  info_.threads = threads;
  info_.backend = "cpu";
  info_.activations = "fp32";
  if (opts.backend == "cuda") {
    const std::string gap = cuda::unsupported(ck_->config);
    if (!gap.empty())
      throw Error("NO_CUDA", "the CUDA backend does not run " + info_.model_type + " models yet (" + gap + "); use backend cpu");
    device_ = cuda::DeviceModel::upload(*ck_);  // throws NO_CUDA / OOM with the reason
    info_.backend = "cuda";
    info_.device = device_->device_name();
  } else if (opts.backend == "auto") {
    const std::string why = cuda::probe();
    info_.backend_note = why.empty() ? "a CUDA device is present, but auto keeps the CPU until the CUDA backend has been "
                                       "validated on a GPU; pass backend cuda to use it"
                                     : "CPU: " + why;
  }
  if (opts.activations == "bf16") {
    // The rounding is what llama.cpp's BF16 matmul does; it pays only where vdpbf16ps doubles the rate.
    const char* why = info_.backend == "cuda"      ? "the CUDA backend runs fp32 activations"
                      : !cpu_has_avx512_bf16()      ? "this CPU has no AVX512_BF16"
                      : info_.dtype != "BF16"       ? "the weights are not BF16"
                                                    : nullptr;
    if (why) info_.warnings.push_back(std::string("activations bf16 not used: ") + why + "; running fp32 activations");
    else info_.activations = "bf16";
  }
  info_.kv_cache = "fp32";
  if (opts.kv_cache == "bf16") {
    if (info_.backend == "cuda")
      info_.warnings.push_back("kv cache bf16 not used: the CUDA backend keeps an fp32 KV cache; running fp32 keys and values");
    else info_.kv_cache = "bf16";
  }
}

ModelImpl& engine_model(Model& model, const char* what) {
  auto* impl = dynamic_cast<ModelImpl*>(&model);
  if (!impl) throw Error("BAD_ARGUMENT", std::string(what) + ": the model was not loaded by Model::load");
  return *impl;
}


SessionImpl& engine_session(Session& session, const char* what) {
  auto* impl = dynamic_cast<SessionImpl*>(&session);
  if (!impl) throw Error("BAD_ARGUMENT", std::string(what) + ": the session was not created by Model::create_session");
  return *impl;
}

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& opts) {
  if (opts.threads < 0) throw Error("BAD_ARGUMENT", "threads must be >= 0 (0 = one per core)");
  if (opts.backend != "auto" && opts.backend != "cpu" && opts.backend != "cuda")
    throw Error("BAD_ARGUMENT", "backend must be auto, cpu or cuda (got \"" + opts.backend + "\")");
  if (opts.backend == "cuda" && !cuda::compiled()) throw Error("NO_CUDA", cuda::probe() + "; use backend cpu or auto");
  if (opts.activations != "fp32" && opts.activations != "bf16")
    throw Error("BAD_ARGUMENT", "activations must be fp32 or bf16 (got \"" + opts.activations + "\")");
  kv_cache_dtype(opts.kv_cache);  // checks the choice
  check_weights_choice(opts.weights);
  // The CUDA backend uploads the weights: a resident host copy would only take memory.
  const std::string weights = opts.backend == "cuda" ? "mapped" : opts.weights;
  auto residency_for = [&](uint64_t weight_bytes) { return choose_residency(weights, weight_bytes, dir); };
  return std::make_unique<ModelImpl>(Checkpoint::open(dir, residency_for), opts);
}


SessionImpl::SessionImpl(ModelImpl& model, int max_context)
    : m_(model), dec_(model.checkpoint(), model.pool()), cache_(model.checkpoint().config.layers) {
  const int limit = model.info().max_position_embeddings;
  max_context_ = max_context > 0 ? std::min(max_context, limit) : limit;
  dec_.cancel_flag = &cancel_;
  dec_.bf16_activations = model.info().activations == "bf16";
  dec_.kv_dtype = kv_cache_dtype(model.info().kv_cache);
  on_device_ = model.device() != nullptr;  // the GPU KV cache is allocated on first use
}

// ---------------------------------------------------------------------------------------------------------------
// Call state: one call at a time, reservations, cancellation.

namespace {
Error busy_error() { return Error("BUSY", "the session is already running a call; wait for it or cancel it"); }
}  // namespace

SessionImpl::CallScope::CallScope(SessionImpl& session) : session_(session) {
  std::lock_guard<std::mutex> lock(session_.state_mu_);
  const std::thread::id self = std::this_thread::get_id();
  if (session_.depth_ > 0 && session_.runner_ != self) throw busy_error();
  if (session_.depth_ == 0) {
    session_.runner_ = self;
    if (!session_.reserved_) session_.cancel_ = false;  // a direct call starts clean; a reserved one keeps a cancel
  }
  if (session_.cancel_) throw Error("CANCELLED", "cancelled");
  ++session_.depth_;
}

SessionImpl::CallScope::~CallScope() {
  std::lock_guard<std::mutex> lock(session_.state_mu_);
  if (--session_.depth_ == 0 && !session_.reserved_) session_.cancel_ = false;
}

void SessionImpl::reserve() {
  std::lock_guard<std::mutex> lock(state_mu_);
  if (reserved_ || depth_ > 0) throw busy_error();
  reserved_ = true;
  cancel_ = false;
}

void SessionImpl::release() {
  std::lock_guard<std::mutex> lock(state_mu_);
  reserved_ = false;
  if (depth_ == 0) cancel_ = false;
}

void SessionImpl::cancel() {
  std::lock_guard<std::mutex> lock(state_mu_);
  if (reserved_ || depth_ > 0) cancel_ = true;  // idle: nothing to cancel, and the next call is not affected
}

void SessionImpl::check_cancelled() const {
  if (cancel_.load()) throw Error("CANCELLED", "cancelled");
}

void SessionImpl::check_idle(const char* what) const {
  std::lock_guard<std::mutex> lock(state_mu_);
  const bool inside_call = depth_ > 0 && runner_ == std::this_thread::get_id();
  if (!inside_call && (reserved_ || depth_ > 0))
    throw Error("BUSY", std::string("the session is running a call; cancel it before ") + what);
}

// ---------------------------------------------------------------------------------------------------------------
// The KV cache.

void SessionImpl::reset() {
  check_idle("reset()");
  clear();
}

void SessionImpl::clear() {
  pos_ = 0;
  hidden_.clear();
  on_device_ = m_.device() != nullptr;
}

void SessionImpl::truncate(int position) {
  check_idle("truncate()");
  if (position < 0 || position > pos_)
    throw Error("BAD_ARGUMENT", "truncate(" + std::to_string(position) + "): the session holds " + std::to_string(pos_) +
                                    " positions");
  if (position == 0) return clear();
  pos_ = position;
  const size_t H = static_cast<size_t>(m_.checkpoint().config.hidden);
  if (hidden_.size() > pos_ * H) hidden_.resize(pos_ * H);
}

// ---------------------------------------------------------------------------------------------------------------
// Calls.

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
                                   const RoutingCallback& on_layer, int mean_hidden_layer) {
  CallScope scope(*this);
  if (tokens.empty()) throw Error("BAD_TOKENS", "no tokens to run");
  check_tokens(tokens, pos_);
  const ModelConfig& cfg = m_.checkpoint().config;
  const int T = static_cast<int>(tokens.size()), H = cfg.hidden, pos0 = pos_;
  if (mean_hidden_layer > cfg.layers)
    throw Error("BAD_ARGUMENT", "embedding layer " + std::to_string(mean_hidden_layer) + " is outside 0.." + std::to_string(cfg.layers));
  // The mean over this call's rows of h, the hidden state entering layer `at`.
  std::vector<float> mean;
  auto take_mean = [&](int at, const float* h) {
    if (at != mean_hidden_layer) return;
    mean.assign(H, 0.f);
    for (int t = 0; t < T; ++t)
      for (int d = 0; d < H; ++d) mean[d] += h[static_cast<size_t>(t) * H + d] / T;
  };
  if (on_device_) {
    if (mean_hidden_layer >= 0) {
      // The GPU keeps no hidden states: the embedding comes from a CPU pass over the same tokens.
      if (pos0 != 0) throw Error("BAD_ARGUMENT", "on the CUDA backend an embedding needs a forward from position 0");
      std::vector<float> h(static_cast<size_t>(T) * H);
      dec_.embed(tokens, h.data());
      std::vector<KVCache> scratch(cfg.layers);
      for (int l = 0; l < mean_hidden_layer; ++l) dec_.layer_forward(l, h.data(), T, 0, scratch[l], patch, nullptr, nullptr);
      take_mean(mean_hidden_layer, h.data());
    }
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
    res.mean_hidden = std::move(mean);
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
      take_mean(l, h.data());
      dec_.layer_forward(l, h.data(), T, pos0, cache_[l], patch, on_layer, nullptr);
    }
    take_mean(cfg.layers, h.data());
  } catch (...) {
    pos_ = pos0;  // the cache rows written by the aborted call are not valid
    if (keep_layer_ >= 0) hidden_.resize(static_cast<size_t>(pos0) * H);
    throw;
  }
  pos_ = pos0 + T;
  ForwardResult res;
  res.mean_hidden = std::move(mean);
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
  CallScope scope(*this);
  clear();
  check_tokens(tokens, 0);
  const int T = static_cast<int>(tokens.size()), H = cfg.hidden;
  std::vector<float> h(static_cast<size_t>(T) * H);
  dec_.embed(tokens, h.data());
  Patch none;
  for (int l = 0; l < layer; ++l) dec_.layer_forward(l, h.data(), T, 0, cache_[l], none, nullptr, nullptr);
  clear();
  std::vector<float> mean(H, 0.f);
  for (int t = 0; t < T; ++t)
    for (int d = 0; d < H; ++d) mean[d] += h[static_cast<size_t>(t) * H + d] / T;
  return mean;
}

double SessionImpl::loss_and_grad(const std::vector<int>& tokens, const float* h, int ts, int te, float* dh) {
  const ModelConfig& cfg = m_.checkpoint().config;
  const Checkpoint& ck = m_.checkpoint();
  const int H = cfg.hidden, V = cfg.vocab, rows = te - ts;
  std::vector<float>& logits = dec_.scratch(Decoder::Scratch::Logits, static_cast<size_t>(rows) * V);
  dec_.logits(h + static_cast<size_t>(ts - 1) * H, rows, logits.data());
  // Cross-entropy per row; z becomes dLoss/dz = (softmax(z) - onehot) / rows in place (one exp per logit).
  std::vector<double> row_loss(rows);
  dec_.pool().parallel_for(rows, 1, [&](int64_t a, int64_t b, int) {
    for (int64_t r = a; r < b; ++r) {
      float* z = &logits[static_cast<size_t>(r) * V];
      const float mx = *std::max_element(z, z + V);
      const int target = tokens[ts + r];
      const float zt = z[target];
      double sum = 0;
      for (int i = 0; i < V; ++i) sum += (z[i] = std::exp(z[i] - mx));
      row_loss[r] = -(zt - mx - std::log(sum));
      if (!dh) continue;
      const float scale = static_cast<float>(1.0 / (sum * rows));
      for (int i = 0; i < V; ++i) z[i] *= scale;
      z[target] -= 1.f / rows;
    }
  }, int64_t(rows) * V * 8);  // an exp is worth several multiply-adds
  double loss = 0;
  for (double x : row_loss) loss += x;
  if (dh) {
    std::vector<float>& dnorm = dec_.scratch(Decoder::Scratch::DNorm, static_cast<size_t>(rows) * H);
    matmul_backward_input(dec_.pool(), logits.data(), rows, ck.lm_head, dnorm.data(), false);
    const int T = static_cast<int>(tokens.size());
    std::fill(dh, dh + static_cast<size_t>(T) * H, 0.f);
    std::vector<float> xn(H);
    for (int r = 0; r < rows; ++r) {
      const size_t t = static_cast<size_t>(ts - 1 + r);
      const float* x = h + t * H;
      const float rr = norm_row(x, ck.final_norm.data(), bias_or_null(ck.final_norm_bias), H, cfg.eps, xn.data());
      norm_row_backward(x, rr, ck.final_norm.data(), bias_or_null(ck.final_norm_bias), &dnorm[static_cast<size_t>(r) * H],
                        H, dh + t * H, false);
    }
  }
  return loss / rows;
}

namespace {

// Next token from logits [V]: argmax at temperature 0, else nucleus sampling with `rng`.
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

}  // namespace

std::vector<int> SessionImpl::generate(const std::vector<int>& prompt, const Patch& patch, const SampleOptions& opts,
                                       const std::function<bool(int)>& on_token, const RoutingCallback& on_layer) {
  CallScope scope(*this);
  std::vector<float> logits = forward(prompt, patch, LogitsMode::Last, on_layer).logits;
  return decode(std::move(logits), opts, on_token,
                [&](int token) { return forward({token}, patch, LogitsMode::Last, on_layer).logits; });
}

std::vector<int> SessionImpl::decode(std::vector<float> logits, const SampleOptions& opts,
                                     const std::function<bool(int)>& on_token,
                                     const std::function<std::vector<float>(int token)>& step) {
  std::mt19937_64 rng(opts.seed);
  std::vector<int> out;
  const int V = m_.info().vocab_size;
  while (static_cast<int>(out.size()) < opts.max_new_tokens) {
    const int token = sample(logits.data(), V, opts, rng);
    if (std::find(opts.stop_tokens.begin(), opts.stop_tokens.end(), token) != opts.stop_tokens.end()) break;
    out.push_back(token);
    if (on_token && !on_token(token)) break;
    if (static_cast<int>(out.size()) >= opts.max_new_tokens || pos_ + 1 > max_context_) break;
    logits = step(token);
  }
  return out;
}

GradResult SessionImpl::grad(const std::vector<int>& tokens, const Patch& patch_in, const GradRequest& req) {
  CallScope scope(*this);
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
    require_score_router(cfg.router, "a mix gradient");
    if (req.mix_position < 0 || req.mix_position >= T) throw Error("BAD_ARGUMENT", "mix position outside the sequence");
    if (static_cast<int>(req.mix_logits.size()) != E) throw Error("BAD_ARGUMENT", "mix logits need one value per expert");
    for (float x : req.mix_logits)
      if (!std::isfinite(x)) throw Error("BAD_ARGUMENT", "mix logits must be finite float32 values");
    patch.layers[req.mix_layer].mix[req.mix_position] = scores_row(cfg, req.mix_logits);  // softmax or sigmoid of θ
    lowest = std::min(lowest, req.mix_layer);
  }
  if (lowest == cfg.layers) lowest = cfg.layers - 1;  // loss only

  // Forward: plain below the lowest layer asked for, keeping activations from there up.
  std::vector<float>& h = dec_.scratch(Decoder::Scratch::Hidden, static_cast<size_t>(T) * H);
  dec_.embed(tokens, h.data());
  prepare_grad_workspace();
  std::vector<LayerSave>& saves = grad_saves_;
  for (int l = 0; l < cfg.layers; ++l)
    dec_.layer_forward(l, h.data(), T, 0, grad_cache_[l], patch, nullptr, l >= lowest ? &saves[l] : nullptr);
  GradResult res;
  std::vector<float>& dh = dec_.scratch(Decoder::Scratch::DHidden, static_cast<size_t>(T) * H);  // loss_and_grad writes all
  res.loss = loss_and_grad(tokens, h.data(), ts, te, dh.data());
  for (int l : req.bias_layers) res.bias_grad[l].assign(E, 0.f);
  if (req.mix_layer >= 0) res.mix_grad.assign(E, 0.f);
  if (!req.bias_layers.empty() || req.mix_layer >= 0) {
    std::map<int, float*> none, mix;
    if (req.mix_layer >= 0) mix[req.mix_position] = res.mix_grad.data();
    for (int l = cfg.layers - 1; l >= lowest; --l) {
      check_cancelled();
      auto bg = res.bias_grad.find(l);
      dec_.layer_backward(l, saves[l], dh.data(), l == lowest, bg == res.bias_grad.end() ? nullptr : bg->second.data(),
                          l == req.mix_layer ? mix : none);
    }
  }
  trim_grad_workspace();
  return res;
}

void SessionImpl::prepare_grad_workspace() {
  const int L = m_.checkpoint().config.layers;
  grad_saves_.resize(L);
  grad_cache_.resize(L);
}

void SessionImpl::trim_grad_workspace() {
  const size_t keep = size_t(256) << 20;
  size_t bytes = 0;
  for (const auto& s : grad_saves_) bytes += s.bytes();
  for (const auto& c : grad_cache_) bytes += c.bytes();
  bytes += dec_.scratch_bytes();
  if (bytes <= keep) return;
  dec_.release_scratch();
  std::vector<LayerSave>().swap(grad_saves_);
  std::vector<KVCache>().swap(grad_cache_);
}

std::vector<float> scores_row(const ModelConfig& cfg, const std::vector<float>& theta) {
  std::vector<float> p(theta.size());
  if (!theta.empty()) scores_from_logits(cfg.router.scoring, theta.data(), static_cast<int>(theta.size()), p.data());
  return p;
}

std::vector<float> logits_of_scores(const ModelConfig& cfg, const std::vector<float>& omega) {
  std::vector<float> theta(omega.size());
  for (size_t e = 0; e < omega.size(); ++e) {
    if (cfg.router.scoring == Scoring::Sigmoid) {
      const float w = std::min(1.f - 1e-7f, std::max(1e-30f, omega[e]));
      theta[e] = std::log(w / (1.f - w));
    } else {
      theta[e] = std::log(std::max(1e-30f, omega[e]));
    }
  }
  return theta;
}

}  // namespace routescope
