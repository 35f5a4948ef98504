// A prompt cached up to its last position, whose last token is replayed with other routings: C3PO's neighbours
// (adapt/c3po.cpp) and the headroom search (adapt/headroom.cpp).
#pragma once
#include <memory>
#include <vector>

#include "cpu/forward.h"
#include "engine_impl.h"

namespace routescope {

struct C3poPrefix {
  std::shared_ptr<SessionImpl> session;  // KV cache: every layer for positions < last; the last position's rows are
                                         // written by each replay above first_layer
  int first_layer = 0;
  int last = 0;                          // position of the last prompt token
  bool cached = false;                   // first_layer's MoE block is cached (below) instead of run
  std::vector<float> h;                  // !cached: the last token's hidden state at the input of first_layer
  std::vector<float> h_base;             // cached: the residual after first_layer's attention plus its shared expert
  std::vector<float> experts;            // cached: every routed expert's output at first_layer [E, H]
  std::vector<float> router;             // cached: the raw router logits at first_layer [E]
  const ModelImpl* model = nullptr;      // the model whose caches these are
};

// Fills the cached parts of p.first_layer (a MoE layer) from h_mid, the last token's residual after that layer's
// attention, and marks p cached.
void cache_block(C3poPrefix& p, const float* h_mid);

// A cached MoE block run for stacked rows: row j's routing from `lp` (a mix row at "position" j) or, without one,
// from the cached router logits; the output is h_base + sum of the selected experts' cached outputs by weight.
// `save` gets what Decoder::mlp_backward needs to stop at the router (p, sel, w, mixed, o).
void cached_block(const std::vector<const C3poPrefix*>& rows, const LayerPatch* lp, const ModelConfig& cfg, float* h,
                  LayerSave* save);

}  // namespace routescope
