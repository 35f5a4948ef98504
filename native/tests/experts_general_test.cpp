// gpt-oss's expert activation and its weights' encodings: the clamped SwiGLU and its derivatives against the
// formula and central differences on both sides of the clamps; MXFP4 and transposed-interleaved matrices in the
// tiled matmul (pooled and serial) and its input gradient against float64 loops over the decoded values.
#include <cmath>
#include <cstring>
#include <random>

#include "cpu/experts_general.h"
#include "cpu/matmul.h"
#include "test.h"

using namespace routescope;

TEST("experts: gpt-oss's clamped SwiGLU and its derivatives (inside and beyond the ±7 clamps)") {
  ExpertMlp m;
  m.clamped = true;
  const float gs[] = {-9.f, -3.f, -0.5f, 0.f, 0.7f, 4.f, 6.9f, 7.3f, 12.f};
  const float us[] = {-10.f, -7.4f, -2.f, 0.f, 1.5f, 6.8f, 8.f};
  for (float g : gs)
    for (float u : us) {
      const double gc = std::min<double>(g, 7.0), uc = std::max(-7.0, std::min<double>(u, 7.0));
      const double want = (uc + 1) * gc / (1 + std::exp(-1.702 * gc));
      float dg, du;
      const float got = expert_act(m, g, u, &dg, &du);
      CHECK_MSG(std::fabs(got - want) <= 1e-5 * (1 + std::fabs(want)), "act(" << g << ", " << u << ") = " << got << " vs " << want);
      const float h = 1e-2f;
      const double fdg = (double(expert_act(m, g + h, u)) - expert_act(m, g - h, u)) / (2 * h);
      const double fdu = (double(expert_act(m, g, u + h)) - expert_act(m, g, u - h)) / (2 * h);
      CHECK_MSG(std::fabs(dg - fdg) <= 2e-3 * (1 + std::fabs(fdg)), "d/dg at (" << g << ", " << u << "): " << dg << " vs " << fdg);
      CHECK_MSG(std::fabs(du - fdu) <= 2e-3 * (1 + std::fabs(fdu)), "d/du at (" << g << ", " << u << "): " << du << " vs " << fdu);
    }
}

namespace {
const double kFp4[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};

// y = x W^T and dx = dy W in float64 over W's decoded values ([N, K]), against the engine's kernels.
void check_against(const Mat& W, const std::vector<double>& dense, const char* what) {
  ThreadPool pool(2);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  const int N = W.rows, K = W.cols;
  for (int T : {1, 3, 20}) {
    std::vector<float> x(size_t(T) * K), dy(size_t(T) * N), y(size_t(T) * N), ys(size_t(T) * N), dx(size_t(T) * K);
    for (auto& v : x) v = nd(rng);
    for (auto& v : dy) v = nd(rng);
    matmul(pool, x.data(), T, W, y.data());
    matmul_serial(x.data(), T, W, ys.data());
    matmul_backward_input(pool, dy.data(), T, W, dx.data(), false);
    double ey = 0, es = 0, ed = 0, scale = 1e-30;
    for (int t = 0; t < T; ++t)
      for (int n = 0; n < N; ++n) {
        double ref = 0;
        for (int k = 0; k < K; ++k) ref += double(x[size_t(t) * K + k]) * dense[size_t(n) * K + k];
        ey = std::max(ey, std::fabs(ref - y[size_t(t) * N + n]));
        es = std::max(es, std::fabs(ref - ys[size_t(t) * N + n]));
        scale = std::max(scale, std::fabs(ref));
      }
    double dscale = 1e-30;
    for (int t = 0; t < T; ++t)
      for (int k = 0; k < K; ++k) {
        double ref = 0;
        for (int n = 0; n < N; ++n) ref += double(dy[size_t(t) * N + n]) * dense[size_t(n) * K + k];
        ed = std::max(ed, std::fabs(ref - dx[size_t(t) * K + k]));
        dscale = std::max(dscale, std::fabs(ref));
      }
    ed /= dscale;
    CHECK_MSG(ey / scale < 1e-5 && es / scale < 1e-5 && ed < 1e-5,
              what << " T=" << T << ": errors relative to the largest value " << ey / scale << " (pooled) " << es / scale
                   << " (serial) " << ed << " (input gradient)");
  }
}
}  // namespace

TEST("kernels: MXFP4 rows (every second row from an offset) and transposed interleaved BF16 experts match float64") {
  std::mt19937 rng(11);
  const int E = 2, rows = 24, K = 96, stored = 2 * rows;  // gate_up of an expert: 2·rows interleaved output rows
  std::vector<uint8_t> blocks(size_t(E) * stored * K / 2), scales(size_t(E) * stored * K / 32);
  for (auto& b : blocks) b = uint8_t(rng() & 0xFF);
  for (auto& s : scales) s = uint8_t(120 + rng() % 12);
  for (int e = 0; e < E; ++e)
    for (int off = 0; off < 2; ++off) {
      Mat W;
      W.enc = Encoding::Mxfp4;
      W.rows = rows;
      W.cols = K;
      W.data = blocks.data() + size_t(e) * stored * K / 2;
      W.mx_scales = scales.data() + size_t(e) * stored * K / 32;
      W.rstep = 2;
      W.roff = off;
      std::vector<double> dense(size_t(rows) * K);
      for (int r = 0; r < rows; ++r) {
        const size_t sr = size_t(r) * 2 + off;
        for (int c = 0; c < K; ++c) {
          const uint8_t byte = W.data[sr * (K / 2) + c / 2];
          const int code = c % 2 ? byte >> 4 : byte & 0xF;
          dense[size_t(r) * K + c] = kFp4[code] * std::ldexp(1.0, int(W.mx_scales[sr * (K / 32) + c / 32]) - 127);
        }
      }
      check_against(W, dense, off ? "MXFP4 up rows" : "MXFP4 gate rows");
    }
  // Transposed: an expert's [K, 2·rows] BF16 block, this matrix's row r at column 2r + off.
  std::vector<uint16_t> t(size_t(K) * stored);
  std::normal_distribution<float> nd;
  for (auto& v : t) {
    const float f = nd(rng);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    v = uint16_t(bits >> 16);
  }
  for (int off = 0; off < 2; ++off) {
    Mat W;
    W.enc = Encoding::Transposed;
    W.dtype = DType::BF16;
    W.rows = rows;
    W.cols = K;
    W.ld = stored;
    W.data = reinterpret_cast<const uint8_t*>(t.data());
    W.rstep = 2;
    W.roff = off;
    std::vector<double> dense(size_t(rows) * K);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < K; ++c) {
        const uint32_t bits = uint32_t(t[size_t(c) * stored + 2 * r + off]) << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        dense[size_t(r) * K + c] = f;
      }
    check_against(W, dense, off ? "transposed up rows" : "transposed gate rows");
  }
}

TEST("kernels: MXFP4 products give the bits of the same rows widened to f32 one value at a time") {
  // Decode sizes read the blocks where they are stored, larger ones widen tiles with vector code; before both, every
  // size widened value by value. Same products, same order: the same bits, pooled and serial, with and without
  // accumulate.
  std::mt19937 rng(17);
  std::normal_distribution<float> nd;
  const int rows = 301, K = 2880, stored = 2 * rows;
  std::vector<uint8_t> blocks(size_t(stored) * K / 2), scales(size_t(stored) * K / 32);
  for (auto& b : blocks) b = uint8_t(rng() & 0xFF);
  for (size_t i = 0; i < scales.size(); ++i) scales[i] = i % 97 == 0 ? 0 : uint8_t(118 + rng() % 16);  // 0: 2^-127
  ThreadPool pool(2);
  for (int off = 0; off < 2; ++off) {
    Mat W;
    W.enc = Encoding::Mxfp4;
    W.rows = rows;
    W.cols = K;
    W.data = blocks.data();
    W.mx_scales = scales.data();
    W.rstep = 2;
    W.roff = off;
    std::vector<float> wide(size_t(rows) * K);
    for (int r = 0; r < rows; ++r) {
      const size_t sr = size_t(r) * 2 + off;
      for (int c = 0; c < K; ++c) {
        const uint8_t byte = blocks[sr * (K / 2) + c / 2];
        const int code = c % 2 ? byte >> 4 : byte & 0xF;
        wide[size_t(r) * K + c] = float(kFp4[code]) * std::ldexp(1.f, int(scales[sr * (K / 32) + c / 32]) - 127);
      }
    }
    const Mat Wf{reinterpret_cast<const uint8_t*>(wide.data()), DType::F32, rows, K};
    for (int T : {1, 2, 3, 4, 5, 20})  // decode sizes read in place; larger ones widen tiles (vectorised) for the GEMM
      for (bool acc : {false, true}) {
        std::vector<float> x(size_t(T) * K), start(size_t(T) * rows);
        for (auto& v : x) v = nd(rng);
        for (auto& v : start) v = nd(rng);
        std::vector<float> want = start, pooled = start, serial = start;
        if (T <= kStreamRows || !acc) {
          matmul_serial(x.data(), T, Wf, want.data(), acc);
        } else {  // a widened tile's product is formed alone, then added (its sums do not start from y)
          std::vector<float> part(want.size());
          matmul_serial(x.data(), T, Wf, part.data(), false);
          for (size_t i = 0; i < want.size(); ++i) want[i] = want[i] + part[i];
        }
        matmul(pool, x.data(), T, W, pooled.data(), acc);
        matmul_serial(x.data(), T, W, serial.data(), acc);
        CHECK_MSG(std::memcmp(want.data(), pooled.data(), want.size() * 4) == 0, "pooled, T=" << T << " accumulate " << acc << " offset " << off);
        CHECK_MSG(std::memcmp(want.data(), serial.data(), want.size() * 4) == 0, "serial, T=" << T << " accumulate " << acc << " offset " << off);
      }
  }
}
