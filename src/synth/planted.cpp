// Planted-dictionary generator (see include/msae/synth.h for the contract).
#include <algorithm>
#include <cmath>
#include <limits>

#include "msae/synth.h"
#include "synth/row_rng.h"

namespace msae::synth {
namespace {

using namespace detail;

constexpr float kMinMagnitude = 0.05f;
constexpr double kBiasNorm = 0.5;
// Zipf-like decay: p_i = p_max / (1 + i)^alpha, with alpha chosen so that p_{n-1} = p_min.
std::vector<double> zipf_probs(int64_t n, double p_max, double p_min) {
  std::vector<double> p(static_cast<size_t>(n));
  const double alpha = n > 1 ? std::log(p_max / p_min) / std::log(static_cast<double>(n)) : 0.0;
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = p_max / std::pow(1.0 + static_cast<double>(i), alpha);
  if (n > 1) p[static_cast<size_t>(n - 1)] = p_min;  // exact despite rounding in pow
  return p;
}

void normalize(float* v, int64_t d) {
  double norm2 = 0.0;
  for (int64_t j = 0; j < d; ++j) norm2 += static_cast<double>(v[j]) * v[j];
  const float inv = static_cast<float>(1.0 / std::sqrt(norm2));
  for (int64_t j = 0; j < d; ++j) v[j] *= inv;
}

// A unit vector with cosine exactly `cosine` to the unit vector `parent` (up to float rounding):
// cosine * parent + sqrt(1 - cosine^2) * (a random unit vector orthogonal to parent).
void correlated_unit(Rng& rng, const float* parent, double cosine, float* v, int64_t d) {
  std::vector<double> r(static_cast<size_t>(d));
  for (;;) {
    double dot = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      r[static_cast<size_t>(j)] = rng.normal();
      dot += r[static_cast<size_t>(j)] * parent[j];
    }
    double norm2 = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      r[static_cast<size_t>(j)] -= dot * parent[j];
      norm2 += r[static_cast<size_t>(j)] * r[static_cast<size_t>(j)];
    }
    if (norm2 > 1e-12) {
      const double s = std::sqrt(1.0 - cosine * cosine) / std::sqrt(norm2);
      for (int64_t j = 0; j < d; ++j) v[j] = static_cast<float>(cosine * parent[j] + s * r[static_cast<size_t>(j)]);
      normalize(v, d);
      return;
    }
  }
}

bool is_prob(double p) { return p > 0.0 && p <= 1.0; }  // false for NaN

void validate(const PlantedConfig& c) {
  constexpr int64_t kMaxDim = int64_t{1} << 20;
  constexpr int64_t kMaxFeatures = int64_t{1} << 24;
  if (c.d < 1 || c.d > kMaxDim) usage_error("planted config: d must be in [1, ", kMaxDim, "], got ", c.d);
  if (c.n_roots < 0 || c.n_roots > kMaxFeatures)
    usage_error("planted config: n_roots must be in [0, ", kMaxFeatures, "], got ", c.n_roots);
  if (c.children_per_root < 0 || c.children_per_root > 1024)
    usage_error("planted config: children_per_root must be in [0, 1024], got ", c.children_per_root);
  if (c.n_independent < 0 || c.n_independent > kMaxFeatures)
    usage_error("planted config: n_independent must be in [0, ", kMaxFeatures, "], got ", c.n_independent);
  const int64_t n = c.n_roots * (1 + c.children_per_root) + c.n_independent;
  if (n < 1) usage_error("planted config: the dictionary has no features (n_roots = ", c.n_roots,
                         ", n_independent = ", c.n_independent, "); hint: set n_roots or n_independent > 0");
  if (n > kMaxFeatures) usage_error("planted config: ", n, " features is more than the limit ", kMaxFeatures);
  if (n * c.d > (int64_t{1} << 32))
    usage_error("planted config: directions (", n, ", ", c.d, ") would need more than 2^32 floats");
  if (c.n_roots > 0) {
    if (!is_prob(c.root_prob_max) || !is_prob(c.root_prob_min) || c.root_prob_min > c.root_prob_max)
      usage_error("planted config: need 0 < root_prob_min <= root_prob_max <= 1, got root_prob_min = ",
                  c.root_prob_min, ", root_prob_max = ", c.root_prob_max);
  }
  if (c.n_independent > 0) {
    if (!is_prob(c.indep_prob_max) || !is_prob(c.indep_prob_min) || c.indep_prob_min > c.indep_prob_max)
      usage_error("planted config: need 0 < indep_prob_min <= indep_prob_max <= 1, got indep_prob_min = ",
                  c.indep_prob_min, ", indep_prob_max = ", c.indep_prob_max);
  }
  if (!(c.child_given_parent >= 0.0 && c.child_given_parent <= 1.0))
    usage_error("planted config: child_given_parent must be in [0, 1], got ", c.child_given_parent);
  if (!(c.child_parent_cosine >= 0.0 && c.child_parent_cosine < 1.0))
    usage_error("planted config: child_parent_cosine must be in [0, 1), got ", c.child_parent_cosine);
  if (c.n_roots > 0 && c.children_per_root > 0 && c.d < 2)
    usage_error("planted config: children need d >= 2 (a child direction differs from its parent), got d = ", c.d);
  if (!(std::isfinite(c.magnitude_mean) && c.magnitude_mean > 0.0f))
    usage_error("planted config: magnitude_mean must be finite and > 0, got ", c.magnitude_mean);
  if (!(std::isfinite(c.magnitude_std) && c.magnitude_std >= 0.0f))
    usage_error("planted config: magnitude_std must be finite and >= 0, got ", c.magnitude_std);
  if (!(std::isfinite(c.noise_std) && c.noise_std >= 0.0f))
    usage_error("planted config: noise_std must be finite and >= 0, got ", c.noise_std);
}

}  // namespace

PlantedConfig default_planted_config() { return PlantedConfig{}; }

PlantedDictionary make_planted(const PlantedConfig& cfg) {
  validate(cfg);
  const int64_t d = cfg.d, R = cfg.n_roots, C = cfg.children_per_root, I = cfg.n_independent;
  const int64_t first_indep = R * (1 + C);
  const int64_t N = first_indep + I;

  PlantedDictionary dict;
  dict.cfg = cfg;
  dict.directions = Tensor({N, d});
  dict.parent.assign(static_cast<size_t>(N), -1);
  dict.fire_prob.assign(static_cast<size_t>(N), 0.0);
  dict.bias = Tensor({d});

  // Separate streams per purpose, so that e.g. turning the bias off leaves the directions unchanged.
  Rng base(cfg.seed);
  Rng dir_rng = base.split(1);
  Rng bias_rng = base.split(2);

  float* dirs = dict.directions.ptr();
  const std::vector<double> root_p = zipf_probs(R, cfg.root_prob_max, cfg.root_prob_min);
  const std::vector<double> indep_p = zipf_probs(I, cfg.indep_prob_max, cfg.indep_prob_min);
  for (int64_t r = 0; r < R; ++r) {
    random_unit(dir_rng, dirs + r * d, d);
    dict.fire_prob[static_cast<size_t>(r)] = root_p[static_cast<size_t>(r)];
  }
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t j = 0; j < C; ++j) {
      const int64_t f = R + r * C + j;
      correlated_unit(dir_rng, dirs + r * d, cfg.child_parent_cosine, dirs + f * d, d);
      dict.parent[static_cast<size_t>(f)] = r;
      dict.fire_prob[static_cast<size_t>(f)] =
          root_p[static_cast<size_t>(r)] * cfg.child_given_parent / static_cast<double>(C);
    }
  }
  for (int64_t i = 0; i < I; ++i) {
    random_unit(dir_rng, dirs + (first_indep + i) * d, d);
    dict.fire_prob[static_cast<size_t>(first_indep + i)] = indep_p[static_cast<size_t>(i)];
  }
  if (cfg.with_bias) {
    float* b = dict.bias.ptr();
    random_unit(bias_rng, b, d);
    for (int64_t j = 0; j < d; ++j) b[j] *= static_cast<float>(kBiasNorm);
  }
  return dict;
}

PlantedSampler::PlantedSampler(const PlantedDictionary& dict, uint64_t seed) {
  const PlantedConfig& c = dict.cfg;
  d_ = c.d;
  n_roots_ = c.n_roots;
  children_ = c.children_per_root;
  n_indep_ = c.n_independent;
  const int64_t N = n_roots_ * (1 + children_) + n_indep_;
  MSAE_ASSERT(dict.n_features() == N && static_cast<int64_t>(dict.fire_prob.size()) == N,
              "dictionary does not match its config");
  MSAE_ASSERT(dict.directions.numel() == N * d_ && dict.bias.numel() == d_, "dictionary shapes");
  dirs_.assign(dict.directions.data.begin(), dict.directions.data.end());
  bias_.assign(dict.bias.data.begin(), dict.bias.data.end());
  // Base features: roots, then independent features.
  const int64_t first_indep = n_roots_ * (1 + children_);
  const int64_t n_base = n_roots_ + n_indep_;
  std::vector<double> p(static_cast<size_t>(n_base));
  for (int64_t b = 0; b < n_base; ++b) {
    const int64_t f = b < n_roots_ ? b : first_indep + (b - n_roots_);
    p[static_cast<size_t>(b)] = std::clamp(dict.fire_prob[static_cast<size_t>(f)], 0.0, 1.0);
  }
  accept_.assign(static_cast<size_t>(n_base), 0.0);
  for (int64_t b = 0; b < n_base;) {
    const double q = p[static_cast<size_t>(b)];
    int64_t e = b + 1;
    // Segments never straddle the roots/independents boundary (sample() relies on it for id order).
    while (e < n_base && e != n_roots_ && p[static_cast<size_t>(e)] <= q && p[static_cast<size_t>(e)] > 0.5 * q) ++e;
    if (q > 0.0) {  // a segment of never-firing features needs no segment at all
      Segment seg;
      seg.begin = b;
      seg.end = e;
      seg.inv_log1m_q = q < 1.0 ? 1.0 / std::log1p(-q) : 0.0;
      seg.p_none = q < 1.0 ? std::exp(static_cast<double>(e - b) * std::log1p(-q)) : 0.0;
      segments_.push_back(seg);
      for (int64_t k = b; k < e; ++k) accept_[static_cast<size_t>(k)] = p[static_cast<size_t>(k)] / q;
    }
    b = e;
  }
  child_given_parent_ = children_ > 0 ? c.child_given_parent : 0.0;
  mag_mean_ = c.magnitude_mean;
  mag_std_ = c.magnitude_std;
  noise_std_ = c.noise_std;
  mean_active_ = 0.0;
  for (double fp : dict.fire_prob) mean_active_ += fp;
  key_ = mix64(mix64(c.seed ^ 0x5eed5eed5eed5eedULL) + seed * kGamma);
  next_row_ = 0;
}

double PlantedSampler::mean_active() const { return mean_active_; }

std::vector<uint64_t> PlantedSampler::rng_state() const { return {key_, static_cast<uint64_t>(next_row_)}; }

void PlantedSampler::set_rng_state(const std::vector<uint64_t>& state) {
  if (state.size() != 2)
    runtime_error("planted sampler: rng state must have 2 words, got ", state.size(),
                  "; hint: the checkpoint was not written by this sampler");
  if (state[1] > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    runtime_error("planted sampler: rng state row position ", state[1], " is out of range");
  key_ = state[0];
  next_row_ = static_cast<int64_t>(state[1]);
}

void PlantedSampler::sample(int64_t n, float* out, std::vector<std::vector<int32_t>>* active) {
  MSAE_ASSERT(n >= 0, "n = ", n);
  if (active) active->assign(static_cast<size_t>(n), {});
  if (n == 0) return;
  MSAE_ASSERT(out != nullptr);

  const ZigTables& zt = zig_tables();
  const int64_t d = d_, R = n_roots_, C = children_;
  const int64_t first_child = R, first_indep = R * (1 + C);
  const float* dirs = dirs_.data();
  const float* bias = bias_.data();
  const uint64_t key = key_;
  const int64_t row0 = next_row_;

#pragma omp parallel if (n >= 256)
  {
    std::vector<int32_t> kids;  // fired children of the current row, appended after the roots
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      RowRng rng(key, static_cast<uint64_t>(row0 + i));
      float* x = out + i * d;
      if (noise_std_ > 0.0f) {
        add_gaussian(rng, zt, bias, noise_std_, x, d);
      } else {
        for (int64_t j = 0; j < d; ++j) x[j] = bias[j];
      }
      std::vector<int32_t>* ids = active ? &(*active)[static_cast<size_t>(i)] : nullptr;
      kids.clear();
      auto add = [&](int64_t f) {
        float a = mag_mean_ + mag_std_ * static_cast<float>(zig_normal(rng, zt));
        a = std::max(a, kMinMagnitude);
        const float* v = dirs + f * d;
        for (int64_t j = 0; j < d; ++j) x[j] += a * v[j];
      };
      auto fire = [&](int64_t b) {
        if (b >= R) {  // independent feature (all roots come before: their children are already in kids)
          add(first_indep + (b - R));
          if (ids) ids->push_back(static_cast<int32_t>(first_indep + (b - R)));
          return;
        }
        add(b);
        if (ids) ids->push_back(static_cast<int32_t>(b));
        if (C > 0 && rng.uniform() < child_given_parent_) {
          const int64_t f = first_child + b * C + static_cast<int64_t>(rng.below(static_cast<uint64_t>(C)));
          add(f);
          if (ids) kids.push_back(static_cast<int32_t>(f));
        }
      };
      bool kids_flushed = false;
      for (const Segment& seg : segments_) {
        if (!kids_flushed && seg.begin >= R) {
          if (ids) ids->insert(ids->end(), kids.begin(), kids.end());
          kids_flushed = true;
        }
        for (int64_t b = seg.begin;; ++b) {
          if (seg.inv_log1m_q != 0.0) {
            // Failures before the next candidate: floor(log(U) / log(1 - q)), U in (0, 1]. Most
            // segments have no candidate at all, and U <= p_none decides that without the log.
            const double u = 1.0 - rng.uniform();
            if (b == seg.begin && u <= seg.p_none) break;
            const double skip = std::floor(std::log(u) * seg.inv_log1m_q);
            if (skip >= static_cast<double>(seg.end - b)) break;
            b += static_cast<int64_t>(skip);
          } else if (b >= seg.end) {
            break;
          }
          const double acc = accept_[static_cast<size_t>(b)];
          if (acc >= 1.0 || rng.uniform() < acc) fire(b);
        }
      }
      if (ids && !kids_flushed) ids->insert(ids->end(), kids.begin(), kids.end());
    }
  }
  next_row_ += n;
}

}  // namespace msae::synth
