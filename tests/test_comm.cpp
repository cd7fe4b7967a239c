// The communicator (msae/comm.h) on every process count it runs at: alone (the local communicator) and
// under mpirun with 1, 2, 3 and 4 processes (the MPI communicator; tests/CMakeLists.txt, msae_add_mpi_test).
// Every process computes locally what every other process contributed (the inputs are functions of rank
// and index), so each result is checked against a plain loop: float and double sums bit for bit against
// the rank-order sum (rank 0's value first), everything else exactly. Verdicts are agreed on by all
// processes before they are asserted (all_ok), so a wrong result on one process fails the test on all of
// them and none is left waiting in a collective. The MPI communicator cuts transfers beyond 2^30 bytes
// into several calls; MaxCallBytes lowers that limit around the call under test so that small data walks
// the same loops (only around it: every call is then several collectives, slow with more processes than
// cores).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/comm_mpi.h"
#include "msae/comm.h"

namespace {

using msae::comm::Comm;

Comm& w() { return msae::comm::world(); }
bool launched() { return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr; }

// True when `ok` holds on every process (an allreduce of the verdicts; every process must call it).
bool all_ok(bool ok) {
  int64_t bad = ok ? 0 : 1;
  w().allreduce_max(&bad, 1);
  return bad == 0;
}

// True when every process holds exactly the same bytes as rank 0.
bool same_bytes_everywhere(const void* data, int64_t bytes) {
  std::vector<char> all;
  std::vector<int64_t> counts;
  w().allgatherv(data, bytes, all, counts);
  bool ok = true;
  for (int p = 0; p < w().size(); ++p)
    ok = ok && counts[p] == bytes && (bytes == 0 || std::memcmp(all.data() + p * bytes, all.data(), bytes) == 0);
  return all_ok(ok);
}

// Lowers the communicator's per-call limit for one test (the same on every process), then restores it.
class MaxCallBytes {
 public:
  explicit MaxCallBytes(int64_t bytes) { msae::comm::detail::set_max_call_bytes(bytes); }
  ~MaxCallBytes() { msae::comm::detail::set_max_call_bytes(0); }
  MaxCallBytes(const MaxCallBytes&) = delete;
  MaxCallBytes& operator=(const MaxCallBytes&) = delete;
};

// Inputs whose sum depends on the order of the additions: a small value, then big values of both signs
// that swallow it unless they cancel first (1 + 1e8 - 1e8 is 0 or 8 in float one way round, 1 the other).
// Element i of process r; `big` is 1e8 for float, 1e16 for double (both beyond the precision at which
// adding 1 is exact).
template <class T>
T input(int r, int64_t i, T big) {
  switch ((i + r) % 4) {
    case 0:
      return static_cast<T>(1 + i % 7);
    case 1:
      return big;
    case 2:
      return -big;
    default:
      return static_cast<T>((static_cast<uint64_t>(i) * 2654435761u) % 1000) * static_cast<T>(1e-3) - T(0.5);
  }
}

// The sum the communicator must give: rank 0's value, then + rank 1's, and so on.
template <class T>
T rank_order_sum(int64_t i, T big, int processes) {
  T s = input<T>(0, i, big);
  for (int r = 1; r < processes; ++r) s += input<T>(r, i, big);
  return s;
}

// The bytes one process sends for a reduction of n elements of `elem` bytes (comm_mpi.cpp's count): in
// each piece of at most max_call_bytes(), the others' chunks in the reduce-scatter, then its reduced chunk
// to each other process. About 2 n (P-1)/P elements; nothing with one process.
int64_t reduce_bytes(int64_t n, int64_t elem) {
  const int64_t p = w().size();
  const int64_t piece = std::max(p, msae::comm::detail::max_call_bytes() / elem);
  int64_t sent = 0;
  for (int64_t at = 0; at < n; at += piece) {
    const int64_t m = std::min(piece, n - at), own = m / p + (w().rank() < m % p ? 1 : 0);
    sent += (m - own) + own * (p - 1);
  }
  return sent * elem;
}

// limit: the communicator's bytes per MPI call during the sum (0: its default).
template <class T>
void check_sum(int64_t n, T big, int64_t limit = 0) {
  const int p = w().size(), r = w().rank();
  std::vector<T> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = input<T>(r, i, big);
  const int64_t bytes_before = w().bytes_sent();
  int64_t expected_bytes = 0;
  {
    MaxCallBytes small(limit);
    w().allreduce_sum(v.data(), n);
    expected_bytes = reduce_bytes(n, sizeof(T));
  }
  const int64_t sent = w().bytes_sent() - bytes_before;
  int64_t wrong = 0, first_wrong = -1;
  for (int64_t i = 0; i < n; ++i) {
    const T want = rank_order_sum<T>(i, big, p);
    if (std::memcmp(&v[i], &want, sizeof(T)) != 0 && wrong++ == 0) first_wrong = i;
  }
  EXPECT_TRUE(all_ok(wrong == 0)) << "n " << n << ": " << wrong << " elements differ from the rank-order sum, first at "
                                  << first_wrong;
  EXPECT_TRUE(same_bytes_everywhere(v.data(), n * static_cast<int64_t>(sizeof(T)))) << "n " << n;
  EXPECT_TRUE(all_ok(sent == expected_bytes)) << "n " << n << ": bytes_sent grew by " << sent;
}

// reduce_scatter_sum then allgather_parts with uneven parts (one empty): after the first, this process's part
// is the rank-order sum and the rest is untouched; after the second, everything is, on every process.
void check_parts(int64_t n, int64_t limit) {
  const int p = w().size(), r = w().rank();
  std::vector<int64_t> parts(static_cast<size_t>(p) + 1, 0);
  for (int j = 0; j < p; ++j) parts[j + 1] = j == 1 ? parts[j] : std::min<int64_t>(n, parts[j] + n * (j + 1) * 2 / (p * (p + 1)) + 1);
  parts[p] = n;
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = input<float>(r, i, 1e8f);
  MaxCallBytes small(limit);
  w().reduce_scatter_sum(v.data(), parts);
  int64_t wrong = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool mine = i >= parts[r] && i < parts[r + 1];
    const float want = mine ? rank_order_sum<float>(i, 1e8f, p) : input<float>(r, i, 1e8f);
    wrong += std::memcmp(&v[i], &want, sizeof want) != 0;
  }
  EXPECT_TRUE(all_ok(wrong == 0)) << "n " << n << ": " << wrong << " elements wrong after reduce_scatter_sum";
  w().allgather_parts(v.data(), parts);
  wrong = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float want = rank_order_sum<float>(i, 1e8f, p);
    wrong += std::memcmp(&v[i], &want, sizeof want) != 0;
  }
  EXPECT_TRUE(all_ok(wrong == 0)) << "n " << n << ": " << wrong << " elements wrong after allgather_parts";
  EXPECT_TRUE(same_bytes_everywhere(v.data(), n * static_cast<int64_t>(sizeof(float)))) << "n " << n;
}

TEST(Comm, ReduceScatterThenAllgatherParts) {
  for (const int64_t n : {int64_t{0}, int64_t{3}, int64_t{1001}, int64_t{200000}}) {
    check_parts(n, 0);
    check_parts(n, 64);  // many rounds
  }
}

TEST(Comm, WorldMatchesTheLauncher) {
  if (launched()) {
    EXPECT_TRUE(msae::comm::mpi_built());
    EXPECT_EQ(w().size(), std::atoi(std::getenv("OMPI_COMM_WORLD_SIZE")));
    EXPECT_EQ(w().rank(), std::atoi(std::getenv("OMPI_COMM_WORLD_RANK")));
    ASSERT_NE(std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE"), nullptr);
    EXPECT_EQ(msae::comm::local_processes(), std::atoi(std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")));
    const std::string name = w().name();
    EXPECT_EQ(name.rfind("mpi (", 0), 0u) << name;
    const std::string processes = w().size() == 1 ? "1 process)" : std::to_string(w().size()) + " processes)";
    EXPECT_NE(name.find(processes), std::string::npos) << name;
    EXPECT_NE(name.find("MPI"), std::string::npos) << name << " (the library's name)";
  } else {
    EXPECT_EQ(w().size(), 1);
    EXPECT_EQ(w().rank(), 0);
    EXPECT_EQ(w().name(), "local");
    EXPECT_EQ(msae::comm::local_processes(), 1);
  }
  EXPECT_EQ(msae::comm::is_root(), w().rank() == 0);
  // Every rank appears exactly once.
  std::vector<int64_t> seen(static_cast<size_t>(w().size()), 0);
  seen[w().rank()] = 1;
  w().allreduce_sum(seen.data(), static_cast<int64_t>(seen.size()));
  for (int p = 0; p < w().size(); ++p) EXPECT_EQ(seen[p], 1) << "rank " << p;
}

TEST(Comm, FloatSumIsTheRankOrderSumBitForBit) {
  const int64_t p = w().size();
  for (const int64_t n : {int64_t{0}, int64_t{1}, p - 1, p, p + 1, 7 * p + 3, int64_t{1000}, int64_t{3'000'001}})
    check_sum<float>(n, 1e8f);
}

TEST(Comm, DoubleSumIsTheRankOrderSumBitForBit) {
  const int64_t p = w().size();
  for (const int64_t n : {int64_t{0}, int64_t{1}, p - 1, 5 * p + 2, int64_t{1'000'003}}) check_sum<double>(n, 1e16);
}

// The inputs do make the order matter (with 3 or more processes: two floats add the same either way), so
// the bit-for-bit checks above would see a sum in another order.
TEST(Comm, TheInputsMakeTheOrderMatter) {
  const int p = w().size();
  if (p < 3) GTEST_SKIP() << "a + b == b + a in floating point";
  int differ = 0;
  for (int64_t i = 0; i < 64; ++i) {
    float reversed = input<float>(p - 1, i, 1e8f);
    for (int r = p - 2; r >= 0; --r) reversed += input<float>(r, i, 1e8f);
    differ += reversed != rank_order_sum<float>(i, 1e8f, p);
  }
  EXPECT_GT(differ, 0);
}

// Pieces of a few elements: the loop that keeps every MPI count below INT_MAX, with a last partial piece and
// pieces smaller than the process count.
TEST(Comm, SumInPieces) {
  // {limit, n}: each piece costs two collectives, so the larger sizes only with the larger limit.
  const int64_t cases[][2] = {{4, 0}, {4, 3}, {4, 101}, {40, 3}, {40, 1001}, {4096, 1001}, {4096, 100'003}};
  for (const auto& c : cases) {
    check_sum<float>(c[1], 1e8f, c[0]);
    check_sum<double>(c[1], 1e16, c[0]);
  }
}

// Repeated calls give the same bits (nothing depends on timing or on buffers left by an earlier call).
TEST(Comm, SumIsReproducible) {
  const int64_t n = 200'001;
  std::vector<float> a(n), b(n);
  for (int64_t i = 0; i < n; ++i) a[i] = b[i] = input<float>(w().rank(), i, 1e8f);
  w().allreduce_sum(a.data(), n);
  std::vector<float> big(3 * n, 1.0f);
  w().allreduce_sum(big.data(), 3 * n);  // a larger call in between grows the scratch buffers
  w().allreduce_sum(b.data(), n);
  EXPECT_TRUE(all_ok(std::memcmp(a.data(), b.data(), n * sizeof(float)) == 0));
}

TEST(Comm, IntegerSumAndMaxFloatMin) {
  const int p = w().size(), r = w().rank();
  const float specials[] = {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::denorm_min(), -0.0f, 3.5f};
  auto int_input = [](int rank, int64_t i) { return (int64_t{1} << 40) * (i % 3 - 1) + rank * 1000003 - i; };
  auto float_input = [&](int rank, int64_t i) {
    return i % 7 == 0 ? specials[(i / 7 + rank) % 5] : static_cast<float>((i * 31 + rank * 17) % 101) - 50.0f;
  };
  // {limit, n}: one call each, then pieces of two elements.
  const int64_t cases[][2] = {{0, 0}, {0, 1001}, {16, 101}};
  for (const auto& [limit, n] : cases) {
    std::vector<int64_t> sum(n), max(n);
    std::vector<float> min(n);
    for (int64_t i = 0; i < n; ++i) {
      sum[i] = max[i] = int_input(r, i);
      min[i] = float_input(r, i);
    }
    {
      MaxCallBytes small(limit);
      w().allreduce_sum(sum.data(), n);
      w().allreduce_max(max.data(), n);
      w().allreduce_min(min.data(), n);
    }
    bool ok = true;
    for (int64_t i = 0; i < n; ++i) {
      int64_t s = 0, m = std::numeric_limits<int64_t>::min();
      float f = std::numeric_limits<float>::infinity();
      for (int q = 0; q < p; ++q) {
        s += int_input(q, i);
        m = std::max(m, int_input(q, i));
        f = std::min(f, float_input(q, i));
      }
      // -0 and +0 compare equal: a minimum of the two may be either.
      ok = ok && sum[i] == s && max[i] == m && min[i] == f;
    }
    EXPECT_TRUE(all_ok(ok)) << "limit " << limit << " n " << n;
  }
}

// Process r contributes `size_of(r)` bytes (none for rank 1), byte j being (r * 31 + j) mod 256.
int64_t size_of(int r, int64_t scale) { return r == 1 ? 0 : scale * (r + 1) + r; }
std::vector<char> part(int r, int64_t scale) {
  std::vector<char> v(static_cast<size_t>(size_of(r, scale)));
  for (size_t j = 0; j < v.size(); ++j) v[j] = static_cast<char>((r * 31 + static_cast<int64_t>(j)) & 0xff);
  return v;
}
std::vector<char> concatenation(int64_t scale) {
  std::vector<char> all;
  for (int r = 0; r < w().size(); ++r) {
    const auto v = part(r, scale);
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}
std::vector<int64_t> sizes(int64_t scale) {
  std::vector<int64_t> c;
  for (int r = 0; r < w().size(); ++r) c.push_back(size_of(r, scale));
  return c;
}

// {limit, scale} of the variable-size exchanges: limit 0, everything in one call; 7, staged rounds of one
// or two bytes of every part; 1000 with parts of up to ~4000 bytes, a few rounds of a few hundred.
constexpr int64_t kExchangeCases[][2] = {{0, 0}, {0, 1}, {0, 1000}, {7, 0}, {7, 3}, {1000, 1000}};

TEST(Comm, Allgatherv) {
  const int p = w().size(), r = w().rank();
  for (const auto& [limit, scale] : kExchangeCases) {
    const auto mine = part(r, scale);
    std::vector<char> out = {'x'};
    std::vector<int64_t> counts = {42};
    const int64_t before = w().bytes_sent();
    {
      MaxCallBytes small(limit);
      w().allgatherv(mine.data(), static_cast<int64_t>(mine.size()), out, counts);
    }
    const int64_t sent = w().bytes_sent() - before;
    EXPECT_TRUE(all_ok(out == concatenation(scale) && counts == sizes(scale)))
        << "limit " << limit << " scale " << scale;
    EXPECT_TRUE(all_ok(sent == static_cast<int64_t>(mine.size()) * (p - 1))) << sent;
  }
}

TEST(Comm, GathervToTheLastRank) {
  const int p = w().size(), r = w().rank(), root = p - 1;
  for (const auto& [limit, scale] : kExchangeCases) {
    const auto mine = part(r, scale);
    std::vector<char> out = {'x'};
    std::vector<int64_t> counts = {42};
    const int64_t before = w().bytes_sent();
    {
      MaxCallBytes small(limit);
      w().gatherv(mine.data(), static_cast<int64_t>(mine.size()), out, counts, root);
    }
    const int64_t sent = w().bytes_sent() - before;
    const bool ok = r == root ? out == concatenation(scale) && counts == sizes(scale) : out.empty() && counts.empty();
    EXPECT_TRUE(all_ok(ok)) << "limit " << limit << " scale " << scale;
    EXPECT_TRUE(all_ok(sent == (r == root ? 0 : static_cast<int64_t>(mine.size())))) << sent;
  }
}

TEST(Comm, Scatterv) {
  const int p = w().size(), r = w().rank(), root = p / 2;
  for (const auto& [limit, scale] : kExchangeCases) {
    std::vector<std::vector<char>> contributions;
    int64_t others = 0;
    if (r == root)
      for (int q = 0; q < p; ++q) {
        contributions.push_back(part(q, scale));
        if (q != root) others += size_of(q, scale);
      }
    std::vector<char> out = {'x', 'y'};
    const int64_t before = w().bytes_sent();
    {
      MaxCallBytes small(limit);
      w().scatterv(contributions, out, root);
    }
    const int64_t sent = w().bytes_sent() - before;
    EXPECT_TRUE(all_ok(out == part(r, scale))) << "limit " << limit << " scale " << scale;
    EXPECT_TRUE(all_ok(sent == (r == root ? others : 0))) << sent;
  }
}

TEST(Comm, Broadcast) {
  const int p = w().size(), r = w().rank();
  // {limit, bytes}: one call, then pieces of 3 bytes (a last one shorter) and of 30000.
  const int64_t cases[][2] = {{0, 0}, {0, 1}, {0, 100'000}, {3, 1}, {3, 100}, {30'000, 100'000}};
  for (const int root : {0, p - 1})
    for (const auto& [limit, bytes] : cases) {
      std::vector<char> v(static_cast<size_t>(bytes));
      for (int64_t j = 0; j < bytes; ++j) v[j] = static_cast<char>(r == root ? (j * 7) & 0xff : 0x55);
      const int64_t before = w().bytes_sent();
      {
        MaxCallBytes small(limit);
        w().broadcast(v.data(), bytes, root);
      }
      const int64_t sent = w().bytes_sent() - before;
      bool ok = true;
      for (int64_t j = 0; j < bytes; ++j) ok = ok && v[j] == static_cast<char>((j * 7) & 0xff);
      EXPECT_TRUE(all_ok(ok)) << "root " << root << " bytes " << bytes << " limit " << limit;
      EXPECT_TRUE(all_ok(sent == (r == root ? bytes * (p - 1) : 0))) << sent;
    }
}

TEST(Comm, BarrierAndCallCount) {
  const int64_t calls = w().calls(), bytes = w().bytes_sent();
  w().barrier();
  float x = 1.0f;
  w().allreduce_sum(&x, 1);
  EXPECT_EQ(x, static_cast<float>(w().size()));
  if (w().size() > 1) {
    EXPECT_EQ(w().calls(), calls + 2);
    EXPECT_EQ(w().bytes_sent() - bytes, reduce_bytes(1, sizeof(float)));
  } else {
    EXPECT_EQ(w().bytes_sent(), bytes);  // the local communicator sends nothing
  }
}

}  // namespace
