// The engine's C++ tests: run without Node as `build/rs_tests [fixtures dir] [filter]`.
#include "test.h"

#include <cstring>
#include <iostream>

namespace rstest {
std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}
std::string fixtures_dir = "test/fixtures";
thread_local int failures_in_case = 0;
void fail(const std::string& msg, const char* file, int line) {
  ++failures_in_case;
  if (failures_in_case <= 8) std::cerr << "    " << file << ":" << line << ": " << msg << "\n";
}
}  // namespace rstest

int main(int argc, char** argv) {
  if (argc > 1) rstest::fixtures_dir = argv[1];
  const char* filter = argc > 2 ? argv[2] : nullptr;
  int passed = 0, failed = 0, skipped = 0;
  for (const auto& c : rstest::registry()) {
    if (filter && !std::strstr(c.name.c_str(), filter)) continue;
    rstest::failures_in_case = 0;
    try {
      c.fn();
    } catch (const rstest::Skipped& s) {
      ++skipped;
      std::cout << "skip " << c.name << " (" << s.reason << ")\n";
      continue;
    } catch (const std::exception& e) {
      rstest::fail(std::string("exception: ") + e.what(), __FILE__, __LINE__);
    }
    if (rstest::failures_in_case == 0) {
      ++passed;
      std::cout << "ok   " << c.name << "\n";
    } else {
      ++failed;
      std::cout << "FAIL " << c.name << " (" << rstest::failures_in_case << " failed checks)\n";
    }
  }
  std::cout << "engine tests: " << passed << " passed, " << failed << " failed, " << skipped << " skipped\n";
  return failed == 0 ? 0 : 1;
}
