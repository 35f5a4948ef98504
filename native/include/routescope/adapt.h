// Routescope test-time adaptation: continuous rerouting and C3PO, built on the sessions and models of
// routescope/engine.h. Both optimise router inputs (a logit offset, a mixing row) through the engine's own backward
// pass; what they change is applied as an ordinary routing Patch.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "routescope/engine.h"

namespace routescope {

// Continuous rerouting (arXiv:2510.14853): a router-logit offset delta per adapted layer, optimised on the
// self-supervised next-token loss of the context after prefill and then every `interval` generated tokens.
struct RerouteOptions {
  std::vector<int> layers;          // candidate layers; empty = every MoE layer
  int interval = 128;               // m
  int steps = 5;                    // optimiser steps per round
  float lr = 0.05f;
  bool adam = true;                 // false = plain SGD
  // The paper adapts "selected layers" to prevent over-adaptation: each round adapts this fraction of the
  // candidates (at least one), ranked by routing confidence over the context.
  float layer_fraction = 0.5f;
  bool least_confident_first = true;// rank by C_l = -(1/k) sum log p (largest first) when true
  // Adam's moments: kept for the whole request, one optimiser per layer (δ is one variable optimised across rounds),
  // or reset at every round.
  bool reset_adam_each_round = false;
  // The loss of a round: over the whole context (the paper), or over the tokens since the previous round only, the
  // older positions' keys and values taken from the cache as they are (so a round costs the same however long the
  // context grows; the older positions keep the routing they were decoded with).
  bool since_last_round = false;
};
struct RerouteRound {
  int position = 0;                 // context length when the round ran
  int window_start = 0;             // first position of the round's loss window
  std::vector<int> layers;          // layers adapted in this round
  std::vector<double> losses;       // loss before each step
  std::map<int, float> confidence;  // C_l of every candidate layer over the context, with delta before the round
  std::map<int, std::vector<float>> delta;  // delta of every layer adapted so far, after this round
};
struct RerouteResult {
  std::vector<int> tokens;          // generated
  std::vector<RerouteRound> rounds;
  std::map<int, std::vector<float>> delta;  // final delta per adapted layer
};

// Generation with continuous rerouting: resets the session, runs the prompt, then alternates rounds and decoding.
// on_token as in Session::generate; on_round reports each finished round. Runs on the CPU decoder whatever the
// model's backend. Obeys the session's call rules (Session::reserve) like any other call.
RerouteResult generate_rerouted(Session& session, const std::vector<int>& prompt, const Patch& patch,
                                const SampleOptions& opts, const RerouteOptions& ropts,
                                const std::function<bool(int)>& on_token = nullptr,
                                const std::function<void(const RerouteRound&)>& on_round = nullptr);

// C3PO (arXiv:2504.07964) NGD: re-mix the last prompt position's routing in critical layers so that the
// kernel-weighted loss of reference neighbours, run with that routing, goes down.
struct C3poPrefix;  // a reference item with its prefix cached (opaque)
struct C3poNeighbour {
  std::shared_ptr<C3poPrefix> prefix;
  int answer = 0;      // token id the neighbour should predict after its prompt
  float weight = 1.f;  // kernel weight (normalised by the engine)
  // Optional, for multiple-choice sets: the option tokens (the answer among them). When given, this neighbour's loss
  // is the cross-entropy of the softmax over these tokens only, which reads their rows of the LM head instead of all
  // of it; empty = over the whole vocabulary (the paper's loss).
  std::vector<int> options;
};
struct C3poOptions {
  std::vector<int> layers;      // critical layers
  int core_experts = 20;        // optimise the top-n experts of the original routing; the rest stay frozen
  int steps = 10;
  // Adam on theta = log omega with a cosine schedule. The paper's step of 1e-1 on omega itself (printed "10e-2")
  // moves an expert at a typical core probability of about 0.1 by 1 in log space: Adam's per-coordinate step in
  // theta is the learning rate, so 1 at the start; the end keeps the paper's 1000:1 ratio.
  float lr_start = 1.f, lr_end = 1e-3f;
  bool final_loss = false;      // evaluate the loss once more after the last step (one forward, no backward)
};
struct C3poResult {
  std::map<int, std::vector<float>> omega_before, omega_after;  // per critical layer, size E
  std::map<int, std::vector<int>> core;                         // core experts per layer
  std::vector<double> losses;  // surrogate loss before each step (one entry when steps = 0), then after the last
                               // step when final_loss
  std::map<int, std::vector<float>> first_grad;                 // dLoss/dtheta at the start (all experts)
};

// Caches a reference item's prompt for NGD: every layer's keys and values of all positions but the last, and for
// the last token what does not depend on the routing being optimised: its state up to `first_layer` and, when
// cache_first_layer (the default), that MoE layer's attention output, router logits and every routed expert's
// output, so that a step costs a weighted sum there instead of running the layer. The prefix keeps a reference to
// `model`, which must outlive it.
std::shared_ptr<C3poPrefix> c3po_prefix(Model& model, const std::vector<int>& prompt, int first_layer,
                                        bool cache_first_layer = true);
// Optimises a test prompt's last-position routing against the neighbours; omega_init per critical layer is the
// test prompt's last-position softmax (size E), the starting point. steps = 0 only evaluates the loss and gradient.
// The neighbours' prefixes must all be cached at the same layer, at or below the first critical layer, the same
// way. C3PO calls on one model run one at a time (NGD writes into the neighbours' cached rows); concurrent callers
// wait.
C3poResult c3po_ngd(Model& model, const std::map<int, std::vector<float>>& omega_init,
                    const std::vector<C3poNeighbour>& neighbours, const C3poOptions& opts);

// Routing headroom, the C3PO paper's motivating analysis (ANALYSIS ONLY: the search is guided by the label): for a
// prompt and its correct next token, the routing change at the last prompt position that moves the answer most, in
// each MoE layer alone and in all of them together. A greedy search over the top-k sets (one expert of the set
// swapped with one outside it, their probabilities exchanged; the swaps ranked by their first-order effect on the
// margin, the best `candidates` run exactly), then Adam on log omega (C3PO's oracle, on that row). A right answer is
// searched for a change that breaks it, a wrong one for a change that fixes it; the search stops at the first
// change that flips the answer.
struct HeadroomOptions {
  std::vector<int> layers;      // MoE layers searched, each alone; empty = every MoE layer
  bool joint = true;            // also all of them together (greedy layer by layer from the lowest, then Adam on all)
  int label = -1;               // the correct next token
  // The competing tokens (multiple choice: the option letters, the label among them; ties go to the earlier one);
  // empty = the whole vocabulary (ties go to the lower id).
  std::vector<int> options;
  int candidates = 16;          // swaps run exactly per greedy move; 0 = every swap
  int moves = 0;                // greedy moves per layer; 0 = top_k
  int steps = 10;               // Adam steps on log omega after the greedy search; 0 = none
  float lr_start = 1.f, lr_end = 1e-3f;
};
struct HeadroomSwap {
  int layer = 0, out = 0, in = 0;  // expert `out` left the top-k set, `in` entered it
};
struct HeadroomChange {
  int layer = -1;                           // -1: the searched layers together
  bool flipped = false;                     // the answer changed (a wrong one fixed, a right one broken)
  double margin = 0;                        // the label's margin after the change
  int answer = -1;                          // the answer after the change
  std::vector<HeadroomSwap> swaps;          // the greedy moves taken
  bool gradient = false;                    // Adam on log omega ran after the greedy search
  std::map<int, std::vector<float>> omega;  // the changed rows (layer -> size E); empty when nothing moved the margin
  int evaluations = 0;                      // routings run at the last position
};
struct HeadroomResult {
  double margin = 0;   // the label's logit minus the best competing token's, with the model's own routing
  int answer = -1;     // the model's answer among the competing tokens
  bool correct = false;
  std::vector<HeadroomChange> layers;  // one per searched layer, in order
  HeadroomChange joint;                // when options.joint (evaluations > 0)
};
// Runs on the session's CPU decoder (resets it, and leaves it empty); cancellable like any session call.
HeadroomResult routing_headroom(Session& session, const std::vector<int>& prompt, const HeadroomOptions& opts);

}  // namespace routescope
