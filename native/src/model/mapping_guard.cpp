#include "model/mapping_guard.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>

#include "model/model.h"

namespace routescope {

namespace {
// Fixed slots so that the handler reads them without locks or allocation.
struct Slot {
  std::atomic<uintptr_t> begin{0};
  std::atomic<uintptr_t> end{0};
  char path[1024];
};
constexpr int kSlots = 4096;
Slot g_slots[kSlots];
std::mutex g_mutex;  // writers only
struct sigaction g_previous;

void write_all(const char* s, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(STDERR_FILENO, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}

void on_sigbus(int sig, siginfo_t* info, void* context) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(info ? info->si_addr : nullptr);
  for (Slot& s : g_slots) {
    const uintptr_t b = s.begin.load(std::memory_order_acquire);
    if (b != 0 && addr >= b && addr < s.end.load(std::memory_order_acquire)) {
      static const char head[] = "routescope: ";
      static const char tail[] = ": the model file changed while it was in use (truncated while mapped)\n";
      write_all(head, sizeof head - 1);
      write_all(s.path, ::strnlen(s.path, sizeof s.path));
      write_all(tail, sizeof tail - 1);
      ::_exit(1);
    }
  }
  // Not one of ours: whoever handled SIGBUS before, or the default action (the fault repeats on return).
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction) return g_previous.sa_sigaction(sig, info, context);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN && g_previous.sa_handler) {
    return g_previous.sa_handler(sig);
  }
  ::signal(SIGBUS, SIG_DFL);
  ::raise(SIGBUS);
}

void install_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_previous);
  });
}
}  // namespace

void register_mapping(const void* begin, uint64_t size, const std::string& path) {
  if (!begin || size == 0) return;
  install_once();
  std::lock_guard<std::mutex> lock(g_mutex);
  for (Slot& s : g_slots) {
    if (s.begin.load(std::memory_order_relaxed) != 0) continue;
    const size_t n = std::min(path.size(), sizeof s.path - 1);
    std::memcpy(s.path, path.data(), n);
    s.path[n] = '\0';
    s.end.store(reinterpret_cast<uintptr_t>(begin) + size, std::memory_order_release);
    s.begin.store(reinterpret_cast<uintptr_t>(begin), std::memory_order_release);
    return;
  }
  // More than kSlots files mapped at once: this one still works, only without the SIGBUS message.
}

void unregister_mapping(const void* begin) {
  std::lock_guard<std::mutex> lock(g_mutex);
  for (Slot& s : g_slots) {
    if (s.begin.load(std::memory_order_relaxed) == reinterpret_cast<uintptr_t>(begin)) {
      s.begin.store(0, std::memory_order_release);
      s.end.store(0, std::memory_order_release);
      return;
    }
  }
}

void Checkpoint::check_files_unchanged(bool rate_limited) const {
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  if (rate_limited && now - last_file_check_ns_.load(std::memory_order_relaxed) < 50000000) return;
  last_file_check_ns_.store(now, std::memory_order_relaxed);
  for (const auto& f : files_) f->check_unchanged();
}

}  // namespace routescope
