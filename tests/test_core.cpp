// Unit tests for msae core: errors, Rng (pinned stream, ranges, state), shuffle_indices, Tensor helpers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <vector>

#include "core/fast_exp.h"
#include "msae/core.h"

namespace {

using msae::Rng;

// ---------------------------------------------------------------------------------------------
// Rng
// ---------------------------------------------------------------------------------------------

// The stream is part of the file formats (checkpoints resume it) and of reproducibility across
// platforms, so pin it. Values from an independent Python transcription of splitmix64 seeding +
// xoshiro256** (Vigna's reference algorithm).
TEST(Rng, PinnedStream) {
  Rng a(0);
  EXPECT_EQ(a.next_u64(), 0x99ec5f36cb75f2b4ULL);
  EXPECT_EQ(a.next_u64(), 0xbf6e1f784956452aULL);
  EXPECT_EQ(a.next_u64(), 0x1a5f849d4933e6e0ULL);
  Rng b(42);
  EXPECT_EQ(b.next_u64(), 0x15780b2e0c2ec716ULL);
  EXPECT_EQ(b.next_u64(), 0x6104d9866d113a7eULL);
  EXPECT_EQ(b.next_u64(), 0xae17533239e499a1ULL);
}

TEST(Rng, SameSeedSameStreamDifferentSeedDifferentStream) {
  Rng a(123), b(123), c(124);
  int differ = 0;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t va = a.next_u64();
    EXPECT_EQ(va, b.next_u64());
    differ += va != c.next_u64();
  }
  EXPECT_GT(differ, 990);
}

TEST(Rng, StateRoundTripResumesTheStream) {
  Rng a(7);
  for (int i = 0; i < 10; ++i) a.next_u64();
  const std::vector<uint64_t> saved = a.state();
  ASSERT_EQ(saved.size(), 4u);
  std::vector<uint64_t> expected;
  for (int i = 0; i < 20; ++i) expected.push_back(a.next_u64());
  Rng b(999);
  b.set_state(saved);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(b.next_u64(), expected[i]) << "draw " << i;
}

TEST(Rng, SplitIsDeterministicAndIndependent) {
  Rng p1(5), p2(5);
  Rng c1 = p1.split(1), c2 = p2.split(1);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(c1.next_u64(), c2.next_u64());
  Rng p3(5);
  Rng d = p3.split(2);
  Rng p4(5);
  Rng e = p4.split(1);
  int differ = 0;
  for (int i = 0; i < 100; ++i) differ += d.next_u64() != e.next_u64();
  EXPECT_GT(differ, 95) << "different stream ids must give different streams";
  // The child must not simply replay its parent.
  Rng parent(5);
  Rng child = parent.split(1);
  Rng parent_copy(5);
  int same = 0;
  for (int i = 0; i < 100; ++i) same += child.next_u64() == parent_copy.next_u64();
  EXPECT_LT(same, 5);
}

TEST(Rng, BelowStaysInRange) {
  Rng r(11);
  const uint64_t big = (uint64_t{1} << 63) + 1;  // the worst case for rejection (almost half rejected)
  for (uint64_t n : {uint64_t{1}, uint64_t{2}, uint64_t{3}, uint64_t{7}, uint64_t{1000}, big,
                     std::numeric_limits<uint64_t>::max()}) {
    for (int i = 0; i < 2000; ++i) {
      const uint64_t v = r.below(n);
      ASSERT_LT(v, n) << "n=" << n;
    }
  }
  for (int i = 0; i < 100; ++i) EXPECT_EQ(r.below(1), 0u);
}

TEST(Rng, BelowIsRoughlyUniform) {
  // Fixed seed, so deterministic; the bound is ~6 sigma for a chi-square with 9 dof.
  Rng r(2024);
  constexpr int kBins = 10, kDraws = 100000;
  std::vector<int> count(kBins, 0);
  for (int i = 0; i < kDraws; ++i) ++count[r.below(kBins)];
  double chi2 = 0;
  const double expected = double(kDraws) / kBins;
  for (int c : count) chi2 += (c - expected) * (c - expected) / expected;
  EXPECT_LT(chi2, 40.0);
  // n = 2/3 * 2^64: a plain `next_u64() % n` would make the lower half of [0, n) twice as likely as the
  // upper half (p = 2/3 instead of 1/2).
  const uint64_t n = 0xAAAAAAAAAAAAAAAAULL;
  int low = 0;
  for (int i = 0; i < 3000; ++i) low += r.below(n) < n / 2;
  EXPECT_GT(low, 1350);
  EXPECT_LT(low, 1650);
}

TEST(Rng, UniformRanges) {
  Rng r(3);
  double sum = 0;
  double lo_seen = 1, hi_seen = 0;
  for (int i = 0; i < 100000; ++i) {
    const double u = r.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    lo_seen = std::min(lo_seen, u);
    hi_seen = std::max(hi_seen, u);
  }
  EXPECT_NEAR(sum / 100000, 0.5, 0.01);
  EXPECT_LT(lo_seen, 0.001);
  EXPECT_GT(hi_seen, 0.999);
  for (int i = 0; i < 100000; ++i) {
    const float f = r.uniform(-2.5f, 4.0f);
    ASSERT_GE(f, -2.5f);
    ASSERT_LT(f, 4.0f);
  }
  // A one-ulp range: the only value in [lo, hi) is lo, even when the scaled draw rounds up.
  const float lo = 1.0f, hi = std::nextafter(1.0f, 2.0f);
  for (int i = 0; i < 10000; ++i) ASSERT_EQ(r.uniform(lo, hi), lo);
}

TEST(Rng, NormalMoments) {
  Rng r(17);
  constexpr int kN = 200000;
  double sum = 0, sum2 = 0;
  for (int i = 0; i < kN; ++i) {
    const double x = r.normal();
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sum2 += x * x;
  }
  const double mean = sum / kN;
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(sum2 / kN - mean * mean, 1.0, 0.02);
}

// ---------------------------------------------------------------------------------------------
// shuffle_indices
// ---------------------------------------------------------------------------------------------
std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

TEST(Shuffle, IsAPermutation) {
  Rng r(1);
  for (int64_t n : {0, 1, 2, 5, 1000}) {
    std::vector<int64_t> v = iota(n);
    msae::shuffle_indices(v, r);
    std::vector<int64_t> sorted = v;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, iota(n)) << "n=" << n;
  }
  std::vector<int64_t> v = iota(1000);
  msae::shuffle_indices(v, r);
  EXPECT_NE(v, iota(1000)) << "1000 elements came back in order";
}

TEST(Shuffle, DeterministicPerSeed) {
  std::vector<int64_t> a = iota(100), b = iota(100), c = iota(100);
  Rng ra(9), rb(9), rc(10);
  msae::shuffle_indices(a, ra);
  msae::shuffle_indices(b, rb);
  msae::shuffle_indices(c, rc);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(Shuffle, AllPermutationsOfThreeEquallyLikely) {
  Rng r(77);
  std::map<std::vector<int64_t>, int> seen;
  constexpr int kTrials = 60000;
  for (int i = 0; i < kTrials; ++i) {
    std::vector<int64_t> v = iota(3);
    msae::shuffle_indices(v, r);
    ++seen[v];
  }
  ASSERT_EQ(seen.size(), 6u);
  for (const auto& [perm, count] : seen) EXPECT_NEAR(count, kTrials / 6, 400) << "a biased shuffle";
}

// ---------------------------------------------------------------------------------------------
// Tensor, numel, shape_str
// ---------------------------------------------------------------------------------------------
TEST(Tensor, ShapeAndFill) {
  msae::Tensor t({2, 3}, 1.5f);
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.rows(), 2);
  EXPECT_EQ(t.cols(), 3);
  for (float v : t.data) EXPECT_EQ(v, 1.5f);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.ptr()) % 64, 0u) << "float buffers are 64-byte aligned";

  msae::Tensor vec({5});
  EXPECT_EQ(vec.numel(), 5);
  EXPECT_EQ(vec.rows(), 5);
  EXPECT_EQ(vec.cols(), 1);
  EXPECT_EQ(vec.data[4], 0.0f);

  msae::Tensor scalar(std::vector<int64_t>{}, 2.0f);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.rows(), 1);
  EXPECT_EQ(scalar.data[0], 2.0f);

  msae::Tensor empty({0, 4});
  EXPECT_EQ(empty.numel(), 0);
  EXPECT_EQ(empty.rows(), 0);
  EXPECT_EQ(empty.cols(), 4);
}

TEST(Tensor, NumelAndShapeStr) {
  EXPECT_EQ(msae::numel({}), 1);
  EXPECT_EQ(msae::numel({7}), 7);
  EXPECT_EQ(msae::numel({4, 16}), 64);
  EXPECT_EQ(msae::numel({3, 0, 5}), 0);
  EXPECT_EQ(msae::shape_str({4, 16}), "(4, 16)");
  EXPECT_EQ(msae::shape_str({5}), "(5,)");
  EXPECT_EQ(msae::shape_str({}), "()");
  EXPECT_EQ(msae::shape_str({1, 2, 3}), "(1, 2, 3)");
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------
TEST(Errors, KindsAndExitCodes) {
  try {
    msae::usage_error("flag --k: expected > 0, found ", -3);
    FAIL() << "usage_error returned";
  } catch (const msae::Error& e) {
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_EQ(e.kind(), msae::ErrorKind::usage);
    EXPECT_STREQ(e.what(), "flag --k: expected > 0, found -3");
  }
  try {
    msae::runtime_error("file ", "x.npy", ": bad");
    FAIL() << "runtime_error returned";
  } catch (const msae::Error& e) {
    EXPECT_EQ(e.exit_code(), 1);
    EXPECT_STREQ(e.what(), "file x.npy: bad");
  }
  EXPECT_EQ(msae::cat("a", 1, '/', 2.5), "a1/2.5");
}

TEST(ErrorsDeathTest, AssertAbortsWithLocation) {
  EXPECT_DEATH(MSAE_ASSERT(1 + 1 == 3, "math is ", "broken"), "test_core.cpp:[0-9]+: assertion .*math is broken");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// detail::exp_fast (core/fast_exp.h): the vectorizable exp of the LM cross-entropy and the feature sampler

TEST(ExpFast, RelativeErrorAgainstStdExp) {
  // Every 1/4096 on [-87, 88] (716,800 points): relative error below 1e-7 (float's own rounding is
  // 6e-8). Outside: positive and under 1.7e-38 below -87, at least 1e38 and finite above 88.
  double worst = 0.0;
  for (int64_t i = -87 * 4096; i <= 88 * 4096; ++i) {
    const float x = static_cast<float>(i) / 4096.0f;
    const double ref = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(static_cast<double>(msae::detail::exp_fast(x)) / ref - 1.0));
  }
  EXPECT_LT(worst, 1e-7);
  for (const float x : {-1e6f, -1000.0f, -100.0f, -87.5f}) {
    const float v = msae::detail::exp_fast(x);
    EXPECT_GT(v, 0.0f) << x;
    EXPECT_LT(v, 1.7e-38f) << x;
  }
  for (const float x : {88.5f, 100.0f, 1e6f}) {
    const float v = msae::detail::exp_fast(x);
    EXPECT_GE(v, 1e38f) << x;
    EXPECT_TRUE(std::isfinite(v)) << x;
  }
  EXPECT_EQ(msae::detail::exp_fast(0.0f), 1.0f);
}

// Numbers as text (core.h): files get the shortest decimal that reads back to the same value (a float32
// 0.9 is 0.9 in JSON, not 0.8999999761581421); people get a fixed number of digits.
TEST(Format, ShortestRoundTripsFloats) {
  EXPECT_EQ(msae::shortest(0.9f), "0.9");
  EXPECT_EQ(msae::shortest(3e-4f), "0.0003");
  EXPECT_EQ(msae::shortest(1e-8f), "1e-08");
  EXPECT_EQ(msae::shortest(0.1), "0.1");
  EXPECT_EQ(msae::json_number(0.9f), 0.9);
  EXPECT_EQ(msae::json_number(3e-4f), 3e-4);
  EXPECT_TRUE(std::isnan(msae::json_number(std::numeric_limits<float>::quiet_NaN())));
  // Every float reads back exactly, through the text and through json_number.
  msae::Rng rng(7);
  for (int i = 0; i < 100000; ++i) {
    uint32_t bits = static_cast<uint32_t>(rng.next_u64());
    float f;
    std::memcpy(&f, &bits, 4);
    if (!std::isfinite(f)) continue;
    ASSERT_EQ(std::strtof(msae::shortest(f).c_str(), nullptr), f) << msae::shortest(f);
    ASSERT_EQ(static_cast<float>(msae::json_number(f)), f);
  }
  EXPECT_EQ(msae::json_numbers({0.95f, 2.0f}), (std::vector<double>{0.95, 2.0}));
}

TEST(Format, FixedDigitsForPeople) {
  EXPECT_EQ(msae::sig_digits(0.1, 4), "0.1000");
  EXPECT_EQ(msae::sig_digits(12.3456, 4), "12.35");
  EXPECT_EQ(msae::sig_digits(9.99996, 4), "10.00");
  EXPECT_EQ(msae::sig_digits(1234.56, 4), "1235");
  EXPECT_EQ(msae::sig_digits(0.000123456, 3), "0.000123");
  EXPECT_EQ(msae::sig_digits(1.5e-7, 3), "1.50e-07");
  EXPECT_EQ(msae::sig_digits(2.5e7, 3), "2.50e+07");
  EXPECT_EQ(msae::sig_digits(0.0, 3), "0.00");
  EXPECT_EQ(msae::fixed(0.0756648, 4), "0.0757");
  EXPECT_EQ(msae::fixed(1.0, 3), "1.000");
}

TEST(Format, ShortestIsPlainDecimalForUsualMagnitudes) {
  EXPECT_EQ(msae::shortest(-0.0003f), "-0.0003");
  EXPECT_EQ(msae::shortest(1e-5f), "0.00001");
  EXPECT_EQ(msae::shortest(16384.0f), "16384");
  EXPECT_EQ(msae::shortest(12.5f), "12.5");
  EXPECT_EQ(msae::shortest(0.0f), "0");
  EXPECT_EQ(msae::shortest(1.5e20f), "1.5e+20");
  EXPECT_EQ(msae::shortest(0.42224544f), "0.42224544");
}
