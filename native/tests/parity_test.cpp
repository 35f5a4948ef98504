// Parity against the committed reference fixtures (test/fixtures/parity/*, test/fixtures/demo):
// logits, router logits, selected experts and weights for plain and patched runs; loss and router gradients.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "model/safetensors.h"
#include "cpu/convert.h"
#include "routescope/engine.h"
#include "test.h"
#include "util/json.h"

using namespace routescope;
namespace fs = std::filesystem;

namespace {

struct Reference {
  std::unique_ptr<SafetensorsFile> file;
  bool has(const std::string& name) const { return file->tensors().count(name) > 0; }
  std::vector<float> f32(const std::string& name) const {
    const TensorView& t = file->tensors().at(name);
    std::vector<float> out(t.numel());
    std::memcpy(out.data(), t.data, out.size() * 4);
    return out;
  }
  std::vector<int32_t> i32(const std::string& name) const {
    const TensorView& t = file->tensors().at(name);
    std::vector<int32_t> out(t.numel());
    std::memcpy(out.data(), t.data, out.size() * 4);
    return out;
  }
};

Json read_json(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return Json::parse(ss.str());
}

std::vector<fs::path> case_dirs() {
  std::vector<fs::path> out;
  for (const char* group : {"parity", "demo"}) {
    fs::path root = fs::path(rstest::fixtures_dir) / group;
    if (!fs::exists(root)) continue;
    if (fs::exists(root / "cases.json")) out.push_back(root);
    for (const auto& d : fs::directory_iterator(root))
      if (d.is_directory() && fs::exists(d.path() / "cases.json")) out.push_back(d.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

fs::path model_dir(const fs::path& dir, const Json& cases) {
  if (const Json* m = cases.find("model"); m && m->is_string()) return dir / m->as_string();
  return dir / "model";
}

std::vector<int> tokens_of(const Json& cases) {
  std::vector<int> t;
  for (const auto& x : cases.find("tokens")->items()) t.push_back(static_cast<int>(x.as_number()));
  return t;
}

float max_abs_diff(const float* a, const float* b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

struct Captured {
  std::map<int, std::vector<float>> router_logits, weights;
  std::map<int, std::vector<int32_t>> experts;
};

struct Stats {
  int runs = 0, grads = 0;
  float logits = 0, weights = 0, grad_rel = 0;
};
Stats stats;

void check_run(Model& model, const Reference& ref, const std::vector<int>& tokens, const std::string& run,
               const std::string& patch_json, const std::string& label) {
  const ModelInfo& info = model.info();
  Patch patch = parse_patch(patch_json, info);
  auto session = model.create_session();
  Captured cap;
  auto res = session->forward(tokens, patch, LogitsMode::All, [&](const LayerRouting& r) {
    auto& rl = cap.router_logits[r.layer];
    rl.insert(rl.end(), r.router_logits, r.router_logits + size_t(r.count) * r.num_experts);
    auto& ex = cap.experts[r.layer];
    ex.insert(ex.end(), r.experts, r.experts + size_t(r.count) * r.top_k);
    auto& w = cap.weights[r.layer];
    w.insert(w.end(), r.weights, r.weights + size_t(r.count) * r.top_k);
  });
  auto ref_logits = ref.f32(run + ".logits");
  CHECK_MSG(res.logits.size() == ref_logits.size(), label << ": logits size " << res.logits.size() << " vs " << ref_logits.size());
  if (res.logits.size() == ref_logits.size()) {
    float d = max_abs_diff(res.logits.data(), ref_logits.data(), ref_logits.size());
    CHECK_MSG(d <= 1e-4f, label << ": logits differ by " << d << " (tolerance 1e-4)");
    stats.logits = std::max(stats.logits, d);
    ++stats.runs;
  }
  for (int l : info.moe_layers) {
    const std::string p = run + ".layer" + std::to_string(l);
    if (!ref.has(p + ".experts")) {
      CHECK_MSG(false, label << ": reference lacks " << p);
      continue;
    }
    auto rl = ref.f32(p + ".router_logits");
    auto ex = ref.i32(p + ".experts");
    auto w = ref.f32(p + ".weights");
    CHECK_MSG(cap.experts[l] == std::vector<int32_t>(ex.begin(), ex.end()), label << ": layer " << l << " selected experts differ");
    if (cap.router_logits[l].size() == rl.size()) {
      float d = max_abs_diff(cap.router_logits[l].data(), rl.data(), rl.size());
      CHECK_MSG(d <= 1e-4f, label << ": layer " << l << " router logits differ by " << d << " (tolerance 1e-4)");
    } else {
      CHECK_MSG(false, label << ": layer " << l << " router logits size");
    }
    if (cap.weights[l].size() == w.size()) {
      float d = max_abs_diff(cap.weights[l].data(), w.data(), w.size());
      CHECK_MSG(d <= 1e-4f, label << ": layer " << l << " weights differ by " << d << " (tolerance 1e-4)");
      stats.weights = std::max(stats.weights, d);
    } else {
      CHECK_MSG(false, label << ": layer " << l << " weights size");
    }
  }
}

// |a - b| <= rel * max|b| + abs, elementwise.
void check_close(const std::vector<float>& got, const std::vector<float>& want, double rel, double abs_tol,
                 const std::string& label) {
  CHECK_MSG(got.size() == want.size(), label << ": size " << got.size() << " vs " << want.size());
  if (got.size() != want.size()) return;
  double scale = 0;
  for (float x : want) scale = std::max(scale, double(std::fabs(x)));
  for (size_t i = 0; i < got.size(); ++i) {
    double d = std::fabs(double(got[i]) - want[i]);
    if (scale > 0) stats.grad_rel = std::max(stats.grad_rel, float(d / scale));
    if (d > rel * scale + abs_tol) {
      CHECK_MSG(false, label << "[" << i << "]: " << got[i] << " vs reference " << want[i] << " (scale " << scale << ")");
      return;
    }
  }
}

void run_case(const fs::path& dir) {
  Json cases = read_json(dir / "cases.json");
  auto model = Model::load(model_dir(dir, cases).string(), LoadOptions{2, "auto"});
  Reference ref{std::make_unique<SafetensorsFile>((dir / "reference.safetensors").string())};
  const auto tokens = tokens_of(cases);
  const std::string name = dir.filename().string();
  for (const auto& run : cases.find("runs")->items()) {
    const std::string rn = run.find("name")->as_string();
    check_run(*model, ref, tokens, rn, run.find("patch") ? run.find("patch")->dump() : "null", name + "/" + rn);
  }
  if (const Json* grads = cases.find("grads")) {
    auto session = model->create_session();
    for (const auto& g : grads->items()) {
      const std::string gn = g.find("name")->as_string(), label = name + "/" + gn;
      GradRequest req;
      for (const auto& l : g.find("layers")->items()) req.bias_layers.push_back(int(l.as_number()));
      if (const Json* t = g.find("target"); t && t->is_array()) {
        req.target_start = int(t->items()[0].as_number());
        req.target_end = int(t->items()[1].as_number());
      }
      if (const Json* m = g.find("mix"); m && m->is_object()) {
        req.mix_layer = int(m->find("layer")->as_number());
        req.mix_position = int(m->find("position")->as_number());
        for (const auto& x : m->find("logits")->items()) req.mix_logits.push_back(float(x.as_number()));
      }
      Patch patch = parse_patch(g.find("patch") ? g.find("patch")->dump() : "null", model->info());
      GradResult res = session->grad(tokens, patch, req);
      float ref_loss = ref.f32(gn + ".loss")[0];
      ++stats.grads;
      CHECK_MSG(std::fabs(res.loss - ref_loss) <= 1e-4 * std::max(1.0f, std::fabs(ref_loss)),
                label << ": loss " << res.loss << " vs " << ref_loss);
      for (int l : req.bias_layers) {
        check_close(res.bias_grad[l], ref.f32(gn + ".bias." + std::to_string(l)), 1e-3, 1e-7, label + " bias grad layer " + std::to_string(l));
        if (ref.has(gn + ".fd.bias." + std::to_string(l)))
          check_close(res.bias_grad[l], ref.f32(gn + ".fd.bias." + std::to_string(l)), 1e-3, 1e-7,
                      label + " bias grad vs finite differences, layer " + std::to_string(l));
      }
      if (req.mix_layer >= 0) check_close(res.mix_grad, ref.f32(gn + ".mix_grad"), 1e-3, 1e-7, label + " mix grad");
    }
  }
}

// Every run of a fixture with keys and values cached in bf16 against the same run with the fp32 cache: the largest
// |Δlogit| relative to the run's largest |logit|, and the largest |Δlogit| and |logit| themselves.
struct LogitChange {
  float relative = 0, change = 0, logit = 0;
};
LogitChange kv_bf16_logit_change(const fs::path& dir) {
  Json cases = read_json(dir / "cases.json");
  const std::string model = model_dir(dir, cases).string();
  auto fp32 = Model::load(model, LoadOptions{2, "cpu"});
  auto bf16 = Model::load(model, LoadOptions{2, "cpu", "fp32", "auto", "bf16"});
  CHECK_MSG(bf16->info().kv_cache == "bf16", dir.filename().string() << ": kv cache " << bf16->info().kv_cache);
  const auto tokens = tokens_of(cases);
  LogitChange worst;
  for (const auto& run : cases.find("runs")->items()) {
    const std::string patch_json = run.find("patch") ? run.find("patch")->dump() : "null";
    auto a = fp32->create_session()->forward(tokens, parse_patch(patch_json, fp32->info()), LogitsMode::All);
    auto b = bf16->create_session()->forward(tokens, parse_patch(patch_json, bf16->info()), LogitsMode::All);
    float scale = 0;
    for (float x : a.logits) scale = std::max(scale, std::fabs(x));
    const float change = max_abs_diff(a.logits.data(), b.logits.data(), a.logits.size());
    worst.relative = std::max(worst.relative, change / scale);
    worst.change = std::max(worst.change, change);
    worst.logit = std::max(worst.logit, scale);
  }
  return worst;
}

struct RegisterParity {
  RegisterParity() {
    // Cases are discovered at run time so new fixtures need no code change.
    static rstest::Registrar r("parity: every fixture case (logits, routing, patches, gradients)", [] {
      auto dirs = case_dirs();
      CHECK_MSG(!dirs.empty(), "no fixtures found under " << rstest::fixtures_dir);
      for (const auto& d : dirs) {
        try {
          stats = Stats();
          run_case(d);
          std::printf("     %-36s %d runs, %d grads; max |logit diff| %.2e, |weight diff| %.2e, grad rel. diff %.2e\n",
                      d.filename().string().c_str(), stats.runs, stats.grads, stats.logits, stats.weights, stats.grad_rel);
        } catch (const std::exception& e) {
          CHECK_MSG(false, d.filename().string() << ": " << e.what());
        }
      }
    });
    static rstest::Registrar kv("parity: every fixture case with a bf16 KV cache keeps its logits within 1% of the fp32 cache's", [] {
      float worst = 0;
      for (const auto& d : case_dirs()) {
        const LogitChange c = kv_bf16_logit_change(d);
        std::printf("     %-36s max |logit change| %.2e of logits up to %.2f (%.2e)\n", d.filename().string().c_str(), c.change,
                    c.logit, c.relative);
        CHECK_MSG(c.relative > 0 && c.relative < 0.01f,
                  d.filename().string() << ": bf16 keys and values moved the logits by " << c.relative << " of the largest");
        worst = std::max(worst, c.relative);
      }
      std::printf("     worst: %.2e\n", worst);
    });
  }
} register_parity;

}  // namespace
