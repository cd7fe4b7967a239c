// msae's thread pool: the calling thread plus (num_threads() - 1) persistent workers.
// Why not OpenMP: libgomp's idle workers spin actively after every region, and OpenBLAS's pthread
// workers spin (with sched_yield) after every GEMM; on a 2-core machine the two kinds of spinners take
// cores from each other and a step got up to 3x slower with 2 threads than with 1. Our workers spin only
// briefly and then sleep on a futex (std::atomic::wait), and kernels::sgemm runs OpenBLAS single-threaded
// on this same pool, so exactly one set of threads is ever busy.
#include <omp.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <system_error>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MSAE_CPU_RELAX() _mm_pause()
#else
#define MSAE_CPU_RELAX() std::this_thread::yield()
#endif

#include "msae/comm.h"
#include "msae/core.h"

namespace msae {
namespace {

// The most threads set_num_threads starts (the option table's "threads" row has the same bound, so that
// --threads 100000 is refused with the bound rather than with the system's "Resource temporarily
// unavailable").
constexpr int kMaxThreads = 1024;

// Spin iterations (each a pause, ~15-70 cycles) before a waiting thread sleeps: long enough to catch the
// next region of a step without a futex round trip, short enough not to matter to anyone else.
constexpr int kSpin = 4000;

class Pool {
 public:
  ~Pool() { resize(1); }

  int size() const { return size_; }

  // Not thread-safe against concurrent run(); called from set_num_threads only.
  void resize(int n) {
    std::lock_guard<std::mutex> lock(submit_);
    if (n == size_) return;
    stop_workers();
    size_ = n;
    // The generation a worker starts from is read here, not in the new thread: a job submitted before the
    // thread first runs must still count as new to it.
    const uint32_t start = generation_.load(std::memory_order_acquire);
    try {
      for (int t = 1; t < n; ++t) workers_.emplace_back([this, t, start] { worker_loop(t, start); });
    } catch (const std::system_error& e) {
      const size_t started = workers_.size();
      stop_workers();
      size_ = 1;
      runtime_error("cannot start ", n, " threads (the system refused after ", started + 1, "): ", e.what(), "; give ",
                    opt("threads"), " a smaller count");
    }
  }

  void run(detail::ParallelFn fn, void* ctx, int max_threads) {
    int n = size_;
    if (max_threads > 0 && max_threads < n) n = max_threads;
    // Nested call, a call from a second thread while a region runs, or one thread: run serially.
    if (n <= 1 || in_region_ || !submit_.try_lock()) {
      const bool outer = in_region_;
      in_region_ = true;
      for (int t = 0; t < n; ++t) fn(ctx, t, n);
      in_region_ = outer;
      return;
    }
    fn_ = fn;
    ctx_ = ctx;
    active_ = n;
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    in_region_ = true;
    fn(ctx, 0, n);
    in_region_ = false;
    int left = 0;
    for (int s = 0; s < kSpin && (left = pending_.load(std::memory_order_acquire)) != 0; ++s) MSAE_CPU_RELAX();
    while ((left = pending_.load(std::memory_order_acquire)) != 0) pending_.wait(left, std::memory_order_acquire);
    submit_.unlock();
  }

 private:
  void worker_loop(int tid, uint32_t seen) {
    for (;;) {
      uint32_t g = seen;
      for (int s = 0; s < kSpin && (g = generation_.load(std::memory_order_acquire)) == seen; ++s) MSAE_CPU_RELAX();
      while ((g = generation_.load(std::memory_order_acquire)) == seen) generation_.wait(seen, std::memory_order_acquire);
      seen = g;
      if (stop_.load(std::memory_order_acquire)) return;
      // Every worker acknowledges every generation (active or not), so the caller never reuses fn_/ctx_
      // while a late worker might still read them.
      if (tid < active_) {
        in_region_ = true;
        fn_(ctx_, tid, active_);
        in_region_ = false;
      }
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
    }
  }

  void stop_workers() {
    if (workers_.empty()) return;
    stop_.store(true, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    stop_.store(false, std::memory_order_release);
  }

  std::mutex submit_;
  std::vector<std::thread> workers_;
  int size_ = 1;
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  detail::ParallelFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int active_ = 0;
  static thread_local bool in_region_;
};
thread_local bool Pool::in_region_ = false;

// The machine's hardware threads, divided among the processes of an MPI job on this machine (two
// processes on two cores get one thread each instead of oversubscribing the cores).
int hardware_threads() {
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, hw / comm::local_processes());
}

Pool& pool() {
  static Pool* p = [] {
    auto* created = new Pool();  // never destroyed: workers may outlive static destructors of callers
    created->resize(hardware_threads());
    return created;
  }();
  return *p;
}

}  // namespace

int num_threads() { return pool().size(); }

void set_num_threads(int n) {
  if (n <= 0) n = hardware_threads();
  if (n > kMaxThreads)
    usage_error(opt("threads"), " ", n, " is too many: at most ", kMaxThreads, " (this machine has ", hardware_threads(),
                " hardware threads)");
  pool().resize(n);
  omp_set_num_threads(n);
}

namespace detail {
void parallel_invoke(ParallelFn fn, void* ctx, int nthreads) { pool().run(fn, ctx, nthreads); }
}  // namespace detail

namespace {
// A "Key:   N kB" line of /proc/self/status in bytes; -1 if unknown.
int64_t status_bytes(const char* key) {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  int64_t kb = -1;
  const size_t n = std::strlen(key);
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, key, n) == 0) {
      kb = std::strtoll(line + n, nullptr, 10);
      break;
    }
  }
  std::fclose(f);
  return kb < 0 ? -1 : kb * 1024;
}
}  // namespace

int64_t peak_rss_bytes() { return status_bytes("VmHWM:"); }
int64_t rss_bytes() { return status_bytes("VmRSS:"); }

}  // namespace msae
