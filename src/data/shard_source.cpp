// File activation sources: memory-mapped shards (.npy, .safetensors, raw), three seeded read orders,
// the streaming shuffle buffer, a reader thread, non-finite handling and exact resume (include/msae/data.h).
//
// Structure: a ShardSet maps the files and converts rows. A Planner decides which row comes next; it
// is the only holder of order state (so state() is the planner's state). A Producer drives a planner
// and moves row data (into the shuffle buffer's slots and out into batches). With a reader thread, the
// producer runs ahead of the consumer; a second "shadow" planner, advanced by the consumer one batch at
// a time without touching data, holds the state that matches the rows actually handed out. Rows found
// non-finite (on_nonfinite = skip) go into a shared set that both planners consult; the producer is
// always ahead, so the shadow meets every bad row after the producer has recorded it.
#include <glob.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <filesystem>
#include <mutex>
#include <numeric>
#include <thread>
#include <unordered_set>

#include "msae/data.h"
#include "msae/io.h"

namespace msae::data {

using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Defaults of the base interface.
// ---------------------------------------------------------------------------------------------
json ActivationSource::state() const { return {{"position", position()}}; }
void ActivationSource::set_state(const json&) {
  runtime_error("this data source (", describe(), ") cannot resume from a checkpoint");
}
DataStats ActivationSource::stats() const {
  DataStats s;
  s.rows_out = position();
  return s;
}

OnNonfinite parse_on_nonfinite(const std::string& name) {
  if (name == "error") return OnNonfinite::error;
  if (name == "skip") return OnNonfinite::skip;
  usage_error(opt("on_nonfinite"), ": unknown value '", name, "'; expected error or skip");
}

void check_finite(const float* batch, int64_t B, int64_t d, const std::string& what, const int64_t* row_ids) {
  for (int64_t r = 0; r < B; ++r)
    for (int64_t j = 0; j < d; ++j)
      if (!std::isfinite(batch[r * d + j]))
        runtime_error(what, ": row ", row_ids ? row_ids[r] : r, " column ", j, " is ", batch[r * d + j],
                      "; activations must be finite (clean or drop that row)");
}

double estimate_norm_scale(ActivationSource& source, int64_t rows) {
  MSAE_ASSERT(rows > 0);
  const int64_t d = source.d();
  const int64_t chunk = std::min<int64_t>(rows, 4096);
  std::vector<float> x(chunk * d);
  double norm_sum = 0.0;
  for (int64_t done = 0; done < rows; done += chunk) {
    const int64_t n = std::min(chunk, rows - done);
    source.next_batch(n, x.data());
    for (int64_t r = 0; r < n; ++r) {
      double sq = 0.0;
      for (int64_t j = 0; j < d; ++j) sq += static_cast<double>(x[r * d + j]) * x[r * d + j];
      norm_sum += std::sqrt(sq);
    }
  }
  const double mean_norm = norm_sum / static_cast<double>(rows);
  if (!(mean_norm > 0.0) || !std::isfinite(mean_norm))
    runtime_error(source.describe(), ": the mean row norm over ", rows, " sampled rows is ", mean_norm,
                  "; ", opt("normalize"), " expected-norm needs rows that are not all zero");
  return std::sqrt(static_cast<double>(d)) / mean_norm;
}

namespace {

constexpr int64_t kBlockBytes = int64_t{4} << 20;              // streaming read unit
constexpr int64_t kAutoPermutationBytes = int64_t{4} << 30;    // auto mode: permutation up to this size
constexpr int64_t kAutoBufferRows = 262144;
constexpr int kSlots = 3;                                      // reader-thread ring

uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9e3779b97f4a7c15ULL + b + 0x632be59bd9b4e019ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// ---------------------------------------------------------------------------------------------
// Row conversion. float16 goes through the F16C instruction (8 values per instruction, exact: every
// half is a float) when the CPU has it, bfloat16 through a shift the compiler vectorizes; everything
// else (and the tails) through io::convert_to_f32. The reader spends most of its time here.
// ---------------------------------------------------------------------------------------------
#if defined(__x86_64__)
__attribute__((target("avx,f16c"))) void half_to_f32_f16c(const unsigned char* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  if (i < n) io::convert_to_f32(io::DType::f16, src + 2 * i, dst + i, n - i);
}
// CPUID leaf 1 (AVX, F16C, OSXSAVE) and XGETBV (the OS saves YMM state); clang 14's
// __builtin_cpu_supports does not know "f16c", so the bits are read directly (GCC and clang alike).
bool cpu_has_avx_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  if (!(c & (1u << 27)) || !(c & (1u << 28)) || !(c & (1u << 29))) return false;
  unsigned lo = 0, hi = 0;
  __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 6u) == 6u;
}
const bool kHasF16c = cpu_has_avx_f16c();
#else
const bool kHasF16c = false;
void half_to_f32_f16c(const unsigned char* src, float* dst, int64_t n) { io::convert_to_f32(io::DType::f16, src, dst, n); }
#endif

void convert_row(io::DType t, const unsigned char* src, float* dst, int64_t n) {
  if (t == io::DType::f16 && kHasF16c) {
    half_to_f32_f16c(src, dst, n);
  } else if (t == io::DType::bf16) {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t b;
      std::memcpy(&b, src + 2 * i, 2);
      const uint32_t u = static_cast<uint32_t>(b) << 16;
      std::memcpy(dst + i, &u, 4);
    }
  } else {
    io::convert_to_f32(t, src, dst, n);
  }
}

// ---------------------------------------------------------------------------------------------
// Reads of a memory-mapped shard that another program truncates raise SIGBUS. Each row copy runs under a
// guard: the handler jumps back out of it, and the reader reports the file by name instead of the
// process dying without a word. A SIGBUS outside a guarded copy goes to the previous disposition.
// ---------------------------------------------------------------------------------------------
thread_local sigjmp_buf* t_bus_guard = nullptr;
struct sigaction g_previous_bus {};

void on_sigbus(int sig, siginfo_t* info, void* context) {
  if (sigjmp_buf* jb = t_bus_guard) {
    t_bus_guard = nullptr;
    siglongjmp(*jb, 1);
  }
  if (g_previous_bus.sa_flags & SA_SIGINFO) {
    if (g_previous_bus.sa_sigaction) return g_previous_bus.sa_sigaction(sig, info, context);
  } else if (g_previous_bus.sa_handler != SIG_DFL && g_previous_bus.sa_handler != SIG_IGN && g_previous_bus.sa_handler) {
    return g_previous_bus.sa_handler(sig);
  }
  ::signal(SIGBUS, SIG_DFL);
  ::raise(SIGBUS);
}

void install_sigbus_guard() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;  // NODEFER: leaving by siglongjmp keeps SIGBUS unblocked
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_previous_bus);
  });
}

// Copies one row out of a mapping under the guard; false if the mapping faulted (the file shrank).
bool guarded_convert_row(io::DType t, const unsigned char* src, float* dst, int64_t d) {
  sigjmp_buf jb;
  if (sigsetjmp(jb, 0) != 0) return false;  // came back from on_sigbus
  t_bus_guard = &jb;
  convert_row(t, src, dst, d);
  t_bus_guard = nullptr;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Shards
// ---------------------------------------------------------------------------------------------
struct Shard {
  std::string path;
  io::DType dtype = io::DType::f32;
  int64_t rows = 0, cols = 0;
  int64_t first = 0;                     // global id of this shard's row 0
  int64_t file_row = 0;                  // the file's row number of this shard's row 0 (a window cuts shards)
  const unsigned char* data = nullptr;   // row 0
  void* map = nullptr;                   // owned mapping of the whole file (nullptr: caller memory)
  size_t map_size = 0;
  int64_t row_bytes() const { return cols * io::dtype_size(dtype); }
};

struct Block {
  int32_t shard = 0;
  int64_t begin = 0, count = 0;  // rows [begin, begin + count) of the shard
};

class ShardSet {
 public:
  ShardSet() = default;
  ShardSet(const ShardSet&) = delete;
  ShardSet& operator=(const ShardSet&) = delete;
  ~ShardSet() {
    for (Shard& s : shards)
      if (s.map) ::munmap(s.map, s.map_size);
  }

  // Adds a shard (validated by the caller) and checks its width against the first one.
  void add(Shard s) {
    if (s.rows == 0)
      runtime_error(s.path, ": empty shard (0 rows); remove it from the data", shards.empty() ? "" : " directory");
    if (s.cols <= 0) runtime_error(s.path, ": rows have width 0");
    if (!shards.empty() && s.cols != d)
      runtime_error(s.path, ": rows have width ", s.cols, " but ", shards.front().path, " has width ", d,
                    "; every shard must hold activations of the same width");
    d = s.cols;
    s.first = N;
    N += s.rows;
    disk_bytes += s.rows * s.row_bytes();
    const int64_t block_rows = std::max<int64_t>(1, kBlockBytes / s.row_bytes());
    for (int64_t b = 0; b < s.rows; b += block_rows)
      blocks.push_back({static_cast<int32_t>(shards.size()), b, std::min(block_rows, s.rows - b)});
    shards.push_back(std::move(s));
  }

  const Shard& shard_of(int64_t row) const {
    auto it = std::upper_bound(shards.begin(), shards.end(), row, [](int64_t r, const Shard& s) { return r < s.first; });
    MSAE_ASSERT(it != shards.begin() && row < N, "row ", row, " out of range");
    return *(it - 1);
  }
  // Converts global row `row` into dst (d).
  void read(int64_t row, float* dst) const {
    const Shard& s = shard_of(row);
    const unsigned char* src = s.data + (row - s.first) * s.row_bytes();
    if (!s.map) {
      convert_row(s.dtype, src, dst, d);
    } else if (!guarded_convert_row(s.dtype, src, dst, d)) {
      struct stat st {};
      const bool gone = ::stat(s.path.c_str(), &st) != 0;
      runtime_error(where(row), ": the file ", gone ? "is gone and " : "", "became shorter while it was being read (",
                    gone ? "" : cat("now ", st.st_size, " bytes, "), s.map_size, " when it was opened): was it truncated ",
                    "or rewritten during the run? Data files must not change while msae reads them");
    }
  }
  std::string where(int64_t row) const {
    const Shard& s = shard_of(row);
    return cat(s.path, ": row ", row - s.first + s.file_row);
  }
  // Keeps rows [lo, hi) of the concatenated shards (a held-out split, DataOptions::row_begin/row_end):
  // shards outside are dropped and unmapped, shards across an end are cut. Global ids restart at 0.
  void window(int64_t lo, int64_t hi) {
    if (lo < 0 || hi > N || lo >= hi)
      usage_error(spec, ": rows [", lo, ", ", hi, ") are not a non-empty part of its ", N, " rows");
    std::vector<Shard> old = std::move(shards);
    shards.clear();
    blocks.clear();
    N = 0;
    disk_bytes = 0;
    for (Shard& s : old) {
      const int64_t b = std::max(lo, s.first), e = std::min(hi, s.first + s.rows);
      if (b >= e) {
        if (s.map) ::munmap(s.map, s.map_size);
        continue;
      }
      s.data += (b - s.first) * s.row_bytes();
      s.file_row += b - s.first;
      s.rows = e - b;
      add(std::move(s));
    }
  }
  // Page hints for a block of the stream: read ahead when it starts, drop its pages when it is done (the
  // file's page cache keeps them; only this process's resident set shrinks).
  void advise(int64_t b, int advice) const {
    const Block& blk = blocks[b];
    const Shard& s = shards[blk.shard];
    if (!s.map) return;
    const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
    auto lo = reinterpret_cast<uintptr_t>(s.data + blk.begin * s.row_bytes());
    auto hi = lo + static_cast<uintptr_t>(blk.count * s.row_bytes());
    if (advice == MADV_DONTNEED) {
      lo = (lo + page - 1) / page * page;  // only whole pages of this block
      hi = hi / page * page;
    } else {
      lo = lo / page * page;
    }
    if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, advice);
  }

  std::vector<Shard> shards;
  std::vector<Block> blocks;
  int64_t N = 0, d = 0;
  int64_t disk_bytes = 0;
  std::string spec;  // what the user named
};

bool has_suffix(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

io::DType parse_dtype_option(const std::string& dtype) {
  if (dtype == "f32" || dtype == "float32") return io::DType::f32;
  if (dtype == "f16" || dtype == "float16") return io::DType::f16;
  if (dtype == "bf16" || dtype == "bfloat16") return io::DType::bf16;
  usage_error(opt("dtype"), ": unknown type '", dtype, "'; expected f32, f16 or bf16");
}

void check_declared_dtype(const std::string& path, io::DType found, const DataOptions& o) {
  if (!o.dtype.empty() && parse_dtype_option(o.dtype) != found)
    runtime_error(path, ": holds ", io::dtype_name(found), " but ", opt("dtype"), " says ",
                  io::dtype_name(parse_dtype_option(o.dtype)), " (hint: drop ", opt("dtype"), "; the header gives the type)");
}

void map_file(Shard& s, int64_t offset, int64_t expected_end) {
  int64_t size = 0;
  {
    // Sizes were validated by the header readers; map the whole file (offsets are file-relative).
    FILE* f = std::fopen(s.path.c_str(), "rb");
    if (!f) runtime_error(s.path, ": cannot open for reading: ", std::strerror(errno));
    const int fd = ::fileno(f);
    size = static_cast<int64_t>(::lseek(fd, 0, SEEK_END));
    if (size < expected_end) {
      std::fclose(f);
      runtime_error(s.path, ": truncated: ", size, " bytes, but its header describes ", expected_end);
    }
    if (size > 0) {
      void* p = ::mmap(nullptr, static_cast<size_t>(size), PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        std::fclose(f);
        runtime_error(s.path, ": cannot memory-map ", size, " bytes: ", std::strerror(err));
      }
      s.map = p;
      s.map_size = static_cast<size_t>(size);
      install_sigbus_guard();
    }
    std::fclose(f);
  }
  s.data = static_cast<const unsigned char*>(s.map) + offset;
}

Shard open_npy_shard(const std::string& path, const DataOptions& o) {
  const bool bf16 = o.dtype == "bf16" || o.dtype == "bfloat16";
  const io::NpyHeader h = io::read_npy_header(path, bf16);
  if (h.shape.size() != 2)
    runtime_error(path, ": expected a 2-D array (N, d) of activations, found shape ", shape_str(h.shape),
                  " (hint: save a.reshape(-1, a.shape[-1]))");
  check_declared_dtype(path, h.dtype, o);
  Shard s;
  s.path = path;
  s.dtype = h.dtype;
  s.rows = h.shape[0];
  s.cols = h.shape[1];
  if (s.rows > 0) map_file(s, h.data_offset, h.data_offset + s.rows * s.row_bytes());
  return s;
}

Shard open_safetensors_shard(const std::string& path, const DataOptions& o) {
  const std::vector<io::SafetensorsEntry> entries = io::read_safetensors_index(path);
  const io::SafetensorsEntry* pick = nullptr;
  std::string names;
  for (const auto& e : entries) {
    names += cat(names.empty() ? "" : ", ", e.name, " ", shape_str(e.shape));
    if (o.tensor.empty() ? e.shape.size() == 2 : e.name == o.tensor) {
      if (pick && o.tensor.empty())
        usage_error(path, ": holds several 2-D tensors (", names, "...); pick one with ", opt("tensor"), " NAME");
      pick = &e;
    }
  }
  if (!pick) {
    if (o.tensor.empty()) runtime_error(path, ": no 2-D tensor (N, d) found; tensors: ", names.empty() ? "none" : names);
    runtime_error(path, ": no tensor named '", o.tensor, "' (", opt("tensor"), "); tensors: ", names.empty() ? "none" : names);
  }
  if (pick->shape.size() != 2)
    runtime_error(path, ": tensor '", pick->name, "' has shape ", shape_str(pick->shape), "; expected 2-D (N, d)");
  check_declared_dtype(path, pick->dtype, o);
  Shard s;
  s.path = path;
  s.dtype = pick->dtype;
  s.rows = pick->shape[0];
  s.cols = pick->shape[1];
  if (s.rows > 0) map_file(s, pick->offset, pick->offset + pick->nbytes);
  return s;
}

Shard open_raw_shard(const std::string& path, const DataOptions& o) {
  if (o.d_in <= 0)
    usage_error(path, ": a raw file (not .npy or .safetensors) needs its row width: pass ", opt("d_in"), " D (and ", opt("dtype"), ")");
  Shard s;
  s.path = path;
  s.dtype = o.dtype.empty() ? io::DType::f32 : parse_dtype_option(o.dtype);
  s.cols = o.d_in;
  std::error_code ec;
  const auto size = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  if (ec) runtime_error(path, ": cannot read its size: ", ec.message());
  const int64_t rb = s.row_bytes();
  if (size % rb != 0)
    runtime_error(path, ": truncated: ", size, " bytes is not a whole number of rows of ", o.d_in, " ",
                  io::dtype_name(s.dtype), " values (", rb, " bytes); row ", size / rb, " is incomplete",
                  " (hint: check ", opt("d_in"), " and ", opt("dtype"), ")");
  s.rows = size / rb;
  if (s.rows > 0) map_file(s, 0, size);
  return s;
}

Shard open_shard(const std::string& path, const DataOptions& o) {
  if (has_suffix(path, ".npy")) return open_npy_shard(path, o);
  if (has_suffix(path, ".safetensors")) return open_safetensors_shard(path, o);
  return open_raw_shard(path, o);
}

bool is_data_file_name(const std::string& name) {
  for (const char* ext : {".npy", ".safetensors", ".bin", ".raw", ".f32", ".f16", ".bf16"})
    if (has_suffix(name, ext)) return true;
  return false;
}

std::vector<std::string> list_files(const std::string& spec) {
  std::vector<std::string> files;
  if (spec.find_first_of("*?[") != std::string::npos && !io::path_exists(spec)) {
    glob_t g{};
    const int rc = ::glob(spec.c_str(), GLOB_ERR, nullptr, &g);
    if (rc == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i)
        if (!io::is_directory(g.gl_pathv[i])) files.emplace_back(g.gl_pathv[i]);
    ::globfree(&g);
    if (files.empty()) runtime_error(opt("data"), " ", spec, ": no file matches this pattern");
  } else if (io::is_directory(spec)) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(spec, ec)) {
      const std::string name = entry.path().filename().string();
      if (entry.is_regular_file() && is_data_file_name(name)) files.push_back(entry.path().string());
    }
    if (ec) runtime_error(opt("data"), " ", spec, ": cannot list the directory: ", ec.message());
    if (files.empty())
      runtime_error(opt("data"), " ", spec, ": the directory has no data files (.npy, .safetensors, or raw .bin/.raw/.f32/.f16/.bf16)");
  } else {
    if (!io::path_exists(spec)) runtime_error(opt("data"), " ", spec, ": no such file or directory");
    files.push_back(spec);
  }
  std::sort(files.begin(), files.end());
  return files;
}

// ---------------------------------------------------------------------------------------------
// Planner: which row comes next.
// ---------------------------------------------------------------------------------------------
enum class Mode { file_order, permutation, buffer };
const char* mode_name(Mode m) {
  switch (m) {
    case Mode::file_order: return "file-order";
    case Mode::permutation: return "permutation";
    case Mode::buffer: return "buffer";
  }
  return "";
}

// The planner asks accept(row, slot) before it takes a row (slot: the buffer slot that will hold it, or
// -1 when it goes straight into the batch); a false answer skips the row. emit(row, slot) hands a row
// out. block_start / block_done bracket the streamed blocks.
struct Hooks {
  virtual ~Hooks() = default;
  virtual bool accept(int64_t row, int64_t slot) = 0;
  virtual void emit(int64_t row, int64_t slot) = 0;
  virtual void block_start(int64_t) {}
  virtual void block_done(int64_t) {}
};

class Planner {
 public:
  Planner(const ShardSet* set, Mode mode, uint64_t seed, int64_t S)
      : set_(set), mode_(mode), seed_(seed), S_(S), rng_(mix(seed, 0xb0ffe5)) {}

  // Hands out exactly one row.
  void step(Hooks& h) {
    switch (mode_) {
      case Mode::file_order: {
        const int64_t row = accept_next(h, -1);
        h.emit(row, -1);
        return;
      }
      case Mode::permutation: {
        const int64_t N = set_->N;
        for (int64_t tries = 0;; ++tries) {
          if (tries > N) all_bad();
          const int64_t epoch = pos_ / N;
          if (epoch != perm_epoch_) make_perm(epoch);
          const int64_t row = perm_[pos_ % N];
          ++pos_;
          if (h.accept(row, -1)) {
            h.emit(row, -1);
            return;
          }
        }
      }
      case Mode::buffer: {
        if (!filled_) {
          ids_.resize(S_);
          for (int64_t i = 0; i < S_; ++i) ids_[i] = accept_next(h, i);
          filled_ = true;
        }
        const auto j = static_cast<int64_t>(rng_.below(static_cast<uint64_t>(S_)));
        h.emit(ids_[j], j);
        ids_[j] = accept_next(h, j);
        return;
      }
    }
  }

  // Advances n rows without data. known_clean: no row has been rejected (lets the permutation skip ahead
  // without building its permutation).
  void advance(int64_t n, Hooks& h, bool known_clean) {
    if (mode_ == Mode::permutation && known_clean) {
      pos_ += n;
      return;
    }
    for (int64_t i = 0; i < n; ++i) step(h);
  }

  double epochs() const {
    const double N = static_cast<double>(set_->N);
    return mode_ == Mode::permutation ? static_cast<double>(pos_) / N : static_cast<double>(pulled_) / N;
  }

  json state() const {
    json j = {{"mode", mode_name(mode_)}, {"seed", seed_},    {"buffer_rows", S_},     {"rows", set_->N},
              {"d", set_->d},              {"shards", set_->shards.size()},
              {"epoch", epoch_},           {"block_pos", block_pos_}, {"row_in_block", row_in_block_},
              {"pulled", pulled_},         {"pos", pos_},     {"rng", rng_.state()},   {"filled", filled_}};
    j["ids"] = filled_ ? ids_ : std::vector<int64_t>{};
    return j;
  }

  void set_state(const json& j) {
    try {
      if (j.at("mode").get<std::string>() != mode_name(mode_) || io::json_uint64(j.at("seed"), "checkpoint data position \"seed\"") != seed_ ||
          io::json_int(j.at("buffer_rows"), "checkpoint data position \"buffer_rows\"") != S_ || io::json_int(j.at("rows"), "checkpoint data position \"rows\"") != set_->N ||
          io::json_int(j.at("d"), "checkpoint data position \"d\"") != set_->d || static_cast<size_t>(io::json_int(j.at("shards"), "checkpoint data position \"shards\"", 0)) != set_->shards.size())
        runtime_error("the checkpoint's data position (", j.at("mode").get<std::string>(), " order, seed ",
                      io::json_uint64(j.at("seed"), "checkpoint data position \"seed\""), ", ", io::json_int(j.at("rows"), "checkpoint data position \"rows\""), " rows of width ",
                      io::json_int(j.at("d"), "checkpoint data position \"d\""), " in ", static_cast<size_t>(io::json_int(j.at("shards"), "checkpoint data position \"shards\"", 0)),
                      " shards) does not match the data now (", mode_name(mode_), ", seed ", seed_, ", ", set_->N,
                      " rows of width ", set_->d, " in ", set_->shards.size(),
                      " shards); was the data changed since the checkpoint?");
      epoch_ = io::json_int(j.at("epoch"), "checkpoint data position \"epoch\"");
      block_pos_ = io::json_int(j.at("block_pos"), "checkpoint data position \"block_pos\"");
      row_in_block_ = io::json_int(j.at("row_in_block"), "checkpoint data position \"row_in_block\"");
      pulled_ = io::json_int(j.at("pulled"), "checkpoint data position \"pulled\"");
      pos_ = io::json_int(j.at("pos"), "checkpoint data position \"pos\"");
      rng_.set_state(io::json_uint64_vector(j.at("rng"), "checkpoint data position \"rng\""));
      filled_ = j.at("filled").get<bool>();
      ids_ = io::json_int_vector(j.at("ids"), "checkpoint data position \"ids\"");
    } catch (const json::exception& e) {
      runtime_error("checkpoint data position is malformed: ", e.what());
    }
    const auto nb = static_cast<int64_t>(set_->blocks.size());
    order_epoch_ = -1;
    perm_epoch_ = -1;
    prev_block_ = -1;
    bool ok = epoch_ >= 0 && block_pos_ >= 0 && block_pos_ < nb && row_in_block_ >= 0 && pos_ >= 0 &&
              pulled_ >= 0 && (filled_ ? static_cast<int64_t>(ids_.size()) == S_ : ids_.empty());
    ok = ok && row_in_block_ < set_->blocks[static_cast<size_t>(block_at(block_pos_))].count;
    for (int64_t id : ids_) ok = ok && id >= 0 && id < set_->N;
    if (!ok) runtime_error("checkpoint data position is out of range for this data");
  }

  const std::vector<int64_t>& buffer_ids() const { return ids_; }

  bool filled() const { return filled_; }

 private:
  [[noreturn]] void all_bad() const {
    runtime_error(set_->spec, ": every row of the data has non-finite values; nothing to train on");
  }

  void make_perm(int64_t epoch) {
    perm_.resize(set_->N);
    std::iota(perm_.begin(), perm_.end(), 0);
    Rng r(mix(seed_, static_cast<uint64_t>(epoch)));
    shuffle_indices(perm_, r);
    perm_epoch_ = epoch;
  }

  // The next row of the block stream (shuffled block order per epoch in buffer mode, file order otherwise).
  // The block at position `pos` of this epoch's block order.
  int64_t block_at(int64_t pos) {
    if (mode_ != Mode::buffer) return pos;
    if (order_epoch_ != epoch_) {
      order_.resize(set_->blocks.size());
      std::iota(order_.begin(), order_.end(), 0);
      Rng r(mix(seed_ ^ 0x5eedb10cULL, static_cast<uint64_t>(epoch_)));
      shuffle_indices(order_, r);
      order_epoch_ = epoch_;
    }
    return order_[pos];
  }

  int64_t pull(Hooks& h) {
    const auto nb = static_cast<int64_t>(set_->blocks.size());
    const int64_t b = block_at(block_pos_);
    const Block& blk = set_->blocks[b];
    if (b != prev_block_) {
      if (prev_block_ >= 0) h.block_done(prev_block_);
      h.block_start(b);
      prev_block_ = b;
    }
    const int64_t row = set_->shards[blk.shard].first + blk.begin + row_in_block_;
    ++pulled_;
    if (++row_in_block_ == blk.count) {
      row_in_block_ = 0;
      if (++block_pos_ == nb) {
        block_pos_ = 0;
        ++epoch_;
      }
    }
    return row;
  }

  int64_t accept_next(Hooks& h, int64_t slot) {
    for (int64_t tries = 0;; ++tries) {
      if (tries > set_->N) all_bad();
      const int64_t row = pull(h);
      if (h.accept(row, slot)) return row;
    }
  }

  const ShardSet* set_;
  Mode mode_;
  uint64_t seed_;
  int64_t S_;
  // block stream
  int64_t epoch_ = 0, block_pos_ = 0, row_in_block_ = 0, pulled_ = 0;
  std::vector<int64_t> order_;  // (blocks) this epoch's block order (buffer mode)
  int64_t order_epoch_ = -1;
  int64_t prev_block_ = -1;     // for page hints only (not state)
  // permutation
  int64_t pos_ = 0;
  std::vector<int64_t> perm_;   // (N) this epoch's permutation
  int64_t perm_epoch_ = -1;
  // shuffle buffer
  Rng rng_;
  std::vector<int64_t> ids_;    // (S) rows in the buffer
  bool filled_ = false;
};

// Rows rejected for non-finite values, shared by the producer and the shadow planner.
struct BadRows {
  mutable std::mutex m;
  std::unordered_set<int64_t> rows;
  std::atomic<bool> any{false};
  std::string first;
  bool contains(int64_t row) const {
    if (!any.load(std::memory_order_acquire)) return false;
    std::lock_guard<std::mutex> lock(m);
    return rows.count(row) != 0;
  }
  void add(int64_t row, const std::string& where) {
    std::lock_guard<std::mutex> lock(m);
    if (rows.empty()) first = where;
    rows.insert(row);
    any.store(true, std::memory_order_release);
  }
  int64_t count() const {
    std::lock_guard<std::mutex> lock(m);
    return static_cast<int64_t>(rows.size());
  }
};

// Drives a planner and moves the data: reads accepted rows (into a buffer slot or a staging row),
// checks them, scales them, and copies emitted rows into the batch.
class Producer final : public Hooks {
 public:
  Producer(const ShardSet& set, Mode mode, const DataOptions& o, int64_t S, BadRows& bad)
      : set_(set), plan_(&set, mode, o.seed, S), opt_(o), bad_(bad), staging_(set.d) {
    if (mode == Mode::buffer) slots_.resize(static_cast<size_t>(S * set.d));
  }

  void produce(int64_t B, float* out) {
    out_ = out;
    out_row_ = 0;
    for (int64_t r = 0; r < B; ++r) plan_.step(*this);
    MSAE_ASSERT(out_row_ == B);
  }

  bool accept(int64_t row, int64_t slot) override {
    const int64_t d = set_.d;
    float* dst = slot >= 0 ? slots_.data() + slot * d : staging_.data();
    set_.read(row, dst);
    for (int64_t j = 0; j < d; ++j) {
      if (!std::isfinite(dst[j])) {
        if (opt_.on_nonfinite == OnNonfinite::error)
          runtime_error(set_.where(row), " column ", j, " is ", dst[j],
                        "; activations must be finite (hint: ", opt("on_nonfinite"), " skip drops such rows and counts them)");
        bad_.add(row, set_.where(row));
        return false;
      }
    }
    if (opt_.scale != 1.0f)
      for (int64_t j = 0; j < d; ++j) dst[j] *= opt_.scale;
    return true;
  }
  void emit(int64_t, int64_t slot) override {
    const int64_t d = set_.d;
    const float* src = slot >= 0 ? slots_.data() + slot * d : staging_.data();
    std::memcpy(out_ + out_row_ * d, src, sizeof(float) * static_cast<size_t>(d));
    ++out_row_;
  }
  void block_start(int64_t b) override { set_.advise(b, MADV_WILLNEED); }
  void block_done(int64_t b) override { set_.advise(b, MADV_DONTNEED); }

  // After plan().set_state(): reload the rows the restored buffer holds.
  void reload_buffer() {
    if (!plan_.filled()) return;
    const auto& ids = plan_.buffer_ids();
    for (size_t i = 0; i < ids.size(); ++i) {
      float* dst = slots_.data() + static_cast<int64_t>(i) * set_.d;
      set_.read(ids[i], dst);
      if (opt_.scale != 1.0f)
        for (int64_t j = 0; j < set_.d; ++j) dst[j] *= opt_.scale;
    }
  }

  Planner& plan() { return plan_; }
  const Planner& plan() const { return plan_; }

 private:
  const ShardSet& set_;
  Planner plan_;
  DataOptions opt_;
  BadRows& bad_;
  FloatBuffer slots_;          // (S, d) shuffle-buffer rows, float32, scaled
  std::vector<float> staging_; // (d)
  float* out_ = nullptr;
  int64_t out_row_ = 0;
};

// The shadow's hooks: no data, only the shared record of rejected rows.
struct ShadowHooks final : Hooks {
  explicit ShadowHooks(const BadRows& b) : bad(b) {}
  bool accept(int64_t row, int64_t) override { return !bad.contains(row); }
  void emit(int64_t, int64_t) override {}
  const BadRows& bad;
};

// ---------------------------------------------------------------------------------------------
// The source
// ---------------------------------------------------------------------------------------------
class FileSource final : public ActivationSource {
 public:
  FileSource(std::unique_ptr<ShardSet> set, const DataOptions& o) : set_(std::move(set)), opt_(o) {
    int64_t S = 0;
    if (!o.shuffle) {
      mode_ = Mode::file_order;
    } else {
      S = o.shuffle_buffer;
      if (S < 0) S = set_->disk_bytes <= kAutoPermutationBytes ? 0 : std::min(set_->N, kAutoBufferRows);
      if (S > set_->N) S = set_->N;  // a buffer larger than the data only repeats rows
      mode_ = S == 0 ? Mode::permutation : Mode::buffer;
    }
    S_ = S;
    prod_ = std::make_unique<Producer>(*set_, mode_, o, S, bad_);
    if (o.prefetch_batch > 0) shadow_ = std::make_unique<Planner>(set_.get(), mode_, o.seed, S);
  }

  ~FileSource() override { stop_thread(); }

  int64_t d() const override { return set_->d; }
  int64_t rows() const override { return set_->N; }
  int64_t position() const override { return position_; }

  std::string describe() const override {
    std::string dtypes;
    for (const Shard& s : set_->shards)
      if (dtypes.find(io::dtype_name(s.dtype)) == std::string::npos)
        dtypes += cat(dtypes.empty() ? "" : "/", io::dtype_name(s.dtype));
    std::string order = mode_ == Mode::file_order ? "file order"
                        : mode_ == Mode::permutation ? "shuffled (permutation per epoch)"
                                                     : cat("shuffle buffer of ", S_, " rows");
    return cat(set_->spec, " (", set_->shards.size() == 1 ? "" : cat(set_->shards.size(), " shards, "), set_->N, " x ",
               set_->d, ", ", dtypes, ", ", order, opt_.prefetch_batch > 0 ? ", reader thread" : "",
               opt_.scale != 1.0f ? cat(", scaled by ", opt_.scale) : "", ")");
  }

  void next_batch(int64_t B, float* out) override {
    if (!shadow_) {
      prod_->produce(B, out);
    } else {
      MSAE_ASSERT(B == opt_.prefetch_batch, "a prefetching source serves batches of ", opt_.prefetch_batch, " rows, not ", B);
      if (!thread_.joinable()) start_thread();
      std::unique_lock<std::mutex> lock(m_);
      const Timer wait;
      cv_.wait(lock, [&] { return ready_[head_] || (failed_ && fail_slot_ == head_); });
      wait_seconds_ += wait.seconds();
      if (!ready_[head_]) std::rethrow_exception(error_);
      lock.unlock();
      std::memcpy(out, slots_[head_].data(), sizeof(float) * static_cast<size_t>(B * set_->d));
      lock.lock();
      ready_[head_] = false;
      head_ = (head_ + 1) % kSlots;
      lock.unlock();
      cv_.notify_all();
      ShadowHooks hooks(bad_);
      shadow_->advance(B, hooks, !bad_.any.load());
    }
    position_ += B;
    batches_ += 1;
  }

  json state() const override {
    std::vector<int64_t> bad;
    {
      std::lock_guard<std::mutex> lock(bad_.m);
      bad.assign(bad_.rows.begin(), bad_.rows.end());
    }
    std::sort(bad.begin(), bad.end());
    const Planner& p = shadow_ ? *shadow_ : prod_->plan();
    return {{"position", position_}, {"batches", batches_}, {"planner", p.state()}, {"nonfinite_rows", bad},
            {"first_nonfinite", bad_.first}};
  }

  void set_state(const json& j) override {
    MSAE_ASSERT(!thread_.joinable(), "set_state before the first batch");
    try {
      position_ = io::json_int(j.at("position"), "checkpoint data position \"position\"");
      batches_ = io::json_int(j.at("batches"), "checkpoint data position \"batches\"");
      for (int64_t r : io::json_int_vector(j.at("nonfinite_rows"), "checkpoint data position \"nonfinite_rows\"")) {
        if (r < 0 || r >= set_->N) runtime_error("checkpoint data position: non-finite row ", r, " out of range");
        bad_.add(r, "");
      }
      std::lock_guard<std::mutex> lock(bad_.m);
      bad_.first = j.at("first_nonfinite").get<std::string>();
    } catch (const json::exception& e) {
      runtime_error("checkpoint data position is malformed: ", e.what());
    }
    prod_->plan().set_state(j.at("planner"));
    prod_->reload_buffer();
    if (shadow_) shadow_->set_state(j.at("planner"));
  }

  DataStats stats() const override {
    DataStats s;
    s.rows_out = position_;
    s.batches = batches_;
    s.nonfinite_skipped = bad_.count();
    {
      std::lock_guard<std::mutex> lock(bad_.m);
      s.first_skipped = bad_.first;
    }
    s.epochs = (shadow_ ? *shadow_ : prod_->plan()).epochs();
    std::lock_guard<std::mutex> lock(m_);
    s.wait_seconds = wait_seconds_;
    s.reader_busy_seconds = busy_seconds_;
    return s;
  }

 private:
  void start_thread() {
    for (auto& s : slots_) s.resize(static_cast<size_t>(opt_.prefetch_batch * set_->d));
    thread_ = std::thread([this] { reader_loop(); });
  }
  void stop_thread() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  void reader_loop() {
    const int64_t B = opt_.prefetch_batch;
    for (;;) {
      int slot = 0;
      {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [&] { return stop_ || !ready_[tail_]; });
        if (stop_) return;
        slot = tail_;
      }
      const Timer busy;
      try {
        prod_->produce(B, slots_[slot].data());
      } catch (...) {
        std::lock_guard<std::mutex> lock(m_);
        error_ = std::current_exception();
        failed_ = true;
        fail_slot_ = slot;
        cv_.notify_all();
        return;
      }
      {
        std::lock_guard<std::mutex> lock(m_);
        busy_seconds_ += busy.seconds();
        ready_[slot] = true;
        tail_ = (tail_ + 1) % kSlots;
      }
      cv_.notify_all();
    }
  }

  std::unique_ptr<ShardSet> set_;
  DataOptions opt_;
  Mode mode_ = Mode::file_order;
  int64_t S_ = 0;
  BadRows bad_;
  std::unique_ptr<Producer> prod_;
  std::unique_ptr<Planner> shadow_;  // with a reader thread: the state of the rows handed out
  int64_t position_ = 0, batches_ = 0;
  // reader thread
  std::thread thread_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::vector<float> slots_[kSlots];  // (B, d) each
  bool ready_[kSlots] = {false, false, false};
  int head_ = 0, tail_ = 0;
  bool stop_ = false, failed_ = false;
  int fail_slot_ = -1;
  std::exception_ptr error_;
  double wait_seconds_ = 0, busy_seconds_ = 0;
};

}  // namespace

std::unique_ptr<ActivationSource> open_data(const std::string& spec, const DataOptions& options) {
  if (!options.dtype.empty()) parse_dtype_option(options.dtype);
  if (options.shuffle_buffer < -1) usage_error(opt("shuffle_buffer"), " must be >= 0 rows, got ", options.shuffle_buffer);
  if (options.d_in < 0) usage_error(opt("d_in"), " must be positive, got ", options.d_in);
  auto set = std::make_unique<ShardSet>();
  set->spec = spec;
  for (const std::string& f : list_files(spec)) set->add(open_shard(f, options));
  if (options.row_begin != 0 || options.row_end >= 0)
    set->window(options.row_begin, options.row_end >= 0 ? options.row_end : set->N);
  return std::make_unique<FileSource>(std::move(set), options);
}

std::unique_ptr<ActivationSource> open_array(const float* rows, int64_t N, int64_t d, const std::string& name,
                                             const DataOptions& options) {
  auto set = std::make_unique<ShardSet>();
  set->spec = name;
  Shard s;
  s.path = name;
  s.dtype = io::DType::f32;
  s.rows = N;
  s.cols = d;
  s.data = reinterpret_cast<const unsigned char*>(rows);
  set->add(std::move(s));
  if (options.row_begin != 0 || options.row_end >= 0)
    set->window(options.row_begin, options.row_end >= 0 ? options.row_end : set->N);
  return std::make_unique<FileSource>(std::move(set), options);
}

std::unique_ptr<ActivationSource> open_npy(const std::string& path, bool shuffle, uint64_t seed, bool bf16_as_u2) {
  DataOptions o;
  o.shuffle = shuffle;
  o.shuffle_buffer = 0;
  o.seed = seed;
  if (bf16_as_u2) o.dtype = "bf16";
  return open_data(path, o);
}

}  // namespace msae::data
