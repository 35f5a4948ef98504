// The routing patch: parsed from JSON once, validated against the model, applied inside the router. The rules and
// every message are those of common/src/patch.ts (the TypeScript validator); test/fixtures/patch-cases.json runs
// both (native/tests/patch_test.cpp here), so a patch is refused the same way whichever side reads it first.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "routescope/engine.h"
#include "util/json.h"

namespace routescope {

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& problem) {
  throw Error("BAD_PATCH", "patch: " + (where.empty() ? "" : where + ": ") + problem);
}

// What a JSON value is, without its value.
std::string kind(const Json& v) {
  switch (v.type()) {
    case Json::Type::Null: return "null";
    case Json::Type::Bool: return "a boolean";
    case Json::Type::Number: return "a number";
    case Json::Type::String: return "a string";
    case Json::Type::Array: return "an array";
    case Json::Type::Object: return "an object";
  }
  return "a value";
}

// A key as JSON.stringify writes it, so the message is one line and equal to the TypeScript one.
std::string quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += char(c);
        }
    }
  }
  return out + "\"";
}

// A canonical 0-based decimal: "0", "17"; not "01", "+1", "1.0".
bool is_index_key(const std::string& s) {
  if (s.empty() || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  return s == "0" || s[0] != '0';
}

// Keys JavaScript treats as array indices (up to 2^32 - 2); it enumerates them first, in ascending order.
bool is_array_index(const std::string& s) {
  return is_index_key(s) && (s.size() < 10 || (s.size() == 10 && s <= "4294967294"));
}

using Member = std::pair<std::string, Json>;

// An object's members in the order JavaScript enumerates the keys of a parsed object (array-index keys ascending,
// then the others in file order), so the first problem reported is the one the TypeScript validator reports.
std::vector<const Member*> js_order(const Json& object) {
  std::vector<const Member*> out;
  for (const auto& m : object.members()) out.push_back(&m);
  std::stable_sort(out.begin(), out.end(), [](const Member* a, const Member* b) {
    const bool ia = is_array_index(a->first), ib = is_array_index(b->first);
    if (ia != ib) return ia;
    if (!ia) return false;
    return a->first.size() != b->first.size() ? a->first.size() < b->first.size() : a->first < b->first;
  });
  return out;
}

// A key's value when it is an index below `limit`; -1 when it is larger (beyond 9 digits: certainly larger).
int64_t index_value(const std::string& key) { return key.size() > 9 ? -1 : std::stoll(key); }
bool index_below(const std::string& key, int limit) {
  const int64_t v = index_value(key);
  return v >= 0 && v < limit;
}

// Values that round to a finite float32 (round to nearest: below 2^128 - 2^103).
bool finite_float32(double x) { return std::isfinite(x) && std::fabs(x) < std::ldexp(1.0, 128) - std::ldexp(1.0, 103); }

constexpr int64_t kMaxSafeInteger = 9007199254740991;  // 2^53 - 1, JavaScript's Number.MAX_SAFE_INTEGER

struct Validator {
  const ModelInfo& info;
  int E, k;

  std::string experts_range() const {
    return "(the model has " + std::to_string(E) + " experts: 0.." + std::to_string(E - 1) + ")";
  }

  std::vector<int> expert_list(const Json& v, const std::string& where) const {
    if (!v.is_array()) fail(where, "expected an array of expert indices, got " + kind(v));
    std::vector<int> out;
    for (size_t i = 0; i < v.items().size(); ++i) {
      int64_t e;
      if (!v.items()[i].as_int64(e) || e < 0 || e > kMaxSafeInteger)
        fail(where + "[" + std::to_string(i) + "]", "expected an expert index (a non-negative integer)");
      if (e >= E) fail(where, "expert " + std::to_string(e) + " is out of range " + experts_range());
      if (std::find(out.begin(), out.end(), int(e)) != out.end()) fail(where, "expert " + std::to_string(e) + " is listed twice");
      out.push_back(int(e));
    }
    return out;
  }

  float bias_value(const Json& x, const std::string& where) const {
    if (!x.is_number()) fail(where, "expected a number, got " + kind(x));
    if (!finite_float32(x.as_number())) fail(where, "not a finite float32 value (|value| < 3.4e38)");
    return static_cast<float>(x.as_number());
  }

  std::vector<float> bias(const Json& v, const std::string& at) const {
    std::vector<float> out(E, 0.f);
    if (v.is_array()) {
      if (static_cast<int>(v.items().size()) != E)
        fail(at + ": bias", "has " + std::to_string(v.items().size()) + " values, expected " + std::to_string(E) + " (one per expert)");
      for (int e = 0; e < E; ++e) out[e] = bias_value(v.items()[e], at + ": bias: expert " + std::to_string(e));
    } else if (v.is_object()) {
      for (const Member* m : js_order(v)) {
        if (!is_index_key(m->first)) fail(at + ": bias", quote(m->first) + " is not an expert index");
        if (!index_below(m->first, E)) fail(at + ": bias", "expert " + m->first + " is out of range " + experts_range());
        out[index_value(m->first)] = bias_value(m->second, at + ": bias: expert " + m->first);
      }
    } else {
      fail(at + ": bias", "expected {\"<expert>\": value} or an array of " + std::to_string(E) + " values, got " + kind(v));
    }
    return out;
  }

  std::vector<float> mix_row(const Json& v, const std::string& where) const {
    if (!v.is_array()) fail(where, "expected an array of " + std::to_string(E) + " probabilities, got " + kind(v));
    if (static_cast<int>(v.items().size()) != E)
      fail(where, "has " + std::to_string(v.items().size()) + " values, expected " + std::to_string(E) + " (one per expert)");
    std::vector<float> row(E);
    bool positive = false;
    for (int e = 0; e < E; ++e) {
      const Json& x = v.items()[e];
      const std::string at = where + ": expert " + std::to_string(e);
      if (!x.is_number()) fail(at, "expected a number, got " + kind(x));
      const double p = x.as_number();
      if (!(p >= 0 && p <= 1)) fail(at, "expected a probability in [0, 1]");
      row[e] = static_cast<float>(p);
      positive = positive || p > 0;
    }
    if (!positive) fail(where, "needs at least one positive probability");
    return row;
  }

  void mix(const Json& v, const std::string& at, LayerPatch& lp) const {
    if (!v.is_object())
      fail(at + ": mix", "expected {\"<position>\": [" + std::to_string(E) + " probabilities]}, got " + kind(v));
    std::string tail_key;
    for (const Member* m : js_order(v)) {
      const std::string& key = m->first;
      const bool tail = !key.empty() && key.back() == '+';
      const std::string position = tail ? key.substr(0, key.size() - 1) : key;
      if (!is_index_key(position))
        fail(at + ": mix", quote(key) + " is not a position (0-based decimal, or \"N+\" for every position >= N)");
      if (position.size() > 9) fail(at + ": mix", "position " + quote(key) + " is out of range (at most 999999999)");
      if (tail) {
        if (!tail_key.empty())
          fail(at + ": mix", "has two \"N+\" keys (" + quote(tail_key) + " and " + quote(key) + "); at most one per layer");
        tail_key = key;
      }
      std::vector<float> row = mix_row(m->second, at + ": mix[" + quote(key) + "]");
      if (tail) {
        lp.mix_tail_start = static_cast<int>(index_value(position));
        lp.mix_tail = std::move(row);
      } else {
        lp.mix[static_cast<int>(index_value(position))] = std::move(row);
      }
    }
  }

  LayerPatch layer(const Json& value, const std::string& at) const {
    if (!value.is_object()) fail(at, "expected an object with mask, force, bias or mix, got " + kind(value));
    for (const Member* m : js_order(value))
      if (m->first != "mask" && m->first != "force" && m->first != "bias" && m->first != "mix")
        fail(at, "unknown key " + quote(m->first) + " (expected mask, force, bias or mix)");
    LayerPatch lp;
    if (const Json* v = value.find("mask")) lp.mask = expert_list(*v, at + ": mask");
    if (const Json* v = value.find("force")) lp.force = expert_list(*v, at + ": force");
    for (int e : lp.force)
      if (std::find(lp.mask.begin(), lp.mask.end(), e) != lp.mask.end())
        fail(at, "expert " + std::to_string(e) + " is both masked and forced");
    if (static_cast<int>(lp.force.size()) > k)
      fail(at + ": force", std::to_string(lp.force.size()) + " experts forced but only top_k=" + std::to_string(k) + " are selected per token");
    if (E - static_cast<int>(lp.mask.size()) < k)
      fail(at + ": mask", std::to_string(lp.mask.size()) + " of " + std::to_string(E) + " experts masked, leaving fewer than top_k=" + std::to_string(k));
    if (const Json* v = value.find("bias")) lp.bias = bias(*v, at);
    if (const Json* v = value.find("mix")) {
      if (info.router_scoring == "sparsemixer")  // engine-side only: the TypeScript validator does not know the router
        fail(at + ": mix", "is not defined for the sparsemixer router (phimoe): it has no score row to replace");
      mix(*v, at, lp);
    }
    return lp;
  }
};

}  // namespace

Patch parse_patch(const std::string& text, const ModelInfo& info) {
  Json root;
  try {
    root = Json::parse(text);
  } catch (const std::exception& e) {
    fail("", std::string("invalid JSON (") + e.what() + ")");
  }
  Patch patch;
  if (root.is_null()) return patch;  // JSON null: no edits
  if (!root.is_object()) fail("", "expected an object {\"layers\": {...}}, got " + kind(root));
  for (const Member* m : js_order(root))
    if (m->first != "layers") fail("", "unknown key " + quote(m->first) + " (expected only \"layers\")");
  const Json* layers = root.find("layers");
  if (!layers) return patch;
  if (!layers->is_object()) fail("layers", "expected an object keyed by layer index, got " + kind(*layers));
  const Validator check{info, info.num_experts, info.top_k};
  for (const Member* m : js_order(*layers)) {
    const std::string& key = m->first;
    if (!is_index_key(key)) fail("layers", quote(key) + " is not a layer index (0-based decimal)");
    const std::string at = "layer " + key;
    if (!index_below(key, info.num_layers))
      fail(at, "out of range (the model has " + std::to_string(info.num_layers) + " layers: 0.." + std::to_string(info.num_layers - 1) + ")");
    const int l = static_cast<int>(index_value(key));
    if (std::find(info.moe_layers.begin(), info.moe_layers.end(), l) == info.moe_layers.end())
      fail(at, "is a dense layer without a router");
    patch.layers[l] = check.layer(m->second, at);
  }
  return patch;
}

}  // namespace routescope
