// The routing patch: parsed from JSON once, validated against the model, applied inside the router.
#include <algorithm>
#include <cmath>
#include <set>

#include "routescope/engine.h"
#include "util/json.h"

namespace routescope {

namespace {
[[noreturn]] void bad(const std::string& what) { throw Error("BAD_PATCH", "patch: " + what); }

int parse_index(const std::string& s, const char* what) {
  if (s.empty() || s.size() > 9 || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
    bad(std::string(what) + " \"" + s + "\" is not a non-negative integer");
  return std::stoi(s);
}

std::vector<int> expert_list(const Json& v, const std::string& where, int E) {
  if (!v.is_array()) bad(where + " must be a list of expert numbers");
  std::vector<int> out;
  for (const auto& x : v.items()) {
    int64_t e;
    if (!x.as_int64(e)) bad(where + " must hold integers");
    if (e < 0 || e >= E) bad(where + ": expert " + std::to_string(e) + " is out of range (the model has " + std::to_string(E) + " experts, 0-based)");
    if (std::find(out.begin(), out.end(), int(e)) == out.end()) out.push_back(int(e));
  }
  return out;
}

std::vector<float> expert_vector(const Json& v, const std::string& where, int E, bool nonnegative) {
  std::vector<float> out(E, 0.f);
  auto put = [&](int e, const Json& x) {
    if (!x.is_number() || !std::isfinite(x.as_number())) bad(where + ": value for expert " + std::to_string(e) + " must be a finite number");
    if (nonnegative && x.as_number() < 0) bad(where + ": value for expert " + std::to_string(e) + " must be >= 0");
    out[e] = static_cast<float>(x.as_number());
  };
  if (v.is_array()) {
    if (static_cast<int>(v.items().size()) != E)
      bad(where + " has " + std::to_string(v.items().size()) + " values; the model has " + std::to_string(E) + " experts");
    for (int e = 0; e < E; ++e) put(e, v.items()[e]);
  } else if (v.is_object() && !nonnegative) {
    for (const auto& kv : v.members()) {
      int e = parse_index(kv.first, "expert");
      if (e >= E) bad(where + ": expert " + std::to_string(e) + " is out of range (the model has " + std::to_string(E) + " experts, 0-based)");
      put(e, kv.second);
    }
  } else {
    bad(where + (nonnegative ? " must be a list of E probabilities" : " must be {\"<expert>\": value} or a list of E values"));
  }
  return out;
}
}  // namespace

Patch parse_patch(const std::string& text, const ModelInfo& info) {
  Json root;
  try {
    root = Json::parse(text);
  } catch (const std::exception& e) {
    bad(e.what());
  }
  Patch patch;
  if (root.is_null()) return patch;
  if (!root.is_object()) bad("must be a JSON object {\"layers\": {...}}");
  for (const auto& kv : root.members())
    if (kv.first != "layers" && kv.first != "description" && kv.first != "model")
      bad("unknown field \"" + kv.first + "\" (expected \"layers\")");
  const Json* layers = root.find("layers");
  if (!layers || layers->is_null()) return patch;
  if (!layers->is_object()) bad("\"layers\" must be an object keyed by layer number");
  const int E = info.num_experts, k = info.top_k;
  for (const auto& kv : layers->members()) {
    int l = parse_index(kv.first, "layer");
    const std::string where = "layer " + std::to_string(l);
    if (l >= info.num_layers) bad(where + " is out of range (the model has " + std::to_string(info.num_layers) + " layers, 0-based)");
    if (std::find(info.moe_layers.begin(), info.moe_layers.end(), l) == info.moe_layers.end())
      bad(where + " has no router (it is a dense MLP layer)");
    if (!kv.second.is_object()) bad(where + " must be an object with mask, force, bias or mix");
    LayerPatch lp;
    for (const auto& f : kv.second.members()) {
      if (f.first == "mask") lp.mask = expert_list(f.second, where + " mask", E);
      else if (f.first == "force") lp.force = expert_list(f.second, where + " force", E);
      else if (f.first == "bias") {
        if (!f.second.is_null()) lp.bias = expert_vector(f.second, where + " bias", E, false);
      } else if (f.first == "mix") {
        if (f.second.is_null()) continue;
        if (!f.second.is_object()) bad(where + " mix must be {\"<position>\": [E probabilities]}");
        for (const auto& m : f.second.members()) {
          const bool tail = !m.first.empty() && m.first.back() == '+';
          int pos = parse_index(tail ? m.first.substr(0, m.first.size() - 1) : m.first, "mix position");
          std::vector<float> row = expert_vector(m.second, where + " mix at position " + m.first, E, true);
          double sum = 0;
          for (float x : row) sum += x;
          if (!(sum > 0)) bad(where + " mix at position " + m.first + " has no positive weight");
          if (tail) {
            lp.mix_tail_start = pos;
            lp.mix_tail = std::move(row);
          } else {
            lp.mix[pos] = std::move(row);
          }
        }
      } else {
        bad(where + ": unknown field \"" + f.first + "\" (expected mask, force, bias or mix)");
      }
    }
    for (int e : lp.force)
      if (std::find(lp.mask.begin(), lp.mask.end(), e) != lp.mask.end())
        bad(where + ": expert " + std::to_string(e) + " is both masked and forced");
    if (static_cast<int>(lp.force.size()) > k)
      bad(where + ": " + std::to_string(lp.force.size()) + " forced experts but only " + std::to_string(k) + " are selected per token");
    if (E - static_cast<int>(lp.mask.size()) < k)
      bad(where + ": masking " + std::to_string(lp.mask.size()) + " of " + std::to_string(E) + " experts leaves fewer than top-k = " + std::to_string(k));
    patch.layers[l] = std::move(lp);
  }
  return patch;
}

}  // namespace routescope
