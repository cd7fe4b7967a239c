// msae synth: synthetic activations with known ("planted") features, for ground-truth evaluation.
//
// A planted dictionary has N features, each a unit direction in R^d, with a two-level hierarchy:
// roots (parents), children that fire only when their parent fires (and at most one child per parent),
// and independent features. A row is
//   x = bias + sum over fired features f of a_f * direction_f + noise,
// with magnitudes a_f ~ N(magnitude_mean, magnitude_std) clipped to >= 0.05 and noise ~ N(0, noise_std^2 I).
//
// Feature ids (the layout is part of the contract; truth files and tests rely on it):
//   [0, n_roots)                                   roots
//   n_roots + r * children_per_root + j            child j of root r (j < children_per_root)
//   [n_roots * (1 + children_per_root), N)         independent features
// Within each group, firing probabilities decay Zipf-like (a power law in the index) from *_prob_max at
// the first feature to *_prob_min at the last.
#pragma once

#include <cstdint>
#include <vector>

#include "msae/core.h"

namespace msae::synth {

struct PlantedConfig {
  int64_t d = 64;                  // activation width
  int64_t n_roots = 32;            // parent features
  int64_t children_per_root = 4;   // children fire only with their parent; siblings mutually exclusive
  int64_t n_independent = 96;      // features with no hierarchy
  double root_prob_max = 0.10, root_prob_min = 0.01;     // root firing probabilities, first .. last root
  double indep_prob_max = 0.05, indep_prob_min = 0.005;  // same for independent features
  double child_given_parent = 0.7;   // P(some child fires | parent fires); the child is chosen uniformly
  double child_parent_cosine = 0.4;  // cos(child direction, parent direction), exactly; in [0, 1)
  float magnitude_mean = 1.0f, magnitude_std = 0.15f;  // a_f ~ N(mean, std), clipped to >= 0.05
  float noise_std = 0.01f;           // isotropic Gaussian noise per coordinate
  bool with_bias = true;             // constant offset vector of norm 0.5 added to every row
  uint64_t seed = 0;                 // seeds the directions and the bias (not the row stream)
};

struct PlantedDictionary {
  PlantedConfig cfg;
  Tensor directions;              // (N, d), unit rows; roots and independents are Gaussian directions,
                                  // children have cosine cfg.child_parent_cosine with their parent
  std::vector<int64_t> parent;    // (N) parent feature id, or -1 for roots and independent features
  std::vector<double> fire_prob;  // (N) marginal firing probability per row
  Tensor bias;                    // (d), zero when !cfg.with_bias
  int64_t n_features() const { return static_cast<int64_t>(parent.size()); }  // N
};

// Builds the dictionary. Validates cfg and throws msae::Error (usage) naming the offending field.
PlantedDictionary make_planted(const PlantedConfig& cfg);

// Streams rows from a planted dictionary.
// Determinism: row i of the stream (counting from construction) depends only on (dictionary, seed, i):
// the output is the same for any thread count and any split of the stream into sample() calls.
// The sampler copies what it needs from the dictionary (no reference is kept). Not thread-safe itself;
// sample() parallelizes internally with OpenMP.
class PlantedSampler {
 public:
  PlantedSampler(const PlantedDictionary& dict, uint64_t seed);

  // Writes the next n rows to out (n, d), row-major. If active != nullptr, it is resized to n and
  // (*active)[r] receives the ascending list of feature ids that fired in row r.
  void sample(int64_t n, float* out, std::vector<std::vector<int32_t>>* active = nullptr);

  double mean_active() const;   // expected number of firing features per row (analytic)
  int64_t position() const { return next_row_; }  // rows produced so far

  // Opaque stream state for checkpoints: restoring it makes the next sample() continue exactly.
  // set_rng_state throws msae::Error (runtime) on a state of the wrong size.
  std::vector<uint64_t> rng_state() const;
  void set_rng_state(const std::vector<uint64_t>& state);

 private:
  int64_t d_ = 0, n_roots_ = 0, children_ = 0, n_indep_ = 0;
  FloatBuffer dirs_;                   // (N, d)
  FloatBuffer bias_;                   // (d)
  // Firing of roots and independent features ("base" features b in [0, n_roots + n_independent),
  // roots first) by geometric skipping: the base list is cut into segments whose probabilities lie
  // within a factor 2 of the segment maximum q; candidates are drawn with probability q by skipping
  // Geometric(q) features, then accepted with probability p_b / q. Cost per row: O(segments + fires).
  struct Segment {
    int64_t begin = 0, end = 0;   // base feature range
    double inv_log1m_q = 0.0;     // 1 / log(1 - q); 0 when q = 1 (every feature is a candidate)
    double p_none = 0.0;          // (1 - q)^(end - begin): P(no candidate in the segment)
  };
  std::vector<Segment> segments_;
  std::vector<double> accept_;         // (n_roots + n_independent) p_b / q of its segment
  double child_given_parent_ = 0.0;
  float mag_mean_ = 1.0f, mag_std_ = 0.0f, noise_std_ = 0.0f;
  double mean_active_ = 0.0;
  uint64_t key_ = 0;                   // stream key, from (dictionary seed, sampler seed)
  int64_t next_row_ = 0;               // index of the next row in the stream
};

// The embedded default dataset of `msae train` with no data: d=64, the defaults above, seed 0.
PlantedConfig default_planted_config();

}  // namespace msae::synth
