// Routed experts whose MLP is not the plain SwiGLU of moe_experts.cpp: per-expert biases and gpt-oss's clamped
// SwiGLU (model/config.h ExpertMlp). Forward and backward side by side; weights of any encoding (tiled matmul).
#pragma once
#include <cstdint>

#include "model/model.h"
#include "util/threadpool.h"

namespace routescope {

// y[t] = Σ_s w[t,s] · (down_e(act(gate_e x_t + b_g, up_e x_t + b_u)) + b_d) with e = sel[t,s]; saves (when non-null)
// the gate/up pre-activations after their biases [T*k, I] and expert outputs [T*k, H] at row t*k+s.
// mlp.input_scaled (Llama 4): y[t] = Σ_s down_e(act(w·gate_e x_t, w·up_e x_t)); the saved pre-activations are the
// scaled ones and save_o holds d(slot output)/dw instead of the output (what the router's backward needs).
void experts_forward_general(ThreadPool& pool, const ExpertMlp& mlp, const float* x, int T, int k, const int32_t* sel,
                             const float* w, const LayerWeights& lw, float* y, float* save_g, float* save_u,
                             float* save_o);

// Backward of one expert's (or a dense / shared) MLP for n rows: dy [n, H] -> dx (+)= [n, H], given the saved
// pre-activations g, u [n, I]. The plain SwiGLU when !mlp.clamped.
void expert_mlp_backward(ThreadPool& pool, const ExpertMlp& mlp, const float* dy, int n, const float* g, const float* u,
                         const Mat& gate, const Mat& up, const Mat& down, float* dx);

// The activation and its derivatives (dact/dg, dact/du), one element.
inline float expert_act(const ExpertMlp& m, float g, float u, float* dg = nullptr, float* du = nullptr);

}  // namespace routescope

#include <algorithm>
#include <cmath>

namespace routescope {

inline float expert_act(const ExpertMlp& m, float g, float u, float* dg, float* du) {
  if (!m.clamped) {
    const float s = 1.f / (1.f + std::exp(-g)), silu = g * s;
    if (dg) *dg = u * s * (1.f + g * (1.f - s));
    if (du) *du = silu;
    return silu * u;
  }
  // Clamps pass the gradient where the input is inside them (edges included), as torch.clamp does.
  const float gc = std::min(g, m.limit), uc = std::min(m.limit, std::max(-m.limit, u));
  const float s = 1.f / (1.f + std::exp(-m.alpha * gc)), glu = gc * s;
  if (dg) *dg = g <= m.limit ? (uc + 1.f) * (s + m.alpha * gc * s * (1.f - s)) : 0.f;
  if (du) *du = (u >= -m.limit && u <= m.limit) ? glu : 0.f;
  return (uc + 1.f) * glu;
}

}  // namespace routescope
