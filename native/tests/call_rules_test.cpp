// The rules every engine call obeys whatever the front end: token ids inside the vocabulary at every entry point,
// one call at a time per session (reserve/release for calls handed to a worker thread), cancellation that is never
// lost before a reserved call starts nor leaks into the next one, and C3PO calls on one model one at a time.
#include <condition_variable>
#include <mutex>
#include <thread>

#include "routescope/adapt.h"
#include "test.h"

using namespace routescope;
using rstest::error_code_of;
using rstest::fixture_model;
using rstest::random_tokens;

namespace {

TEST("tokens: every entry point that takes tokens rejects an id outside the vocabulary with BAD_TOKENS") {
  auto model = Model::load(fixture_model("olmoe-perexpert-bf16"), LoadOptions{1, "cpu"});
  const ModelInfo& info = model->info();
  const int V = info.vocab_size;
  Patch none;
  SampleOptions so;
  so.max_new_tokens = 2;
  RerouteOptions ro;
  ro.steps = 1;
  const int layer = info.moe_layers.back();
  // Each bad id in the middle and as the last token (the last one of a C3PO prefix skips the forward pass).
  for (int bad : {V, -1, 1 << 30})
    for (bool last : {false, true}) {
      std::vector<int> tokens = random_tokens(5, V, 3);
      tokens[last ? 4 : 2] = bad;
      auto s = model->create_session();
      auto expect = [&](const char* entry, const std::string& code) {
        CHECK_MSG(code == "BAD_TOKENS", entry << " with token " << bad << (last ? " last" : " inside") << ": " << code);
        CHECK_MSG(s->position() == 0, entry << " left " << s->position() << " cached positions");
      };
      expect("forward", error_code_of([&] { s->forward(tokens, none, LogitsMode::Last); }));
      expect("generate", error_code_of([&] { s->generate(tokens, none, so); }));
      expect("grad", error_code_of([&] { s->grad(tokens, none, GradRequest{}); }));
      expect("generate_rerouted", error_code_of([&] { generate_rerouted(*s, tokens, none, so, ro); }));
      expect("mean_hidden", error_code_of([&] { s->mean_hidden(tokens, 1); }));
      expect("c3po_prefix", error_code_of([&] { c3po_prefix(*model, tokens, layer); }));
      CHECK(s->forward(random_tokens(3, V, 4), none, LogitsMode::Last).rows == 1);  // still usable
    }
  // A neighbour's answer is a token too.
  C3poNeighbour nb{c3po_prefix(*model, random_tokens(4, V, 5), layer), V, 1.f};
  C3poOptions o;
  o.layers = {layer};
  std::map<int, std::vector<float>> omega{{layer, std::vector<float>(info.num_experts, 1.f / info.num_experts)}};
  CHECK(error_code_of([&] { c3po_ngd(*model, omega, {nb}, o); }) == "BAD_TOKENS");
}

TEST("argument ranges: negative thread counts and C3PO step counts are rejected by the engine") {
  CHECK(error_code_of([&] { Model::load(fixture_model("olmoe-perexpert-bf16"), LoadOptions{-1, "cpu"}); }) ==
        "BAD_ARGUMENT");
  auto model = Model::load(fixture_model("olmoe-perexpert-bf16"), LoadOptions{1, "cpu"});
  const ModelInfo& info = model->info();
  const int layer = info.moe_layers.back();
  C3poNeighbour nb{c3po_prefix(*model, random_tokens(4, info.vocab_size, 5), layer), 1, 1.f};
  C3poOptions o;
  o.layers = {layer};
  o.steps = -1;
  std::map<int, std::vector<float>> omega{{layer, std::vector<float>(info.num_experts, 1.f / info.num_experts)}};
  CHECK(error_code_of([&] { c3po_ngd(*model, omega, {nb}, o); }) == "BAD_ARGUMENT");
}

TEST("session calls: reserve/release, BUSY, and cancels that are neither lost before the call nor kept after it") {
  auto model = Model::load(fixture_model("mixtral-perexpert-f32"), LoadOptions{1, "cpu"});
  const int V = model->info().vocab_size;
  auto s = model->create_session();
  Patch none;
  auto run = [&] { return s->forward(random_tokens(4, V, 1), none, LogitsMode::Last).rows; };

  // Idle: a cancel does nothing and the next call runs.
  s->cancel();
  CHECK(run() == 1);
  s->reset();

  // A reservation blocks other reservations and cache changes until released.
  s->reserve();
  CHECK(error_code_of([&] { s->reserve(); }) == "BUSY");
  CHECK(error_code_of([&] { s->reset(); }) == "BUSY");
  CHECK(error_code_of([&] { s->truncate(0); }) == "BUSY");
  s->release();
  s->reset();

  // A cancel between reserve() and the call (the window while a worker thread starts) cancels that call...
  s->reserve();
  s->cancel();
  CHECK(error_code_of(run) == "CANCELLED");
  CHECK(s->position() == 0);
  s->release();
  // ...and release() forgets it: the next call runs.
  CHECK(run() == 1);
  s->reset();

  // A cancel that arrives after the reserved call returned but before release() does not reach the next call.
  s->reserve();
  CHECK(run() == 1);
  s->cancel();
  s->release();
  s->reset();
  s->reserve();
  CHECK(run() == 1);
  s->release();
  s->reset();
  // The same for a generate whose own decode steps are nested calls.
  s->reserve();
  s->cancel();
  CHECK(error_code_of([&] { s->generate(random_tokens(3, V, 2), none, SampleOptions{}); }) == "CANCELLED");
  s->release();
  s->reset();
}

TEST("session calls: a call from another thread while one runs is BUSY; a cancel from another thread stops it") {
  auto model = Model::load(fixture_model("mixtral-perexpert-f32"), LoadOptions{1, "cpu"});
  const int V = model->info().vocab_size;
  auto s = model->create_session();
  Patch none;
  std::mutex mu;
  std::condition_variable cv;
  bool inside = false, go_on = false;
  std::string worker_code;
  s->reserve();
  std::thread worker([&] {
    worker_code = error_code_of([&] {
      s->forward(random_tokens(6, V, 7), none, LogitsMode::All, [&](const LayerRouting& r) {
        if (r.layer != 0) return;
        std::unique_lock<std::mutex> lock(mu);
        inside = true;
        cv.notify_all();
        cv.wait(lock, [&] { return go_on; });  // hold the call open while the main thread probes it
      });
    });
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return inside; });
  }
  CHECK(error_code_of([&] { s->forward({1}, none, LogitsMode::Last); }) == "BUSY");
  CHECK(error_code_of([&] { s->reserve(); }) == "BUSY");
  CHECK(error_code_of([&] { s->reset(); }) == "BUSY");
  s->cancel();
  {
    std::lock_guard<std::mutex> lock(mu);
    go_on = true;
  }
  cv.notify_all();
  worker.join();
  CHECK_MSG(worker_code == "CANCELLED", "the running call ended with " << worker_code);
  CHECK(s->position() == 0);
  s->release();
  CHECK(s->forward(random_tokens(3, V, 8), none, LogitsMode::Last).rows == 1);
}

TEST("c3po: calls on one model from several threads wait for each other and give the sequential results") {
  auto model = Model::load(fixture_model("qwen3_moe-fused-f32"), LoadOptions{1, "cpu"});
  const ModelInfo& info = model->info();
  const int E = info.num_experts;
  std::vector<int> critical(info.moe_layers.end() - std::min<size_t>(2, info.moe_layers.size()), info.moe_layers.end());
  std::vector<C3poNeighbour> nbs;
  for (int i = 0; i < 3; ++i)
    nbs.push_back({c3po_prefix(*model, random_tokens(8 + i, info.vocab_size, 30 + i), critical.front()), 3 + i, 1.f});
  // Two starting points: the two calls write different rows into the shared neighbours' caches.
  std::map<int, std::vector<float>> omega_a, omega_b;
  for (int l : critical) {
    omega_a[l].assign(E, 1.f / E);
    omega_b[l].resize(E);
    for (int e = 0; e < E; ++e) omega_b[l][e] = (e == l % E ? 0.5f : 0.5f / (E - 1));
  }
  C3poOptions o;
  o.layers = critical;
  o.steps = 6;
  o.core_experts = E;
  const C3poResult want_a = c3po_ngd(*model, omega_a, nbs, o), want_b = c3po_ngd(*model, omega_b, nbs, o);
  auto same = [](const C3poResult& x, const C3poResult& y) {
    return x.losses == y.losses && x.omega_after == y.omega_after;
  };
  int mismatches = 0;
  for (int round = 0; round < 8; ++round) {
    C3poResult got_a, got_b;
    std::shared_ptr<C3poPrefix> extra;
    std::thread ta([&] { got_a = c3po_ngd(*model, omega_a, nbs, o); });
    std::thread tb([&] { got_b = c3po_ngd(*model, omega_b, nbs, o); });
    std::thread tc([&] { extra = c3po_prefix(*model, random_tokens(7, info.vocab_size, 40), critical.front()); });
    ta.join();
    tb.join();
    tc.join();
    mismatches += !same(got_a, want_a) + !same(got_b, want_b);
    CHECK(extra != nullptr);
  }
  CHECK_MSG(mismatches == 0, mismatches << " concurrent C3PO results differ from the sequential ones");
}

}  // namespace
