#include "cpu/router.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace routescope {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}

void scores_from_logits(Scoring scoring, const float* theta, int E, float* out) {
  if (scoring == Scoring::Sigmoid) {
    for (int e = 0; e < E; ++e) out[e] = 1.f / (1.f + std::exp(-theta[e]));
    return;
  }
  float mx = kNegInf;
  for (int e = 0; e < E; ++e) mx = std::max(mx, theta[e]);
  double sum = 0;
  for (int e = 0; e < E; ++e) {
    out[e] = theta[e] == kNegInf ? 0.f : std::exp(theta[e] - mx);
    sum += out[e];
  }
  for (int e = 0; e < E; ++e) out[e] = static_cast<float>(out[e] / sum);
}

namespace {

// PhiMoE's sparsemixer at inference (router.h): slot by slot, the best remaining logit and a softmax over the
// remaining logits within 2·jitter_eps of it (relative, as transformers' mask: (z_c − z_e) / max(|z_e|, z_c)).
void route_sparsemixer(const RouterRule& rule, const float* z_raw, int E, int k, const LayerPatch* lp, int abs_pos,
                       float* s, int32_t* sel, float* w) {
  if (lp && lp->mix_row(abs_pos))
    throw Error("BAD_PATCH", "patch: mix is not defined for the sparsemixer router (phimoe): it has no score row to replace");
  thread_local std::vector<double> z;
  thread_local std::vector<uint8_t> out;  // masked or already chosen
  thread_local std::vector<float> slot_scores;
  z.resize(E);
  out.assign(E, 0);
  slot_scores.assign(static_cast<size_t>(k) * E, 0.f);
  const bool bias = lp && !lp->bias.empty();
  for (int e = 0; e < E; ++e) z[e] = static_cast<double>(z_raw[e]) + (bias ? lp->bias[e] : 0.f);
  if (lp)
    for (int e : lp->mask) out[e] = 1;
  const double gap = 2.0 * rule.jitter_eps;
  for (int i = 0; i < k; ++i) {
    int c = -1;
    if (lp && i < static_cast<int>(lp->force.size())) {
      c = lp->force[i];
    } else {
      for (int e = 0; e < E; ++e)
        if (!out[e] && (c < 0 || z[e] > z[c])) c = e;
    }
    const double zc = z[c];
    double sum = 0;
    float* row = &slot_scores[static_cast<size_t>(i) * E];
    for (int e = 0; e < E; ++e) {
      if (out[e] && e != c) continue;
      const double factor = std::max(std::fabs(z[e]), zc);
      if ((zc - z[e]) / factor > gap) continue;  // NaN (0/0) keeps the expert, as transformers' mask does
      row[e] = static_cast<float>(std::exp(z[e] - zc));
      sum += row[e];
    }
    for (int e = 0; e < E; ++e) row[e] = static_cast<float>(row[e] / sum);
    sel[i] = c;
    w[i] = row[c] * rule.scale;
    out[c] = 1;
  }
  // Highest weight first, ties by lower expert index; each slot's softmax row moves with its expert (insertion
  // sort: defined even for NaN weights from non-finite logits).
  std::vector<int> order(k);
  for (int i = 0; i < k; ++i) order[i] = i;
  for (int i = 1; i < k; ++i)
    for (int j = i; j > 0; --j) {
      const int a = order[j], b = order[j - 1];
      if (!(w[a] > w[b] || (w[a] == w[b] && sel[a] < sel[b]))) break;
      std::swap(order[j], order[j - 1]);
    }
  std::vector<int32_t> sel0(sel, sel + k);
  std::vector<float> w0(w, w + k);
  for (int i = 0; i < k; ++i) {
    sel[i] = sel0[order[i]];
    w[i] = w0[order[i]];
    std::copy(&slot_scores[static_cast<size_t>(order[i]) * E], &slot_scores[static_cast<size_t>(order[i] + 1) * E],
              s + static_cast<size_t>(i) * E);
  }
}

}  // namespace

void sparsemixer_backward(int E, int k, const float* scores, const float* w, const int32_t* sel, const double* a, float* dz) {
  std::vector<double> acc(E, 0.0);
  for (int j = 0; j < k; ++j) {
    const double g = a[j] * w[j];
    const float* p = scores + static_cast<size_t>(j) * E;
    for (int e = 0; e < E; ++e) acc[e] -= g * p[e];
    acc[sel[j]] += g;
  }
  for (int e = 0; e < E; ++e) dz[e] = static_cast<float>(acc[e]);
}

void require_score_router(const RouterRule& rule, const char* method) {
  if (rule.scoring == Scoring::SparseMixer)
    throw Error("UNSUPPORTED", std::string(method) + " is not available for the sparsemixer router (phimoe): its weights " +
                                   "come from one softmax per slot over the logits near the chosen one, not from a " +
                                   "score row over all experts that " + method + " could re-mix");
}

void require_output_mixing(const ExpertMlp& mlp, const std::string& method) {
  if (mlp.input_scaled)
    throw Error("UNSUPPORTED", method + " is not available for llama4: it replays the MoE block as a weighted sum of " +
                                   "cached expert outputs, and Llama 4's routing weight scales each expert's input instead");
}

void route_token(const RouterRule& rule, const float* z_raw, int E, int k, const float* selection_bias,
                 const LayerPatch* lp, int abs_pos, float* s, int32_t* sel, float* w, bool* mixed) {
  if (rule.scoring == Scoring::SparseMixer) {
    *mixed = false;
    return route_sparsemixer(rule, z_raw, E, k, lp, abs_pos, s, sel, w);
  }
  thread_local std::vector<float> z, choice;
  thread_local std::vector<uint8_t> blocked;  // masked, already chosen, or outside the kept groups
  z.resize(E), choice.resize(E);
  blocked.assign(E, 0);
  *mixed = false;
  const std::vector<float>* mix_row = lp ? lp->mix_row(abs_pos) : nullptr;
  if (mix_row) {
    std::copy(mix_row->begin(), mix_row->end(), s);
    *mixed = true;
  } else {
    const bool bias = lp && !lp->bias.empty();
    for (int e = 0; e < E; ++e) z[e] = z_raw[e] + (bias ? lp->bias[e] : 0.f);
    if (lp && rule.scoring == Scoring::Softmax)
      for (int e : lp->mask) z[e] = kNegInf;  // masked experts leave the softmax's denominator too
    scores_from_logits(rule.scoring, z.data(), E, s);
  }
  if (lp)
    for (int e : lp->mask) s[e] = 0.f, blocked[e] = 1;
  const float* by = rule.select_by_logit && !*mixed ? z.data() : s;  // Llama 4 ranks logits (a mix row: its scores)
  for (int e = 0; e < E; ++e) choice[e] = blocked[e] ? kNegInf : by[e] + (selection_bias ? selection_bias[e] : 0.f);
  int n = 0;
  auto take = [&](int e) {
    blocked[e] = 1;
    sel[n++] = e;
  };
  if (lp)
    for (int e : lp->force) take(e);
  std::vector<uint8_t> outside;  // experts outside the kept groups, released if the groups cannot fill k
  if (rule.groups > 1 && n < k) {
    const int size = E / rule.groups;
    std::vector<std::pair<float, int>> group(rule.groups);
    for (int g = 0; g < rule.groups; ++g) {
      float best = kNegInf, second = kNegInf;
      for (int e = g * size; e < (g + 1) * size; ++e) {
        if (choice[e] == kNegInf) continue;  // masked (forced experts still count: they are in their group)
        if (choice[e] > best) second = best, best = choice[e];
        else if (choice[e] > second) second = choice[e];
      }
      float score = best;
      if (rule.group_score == GroupScore::TopTwoSum && second != kNegInf) score = best + second;
      group[g] = {score, g};
    }
    std::stable_sort(group.begin(), group.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    outside.assign(E, 0);
    for (int i = rule.groups_kept; i < rule.groups; ++i)
      for (int e = group[i].second * size; e < (group[i].second + 1) * size; ++e)
        if (!blocked[e]) blocked[e] = 1, outside[e] = 1;
  }
  while (n < k) {
    int best = -1;
    for (int e = 0; e < E; ++e)
      if (!blocked[e] && (best < 0 || choice[e] > choice[best])) best = e;
    if (best < 0) {  // masks emptied the kept groups: the other groups' experts become candidates
      for (int e = 0; e < E && !outside.empty(); ++e)
        if (outside[e]) blocked[e] = 0, outside[e] = 0;
      for (int e = 0; e < E; ++e)
        if (!blocked[e] && (best < 0 || choice[e] > choice[best])) best = e;
    }
    take(best);
  }
  double total = 0;
  for (int i = 0; i < k; ++i) total += s[sel[i]];
  for (int i = 0; i < k; ++i) {
    const double v = rule.renorm && total > 0 ? s[sel[i]] / total : s[sel[i]];
    w[i] = static_cast<float>(v * rule.scale);
  }
  // Highest weight first, ties by lower expert index.
  for (int i = 1; i < k; ++i)
    for (int j = i; j > 0 && (w[j] > w[j - 1] || (w[j] == w[j - 1] && sel[j] < sel[j - 1])); --j) {
      std::swap(w[j], w[j - 1]);
      std::swap(sel[j], sel[j - 1]);
    }
}

void weights_backward(const RouterRule& rule, int E, int k, const float* s, const int32_t* sel, const double* a,
                      double* ds) {
  std::fill(ds, ds + E, 0.0);
  if (rule.renorm) {
    double sum = 0, wa = 0;
    for (int j = 0; j < k; ++j) sum += s[sel[j]];
    if (!(sum > 0)) return;
    for (int j = 0; j < k; ++j) wa += s[sel[j]] / sum * a[j];
    for (int j = 0; j < k; ++j) ds[sel[j]] = rule.scale * (a[j] - wa) / sum;
  } else {
    for (int j = 0; j < k; ++j) ds[sel[j]] = rule.scale * a[j];
  }
}

void scoring_backward(Scoring scoring, int E, const float* s, const double* ds, float* dz) {
  if (scoring == Scoring::Sigmoid) {
    for (int e = 0; e < E; ++e) dz[e] = static_cast<float>(ds[e] * s[e] * (1.0 - s[e]));
    return;
  }
  double dot = 0;
  for (int e = 0; e < E; ++e) dot += ds[e] * s[e];
  for (int e = 0; e < E; ++e) dz[e] = static_cast<float>(s[e] * (ds[e] - dot));
}

}  // namespace routescope
