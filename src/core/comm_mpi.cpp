// The MPI communicator (msae/comm.h), compiled instead of comm_nompi.cpp when CMake finds MPI (MSAE_MPI).
// It works on a duplicate of MPI_COMM_WORLD, so that msae's messages never match those of another library
// in the same process, and with MPI_ERRORS_RETURN on it, so that a failed call becomes an msae::Error naming
// the call instead of MPI's own abort.
//
// MPI counts and displacements are int: every call below moves at most max_call_bytes() (2^30 bytes, less
// than INT_MAX) and larger transfers are made of several calls. Tests lower the limit
// (detail::set_max_call_bytes) to walk those loops with small data.
#include "comm_mpi.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "msae/core.h"

namespace msae::comm {
namespace detail {
namespace {

constexpr int64_t kDefaultMaxCallBytes = int64_t{1} << 30;
int64_t g_max_call_bytes = kDefaultMaxCallBytes;

}  // namespace

void set_max_call_bytes(int64_t bytes) { g_max_call_bytes = bytes > 0 ? bytes : kDefaultMaxCallBytes; }
int64_t max_call_bytes() { return g_max_call_bytes; }

}  // namespace detail

namespace {

void check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
  runtime_error(call, " failed: ", len > 0 ? std::string(text, static_cast<size_t>(len)) : "unknown error",
                " (MPI error code ", rc, ")");
}

int as_int(int64_t v) {
  MSAE_ASSERT(v >= 0 && v <= INT_MAX, "MPI count ", v, " out of int range");
  return static_cast<int>(v);
}

template <class T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<float>() {
  return MPI_FLOAT;
}
template <>
MPI_Datatype mpi_type<double>() {
  return MPI_DOUBLE;
}
template <>
MPI_Datatype mpi_type<int64_t>() {
  return MPI_INT64_T;
}

// "Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, ..." -> "Open MPI v4.1.4": the first line of
// MPI_Get_library_version up to its first comma, trimmed (the rest is packaging detail).
std::string library_name() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  if (MPI_Get_library_version(text, &len) != MPI_SUCCESS || len <= 0) return "unknown MPI";
  std::string s(text, static_cast<size_t>(len));
  s = s.substr(0, s.find_first_of("\n,"));
  const char* space = " \t\r\n";
  const size_t b = s.find_first_not_of(space);
  if (b == std::string::npos) return "unknown MPI";
  return s.substr(b, s.find_last_not_of(space) - b + 1);
}

// How a variable-size exchange (allgatherv, gatherv, scatterv) is cut into MPI calls. Process p's part has
// counts[p] bytes and sits at base[p] of the concatenation. When the whole concatenation fits one call
// (the usual case), there is one round that moves everything straight into (or out of) the concatenation.
// Otherwise every round moves up to `slice` bytes of every part, beginning at offset start(r) of each part,
// through a staging buffer of at most max_call_bytes().
struct Plan {
  Plan(const std::vector<int64_t>& counts, int64_t max_bytes) : counts_(counts), base(counts.size() + 1, 0) {
    const auto p = static_cast<int64_t>(counts.size());
    int64_t largest = 0;
    for (size_t i = 0; i < counts.size(); ++i) {
      MSAE_ASSERT(counts[i] >= 0);
      base[i + 1] = base[i] + counts[i];
      largest = std::max(largest, counts[i]);
    }
    total = base.back();
    direct = total <= max_bytes;
    slice = direct ? std::max<int64_t>(largest, 1) : std::max<int64_t>(1, max_bytes / p);
    rounds = (largest + slice - 1) / slice;
  }
  int64_t start(int64_t r) const { return r * slice; }
  // This round's bytes of every part and where they go in the round's buffer (the concatenation itself
  // when direct, the staging buffer otherwise).
  void round(int64_t r, std::vector<int>& c, std::vector<int>& d) const {
    c.resize(counts_.size());
    d.resize(counts_.size());
    int64_t at = 0;
    for (size_t i = 0; i < counts_.size(); ++i) {
      c[i] = as_int(std::clamp<int64_t>(counts_[i] - start(r), 0, slice));
      d[i] = as_int(direct ? base[i] : at);
      at += c[i];
    }
  }

  const std::vector<int64_t>& counts_;
  std::vector<int64_t> base;
  int64_t total = 0, slice = 1, rounds = 0;
  bool direct = true;
};

class MpiComm final : public Comm {
 public:
  MpiComm() {
    check(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
    check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    name_ = cat("mpi (", library_name(), ", ", size_, size_ == 1 ? " process)" : " processes)");
  }
  ~MpiComm() override {
    int finalized = 1;
    if (MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) MPI_Comm_free(&comm_);
  }
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return name_; }

  void allreduce_sum(float* data, int64_t n) override { sum_in_rank_order(data, n, scratch_f_); }
  void allreduce_sum(double* data, int64_t n) override { sum_in_rank_order(data, n, scratch_d_); }
  void reduce_scatter_sum(float* data, const std::vector<int64_t>& parts) override {
    check_parts(parts);
    reduce_parts(data, parts, scratch_f_);
  }
  void allgather_parts(float* data, const std::vector<int64_t>& parts) override {
    check_parts(parts);
    gather_parts(data, parts);
  }
  // Integer sums and maxima and float minima are exact whatever order MPI combines them in.
  void allreduce_sum(int64_t* data, int64_t n) override { exact_allreduce(data, n, MPI_SUM, "MPI_Allreduce(sum)"); }
  void allreduce_max(int64_t* data, int64_t n) override { exact_allreduce(data, n, MPI_MAX, "MPI_Allreduce(max)"); }
  void allreduce_min(float* data, int64_t n) override { exact_allreduce(data, n, MPI_MIN, "MPI_Allreduce(min)"); }

  // Counted: this process's bytes, which reach each of the (size() - 1) others. The counts exchanged first
  // (8 bytes per process) are not counted here or in gatherv/scatterv: bytes_sent() is payload.
  void allgatherv(const void* data, int64_t bytes, std::vector<char>& out, std::vector<int64_t>& counts) override {
    MSAE_ASSERT(bytes >= 0, "bytes ", bytes);
    counts.assign(static_cast<size_t>(size_), 0);
    check(MPI_Allgather(&bytes, 1, MPI_INT64_T, counts.data(), 1, MPI_INT64_T, comm_), "MPI_Allgather(counts)");
    const Plan plan(counts, detail::max_call_bytes());
    out.resize(static_cast<size_t>(plan.total));
    const char* mine = static_cast<const char*>(data);
    for (int64_t r = 0; r < plan.rounds; ++r) {
      plan.round(r, c_, d_);
      char* buf = plan.direct ? out.data() : staging(plan);
      check(MPI_Allgatherv(c_[rank_] > 0 ? mine + plan.start(r) : mine, c_[rank_], MPI_BYTE, buf, c_.data(), d_.data(),
                           MPI_BYTE, comm_),
            "MPI_Allgatherv");
      if (!plan.direct) unstage(plan, r, out.data());
    }
    count(bytes * (size_ - 1));
  }

  // Counted: this process's bytes when it is not the root (the root's own part does not travel).
  void gatherv(const void* data, int64_t bytes, std::vector<char>& out, std::vector<int64_t>& counts,
               int root) override {
    check_root(root);
    MSAE_ASSERT(bytes >= 0, "bytes ", bytes);
    // Every process learns every count (not only the root), because all must make the same number of calls.
    all_counts_.assign(static_cast<size_t>(size_), 0);
    check(MPI_Allgather(&bytes, 1, MPI_INT64_T, all_counts_.data(), 1, MPI_INT64_T, comm_), "MPI_Allgather(counts)");
    const Plan plan(all_counts_, detail::max_call_bytes());
    const bool at_root = rank_ == root;
    out.clear();
    counts.clear();
    if (at_root) {
      counts = all_counts_;
      out.resize(static_cast<size_t>(plan.total));
    }
    const char* mine = static_cast<const char*>(data);
    for (int64_t r = 0; r < plan.rounds; ++r) {
      plan.round(r, c_, d_);
      char* buf = !at_root ? nullptr : plan.direct ? out.data() : staging(plan);
      check(MPI_Gatherv(c_[rank_] > 0 ? mine + plan.start(r) : mine, c_[rank_], MPI_BYTE, buf, c_.data(), d_.data(),
                        MPI_BYTE, root, comm_),
            "MPI_Gatherv");
      if (at_root && !plan.direct) unstage(plan, r, out.data());
    }
    count(at_root ? 0 : bytes);
  }

  // Counted: at the root, the bytes of every other process's part; elsewhere nothing.
  void scatterv(const std::vector<std::vector<char>>& contributions, std::vector<char>& out, int root) override {
    check_root(root);
    const bool at_root = rank_ == root;
    all_counts_.assign(static_cast<size_t>(size_), 0);
    if (at_root) {
      MSAE_ASSERT(contributions.size() == static_cast<size_t>(size_), "scatterv: ", contributions.size(),
                  " contributions for ", size_, " processes");
      for (int p = 0; p < size_; ++p) all_counts_[p] = static_cast<int64_t>(contributions[p].size());
    }
    check(MPI_Bcast(all_counts_.data(), size_, MPI_INT64_T, root, comm_), "MPI_Bcast(counts)");
    const Plan plan(all_counts_, detail::max_call_bytes());
    const int64_t own = all_counts_[rank_];
    out.resize(static_cast<size_t>(own));
    for (int64_t r = 0; r < plan.rounds; ++r) {
      plan.round(r, c_, d_);
      // The parts are separate vectors: the root packs this round's slices of them into one buffer.
      char* buf = nullptr;
      if (at_root) {
        buf = staging(plan);
        for (int p = 0; p < size_; ++p)
          if (c_[p] > 0) std::memcpy(buf + d_[p], contributions[p].data() + plan.start(r), c_[p]);
      }
      check(MPI_Scatterv(buf, c_.data(), d_.data(), MPI_BYTE, c_[rank_] > 0 ? out.data() + plan.start(r) : out.data(),
                         c_[rank_], MPI_BYTE, root, comm_),
            "MPI_Scatterv");
    }
    count(at_root ? plan.total - own : 0);
  }

  // Counted: at the root, its bytes once for each other process (what a flat broadcast sends; MPI's tree
  // spreads the forwarding over the processes, in a way this interface does not see); elsewhere nothing.
  void broadcast(void* data, int64_t bytes, int root) override {
    check_root(root);
    MSAE_ASSERT(bytes >= 0, "bytes ", bytes);
    const int64_t piece = detail::max_call_bytes();
    for (int64_t at = 0; at < bytes; at += piece)
      check(MPI_Bcast(static_cast<char*>(data) + at, as_int(std::min(piece, bytes - at)), MPI_BYTE, root, comm_),
            "MPI_Bcast");
    count(rank_ == root ? bytes * (size_ - 1) : 0);
  }

  void barrier() override {
    check(MPI_Barrier(comm_), "MPI_Barrier");
    count(0);
  }

  void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; should an implementation return anyway, still end here
  }

 private:
  void check_root(int root) const {
    MSAE_ASSERT(root >= 0 && root < size_, "root ", root, " of ", size_, " processes");
  }

  // The elements of an n-element reduction that this process sends when done as a reduce-scatter
  // (chunk j to process j) followed by an allgather of the reduced chunks: the (n - own chunk) elements of
  // the others' chunks, then its reduced chunk to each of the (size() - 1) others. About 2 n (P-1)/P.
  int64_t reduce_traffic(int64_t n) const {
    const int64_t own = n / size_ + (rank_ < n % size_ ? 1 : 0);
    return (n - own) + own * (size_ - 1);
  }

  // The deterministic sum. The n elements are cut into size() contiguous chunks; an MPI_Alltoallv hands
  // process j chunk j of every process, in rank order; process j adds those size() copies element by element
  // in rank order (((x0 + x1) + x2) + ..., the same loop on every process and every run); an MPI_Allgatherv
  // returns each reduced chunk to everyone. Each process sends and receives about 2 n (P-1)/P elements, the
  // least any allreduce can, and only the owner of a chunk ever adds its elements, so all agree bit for bit.
  // Counted: reduce_traffic(n) elements.
  template <class T>
  void sum_in_rank_order(T* data, int64_t n, std::vector<T>& scratch) {
    MSAE_ASSERT(n >= 0, "n ", n);
    const MPI_Datatype type = mpi_type<T>();
    const int64_t piece_max =
        std::max<int64_t>(static_cast<int64_t>(size_), detail::max_call_bytes() / static_cast<int64_t>(sizeof(T)));
    int64_t sent = 0;
    lens_.resize(static_cast<size_t>(size_));
    offs_.resize(static_cast<size_t>(size_));
    recv_counts_.resize(static_cast<size_t>(size_));
    recv_offs_.resize(static_cast<size_t>(size_));
    for (int64_t begin = 0; begin < n && size_ > 1; begin += piece_max) {
      const int64_t m = std::min(piece_max, n - begin);
      T* piece = data + begin;
      int at = 0;
      for (int j = 0; j < size_; ++j) {
        lens_[j] = as_int(m / size_ + (j < m % size_ ? 1 : 0));
        offs_[j] = at;
        at += lens_[j];
      }
      const int own = lens_[rank_];
      for (int p = 0; p < size_; ++p) {
        recv_counts_[p] = own;
        recv_offs_[p] = p * own;
      }
      if (scratch.size() < static_cast<size_t>(own) * size_) scratch.resize(static_cast<size_t>(own) * size_);
      check(MPI_Alltoallv(piece, lens_.data(), offs_.data(), type, scratch.data(), recv_counts_.data(),
                          recv_offs_.data(), type, comm_),
            "MPI_Alltoallv");
      T* out = piece + offs_[rank_];
      const T* first = scratch.data();
      for (int i = 0; i < own; ++i) out[i] = first[i];
      for (int p = 1; p < size_; ++p) {
        const T* next = scratch.data() + static_cast<size_t>(p) * own;
        for (int i = 0; i < own; ++i) out[i] += next[i];
      }
      check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, piece, lens_.data(), offs_.data(), type, comm_),
            "MPI_Allgatherv");
      sent += reduce_traffic(m);
    }
    count(sent * static_cast<int64_t>(sizeof(T)));
  }

  void check_parts(const std::vector<int64_t>& parts) const {
    MSAE_ASSERT(parts.size() == static_cast<size_t>(size_) + 1 && parts.front() == 0, "parts for ", size_, " processes");
    for (int p = 0; p < size_; ++p) MSAE_ASSERT(parts[p] <= parts[p + 1], "parts not ascending at ", p);
  }
  // Round r of a parts exchange moves up to `slice` elements of every part, from offset r * slice of each.
  template <class T>
  int64_t parts_slice(const std::vector<int64_t>& parts, int64_t& rounds) const {
    int64_t largest = 0;
    for (int p = 0; p < size_; ++p) largest = std::max(largest, parts[p + 1] - parts[p]);
    const int64_t slice = std::max<int64_t>(
        1, std::min(largest, detail::max_call_bytes() / static_cast<int64_t>(sizeof(T)) / size_));
    rounds = largest == 0 ? 0 : (largest + slice - 1) / slice;
    return slice;
  }
  void parts_round(const std::vector<int64_t>& parts, int64_t r, int64_t slice) {
    lens_.resize(static_cast<size_t>(size_));
    offs_.resize(static_cast<size_t>(size_));
    for (int j = 0; j < size_; ++j) {
      lens_[j] = as_int(std::clamp<int64_t>(parts[j + 1] - parts[j] - r * slice, 0, slice));
      offs_[j] = as_int(std::min(parts[j] + r * slice, parts[j + 1]));
    }
  }
  // The first half of the rank-order sum with given parts (an MPI_Alltoallv of every process's copy of
  // each part to its owner, who adds them in rank order). Counted: the elements of the others' parts.
  template <class T>
  void reduce_parts(T* data, const std::vector<int64_t>& parts, std::vector<T>& scratch) {
    int64_t rounds = 0;
    const int64_t slice = parts_slice<T>(parts, rounds);
    const MPI_Datatype type = mpi_type<T>();
    recv_counts_.resize(static_cast<size_t>(size_));
    recv_offs_.resize(static_cast<size_t>(size_));
    for (int64_t r = 0; r < rounds && size_ > 1; ++r) {
      parts_round(parts, r, slice);
      const int own = lens_[rank_];
      for (int p = 0; p < size_; ++p) {
        recv_counts_[p] = own;
        recv_offs_[p] = p * own;
      }
      if (scratch.size() < static_cast<size_t>(own) * size_) scratch.resize(static_cast<size_t>(own) * size_);
      check(MPI_Alltoallv(data, lens_.data(), offs_.data(), type, scratch.data(), recv_counts_.data(),
                          recv_offs_.data(), type, comm_),
            "MPI_Alltoallv");
      T* out = data + offs_[rank_];
      for (int i = 0; i < own; ++i) out[i] = scratch[i];
      for (int p = 1; p < size_; ++p) {
        const T* next = scratch.data() + static_cast<size_t>(p) * own;
        for (int i = 0; i < own; ++i) out[i] += next[i];
      }
    }
    const int64_t own = parts[rank_ + 1] - parts[rank_];
    count((parts.back() - own) * static_cast<int64_t>(sizeof(T)));
  }
  // The second half: every part to every process (MPI_Allgatherv in place). Counted: its own part, to each of
  // the others.
  void gather_parts(float* data, const std::vector<int64_t>& parts) {
    int64_t rounds = 0;
    const int64_t slice = parts_slice<float>(parts, rounds);
    for (int64_t r = 0; r < rounds && size_ > 1; ++r) {
      parts_round(parts, r, slice);
      check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, lens_.data(), offs_.data(), MPI_FLOAT, comm_),
            "MPI_Allgatherv");
    }
    const int64_t own = parts[rank_ + 1] - parts[rank_];
    count(own * (size_ - 1) * static_cast<int64_t>(sizeof(float)));
  }

  // Counted as the rank-order sum would send (MPI chooses its own algorithm, which this does not see).
  template <class T>
  void exact_allreduce(T* data, int64_t n, MPI_Op op, const char* call) {
    MSAE_ASSERT(n >= 0, "n ", n);
    const int64_t piece = std::max<int64_t>(1, detail::max_call_bytes() / static_cast<int64_t>(sizeof(T)));
    int64_t sent = 0;
    for (int64_t at = 0; at < n; at += piece) {
      const int64_t m = std::min(piece, n - at);
      check(MPI_Allreduce(MPI_IN_PLACE, data + at, as_int(m), mpi_type<T>(), op, comm_), call);
      sent += reduce_traffic(m);
    }
    count(sent * static_cast<int64_t>(sizeof(T)));
  }

  char* staging(const Plan& plan) {
    const auto need = static_cast<size_t>(std::min(plan.total, plan.slice * size_));
    if (staging_.size() < need) staging_.resize(need);
    return staging_.data();
  }
  // A staged round's slices, from the staging buffer to their places in the concatenation.
  void unstage(const Plan& plan, int64_t r, char* dest) const {
    for (int p = 0; p < size_; ++p)
      if (c_[p] > 0) std::memcpy(dest + plan.base[p] + plan.start(r), staging_.data() + d_[p], c_[p]);
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::string name_;
  // Kept between calls so that a training step's collectives allocate nothing once they have grown.
  std::vector<float> scratch_f_;
  std::vector<double> scratch_d_;
  std::vector<char> staging_;
  std::vector<int> lens_, offs_, recv_counts_, recv_offs_, c_, d_;
  std::vector<int64_t> all_counts_;
};

// Whether make_mpi_world started MPI (then finalize_mpi ends it); a host that initialized MPI itself
// (mpi4py in the Python module, say) finalizes it itself.
bool g_we_initialized = false;

}  // namespace

namespace detail {

bool mpi_available() { return true; }

std::unique_ptr<Comm> make_mpi_world(int* argc, char*** argv) {
  int initialized = 0;
  check(MPI_Initialized(&initialized), "MPI_Initialized");
  int provided = MPI_THREAD_SINGLE;
  if (!initialized) {
    const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS)
      runtime_error("cannot start MPI: MPI_Init_thread failed (MPI error code ", rc,
                    "); this process was started by an MPI launcher (mpirun), whose processes could not connect");
    g_we_initialized = true;
  } else {
    check(MPI_Query_thread(&provided), "MPI_Query_thread");
  }
  // FUNNELED: msae's worker threads never call MPI, but the thread that does is not necessarily the one
  // MPI considers main under MPI_THREAD_SINGLE.
  if (provided < MPI_THREAD_FUNNELED)
    runtime_error("the MPI library provides thread level ", provided, ", below MPI_THREAD_FUNNELED (",
                  MPI_THREAD_FUNNELED, ") that msae needs");
  return std::make_unique<MpiComm>();
}

void finalize_mpi() {
  if (!g_we_initialized) return;
  int initialized = 0, finalized = 0;
  if (MPI_Initialized(&initialized) == MPI_SUCCESS && initialized && MPI_Finalized(&finalized) == MPI_SUCCESS &&
      !finalized)
    check(MPI_Finalize(), "MPI_Finalize");
  g_we_initialized = false;
}

}  // namespace detail
}  // namespace msae::comm
