// A minimal test harness: TEST(name) registers a case; CHECK records a failure and continues.
#pragma once
#include <functional>
#include <sstream>
#include <string>
#include <vector>

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
