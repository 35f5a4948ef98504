// libFuzzer harness: the safetensors header reader (length, JSON, dtypes, shapes, offsets tiling the data).
// Every input either parses into views that lie inside the buffer or throws routescope::Error; anything else
// (another exception, a sanitizer report, a view outside the buffer) is a crash.
#include <cstdint>
#include <cstdlib>

#include "model/safetensors.h"
#include "routescope/engine.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto tensors = routescope::parse_safetensors(data, size, "fuzz.safetensors");
    for (const auto& kv : tensors) {
      const routescope::TensorView& v = kv.second;
      if (v.data < data || v.nbytes > size || v.data + v.nbytes > data + size) std::abort();
      if (v.dtype != routescope::DType::Other &&
          static_cast<uint64_t>(v.numel()) * routescope::dtype_size(v.dtype) != v.nbytes)
        std::abort();
    }
  } catch (const routescope::Error&) {
  }
  return 0;
}
