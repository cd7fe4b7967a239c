// Feature models (synth::FeatureModel, FeatureSampler), the ground-truth metrics (gt_metrics.h) on cases
// with hand-computed answers, the meta-SAE, and the report writer.
//
// Tolerances: firing frequencies are checked against their analytic marginals to within 5 binomial
// standard deviations (sqrt(p (1 - p) / rows)), a false-failure rate below 1e-6 per check. Metric cases
// use exact magnitudes (mag_std = 0) so that the expected counts follow from the fired features alone
// and are compared exactly; cosines to 1e-5 (float32 dot products of unit vectors in <= 20 dims).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <string>

#include "msae/gt_metrics.h"
#include "msae/report.h"
#include "msae/run.h"
#include "msae/synth.h"
#include "core/half.h"
#include "synth/row_rng.h"

namespace msae {
namespace {

using synth::FeatureModel;
using synth::FiredFeatures;

FiredFeatures sample_fired(const FeatureModel& m, int64_t rows, uint64_t seed, std::vector<float>* x = nullptr,
                           const synth::SamplerOptions& options = {}) {
  std::vector<float> buf(static_cast<size_t>(rows * m.d));
  FiredFeatures fired;
  synth::FeatureSampler(m, seed, options).sample(rows, buf.data(), &fired);
  if (x) *x = std::move(buf);
  return fired;
}

TEST(FeatureModel, TreePresetStructure) {
  const FeatureModel m = synth::make_preset("tree", 3);
  ASSERT_EQ(m.n_features(), 20);
  ASSERT_EQ(m.d, 20);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(m.parent[i], -1);
    EXPECT_EQ(m.n_children[i], 3);
    EXPECT_EQ(m.first_child[i], 3 + 3 * i);
    EXPECT_DOUBLE_EQ(m.marginal[i], 0.15);
  }
  for (int c = 3; c < 12; ++c) {
    EXPECT_EQ(m.parent[c], (c - 3) / 3);
    EXPECT_EQ(m.depth[c], 1);
    EXPECT_NEAR(m.marginal[c], 0.15 * 0.2, 1e-15);
  }
  for (int f = 12; f < 20; ++f) EXPECT_DOUBLE_EQ(m.marginal[f], 0.05);
  // Orthonormal directions.
  for (int a = 0; a < 20; ++a)
    for (int b = 0; b < 20; ++b) {
      double dot = 0;
      for (int j = 0; j < 20; ++j) dot += m.directions.ptr()[a * 20 + j] * m.directions.ptr()[b * 20 + j];
      EXPECT_NEAR(dot, a == b ? 1.0 : 0.0, 1e-5) << a << " " << b;
    }
  EXPECT_NEAR(m.expected_l0(), 3 * 0.15 * 1.6 + 8 * 0.05, 1e-12);
}

// The tree on both sampler loops: the small-model one (alias tables for the dense features, the default
// for the toys) and the general one.
class TreeSampler : public ::testing::TestWithParam<bool> {};
INSTANTIATE_TEST_SUITE_P(Loops, TreeSampler, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "small" : "general"; });

TEST_P(TreeSampler, RespectsHierarchyAndFrequencies) {
  const FeatureModel m = synth::make_preset("tree", 0);
  const int64_t rows = 200000;
  std::vector<float> x;
  synth::SamplerOptions options;
  options.small_path = GetParam();
  const FiredFeatures fired = sample_fired(m, rows, 7, &x, options);
  std::vector<std::vector<int64_t>> both(20, std::vector<int64_t>(20, 0));  // rows where f and g fired
  std::vector<int64_t> count(20, 0);
  for (int64_t r = 0; r < rows; ++r) {
    std::set<int32_t> ids(fired.ids.begin() + fired.offsets[r], fired.ids.begin() + fired.offsets[r + 1]);
    ASSERT_EQ(static_cast<int64_t>(ids.size()), fired.offsets[r + 1] - fired.offsets[r]);  // no duplicates
    for (int32_t f : ids) {
      count[f] += 1;
      for (int32_t g : ids) both[f][g] += 1;
      if (m.parent[f] >= 0) {
        ASSERT_TRUE(ids.count(m.parent[f])) << "child " << f << " without its parent, row " << r;
      }
    }
    for (int p = 0; p < 3; ++p) {
      int kids = 0;
      for (int c = 0; c < 3; ++c) kids += static_cast<int>(ids.count(3 + 3 * p + c));
      ASSERT_LE(kids, 1) << "siblings fired together in row " << r;
    }
    // x = sum of fired directions times magnitudes: projecting on an unfired (orthogonal) direction gives 0.
    for (int f = 0; f < 20; ++f) {
      double proj = 0;
      for (int j = 0; j < 20; ++j) proj += x[r * 20 + j] * m.directions.ptr()[f * 20 + j];
      if (!ids.count(f)) {
        ASSERT_NEAR(proj, 0.0, 1e-4);
      } else {
        ASSERT_GE(proj, 0.05 - 1e-4);
      }
    }
  }
  for (int f = 0; f < 20; ++f) {
    const double p = m.marginal[f], sd = std::sqrt(p * (1 - p) / rows);
    EXPECT_NEAR(static_cast<double>(count[f]) / rows, p, 5 * sd) << "feature " << f;
  }
  // The base features (parents 0-2, independents 12-19) fire independently: every pair's co-firing rate
  // against p_f p_g (the alias tables draw eight of them jointly).
  std::vector<int> base = {0, 1, 2};
  for (int f = 12; f < 20; ++f) base.push_back(f);
  for (size_t a = 0; a < base.size(); ++a)
    for (size_t b = a + 1; b < base.size(); ++b) {
      const int f = base[a], g = base[b];
      const double p = m.marginal[f] * m.marginal[g], sd = std::sqrt(p * (1 - p) / rows);
      EXPECT_NEAR(static_cast<double>(both[f][g]) / rows, p, 5 * sd) << "features " << f << ", " << g;
    }
  // A child fires with its conditional probability (0.2) given its parent.
  for (int c = 3; c < 12; ++c) {
    const int parent = m.parent[c];
    const double q = m.cond_prob[c], n = static_cast<double>(count[parent]), sd = std::sqrt(q * (1 - q) / n);
    EXPECT_NEAR(static_cast<double>(both[c][parent]) / n, q, 5 * sd) << "child " << c;
  }
}

TEST(FeatureModel, FewNormalsMatchTheVectorizedBlock) {
  // normals_few (m <= 4, the toys' magnitudes) must give what normals_vector gives for the same generator
  // state, bit for bit, including the ~1% of normals that fail the rectangle test and draw more; and
  // leave the generator in the same state.
  const synth::detail::ZigTables& zt = synth::detail::zig_tables();
  int64_t failures_seen = 0;
  for (uint64_t row = 0; row < 20000; ++row)
    for (int64_t m = 1; m <= 4; ++m) {
      synth::detail::WyRowRng a(12345, row), b(12345, row);
      float za[4], zb[synth::detail::kNormalBlock];
      synth::detail::normals_few(a, zt, za, m);
      synth::detail::normals_vector(b, zt, zb, m);
      ASSERT_EQ(std::memcmp(za, zb, sizeof(float) * m), 0) << "row " << row << " m " << m;
      ASSERT_EQ(a.s, b.s);
      failures_seen += (a.s != synth::detail::WyRowRng(12345, row).s + ((m + 1) / 2) * 0xa0761d6478bd642fULL);
    }
  EXPECT_GT(failures_seen, 100);  // the finishing path was exercised
}

TEST(FeatureModel, VectorNormalsMatchTheScalarZiggurat) {
  // normals_vector (vector rectangle test, failures from a bit mask) against the plain scalar form of the
  // same method for every m <= 64: all 32-bit halves first, z = u * x[layer] where |u| < ratio[layer],
  // else zig_finish_bits, in ascending k. Bit for bit, and the generator left in the same state.
  const synth::detail::ZigTables& zt = synth::detail::zig_tables();
  int64_t finished = 0;
  for (uint64_t row = 0; row < 3000; ++row) {
    const int64_t m = 1 + static_cast<int64_t>(row % 64);
    synth::detail::WyRowRng a(777, row), b(777, row);
    float za[synth::detail::kNormalBlock], zb[synth::detail::kNormalBlock];
    synth::detail::normals_vector(a, zt, za, m);
    uint32_t bits[synth::detail::kNormalBlock];
    for (int64_t k = 0; k < m; k += 2) {
      const uint64_t w = b.next();
      bits[k] = static_cast<uint32_t>(w);
      if (k + 1 < m) bits[k + 1] = static_cast<uint32_t>(w >> 32);
    }
    for (int64_t k = 0; k < m; ++k) {
      const int li = static_cast<int>(bits[k] & (synth::detail::kZigLayers - 1));
      const float u = static_cast<float>(static_cast<int32_t>(bits[k] & ~uint32_t{synth::detail::kZigLayers - 1})) *
                      0x1.0p-31f;
      if (std::fabs(u) < zt.ratiof[li]) {
        zb[k] = u * zt.xf[li];
      } else {
        zb[k] = synth::detail::zig_finish_bits(b, zt, bits[k]);
        ++finished;
      }
    }
    ASSERT_EQ(std::memcmp(za, zb, sizeof(float) * m), 0) << "m " << m << " row " << row;
    ASSERT_EQ(a.s, b.s) << "m " << m;
  }
  EXPECT_GT(finished, 100);  // the finishing path was exercised
}

TEST(FeatureModel, SmallLoopAppliesToTheToysOnly) {
  // The toys' rows differ between the two loops (other draws), the big presets' do not (they never
  // take the small loop).
  for (const char* name : {"tree", "absorption", "synth-lite"}) {
    SCOPED_TRACE(name);
    const FeatureModel m = synth::make_preset(name, 1);
    std::vector<float> a(64 * m.d), b(64 * m.d);
    synth::SamplerOptions general;
    general.small_path = false;
    synth::FeatureSampler(m, 3).sample(64, a.data());
    synth::FeatureSampler(m, 3, general).sample(64, b.data());
    if (std::string(name) == "synth-lite") {
      EXPECT_EQ(a, b);
    } else {
      EXPECT_NE(a, b);
    }
  }
}

TEST(FeatureModel, HalfDirectionsGiveTheSameRows) {
  // The hierarchical models' directions are binary16 values, so the sampler streams them from a
  // binary16 copy; the rows must be those of the float copy, bit for bit. d = 37 pads rows to 40.
  synth::HierarchicalConfig c;
  c.d = 37;
  c.n_features = 80;
  c.n_roots = 4;
  c.branching = 2;
  c.depth = 2;
  c.p_max = 0.5;
  c.p_min = 0.01;
  c.corr_rank = 3;
  c.noise_std = 0.01f;
  c.seed = 2;
  for (const FeatureModel& m : {synth::make_hierarchical(c), synth::make_preset("synth-lite", 1)}) {
    SCOPED_TRACE(m.name);
    for (int64_t f = 0; f < m.n_features(); ++f) {
      double n2 = 0.0;
      for (int64_t j = 0; j < m.d; ++j) {
        const float v = m.directions.ptr()[f * m.d + j];
        ASSERT_EQ(msae::detail::round_to_half(v), v);  // (the conversions: test_io, Convert.*)
        n2 += static_cast<double>(v) * v;
      }
      ASSERT_NEAR(std::sqrt(n2), 1.0, 1e-3);
    }
    synth::SamplerOptions full;
    full.half_directions = false;
    synth::FeatureSampler from_half(m, 4), from_float(m, 4, full);
    EXPECT_TRUE(from_half.half_directions());
    EXPECT_FALSE(from_float.half_directions());
    const int64_t n = 500;
    std::vector<float> a(n * m.d), b(n * m.d);
    FiredFeatures fa, fb;
    from_half.sample(n, a.data(), &fa);
    from_float.sample(n, b.data(), &fb);
    EXPECT_EQ(a, b);
    EXPECT_EQ(fa.ids, fb.ids);
  }
  // The toys' orthonormal directions are not binary16 values: they stay on the float copy.
  EXPECT_FALSE(synth::FeatureSampler(synth::make_preset("tree", 1), 1).half_directions());
}

TEST(FeatureModel, StreamIsDeterministicAcrossSplitsAndThreads) {
  for (const char* name : {"synth-lite", "tree"}) {  // the general loop and the small-model one
    SCOPED_TRACE(name);
    const FeatureModel m = synth::make_preset(name, 1);
    const int64_t n = 700;
    std::vector<float> a(n * m.d), b(n * m.d);
    FiredFeatures fa, fb1, fb2;
    set_num_threads(2);
    synth::FeatureSampler(m, 5).sample(n, a.data(), &fa);
    set_num_threads(1);
    synth::FeatureSampler sb(m, 5);
    sb.sample(300, b.data(), &fb1);
    sb.sample(n - 300, b.data() + 300 * m.d, &fb2);
    set_num_threads(0);
    EXPECT_EQ(a, b);
    std::vector<int32_t> ids = fb1.ids;
    ids.insert(ids.end(), fb2.ids.begin(), fb2.ids.end());
    EXPECT_EQ(fa.ids, ids);
    // A different seed gives a different stream.
    std::vector<float> c(n * m.d);
    synth::FeatureSampler(m, 6).sample(n, c.data());
    EXPECT_NE(a, c);
  }
}

TEST(FeatureModel, HierarchicalPresetMatchesTheSpec) {
  const FeatureModel m = synth::make_preset("synth-16k", 0);
  ASSERT_EQ(m.n_features(), 16384);
  ASSERT_EQ(m.d, 768);
  std::vector<int64_t> per_depth(4, 0);
  for (int64_t f = 0; f < m.n_features(); ++f)
    if (m.parent[f] >= 0 || m.n_children[f] > 0) per_depth[m.depth[f]] += 1;
  EXPECT_EQ(per_depth, (std::vector<int64_t>{128, 512, 2048, 8192}));
  EXPECT_DOUBLE_EQ(m.cond_prob[0], 0.4);
  EXPECT_NEAR(m.marginal[16383], 5e-4, 1e-12);  // the last id is an independent feature
  for (int64_t f = 0; f < m.n_features(); ++f) {
    double mass = 0;
    for (int32_t c = 0; c < m.n_children[f]; ++c) mass += m.cond_prob[m.first_child[f] + c];
    ASSERT_LE(mass, 0.9 + 1e-12);
    ASSERT_GE(m.mag_std[f], 0.0f);
  }
  EXPECT_FLOAT_EQ(m.mag_mean[0], 5.0f);
  EXPECT_FLOAT_EQ(m.mag_mean[16383], 4.0f);
  EXPECT_EQ(m.corr_rank(), 25);
}

TEST(FeatureModel, CorrelationKeepsMarginalsAndCorrelatesAlignedLoadings) {
  // Two independent features with identical loadings co-fire more often than p^2; a third with the
  // opposite loading co-fires less. E[exp(s L.z - s^2/2)] = 1 keeps each marginal.
  synth::HierarchicalConfig c;
  c.d = 8;
  c.n_features = 3;
  c.p_max = 0.1;
  c.p_min = 0.1;
  c.n_roots = 0;
  c.corr_rank = 4;
  c.corr_scale = 0.5;  // small enough that min(1, p m) practically never clips (needs z > 4.8)
  c.bias_norm = 0;
  FeatureModel m = synth::make_hierarchical(c);
  for (int k = 0; k < 4; ++k) {
    m.loadings.ptr()[0 * 4 + k] = k == 0 ? 1.0f : 0.0f;
    m.loadings.ptr()[1 * 4 + k] = k == 0 ? 1.0f : 0.0f;
    m.loadings.ptr()[2 * 4 + k] = k == 0 ? -1.0f : 0.0f;
  }
  // Both ways of testing a base feature: the dense test (all three features, p = 0.1 >= 0) and
  // geometric skipping with thinning (no dense feature: 0.1 < 2).
  for (const double dense_min_prob : {0.0, 2.0}) {
    SCOPED_TRACE(dense_min_prob);
    synth::SamplerOptions options;
    options.dense_min_prob = dense_min_prob;
    ASSERT_EQ(synth::FeatureSampler(m, 3, options).dense_count(), dense_min_prob == 0.0 ? 3 : 0);
    const int64_t rows = 400000;
    const FiredFeatures fired = sample_fired(m, rows, 3, nullptr, options);
    int64_t n[3] = {0, 0, 0}, n01 = 0, n02 = 0;
    for (int64_t r = 0; r < rows; ++r) {
      bool on[3] = {false, false, false};
      for (int64_t e = fired.offsets[r]; e < fired.offsets[r + 1]; ++e) on[fired.ids[e]] = true;
      for (int f = 0; f < 3; ++f) n[f] += on[f];
      n01 += on[0] && on[1];
      n02 += on[0] && on[2];
    }
    const double sd = std::sqrt(0.1 * 0.9 / rows);
    for (int f = 0; f < 3; ++f) EXPECT_NEAR(static_cast<double>(n[f]) / rows, 0.1, 5 * sd);
    // Analytic: E[m_a m_b] = e^{s^2} for aligned loadings, e^{-s^2} for opposite: P(both) = p^2 e^{+-s^2}.
    const double both = 0.01 * std::exp(0.25), anti = 0.01 * std::exp(-0.25);
    EXPECT_NEAR(static_cast<double>(n01) / rows, both, 5 * std::sqrt(both / rows));
    EXPECT_NEAR(static_cast<double>(n02) / rows, anti, 5 * std::sqrt(anti / rows));
  }
}

TEST(FeatureModel, DenseAndSkippingPathsGiveTheMarginals) {
  // synth-lite (correlation rank 8, s = 0.3) with every base feature on one path, then on the other,
  // then the default split: each feature's firing rate against its marginal. Clipping of
  // min(1, p m(z)) moves the most frequent feature's rate by about 1e-4, under one standard deviation.
  const FeatureModel m = synth::make_preset("synth-lite", 2);
  const int64_t rows = 60000;
  for (const double dense_min_prob : {0.0, 2.0, synth::SamplerOptions{}.dense_min_prob}) {
    SCOPED_TRACE(dense_min_prob);
    synth::SamplerOptions options;
    options.dense_min_prob = dense_min_prob;
    const FiredFeatures fired = sample_fired(m, rows, 11, nullptr, options);
    std::vector<int64_t> count(m.n_features(), 0);
    for (int32_t f : fired.ids) count[f] += 1;
    for (int64_t f = 0; f < m.n_features(); ++f) {
      const double p = m.marginal[f], sd = std::sqrt(p * (1 - p) / rows);
      ASSERT_NEAR(static_cast<double>(count[f]) / rows, p, 5 * sd + 1e-4) << "feature " << f;
    }
  }
}

TEST(FeatureModel, RowIsBiasPlusPositiveMultiplesOfTheFiredDirections) {
  // d = 100: three blocks of 32 coordinates and a tail of 4 in the sampler's sum. Least squares of
  // x - bias on the fired directions must leave no residual, with every coefficient >= 0.05.
  synth::HierarchicalConfig c;
  c.d = 100;
  c.n_features = 60;
  c.n_roots = 4;
  c.branching = 2;
  c.depth = 2;
  c.p_max = 0.5;
  c.p_min = 0.02;
  c.corr_rank = 3;
  c.seed = 4;
  const FeatureModel m = synth::make_hierarchical(c);
  const int64_t rows = 300, d = m.d;
  std::vector<float> x;
  const FiredFeatures fired = sample_fired(m, rows, 1, &x);
  const float* dirs = m.directions.ptr();
  int64_t checked = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = fired.offsets[r], n = fired.offsets[r + 1] - b;
    std::vector<double> y(d);
    for (int64_t j = 0; j < d; ++j) y[j] = x[r * d + j] - m.bias.ptr()[j];
    // Normal equations G a = V^T y, solved by Gaussian elimination (n is small, G well conditioned).
    std::vector<double> G(n * n), rhs(n), a(n);
    for (int64_t i = 0; i < n; ++i) {
      const float* vi = dirs + fired.ids[b + i] * d;
      for (int64_t k = 0; k < n; ++k) {
        const float* vk = dirs + fired.ids[b + k] * d;
        for (int64_t j = 0; j < d; ++j) G[i * n + k] += static_cast<double>(vi[j]) * vk[j];
      }
      for (int64_t j = 0; j < d; ++j) rhs[i] += vi[j] * y[j];
    }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = i + 1; k < n; ++k) {
        const double f = G[k * n + i] / G[i * n + i];
        for (int64_t l = i; l < n; ++l) G[k * n + l] -= f * G[i * n + l];
        rhs[k] -= f * rhs[i];
      }
    for (int64_t i = n - 1; i >= 0; --i) {
      double v = rhs[i];
      for (int64_t l = i + 1; l < n; ++l) v -= G[i * n + l] * a[l];
      a[i] = v / G[i * n + i];
    }
    double res2 = 0, y2 = 0;
    for (int64_t j = 0; j < d; ++j) {
      double e = y[j];
      for (int64_t i = 0; i < n; ++i) e -= a[i] * dirs[fired.ids[b + i] * d + j];
      res2 += e * e;
      y2 += y[j] * y[j];
    }
    ASSERT_LE(std::sqrt(res2), 1e-4 * (1 + std::sqrt(y2))) << "row " << r;
    for (int64_t i = 0; i < n; ++i) ASSERT_GE(a[i], 0.05 - 1e-3) << "row " << r << " feature " << fired.ids[b + i];
    checked += n;
  }
  EXPECT_GT(checked, rows);  // rows carry more than one feature on average
}

TEST(FeatureModel, BadConfigsAreUsageErrors) {
  synth::HierarchicalConfig c;
  c.n_features = 100;  // 128 roots alone do not fit
  EXPECT_THROW(synth::make_hierarchical(c), Error);
  EXPECT_THROW(synth::make_preset("nope", 0), Error);
  synth::HierarchicalConfig c2;
  c2.p_min = 0.5;
  c2.p_max = 0.4;
  EXPECT_THROW(synth::make_hierarchical(c2), Error);
}

// ---- metrics on hand-computed cases

kernels::SparseCodes codes(int64_t D, const std::vector<std::vector<int32_t>>& rows) {
  kernels::SparseCodes z;
  z.rows = static_cast<int64_t>(rows.size());
  z.cols = D;
  z.row_ptr = {0};
  for (const auto& r : rows) {
    for (int32_t id : r) {
      z.ids.push_back(id);
      z.vals.push_back(1.0f);
    }
    z.row_ptr.push_back(static_cast<int64_t>(z.ids.size()));
  }
  return z;
}
FiredFeatures fired_of(const std::vector<std::vector<int32_t>>& rows) {
  FiredFeatures f;
  for (const auto& r : rows) {
    f.ids.insert(f.ids.end(), r.begin(), r.end());
    f.offsets.push_back(static_cast<int64_t>(f.ids.size()));
  }
  return f;
}

TEST(GtMetrics, FiringConfusionByHand) {
  // 5 rows. Latent 0 tracks feature 0 with one miss and one false alarm; latent 1 never fires.
  const auto z = codes(2, {{0}, {0}, {}, {0}, {}});
  const auto f = fired_of({{0}, {0, 1}, {0}, {1}, {}});
  const auto c = eval::firing_confusion(z, f, {0, 1, 0}, {0, 1, 1}, 2);
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(c[0].tp, 2);  // rows 0, 1
  EXPECT_EQ(c[0].fp, 1);  // row 3
  EXPECT_EQ(c[0].fn, 1);  // row 2
  EXPECT_DOUBLE_EQ(c[0].f1(), 4.0 / 6.0);
  EXPECT_DOUBLE_EQ(c[0].precision(), 2.0 / 3.0);
  EXPECT_EQ(c[1].tp, 0);
  EXPECT_EQ(c[1].fn, 2);  // feature 1 in rows 1, 3
  EXPECT_DOUBLE_EQ(c[1].f1(), 0.0);
  // Latent 0 against feature 1: the latent fires in rows 0, 1, 3, the feature in rows 1, 3.
  EXPECT_EQ(c[2].tp, 2);
  EXPECT_EQ(c[2].fp, 1);
  EXPECT_EQ(c[2].fn, 0);
}

TEST(GtMetrics, Uniqueness) {
  EXPECT_DOUBLE_EQ(eval::uniqueness({0, 0, 1, 2}), 0.75);
  EXPECT_DOUBLE_EQ(eval::uniqueness({5}), 1.0);
  EXPECT_DOUBLE_EQ(eval::uniqueness({}), 1.0);
}

// An SAE whose latents are the true features (encoder = decoder = directions), except that
// `absorbing_parent` (if >= 0) has the directions of its children subtracted from its encoder row, so it
// goes silent exactly when a child fires. Latent order = feature order, shifted by `shift` (cyclic).
SaeParams oracle_sae(const FeatureModel& m, int absorbing_parent, int64_t shift) {
  const int64_t N = m.n_features(), d = m.d;
  SaeParams p = SaeParams::zeros(d, N);
  for (int64_t f = 0; f < N; ++f) {
    const int64_t l = (f + shift) % N;
    for (int64_t j = 0; j < d; ++j) {
      float enc = m.directions.ptr()[f * d + j];
      if (f == absorbing_parent)
        for (int32_t c = 0; c < m.n_children[f]; ++c) enc -= m.directions.ptr()[(m.first_child[f] + c) * d + j];
      p.W_enc_t.ptr()[l * d + j] = enc;
      p.W_dec.ptr()[l * d + j] = m.directions.ptr()[f * d + j];
    }
  }
  p.threshold = 0.5f;
  return p;
}

// The SAE config of an oracle: one latent per true feature, k = 1.
SaeConfig one_latent_per_feature(const FeatureModel& m, Arch arch) {
  SaeConfig cfg;
  cfg.arch = arch;
  cfg.d_in = m.d;
  cfg.d_sae = m.n_features();
  cfg.k = 1;
  cfg.finalize();
  return cfg;
}

TEST(GtMetrics, OracleSaeScoresPerfectly) {
  FeatureModel m = synth::make_preset("absorption", 0);
  std::fill(m.mag_std.begin(), m.mag_std.end(), 0.0f);  // magnitudes exactly 1
  std::vector<float> x;
  const FiredFeatures fired = sample_fired(m, 20000, 1, &x);
  const SaeConfig cfg = one_latent_per_feature(m, Arch::matryoshka);  // groups 1,1,2,4,8
  const SaeParams p = oracle_sae(m, -1, 0);
  const eval::GtReport r = eval::score_ground_truth(cfg, p, m, x.data(), fired);
  EXPECT_NEAR(r.mcc, 1.0, 1e-5);
  EXPECT_NEAR(r.mean_max_cosine, 1.0, 1e-5);
  EXPECT_DOUBLE_EQ(r.f1, 1.0);
  EXPECT_DOUBLE_EQ(r.uniqueness, 1.0);
  EXPECT_DOUBLE_EQ(r.splitting, 0.0);
  EXPECT_DOUBLE_EQ(r.absorption_rate, 0.0);
  EXPECT_EQ(r.alive_latents, 16);
  EXPECT_EQ(r.roots_prefix, 1);
  EXPECT_DOUBLE_EQ(r.roots_in_first_prefix, 1.0);
  // Shifting the latents moves the parent out of the first prefix.
  const eval::GtReport s = eval::score_ground_truth(cfg, oracle_sae(m, -1, 5), m, x.data(), fired);
  EXPECT_DOUBLE_EQ(s.roots_in_first_prefix, 0.0);
  EXPECT_DOUBLE_EQ(s.f1, 1.0);
  EXPECT_EQ(s.feature_group[0], 3);  // latent 5 is in group 4 ([4, 8))
}

// Dead latents: our F1 and uniqueness average over the latents that fire; the SynthSAEBench (SAELens)
// forms average over all D, a dead latent adding F1 0 and its best feature to the distinct count.
TEST(GtMetrics, DeadLatentsInBothDefinitions) {
  FeatureModel m = synth::make_preset("absorption", 0);
  std::fill(m.mag_std.begin(), m.mag_std.end(), 0.0f);
  std::vector<float> x;
  const FiredFeatures fired = sample_fired(m, 20000, 1, &x);
  const SaeConfig cfg = one_latent_per_feature(m, Arch::batchtopk);
  SaeParams p = oracle_sae(m, -1, 0);
  // Latents 14 and 15 never fire (zero encoder rows); latent 15's decoder row copies feature 0.
  for (int64_t j = 0; j < m.d; ++j) {
    p.W_enc_t.ptr()[14 * m.d + j] = 0.0f;
    p.W_enc_t.ptr()[15 * m.d + j] = 0.0f;
    p.W_dec.ptr()[15 * m.d + j] = m.directions.ptr()[j];
  }
  const eval::GtReport r = eval::score_ground_truth(cfg, p, m, x.data(), fired);
  EXPECT_EQ(r.alive_latents, 14);
  EXPECT_DOUBLE_EQ(r.f1, 1.0);
  EXPECT_DOUBLE_EQ(r.uniqueness, 1.0);
  EXPECT_DOUBLE_EQ(r.f1_all_latents, 14.0 / 16.0);
  EXPECT_DOUBLE_EQ(r.uniqueness_all_latents, 15.0 / 16.0);
  const eval::GtReport full = eval::score_ground_truth(cfg, oracle_sae(m, -1, 0), m, x.data(), fired);
  EXPECT_DOUBLE_EQ(full.f1_all_latents, full.f1);  // no dead latent: the two definitions agree
  EXPECT_DOUBLE_EQ(full.uniqueness_all_latents, full.uniqueness);
}

TEST(GtMetrics, AbsorbingParentByHand) {
  FeatureModel m = synth::make_preset("absorption", 2);
  std::fill(m.mag_std.begin(), m.mag_std.end(), 0.0f);
  std::vector<float> x;
  const int64_t rows = 20000;
  const FiredFeatures fired = sample_fired(m, rows, 4, &x);
  // Hand count: rows with the parent alone (its latent fires) and with a child (it is silent).
  int64_t alone = 0, with_child = 0;
  for (int64_t r = 0; r < rows; ++r) {
    bool parent = false, child = false;
    for (int64_t e = fired.offsets[r]; e < fired.offsets[r + 1]; ++e) {
      parent |= fired.ids[e] == 0;
      child |= fired.ids[e] >= 1 && fired.ids[e] <= 4;
    }
    alone += parent && !child;
    with_child += child;
  }
  ASSERT_GT(alone, 0);
  ASSERT_GT(with_child, 0);
  const SaeConfig cfg = one_latent_per_feature(m, Arch::batchtopk);
  const eval::GtReport r = eval::score_ground_truth(cfg, oracle_sae(m, 0, 0), m, x.data(), fired);
  ASSERT_EQ(r.absorption.size(), 1u);
  EXPECT_EQ(r.absorption[0].pairs, 4);
  EXPECT_EQ(r.absorption[0].child_rows, with_child);
  EXPECT_EQ(r.absorption[0].silent, with_child);
  EXPECT_DOUBLE_EQ(r.absorption_rate, 1.0);
  // The parent's latent: tp = alone, fn = with_child, fp = 0.
  const double f1_parent = 2.0 * alone / (2.0 * alone + with_child);
  EXPECT_DOUBLE_EQ(r.latent_f1[0], f1_parent);
  EXPECT_DOUBLE_EQ(r.feature_f1[0], f1_parent);
  EXPECT_NEAR(r.f1, (15.0 + f1_parent) / 16.0, 1e-12);
  EXPECT_NEAR(r.mcc, 1.0, 1e-5);  // the decoder is still exact
}

TEST(GtMetrics, MccDividesByTheSmallerSide) {
  // D = 16 < N = 20: the decoder holds features 0..15 exactly (negated), so every matched pair has |cos| 1.
  FeatureModel m = synth::make_preset("tree", 0);
  std::vector<float> x;
  const FiredFeatures fired = sample_fired(m, 2000, 1, &x);
  SaeConfig cfg;
  cfg.arch = Arch::batchtopk;
  cfg.d_in = m.d;
  cfg.d_sae = 16;
  cfg.k = 1;
  cfg.finalize();
  SaeParams p = SaeParams::zeros(m.d, 16);
  for (int64_t l = 0; l < 16; ++l)
    for (int64_t j = 0; j < m.d; ++j) {
      p.W_dec.ptr()[l * m.d + j] = -m.directions.ptr()[l * m.d + j];  // sign does not matter for MCC
      p.W_enc_t.ptr()[l * m.d + j] = m.directions.ptr()[l * m.d + j];
    }
  const eval::GtReport r = eval::score_ground_truth(cfg, p, m, x.data(), fired);
  EXPECT_NEAR(r.mcc, 1.0, 1e-5);
  // Mean max (signed) cosine: 16 features at -1 have max 0 (orthogonal rows exist), 4 at 0: mean 0.
  EXPECT_NEAR(r.mean_max_cosine, 0.0, 1e-5);
}

TEST(GtMetrics, SplittingCountsFeaturesClaimedTwice) {
  FeatureModel m = synth::make_preset("tree", 1);
  std::fill(m.mag_std.begin(), m.mag_std.end(), 0.0f);
  std::vector<float> x;
  const FiredFeatures fired = sample_fired(m, 5000, 2, &x);
  const SaeConfig cfg = one_latent_per_feature(m, Arch::batchtopk);
  SaeParams p = oracle_sae(m, -1, 0);
  // Latent 19 (feature 19) becomes a second copy of feature 12: feature 12 is split, 19 is lost.
  for (int64_t j = 0; j < m.d; ++j) {
    p.W_dec.ptr()[19 * m.d + j] = m.directions.ptr()[12 * m.d + j];
    p.W_enc_t.ptr()[19 * m.d + j] = m.directions.ptr()[12 * m.d + j];
  }
  const eval::GtReport r = eval::score_ground_truth(cfg, p, m, x.data(), fired);
  EXPECT_DOUBLE_EQ(r.splitting, 1.0 / 19.0);
  EXPECT_DOUBLE_EQ(r.uniqueness, 19.0 / 20.0);
  EXPECT_NEAR(r.mcc, 19.0 / 20.0, 1e-5);
}

TEST(MetaSae, ExplainsRepeatedDirectionsAndNotNoise) {
  // 64 decoder rows that are 16 directions repeated: a 16-wide meta-SAE explains nearly all of it.
  const int64_t D = 64, d = 32;
  Rng rng(3);
  std::vector<float> W(D * d), noise(D * d);
  std::vector<float> base(16 * d);
  for (auto& v : base) v = static_cast<float>(rng.normal() / std::sqrt(static_cast<double>(d)));
  for (int64_t i = 0; i < D; ++i)
    for (int64_t j = 0; j < d; ++j) W[i * d + j] = base[(i % 16) * d + j];
  for (auto& v : noise) v = static_cast<float>(rng.normal() / std::sqrt(static_cast<double>(d)));
  run::MetaSaeOptions o;
  o.steps = 400;
  o.lr = 1e-2f;  // a toy of 64 rows: the default 3e-4 would need thousands of steps
  o.batch = 64;
  o.k = 1;
  const auto good = run::meta_sae(W.data(), D, d, o);
  const auto bad = run::meta_sae(noise.data(), D, d, o);
  EXPECT_EQ(good.width, 16);
  EXPECT_GT(good.explained_variance, 0.9);
  EXPECT_LT(bad.explained_variance, good.explained_variance - 0.3);
  EXPECT_THROW(run::meta_sae(W.data(), 32, d, o), Error);  // width 8 < 16
}

// ---- report writer

TEST(Report, SvgAndHtml) {
  report::LinePlot lp{"t<1>", "x", "y", {{"a&b", {1, 2, 3}, {1, 4, 9}}, {"c", {1, 2}, {2, NAN}}}, false, false, true};
  const std::string svg = report::line_svg(lp);
  EXPECT_NE(svg.find("t&lt;1&gt;"), std::string::npos);
  EXPECT_NE(svg.find("a&amp;b"), std::string::npos);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  size_t circles = 0;
  for (size_t pos = 0; (pos = svg.find("<circle", pos)) != std::string::npos; ++pos) ++circles;
  EXPECT_EQ(circles, 4u);  // 3 + 1 finite points
  report::Histogram h{"h", "v", {{"s", {}, {0.05, 0.15, 0.15, 0.95}}}, 10, 0, 1, false};
  const std::string hs = report::histogram_svg(h);
  size_t rects = 0;
  for (size_t pos = 0; (pos = hs.find("fill-opacity", pos)) != std::string::npos; ++pos) ++rects;
  EXPECT_EQ(rects, 10u);
  report::BarChart bc{"b", "y", {"x1", "x2"}, {{"s", {}, {1, 2}}}};
  EXPECT_NE(report::bar_svg(bc).find("x2"), std::string::npos);
  report::Page page("P");
  page.heading("H");
  page.paragraph("a < b");
  page.raw(svg);
  page.raw(report::table_html({"h"}, {{"<td>"}}));
  const std::string html = page.html();
  EXPECT_NE(html.find("a &lt; b"), std::string::npos);
  EXPECT_NE(html.find("&lt;td&gt;"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);  // self-contained
  EXPECT_NE(html.find("<svg"), std::string::npos);
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

// The labelled tick values of an SVG: the text of every <text ...>V</text> that parses as a number.
std::vector<double> tick_labels(const std::string& svg, const char* anchor) {
  std::vector<double> out;
  const std::string key = std::string("text-anchor=\"") + anchor + "\">";
  for (size_t p = svg.find(key); p != std::string::npos; p = svg.find(key, p + 1)) {
    const size_t b = p + key.size(), e = svg.find("</text>", b);
    const std::string t = svg.substr(b, e - b);
    char* end = nullptr;
    const double v = std::strtod(t.c_str(), &end);
    if (!t.empty() && end == t.c_str() + t.size()) out.push_back(v);
  }
  return out;
}

// Nice values: 1, 2 or 5 times a power of ten, or (linear axes, a log axis's fallback) multiples of such a step;
// at least 4 on every axis, covering spans from a factor of 1.2 to 7 decades.
TEST(Report, NiceTicks) {
  auto mantissa_125 = [](double v) {
    if (v == 0) return true;
    const double m = std::fabs(v) / std::pow(10.0, std::floor(std::log10(std::fabs(v)) + 1e-12));
    return std::fabs(m - 1) < 1e-9 || std::fabs(m - 2) < 1e-9 || std::fabs(m - 5) < 1e-9;
  };
  // Every value 1, 2 or 5 times a power of ten, or every value a multiple k * step of one such step.
  auto nice = [&](const std::vector<double>& t) {
    if (std::all_of(t.begin(), t.end(), mantissa_125)) return true;
    if (t.size() < 2) return false;
    const double step = t[1] - t[0];
    if (!mantissa_125(step)) return false;
    for (size_t i = 0; i < t.size(); ++i)
      if (std::fabs(t[i] / step - std::round(t[i] / step)) > 1e-6 ||
          (i > 0 && std::fabs(t[i] - t[i - 1] - step) > 1e-9 * std::fabs(step) * 10))
        return false;
    return true;
  };
  const std::pair<double, double> linear[] = {{0, 1.04}, {0, 1.56}, {-0.3, 0.7}, {0.12, 0.31}, {1000, 1210}, {0, 7}};
  for (const auto& [lo, hi] : linear) {
    const auto t = report::nice_ticks(lo, hi, false);
    EXPECT_GE(t.size(), 4u) << lo << " " << hi;
    EXPECT_LE(t.size(), 11u) << lo << " " << hi;
    EXPECT_TRUE(nice(t)) << ::testing::PrintToString(t);
    for (double v : t) {
      EXPECT_GE(v, lo - 1e-9);
      EXPECT_LE(v, hi + 1e-9);
    }
  }
  EXPECT_EQ(report::nice_ticks(0, 1.04, false), (std::vector<double>{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}));
  const std::pair<double, double> logs[] = {{0.05, 0.3}, {4, 20}, {128, 4096}, {0.011, 0.15}, {1e-3, 1e4}, {0.2, 0.25}};
  for (const auto& [lo, hi] : logs) {
    const auto t = report::nice_ticks(lo, hi, true);
    EXPECT_GE(t.size(), 4u) << lo << " " << hi;
    EXPECT_LE(t.size(), 12u) << lo << " " << hi;
    EXPECT_TRUE(nice(t)) << ::testing::PrintToString(t);
    for (double v : t) {
      EXPECT_GE(v, lo * (1 - 1e-9));
      EXPECT_LE(v, hi * (1 + 1e-9));
    }
  }
  EXPECT_EQ(report::nice_ticks(128, 4096, true), (std::vector<double>{200, 500, 1000, 2000}));
  EXPECT_EQ(report::nice_ticks(4, 20, true), (std::vector<double>{5, 10, 15, 20}));
}

// Hand-made points, including ties: dominated means another point is at least as low on both and lower on one.
TEST(Report, ParetoFrontier) {
  using V = std::vector<double>;
  using B = std::vector<bool>;
  EXPECT_EQ(report::pareto_frontier({}, {}), B{});
  EXPECT_EQ(report::pareto_frontier({5}, {0.3}), B{true});
  // A staircase and points above it: (2, 0.5) (4, 0.2) (8, 0.1) are the frontier; (4, 0.4) and (9, 0.2) are not.
  EXPECT_EQ(report::pareto_frontier(V{4, 2, 8, 4, 9}, V{0.4, 0.5, 0.1, 0.2, 0.2}), (B{false, true, true, true, false}));
  // Ties: two equal points are both on it; the same L0 with a higher FVU is not, nor the same FVU with a higher L0.
  EXPECT_EQ(report::pareto_frontier(V{3, 3, 3, 5}, V{0.2, 0.2, 0.3, 0.2}), (B{true, true, false, false}));
  // One point best on both dominates all others.
  EXPECT_EQ(report::pareto_frontier(V{1, 2, 3}, V{0.1, 0.2, 0.05}), (B{true, false, true}));
  EXPECT_EQ(report::pareto_frontier(V{1, 2, 3}, V{0.1, 0.2, 0.3}), (B{true, false, false}));
  // Non-finite points are never on it and dominate nothing.
  EXPECT_EQ(report::pareto_frontier(V{NAN, 2, 1, 0}, V{0.0, 0.2, INFINITY, 0.5}), (B{false, true, false, true}));
}

// synth-bench's FVU-per-prefix plot: one marker per seed and prefix, whiskers only with several seeds, a
// reference line for an arch without prefixes, at least 4 labelled ticks on each axis.
TEST(Report, PrefixFvuPlot) {
  const std::vector<double> widths = {16, 32, 64, 128};
  std::vector<report::PrefixCurve> runs;
  for (int seed = 0; seed < 3; ++seed) {
    runs.push_back({"matryoshka", std::to_string(seed), widths,
                    {0.5 + 0.01 * seed, 0.3 + 0.01 * seed, 0.2 + 0.01 * seed, 0.1 - 0.01 * seed}});
    runs.push_back({"batchtopk", std::to_string(seed), {128}, {0.12 + 0.01 * seed}});
  }
  const std::string all = report::prefix_fvu_svg("FVU", runs, {"matryoshka", "batchtopk"});
  for (int seed = 0; seed < 3; ++seed)
    EXPECT_EQ(count(all, "<title>matryoshka seed " + std::to_string(seed) + ":"), 4u) << seed;  // one per prefix
  EXPECT_EQ(count(all, "<title>batchtopk seed"), 0u);
  EXPECT_EQ(count(all, "class=\"errorbar\""), 4u);  // the mean's whiskers, one per prefix width
  EXPECT_EQ(count(all, "<title>matryoshka mean ± std:"), 4u);
  EXPECT_EQ(count(all, "class=\"refline\""), 1u);
  EXPECT_EQ(count(all, "class=\"refband\""), 1u);  // ± std over the 3 seeds
  EXPECT_NE(all.find("<title>batchtopk 0.13 ± 0.01</title>"), std::string::npos) << all;
  EXPECT_GE(tick_labels(all, "end").size(), 4u) << all;     // y axis
  EXPECT_GE(tick_labels(all, "middle").size(), 4u) << all;  // x axis
  EXPECT_EQ(all.find("<script"), std::string::npos);

  // One seed: no whiskers, no band, no "±"; the reference line stays.
  const std::vector<report::PrefixCurve> one = {runs[0], runs[1]};
  const std::string svg1 = report::prefix_fvu_svg("FVU", one, {"matryoshka", "batchtopk"});
  EXPECT_EQ(count(svg1, "<title>matryoshka seed 0:"), 4u);
  EXPECT_EQ(count(svg1, "class=\"errorbar\""), 0u);
  EXPECT_EQ(count(svg1, "class=\"refline\""), 1u);
  EXPECT_EQ(count(svg1, "class=\"refband\""), 0u);
  EXPECT_EQ(svg1.find("±"), std::string::npos) << svg1;
  EXPECT_NE(svg1.find("batchtopk 0.12"), std::string::npos);
  // Without BatchTopK: no reference line.
  const std::string m_only = report::prefix_fvu_svg("FVU", {runs[0], runs[2]}, {"matryoshka"});
  EXPECT_EQ(count(m_only, "class=\"refline\""), 0u);
  EXPECT_EQ(count(m_only, "<circle"), 8u + 4u);  // 2 seeds x 4 prefixes, and the mean's 4
  EXPECT_EQ(count(m_only, "class=\"errorbar\""), 4u);
}

// sweep's L0-vs-FVU plot: every run a marker, the frontier a line through exactly its points.
TEST(Report, FrontierPlot) {
  const std::vector<report::Series> groups = {{"#1", {8, 8}, {0.3, 0.32}}, {"#2", {16, 16}, {0.2, 0.25}},
                                              {"#3", {32}, {0.22}}};
  const std::string svg = report::frontier_svg("f", "L0", "FVU", groups);
  EXPECT_EQ(count(svg, "<circle"), 5u);
  EXPECT_EQ(count(svg, "<title>#1:"), 2u);
  ASSERT_EQ(count(svg, "class=\"frontier\""), 1u);
  const size_t p = svg.find("class=\"frontier\""), b = svg.find("points=\"", p) + 8, e = svg.find('"', b);
  EXPECT_EQ(count(svg.substr(b, e - b), ","), 2u) << svg;  // (8, 0.3) and (16, 0.2)
  EXPECT_GE(tick_labels(svg, "end").size(), 4u) << svg;
  EXPECT_GE(tick_labels(svg, "middle").size(), 4u) << svg;
}

// The dead-latent curves of a preset run (PresetRun::curve_dead, curve_silent): one point per logging
// point; "silent" counts latents with no firing in the interval since the previous point, "dead" those
// with none in the AuxK window. Equal when both are one batch; nested when one window holds the other.
TEST(PresetRun, DeadLatentCurves) {
  const FeatureModel m = synth::make_preset("tree", 0);
  const run::PresetEvalRows held_out = run::preset_eval_rows(m, 0, 512);
  auto train = [&](int64_t steps, int64_t dead_after) {
    run::Options o;
    o.set("arch", "batchtopk");
    o.set("dead_after_batches", dead_after);
    const train::TrainOptions opt = run::make_train_options(o, m.d, {64, 1, 64, steps});
    return run::train_on_preset(m, opt, held_out, run::PresetRunOptions{});
  };
  const run::PresetRun one = train(40, 1);  // log every step
  ASSERT_EQ(one.curve_step.size(), 40u);
  ASSERT_EQ(one.curve_dead.size(), 40u);
  ASSERT_EQ(one.curve_silent.size(), 40u);
  EXPECT_EQ(one.curve_dead, one.curve_silent);
  double most = 0;
  for (double v : one.curve_dead) {
    EXPECT_GE(v, 0.0);
    EXPECT_LE(v, 1.0);
    most = std::max(most, v);
    EXPECT_EQ(std::round(v * 64), v * 64);  // a count of the 64 latents
  }
  EXPECT_GT(most, 0.1);  // 64 latents, one kept per row on average: many silent in a batch of 64 rows
  for (const int64_t dead_after : {2, 5}) {  // logging every 3 steps (300 / 100)
    SCOPED_TRACE(dead_after);
    const run::PresetRun r = train(300, dead_after);
    ASSERT_EQ(r.curve_dead.size(), 100u);
    ASSERT_EQ(r.curve_silent.size(), 100u);
    for (size_t i = 0; i < 100; ++i) {
      if (dead_after < 3) {
        EXPECT_LE(r.curve_silent[i], r.curve_dead[i]) << i;
      } else {
        EXPECT_LE(r.curve_dead[i], r.curve_silent[i]) << i;
      }
    }
    const nlohmann::json j = run::preset_run_json(r, run::make_train_options(run::Options{}, m.d, {64, 1, 64, 300}), false);
    EXPECT_EQ(j.at("train").at("curve_silent").size(), 100u);
    EXPECT_EQ(j.at("train").at("curve_dead").size(), 100u);
  }
}

}  // namespace
}  // namespace msae
