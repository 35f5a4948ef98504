// Test-time adaptation primitives: continuous rerouting and C3PO NGD.
#include <cmath>
#include <random>
#include <sstream>

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
  for (const char* name : {"olmoe-perexpert-bf16", "qwen3_moe-fused-f32", "qwen2_moe-fused-f32"}) {
    auto model = Model::load(fixture_model(name), LoadOptions{2, "cpu"});
    const ModelInfo& info = model->info();
    auto prompt = random_tokens(12, info.vocab_size, 2);
    SampleOptions so;
    so.max_new_tokens = 9;
    RerouteOptions ro;
    ro.interval = 4;
    ro.steps = 5;
    ro.lr = 0.05f;
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
    CHECK_MSG(rr.rounds[0].losses.back() < rr.rounds[0].losses.front(),
              name << ": loss did not go down: " << rr.rounds[0].losses.front() << " -> " << rr.rounds[0].losses.back());
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

TEST("reroute: confidence-based layer selection adapts the requested fraction") {
  auto model = Model::load(fixture_model("mixtral-perexpert-f32"), LoadOptions{1, "cpu"});
  auto prompt = random_tokens(8, model->info().vocab_size, 4);
  SampleOptions so;
  so.max_new_tokens = 2;
  RerouteOptions ro;
  ro.layer_fraction = 0.34f;  // 1 of 3 layers
  Patch none;
  auto rr = generate_rerouted(*model->create_session(), prompt, none, so, ro);
  CHECK(rr.rounds.size() == 1);
  CHECK(rr.rounds[0].layers.size() == 1);
  CHECK(rr.rounds[0].confidence.size() == 3);
  // least confident first: the chosen layer has the largest C_l
  int chosen = rr.rounds[0].layers[0];
  for (const auto& kv : rr.rounds[0].confidence) CHECK(kv.second <= rr.rounds[0].confidence.at(chosen));
}

std::map<int, std::vector<float>> last_softmax(Model& model, const std::vector<int>& prompt, const std::vector<int>& layers) {
  std::map<int, std::vector<float>> out;
  Patch none;
  model.create_session()->forward(prompt, none, LogitsMode::None, [&](const LayerRouting& r) {
    if (std::find(layers.begin(), layers.end(), r.layer) == layers.end()) return;
    const float* z = r.router_logits + size_t(r.count - 1) * r.num_experts;
    std::vector<float> p(r.num_experts);
    float mx = *std::max_element(z, z + r.num_experts);
    double s = 0;
    for (int e = 0; e < r.num_experts; ++e) s += (p[e] = std::exp(z[e] - mx));
    for (auto& x : p) x = float(x / s);
    out[r.layer] = p;
  });
  return out;
}

TEST("c3po: the last-position gradient equals the full-sequence mix gradient; NGD lowers the surrogate loss") {
  for (const char* name : {"olmoe-fused-f16", "qwen3_moe-fused-f32", "mixtral-perexpert-f32"}) {
    auto model = Model::load(fixture_model(name), LoadOptions{2, "cpu"});
    const ModelInfo& info = model->info();
    const int last_layer = info.moe_layers.back();
    auto test_prompt = random_tokens(7, info.vocab_size, 10);
    auto omega = last_softmax(*model, test_prompt, {last_layer});
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
    for (float p : omega[last_layer]) req.mix_logits.push_back(std::log(std::max(1e-30f, p)));
    Patch none;
    auto g = model->create_session()->grad(seq, none, req);
    CHECK_MSG(std::fabs(g.loss - r0.losses[0]) < 1e-4, name << ": loss " << g.loss << " vs " << r0.losses[0]);
    float scale = 0;
    for (float x : g.mix_grad) scale = std::max(scale, std::fabs(x));
    float d = max_diff(r0.first_grad[last_layer], g.mix_grad);
    CHECK_MSG(d <= 1e-3 * scale + 1e-7, name << ": last-position gradient differs by " << d << " (scale " << scale << ")");

    // Several neighbours and critical layers: the default NGD lowers the kernel-weighted loss.
    std::vector<int> critical(info.moe_layers.end() - std::min<size_t>(2, info.moe_layers.size()), info.moe_layers.end());
    auto omega2 = last_softmax(*model, test_prompt, critical);
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
      CHECK_MSG(std::fabs(sum - 1) < 1e-5, "omega after is a distribution");
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
  auto omega = last_softmax(*model, random_tokens(7, info.vocab_size, 30), critical);
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
