// CUDA vs CPU on every committed fixture (run on a GPU machine: `build/rs_tests test/fixtures cuda`).
// Selected experts must be identical and logits within 1e-2 (bf16 tensor-core products).
#include <cmath>
#include <filesystem>

#include "cuda/backend.h"
#include "routescope/engine.h"
#include "test.h"

using namespace routescope;
namespace fs = std::filesystem;

namespace {

struct Capture {
  std::map<int, std::vector<int32_t>> experts;
  std::map<int, std::vector<float>> weights;
  RoutingCallback callback() {
    return [this](const LayerRouting& r) {
      auto& e = experts[r.layer];
      e.insert(e.end(), r.experts, r.experts + size_t(r.count) * r.top_k);
      auto& w = weights[r.layer];
      w.insert(w.end(), r.weights, r.weights + size_t(r.count) * r.top_k);
    };
  }
};

TEST("cuda: the GPU path matches the CPU path on every fixture (experts identical, logits within 1e-2)") {
  if (!cuda::compiled()) SKIP("built without CUDA");
  const std::string why = cuda::probe();
  if (!why.empty()) SKIP(why);
  int checked = 0;
  for (const char* group : {"parity", "demo"}) {
    fs::path root = fs::path(rstest::fixtures_dir) / group;
    if (!fs::exists(root)) continue;
    for (const auto& d : fs::directory_iterator(root)) {
      fs::path model_dir = d.path() / "model";
      if (!fs::exists(model_dir / "config.json")) continue;
      auto cpu = Model::load(model_dir.string(), LoadOptions{2, "cpu"});
      auto gpu = Model::load(model_dir.string(), LoadOptions{2, "cuda"});
      CHECK(gpu->info().backend == "cuda");
      std::vector<int> tokens;
      for (int i = 0; i < 24; ++i) tokens.push_back((i * 37 + 11) % cpu->info().vocab_size);
      Patch none;
      Capture a, b;
      auto ra = cpu->create_session()->forward(tokens, none, LogitsMode::All, a.callback());
      auto sb = gpu->create_session();
      // Prefill in two parts to cover the GPU KV cache, then one decode step.
      std::vector<int> head(tokens.begin(), tokens.begin() + 16), tail(tokens.begin() + 16, tokens.end());
      auto r1 = sb->forward(head, none, LogitsMode::All, b.callback());
      auto r2 = sb->forward(tail, none, LogitsMode::All, b.callback());
      std::vector<float> lb = r1.logits;
      lb.insert(lb.end(), r2.logits.begin(), r2.logits.end());
      float worst = 0;
      for (size_t i = 0; i < ra.logits.size() && i < lb.size(); ++i) worst = std::max(worst, std::fabs(ra.logits[i] - lb[i]));
      CHECK_MSG(ra.logits.size() == lb.size() && worst <= 1e-2f, d.path().filename().string() << ": logits differ by " << worst);
      for (const auto& kv : a.experts)
        CHECK_MSG(b.experts[kv.first] == kv.second, d.path().filename().string() << ": layer " << kv.first << " experts differ");
      ++checked;
    }
  }
  CHECK(checked > 0);
}

TEST("cuda: a bf16 KV cache asked of the CUDA backend runs fp32 and says so") {
  if (!cuda::compiled()) SKIP("built without CUDA");
  const std::string why = cuda::probe();
  if (!why.empty()) SKIP(why);
  auto gpu = Model::load((fs::path(rstest::fixtures_dir) / "parity/olmoe-perexpert-bf16/model").string(),
                         LoadOptions{2, "cuda", "fp32", "auto", "bf16"});
  CHECK(gpu->info().kv_cache == "fp32");
  bool warned = false;
  for (const auto& w : gpu->info().warnings) warned |= w.rfind("kv cache bf16 not used: ", 0) == 0;
  CHECK(warned);
}

}  // namespace
