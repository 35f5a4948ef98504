// The optimiser both adaptation methods use: Adam (rerouting's delta, C3PO's mixing logits) and the cosine learning
// rate schedule of C3PO.
#pragma once
#include <cmath>
#include <vector>

namespace routescope {

// Adam with bias correction (beta1 0.9, beta2 0.999, eps 1e-8), moments in double; one instance per parameter vector.
struct Adam {
  std::vector<double> m, v;
  int t = 0;
  // x -= lr * m_hat / (sqrt(v_hat) + eps); only the listed indices move when `only` is given (frozen experts).
  void step(std::vector<float>& x, const std::vector<float>& g, double lr, const std::vector<int>* only = nullptr) {
    if (m.empty()) m.assign(x.size(), 0.0), v.assign(x.size(), 0.0);
    ++t;
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    const double c1 = 1 - std::pow(b1, t), c2 = 1 - std::pow(b2, t);
    auto update = [&](size_t i) {
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      x[i] -= static_cast<float>(lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps));
    };
    if (only)
      for (int i : *only) update(static_cast<size_t>(i));
    else
      for (size_t i = 0; i < x.size(); ++i) update(i);
  }
};

// Learning rate of step `step` of `steps`: from `start` at the first step to `end` at the last, along half a cosine.
inline double cosine_lr(int step, int steps, double start, double end) {
  const double pi = 3.14159265358979323846;
  return steps > 1 ? end + 0.5 * (start - end) * (1 + std::cos(pi * step / (steps - 1))) : start;
}

}  // namespace routescope
