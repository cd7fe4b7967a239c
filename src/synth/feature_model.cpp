// Feature models and their sampler (see include/msae/synth.h for the contract).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "msae/synth.h"
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

}  // namespace

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
  // Conditional probabilities: child marginal / parent marginal, sibling mass capped.
  std::vector<double> marg(N);
  for (int64_t f = 0; f < N; ++f) {
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
  make_loadings(m, corr_rng, c.corr_rank, c.corr_scale);
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

std::vector<std::string> preset_names() { return {"synth-lite", "synth-16k", "tree", "absorption"}; }

FeatureModel make_preset(const std::string& name, uint64_t seed) {
  if (name == "synth-16k") {
    HierarchicalConfig c;  // the defaults are the SynthSAEBench-16k parameters
    c.seed = seed;
    FeatureModel m = make_hierarchical(c);
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

FeatureSampler::FeatureSampler(const FeatureModel& model, uint64_t seed) : m_(model) {
  const int64_t N = m_.n_features();
  MSAE_ASSERT(N > 0 && m_.directions.numel() == N * m_.d && m_.bias.numel() == m_.d);
  for (int64_t f = 0; f < N; ++f)
    if (m_.parent[f] < 0 && m_.cond_prob[f] > 0.0) {
      base_.push_back(static_cast<int32_t>(f));
      base_p_.push_back(std::min(1.0, m_.cond_prob[f]));
    }
  // Segments of base features whose probabilities lie within a factor 2 of the segment maximum q:
  // candidates come by geometric skipping at rate q' (q times the row's correlation bound), then are
  // accepted with probability p_f(z) / q'. Cost per row: O(segments + candidates).
  const int64_t nb = static_cast<int64_t>(base_.size());
  for (int64_t b = 0; b < nb;) {
    Segment s;
    s.begin = b;
    s.q = base_p_[b];
    int64_t e = b + 1;
    while (e < nb && base_p_[e] <= s.q && base_p_[e] > 0.5 * s.q) ++e;
    s.end = e;
    segments_.push_back(s);
    b = e;
  }
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
  const float* dirs = m_.directions.ptr();
  const float* bias = m_.bias.ptr();
  const float* load = r > 0 ? m_.loadings.ptr() : nullptr;
  const uint64_t key = key_;
  const int64_t row0 = next_row_;
  std::vector<std::vector<int32_t>> ids(fired ? n : 0);

  parallel_for(
      n,
      [&](int64_t begin, int64_t end, int) {
        std::vector<int32_t> local;
        std::vector<double> z(static_cast<size_t>(r));
        for (int64_t i = begin; i < end; ++i) {
          RowRng rng(key, static_cast<uint64_t>(row0 + i));
          float* x = out + i * d;
          if (m_.noise_std > 0.0f)
            add_gaussian(rng, zt, bias, m_.noise_std, x, d);
          else
            std::copy(bias, bias + d, x);
          local.clear();
          // Correlation factor of this row and its bound over unit loadings: exp(s |z| - s^2/2).
          double bound = 1.0;
          if (r > 0) {
            double n2 = 0.0;
            for (auto& v : z) {
              v = zig_normal(rng, zt);
              n2 += v * v;
            }
            bound = std::exp(s * std::sqrt(n2) - 0.5 * s * s);
          }
          auto fire = [&](int32_t f) {
            // The feature and, recursively, at most one child per fired parent.
            for (;;) {
              float a = m_.mag_mean[f] + m_.mag_std[f] * static_cast<float>(zig_normal(rng, zt));
              a = std::max(a, kMinMagnitude);
              const float* v = dirs + static_cast<int64_t>(f) * d;
              for (int64_t j = 0; j < d; ++j) x[j] += a * v[j];
              local.push_back(f);
              const int32_t nc = m_.n_children[f];
              if (nc == 0) return;
              double u = rng.uniform();
              int32_t chosen = -1;
              for (int32_t c = 0; c < nc; ++c) {
                const double pc = m_.cond_prob[m_.first_child[f] + c];
                if (u < pc) {
                  chosen = m_.first_child[f] + c;
                  break;
                }
                u -= pc;
              }
              if (chosen < 0) return;
              f = chosen;
            }
          };
          for (const Segment& seg : segments_) {
            const double q = std::min(1.0, seg.q * bound);
            const double inv_log1m_q = q < 1.0 ? 1.0 / std::log1p(-q) : 0.0;
            for (int64_t b = seg.begin;; ++b) {
              if (inv_log1m_q != 0.0) {
                const double skip = std::floor(std::log(1.0 - rng.uniform()) * inv_log1m_q);
                if (skip >= static_cast<double>(seg.end - b)) break;
                b += static_cast<int64_t>(skip);
              } else if (b >= seg.end) {
                break;
              }
              const int32_t f = base_[b];
              double p = base_p_[b];
              if (r > 0) {
                const float* L = load + static_cast<int64_t>(f) * r;
                double dot = 0.0;
                for (int64_t k = 0; k < r; ++k) dot += L[k] * z[k];
                p = std::min(1.0, p * std::exp(s * dot - 0.5 * s * s));
              }
              if (rng.uniform() * q < p) fire(f);
            }
          }
          if (fired) {
            std::sort(local.begin(), local.end());
            ids[i] = local;
          }
        }
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
