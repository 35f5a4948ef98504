// The router of one token: the model's routing rule (model/config.h RouterRule) with the routing patch applied,
// and the backward of the mixing weights. Shared by the CPU decoder and the CUDA backend (which routes on the
// host), so routing is identical everywhere. The rule, per token:
//   z      = router logits + patch bias
//   scores = softmax(z) over the unmasked experts, or sigmoid(z); a mix row at this position replaces them;
//            masked experts score 0
//   choice = scores (+ the layer's e_score_correction_bias), or z itself when the rule selects by logit (Llama 4;
//            a mix row's scores otherwise); masked experts are never chosen
//   groups = (n_group > 1) only the topk_group groups with the best group score (max, or sum of the two best
//            choices of the group's unmasked experts) stay candidates
//   chosen = forced experts, then the best candidates by choice (ties: lower index) until k
//   weights = scores of the chosen, divided by their sum when the rule renormalises, × routed_scaling_factor
// Reported highest weight first (ties: lower index).
// SparseMixer (PhiMoE's sparsemixer, inference path), per token:
//   z      = router logits + patch bias; masked experts are never candidates
//   slot i = forced[i] if given, else the best remaining candidate by z (ties: lower index); the candidates within
//            2·jitter_eps of it, relative (z_c − z_e ≤ 2·eps·max(|z_e|, z_c)), share a softmax of z whose value at
//            the chosen expert is the slot's weight; the chosen expert leaves the candidates (a forced expert below
//            others shares its softmax with every candidate above it: the ratio is negative for them)
//   scores = per slot (reported order) that softmax over E experts, 0 outside its candidates: [k, E]
//   a mix row has no meaning here (there is no score row to replace); the patch parser refuses it
#pragma once
#include <cstdint>
#include <string>

#include "model/config.h"
#include "routescope/engine.h"

namespace routescope {

// How many floats route_token writes to `scores` per token: E, or k × E for SparseMixer.
inline int router_score_width(Scoring scoring, int E, int k) { return scoring == Scoring::SparseMixer ? k * E : E; }

// z_raw: [E] router logits; selection_bias: [E] or null; scores: [router_score_width] out (what the weights are taken from);
// sel / w: [k] out; mixed: whether a mix row replaced the scores.
void route_token(const RouterRule& rule, const float* z_raw, int E, int k, const float* selection_bias,
                 const LayerPatch* lp, int abs_pos, float* scores, int32_t* sel, float* w, bool* mixed);

// ds[E] = dLoss/dscores given a[j] = <dLoss/dy, output of selected expert j> (selection held fixed); zero outside
// the selection.
void weights_backward(const RouterRule& rule, int E, int k, const float* scores, const int32_t* sel, const double* a,
                      double* ds);
// Through the scoring function: dLoss/dz = J^T ds, with J the Jacobian of softmax or sigmoid at `scores`.
// The same map gives dLoss/dθ for a mix row ω = scoring(θ).
void scoring_backward(Scoring scoring, int E, const float* scores, const double* ds, float* dz);
// SparseMixer: dz[E] = Σ_j a[j] w[j] (δ(e, sel[j]) − scores[j][e]) (selection and candidate sets held fixed).
void sparsemixer_backward(int E, int k, const float* scores, const float* w, const int32_t* sel, const double* a, float* dz);
// Refuses (Error UNSUPPORTED) a method built on score rows (C3PO's ω, rerouting's confidence, headroom's re-mixes)
// for a router that has none (SparseMixer).
void require_score_router(const RouterRule& rule, const char* method);
// Refuses (Error UNSUPPORTED) a method that replays an MoE block as a weighted sum of cached expert outputs for
// experts whose routing weight scales their input instead (Llama 4).
void require_output_mixing(const ExpertMlp& mlp, const std::string& method);
// ω = scoring(θ): the row a mix gradient or C3PO's θ stands for (softmax: a distribution; sigmoid: per expert).
void scores_from_logits(Scoring scoring, const float* theta, int E, float* out);

}  // namespace routescope
