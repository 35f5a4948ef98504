#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "model/safetensors.h"

namespace routescope {

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float f16_to_f32(uint16_t h);
// Converts n stored elements (unaligned source) to fp32.
void convert_to_f32(const uint8_t* src, DType dt, float* dst, size_t n);

}  // namespace routescope
