#include "util/threadpool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RS_PAUSE() _mm_pause()
#else
#define RS_PAUSE() ((void)0)
#endif

namespace routescope {

namespace {
// A waiter polls this long before it sleeps: a decode step dispatches a loop every few hundred microseconds with
// serial stretches of up to ~60 µs between them (norms, routing), and a thread woken from a futex wait on a virtual
// machine takes tens of microseconds to run again (50 µs here left the worker starting ~25 µs late per loop).
constexpr auto kSpin = std::chrono::microseconds(250);

// Polls ready() until it holds or kSpin passes; true when it held.
template <class F>
bool spin_until(F ready) {
  const auto end = std::chrono::steady_clock::now() + kSpin;
  for (int i = 1;; ++i) {
    if (ready()) return true;
    RS_PAUSE();
    if (i % 64 == 0 && std::chrono::steady_clock::now() > end) return ready();
  }
}
}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < std::max(1, threads); ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_start_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  while (true) {
    const std::function<void(int)>* job;
    spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; });
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_start_.wait(lock, [&] { return stop_ || generation_.load(std::memory_order_relaxed) != seen; });
      if (stop_) return;
      seen = generation_.load(std::memory_order_relaxed);
      job = job_;
    }
    (*job)(index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);  // the dispatcher checks pending_ under mu_ before it sleeps
      cv_done_.notify_one();
    }
  }
}

void ThreadPool::run_on_all(const std::function<void(int)>& fn, int64_t work) {
  if (!splits(work)) {
    for (int i = 0; i < size(); ++i) fn(i);
    return;
  }
  // Sessions of one model share its pool and may run on different threads at once: whoever finds the pool busy
  // runs every chunk itself instead of waiting (or corrupting the dispatch in progress).
  std::unique_lock<std::mutex> dispatch(dispatch_mu_, std::try_to_lock);
  if (!dispatch.owns_lock()) {
    for (int i = 0; i < size(); ++i) fn(i);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_release);
  }
  cv_start_.notify_all();
  fn(0);
  if (spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; })) return;
  std::unique_lock<std::mutex> lock(mu_);
  cv_done_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)>& fn,
                              int64_t work) {
  if (n <= 0) return;
  int threads = size();
  grain = std::max<int64_t>(1, grain);
  if (threads == 1 || n <= grain || !splits(work)) {
    fn(0, n, 0);
    return;
  }
  // Static split: equal contiguous ranges keep each thread on its own rows of a weight matrix.
  int64_t chunks = std::min<int64_t>(threads, (n + grain - 1) / grain);
  run_on_all([&](int t) {
    if (t >= chunks) return;
    int64_t begin = n * t / chunks, end = n * (t + 1) / chunks;
    if (begin < end) fn(begin, end, t);
  });
}

}  // namespace routescope
