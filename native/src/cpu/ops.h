// Small fp32 row operations used by the forward and backward passes; each backward sits beside its forward.
#pragma once
#include <cmath>
#include <cstddef>
#include <vector>

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

// The decoder's norm: RMSNorm when `bias` is null, else LayerNorm (mean removed, then × w + bias; PhiMoE).
// Returns 1/sqrt(mean square or variance + eps), kept for the backward.
inline float norm_row(const float* x, const float* w, const float* bias, int n, float eps, float* y) {
  if (!bias) return rmsnorm_row(x, w, n, eps, y);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += x[i];
  const double mean = sum / n;
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += (x[i] - mean) * (x[i] - mean);
  const float r = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
  const float m = static_cast<float>(mean);
  for (int i = 0; i < n; ++i) y[i] = (x[i] - m) * r * w[i] + bias[i];
  return r;
}
// dx (+)= d/dx of norm_row given dy (LayerNorm: r (g - mean(g) - x̂ mean(g x̂)) with g = dy w, x̂ = (x - mean) r).
inline void norm_row_backward(const float* x, float r, const float* w, const float* bias, const float* dy, int n,
                              float* dx, bool accumulate) {
  if (!bias) return rmsnorm_row_backward(x, r, w, dy, n, dx, accumulate);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += x[i];
  const double mean = sum / n;
  double gs = 0, gx = 0;
  for (int i = 0; i < n; ++i) {
    const double g = static_cast<double>(dy[i]) * w[i];
    gs += g;
    gx += g * (x[i] - mean) * r;
  }
  gs /= n, gx /= n;
  for (int i = 0; i < n; ++i) {
    const double xh = (x[i] - mean) * r;
    const float v = static_cast<float>(r * (static_cast<double>(dy[i]) * w[i] - gs - xh * gx));
    dx[i] = accumulate ? dx[i] + v : v;
  }
}
// The bias pointer norm_row takes: null (RMSNorm) for an empty vector.
inline const float* bias_or_null(const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); }

inline float silu(float x) { return x / (1.f + std::exp(-x)); }
inline float silu_grad(float x) {
  float s = 1.f / (1.f + std::exp(-x));
  return s * (1.f + x * (1.f - s));
}
inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

// Rotates the first d entries of one head by the position's angles (d/2 of them); sign -1 undoes it.
// rotate_half pairs (i, i + d/2); interleaved (DeepSeek) pairs (2i, 2i + 1).
inline void rope_head(float* v, const float* cos_t, const float* sin_t, int d, bool interleaved, float sign) {
  const int h = d / 2;
  for (int i = 0; i < h; ++i) {
    float* x0 = interleaved ? v + 2 * i : v + i;
    float* x1 = interleaved ? v + 2 * i + 1 : v + i + h;
    const float a = *x0, b = *x1, c = cos_t[i], s = sign * sin_t[i];
    *x0 = a * c - b * s;
    *x1 = b * c + a * s;
  }
}

}  // namespace routescope
