// A minimal test harness: TEST(name) registers a case; CHECK records a failure and continues.
#pragma once
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/convert.h"
#include "model/config.h"
#include "model/model.h"
#include "routescope/engine.h"
#include "util/json.h"

namespace rstest {
struct Case {
  std::string name;
  std::function<void()> fn;
};
std::vector<Case>& registry();
extern std::string fixtures_dir;
void fail(const std::string& msg, const char* file, int line);
// Thrown by SKIP: the case cannot run on this machine (e.g. no GPU); counted apart from passes.
struct Skipped {
  std::string reason;
};
struct Registrar {
  Registrar(const std::string& name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

// The model folder of a parity fixture, e.g. fixture_model("olmoe-perexpert-bf16").
inline std::string fixture_model(const char* name) { return fixtures_dir + "/parity/" + name + "/model"; }

// n token ids below vocab, reproducible from seed.
inline std::vector<int> random_tokens(int n, int vocab, int seed) {
  std::mt19937 rng(seed);
  std::vector<int> t(n);
  for (auto& x : t) x = int(rng() % vocab);
  return t;
}

// float -> bf16, rounded to nearest even.
inline uint16_t round_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}
// float -> f16 for the small normal numbers the tests draw (no subnormals, infinities or NaN).
inline uint16_t round_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000, exp = (u >> 23) & 0xFF, mant = u & 0x7FFFFF;
  int e = int(exp) - 127 + 15;
  if (e <= 0) return static_cast<uint16_t>(sign);
  return static_cast<uint16_t>(sign | (e << 10) | ((mant + 0x1000) >> 13));
}

// A weight matrix in a dtype with its exact values (after rounding to the dtype), stored 2 bytes off alignment:
// safetensors data need not be aligned.
struct TestMatrix {
  std::vector<uint8_t> bytes;
  std::vector<float> values;
  routescope::Mat mat;
};
// N x K normal values of standard deviation `scale`, drawn in row-major order from rng.
inline TestMatrix misaligned_matrix(int N, int K, routescope::DType dt, float scale, std::mt19937& rng) {
  using routescope::DType;
  std::normal_distribution<float> nd(0.f, scale);
  TestMatrix m;
  const size_t n = size_t(N) * K, es = routescope::dtype_size(dt);
  m.bytes.assign(n * es + 8, 0);
  m.values.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const float v = nd(rng);
    if (dt == DType::F32) std::memcpy(&m.bytes[2 + 4 * i], &v, 4);
    else {
      const uint16_t h = dt == DType::BF16 ? round_bf16(v) : round_f16(v);
      std::memcpy(&m.bytes[2 + 2 * i], &h, 2);
    }
  }
  routescope::convert_to_f32(m.bytes.data() + 2, dt, m.values.data(), n);
  m.mat = routescope::Mat{m.bytes.data() + 2, dt, N, K};
  return m;
}

// The code of the routescope::Error that f throws, "none" when it returns, or what else it threw.
template <class F>
std::string error_code_of(F&& f) {
  try {
    f();
  } catch (const routescope::Error& e) {
    return e.code();
  } catch (const std::exception& e) {
    return std::string("std::exception: ") + e.what();
  }
  return "none";
}
// A config.json text with top-level fields replaced or added (raw JSON values; "" removes the field).
inline std::string config_with(const std::string& base, const std::vector<std::pair<std::string, std::string>>& edits) {
  routescope::Json root = routescope::Json::parse(base);
  std::string out = "{";
  for (const auto& kv : root.members()) {
    std::string value = kv.second.dump();
    bool drop = false;
    for (const auto& e : edits)
      if (e.first == kv.first) value = e.second, drop = e.second.empty();
    if (drop) continue;
    out += (out.size() > 1 ? ",\"" : "\"") + kv.first + "\":" + value;
  }
  for (const auto& e : edits)
    if (!root.find(e.first) && !e.second.empty()) out += ",\"" + e.first + "\":" + e.second;
  return out + "}";
}

// The error parse_config gives for a config.json text, or "" when it parses.
inline std::string config_error(const std::string& text) {
  routescope::ModelInfo info;
  try {
    routescope::parse_config(routescope::Json::parse(text), "config.json", info);
  } catch (const routescope::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace rstest

#define RS_CAT2(a, b) a##b
#define RS_CAT(a, b) RS_CAT2(a, b)
#define TEST(name) \
  static void RS_CAT(test_fn_, __LINE__)(); \
  static rstest::Registrar RS_CAT(test_reg_, __LINE__)(name, RS_CAT(test_fn_, __LINE__)); \
  static void RS_CAT(test_fn_, __LINE__)()
#define CHECK(cond)                                             \
  do {                                                          \
    if (!(cond)) rstest::fail("CHECK(" #cond ")", __FILE__, __LINE__); \
  } while (0)
#define CHECK_MSG(cond, msg)                                            \
  do {                                                                  \
    if (!(cond)) {                                                      \
      std::ostringstream os_;                                           \
      os_ << msg;                                                       \
      rstest::fail(os_.str(), __FILE__, __LINE__);                      \
    }                                                                   \
  } while (0)
#define SKIP(reason) throw rstest::Skipped{reason}
