// Feature models and their sampler (see include/msae/synth.h for the contract).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#if defined(__FMA__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "msae/kernels.h"
#include "msae/synth.h"
#include "core/fast_exp.h"
#include "core/half.h"
#include "synth/row_rng.h"

namespace msae::synth {
namespace {

using namespace detail;

constexpr float kMinMagnitude = 0.05f;
constexpr double kMaxSiblingMass = 0.9;

// Gram-Schmidt on Gaussian vectors: n <= d orthonormal rows.
void orthonormal_rows(Rng& rng, float* out, int64_t n, int64_t d) {
  MSAE_ASSERT(n <= d);
  std::vector<double> v(static_cast<size_t>(d));
  for (int64_t i = 0; i < n; ++i) {
    for (;;) {
      for (auto& x : v) x = rng.normal();
      for (int pass = 0; pass < 2; ++pass) {  // twice is enough for float-accurate orthogonality
        for (int64_t k = 0; k < i; ++k) {
          double dot = 0.0;
          for (int64_t j = 0; j < d; ++j) dot += v[j] * out[k * d + j];
          for (int64_t j = 0; j < d; ++j) v[j] -= dot * out[k * d + j];
        }
      }
      double n2 = 0.0;
      for (double x : v) n2 += x * x;
      if (n2 > 1e-6) {
        const double inv = 1.0 / std::sqrt(n2);
        for (int64_t j = 0; j < d; ++j) out[i * d + j] = static_cast<float>(v[j] * inv);
        break;
      }
    }
  }
}

// Fills the derived tree fields (depth, children ranges, marginal) from parent and cond_prob, and checks
// the layout (children contiguous, after their parent; sibling mass <= 1).
void finish_model(FeatureModel& m) {
  const int64_t N = m.n_features();
  m.depth.assign(N, 0);
  m.first_child.assign(N, 0);
  m.n_children.assign(N, 0);
  m.marginal.assign(N, 0.0);
  for (int64_t f = 0; f < N; ++f) {
    const int32_t p = m.parent[f];
    MSAE_ASSERT(p < f, "parent after child: feature ", f, " parent ", p);
    if (p < 0) {
      m.marginal[f] = m.cond_prob[f];
      continue;
    }
    m.depth[f] = m.depth[p] + 1;
    m.marginal[f] = m.marginal[p] * m.cond_prob[f];
    if (m.n_children[p] == 0) m.first_child[p] = static_cast<int32_t>(f);
    MSAE_ASSERT(m.first_child[p] + m.n_children[p] == f, "children of ", p, " are not contiguous");
    m.n_children[p] += 1;
  }
  for (int64_t f = 0; f < N; ++f) {
    double mass = 0.0;
    for (int32_t c = 0; c < m.n_children[f]; ++c) mass += m.cond_prob[m.first_child[f] + c];
    MSAE_ASSERT(mass <= 1.0 + 1e-12, "children of ", f, " have probability mass ", mass);
  }
}

void make_loadings(FeatureModel& m, Rng& rng, int64_t rank, double scale) {
  if (rank <= 0) return;
  const int64_t N = m.n_features();
  m.loadings = Tensor({N, rank});
  for (int64_t f = 0; f < N; ++f)
    if (m.parent[f] < 0) random_unit(rng, m.loadings.ptr() + f * rank, rank);
  m.corr_scale = scale;
}

bool is_prob(double p) { return p > 0.0 && p <= 1.0; }

// Phi(x), the standard normal CDF.
inline double normal_cdf(double x) { return 0.5 * std::erfc(-x * 0.70710678118654752440); }

}  // namespace

std::vector<double> me_win_probabilities(const std::vector<double>& q) {
  const size_t n = q.size();
  std::vector<double> win(n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    MSAE_ASSERT(q[i] >= 0.0 && q[i] <= 1.0, "draw probability ", q[i], " outside [0, 1]");
    // The number K of other siblings drawn (a Poisson-binomial distribution), then E[1 / (1 + K)].
    std::vector<double> dist(n, 0.0);
    dist[0] = 1.0;
    size_t m = 0;  // siblings counted so far
    for (size_t j = 0; j < n; ++j) {
      if (j == i) continue;
      ++m;
      for (size_t k = m; k > 0; --k) dist[k] = dist[k] * (1.0 - q[j]) + dist[k - 1] * q[j];
      dist[0] *= 1.0 - q[j];
    }
    double e = 0.0;
    for (size_t k = 0; k <= m; ++k) e += dist[k] / static_cast<double>(k + 1);
    win[i] = q[i] * e;
  }
  return win;
}

double normal_quantile(double p) {
  if (!(p > 0.0 && p < 1.0)) {
    if (p == 0.0) return -std::numeric_limits<double>::infinity();
    if (p == 1.0) return std::numeric_limits<double>::infinity();
    usage_error("normal_quantile: p must be in [0, 1], got ", p);
  }
  // Acklam's rational approximation (relative error < 1.2e-9), then two Newton steps on Phi.
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                             1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01,  -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static const double dd[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                              3.754408661907416e+00};
  double x;
  if (p < 0.02425) {
    const double t = std::sqrt(-2.0 * std::log(p));
    x = (((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5]) /
        ((((dd[0] * t + dd[1]) * t + dd[2]) * t + dd[3]) * t + 1.0);
  } else if (p > 1.0 - 0.02425) {
    const double t = std::sqrt(-2.0 * std::log1p(-p));
    x = -(((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5]) /
        ((((dd[0] * t + dd[1]) * t + dd[2]) * t + dd[3]) * t + 1.0);
  } else {
    const double t = p - 0.5, r = t * t;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * t /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0);
  }
  for (int it = 0; it < 2; ++it) {
    const double density = std::exp(-0.5 * x * x) * 0.39894228040143267794;
    if (!(density > 0.0)) break;
    x -= (normal_cdf(x) - p) / density;
  }
  return x;
}

void orthogonalize_directions(float* E, int64_t N, int64_t d, int64_t steps, double lr) {
  constexpr int kOrthoParts = 16;  // GEMM parts, shared among the threads (kernels::sgemm_fixed_parts)
  MSAE_ASSERT(N > 0 && d > 0 && steps >= 0);
  auto normalize_rows = [&] {
    for (int64_t i = 0; i < N; ++i) {
      float* e = E + i * d;
      double n2 = 0.0;
      for (int64_t j = 0; j < d; ++j) n2 += static_cast<double>(e[j]) * e[j];
      const double inv = 1.0 / std::max(std::sqrt(n2), 1e-8);
      for (int64_t j = 0; j < d; ++j) e[j] = static_cast<float>(e[j] * inv);
    }
  };
  normalize_rows();
  if (steps == 0) return;
  // Adam (torch's defaults: betas 0.9, 0.999, eps 1e-8, bias-corrected) on
  //   L = sum_{i != j} (e_i . e_j)^2 + N sum_i (|e_i|^2 - 1)^2,
  // whose gradient is 4 (E E^T E)_i - 4 |e_i|^2 e_i + 4 N (|e_i|^2 - 1) e_i: E E^T E as E (E^T E), two
  // GEMMs through the (d, d) Gram matrix instead of the (N, N) one.
  const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
  std::vector<float> gram(static_cast<size_t>(d * d)), grad(static_cast<size_t>(N * d));
  std::vector<float> m1(static_cast<size_t>(N * d), 0.0f), m2(static_cast<size_t>(N * d), 0.0f);
  const double Nd = static_cast<double>(N);
  for (int64_t t = 1; t <= steps; ++t) {
    // Fixed parts: the directions (a preset's truth) must not depend on the thread count.
    kernels::sgemm_fixed_parts(kOrthoParts, kernels::Trans::yes, kernels::Trans::no, d, d, N, 1.0f, E, d, E, d, 0.0f,
                               gram.data(), d);
    kernels::sgemm_fixed_parts(kOrthoParts, kernels::Trans::no, kernels::Trans::no, N, d, d, 4.0f, E, d, gram.data(), d,
                               0.0f, grad.data(), d);
    const double c1 = 1.0 - std::pow(b1, static_cast<double>(t)), c2 = 1.0 - std::pow(b2, static_cast<double>(t));
    parallel_for(N, [&](int64_t begin, int64_t end, int) {
      for (int64_t i = begin; i < end; ++i) {
        float* e = E + i * d;
        float* g = grad.data() + i * d;
        double n2 = 0.0;
        for (int64_t j = 0; j < d; ++j) n2 += static_cast<double>(e[j]) * e[j];
        const double self = -4.0 * n2 + 4.0 * Nd * (n2 - 1.0);
        for (int64_t j = 0; j < d; ++j) {
          const double gj = g[j] + self * e[j];
          float& a = m1[static_cast<size_t>(i * d + j)];
          float& v = m2[static_cast<size_t>(i * d + j)];
          a = static_cast<float>(b1 * a + (1.0 - b1) * gj);
          v = static_cast<float>(b2 * v + (1.0 - b2) * gj * gj);
          e[j] = static_cast<float>(e[j] - lr * (a / c1) / (std::sqrt(v / c2) + eps));
        }
      }
    }, 256);
  }
  normalize_rows();
}

double FeatureModel::expected_l0() const { return std::accumulate(marginal.begin(), marginal.end(), 0.0); }

int32_t FeatureModel::max_depth() const { return depth.empty() ? 0 : *std::max_element(depth.begin(), depth.end()); }

FeatureModel make_hierarchical(const HierarchicalConfig& c) {
  if (c.d < 1 || c.d > (1 << 16)) usage_error("hierarchical model: d must be in [1, 65536], got ", c.d);
  if (c.n_features < 1 || c.n_features > (1 << 22))
    usage_error("hierarchical model: n_features must be in [1, 4194304], got ", c.n_features);
  if (!(c.zipf_exponent > 0.0 && c.zipf_exponent <= 4.0))
    usage_error("hierarchical model: zipf_exponent must be in (0, 4], got ", c.zipf_exponent);
  if (!is_prob(c.p_max) || !is_prob(c.p_min) || c.p_min > c.p_max)
    usage_error("hierarchical model: need 0 < p_min <= p_max <= 1, got p_min = ", c.p_min, ", p_max = ", c.p_max);
  if (c.n_roots < 0 || c.branching < 0 || c.depth < 0 || c.depth > 8)
    usage_error("hierarchical model: n_roots, branching must be >= 0 and depth in [0, 8], got ", c.n_roots, ", ",
                c.branching, ", ", c.depth);
  int64_t tree_nodes = 0, level = c.n_roots;
  for (int64_t l = 0; l <= c.depth && level > 0; ++l) {
    tree_nodes += level;
    level *= c.branching;
  }
  if (tree_nodes > c.n_features)
    usage_error("hierarchical model: the forest has ", tree_nodes, " nodes but n_features is ", c.n_features,
                "; hint: fewer roots, a smaller branching or depth");
  if (c.corr_rank < 0 || c.corr_rank > 1024) usage_error("hierarchical model: corr_rank must be in [0, 1024]");
  if (!(c.corr_scale >= 0.0 && c.corr_scale <= 3.0)) usage_error("hierarchical model: corr_scale must be in [0, 3]");
  if (!(c.mag_first > 0.0f && c.mag_last > 0.0f && c.mag_std_mean >= 0.0f && c.mag_std_std >= 0.0f))
    usage_error("hierarchical model: magnitudes must be positive and their std non-negative");
  if (!(c.bias_norm >= 0.0f && c.noise_std >= 0.0f)) usage_error("hierarchical model: bias_norm, noise_std >= 0");
  if (c.ortho_steps < 0 || !(c.ortho_lr > 0.0)) usage_error("hierarchical model: ortho_steps >= 0 and ortho_lr > 0");
  if (c.correlation == HierarchicalConfig::Correlation::copula && !(c.corr_scale <= 1.0))
    usage_error("hierarchical model: a copula's corr_scale must be in [0, 1]");

  const int64_t N = c.n_features, d = c.d;
  FeatureModel m;
  m.name = "custom";
  m.d = d;
  m.seed = c.seed;
  m.noise_std = c.noise_std;
  Rng base(c.seed);
  Rng dir_rng = base.split(1), mag_rng = base.split(2), bias_rng = base.split(3), corr_rng = base.split(4);

  // Zipfian marginals by id: r_i = (i + 1)^-a rescaled linearly onto [p_min, p_max].
  std::vector<double> zipf(N);
  const double r_last = std::pow(static_cast<double>(N), -c.zipf_exponent);
  for (int64_t i = 0; i < N; ++i) {
    const double r = std::pow(1.0 + static_cast<double>(i), -c.zipf_exponent);
    zipf[i] = N > 1 ? c.p_min + (c.p_max - c.p_min) * (r - r_last) / (1.0 - r_last) : c.p_max;
  }
  zipf[N - 1] = N > 1 ? c.p_min : c.p_max;

  // Forest in breadth-first order: level 0 = roots [0, R), level l+1 = children of level l, in order.
  m.parent.assign(N, -1);
  m.cond_prob.assign(N, 0.0);
  int64_t level_begin = 0, level_end = std::min<int64_t>(c.n_roots, N), next = level_end;
  for (int64_t l = 0; l < c.depth && c.branching > 0; ++l) {
    for (int64_t p = level_begin; p < level_end; ++p)
      for (int64_t j = 0; j < c.branching; ++j) m.parent[next++] = static_cast<int32_t>(p);
    level_begin = level_end;
    level_end = next;
  }
  // Conditional probabilities.
  std::vector<double> marg(N);
  if (c.siblings == HierarchicalConfig::Siblings::random_winner) {
    // SAELens (compensate_probabilities, mutually exclusive children): every feature is drawn with its
    // Zipf probability, a child's times 1 / z_parent * (1 + (sum of its siblings' z - its z) / z_parent)
    // (clamped to 1); a child drawn while its parent is not is dropped, and of several siblings drawn one,
    // uniformly chosen, is kept. Given the parent fired, child c therefore fires with its win probability.
    for (int64_t f = 0; f < N; ++f)
      if (m.parent[f] < 0) m.cond_prob[f] = zipf[f];
    for (int64_t f = 0; f < N;) {
      const int32_t p = m.parent[f];
      if (p < 0) {
        ++f;
        continue;
      }
      int64_t e = f;
      double mass = 0.0;
      while (e < N && m.parent[e] == p) mass += zipf[e++];
      std::vector<double> q;
      for (int64_t s = f; s < e; ++s) q.push_back(std::min(1.0, zipf[s] / zipf[p] * (1.0 + (mass - zipf[s]) / zipf[p])));
      const std::vector<double> w = me_win_probabilities(q);
      for (int64_t s = f; s < e; ++s) m.cond_prob[s] = w[static_cast<size_t>(s - f)];
      f = e;
    }
  }
  for (int64_t f = 0; f < N && c.siblings == HierarchicalConfig::Siblings::capped; ++f) {
    const int32_t p = m.parent[f];
    m.cond_prob[f] = p < 0 ? zipf[f] : std::min(1.0, zipf[f] / marg[p]);
    marg[f] = zipf[f];
    const bool last_sibling = p >= 0 && (f + 1 == N || m.parent[f + 1] != p);
    if (last_sibling) {
      int64_t first = f;
      while (first > 0 && m.parent[first - 1] == p) --first;
      double mass = 0.0;
      for (int64_t s = first; s <= f; ++s) mass += m.cond_prob[s];
      if (mass > kMaxSiblingMass)
        for (int64_t s = first; s <= f; ++s) m.cond_prob[s] *= kMaxSiblingMass / mass;
      for (int64_t s = first; s <= f; ++s) marg[s] = marg[p] * m.cond_prob[s];
    }
  }

  m.directions = Tensor({N, d});
  for (int64_t f = 0; f < N; ++f) random_unit(dir_rng, m.directions.ptr() + f * d, d);
  if (c.ortho_steps > 0) orthogonalize_directions(m.directions.ptr(), N, d, c.ortho_steps, c.ortho_lr);
  // Rounded to binary16 values (relative error <= 2^-11 per coordinate, norms 1 within ~1e-4), so that the
  // sampler streams them at half the bytes and converts each back to exactly this float.
  for (float& v : m.directions.data) v = msae::detail::round_to_half(v);
  m.bias = Tensor({d});
  if (c.bias_norm > 0.0f) {
    random_unit(bias_rng, m.bias.ptr(), d);
    for (int64_t j = 0; j < d; ++j) m.bias.ptr()[j] *= c.bias_norm;
  }
  m.mag_mean.resize(N);
  m.mag_std.resize(N);
  for (int64_t f = 0; f < N; ++f) {
    const double t = N > 1 ? static_cast<double>(f) / static_cast<double>(N - 1) : 0.0;
    m.mag_mean[f] = static_cast<float>(c.mag_first + (c.mag_last - c.mag_first) * t);
    m.mag_std[f] = static_cast<float>(std::fabs(c.mag_std_mean + c.mag_std_std * mag_rng.normal()));
  }
  if (c.correlation == HierarchicalConfig::Correlation::copula) {
    if (c.corr_rank > 0) {
      // SAELens's low-rank correlation: factor entries N(0, scale^2) for every feature; when a row's
      // squared norm would leave a diagonal term below 0.01, the whole factor is scaled down so that the
      // largest leaves exactly 0.01.
      const int64_t r = c.corr_rank;
      m.loadings = Tensor({N, r});
      double max_n2 = 0.0;
      for (int64_t f = 0; f < N; ++f) {
        double n2 = 0.0;
        for (int64_t k = 0; k < r; ++k) {
          const double v = c.corr_scale * corr_rng.normal();
          m.loadings.ptr()[f * r + k] = static_cast<float>(v);
          n2 += v * v;
        }
        max_n2 = std::max(max_n2, n2);
      }
      if (1.0 - max_n2 < 0.01) {
        const float shrink = static_cast<float>(std::sqrt(0.99 / max_n2));
        for (float& v : m.loadings.data) v *= shrink;
      }
      m.corr_scale = c.corr_scale;
      m.copula = true;
    }
  } else {
    make_loadings(m, corr_rng, c.corr_rank, c.corr_scale);
  }
  m.scale_children_by_parent = c.scale_children_by_parent;
  finish_model(m);
  return m;
}

namespace {

// Explicit small toys: orthonormal directions in d >= N, given parents and probabilities.
FeatureModel make_toy(const std::string& name, int64_t d, const std::vector<int32_t>& parent,
                      const std::vector<double>& cond_prob, uint64_t seed) {
  const int64_t N = static_cast<int64_t>(parent.size());
  FeatureModel m;
  m.name = name;
  m.d = d;
  m.seed = seed;
  Rng base(seed);
  Rng dir_rng = base.split(1);
  m.directions = Tensor({N, d});
  orthonormal_rows(dir_rng, m.directions.ptr(), N, d);
  m.bias = Tensor({d});
  m.parent = parent;
  m.cond_prob = cond_prob;
  m.mag_mean.assign(N, 1.0f);
  m.mag_std.assign(N, 0.1f);
  m.noise_std = 0.0f;
  finish_model(m);
  return m;
}

}  // namespace

std::vector<std::string> preset_names() { return {"synth-lite", "synth-16k", "synthsaebench-16k", "tree", "absorption"}; }

HierarchicalConfig synthsaebench_16k_config(uint64_t seed) {
  HierarchicalConfig c;  // N, d, Zipf firing, the forest and the magnitudes are the defaults
  c.siblings = HierarchicalConfig::Siblings::random_winner;
  c.correlation = HierarchicalConfig::Correlation::copula;
  c.corr_rank = 25;
  c.corr_scale = 0.1;
  c.scale_children_by_parent = true;
  c.ortho_steps = 100;
  c.ortho_lr = 3e-4;
  c.bias_norm = 0.5f;
  c.seed = seed;
  return c;
}

FeatureModel make_preset(const std::string& name, uint64_t seed) {
  if (name == "synth-16k") {
    HierarchicalConfig c;  // the defaults are the SynthSAEBench-16k parameters
    c.seed = seed;
    FeatureModel m = make_hierarchical(c);
    m.name = name;
    return m;
  }
  if (name == "synthsaebench-16k") {
    FeatureModel m = make_hierarchical(synthsaebench_16k_config(seed));
    m.name = name;
    return m;
  }
  if (name == "synth-lite") {
    HierarchicalConfig c;
    c.d = 256;
    c.n_features = 512;
    c.p_max = 0.4;
    c.p_min = 2e-3;
    c.n_roots = 32;
    c.branching = 3;
    c.depth = 2;
    c.corr_rank = 8;
    c.seed = seed;
    FeatureModel m = make_hierarchical(c);
    m.name = name;
    return m;
  }
  if (name == "tree") {
    // Nabeshima's nested toy: parents 0..2, children 3..11 (three per parent), independents 12..19.
    std::vector<int32_t> parent(20, -1);
    std::vector<double> p(20, 0.05);
    for (int i = 0; i < 3; ++i) p[i] = 0.15;
    for (int c = 0; c < 9; ++c) {
      parent[3 + c] = c / 3;
      p[3 + c] = 0.2;
    }
    return make_toy(name, 20, parent, p, seed);
  }
  if (name == "absorption") {
    // Chanin et al.'s parent/child toy: parent 0, children 1..4, independents 5..15.
    std::vector<int32_t> parent(16, -1);
    std::vector<double> p(16, 0.05);
    p[0] = 0.25;
    for (int c = 1; c <= 4; ++c) {
      parent[c] = 0;
      p[c] = 0.2;
    }
    return make_toy(name, 16, parent, p, seed);
  }
  std::string names;
  for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
  usage_error("unknown preset '", name, "'; expected one of: ", names);
}

namespace {

// 24-bit uniform in [0, 1) from the top of a 32-bit draw.
inline float uniform24(uint32_t bits) { return static_cast<float>(bits >> 8) * 0x1.0p-24f; }

// Bit j of the result: uniform24(bits[j]) < p[j], for j < 8.
inline uint32_t hits8(const uint32_t* bits, const float* p) {
#if defined(__AVX2__)
  const __m256i b = _mm256_srli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits)), 8);
  const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(b), _mm256_set1_ps(0x1.0p-24f));
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(u, _mm256_loadu_ps(p), _CMP_LT_OQ)));
#else
  uint32_t mask = 0;
  for (int j = 0; j < 8; ++j) mask |= static_cast<uint32_t>(uniform24(bits[j]) < p[j]) << j;
  return mask;
#endif
}

// a . b over r entries in a fixed order (eight partial sums, then pairwise), so that the result does not
// depend on how the compiler vectorizes it.
inline float dot_fixed(const float* a, const float* b, int64_t r) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= r; k += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[k + l] * b[k + l];
  for (int l = 0; k < r; ++k, ++l) acc[l] += a[k] * b[k];
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

// Reads one byte of every 64-byte line of the `bytes` bytes at p: a sequential pass that the hardware
// prefetchers stream at memory bandwidth, leaving the lines in this core's caches. The bytes are ORed
// (no chain of adds), and the empty asm that takes the result keeps the loads.
inline void warm_lines(const void* p, int64_t bytes) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  unsigned acc = 0;
  for (int64_t j = 0; j < bytes; j += 64) acc |= b[j];
  asm volatile("" : : "r"(acc));
}

// Eight floats as one value (GCC/Clang vector extension: AVX with -march=native, pairs of SSE registers
// without). Written out because GCC turned the plain loop over a 64-float block into gathers.
using Float8 = float __attribute__((vector_size(32)));
inline Float8 load8(const float* p) {
  Float8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, Float8 v) { std::memcpy(p, &v, sizeof v); }
// Eight binary16 values as floats (exact).
inline Float8 load8(const uint16_t* p) {
#if defined(__F16C__)
  return reinterpret_cast<Float8>(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
  Float8 v;
  for (int l = 0; l < 8; ++l) v[l] = msae::detail::half_to_float(p[l]);
  return v;
#endif
}

inline Float8 splat8(float a) { return Float8{a, a, a, a, a, a, a, a}; }

// a * b + c in each lane, fused (one rounding) wherever the target has FMA, so that every coordinate of
// a row is rounded the same way whichever loop computes it.
inline Float8 fma8(Float8 a, Float8 b, Float8 c) {
#if defined(__FMA__)
  return reinterpret_cast<Float8>(
      _mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b), reinterpret_cast<__m256>(c)));
#else
  return a * b + c;
#endif
}

// Coordinates [j0, j0 + 8 NB) of x = x0 + sum over t < n of a[t] * v[t], with v[t] = the fired
// directions and as = a[t] broadcast: NB vector registers, written once, NB FMAs per direction. The last
// register stores only `last` lanes (1..8). Per coordinate: x0, then t = 0, 1, ... in this order, each
// one FMA.
template <int NB, class T>
inline void add_block(const T* const* v, const Float8* as, int64_t n, int64_t j0, const float* x0, float* x,
                      int last = 8) {
  Float8 acc[NB];
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b) acc[b] = load8(x0 + j0 + 8 * b);
  int64_t t = 0;
  for (; t + 2 <= n; t += 2) {  // two directions per pass: half the loop and pointer overhead, same order
    const T* v0 = v[t] + j0;
    const T* v1 = v[t + 1] + j0;
    const Float8 a0 = as[t], a1 = as[t + 1];
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) acc[b] = fma8(a1, load8(v1 + 8 * b), fma8(a0, load8(v0 + 8 * b), acc[b]));
  }
  if (t < n) {
    const T* vt = v[t] + j0;
    const Float8 at = as[t];
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) acc[b] = fma8(at, load8(vt + 8 * b), acc[b]);
  }
#pragma GCC unroll 8
  for (int b = 0; b + 1 < NB; ++b) store8(x + j0 + 8 * b, acc[b]);
  float* xl = x + j0 + 8 * (NB - 1);
  if (last == 8) {
    store8(xl, acc[NB - 1]);
  } else {
#if defined(__AVX2__)
    const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(last), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_maskstore_ps(xl, lanes, reinterpret_cast<__m256>(acc[NB - 1]));
#else
    alignas(32) float part[8];
    store8(part, acc[NB - 1]);
    for (int l = 0; l < last; ++l) xl[l] = part[l];
#endif
  }
}

// x[j] = x0[j] + sum over t < n of a[t] * v[t][j] for j < d: 64 coordinates at a time, then the rest in
// one call of 1 to 8 registers. v[t] and x0 must be readable up to d rounded up to 8 (the sampler pads
// them when d is not a multiple of 8).
template <class T>
inline void add_directions(const T* const* v, const Float8* as, int64_t n, int64_t d, const float* x0, float* x) {
  int64_t j0 = 0;
  for (; j0 + 64 <= d; j0 += 64) add_block<8>(v, as, n, j0, x0, x);
  if (j0 == d) return;
  const int64_t rest = d - j0;
  const int last = static_cast<int>(rest - (rest - 1) / 8 * 8);  // 1..8 lanes in the last register
  switch ((rest + 7) / 8) {
    case 1: add_block<1>(v, as, n, j0, x0, x, last); break;
    case 2: add_block<2>(v, as, n, j0, x0, x, last); break;
    case 3: add_block<3>(v, as, n, j0, x0, x, last); break;
    case 4: add_block<4>(v, as, n, j0, x0, x, last); break;
    case 5: add_block<5>(v, as, n, j0, x0, x, last); break;
    case 6: add_block<6>(v, as, n, j0, x0, x, last); break;
    case 7: add_block<7>(v, as, n, j0, x0, x, last); break;
    default: add_block<8>(v, as, n, j0, x0, x, last); break;
  }
}

}  // namespace

FeatureSampler::FeatureSampler(const FeatureModel& model, uint64_t seed, const SamplerOptions& options)
    : m_(model) {
  const int64_t N = m_.n_features(), r = m_.corr_rank();
  MSAE_ASSERT(N > 0 && m_.directions.numel() == N * m_.d && m_.bias.numel() == m_.d);
  if (!(options.dense_min_prob >= 0.0)) usage_error("sampler: dense_min_prob must be >= 0");
  copula_ = m_.copula && r > 0;
  if (copula_) {
    // Gaussian copula: base feature f fires when L_f . z + sqrt(1 - |L_f|^2) eta_f > t_f = Phi^-1(1 - p_f),
    // so given the row's z with probability Phi((L_f . z - t_f) / sigma_f). Blocks of 64, loadings transposed.
    for (int64_t f = 0; f < N; ++f)
      if (m_.parent[f] < 0 && m_.cond_prob[f] > 0.0) base_ids_.push_back(static_cast<int32_t>(f));
    const int64_t nb = static_cast<int64_t>(base_ids_.size());
    base_padded_ = (nb + kCopulaBlock - 1) / kCopulaBlock * kCopulaBlock;
    base_thr_.assign(static_cast<size_t>(base_padded_), std::numeric_limits<float>::infinity());
    base_inv_sigma_.assign(static_cast<size_t>(base_padded_), 1.0f);
    base_load_t_.assign(static_cast<size_t>(r * base_padded_), 0.0f);
    for (int64_t i = 0; i < nb; ++i) {
      const int32_t f = base_ids_[i];
      const float* l = m_.loadings.ptr() + static_cast<int64_t>(f) * r;
      double n2 = 0.0;
      for (int64_t k = 0; k < r; ++k) {
        base_load_t_[k * base_padded_ + i] = l[k];
        n2 += static_cast<double>(l[k]) * l[k];
      }
      if (!(n2 < 1.0)) usage_error("sampler: copula loading row of feature ", f, " has squared norm ", n2, " >= 1");
      base_thr_[i] = static_cast<float>(normal_quantile(1.0 - std::min(1.0, m_.cond_prob[f])));
      base_inv_sigma_[i] = static_cast<float>(1.0 / std::sqrt(1.0 - n2));
    }
  }
  for (int64_t f = 0; f < N && !copula_; ++f) {
    if (m_.parent[f] >= 0 || !(m_.cond_prob[f] > 0.0)) continue;
    const double p = std::min(1.0, m_.cond_prob[f]);
    if (p >= options.dense_min_prob) {
      dense_ids_.push_back(static_cast<int32_t>(f));
    } else {
      sparse_ids_.push_back(static_cast<int32_t>(f));
      sparse_p_.push_back(p);
    }
  }
  // Dense features: padded to a multiple of 16 so that the vectorized loops need no tail.
  const int64_t nd = static_cast<int64_t>(dense_ids_.size());
  dense_padded_ = (nd + 15) / 16 * 16;
  dense_logp_.assign(dense_padded_, -87.0f);
  dense_p_.assign(dense_padded_, 0.0f);
  dense_load_t_.assign(static_cast<size_t>(r * dense_padded_), 0.0f);
  const double s = m_.corr_scale;
  for (int64_t i = 0; i < nd; ++i) {
    const int32_t f = dense_ids_[i];
    const double p = std::min(1.0, m_.cond_prob[f]);
    dense_p_[i] = static_cast<float>(p);
    dense_logp_[i] = static_cast<float>(std::max(-87.0, std::log(p) - 0.5 * s * s));
    for (int64_t k = 0; k < r; ++k) dense_load_t_[k * dense_padded_ + i] = m_.loadings.ptr()[f * r + k];
  }
  // Sparse features: segments whose probabilities lie within a factor 2 of the segment maximum q.
  const int64_t ns = static_cast<int64_t>(sparse_ids_.size());
  for (int64_t b = 0; b < ns;) {
    Segment seg;
    seg.begin = b;
    seg.q = sparse_p_[b];
    int64_t e = b + 1;
    while (e < ns && sparse_p_[e] <= seg.q && sparse_p_[e] > 0.5 * seg.q) ++e;
    seg.end = e;
    segments_.push_back(seg);
    b = e;
  }
  seg_rate_.resize(segments_.size() * kBoundLevels);
  seg_inv_log1m_.resize(segments_.size() * kBoundLevels);
  for (size_t g = 0; g < segments_.size(); ++g)
    for (int l = 0; l < kBoundLevels; ++l) {
      const double rate = std::min(1.0, segments_[g].q * std::exp2(0.25 * l));
      seg_rate_[g * kBoundLevels + l] = rate;
      seg_inv_log1m_[g * kBoundLevels + l] = rate < 1.0 ? 1.0 / std::log1p(-rate) : 0.0;
    }
  // Children's cumulative probabilities (float, like the 24-bit uniform they are compared with).
  cum4_.assign(static_cast<size_t>(N) * 4, 2.0f);
  child_cum_.assign(N, 0.0f);
  for (int64_t f = 0; f < N; ++f) {
    double cum = 0.0;
    for (int32_t c = 0; c < m_.n_children[f]; ++c) {
      cum += m_.cond_prob[m_.first_child[f] + c];
      child_cum_[m_.first_child[f] + c] = static_cast<float>(cum);
      if (m_.n_children[f] <= 4) cum4_[f * 4 + c] = static_cast<float>(cum);
    }
  }
  // Directions and bias with rows padded to a multiple of 8 floats (zeros), when d is not one: the row
  // sum then needs no scalar tail.
  const int64_t d = m_.d;
  stride_ = (d + 7) / 8 * 8;
  if (stride_ != d) {
    dirs_padded_.assign(static_cast<size_t>(N * stride_), 0.0f);
    for (int64_t f = 0; f < N; ++f)
      std::copy_n(m_.directions.ptr() + f * d, d, dirs_padded_.begin() + f * stride_);
    bias_padded_.assign(static_cast<size_t>(stride_), 0.0f);
    std::copy_n(m_.bias.ptr(), d, bias_padded_.begin());
  }
  // A binary16 copy of the directions when they are all binary16 values (the hierarchical models round
  // them so): half the bytes to stream per row, converted back to the same floats, so the rows are the
  // same as from the float copy.
  const float* dir_src = float_dirs();
  half_ = options.half_directions &&
          std::all_of(dir_src, dir_src + N * stride_, [](float v) { return msae::detail::round_to_half(v) == v; });
  if (half_) {
    dirs_half_.resize(static_cast<size_t>(N * stride_));
    for (int64_t i = 0; i < N * stride_; ++i) dirs_half_[i] = msae::detail::float_to_half(dir_src[i]);
  }
  small_ = options.small_path && r == 0 && segments_.empty() && m_.noise_std == 0.0f && nd <= 32 &&
           N <= kSmallMaxFeatures && d <= 64 && !m_.scale_children_by_parent;
  if (small_) {
    // Without correlation the dense features fire independently, so the joint outcome of eight of them
    // (a byte, bit j = feature 8c + j) has probability prod p_j^b_j (1 - p_j)^(1 - b_j): one alias
    // table (Walker; Vose's construction) of 256 columns per chunk of eight, so that one 32-bit half of a
    // draw gives a whole chunk: column = its top 8 bits, own outcome when its low 24 bits are below the
    // column's threshold, else the column's alias.
    const int64_t chunks = (nd + 7) / 8;
    alias_thr_.assign(static_cast<size_t>(chunks * 256), 0);
    alias_own_.assign(static_cast<size_t>(chunks * 256), 0);
    alias_other_.assign(static_cast<size_t>(chunks * 256), 0);
    for (int64_t c = 0; c < chunks; ++c) {
      std::vector<double> scaled(256);
      for (int o = 0; o < 256; ++o) {
        double prob = 1.0;
        for (int j = 0; j < 8; ++j) {
          const int64_t f = 8 * c + j;
          const double pf = f < nd ? static_cast<double>(dense_p_[f]) : 0.0;
          prob *= (o >> j) & 1 ? pf : 1.0 - pf;
        }
        scaled[o] = 256.0 * prob;
      }
      std::vector<int> small_cols, large_cols;
      for (int o = 0; o < 256; ++o) (scaled[o] < 1.0 ? small_cols : large_cols).push_back(o);
      uint32_t* thr = alias_thr_.data() + c * 256;
      uint8_t* own = alias_own_.data() + c * 256;
      uint8_t* other = alias_other_.data() + c * 256;
      for (int o = 0; o < 256; ++o) own[o] = other[o] = static_cast<uint8_t>(o);
      while (!small_cols.empty() && !large_cols.empty()) {
        const int sm = small_cols.back(), lg = large_cols.back();
        small_cols.pop_back();
        thr[sm] = static_cast<uint32_t>(std::llround(scaled[sm] * 0x1.0p24));
        other[sm] = static_cast<uint8_t>(lg);
        scaled[lg] -= 1.0 - scaled[sm];
        if (scaled[lg] < 1.0) {
          large_cols.pop_back();
          small_cols.push_back(lg);
        }
      }
      for (int o : small_cols) thr[o] = uint32_t{1} << 24;  // rounding leftovers: full columns
      for (int o : large_cols) thr[o] = uint32_t{1} << 24;
    }
  }
  // Reading the directions through once before the rows (sample()) pays when they fit in about twice
  // this CPU's L2 and a thread's rows will use about as many directions as there are.
  const double dir_bytes = static_cast<double>(N) * static_cast<double>(stride_) * (half_ ? 2.0 : 4.0);
  warm_min_rows_ = dir_bytes <= kWarmMaxBytes
                       ? std::max<int64_t>(1, static_cast<int64_t>(std::ceil(static_cast<double>(N) /
                                                                             std::max(1.0, m_.expected_l0()))))
                       : std::numeric_limits<int64_t>::max();
  key_ = mix64(mix64(m_.seed ^ 0xfea7fea7fea7fea7ULL) + seed * kGamma);
}

void FeatureSampler::sample(int64_t n, float* out, FiredFeatures* fired) {
  MSAE_ASSERT(n >= 0);
  if (n == 0) {
    if (fired) *fired = FiredFeatures{};
    return;
  }
  const ZigTables& zt = zig_tables();
  const int64_t d = m_.d, r = m_.corr_rank();
  const double s = m_.corr_scale;
  const float sf = static_cast<float>(s), half_s2 = static_cast<float>(0.5 * s * s);
  const int64_t stride = stride_;  // of dirs and bias: d rounded up to 8
  const float* dirs = float_dirs();
  const float* bias = stride == d ? m_.bias.ptr() : bias_padded_.data();
  const float* load = r > 0 ? m_.loadings.ptr() : nullptr;
  const int64_t n_dense = static_cast<int64_t>(dense_ids_.size()), nd = dense_padded_;
  const uint64_t key = key_;
  const int64_t row0 = next_row_;
  std::vector<std::vector<int32_t>> ids(fired ? n : 0);

  const int32_t* n_children = m_.n_children.data();
  const int32_t* first_child = m_.first_child.data();
  const float* child_cum = child_cum_.data();
  const float* cum4 = cum4_.data();
  const double levels_per_nat = 4.0 / std::log(2.0);  // bound levels (quarter octaves) per unit of log(bound)
  const float* mag_mean = m_.mag_mean.data();
  const float* mag_std = m_.mag_std.data();

  // Magnitude of feature f from a standard normal: N(mean_f, std_f^2) clipped to >= kMinMagnitude, broadcast.
  auto magnitude = [&](int32_t f, float normal) {
    return splat8(std::max(mag_mean[f] + mag_std[f] * normal, kMinMagnitude));
  };
  // The row's fired features, ascending, when the caller asked for them.
  auto record_fired = [&](int64_t i, const int32_t* list, int64_t len) {
    if (!fired) return;
    std::vector<int32_t>& row_ids = ids[i];
    row_ids.assign(list, list + len);
    std::sort(row_ids.begin(), row_ids.end());
  };
  // Children, breadth-first over list[0, len) (the list grows while it is read): for every listed feature
  // that has children, one 24-bit uniform against their cumulative conditional probabilities (up to
  // four compared at once), and at most one child appended, without a branch on the outcome. `list` has
  // room for every feature once plus one scratch entry. Returns the new length.
  auto add_children = [&](WyRowRng& rng, int32_t* list, int64_t len, int32_t* ppos) {
    for (int64_t t = 0; t < len; ++t) {
      const int32_t f = list[t], nc = n_children[f];
      if (nc == 0) continue;
      const float u = uniform24(static_cast<uint32_t>(rng.next() >> 32));
      int32_t c;
      if (nc <= 4) {
        const float* cm = cum4 + 4 * static_cast<int64_t>(f);
        c = (u >= cm[0]) + (u >= cm[1]) + (u >= cm[2]) + (u >= cm[3]);
      } else {
        const float* cm = child_cum + first_child[f];
        c = 0;
        while (c < nc && u >= cm[c]) ++c;
      }
      list[len] = first_child[f] + c;
      if (ppos) ppos[len] = static_cast<int32_t>(t);  // where the parent is listed (scale_children_by_parent)
      len += c < nc;
    }
    return len;
  };
  // Small models (the toys): no correlation factor, no rare features, no noise, at most 32 dense
  // features, 64 features and d <= 64 (NB = d / 8 rounded up registers per row, `last` lanes in the last
  // one). The dense features come eight at a time from alias tables; the children, magnitudes and sum as
  // in the general loop, without its bookkeeping for wide rows. Not inlined into its caller: as a function
  // of its own it gets the children step, the normals and the sum inlined (inside the caller, GCC 12 left
  // them as calls: 287 instead of 228 instructions per absorption row).
  const int last_lanes = static_cast<int>(d - (d - 1) / 8 * 8);
  auto small_rows = [&]<int NB>(int64_t begin, int64_t end) __attribute__((noinline)) {
    const int32_t* ids_dense = dense_ids_.data();
    const uint32_t* thr = alias_thr_.data();
    const uint8_t* own = alias_own_.data();
    const uint8_t* other = alias_other_.data();
    const int64_t chunks = (n_dense + 7) / 8;
    alignas(64) float nz[kNormalBlock];
    alignas(64) Float8 mg[kSmallMaxFeatures];
    const float* vp[kSmallMaxFeatures];
    int32_t lst[kSmallMaxFeatures + 1];
    for (int64_t i = begin; i < end; ++i) {
      WyRowRng rng(key, static_cast<uint64_t>(row0 + i));
      // Dense features: each chunk's outcome from its alias table (a 32-bit half of a draw each).
      uint32_t mask = 0;
      auto chunk = [&](int64_t c, uint32_t u) {
        const int64_t col = c * 256 + (u >> 24);
        return static_cast<uint32_t>((u & 0xffffffu) < thr[col] ? own[col] : other[col]) << (8 * c);
      };
      for (int64_t c = 0; c < chunks; c += 2) {
        const uint64_t b = rng.next();
        mask |= chunk(c, static_cast<uint32_t>(b));
        if (c + 1 < chunks) mask |= chunk(c + 1, static_cast<uint32_t>(b >> 32));
      }
      int64_t len = 0;
      for (; mask != 0; mask &= mask - 1) lst[len++] = ids_dense[std::countr_zero(mask)];
      len = add_children(rng, lst, len, nullptr);
      if (len > 0) normals_block(rng, zt, nz, len);  // the row's last draws: none needed when nothing fired
      for (int64_t t = 0; t < len; ++t) {
        const int32_t f = lst[t];
        mg[t] = magnitude(f, nz[t]);
        vp[t] = dirs + static_cast<int64_t>(f) * stride;
      }
      add_block<NB>(vp, mg, len, 0, bias, out + i * d, last_lanes);
      record_fired(i, lst, len);
    }
  };

  const bool scale_children = m_.scale_children_by_parent;
  // Copula base features. The arguments arg_f = (L_f . z - t_f) / sigma_f of all of them are computed for a
  // tile of kCopulaTile rows at once (copula_args), so that the loadings ((r, padded): 563 KB for
  // synthsaebench-16k, past a Zen 3 core's L2) are read once per tile instead of once per row; per row and
  // feature the arithmetic is the one of a row alone (an FMA chain over k in order from 0, then the
  // subtraction and the product), so the rows do not depend on the tiling. copula_base then takes one row's
  // arguments: per block of 64, geometric skipping at the block's largest Phi(arg_f) and thinning to each
  // candidate's own. It appends the fired ids to list and returns their count.
  auto copula_args = [&](const float* zs, float* args) {  // zs: (kCopulaTile, r); args: (kCopulaTile, padded)
    const int64_t nbp = base_padded_;
    const float* lt = base_load_t_.data();
    for (int64_t f0 = 0; f0 < nbp; f0 += 8) {
      Float8 acc[kCopulaTile];
#pragma GCC unroll 8
      for (int t = 0; t < kCopulaTile; ++t) acc[t] = splat8(0.0f);
      const float* l = lt + f0;
      for (int64_t k = 0; k < r; ++k, l += nbp) {
        const Float8 lk = load8(l);
#pragma GCC unroll 8
        for (int t = 0; t < kCopulaTile; ++t) acc[t] = fma8(lk, splat8(zs[t * r + k]), acc[t]);
      }
      const Float8 thr = load8(base_thr_.data() + f0), inv_sigma = load8(base_inv_sigma_.data() + f0);
#pragma GCC unroll 8
      for (int t = 0; t < kCopulaTile; ++t) store8(args + t * nbp + f0, (acc[t] - thr) * inv_sigma);
    }
  };
  auto copula_base = [&](WyRowRng& rng, const float* arg, int32_t* list) {
    const int64_t nb = static_cast<int64_t>(base_ids_.size());
    int64_t len = 0;
    for (int64_t b0 = 0; b0 < nb; b0 += kCopulaBlock) {
      const int64_t b1 = std::min(nb, b0 + kCopulaBlock);
      float top = -std::numeric_limits<float>::infinity();
      for (int64_t b = b0; b < b1; ++b) top = std::max(top, arg[b]);
      const double rate = normal_cdf(top);
      if (!(rate > 0.0)) continue;
      const double inv_log1m = rate < 1.0 ? 1.0 / std::log1p(-rate) : 0.0;
      for (int64_t b = b0;; ++b) {
        if (inv_log1m != 0.0) {
          const double skip = std::floor(std::log(1.0 - rng.uniform()) * inv_log1m);
          if (skip >= static_cast<double>(b1 - b)) break;
          b += static_cast<int64_t>(skip);
        } else if (b >= b1) {
          break;
        }
        if (rng.uniform() * rate < normal_cdf(arg[b])) list[len++] = base_ids_[b];
      }
    }
    return len;
  };

  parallel_for(
      n,
      [&](int64_t begin, int64_t end, int) {
        // Directions that fit in this core's caches, and rows that will use about all of them: one
        // sequential pass over them first. Otherwise each line is fetched on its first use, one latency at a
        // time, from wherever the work between two sample() calls (a training step) left it: that cost
        // 4-7% of synth-lite's generation next to a BatchTopK step (docs/synth-bench.md, "Generation speed").
        if (end - begin >= warm_min_rows_)
          warm_lines(half_ ? static_cast<const void*>(dirs_half_.data()) : dirs,
                     m_.n_features() * stride * (half_ ? 2 : 4));
        if (small_) {
          switch ((d + 7) / 8) {
            case 1: small_rows.template operator()<1>(begin, end); break;
            case 2: small_rows.template operator()<2>(begin, end); break;
            case 3: small_rows.template operator()<3>(begin, end); break;
            case 4: small_rows.template operator()<4>(begin, end); break;
            case 5: small_rows.template operator()<5>(begin, end); break;
            case 6: small_rows.template operator()<6>(begin, end); break;
            case 7: small_rows.template operator()<7>(begin, end); break;
            default: small_rows.template operator()<8>(begin, end); break;
          }
          return;
        }
        // Fired features of the row, list[0, len): base ones, then children. N + 1 long (a feature is listed
        // at most once; the entry past len is scratch), so appends need no branch on the outcome or size.
        std::vector<int32_t> list(static_cast<size_t>(m_.n_features() + 1));
        std::vector<int32_t> ppos(scale_children ? list.size() : 0);  // list position of each child's parent
        std::vector<float> amag;                                        // (list) magnitudes, scalar
        // Copula: the arguments of Phi for a tile of rows, and the tile's normals z, bounds and generator
        // states after drawing z (rows past the thread's end: z = 0, unused).
        std::vector<float> carg(static_cast<size_t>(copula_ ? kCopulaTile * base_padded_ : 0));
        std::vector<float> tile_z(static_cast<size_t>(copula_ ? kCopulaTile * r : 0));
        double tile_log_bound[kCopulaTile] = {};
        uint64_t tile_state[kCopulaTile] = {};
        // The row's sum runs one row late: its output row is prefetched for writing when the row's features
        // are known, and written after the next row is drawn. Slot i % 2 holds row i. (Prefetching each row's
        // directions too cost 15% more instructions and showed no gain next to training; the one pass over
        // all of them above does gain. Summing a block of rows 64 coordinates at a time, so that a pass reads
        // only a 256-byte slice of each direction, was slower: 2-4% at 64 rows, 20% at 1024.)
        struct Pending {
          std::vector<Float8> mags;              // (list) magnitudes, broadcast
          std::vector<const float*> vptr;        // (list) directions (float copy)
          std::vector<const uint16_t*> hptr;     // (list) directions (binary16 copy, when half_)
          std::vector<float> noise;              // (stride) bias + noise, when the model has noise
          int64_t n = 0;                         // entries in use
          float* x = nullptr;
          const float* x0 = nullptr;
        } slots[2];
        auto sum_row = [&](const Pending& row) {
          if (half_) {
            add_directions(row.hptr.data(), row.mags.data(), row.n, d, row.x0, row.x);
          } else {
            add_directions(row.vptr.data(), row.mags.data(), row.n, d, row.x0, row.x);
          }
        };
        std::vector<float> szk(static_cast<size_t>(r));  // s z_k
        std::vector<float> z(static_cast<size_t>(r));
        std::vector<float> prob(static_cast<size_t>(nd));
        std::vector<uint32_t> ubits(static_cast<size_t>(nd));
        alignas(64) float normals[kNormalBlock];
        for (int64_t i = begin; i < end; ++i) {
          WyRowRng rng(key, static_cast<uint64_t>(row0 + i));
          // Correlation factor of this row and its bound over unit loadings: exp(s |z| - s^2/2).
          // For skipping it is rounded up to the next 2^(l/4) (level l, rates precomputed).
          auto draw_z = [&](WyRowRng& g, float* zr) {
            double n2 = 0.0;
            for (int64_t k0 = 0; k0 < r; k0 += kNormalBlock) {
              const int64_t mb = std::min(kNormalBlock, r - k0);
              normals_block(g, zt, zr + k0, mb);
              for (int64_t k = k0; k < k0 + mb; ++k) n2 += static_cast<double>(zr[k]) * zr[k];
            }
            return s * std::sqrt(n2) - 0.5 * s * s;
          };
          double log_bound = 0.0;
          int64_t len = 0;
          if (copula_) {
            const int64_t t = (i - begin) % kCopulaTile;
            if (t == 0) {
              const int64_t rows = std::min<int64_t>(kCopulaTile, end - i);
              std::fill(tile_z.begin() + rows * r, tile_z.end(), 0.0f);
              for (int64_t u = 0; u < rows; ++u) {
                WyRowRng g(key, static_cast<uint64_t>(row0 + i + u));
                tile_log_bound[u] = draw_z(g, tile_z.data() + u * r);
                tile_state[u] = g.s;
              }
              copula_args(tile_z.data(), carg.data());
            }
            rng.s = tile_state[t];
            log_bound = tile_log_bound[t];
            std::copy_n(tile_z.data() + t * r, r, z.begin());
            len = copula_base(rng, carg.data() + t * base_padded_, list.data());
          } else if (r > 0) {
            log_bound = draw_z(rng, z.data());
          }
          const double level_real = std::ceil(log_bound * levels_per_nat);
          const int level = level_real <= 0.0 ? 0 : static_cast<int>(std::min<double>(level_real, kBoundLevels));
          // Dense base features: p_f(z) for all of them and one 24-bit uniform each; the hits are appended
          // in id order.
          if (n_dense > 0) {
            const float* pr = dense_p_.data();
            if (r > 0) {
              // logp_f + s L_f . z, sixteen features at a time in two registers, then exp.
              float* p_row = prob.data();
              const float* lt = dense_load_t_.data();
              for (int64_t k = 0; k < r; ++k) szk[k] = sf * z[k];
              for (int64_t f0 = 0; f0 < nd; f0 += 16) {
                Float8 acc0 = load8(dense_logp_.data() + f0), acc1 = load8(dense_logp_.data() + f0 + 8);
                const float* l = lt + f0;
                for (int64_t k = 0; k < r; ++k, l += nd) {
                  const Float8 zk = splat8(szk[k]);
                  acc0 = fma8(load8(l), zk, acc0);
                  acc1 = fma8(load8(l + 8), zk, acc1);
                }
                store8(p_row + f0, acc0);
                store8(p_row + f0 + 8, acc1);
              }
              for (int64_t f = 0; f < nd; ++f) p_row[f] = msae::detail::exp_fast(p_row[f]);
              pr = p_row;
            }
            // One 32-bit half of a draw per feature (padding excluded).
            for (int64_t f = 0; f < n_dense; f += 2) {
              const uint64_t b = rng.next();
              ubits[f] = static_cast<uint32_t>(b);
              ubits[f + 1] = static_cast<uint32_t>(b >> 32);
            }
            // Hits as a bit mask per 32 features, then only the set bits are visited (padding masked off).
            const int32_t* ids_dense = dense_ids_.data();
            for (int64_t f0 = 0; f0 < n_dense; f0 += 32) {
              const int64_t m = std::min<int64_t>(32, nd - f0);
              uint32_t mask = 0;
              for (int64_t j = 0; j < m; j += 8) mask |= hits8(ubits.data() + f0 + j, pr + f0 + j) << j;
              if (n_dense - f0 < 32) mask &= (uint32_t{1} << (n_dense - f0)) - 1;
              for (; mask != 0; mask &= mask - 1) list[len++] = ids_dense[f0 + std::countr_zero(mask)];
            }
          }
          // Sparse base features: geometric skipping per segment, then thinning to p_f(z).
          for (size_t g = 0; g < segments_.size(); ++g) {
            const Segment& seg = segments_[g];
            double q, inv_log1m_q;
            if (level < kBoundLevels) {
              q = seg_rate_[g * kBoundLevels + level];
              inv_log1m_q = seg_inv_log1m_[g * kBoundLevels + level];
            } else {  // bound >= 2^16: computed here
              q = std::min(1.0, seg.q * std::exp(log_bound));
              inv_log1m_q = q < 1.0 ? 1.0 / std::log1p(-q) : 0.0;
            }
            for (int64_t b = seg.begin;; ++b) {
              if (inv_log1m_q != 0.0) {
                const double skip = std::floor(std::log(1.0 - rng.uniform()) * inv_log1m_q);
                if (skip >= static_cast<double>(seg.end - b)) break;
                b += static_cast<int64_t>(skip);
              } else if (b >= seg.end) {
                break;
              }
              const int32_t f = sparse_ids_[b];
              double p = sparse_p_[b];
              if (r > 0) p *= msae::detail::exp_fast(sf * dot_fixed(load + static_cast<int64_t>(f) * r, z.data(), r) - half_s2);
              if (rng.uniform() * q < p) {
                list[len++] = f;
              }
            }
          }
          len = add_children(rng, list.data(), len, scale_children ? ppos.data() : nullptr);
          // Magnitudes: N(mean_f, std_f^2) clipped to >= kMinMagnitude.
          const int64_t nl = len;
          Pending& row = slots[i & 1];
          std::vector<Float8>& mags = row.mags;
          std::vector<const float*>& vptr = row.vptr;
          std::vector<const uint16_t*>& hptr = row.hptr;
          if (static_cast<int64_t>(mags.size()) < nl) {
            mags.resize(static_cast<size_t>(nl));
            vptr.resize(static_cast<size_t>(nl));
            hptr.resize(static_cast<size_t>(nl));
          }
          row.n = nl;
          for (int64_t t0 = 0; t0 < nl; t0 += kNormalBlock) {
            const int64_t mb = std::min(kNormalBlock, nl - t0);
            normals_block(rng, zt, normals, mb);
            for (int64_t t = 0; t < mb; ++t) {
              const int32_t f = list[t0 + t];
              if (scale_children) {
                // SAELens's scale_children_by_parent: a child's value times its parent's (final) value over the
                // parent's mean magnitude. Parents are listed before their children, so theirs is known.
                if (amag.size() < static_cast<size_t>(nl)) amag.resize(static_cast<size_t>(nl));
                float a = std::max(mag_mean[f] + mag_std[f] * normals[t], kMinMagnitude);
                const int32_t p = m_.parent[f];
                if (p >= 0) a *= amag[static_cast<size_t>(ppos[t0 + t])] / mag_mean[p];
                amag[static_cast<size_t>(t0 + t)] = a;
                mags[t0 + t] = splat8(a);
              } else {
                mags[t0 + t] = magnitude(f, normals[t]);
              }
              if (half_) {
                hptr[t0 + t] = dirs_half_.data() + static_cast<int64_t>(f) * stride;
              } else {
                vptr[t0 + t] = dirs + static_cast<int64_t>(f) * stride;
              }
            }
          }
          // x = bias (+ noise) + sum of the fired directions times their magnitudes: the noise now, the
          // sum after the next row is drawn (or at the end).
          row.x = out + i * d;
          row.x0 = bias;
          if (m_.noise_std > 0.0f) {
            row.noise.resize(static_cast<size_t>(stride));
            add_gaussian(rng, zt, bias, m_.noise_std, row.noise.data(), d);
            row.x0 = row.noise.data();
          }
          for (int64_t j = 0; j < d; j += 64) {  // the row it will write, 4 lines at a time
            __builtin_prefetch(row.x + j, 1);
            __builtin_prefetch(row.x + std::min(j + 16, d - 1), 1);
            __builtin_prefetch(row.x + std::min(j + 32, d - 1), 1);
            __builtin_prefetch(row.x + std::min(j + 48, d - 1), 1);
          }
          if (i > begin) {
            const Pending& prev = slots[(i - 1) & 1];
            sum_row(prev);
          }
          record_fired(i, list.data(), len);
        }
        const Pending& last = slots[(end - 1) & 1];
        sum_row(last);
      },
      64);

  if (fired) {
    fired->offsets.assign(1, 0);
    fired->ids.clear();
    for (auto& v : ids) {
      fired->ids.insert(fired->ids.end(), v.begin(), v.end());
      fired->offsets.push_back(static_cast<int64_t>(fired->ids.size()));
    }
  }
  next_row_ += n;
}

}  // namespace msae::synth
