// Per-thread buffers for a layer's large temporaries (normed inputs, projections, attention and MLP outputs). They
// keep their pages between layers and calls, so a long prompt does not fault in and zero fresh memory for every
// layer: on a VM a page fault costs microseconds, and a 4,096-token layer allocated ~200 MB of temporaries.
// A buffer is released when a call needs less than a quarter of a capacity above 64 MiB. The contents on return
// are whatever the last call left (only the part grown beyond the previous size is zeroed): callers overwrite them.
#pragma once
#include <cstddef>
#include <vector>

namespace routescope {

enum class LayerBuffer { AttnInput, Query, Key, Value, AttnOutput, MlpInput, MlpOutput, Count };

// The calling thread's buffer `which`, resized to n floats.
std::vector<float>& layer_buffer(LayerBuffer which, size_t n);

}  // namespace routescope
