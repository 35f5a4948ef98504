// Block-scaled FP8 (E4M3) weights: the tiled matmul and its input gradient against a float64 loop over the
// dequantised values, with partial blocks at both edges.
#include <cmath>
#include <random>

#include "cpu/matmul.h"
#include "test.h"

using namespace routescope;

TEST("kernels: block-scaled FP8 matmul and input gradient (pooled and serial) match float64 on the dequantised weights") {
  ThreadPool pool(2);
  std::mt19937 rng(3);
  for (int shape = 0; shape < 3; ++shape) {
    const int N = shape == 0 ? 37 : shape == 1 ? 300 : 16, K = shape == 0 ? 45 : shape == 1 ? 70 : 16;
    const int br = shape == 1 ? 128 : 16, bc = shape == 1 ? 128 : 16;
    std::vector<uint8_t> q(size_t(N) * K);
    for (auto& b : q) {
      b = uint8_t(rng() & 0xFF);
      if ((b & 0x7F) == 0x7F) b ^= 1;  // no NaN codes
    }
    const int sr = (N + br - 1) / br, sc = (K + bc - 1) / bc;
    std::vector<float> scale(size_t(sr) * sc);
    std::uniform_real_distribution<float> ud(1e-3f, 2e-2f);
    for (auto& s : scale) s = ud(rng);
    Mat W{q.data(), DType::F8E4M3, N, K, scale.data(), br, bc};
    std::vector<float> unscaled(size_t(N) * K);
    fp8_to_f32(q.data(), unscaled.data(), unscaled.size());
    std::vector<double> w(size_t(N) * K);
    for (int n = 0; n < N; ++n)
      for (int k = 0; k < K; ++k) w[size_t(n) * K + k] = double(unscaled[size_t(n) * K + k]) * scale[size_t(n / br) * sc + k / bc];
    // The serial kernels run inside pool jobs (the routed experts' backward, one expert per thread).
    for (int T : {1, 3, 9, 20})
      for (bool serial : {false, true}) {
      std::normal_distribution<float> nd;
      std::vector<float> x(size_t(T) * K), y(size_t(T) * N, 1.f), dy(size_t(T) * N), dx(size_t(T) * K, 0.5f);
      for (auto& v : x) v = nd(rng);
      for (auto& v : dy) v = nd(rng);
      if (serial) {
        matmul_serial(x.data(), T, W, y.data(), /*accumulate=*/true);
        matmul_backward_input_serial(dy.data(), T, W, dx.data(), /*accumulate=*/true);
      } else {
        matmul(pool, x.data(), T, W, y.data(), /*accumulate=*/true);
        matmul_backward_input(pool, dy.data(), T, W, dx.data(), /*accumulate=*/true);
      }
      double worst = 0, worst_dx = 0;
      for (int t = 0; t < T; ++t) {
        for (int n = 0; n < N; ++n) {
          double s = 1;
          for (int k = 0; k < K; ++k) s += double(x[size_t(t) * K + k]) * w[size_t(n) * K + k];
          worst = std::max(worst, std::fabs(s - y[size_t(t) * N + n]) / (1 + std::fabs(s)));
        }
        for (int k = 0; k < K; ++k) {
          double s = 0.5;
          for (int n = 0; n < N; ++n) s += double(dy[size_t(t) * N + n]) * w[size_t(n) * K + k];
          worst_dx = std::max(worst_dx, std::fabs(s - dx[size_t(t) * K + k]) / (1 + std::fabs(s)));
        }
      }
      CHECK_MSG(worst < 5e-5 && worst_dx < 5e-5,
                "N=" << N << " K=" << K << " T=" << T << (serial ? " serial" : "") << ": " << worst << ", " << worst_dx);
      }
  }
}
