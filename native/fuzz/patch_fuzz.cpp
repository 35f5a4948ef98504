// libFuzzer harness: the routing-patch parser and the router (parse_patch + route_token).
// Input: 4 bytes choosing the model's shape (experts, top-k, layers, which are MoE), 1 byte of logit flavour, 1 byte
// of routing rule (softmax or sigmoid, renormalised or not, a group limit as DeepSeek's, a selection bias), then
// the patch JSON. A parsed patch is applied at every patched position; the selection must hold top-k distinct
// experts in range, never a masked one, always the forced ones.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "cpu/router.h"
#include "routescope/engine.h"

using namespace routescope;

namespace {
float logit(uint32_t& state, uint8_t flavour) {
  state = state * 1664525u + 1013904223u;
  const float x = static_cast<float>(static_cast<int32_t>(state >> 8) - (1 << 23)) / (1 << 20);
  switch (flavour % 8) {
    case 5: return (state & 0x300) == 0 ? std::numeric_limits<float>::quiet_NaN() : x;
    case 6: return (state & 0x300) == 0 ? std::numeric_limits<float>::infinity() : x;
    case 7: return (state & 0x300) == 0 ? -std::numeric_limits<float>::infinity() : x * 1e30f;
    default: return x;
  }
}
}  // namespace

// A rule the config readers would accept for E experts and top-k (model/arch_deepseek.cpp read_groups).
RouterRule rule_from(uint8_t b, int E, int k) {
  RouterRule r;
  r.scoring = (b & 1) ? Scoring::Sigmoid : Scoring::Softmax;
  r.renorm = (b & 2) != 0;
  r.scale = (b & 4) ? 2.5f : 1.f;
  r.selection_bias = (b & 8) != 0;
  r.group_score = (b & 16) ? GroupScore::TopTwoSum : GroupScore::Max;
  const int want = 1 + ((b >> 5) & 7);
  for (int g = std::min(want, E); g > 1; --g) {
    if (E % g) continue;
    const int per = E / g;
    int kept = 1 + (b >> 3) % g;
    while (kept < g && kept * per < k) ++kept;
    if (kept * per < k || (r.group_score == GroupScore::TopTwoSum && per < 2)) continue;
    r.groups = g, r.groups_kept = kept;
    break;
  }
  return r;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 6) return 0;
  ModelInfo info;
  info.num_experts = (data[0] & 0x80) ? 257 + data[0] % 40 : 1 + data[0] % 64;
  info.top_k = 1 + data[1] % info.num_experts;
  info.num_layers = 1 + data[2] % 8;
  for (int l = 0; l < info.num_layers; ++l)
    if (((data[3] >> l) & 1) == 0) info.moe_layers.push_back(l);
  const uint8_t flavour = data[4];
  RouterRule rule = rule_from(data[5], info.num_experts, info.top_k);
  if (flavour & 0x80) {  // PhiMoE's sparsemixer (its patches have no mix: the parser refuses them for this router)
    rule = RouterRule{};
    rule.scoring = Scoring::SparseMixer;
    rule.jitter_eps = 0.05f * ((flavour >> 3) & 15);
    info.router_scoring = "sparsemixer";
  }
  const std::string text(reinterpret_cast<const char*>(data + 6), size - 6);
  Patch patch;
  try {
    patch = parse_patch(text, info);
  } catch (const Error&) {
    return 0;
  }
  const int E = info.num_experts, k = info.top_k;
  std::vector<float> z(E), p(router_score_width(rule.scoring, E, k)), w(k), bias(E);
  std::vector<int32_t> sel(k);
  uint32_t state = static_cast<uint32_t>(size) * 2654435761u;
  for (const auto& [layer, lp] : patch.layers) {
    std::vector<int> positions = {0, 1, 2, 3};
    for (const auto& kv : lp.mix) positions.push_back(kv.first);
    if (lp.mix_tail_start >= 0) positions.push_back(lp.mix_tail_start), positions.push_back(lp.mix_tail_start + 7);
    for (int pos : positions) {
      for (float& x : z) x = logit(state, flavour);
      for (float& x : bias) x = logit(state, 0) * 0.01f;
      bool mixed = false;
      for (bool renorm : {false, true}) {
        RouterRule r = rule;
        r.renorm = renorm;
        route_token(r, z.data(), E, k, r.selection_bias ? bias.data() : nullptr, &lp, pos, p.data(), sel.data(),
                    w.data(), &mixed);
        std::vector<bool> seen(E, false);
        for (int i = 0; i < k; ++i) {
          if (sel[i] < 0 || sel[i] >= E || seen[sel[i]]) std::abort();  // out of range or selected twice
          seen[sel[i]] = true;
        }
        for (int e : lp.mask)
          if (seen[e]) std::abort();  // a masked expert was selected
        for (int e : lp.force)
          if (!seen[e]) std::abort();  // a forced expert was not
      }
    }
  }
  return 0;
}
