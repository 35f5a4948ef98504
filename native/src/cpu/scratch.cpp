#include "cpu/scratch.h"

namespace routescope {

std::vector<float>& layer_buffer(LayerBuffer which, size_t n) {
  constexpr size_t kKeepFloats = (size_t(64) << 20) / sizeof(float);
  thread_local std::vector<float> buffers[static_cast<int>(LayerBuffer::Count)];
  std::vector<float>& v = buffers[static_cast<int>(which)];
  if (v.capacity() > kKeepFloats && n < v.capacity() / 4) std::vector<float>().swap(v);
  v.resize(n);
  return v;
}

}  // namespace routescope
