// The synthsaebench-16k preset against SynthSAEBench-16k's published description (slow: it builds the
// whole preset, orthogonalization included). docs/synth-bench.md, "synthsaebench-16k", quotes the
// figures this prints.
//
// Published (SAELens docs, the SynthSAEBench paper): mean L0 about 34, about 25 over the 4096 most frequent
// features, mean max |cosine| between feature directions (rho_mm) about 0.15.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <vector>

#include "msae/kernels.h"
#include "msae/synth.h"

namespace msae {
namespace {

// Mean over features of the largest |cosine| with any other feature (rows are unit vectors).
double mean_max_overlap(const synth::FeatureModel& m) {
  const int64_t N = m.n_features(), d = m.d, block = 512;
  std::vector<float> dots(static_cast<size_t>(block * N));
  double sum = 0.0;
  for (int64_t i0 = 0; i0 < N; i0 += block) {
    const int64_t b = std::min(block, N - i0);
    kernels::sgemm(kernels::Trans::no, kernels::Trans::yes, b, N, d, 1.0f, m.directions.ptr() + i0 * d, d,
                   m.directions.ptr(), d, 0.0f, dots.data(), N);
    for (int64_t i = 0; i < b; ++i) {
      float top = 0.0f;
      for (int64_t j = 0; j < N; ++j)
        if (j != i0 + i) top = std::max(top, std::fabs(dots[static_cast<size_t>(i * N + j)]));
      sum += top;
    }
  }
  return sum / static_cast<double>(N);
}

TEST(SynthSaeBenchSlow, PresetStatistics) {
  const auto t0 = std::chrono::steady_clock::now();
  const synth::FeatureModel m = synth::make_preset("synthsaebench-16k", 0);
  const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  synth::HierarchicalConfig plain = synth::synthsaebench_16k_config(0);
  plain.ortho_steps = 0;
  const synth::FeatureModel unortho = synth::make_hierarchical(plain);

  std::vector<double> marg = m.marginal;
  std::sort(marg.begin(), marg.end(), std::greater<>());
  const double top4096 = std::accumulate(marg.begin(), marg.begin() + 4096, 0.0);
  const int64_t rows = 20000;
  std::vector<float> x(static_cast<size_t>(rows * m.d));
  synth::FiredFeatures fired;
  synth::FeatureSampler(m, synth::synth_bench_train_stream(0)).sample(rows, x.data(), &fired);
  const double l0 = static_cast<double>(fired.ids.size()) / static_cast<double>(rows);
  std::vector<int64_t> count(static_cast<size_t>(m.n_features()), 0);
  for (int32_t f : fired.ids) count[static_cast<size_t>(f)] += 1;
  std::vector<double> rate(count.begin(), count.end());
  for (double& r : rate) r /= static_cast<double>(rows);
  std::sort(rate.begin(), rate.end(), std::greater<>());
  const double l0_top = std::accumulate(rate.begin(), rate.begin() + 4096, 0.0);
  const double rho = mean_max_overlap(m), rho_plain = mean_max_overlap(unortho);
  std::printf("synthsaebench-16k seed 0: built in %.1f s; expected L0 %.3f (top 4096: %.3f); measured over %lld rows: "
              "L0 %.3f (top 4096 by measured rate: %.3f); mean max |cos| %.4f (without the orthogonalization %.4f)\n",
              build_s, m.expected_l0(), top4096, static_cast<long long>(rows), l0, l0_top, rho, rho_plain);
  EXPECT_NEAR(m.expected_l0(), 34.50, 0.01);
  EXPECT_NEAR(top4096, 25.17, 0.01);
  EXPECT_NEAR(l0, m.expected_l0(), 0.3);
  EXPECT_NEAR(rho, 0.15, 0.01);
  EXPECT_LT(rho, rho_plain);
}

}  // namespace
}  // namespace msae
