// A minimal test harness: TEST(name) registers a case; CHECK records a failure and continues.
#pragma once
#include <exception>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "routescope/engine.h"

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
