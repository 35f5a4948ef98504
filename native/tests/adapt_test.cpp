// Test-time adaptation primitives: continuous rerouting and C3PO NGD.
#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>
#include <tuple>

#include "adapt/optimizer.h"
#include "cpu/router.h"
#include "engine_impl.h"
#include "routescope/adapt.h"
#include "test.h"

using namespace routescope;
using rstest::fixture_model;
using rstest::random_tokens;

namespace {

Patch delta_patch(const std::map<int, std::vector<float>>& delta, const ModelInfo& info) {
  std::ostringstream js;
  js.precision(9);
  js << "{\"layers\":{";
  bool first = true;
  for (const auto& kv : delta) {
    js << (first ? "" : ",") << "\"" << kv.first << "\":{\"bias\":[";
    for (size_t e = 0; e < kv.second.size(); ++e) js << (e ? "," : "") << kv.second[e];
    js << "]}";
    first = false;
  }
  js << "}}";
  return parse_patch(js.str(), info);
}

// Rerouted greedy generation of `new_tokens` after `prompt`, on a fresh session and without a patch.
RerouteResult rerouted(Model& model, const std::vector<int>& prompt, int new_tokens, const RerouteOptions& ro) {
  SampleOptions so;
  so.max_new_tokens = new_tokens;
  return generate_rerouted(*model.create_session(), prompt, Patch(), so, ro);
}

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = a.size() == b.size() ? 0.f : INFINITY;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

TEST("reroute: zero steps reproduces plain generation exactly") {
  auto model = Model::load(fixture_model("olmoe-perexpert-bf16"), LoadOptions{2, "cpu"});
  auto prompt = random_tokens(6, model->info().vocab_size, 1);
  SampleOptions so;
  so.max_new_tokens = 10;
  RerouteOptions ro;
  ro.steps = 0;
  Patch none;
  auto plain = model->create_session()->generate(prompt, none, so);
  auto rr = generate_rerouted(*model->create_session(), prompt, none, so, ro);
  CHECK(rr.tokens == plain);
  CHECK(rr.rounds.empty());
}

TEST("reroute: rounds lower the loss; the rebuilt KV cache equals a fresh prefill with the final delta") {
  for (const char* name : {"olmoe-perexpert-bf16", "qwen3_moe-fused-f32", "qwen2_moe-fused-f32", "deepseek_v2-perexpert-bf16",
                           "deepseek_v3-perexpert-bf16-sharded", "glm4_moe-perexpert-f32", "granitemoe-fused-f32",
                           "gpt_oss-fused-f32", "llama4_text-fused-f32"}) {
    auto model = Model::load(fixture_model(name), LoadOptions{2, "cpu"});
    const ModelInfo& info = model->info();
    auto prompt = random_tokens(12, info.vocab_size, 2);
    SampleOptions so;
    so.max_new_tokens = 9;
    RerouteOptions ro;
    ro.interval = 4;
    ro.steps = 5;
    ro.lr = 0.01f;  // small enough that every step lowers the loss of these random fixtures
    Patch none;
    auto session = model->create_session();
    int rounds_seen = 0;
    auto rr = generate_rerouted(*session, prompt, none, so, ro, nullptr, [&](const RerouteRound&) { ++rounds_seen; });
    CHECK_MSG(rr.tokens.size() == 9, name << ": generated " << rr.tokens.size());
    CHECK_MSG(rr.rounds.size() == 3 && rounds_seen == 3, name << ": rounds " << rr.rounds.size());  // after prefill, +4, +8
    CHECK(rr.rounds[0].position == 12 && rr.rounds[1].position == 16 && rr.rounds[2].position == 20);
    // The first loss of the first round is the plain model's loss on the prompt.
    GradRequest req;
    auto g = model->create_session()->grad(prompt, none, req);
    CHECK_MSG(std::fabs(g.loss - rr.rounds[0].losses[0]) < 1e-4, name << ": " << g.loss << " vs " << rr.rounds[0].losses[0]);
    // Descent: a later step's loss is below the first (a step may still cross a selection boundary upwards).
    const auto& losses = rr.rounds[0].losses;
    CHECK_MSG(*std::min_element(losses.begin() + 1, losses.end()) < losses.front(),
              name << ": no step lowered the loss from " << losses.front());
    bool nonzero = false;
    for (const auto& kv : rr.delta)
      for (float x : kv.second) nonzero |= x != 0.f;
    CHECK(nonzero);
    // Each round reports delta after it: the last one is the final delta, and delta moves between rounds.
    CHECK(rr.rounds.back().delta == rr.delta);
    CHECK(rr.rounds[0].delta != rr.rounds[1].delta);
    // Cache check: one more token through the adapted session vs a fresh prefill of the whole context.
    std::vector<int> context = prompt;
    context.insert(context.end(), rr.tokens.begin(), rr.tokens.end());
    Patch dp = delta_patch(rr.delta, info);
    auto next = session->forward({context.back()}, dp, LogitsMode::Last);
    auto fresh = model->create_session()->forward(context, dp, LogitsMode::Last);
    float d = max_diff(next.logits, fresh.logits);
    CHECK_MSG(d < 1e-4, name << ": rebuilt cache differs from a fresh prefill by " << d);
  }
}

TEST("reroute: the first round's first step reuses the prompt's forward; its loss and step are the gradient pass's, bit for bit") {
  // The prompt runs as the first round's step 0 would run it (delta zero), so the step takes that forward's
  // activations instead of running it again. Recomputed here by the gradient pass over the prompt (the same forward
  // from the lowest candidate layer up): the round's first loss, and with one step its delta (Adam's first step on
  // the pass's bias gradient), must match exactly, whichever layer the round adapts (above the lowest candidate too).
  for (const char* name : {"olmoe-perexpert-bf16", "qwen3_moe-fused-f32", "deepseek_v2-perexpert-bf16"}) {
    auto model = Model::load(fixture_model(name), LoadOptions{2, "cpu"});
    const ModelInfo& info = model->info();
    const auto prompt = random_tokens(14, info.vocab_size, 5);
    Patch none;
    GradRequest req;
    req.bias_layers = info.moe_layers;  // the candidates: the pass runs the same forward from the lowest of them
    const GradResult g = model->create_session()->grad(prompt, none, req);
    bool above_lowest = false;
    for (bool least_confident_first : {true, false}) {
      RerouteOptions ro;
      ro.steps = 1;
      ro.layer_fraction = 1.f / static_cast<float>(info.moe_layers.size());  // one layer, a different one each way
      ro.least_confident_first = least_confident_first;
      SampleOptions so;
      so.max_new_tokens = 0;
      auto rr = generate_rerouted(*model->create_session(), prompt, none, so, ro);
      CHECK_MSG(rr.rounds.size() == 1 && rr.rounds[0].losses.size() == 1, name << ": rounds " << rr.rounds.size());
      if (rr.rounds.size() != 1) continue;
      CHECK_MSG(rr.rounds[0].losses[0] == g.loss, name << ": first loss " << rr.rounds[0].losses[0] << " vs " << g.loss);
      const int l = rr.rounds[0].layers.front();
      above_lowest |= l > info.moe_layers.front();
      Adam adam;
      std::vector<float> want(info.num_experts, 0.f);
      adam.step(want, g.bias_grad.at(l), ro.lr);
      CHECK_MSG(rr.delta.at(l) == want, name << ": layer " << l << "'s delta after one step differs from the pass's");
    }
    CHECK_MSG(above_lowest, name << ": no round adapted a layer above the lowest candidate");
  }
}

TEST("reroute: confidence-based layer selection adapts the requested fraction") {
  auto model = Model::load(fixture_model("mixtral-perexpert-f32"), LoadOptions{1, "cpu"});
  auto prompt = random_tokens(8, model->info().vocab_size, 4);
  RerouteOptions ro;
  ro.layer_fraction = 0.34f;  // 1 of 3 layers
  auto rr = rerouted(*model, prompt, 2, ro);
  CHECK(rr.rounds.size() == 1);
  CHECK(rr.rounds[0].layers.size() == 1);
  CHECK(rr.rounds[0].confidence.size() == 3);
  // least confident first: the chosen layer has the largest C_l
  int chosen = rr.rounds[0].layers[0];
  for (const auto& kv : rr.rounds[0].confidence) CHECK(kv.second <= rr.rounds[0].confidence.at(chosen));
}

// C_l of every layer over a fresh forward of `tokens` with `patch`: -(1/k) sum of log p over the selected experts,
// averaged over positions.
std::map<int, double> fresh_confidence(Model& model, const std::vector<int>& tokens, const Patch& patch) {
  std::map<int, double> out;
  const Checkpoint& ck = engine_model(model, "fresh_confidence").checkpoint();
  model.create_session()->forward(tokens, patch, LogitsMode::None, [&](const LayerRouting& r) {
    auto it = patch.layers.find(r.layer);
    const LayerPatch* lp = it == patch.layers.end() ? nullptr : &it->second;
    std::vector<float> p(r.num_experts), w(r.top_k);
    std::vector<int32_t> sel(r.top_k);
    double sum = 0;
    for (int i = 0; i < r.count; ++i) {
      bool mixed;
      const std::vector<float>& bias = ck.layers[r.layer].selection_bias;
      route_token(ck.config.router, r.router_logits + size_t(i) * r.num_experts, r.num_experts, r.top_k, bias.empty() ? nullptr : bias.data(),
                  lp, r.start + i, p.data(), sel.data(), w.data(), &mixed);
      for (int j = 0; j < r.top_k; ++j) sum -= std::log(std::max(1e-30f, p[sel[j]])) / r.top_k;
    }
    out[r.layer] = sum / r.count;
  });
  return out;
}

TEST("reroute: a round's layer choice uses the confidence recorded while routing, equal to a fresh forward's") {
  auto model = Model::load(fixture_model("qwen3_moe-fused-f32"), LoadOptions{2, "cpu"});
  const ModelInfo& info = model->info();
  auto prompt = random_tokens(10, info.vocab_size, 50);
  RerouteOptions ro;
  ro.interval = 4;
  auto rr = rerouted(*model, prompt, 9, ro);
  CHECK(rr.rounds.size() == 3);
  std::vector<int> context = prompt;
  context.insert(context.end(), rr.tokens.begin(), rr.tokens.end());
  for (size_t r = 0; r < rr.rounds.size(); ++r) {
    const RerouteRound& round = rr.rounds[r];
    Patch before = r == 0 ? Patch() : delta_patch(rr.rounds[r - 1].delta, info);
    auto want = fresh_confidence(*model, std::vector<int>(context.begin(), context.begin() + round.position), before);
    CHECK(round.confidence.size() == info.moe_layers.size());
    for (const auto& kv : round.confidence)
      CHECK_MSG(std::fabs(kv.second - want[kv.first]) < 1e-4,
                "round " << r << " layer " << kv.first << ": " << kv.second << " vs fresh " << want[kv.first]);
    CHECK(round.layers.size() == (info.moe_layers.size() + 1) / 2);  // the default adapts half the layers
  }
}

TEST("reroute: the loss since the last round runs the new tokens against the cache; its first loss is that window's") {
  auto model = Model::load(fixture_model("olmoe-perexpert-bf16"), LoadOptions{2, "cpu"});
  const ModelInfo& info = model->info();
  auto prompt = random_tokens(12, info.vocab_size, 60);
  RerouteOptions exact, recent;
  exact.interval = recent.interval = 5;
  recent.since_last_round = true;
  auto a = rerouted(*model, prompt, 7, exact);
  auto b = rerouted(*model, prompt, 7, recent);
  CHECK(a.rounds.size() == 2 && b.rounds.size() == 2);
  // After prefill the window is the whole prompt: the same round.
  CHECK(b.rounds[0].window_start == 0 && b.rounds[0].losses == a.rounds[0].losses);
  // The second round's window starts where the first ended; before its first step every cached position was
  // computed with the first round's delta, so its loss is grad()'s over the window's targets with that delta.
  CHECK(b.rounds[1].window_start == 12 && b.rounds[1].position == 17);
  std::vector<int> context = prompt;
  context.insert(context.end(), b.tokens.begin(), b.tokens.begin() + 5);
  GradRequest req;
  req.target_start = 13;
  req.target_end = 17;
  auto g = model->create_session()->grad(context, delta_patch(b.rounds[0].delta, info), req);
  CHECK_MSG(std::fabs(g.loss - b.rounds[1].losses[0]) < 1e-4, g.loss << " vs " << b.rounds[1].losses[0]);
}

TEST("reroute: Adam's moments carry across rounds unless reset each round") {
  auto model = Model::load(fixture_model("mixtral-perexpert-f32"), LoadOptions{1, "cpu"});
  const ModelInfo& info = model->info();
  auto prompt = random_tokens(9, info.vocab_size, 70);
  // One step per round: a fresh Adam's first step moves every coordinate with a gradient by exactly lr.
  auto largest_off_lr = [&](bool reset) {
    RerouteOptions ro;
    ro.interval = 3;
    ro.steps = 1;
    ro.layer_fraction = 1;
    ro.reset_adam_each_round = reset;
    auto rr = rerouted(*model, prompt, 4, ro);
    CHECK(rr.rounds.size() == 2);
    double worst = 0;
    for (const auto& kv : rr.rounds[1].delta)
      for (size_t e = 0; e < kv.second.size(); ++e) {
        const double step = std::fabs(kv.second[e] - rr.rounds[0].delta.at(kv.first)[e]);
        if (step > ro.lr / 2) worst = std::max(worst, std::fabs(step - ro.lr));  // not a gradient below Adam's eps
      }
    return worst;
  };
  CHECK(largest_off_lr(true) < 1e-5);
  CHECK(largest_off_lr(false) > 1e-3);
}

// The router's scores (softmax or sigmoid of the raw logits, as info.router_scoring says) at the last position.
std::map<int, std::vector<float>> last_scores(Model& model, const std::vector<int>& prompt, const std::vector<int>& layers) {
  std::map<int, std::vector<float>> out;
  const bool sigmoid = model.info().router_scoring == "sigmoid";
  Patch none;
  model.create_session()->forward(prompt, none, LogitsMode::None, [&](const LayerRouting& r) {
    if (std::find(layers.begin(), layers.end(), r.layer) == layers.end()) return;
    const float* z = r.router_logits + size_t(r.count - 1) * r.num_experts;
    std::vector<float> p(r.num_experts);
    if (sigmoid) {
      for (int e = 0; e < r.num_experts; ++e) p[e] = 1.f / (1.f + std::exp(-z[e]));
    } else {
      float mx = *std::max_element(z, z + r.num_experts);
      double s = 0;
      for (int e = 0; e < r.num_experts; ++e) s += (p[e] = std::exp(z[e] - mx));
      for (auto& x : p) x = float(x / s);
    }
    out[r.layer] = p;
  });
  return out;
}

TEST("c3po: the last-position gradient equals the full-sequence mix gradient; NGD lowers the surrogate loss") {
  for (const char* name : {"olmoe-fused-f16", "qwen3_moe-fused-f32", "mixtral-perexpert-f32", "deepseek_v2-fused-f32-grouped",
                           "deepseek_v3-perexpert-bf16-sharded", "glm4_moe-fused-bf16-sharded", "granitemoe-fused-bf16-sharded",
                           "gpt_oss-mxfp4-sharded", "llama4-fused-bf16-sharded"}) {
    auto model = Model::load(fixture_model(name), LoadOptions{2, "cpu"});
    const ModelInfo& info = model->info();
    const bool sigmoid = info.router_scoring == "sigmoid";
    const int last_layer = info.moe_layers.back();
    auto test_prompt = random_tokens(7, info.vocab_size, 10);
    auto omega = last_scores(*model, test_prompt, {last_layer});
    // One neighbour: its gradient must match grad() on prompt + answer with the mix at the last prompt position.
    auto nb_prompt = random_tokens(9, info.vocab_size, 11);
    const int answer = 5;
    C3poNeighbour nb{c3po_prefix(*model, nb_prompt, last_layer), answer, 1.f};
    C3poOptions o;
    o.layers = {last_layer};
    o.steps = 0;
    auto r0 = c3po_ngd(*model, omega, {nb}, o);
    std::vector<int> seq = nb_prompt;
    seq.push_back(answer);
    GradRequest req;
    req.target_start = int(nb_prompt.size());
    req.target_end = int(seq.size());
    req.mix_layer = last_layer;
    req.mix_position = int(nb_prompt.size()) - 1;
    for (float p : omega[last_layer]) req.mix_logits.push_back(sigmoid ? std::log(p / (1 - p)) : std::log(std::max(1e-30f, p)));
    Patch none;
    auto g = model->create_session()->grad(seq, none, req);
    CHECK_MSG(std::fabs(g.loss - r0.losses[0]) < 1e-4, name << ": loss " << g.loss << " vs " << r0.losses[0]);
    float scale = 0;
    for (float x : g.mix_grad) scale = std::max(scale, std::fabs(x));
    float d = max_diff(r0.first_grad[last_layer], g.mix_grad);
    CHECK_MSG(d <= 1e-3 * scale + 1e-7, name << ": last-position gradient differs by " << d << " (scale " << scale << ")");

    // Several neighbours and critical layers: the default NGD lowers the kernel-weighted loss.
    std::vector<int> critical(info.moe_layers.end() - std::min<size_t>(2, info.moe_layers.size()), info.moe_layers.end());
    auto omega2 = last_scores(*model, test_prompt, critical);
    std::vector<C3poNeighbour> nbs;
    for (int i = 0; i < 3; ++i)
      nbs.push_back({c3po_prefix(*model, random_tokens(6 + i, info.vocab_size, 20 + i), critical.front()), 7 + i, 1.f / (1 + i)});
    // The neighbours run stacked through each MLP / MoE block: loss and gradient equal the weighted sums of
    // single-neighbour runs.
    C3poOptions o3;
    o3.layers = critical;
    o3.steps = 0;
    auto together = c3po_ngd(*model, omega2, nbs, o3);
    const double wsum = 1 + 1 / 2. + 1 / 3.;
    double want_loss = 0;
    std::map<int, std::vector<float>> want;
    for (int i = 0; i < 3; ++i) {
      auto alone = c3po_ngd(*model, omega2, {nbs[i]}, o3);
      const double wi = 1.0 / (1 + i) / wsum;
      want_loss += wi * alone.losses[0];
      for (int l : critical) {
        auto& wl = want[l];
        wl.resize(info.num_experts, 0.f);
        for (int e = 0; e < info.num_experts; ++e) wl[e] += float(wi * alone.first_grad[l][e]);
      }
    }
    CHECK_MSG(std::fabs(together.losses[0] - want_loss) < 1e-5, name << ": stacked loss " << together.losses[0] << " vs " << want_loss);
    for (int l : critical) {
      float sc = 0;
      for (float x : want[l]) sc = std::max(sc, std::fabs(x));
      float dd = max_diff(together.first_grad[l], want[l]);
      CHECK_MSG(dd <= 1e-4 * sc + 1e-7, name << ": stacked gradient at layer " << l << " differs by " << dd << " (scale " << sc << ")");
    }
    // The first critical layer cached (attention output, router logits and every expert's output at the last
    // token) gives the loss and gradient of running it, and so does a prefix cached one layer lower.
    for (int below : {0, 1}) {
      if (below && critical.front() == 0) continue;
      std::vector<C3poNeighbour> plain;
      for (int i = 0; i < 3; ++i)
        plain.push_back({c3po_prefix(*model, random_tokens(6 + i, info.vocab_size, 20 + i), critical.front() - below, below == 1),
                         7 + i, 1.f / (1 + i)});
      auto run = c3po_ngd(*model, omega2, plain, o3);
      CHECK_MSG(std::fabs(run.losses[0] - together.losses[0]) < 1e-5,
                name << ": loss " << run.losses[0] << " uncached vs " << together.losses[0] << " cached");
      for (int l : critical) {
        float sc = 0;
        for (float x : run.first_grad[l]) sc = std::max(sc, std::fabs(x));
        float dd = max_diff(together.first_grad[l], run.first_grad[l]);
        CHECK_MSG(dd <= 1e-4 * sc + 1e-7, name << ": cached gradient at layer " << l << " differs by " << dd << " (scale " << sc
                                               << ", prefix " << below << " below)");
      }
    }
    C3poOptions o2;
    o2.layers = critical;
    o2.core_experts = 3;  // of 8: the other five must keep their relative weights
    o2.final_loss = true;
    auto r = c3po_ngd(*model, omega2, nbs, o2);
    CHECK(r.losses.size() == 11);  // before each of 10 steps, and after the last
    CHECK_MSG(r.losses.back() < r.losses.front(), name << ": NGD did not lower the loss: " << r.losses.front() << " -> " << r.losses.back());
    o2.final_loss = false;
    CHECK(c3po_ngd(*model, omega2, nbs, o2).losses.size() == 10);
    for (int l : critical) {
      double sum = 0;
      for (float x : r.omega_after[l]) sum += x;
      CHECK_MSG(sigmoid || std::fabs(sum - 1) < 1e-5, "omega after is a distribution");
      CHECK(r.core[l].size() == 3);
      double ratio = -1;
      for (int e = 0; e < info.num_experts; ++e) {
        if (std::binary_search(r.core[l].begin(), r.core[l].end(), e)) continue;
        double q = r.omega_after[l][e] / r.omega_before[l][e];
        if (ratio < 0) ratio = q;
        CHECK_MSG(std::fabs(q / ratio - 1) < 1e-4, "frozen expert " << e << " changed its relative weight");
      }
    }
  }
}

TEST("c3po: the loss restricted to option tokens has the gradient of its finite differences") {
  auto model = Model::load(fixture_model("olmoe-fused-f16"), LoadOptions{1, "cpu"});
  const ModelInfo& info = model->info();
  const std::vector<int> critical(info.moe_layers.end() - 2, info.moe_layers.end());
  auto omega = last_scores(*model, random_tokens(7, info.vocab_size, 30), critical);
  std::vector<C3poNeighbour> nbs;
  for (int i = 0; i < 2; ++i)
    nbs.push_back({c3po_prefix(*model, random_tokens(8, info.vocab_size, 31 + i), critical.front()), 3 + i, 1.f, {3, 4, 9, 12}});
  nbs.push_back({c3po_prefix(*model, random_tokens(5, info.vocab_size, 40), critical.front()), 6, 0.5f});  // whole vocabulary
  C3poOptions o;
  o.layers = critical;
  o.steps = 0;
  auto at = [&](const std::map<int, std::vector<float>>& theta) {
    std::map<int, std::vector<float>> w;
    for (const auto& kv : theta) {
      std::vector<float> t = kv.second;
      float mx = *std::max_element(t.begin(), t.end());
      double s = 0;
      for (auto& x : t) s += (x = std::exp(x - mx));
      for (auto& x : t) x = float(x / s);
      w[kv.first] = t;
    }
    return c3po_ngd(*model, w, nbs, o);
  };
  std::map<int, std::vector<float>> theta;
  for (int l : critical)
    for (float p : omega[l]) theta[l].push_back(std::log(p));
  auto base = at(theta);
  const float eps = 1e-2f;
  for (int l : critical)
    for (int e = 0; e < info.num_experts; ++e) {
      auto plus = theta, minus = theta;
      plus[l][e] += eps;
      minus[l][e] -= eps;
      const double fd = (at(plus).losses[0] - at(minus).losses[0]) / (2 * eps);
      CHECK_MSG(std::fabs(fd - base.first_grad[l][e]) < 2e-3 + 2e-2 * std::fabs(fd),
                "layer " << l << " expert " << e << ": gradient " << base.first_grad[l][e] << " vs finite difference " << fd);
    }
  // An answer outside its options is refused.
  auto bad = nbs;
  bad[0].answer = 5;
  CHECK(rstest::error_code_of([&] { c3po_ngd(*model, omega, bad, o); }) == "BAD_ARGUMENT");
}

}  // namespace

namespace {

// The label's margin over the best other option in `logits` (options empty: the whole vocabulary).
double margin_of(const std::vector<float>& logits, int label, const std::vector<int>& options) {
  double best = -INFINITY;
  if (options.empty()) {
    for (int v = 0; v < int(logits.size()); ++v)
      if (v != label) best = std::max(best, double(logits[v]));
  } else {
    for (int t : options)
      if (t != label) best = std::max(best, double(logits[t]));
  }
  return logits[label] - best;
}

TEST("headroom: margins are those of forwards with the changed rows; searches move them the way they aim") {
  for (const char* name : {"olmoe-perexpert-bf16", "qwen2_moe-fused-f32", "mixtral-perexpert-f32", "deepseek_v2-fused-f32-grouped",
                           "deepseek_v3-fused-f16-onegroup", "granitemoe-fused-f32",
                           "gpt_oss-fused-bf16-sharded"}) {
    auto model = Model::load(fixture_model(name), LoadOptions{2, "cpu"});
    const ModelInfo& info = model->info();
    auto prompt = random_tokens(9, info.vocab_size, 80);
    Patch none;
    auto plain = model->create_session()->forward(prompt, none, LogitsMode::Last).logits;
    int flips = 0;
    for (int label : {3, 4, 9, 12}) {
      for (bool restricted : {true, false}) {
        HeadroomOptions o;
        o.label = label;
        if (restricted) o.options = {3, 4, 9, 12};
        o.candidates = 4;
        auto session = model->create_session();
        auto r = routing_headroom(*session, prompt, o);
        CHECK(session->position() == 0);
        const double m0 = margin_of(plain, label, o.options);
        CHECK_MSG(std::fabs(r.margin - m0) < 1e-3, name << ": plain margin " << r.margin << " vs " << m0);
        CHECK(r.correct == (r.margin > 0));
        CHECK(r.layers.size() == info.moe_layers.size());
        std::vector<const HeadroomChange*> all;
        for (const auto& c : r.layers) all.push_back(&c);
        all.push_back(&r.joint);
        for (const HeadroomChange* c : all) {
          Patch p;
          for (const auto& kv : c->omega) p.layers[kv.first].mix[int(prompt.size()) - 1] = kv.second;
          auto logits = model->create_session()->forward(prompt, p, LogitsMode::Last).logits;
          const double m = margin_of(logits, label, o.options);
          CHECK_MSG(std::fabs(m - c->margin) < 1e-3, name << " layer " << c->layer << ": margin " << c->margin << " vs forward " << m);
          CHECK_MSG(r.correct ? c->margin <= r.margin + 1e-6 : c->margin >= r.margin - 1e-6,
                    name << " layer " << c->layer << ": the search moved the margin the wrong way");
          CHECK(c->flipped == ((c->margin > 0) != r.correct));
          CHECK(c->evaluations > 0);
          flips += c->flipped;
          for (const auto& sw : c->swaps) CHECK(sw.out != sw.in && sw.out >= 0 && sw.in < info.num_experts);
        }
      }
    }
    CHECK_MSG(flips > 0, name << ": no routing change flipped any of the answers");
  }
}

}  // namespace

TEST("adapt: small loops on the calling thread give the pooled results bit for bit (gradient pass, C3PO NGD, rerouting)") {
  // The fixtures are small enough that, at the default threshold, nearly every loop of these calls runs inline; here
  // the model's pool is forced to send every loop to its workers, then none, and each result must match exactly.
  for (const char* name : {"olmoe-perexpert-bf16", "qwen3_moe-fused-f32", "deepseek_v2-perexpert-bf16"}) {
    auto model = Model::load(fixture_model(name), LoadOptions{2, "cpu"});
    const ModelInfo& info = model->info();
    ThreadPool& pool = engine_model(*model, "test").pool();
    std::vector<int> critical(info.moe_layers.end() - std::min<size_t>(2, info.moe_layers.size()), info.moe_layers.end());
    auto run = [&](int64_t min_work) {
      pool.set_min_parallel_work(min_work);
      Patch none;
      GradRequest req;
      req.bias_layers = info.moe_layers;
      auto grad = model->create_session()->grad(random_tokens(40, info.vocab_size, 31), none, req);
      auto omega = last_scores(*model, random_tokens(9, info.vocab_size, 32), critical);
      std::vector<C3poNeighbour> nbs;
      for (int i = 0; i < 3; ++i)
        nbs.push_back({c3po_prefix(*model, random_tokens(7 + i, info.vocab_size, 40 + i), critical.front()), 5 + i, 1.f});
      C3poOptions o;
      o.layers = critical;
      o.steps = 4;
      auto ngd = c3po_ngd(*model, omega, nbs, o);
      SampleOptions so;
      so.max_new_tokens = 8;
      RerouteOptions ro;
      ro.interval = 4;
      ro.steps = 2;
      auto rr = generate_rerouted(*model->create_session(), random_tokens(10, info.vocab_size, 33), none, so, ro);
      return std::make_tuple(grad.loss, grad.bias_grad, ngd.losses, ngd.omega_after, rr.tokens, rr.delta);
    };
    const auto pooled = run(0), inline_only = run(INT64_MAX);
    pool.set_min_parallel_work(ThreadPool::kMinParallelWork);
    CHECK_MSG(std::get<0>(pooled) == std::get<0>(inline_only) && std::get<1>(pooled) == std::get<1>(inline_only),
              name << ": gradient pass differs");
    CHECK_MSG(std::get<2>(pooled) == std::get<2>(inline_only) && std::get<3>(pooled) == std::get<3>(inline_only),
              name << ": NGD differs");
    CHECK_MSG(std::get<4>(pooled) == std::get<4>(inline_only) && std::get<5>(pooled) == std::get<5>(inline_only),
              name << ": rerouting differs");
  }
}

TEST("gradient pass: a session's scratch and RoPE table, reused across passes of other lengths, give a fresh session's results bit for bit") {
  // The backward's temporaries and the RoPE angles live in the session between calls with whatever the last pass
  // left; a pass that read a stale entry (an accumulator not cleared, a row not rewritten) would differ here.
  for (const char* name : {"olmoe-perexpert-bf16", "qwen3_moe-fused-f32", "deepseek_v2-perexpert-bf16"}) {
    auto model = Model::load(fixture_model(name), LoadOptions{2, "cpu"});
    const ModelInfo& info = model->info();
    GradRequest req;
    req.bias_layers = info.moe_layers;
    Patch none;
    auto reused = model->create_session();
    for (int T : {40, 9, 40, 23}) {
      const std::vector<int> tokens = random_tokens(T, info.vocab_size, 50 + T);
      const GradResult again = reused->grad(tokens, none, req);
      const GradResult fresh = model->create_session()->grad(tokens, none, req);
      CHECK_MSG(again.loss == fresh.loss && again.bias_grad == fresh.bias_grad, name << ": " << T << " tokens differ");
    }
  }
}

TEST("kv cache bf16: rerouting's first step is the gradient pass's bit for bit; C3PO's last-position gradient is the full sequence's") {
  // Every cache of a bf16-KV model holds bf16, the gradient pass's and C3PO's neighbour prefixes included, and the
  // backward reads the keys and values the forward used.
  for (const char* name : {"olmoe-perexpert-bf16", "qwen3_moe-fused-f32", "deepseek_v2-perexpert-bf16"}) {
    auto model = Model::load(fixture_model(name), LoadOptions{2, "cpu", "fp32", "auto", "bf16"});
    const ModelInfo& info = model->info();
    CHECK(info.kv_cache == "bf16");
    Patch none;
    // Rerouting: the prompt's saving forward is the gradient pass's forward, so its first loss and step are too.
    const auto prompt = random_tokens(14, info.vocab_size, 5);
    GradRequest req;
    req.bias_layers = info.moe_layers;
    const GradResult g = model->create_session()->grad(prompt, none, req);
    RerouteOptions ro;
    ro.steps = 1;
    ro.layer_fraction = 1.f / static_cast<float>(info.moe_layers.size());
    SampleOptions so;
    so.max_new_tokens = 0;
    auto rr = generate_rerouted(*model->create_session(), prompt, none, so, ro);
    CHECK_MSG(rr.rounds.size() == 1 && rr.rounds[0].losses[0] == g.loss, name << ": rerouting's first loss differs from the pass's");
    if (rr.rounds.size() == 1) {
      const int l = rr.rounds[0].layers.front();
      Adam adam;
      std::vector<float> want(info.num_experts, 0.f);
      adam.step(want, g.bias_grad.at(l), ro.lr);
      CHECK_MSG(rr.delta.at(l) == want, name << ": layer " << l << "'s delta after one step differs from the pass's");
    }
    // C3PO: one neighbour's last-position gradient against grad() on prompt + answer with the mix there, to the fp32
    // test's tolerances (the neighbour's last keys come from a one-row projection, the pass's from a prefill: none of
    // these sits on a bf16 rounding midpoint, see the decode test in engine_test).
    const bool sigmoid = info.router_scoring == "sigmoid";
    const int last_layer = info.moe_layers.back();
    auto omega = last_scores(*model, random_tokens(7, info.vocab_size, 10), {last_layer});
    auto nb_prompt = random_tokens(9, info.vocab_size, 11);
    C3poOptions o;
    o.layers = {last_layer};
    o.steps = 0;
    auto r0 = c3po_ngd(*model, omega, {{c3po_prefix(*model, nb_prompt, last_layer), 5, 1.f}}, o);
    std::vector<int> seq = nb_prompt;
    seq.push_back(5);
    GradRequest mix;
    mix.target_start = int(nb_prompt.size());
    mix.target_end = int(seq.size());
    mix.mix_layer = last_layer;
    mix.mix_position = int(nb_prompt.size()) - 1;
    for (float p : omega[last_layer]) mix.mix_logits.push_back(sigmoid ? std::log(p / (1 - p)) : std::log(std::max(1e-30f, p)));
    auto full = model->create_session()->grad(seq, none, mix);
    CHECK_MSG(std::fabs(full.loss - r0.losses[0]) < 1e-4, name << ": loss " << full.loss << " vs " << r0.losses[0]);
    float scale = 0;
    for (float x : full.mix_grad) scale = std::max(scale, std::fabs(x));
    const float d = max_diff(r0.first_grad[last_layer], full.mix_grad);
    CHECK_MSG(scale > 0 && d <= 1e-3 * scale + 1e-7, name << ": last-position gradient differs by " << d << " (scale " << scale << ")");
    std::printf("     %-28s C3PO loss %.2e apart, gradient %.2e of %.2e\n", name, std::fabs(full.loss - r0.losses[0]), d, scale);
  }
}
