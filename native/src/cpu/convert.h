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
// x rounded to the nearest bf16 (ties to even), as vcvtne2ps2bf16 rounds, as its 16 stored bits; NaN stays NaN
// (quietened: rounding a NaN's low bits away could turn it into infinity).
inline uint16_t f32_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
// The same rounding kept in fp32; a NaN comes back as it was.
inline float round_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? x : bf16_to_f32(f32_to_bf16(x));
}
float f16_to_f32(uint16_t h);
// Converts n stored elements (unaligned source) to fp32.
void convert_to_f32(const uint8_t* src, DType dt, float* dst, size_t n);

}  // namespace routescope
