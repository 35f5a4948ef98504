// Which keys a query position sees, shared by every attention path (the AVX-512 kernel's translation unit
// included: no other includes, and internal linkage so that no copy compiled with AVX-512 is shared).
#pragma once

namespace routescope {

// The first key position p attends to (the last is p): within the sliding window (gpt-oss, Mixtral), within p's own
// chunk of `chunk` positions (Llama 4's chunked layers), or 0.
static inline int first_visible_key(int p, int window, int chunk) {
  if (chunk > 0) return p - p % chunk;
  return window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}

}  // namespace routescope
