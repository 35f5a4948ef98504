// The routing patch validator against the shared table test/fixtures/patch-cases.json, which the TypeScript
// validator (common/src/patch.ts) also runs: every invalid patch must be refused with exactly the table's message,
// every valid one accepted with the contents its canonical form lists.
#include <algorithm>
#include <fstream>
#include <sstream>

#include "routescope/engine.h"
#include "test.h"
#include "util/json.h"

using namespace routescope;

namespace {

Json read_cases() {
  std::ifstream f(rstest::fixtures_dir + "/patch-cases.json");
  std::stringstream ss;
  ss << f.rdbuf();
  return Json::parse(ss.str());
}

std::vector<int> ints(const Json* list) {
  std::vector<int> out;
  if (list)
    for (const auto& x : list->items()) out.push_back(int(x.as_number()));
  return out;
}

// The parsed layer agrees with the canonical JSON of that layer (absent = no edits).
bool same_layer(const LayerPatch& lp, const Json* canonical, int E) {
  const Json* none = nullptr;
  const Json* mask = canonical ? canonical->find("mask") : none;
  const Json* force = canonical ? canonical->find("force") : none;
  const Json* bias = canonical ? canonical->find("bias") : none;
  const Json* mix = canonical ? canonical->find("mix") : none;
  if (lp.mask != ints(mask) || lp.force != ints(force)) return false;
  std::vector<float> dense;
  if (bias) {
    dense.assign(E, 0.f);
    if (bias->is_array())
      for (int e = 0; e < E; ++e) dense[e] = float(bias->items()[e].as_number());
    else
      for (const auto& m : bias->members()) dense[std::stoi(m.first)] = float(m.second.as_number());
  }
  const bool no_bias = std::all_of(lp.bias.begin(), lp.bias.end(), [](float v) { return v == 0.f; });
  if (!(lp.bias == dense || (!bias && no_bias))) return false;
  size_t rows = 0;
  if (mix)
    for (const auto& m : mix->members()) {
      const bool tail = m.first.back() == '+';
      const int position = std::stoi(tail ? m.first.substr(0, m.first.size() - 1) : m.first);
      std::vector<float> row;
      for (const auto& x : m.second.items()) row.push_back(float(x.as_number()));
      if (tail ? (lp.mix_tail_start != position || lp.mix_tail != row) : (!lp.mix.count(position) || lp.mix.at(position) != row))
        return false;
      ++rows;
    }
  return lp.mix.size() + (lp.mix_tail_start >= 0 ? 1 : 0) == rows;
}

}  // namespace

TEST("patch: the shared table of valid and invalid patches (same messages as the TypeScript validator)") {
  const Json doc = read_cases();
  const Json& m = *doc.find("model");
  ModelInfo info;
  info.num_layers = int(m.find("numLayers")->as_number());
  info.num_experts = int(m.find("numExperts")->as_number());
  info.top_k = int(m.find("topK")->as_number());
  info.moe_layers = ints(m.find("moeLayers"));
  int checked = 0;
  for (const Json& c : doc.find("cases")->items()) {
    const std::string name = c.find("name")->as_string();
    const std::string text = c.find("patch")->as_string();
    const Json* expected = c.find("error");
    std::string message;
    Patch patch;
    try {
      patch = parse_patch(text, info);
    } catch (const Error& e) {
      CHECK_MSG(e.code() == "BAD_PATCH", name << ": code " << e.code());
      message = e.what();
    }
    if (expected->is_null()) {
      CHECK_MSG(message.empty(), name << ": refused a valid patch: " << message);
      const Json canonical = Json::parse(c.find("canonical")->as_string());
      const Json& layers = *canonical.find("layers");
      for (const auto& [layer, lp] : patch.layers)
        CHECK_MSG(same_layer(lp, layers.find(std::to_string(layer)), info.num_experts), name << ": layer " << layer << " differs from " << canonical.dump());
      for (const auto& member : layers.members())
        CHECK_MSG(patch.layers.count(std::stoi(member.first)), name << ": layer " << member.first << " missing");
    } else {
      CHECK_MSG(message == expected->as_string(), name << ":\n      expected " << expected->as_string() << "\n      got      " << message);
    }
    ++checked;
  }
  CHECK_MSG(checked >= 50, "only " << checked << " cases in patch-cases.json");
}
