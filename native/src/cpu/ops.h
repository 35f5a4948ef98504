// Small fp32 row operations used by the forward and backward passes; each backward sits beside its forward.
#pragma once
#include <cmath>
#include <cstddef>

namespace routescope {

// y = x * r * w with r = 1/sqrt(mean(x^2) + eps); returns r (kept for the backward).
inline float rmsnorm_row(const float* x, const float* w, int n, float eps, float* y) {
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  float r = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
  for (int i = 0; i < n; ++i) y[i] = x[i] * r * w[i];
  return r;
}
// dx (+)= d/dx of rmsnorm given dy; x and r are the forward's input and factor.
inline void rmsnorm_row_backward(const float* x, float r, const float* w, const float* dy, int n, float* dx,
                                 bool accumulate) {
  double dot = 0;
  for (int i = 0; i < n; ++i) dot += static_cast<double>(dy[i]) * w[i] * x[i];
  const float c = static_cast<float>(dot / n) * r * r * r;
  for (int i = 0; i < n; ++i) {
    float g = r * dy[i] * w[i] - c * x[i];
    dx[i] = accumulate ? dx[i] + g : g;
  }
}

inline float silu(float x) { return x / (1.f + std::exp(-x)); }
inline float silu_grad(float x) {
  float s = 1.f / (1.f + std::exp(-x));
  return s * (1.f + x * (1.f - s));
}
inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

// Rotates pairs (i, i + d/2) of one head by the position's angles (rotate_half convention); sign -1 undoes it.
inline void rope_head(float* v, const float* cos_t, const float* sin_t, int d, float sign) {
  const int h = d / 2;
  for (int i = 0; i < h; ++i) {
    float a = v[i], b = v[i + h], c = cos_t[i], s = sign * sin_t[i];
    v[i] = a * c - b * s;
    v[i + h] = b * c + a * s;
  }
}

}  // namespace routescope
