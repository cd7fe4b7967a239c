// Tests for the planted-dictionary generator (msae/synth.h) and the recovery metrics (msae/recovery.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "msae/recovery.h"
#include "msae/synth.h"

using msae::Tensor;
using msae::eval::cosine_matrix;
using msae::eval::hungarian_min_cost;
using msae::eval::score_recovery;
using msae::synth::default_planted_config;
using msae::synth::make_planted;
using msae::synth::PlantedConfig;
using msae::synth::PlantedDictionary;
using msae::synth::PlantedSampler;

namespace {

using Active = std::vector<std::vector<int32_t>>;

double dot_rows(const float* a, const float* b, int64_t d) {
  double s = 0.0;
  for (int64_t j = 0; j < d; ++j) s += static_cast<double>(a[j]) * b[j];
  return s;
}

// |count - n p| must be within z binomial standard deviations.
void expect_binomial(int64_t count, int64_t n, double p, double z, const std::string& what) {
  const double mean = static_cast<double>(n) * p;
  const double sd = std::sqrt(static_cast<double>(n) * p * (1.0 - p));
  EXPECT_LE(std::fabs(static_cast<double>(count) - mean), z * sd + 1e-9)
      << what << ": count " << count << " of " << n << ", expected " << mean << " +- " << sd;
}

void expect_usage_error(const PlantedConfig& cfg, const std::string& what) {
  try {
    (void)make_planted(cfg);
    ADD_FAILURE() << what << ": no error";
  } catch (const msae::Error& e) {
    EXPECT_EQ(e.kind(), msae::ErrorKind::usage) << what;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Dictionary construction
// ---------------------------------------------------------------------------------------------
TEST(Planted, DirectionsUnitNormAndLayout) {
  const PlantedConfig cfg = default_planted_config();
  EXPECT_EQ(cfg.d, 64);
  EXPECT_EQ(cfg.seed, 0u);
  const PlantedDictionary dict = make_planted(cfg);
  const int64_t R = cfg.n_roots, C = cfg.children_per_root, I = cfg.n_independent, d = cfg.d;
  const int64_t N = R * (1 + C) + I;
  ASSERT_EQ(dict.n_features(), N);
  ASSERT_EQ(dict.directions.shape, (std::vector<int64_t>{N, d}));
  ASSERT_EQ(dict.bias.shape, (std::vector<int64_t>{d}));
  ASSERT_EQ(static_cast<int64_t>(dict.fire_prob.size()), N);
  for (int64_t f = 0; f < N; ++f) {
    const float* v = dict.directions.ptr() + f * d;
    EXPECT_NEAR(dot_rows(v, v, d), 1.0, 1e-5) << "feature " << f;
  }
  // Layout: roots, then children grouped by parent, then independents.
  for (int64_t r = 0; r < R; ++r) {
    EXPECT_EQ(dict.parent[static_cast<size_t>(r)], -1);
    for (int64_t j = 0; j < C; ++j) {
      const int64_t f = R + r * C + j;
      EXPECT_EQ(dict.parent[static_cast<size_t>(f)], r);
      const double c = dot_rows(dict.directions.ptr() + f * d, dict.directions.ptr() + r * d, d);
      EXPECT_NEAR(c, cfg.child_parent_cosine, 1e-5) << "child " << f;
      EXPECT_NEAR(dict.fire_prob[static_cast<size_t>(f)], dict.fire_prob[static_cast<size_t>(r)] * 0.7 / 4, 1e-15);
    }
  }
  for (int64_t i = R * (1 + C); i < N; ++i) EXPECT_EQ(dict.parent[static_cast<size_t>(i)], -1);
  // Zipf-like decay from max to min within roots and within independents.
  EXPECT_DOUBLE_EQ(dict.fire_prob[0], 0.10);
  EXPECT_DOUBLE_EQ(dict.fire_prob[static_cast<size_t>(R - 1)], 0.01);
  EXPECT_DOUBLE_EQ(dict.fire_prob[static_cast<size_t>(R * (1 + C))], 0.05);
  EXPECT_DOUBLE_EQ(dict.fire_prob[static_cast<size_t>(N - 1)], 0.005);
  for (int64_t r = 1; r < R; ++r) EXPECT_LT(dict.fire_prob[static_cast<size_t>(r)], dict.fire_prob[static_cast<size_t>(r - 1)]);
  for (int64_t i = R * (1 + C) + 1; i < N; ++i)
    EXPECT_LT(dict.fire_prob[static_cast<size_t>(i)], dict.fire_prob[static_cast<size_t>(i - 1)]);
  // Zipf, not geometric: p_1 / p_0 = 2^-alpha with alpha = ln(10) / ln(32).
  EXPECT_NEAR(dict.fire_prob[1] / dict.fire_prob[0], std::pow(2.0, -std::log(10.0) / std::log(32.0)), 1e-12);
  EXPECT_NEAR(std::sqrt(dot_rows(dict.bias.ptr(), dict.bias.ptr(), d)), 0.5, 1e-6);

  // Independent random directions: no two identical; a different seed gives a different dictionary,
  // the same seed the same one.
  const PlantedDictionary same = make_planted(cfg);
  EXPECT_EQ(same.directions.data, dict.directions.data);
  EXPECT_EQ(same.bias.data, dict.bias.data);
  PlantedConfig other = cfg;
  other.seed = 1;
  EXPECT_NE(make_planted(other).directions.data, dict.directions.data);
  PlantedConfig nobias = cfg;
  nobias.with_bias = false;
  const PlantedDictionary nb = make_planted(nobias);
  EXPECT_EQ(nb.directions.data, dict.directions.data);  // the bias has its own stream
  for (float b : nb.bias.data) EXPECT_EQ(b, 0.0f);
}

TEST(Planted, ValidatesConfig) {
  const PlantedConfig ok = default_planted_config();
  EXPECT_NO_THROW((void)make_planted(ok));
  auto bad = [&](auto mutate, const char* what) {
    PlantedConfig c = ok;
    mutate(c);
    expect_usage_error(c, what);
  };
  bad([](PlantedConfig& c) { c.d = 0; }, "d = 0");
  bad([](PlantedConfig& c) { c.n_roots = -1; }, "n_roots < 0");
  bad([](PlantedConfig& c) { c.children_per_root = -2; }, "children < 0");
  bad([](PlantedConfig& c) { c.n_independent = -1; }, "n_independent < 0");
  bad([](PlantedConfig& c) { c.n_roots = 0; c.n_independent = 0; }, "no features");
  bad([](PlantedConfig& c) { c.root_prob_max = 0.01; c.root_prob_min = 0.1; }, "root min > max");
  bad([](PlantedConfig& c) { c.root_prob_max = 1.5; }, "root max > 1");
  bad([](PlantedConfig& c) { c.indep_prob_min = 0.0; }, "indep min = 0");
  bad([](PlantedConfig& c) { c.indep_prob_max = std::nan(""); }, "indep max NaN");
  bad([](PlantedConfig& c) { c.child_given_parent = 1.1; }, "child_given_parent > 1");
  bad([](PlantedConfig& c) { c.child_parent_cosine = 1.0; }, "child_parent_cosine = 1");
  bad([](PlantedConfig& c) { c.magnitude_mean = 0.0f; }, "magnitude_mean = 0");
  bad([](PlantedConfig& c) { c.magnitude_std = -0.1f; }, "magnitude_std < 0");
  bad([](PlantedConfig& c) { c.noise_std = INFINITY; }, "noise_std inf");
  bad([](PlantedConfig& c) { c.d = 1; }, "children with d = 1");
  // Probabilities of an empty group are not checked.
  PlantedConfig c = ok;
  c.n_roots = 0;
  c.root_prob_max = -3;
  EXPECT_NO_THROW((void)make_planted(c));
}

// ---------------------------------------------------------------------------------------------
// Sampling
// ---------------------------------------------------------------------------------------------
TEST(PlantedSampler, HierarchyHolds) {
  const PlantedConfig cfg = default_planted_config();
  const PlantedDictionary dict = make_planted(cfg);
  PlantedSampler sampler(dict, 7);
  const int64_t n = 100000, d = cfg.d, R = cfg.n_roots, C = cfg.children_per_root;
  std::vector<float> x(static_cast<size_t>(n * d));
  Active active;
  sampler.sample(n, x.data(), &active);
  ASSERT_EQ(static_cast<int64_t>(active.size()), n);
  int64_t parent_fired = 0, child_fired = 0;
  for (int64_t r = 0; r < n; ++r) {
    const auto& ids = active[static_cast<size_t>(r)];
    ASSERT_TRUE(std::is_sorted(ids.begin(), ids.end()));
    ASSERT_TRUE(std::adjacent_find(ids.begin(), ids.end()) == ids.end()) << "duplicate id in row " << r;
    std::vector<int> children_of(static_cast<size_t>(R), 0);
    for (int32_t f : ids) {
      ASSERT_GE(f, 0);
      ASSERT_LT(f, dict.n_features());
      const int64_t p = dict.parent[static_cast<size_t>(f)];
      if (p < 0) {
        if (f < R) ++parent_fired;
        continue;
      }
      ++child_fired;
      ASSERT_TRUE(std::binary_search(ids.begin(), ids.end(), static_cast<int32_t>(p)))
          << "child " << f << " fired without parent " << p << " in row " << r;
      ASSERT_EQ(++children_of[static_cast<size_t>(p)], 1) << "two siblings of root " << p << " in row " << r;
    }
  }
  // P(some child | parent) = child_given_parent.
  expect_binomial(child_fired, parent_fired, cfg.child_given_parent, 5.0, "children given parents");
  EXPECT_GT(C, 0);
}

TEST(PlantedSampler, FiringFrequenciesMatch) {
  const PlantedConfig cfg = default_planted_config();
  const PlantedDictionary dict = make_planted(cfg);
  PlantedSampler sampler(dict, 11);
  const int64_t n = 200000, N = dict.n_features();
  std::vector<float> x(static_cast<size_t>(n * cfg.d));
  Active active;
  sampler.sample(n, x.data(), &active);
  std::vector<int64_t> count(static_cast<size_t>(N), 0);
  for (const auto& ids : active)
    for (int32_t f : ids) ++count[static_cast<size_t>(f)];
  // 5 sigma per feature: with 256 features, a false alarm has probability ~1.5e-4 (and the seed is fixed).
  for (int64_t f = 0; f < N; ++f)
    expect_binomial(count[static_cast<size_t>(f)], n, dict.fire_prob[static_cast<size_t>(f)], 5.0,
                    "feature " + std::to_string(f));
  // Siblings are chosen uniformly: each child's marginal is parent * 0.7 / 4 (checked above); also the
  // rarest root still fires.
  EXPECT_GT(count[static_cast<size_t>(cfg.n_roots - 1)], 0);
}

TEST(PlantedSampler, FlatAndCertainProbabilities) {
  // Equal probabilities across the roots/independents boundary, a root that always fires, and
  // children that always follow: ids stay sorted, and frequencies still match.
  PlantedConfig cfg;
  cfg.d = 16;
  cfg.n_roots = 3;
  cfg.children_per_root = 2;
  cfg.n_independent = 4;
  cfg.root_prob_max = cfg.root_prob_min = 0.3;
  cfg.indep_prob_max = cfg.indep_prob_min = 0.3;
  cfg.child_given_parent = 1.0;
  for (double root_max : {0.3, 1.0}) {
    cfg.root_prob_max = root_max;
    const PlantedDictionary dict = make_planted(cfg);
    PlantedSampler sampler(dict, 8);
    const int64_t n = 50000, N = dict.n_features();
    std::vector<float> x(static_cast<size_t>(n * cfg.d));
    Active active;
    sampler.sample(n, x.data(), &active);
    std::vector<int64_t> count(static_cast<size_t>(N), 0);
    for (const auto& ids : active) {
      ASSERT_TRUE(std::is_sorted(ids.begin(), ids.end()));
      int64_t roots = 0, kids = 0;
      for (int32_t f : ids) {
        ++count[static_cast<size_t>(f)];
        roots += f < cfg.n_roots;
        kids += dict.parent[static_cast<size_t>(f)] >= 0;
      }
      ASSERT_EQ(roots, kids);  // child_given_parent = 1
    }
    if (root_max == 1.0) {
      EXPECT_EQ(count[0], n);
    }
    for (int64_t f = 0; f < N; ++f)
      expect_binomial(count[static_cast<size_t>(f)], n, dict.fire_prob[static_cast<size_t>(f)], 5.0,
                      "feature " + std::to_string(f));
  }
}

TEST(PlantedSampler, MeanActiveMatchesEmpirical) {
  const PlantedConfig cfg = default_planted_config();
  const PlantedDictionary dict = make_planted(cfg);
  PlantedSampler sampler(dict, 3);
  const double expected = std::accumulate(dict.fire_prob.begin(), dict.fire_prob.end(), 0.0);
  EXPECT_NEAR(sampler.mean_active(), expected, 1e-12);
  // Analytic: sum of root probabilities * (1 + child_given_parent) + sum of independent probabilities.
  double roots = 0.0, indep = 0.0, var = 0.0;
  const double c = cfg.child_given_parent;
  for (int64_t f = 0; f < dict.n_features(); ++f) {
    const double p = dict.fire_prob[static_cast<size_t>(f)];
    if (f < cfg.n_roots) {
      roots += p;
      // A root and its children contribute X in {0, 1, 2}: E[X] = p(1+c), E[X^2] = p(1+3c).
      var += p * (1 + 3 * c) - p * p * (1 + c) * (1 + c);
    } else if (dict.parent[static_cast<size_t>(f)] < 0) {
      indep += p;
      var += p * (1 - p);
    }
  }
  EXPECT_NEAR(sampler.mean_active(), roots * (1 + c) + indep, 1e-12);

  const int64_t n = 200000;
  std::vector<float> x(static_cast<size_t>(n * cfg.d));
  Active active;
  sampler.sample(n, x.data(), &active);
  double total = 0.0;
  for (const auto& ids : active) total += static_cast<double>(ids.size());
  const double mean = total / static_cast<double>(n);
  EXPECT_NEAR(mean, sampler.mean_active(), 5.0 * std::sqrt(var / static_cast<double>(n)));
}

TEST(PlantedSampler, RowsAreTheSumOfFiredFeatures) {
  // Without noise, x - bias lies in the span of the fired directions: least squares on those
  // directions leaves no residual, and the fitted magnitudes are >= 0.05.
  PlantedConfig cfg = default_planted_config();
  cfg.noise_std = 0.0f;
  const PlantedDictionary dict = make_planted(cfg);
  PlantedSampler sampler(dict, 5);
  const int64_t n = 2000, d = cfg.d;
  std::vector<float> x(static_cast<size_t>(n * d));
  Active active;
  sampler.sample(n, x.data(), &active);
  int64_t checked = 0;
  for (int64_t r = 0; r < n; ++r) {
    const auto& ids = active[static_cast<size_t>(r)];
    std::vector<double> res(static_cast<size_t>(d));
    for (int64_t j = 0; j < d; ++j) res[static_cast<size_t>(j)] = x[static_cast<size_t>(r * d + j)] - dict.bias.data[static_cast<size_t>(j)];
    if (ids.empty()) {
      for (double v : res) ASSERT_NEAR(v, 0.0, 1e-6);
      continue;
    }
    if (ids.size() != 1) continue;  // single-feature rows: the magnitude is the projection
    const float* v = dict.directions.ptr() + ids[0] * d;
    double a = 0.0;
    for (int64_t j = 0; j < d; ++j) a += res[static_cast<size_t>(j)] * v[j];
    EXPECT_GE(a, 0.05 - 1e-5);
    for (int64_t j = 0; j < d; ++j) ASSERT_NEAR(res[static_cast<size_t>(j)], a * v[j], 1e-5);
    ++checked;
  }
  EXPECT_GT(checked, 100);
}

TEST(PlantedSampler, Determinism) {
  const PlantedDictionary dict = make_planted(default_planted_config());
  const int64_t n = 3000, d = dict.cfg.d;
  auto run = [&](uint64_t seed, Active* act) {
    PlantedSampler s(dict, seed);
    std::vector<float> x(static_cast<size_t>(n * d));
    s.sample(n, x.data(), act);
    return x;
  };
  Active a1, a2, a3;
  const std::vector<float> x1 = run(42, &a1);
  const std::vector<float> x2 = run(42, &a2);
  EXPECT_EQ(x1, x2);
  EXPECT_EQ(a1, a2);
  const std::vector<float> x3 = run(43, &a3);
  EXPECT_NE(x1, x3);
  EXPECT_NE(a1, a3);
  // Asking for the active lists does not change the rows.
  EXPECT_EQ(run(42, nullptr), x1);

  // Independent of the thread count.
  const int threads = msae::num_threads();
  msae::set_num_threads(1);
  const std::vector<float> x1t = run(42, nullptr);
  msae::set_num_threads(3);
  const std::vector<float> x3t = run(42, nullptr);
  msae::set_num_threads(threads);
  EXPECT_EQ(x1t, x1);
  EXPECT_EQ(x3t, x1);

  // Independent of how the stream is split into calls, and resumable from rng_state().
  PlantedSampler s(dict, 42);
  std::vector<float> y(static_cast<size_t>(n * d));
  Active parts, tail;
  s.sample(1, y.data(), &parts);
  s.sample(999, y.data() + d, nullptr);
  EXPECT_EQ(s.position(), 1000);
  const std::vector<uint64_t> state = s.rng_state();
  s.sample(n - 1000, y.data() + 1000 * d, &tail);
  EXPECT_EQ(y, x1);
  EXPECT_EQ(parts[0], a1[0]);
  EXPECT_EQ(tail.back(), a1.back());

  PlantedSampler resumed(dict, 999);  // a different seed: the state overrides it
  resumed.set_rng_state(state);
  std::vector<float> z(static_cast<size_t>((n - 1000) * d));
  resumed.sample(n - 1000, z.data());
  EXPECT_TRUE(std::equal(z.begin(), z.end(), x1.begin() + 1000 * d));
  EXPECT_THROW(resumed.set_rng_state({1, 2, 3}), msae::Error);

  // The stream also depends on the dictionary's seed.
  PlantedConfig other = default_planted_config();
  other.seed = 5;
  const PlantedDictionary dict2 = make_planted(other);
  PlantedSampler s2(dict2, 42);
  Active b;
  std::vector<float> w(static_cast<size_t>(n * d));
  s2.sample(n, w.data(), &b);
  EXPECT_NE(b, a1);

  // n = 0 is a no-op that still clears the active list.
  Active stale{{1, 2}};
  s2.sample(0, nullptr, &stale);
  EXPECT_TRUE(stale.empty());
}

TEST(PlantedSampler, NoiseIsStandardGaussian) {
  // One rare independent feature, so most rows are bias + noise only.
  PlantedConfig cfg;
  cfg.n_roots = 0;
  cfg.n_independent = 1;
  cfg.indep_prob_max = cfg.indep_prob_min = 0.2;
  cfg.noise_std = 0.01f;
  const PlantedDictionary dict = make_planted(cfg);
  PlantedSampler sampler(dict, 1);
  const int64_t n = 40000, d = cfg.d;
  std::vector<float> x(static_cast<size_t>(n * d));
  Active active;
  sampler.sample(n, x.data(), &active);
  std::vector<double> z;
  z.reserve(static_cast<size_t>(n * d));
  for (int64_t r = 0; r < n; ++r) {
    if (!active[static_cast<size_t>(r)].empty()) continue;
    for (int64_t j = 0; j < d; ++j)
      z.push_back((static_cast<double>(x[static_cast<size_t>(r * d + j)]) - dict.bias.data[static_cast<size_t>(j)]) /
                  cfg.noise_std);
  }
  const double m = static_cast<double>(z.size());
  ASSERT_GT(m, 1e6);
  double s1 = 0, s2 = 0, s4 = 0;
  for (double v : z) {
    s1 += v;
    s2 += v * v;
    s4 += v * v * v * v;
  }
  // float rounding of bias + noise perturbs z by ~1e-5: far below these tolerances.
  EXPECT_NEAR(s1 / m, 0.0, 5.0 / std::sqrt(m));
  EXPECT_NEAR(s2 / m, 1.0, 5.0 * std::sqrt(2.0 / m));
  EXPECT_NEAR(s4 / m, 3.0, 5.0 * std::sqrt(96.0 / m));
  // Two-sided tail fractions P(|z| > t) = erfc(t / sqrt 2), including the ziggurat's tail start 3.4426.
  for (double t : {0.1, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.442619855899, 4.0, 4.5}) {
    int64_t c = 0;
    for (double v : z) c += std::fabs(v) > t;
    expect_binomial(c, static_cast<int64_t>(m), std::erfc(t / std::sqrt(2.0)), 5.0, "P(|z| > " + std::to_string(t) + ")");
  }
  int64_t pos = 0, pos_tail = 0, tail = 0;
  for (double v : z) {
    pos += v > 0;
    tail += std::fabs(v) > 3.0;
    pos_tail += v > 3.0;
  }
  expect_binomial(pos, static_cast<int64_t>(m), 0.5, 5.0, "P(z > 0)");
  expect_binomial(pos_tail, tail, 0.5, 5.0, "P(z > 0 | |z| > 3)");
}

TEST(PlantedSampler, MagnitudeDistributionAndClipping) {
  // One feature that always fires, no noise, no bias: each row is a * direction.
  PlantedConfig cfg;
  cfg.n_roots = 0;
  cfg.n_independent = 1;
  cfg.indep_prob_max = cfg.indep_prob_min = 1.0;
  cfg.noise_std = 0.0f;
  cfg.with_bias = false;
  for (float mean : {1.0f, 0.1f}) {
    cfg.magnitude_mean = mean;
    cfg.magnitude_std = 0.15f;
    const PlantedDictionary dict = make_planted(cfg);
    PlantedSampler sampler(dict, 2);
    EXPECT_DOUBLE_EQ(sampler.mean_active(), 1.0);
    const int64_t n = 100000, d = cfg.d;
    std::vector<float> x(static_cast<size_t>(n * d));
    sampler.sample(n, x.data());
    double s1 = 0, s2 = 0, amin = 1e9;
    int64_t clipped = 0;
    for (int64_t r = 0; r < n; ++r) {
      const double a = dot_rows(x.data() + r * d, dict.directions.ptr(), d);
      s1 += a;
      s2 += a * a;
      amin = std::min(amin, a);
      clipped += std::fabs(a - 0.05) < 1e-6;
    }
    const double m1 = s1 / n, var = s2 / n - m1 * m1;
    EXPECT_GE(amin, 0.05 - 1e-6);
    if (mean == 1.0f) {
      EXPECT_NEAR(m1, 1.0, 5.0 * 0.15 / std::sqrt(n));
      EXPECT_NEAR(std::sqrt(var), 0.15, 5.0 * 0.15 / std::sqrt(2.0 * n));
      EXPECT_EQ(clipped, 0);
    } else {
      // P(N(0.1, 0.15) < 0.05) = Phi(-1/3).
      expect_binomial(clipped, n, 0.5 * std::erfc(1.0 / 3.0 / std::sqrt(2.0)), 5.0, "clipped magnitudes");
    }
  }
}

TEST(PlantedSampler, Throughput) {
  const PlantedDictionary dict = make_planted(default_planted_config());
  PlantedSampler sampler(dict, 0);
  const int64_t n = 200000;
  std::vector<float> x(static_cast<size_t>(n * dict.cfg.d));
  msae::Timer t;
  sampler.sample(n, x.data());
  const double s = t.seconds();
  std::printf("[ info ] sampled %lld rows (d=64) in %.3f s: %.2f M rows/s with %d threads\n",
              static_cast<long long>(n), s, static_cast<double>(n) / s / 1e6, msae::num_threads());
}

// ---------------------------------------------------------------------------------------------
// Hungarian algorithm
// ---------------------------------------------------------------------------------------------
namespace {
double total_cost(const std::vector<double>& cost, int64_t cols, const std::vector<int64_t>& a) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += cost[i * static_cast<size_t>(cols) + static_cast<size_t>(a[i])];
  return s;
}

void expect_injective(const std::vector<int64_t>& a, int64_t cols) {
  std::vector<int> used(static_cast<size_t>(cols), 0);
  for (int64_t c : a) {
    ASSERT_GE(c, 0);
    ASSERT_LT(c, cols);
    ASSERT_EQ(++used[static_cast<size_t>(c)], 1) << "column " << c << " assigned twice";
  }
}

// Minimum over all injective maps rows -> cols, by enumerating permutations of the columns (the
// first `rows` entries of each permutation; duplicates of a prefix do not change the minimum).
double brute_force_min(const std::vector<double>& cost, int64_t rows, int64_t cols) {
  std::vector<int64_t> perm(static_cast<size_t>(cols));
  std::iota(perm.begin(), perm.end(), 0);
  double best = INFINITY;
  do {
    double s = 0;
    for (int64_t i = 0; i < rows; ++i) s += cost[static_cast<size_t>(i * cols + perm[static_cast<size_t>(i)])];
    best = std::min(best, s);
  } while (std::next_permutation(perm.begin(), perm.end()));
  return best;
}
}  // namespace

TEST(Hungarian, HandComputedSquare) {
  // Optimum 1 + 2 + 2 = 5 (row 0 -> 1, row 1 -> 0, row 2 -> 2); every other permutation costs >= 6.
  const std::vector<double> cost = {4, 1, 3,  //
                                    2, 0, 5,  //
                                    3, 2, 2};
  EXPECT_EQ(hungarian_min_cost(cost, 3, 3), (std::vector<int64_t>{1, 0, 2}));
}

TEST(Hungarian, BeatsGreedy) {
  // Greedy by row takes (0,0) = 1 and is left with (1,1) = 10: total 11. Optimum: 2 + 1 = 3.
  const std::vector<double> cost = {1, 2,  //
                                    1, 10};
  EXPECT_EQ(hungarian_min_cost(cost, 2, 2), (std::vector<int64_t>{1, 0}));
  // Greedy by smallest entry overall takes (0,0) = 1 too, then (1,2) = 9 (rectangular): total 10. Optimum 3.
  const std::vector<double> rect = {1, 2, 9,  //
                                    1, 9, 9};
  EXPECT_EQ(hungarian_min_cost(rect, 2, 3), (std::vector<int64_t>{1, 0}));
}

TEST(Hungarian, Rectangular) {
  // 1 x m: the cheapest column.
  EXPECT_EQ(hungarian_min_cost({5, 3, 7, 3.5}, 1, 4), (std::vector<int64_t>{1}));
  // 2 x 4 with negative costs: row 0 -> 3, row 1 -> 0 gives -9 - 4 = -13; the runner-up, -1 - 8 = -9.
  const std::vector<double> cost = {-1, -2, -3, -9,  //
                                    -4, -1, -2, -8};
  const std::vector<int64_t> a = hungarian_min_cost(cost, 2, 4);
  EXPECT_EQ(a, (std::vector<int64_t>{3, 0}));
  EXPECT_DOUBLE_EQ(total_cost(cost, 4, a), -13.0);
  // 3 x 5 hand case: the unique optimum uses columns {4, 0, 2}: 1 + 1 + 1 = 3.
  const std::vector<double> c35 = {9, 9, 9, 9, 1,  //
                                   1, 5, 5, 5, 2,  //
                                   5, 5, 1, 5, 1};
  EXPECT_EQ(hungarian_min_cost(c35, 3, 5), (std::vector<int64_t>{4, 0, 2}));
  EXPECT_TRUE(hungarian_min_cost({}, 0, 3).empty());
}

TEST(Hungarian, RejectsBadInput) {
  EXPECT_THROW(hungarian_min_cost({1, 2, 3, 4, 5, 6}, 3, 2), msae::Error);  // rows > cols
  EXPECT_THROW(hungarian_min_cost({1, 2, 3}, 2, 2), msae::Error);           // size mismatch
  EXPECT_THROW(hungarian_min_cost({1, NAN, 3, 4}, 2, 2), msae::Error);
  EXPECT_THROW(hungarian_min_cost({1, INFINITY, 3, 4}, 2, 2), msae::Error);
}

TEST(Hungarian, MatchesBruteForce) {
  msae::Rng rng(123);
  struct Shape {
    int64_t rows, cols;
  };
  for (Shape s : {Shape{6, 6}, Shape{5, 7}, Shape{3, 7}, Shape{1, 5}, Shape{7, 7}}) {
    for (int trial = 0; trial < 30; ++trial) {
      std::vector<double> cost(static_cast<size_t>(s.rows * s.cols));
      // Half the trials use small integers, so ties are common.
      for (double& c : cost) c = trial % 2 ? rng.uniform() * 10 - 3 : static_cast<double>(rng.below(4));
      const std::vector<int64_t> a = hungarian_min_cost(cost, s.rows, s.cols);
      ASSERT_EQ(static_cast<int64_t>(a.size()), s.rows);
      expect_injective(a, s.cols);
      EXPECT_NEAR(total_cost(cost, s.cols, a), brute_force_min(cost, s.rows, s.cols), 1e-9)
          << s.rows << "x" << s.cols << " trial " << trial;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Recovery metrics
// ---------------------------------------------------------------------------------------------
TEST(Recovery, CosineMatrixMatchesNaive) {
  msae::Rng rng(9);
  for (auto [n, m, d] : {std::tuple<int64_t, int64_t, int64_t>{37, 53, 70}, {1, 1, 1}, {4, 130, 16}, {65, 3, 33}}) {
    std::vector<float> A(static_cast<size_t>(n * d)), B(static_cast<size_t>(m * d));
    for (float& v : A) v = static_cast<float>(rng.normal());
    for (float& v : B) v = static_cast<float>(rng.normal()) * 3.0f;
    if (m > 2) std::fill(B.begin() + d, B.begin() + 2 * d, 0.0f);  // a zero row
    std::vector<float> out(static_cast<size_t>(n * m));
    cosine_matrix(A.data(), n, B.data(), m, d, out.data());
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < m; ++j) {
        const float* a = A.data() + i * d;
        const float* b = B.data() + j * d;
        const double na = std::sqrt(dot_rows(a, a, d)), nb = std::sqrt(dot_rows(b, b, d));
        const double want = nb == 0 ? 0.0 : dot_rows(a, b, d) / (na * nb);
        ASSERT_NEAR(out[static_cast<size_t>(i * m + j)], want, 2e-6) << n << "x" << m << "x" << d << " at " << i << "," << j;
      }
    }
  }
}

TEST(Recovery, PerfectDecoderScoresOne) {
  const PlantedDictionary dict = make_planted(default_planted_config());
  const int64_t N = dict.n_features(), d = dict.cfg.d, extra = 20, D = N + extra;
  msae::Rng rng(4);
  std::vector<int64_t> perm(static_cast<size_t>(D));
  std::iota(perm.begin(), perm.end(), 0);
  msae::shuffle_indices(perm, rng);
  // Latent perm[f] = scale * direction f; the remaining latents are random directions.
  std::vector<float> W(static_cast<size_t>(D * d));
  std::vector<bool> used(static_cast<size_t>(D), false);
  for (int64_t f = 0; f < N; ++f) {
    const int64_t l = perm[static_cast<size_t>(f)];
    used[static_cast<size_t>(l)] = true;
    const float scale = rng.uniform(0.2f, 5.0f);
    for (int64_t j = 0; j < d; ++j) W[static_cast<size_t>(l * d + j)] = scale * dict.directions.data[static_cast<size_t>(f * d + j)];
  }
  for (int64_t l = 0; l < D; ++l)
    if (!used[static_cast<size_t>(l)])
      for (int64_t j = 0; j < d; ++j) W[static_cast<size_t>(l * d + j)] = static_cast<float>(rng.normal());
  const auto rep = score_recovery(dict.directions, W.data(), D);
  EXPECT_NEAR(rep.mean_max_cosine, 1.0, 1e-5);
  EXPECT_DOUBLE_EQ(rep.frac_recovered, 1.0);
  EXPECT_NEAR(rep.mcc, 1.0, 1e-5);
  ASSERT_EQ(static_cast<int64_t>(rep.best_latent.size()), N);
  for (int64_t f = 0; f < N; ++f) {
    EXPECT_EQ(rep.best_latent[static_cast<size_t>(f)], perm[static_cast<size_t>(f)]);
    EXPECT_EQ(rep.matched_latent[static_cast<size_t>(f)], perm[static_cast<size_t>(f)]);
    EXPECT_NEAR(rep.max_cosine[static_cast<size_t>(f)], 1.0, 1e-5);
  }
}

TEST(Recovery, HandComputedCase) {
  // True features e1, e2 in R^3. Decoder rows: r0 = (3,4,0): cos 0.6 with e1, 0.8 with e2;
  // r1 = (0,0,5): 0; r2 = (-1,0,0): -1 with e1; r3 = 0 (a dead latent).
  Tensor truth({2, 3});
  truth.data = {1, 0, 0, 0, 1, 0};
  const std::vector<float> W = {3, 4, 0, 0, 0, 5, -1, 0, 0, 0, 0, 0};
  const auto rep = score_recovery(truth, W.data(), 4, 0.9);
  EXPECT_NEAR(rep.max_cosine[0], 0.6, 1e-6);  // signed: r2 is anti-aligned, so r0 wins
  EXPECT_NEAR(rep.max_cosine[1], 0.8, 1e-6);
  EXPECT_EQ(rep.best_latent, (std::vector<int64_t>{0, 0}));
  EXPECT_NEAR(rep.mean_max_cosine, 0.7, 1e-6);
  EXPECT_DOUBLE_EQ(rep.frac_recovered, 0.0);
  // Matching on |cos|: e1 -> r2 (1.0), e2 -> r0 (0.8): mcc = 0.9; greedy on max cosine would give
  // both to r0.
  EXPECT_NEAR(rep.mcc, 0.9, 1e-6);
  EXPECT_EQ(rep.matched_latent, (std::vector<int64_t>{2, 0}));
  EXPECT_DOUBLE_EQ(score_recovery(truth, W.data(), 4, 0.7).frac_recovered, 0.5);
  // Fewer latents than features (D = 1, only r0): e2 takes it, e1 is unmatched and counts 0.
  const auto one = score_recovery(truth, W.data(), 1, 0.9);
  EXPECT_NEAR(one.mcc, 0.4, 1e-6);
  EXPECT_EQ(one.matched_latent, (std::vector<int64_t>{-1, 0}));
  // Only the dead latent: everything 0.
  const auto dead = score_recovery(truth, W.data() + 9, 1, 0.9);
  EXPECT_DOUBLE_EQ(dead.mean_max_cosine, 0.0);
  EXPECT_DOUBLE_EQ(dead.mcc, 0.0);
}

TEST(Recovery, RejectsBadShapes) {
  Tensor flat({6});
  const std::vector<float> W(6, 1.0f);
  EXPECT_THROW(score_recovery(flat, W.data(), 2), msae::Error);
  Tensor truth({2, 3}, 1.0f);
  EXPECT_THROW(score_recovery(truth, W.data(), 0), msae::Error);
  EXPECT_THROW(score_recovery(truth, nullptr, 2), msae::Error);
}
