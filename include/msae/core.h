// msae core: errors, assertions, aligned buffers, tensors, logging, rng, timer, threads.
// Everything else in msae depends on this header only (plus the standard library).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace msae {

// ---------------------------------------------------------------------------------------------
// Errors. Two tiers (DESIGN.md):
//  - MSAE_ASSERT: our own bugs. Prints file:line and aborts.
//  - msae::Error: user and data faults. Carries an exit code (2 usage, 1 runtime); only main() turns
//    it into a process exit. Messages name the file/flag, expected vs found, and a hint.
// ---------------------------------------------------------------------------------------------
enum class ErrorKind { usage = 2, runtime = 1 };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }
  int exit_code() const { return static_cast<int>(kind_); }

 private:
  ErrorKind kind_;
};

namespace detail {
inline void append_all(std::ostringstream&) {}
template <class T, class... Rest>
void append_all(std::ostringstream& out, const T& first, const Rest&... rest) {
  out << first;
  append_all(out, rest...);
}
}  // namespace detail

// Concatenates its arguments with operator<<: cat("expected ", n, " rows").
template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream out;
  detail::append_all(out, args...);
  return out.str();
}

// Throw a usage error (bad flags, inconsistent options): exit code 2.
template <class... Args>
[[noreturn]] void usage_error(const Args&... args) {
  throw Error(ErrorKind::usage, cat(args...));
}
// Throw a runtime error (unreadable/malformed files, bad data): exit code 1.
template <class... Args>
[[noreturn]] void runtime_error(const Args&... args) {
  throw Error(ErrorKind::runtime, cat(args...));
}

// How messages name an option: each front end spells the same option its own way. Options have one
// key (snake_case, e.g. "d_sae", the row of the option table in msae/options.h); opt(key) returns
// "--d-sae" for the CLI (the default) and "d_sae" for Python. A front end sets its spelling once at start.
enum class OptionSpelling { cli, python };
void set_option_spelling(OptionSpelling s);
OptionSpelling option_spelling();
std::string opt(const std::string& key);

[[noreturn]] void assert_fail(const char* expr, const char* file, int line, const std::string& msg);

#define MSAE_ASSERT(cond, ...)                                                              \
  do {                                                                                      \
    if (!(cond)) ::msae::assert_fail(#cond, __FILE__, __LINE__, ::msae::cat("" __VA_ARGS__)); \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Aligned buffers. 64-byte alignment (one cache line, one AVX-512 vector) for every float array.
// ---------------------------------------------------------------------------------------------
template <class T, std::size_t Alignment = 64>
struct AlignedAllocator {
  using value_type = T;
  template <class U>
  struct rebind {
    using other = AlignedAllocator<U, Alignment>;
  };
  AlignedAllocator() noexcept = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U, Alignment>&) noexcept {}
  T* allocate(std::size_t n) {
    if (n == 0) return nullptr;
    void* p = ::operator new(n * sizeof(T), std::align_val_t(Alignment));
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept {
    if (p) ::operator delete(p, std::align_val_t(Alignment));
  }
  template <class U>
  bool operator==(const AlignedAllocator<U, Alignment>&) const noexcept {
    return true;
  }
};

using FloatBuffer = std::vector<float, AlignedAllocator<float>>;

// A dense float32 tensor, row-major (C order). The shape is explicit; data.size() == numel(shape).
struct Tensor {
  std::vector<int64_t> shape;
  FloatBuffer data;

  Tensor() = default;
  explicit Tensor(std::vector<int64_t> s, float fill = 0.0f);
  int64_t numel() const { return static_cast<int64_t>(data.size()); }
  int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
  int64_t cols() const { return shape.size() < 2 ? 1 : shape[1]; }
  float* ptr() { return data.data(); }
  const float* ptr() const { return data.data(); }
};

int64_t numel(const std::vector<int64_t>& shape);
std::string shape_str(const std::vector<int64_t>& shape);  // "(4, 16)"

// ---------------------------------------------------------------------------------------------
// Numbers as text, in one place (src/core/format.cpp). For files: the shortest decimal that reads back
// to the same value, so a float32 0.9 is written 0.9, not 0.8999999761581421. For people: a fixed number
// of digits, so that a column or a progress line does not jump between widths.
// ---------------------------------------------------------------------------------------------
std::string shortest(float v);   // "0.0003", "0.9", "1e-08", "nan"
std::string shortest(double v);  // the same for a double
// A float32 for a JSON document: the double that the float's shortest decimal reads as (0.9f -> 0.9), so
// the JSON shows the short text and reads back to the same float. Every float that goes into JSON goes
// through this.
double json_number(float v);
std::vector<double> json_numbers(const std::vector<float>& v);
// `digits` significant digits, trailing zeros kept ("0.1000", "12.35", "1235"), scientific notation outside
// [1e-4, 1e6) ("1.235e+06"); for tables and progress lines.
std::string sig_digits(double v, int digits);
// `decimals` digits after the point ("0.0757" for 4); for figures in [0, 1] such as F1 and fractions.
std::string fixed(double v, int decimals);

// ---------------------------------------------------------------------------------------------
// Logging to stderr. Levels: -1 silent (the processes of an MPI job other than the root), 0 warnings only,
// 1 info (default), 2 debug. Errors are not logged: the front ends print them.
// ---------------------------------------------------------------------------------------------
void set_log_level(int level);
int log_level();
void log_info(const std::string& message);
void log_debug(const std::string& message);
void log_warn(const std::string& message);

// FNV-1a (64-bit) of n bytes, continuing from h: sweep run ids, benchmark output checksums.
constexpr uint64_t kFnv1aOffset = 1469598103934665603ull;
inline uint64_t fnv1a64(const void* data, size_t n, uint64_t h = kFnv1aOffset) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  return h;
}

// ---------------------------------------------------------------------------------------------
// Deterministic RNG (xoshiro256**, seeded with splitmix64). Same stream on every platform, unlike
// the std:: distributions. Not thread-safe; give each thread its own (see split()).
// ---------------------------------------------------------------------------------------------
class Rng {
 public:
  explicit Rng(uint64_t seed = 0);
  uint64_t next_u64();
  double uniform();                    // [0, 1)
  float uniform(float lo, float hi);   // [lo, hi)
  double normal();                     // N(0, 1), Box-Muller
  uint64_t below(uint64_t n);          // uniform integer in [0, n), n > 0, unbiased
  Rng split(uint64_t stream);          // an independent generator derived from this one's state
  // Full state, for checkpoints.
  std::vector<uint64_t> state() const;
  void set_state(const std::vector<uint64_t>& s);

 private:
  uint64_t s_[4];
};

// In-place Fisher-Yates shuffle of [0, n) indices with the given rng.
void shuffle_indices(std::vector<int64_t>& indices, Rng& rng);

// ---------------------------------------------------------------------------------------------
// Timer and threads.
// ---------------------------------------------------------------------------------------------
class Timer {
 public:
  Timer() : start_(std::chrono::steady_clock::now()) {}
  void reset() { start_ = std::chrono::steady_clock::now(); }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

// msae runs its kernels (and splits its GEMMs, see kernels::sgemm) on one persistent pool of
// num_threads() threads: the calling thread plus num_threads() - 1 workers. Idle workers sleep on a
// futex after a short spin (about 50 us), so they never compete for cores with other threads (OpenMP's
// default active waiting did: on 2 cores it slowed steps up to 3x next to OpenBLAS's own workers;
// docs/performance.md). OpenMP is still told the same count for the code that uses it.
int num_threads();                 // threads msae kernels use
void set_num_threads(int n);       // n <= 0: all hardware threads. Not while a parallel region runs.
int64_t peak_rss_bytes();          // from /proc/self/status (VmHWM); -1 if unknown
int64_t rss_bytes();               // the resident size now (VmRSS); -1 if unknown

namespace detail {
using ParallelFn = void (*)(void* ctx, int tid, int nthreads);
void parallel_invoke(ParallelFn fn, void* ctx, int nthreads);
}  // namespace detail

// Runs f(tid, nthreads) for tid in [0, nthreads) on the pool, nthreads = min(max_threads, num_threads())
// (max_threads <= 0: num_threads()); the caller runs tid 0 and returns when every call has returned.
// A call from inside a parallel region (or from another thread while one runs) runs all tids serially
// on the calling thread. f must not throw. No allocation.
template <class F>
void parallel(F&& f, int max_threads = 0) {
  auto call = [](void* ctx, int tid, int n) { (*static_cast<std::remove_reference_t<F>*>(ctx))(tid, n); };
  detail::parallel_invoke(call, const_cast<void*>(static_cast<const void*>(&f)), max_threads);
}

// Splits [0, n) into nthreads contiguous, nearly equal chunks and runs f(begin, end, tid) on each
// (chunks of at least min_chunk items, so small loops run on fewer threads).
template <class F>
void parallel_for(int64_t n, F&& f, int64_t min_chunk = 1) {
  if (n <= 0) return;
  const int64_t most = std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
  const int threads = static_cast<int>(std::min<int64_t>(most, num_threads()));
  parallel(
      [&](int tid, int nt) {
        const int64_t begin = n * tid / nt, end = n * (tid + 1) / nt;
        if (begin < end) f(begin, end, tid);
      },
      threads);
}

// Build information, for self-describing outputs.
const char* version_string();
const char* git_commit();

}  // namespace msae
