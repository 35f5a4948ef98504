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
  // `work` below: the loop's size in multiply-adds (about); a loop smaller than the threshold (below) runs on the
  // calling thread, as if the pool had one thread: waking the workers would cost more than they save (tiny models,
  // one-position C3PO steps), most of all on a loaded machine. Negative: unknown, always split.
  // Calls fn(chunk_begin, chunk_end, thread_index) over [0, n) split into chunks of at least `grain`.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)>& fn, int64_t work = -1);
  // Calls fn(thread_index) once for every thread index; a caller that finds the pool busy with another caller's
  // loop, or a loop below the work threshold, runs all indices itself, in order. Loops must not nest.
  void run_on_all(const std::function<void(int)>& fn, int64_t work = -1);
  // Whether a loop of this much work goes to the workers.
  bool splits(int64_t work) const { return !workers_.empty() && (work < 0 || work >= min_parallel_work_); }
  static constexpr int64_t kMinParallelWork = int64_t(1) << 20;
  // 0: every loop goes to the workers; a huge value: none does (the tests compare the two).
  void set_min_parallel_work(int64_t work) { min_parallel_work_ = work; }

 private:
  void worker_loop(int index);
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::mutex dispatch_mu_;  // held by the thread whose loop the workers are running
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};  // written under mu_; read without it by the brief spin before sleeping
  std::atomic<int> pending_{0};         // workers still running the current loop
  bool stop_ = false;
  int64_t min_parallel_work_ = kMinParallelWork;
};

}  // namespace routescope
