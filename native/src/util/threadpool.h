// A fixed pool of worker threads for data-parallel loops. The calling thread takes part in every loop.
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace routescope {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // Calls fn(chunk_begin, chunk_end, thread_index) over [0, n) split into chunks of at least `grain`.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)>& fn);
  // Calls fn(thread_index) once for every thread index; a caller that finds the pool busy with another caller's
  // loop runs all indices itself. Loops must not nest.
  void run_on_all(const std::function<void(int)>& fn);

 private:
  void worker_loop(int index);
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::mutex dispatch_mu_;  // held by the thread whose loop the workers are running
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(int)>* job_ = nullptr;
  uint64_t generation_ = 0;
  std::atomic<uint64_t> generation_seen_{0};  // generation_, readable without mu_ (the brief spin before sleeping)
  int pending_ = 0;
  bool stop_ = false;
  std::atomic<int> pending_atomic_{0};
};

}  // namespace routescope
