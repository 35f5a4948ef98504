#include "cpu/experts_general.h"

#include <cstring>
#include <vector>

#include "cpu/matmul.h"

namespace routescope {

namespace {
// gate x and up x for n rows. gpt-oss stores gate and up interleaved (gate rows even, up rows odd, one storage);
// decode-sized products of that MXFP4 storage read it once as 2I consecutive rows and split the outputs, rather
// than twice, every other row each time (the same products per row, so the same bits).
void gate_up(ThreadPool& pool, const float* x, int n, const Mat& gate, const Mat& up, float* g, float* u) {
  const int I = gate.rows;
  const bool interleaved = gate.enc == Encoding::Mxfp4 && up.enc == Encoding::Mxfp4 && gate.data == up.data &&
                           gate.mx_scales == up.mx_scales && gate.rstep == 2 && up.rstep == 2 && gate.roff == 0 &&
                           up.roff == 1 && up.rows == I && gate.cols == up.cols;
  if (!interleaved || n > kStreamRows) {
    matmul(pool, x, n, gate, g);
    matmul(pool, x, n, up, u);
    return;
  }
  Mat both = gate;
  both.rows = 2 * I;
  both.rstep = 1;
  std::vector<float> gu(static_cast<size_t>(n) * 2 * I);
  matmul(pool, x, n, both, gu.data());
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < I; ++j) {
      g[static_cast<size_t>(i) * I + j] = gu[(static_cast<size_t>(i) * I + j) * 2];
      u[static_cast<size_t>(i) * I + j] = gu[(static_cast<size_t>(i) * I + j) * 2 + 1];
    }
}
}  // namespace

void experts_forward_general(ThreadPool& pool, const ExpertMlp& mlp, const float* x, int T, int k, const int32_t* sel,
                             const float* w, const LayerWeights& lw, float* y, float* save_g, float* save_u,
                             float* save_o) {
  const int E = static_cast<int>(lw.gate.size()), H = lw.gate[0].cols, I = lw.gate[0].rows;
  std::vector<std::vector<int>> rows(E);  // rows t*k+s per expert, ascending
  for (int r = 0; r < T * k; ++r) rows[sel[r]].push_back(r);
  std::vector<float> out(static_cast<size_t>(T) * k * H);
  std::vector<float> xe, g, u, a;
  for (int e = 0; e < E; ++e) {
    const int n = static_cast<int>(rows[e].size());
    if (!n) continue;
    xe.resize(static_cast<size_t>(n) * H), g.resize(static_cast<size_t>(n) * I), u.resize(static_cast<size_t>(n) * I);
    a.resize(static_cast<size_t>(n) * I);
    for (int i = 0; i < n; ++i) std::memcpy(&xe[static_cast<size_t>(i) * H], x + static_cast<size_t>(rows[e][i] / k) * H, H * sizeof(float));
    gate_up(pool, xe.data(), n, lw.gate[e], lw.up[e], g.data(), u.data());
    if (mlp.bias)
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < I; ++j) {
          g[static_cast<size_t>(i) * I + j] += lw.gate_bias[static_cast<size_t>(e) * I + j];
          u[static_cast<size_t>(i) * I + j] += lw.up_bias[static_cast<size_t>(e) * I + j];
        }
    std::vector<float> g0, u0;  // input_scaled: the unscaled pre-activations, for d(output)/dw
    if (mlp.input_scaled) {
      if (save_o) g0 = g, u0 = u;
      for (int i = 0; i < n; ++i) {  // gate(w x) = w gate(x): no biases here
        const float ws = w[rows[e][i]];
        for (int j = 0; j < I; ++j) g[static_cast<size_t>(i) * I + j] *= ws, u[static_cast<size_t>(i) * I + j] *= ws;
      }
    }
    for (size_t j = 0; j < a.size(); ++j) a[j] = expert_act(mlp, g[j], u[j]);
    std::vector<float> o(static_cast<size_t>(n) * H);
    matmul(pool, a.data(), n, lw.down[e], o.data());
    for (int i = 0; i < n; ++i) {
      const size_t r = static_cast<size_t>(rows[e][i]);
      float* dst = &out[r * H];
      for (int d = 0; d < H; ++d) dst[d] = o[static_cast<size_t>(i) * H + d] + (mlp.bias ? lw.down_bias[static_cast<size_t>(e) * H + d] : 0.f);
      if (save_g) std::memcpy(save_g + r * I, &g[static_cast<size_t>(i) * I], I * sizeof(float));
      if (save_u) std::memcpy(save_u + r * I, &u[static_cast<size_t>(i) * I], I * sizeof(float));
    }
    if (save_o && mlp.input_scaled) {
      // The weight's backward needs d(output)/dw = down(act_g · gate x + act_u · up x), not the output: saved as o
      // so that dLoss/dw = <dLoss/dy, o> holds for both placements of the weight.
      for (size_t j = 0; j < a.size(); ++j) {
        float ag, au;
        expert_act(mlp, g[j], u[j], &ag, &au);
        a[j] = ag * g0[j] + au * u0[j];
      }
      matmul(pool, a.data(), n, lw.down[e], o.data());
      for (int i = 0; i < n; ++i)
        std::memcpy(save_o + static_cast<size_t>(rows[e][i]) * H, &o[static_cast<size_t>(i) * H], H * sizeof(float));
    }
  }
  if (save_o && !mlp.input_scaled) std::memcpy(save_o, out.data(), out.size() * sizeof(float));
  // Each token sums its experts in ascending expert order (independent of the router's slot order).
  for (int t = 0; t < T; ++t) {
    float* yt = y + static_cast<size_t>(t) * H;
    std::fill(yt, yt + H, 0.f);
    std::vector<int> slots(k);
    for (int s = 0; s < k; ++s) slots[s] = s;
    std::sort(slots.begin(), slots.end(), [&](int p, int q) { return sel[t * k + p] < sel[t * k + q]; });
    for (int s : slots) {
      const float ws = mlp.input_scaled ? 1.f : w[t * k + s];  // input_scaled: already inside the expert
      const float* os = &out[(static_cast<size_t>(t) * k + s) * H];
      for (int d = 0; d < H; ++d) yt[d] += ws * os[d];
    }
  }
}

void expert_mlp_backward(ThreadPool& pool, const ExpertMlp& mlp, const float* dy, int n, const float* g, const float* u,
                         const Mat& gate, const Mat& up, const Mat& down, float* dx) {
  const int I = gate.rows;
  std::vector<float> da(static_cast<size_t>(n) * I), dg(static_cast<size_t>(n) * I), du(static_cast<size_t>(n) * I);
  matmul_backward_input(pool, dy, n, down, da.data(), false);
  for (size_t i = 0; i < da.size(); ++i) {
    float ag, au;
    expert_act(mlp, g[i], u[i], &ag, &au);
    dg[i] = da[i] * ag;
    du[i] = da[i] * au;
  }
  matmul_backward_input(pool, dg.data(), n, gate, dx, true);
  matmul_backward_input(pool, du.data(), n, up, dx, true);
}

}  // namespace routescope
