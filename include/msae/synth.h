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
#include <string>
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
  int64_t position() const { return next_row_; }
  // Continues the stream at `row` (rows are drawn from a counter-based RNG keyed by their index, so this
  // is exact: a resumed run sees the rows an uninterrupted one would have).
  void seek(int64_t row) { next_row_ = row; }  // rows produced so far

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


// ---------------------------------------------------------------------------------------------
// Feature models: the general ground-truth generator of `msae synth-bench` (docs/synth-bench.md).
//
// N features, each a unit direction in R^d, arranged as a forest: a feature with parent p fires only in
// rows where p fires, and the children of one parent are mutually exclusive (given that p fired, child c
// fires with probability cond_prob[c], none of them with 1 - sum). Parentless features ("base" features:
// roots and independent features) fire independently with probability cond_prob[f], modulated per row by
// an optional low-rank factor (correlated firing, below). A row is
//   x = bias + sum over fired f of a_f * direction_f + noise,   a_f ~ N(mag_mean[f], mag_std[f]^2)
// clipped to >= 0.05 (a fired feature always contributes), noise ~ N(0, noise_std^2 I).
//
// Ids are in breadth-first order within the forest: the children of a feature are contiguous
// ([first_child[f], first_child[f] + n_children[f])) and come after it.
//
// Correlation (corr_rank r > 0): each row draws z ~ N(0, I_r); base feature f fires with probability
// min(1, cond_prob[f] * exp(s * L_f . z - s^2 / 2)), with L_f a unit loading vector (r) and s = corr_scale.
// E[exp(s L.z - s^2/2)] = 1, so the marginal stays cond_prob[f] unless the min clips; two base features
// co-fire more (less) often than independent ones when their loadings point the same (opposite) way.
// ---------------------------------------------------------------------------------------------
struct FeatureModel {
  std::string name;                 // preset name or "custom"
  int64_t d = 0;                    // activation width
  Tensor directions;                // (N, d) unit rows (make_hierarchical: rounded to binary16 values)
  Tensor bias;                      // (d) constant offset
  std::vector<int32_t> parent;      // (N) parent id or -1
  std::vector<int32_t> depth;       // (N) 0 for parentless features
  std::vector<int32_t> first_child; // (N) first child id (valid when n_children > 0)
  std::vector<int32_t> n_children;  // (N)
  std::vector<double> cond_prob;    // (N) P(fire | parent fired), or P(fire) for parentless features
  std::vector<double> marginal;     // (N) P(fire) without correlation (product down the tree)
  std::vector<float> mag_mean, mag_std;  // (N) firing magnitude distribution
  Tensor loadings;                  // (N, r) unit rows for base features (zero rows elsewhere); empty when r = 0
                                    // (copula: the factor rows, below)
  double corr_scale = 0.0;          // s
  // Gaussian copula instead of the factor above (SynthSAEBench's correlation, make_hierarchical with
  // Correlation::copula): loadings holds a low-rank factor L (rows of squared norm < 1), and base feature f
  // fires when L_f . z + sqrt(1 - |L_f|^2) eta_f > Phi^-1(1 - cond_prob[f]), z ~ N(0, I_r) per row,
  // eta_f ~ N(0, 1) per feature: marginal cond_prob[f] exactly, correlation L_f . L_g between the normals.
  bool copula = false;
  // A child's magnitude is multiplied by its parent's (final) magnitude over the parent's mag_mean
  // (SAELens's scale_children_by_parent), so that child values cascade down the tree.
  bool scale_children_by_parent = false;
  float noise_std = 0.0f;
  uint64_t seed = 0;                // the seed the model was built from
  int64_t n_features() const { return static_cast<int64_t>(parent.size()); }
  int64_t corr_rank() const { return loadings.numel() == 0 ? 0 : loadings.cols(); }
  double expected_l0() const;       // sum of marginal
  int32_t max_depth() const;
};

// Parameters of a hierarchical model in the style of SynthSAEBench (Chanin & Garriga-Alonso 2026).
struct HierarchicalConfig {
  int64_t d = 768, n_features = 16384;
  double p_max = 0.4, p_min = 5e-4;  // Zipfian firing probabilities over the feature ids:
  double zipf_exponent = 0.5;         // r_i = (i + 1)^-exponent, rescaled linearly so that id 0 gets p_max
                                      // and id N-1 gets p_min
  int64_t n_roots = 128, branching = 4, depth = 3;  // forest: roots take the most frequent ids, then each
                                      // level in breadth-first order; the rest are independent features
  int64_t corr_rank = 25;
  double corr_scale = 0.3;
  float mag_first = 5.0f, mag_last = 4.0f;     // mean magnitude, linear over the ids
  float mag_std_mean = 0.5f, mag_std_std = 0.5f;  // per-feature std ~ |N(mean, std)| (folded normal)
  float bias_norm = 1.0f, noise_std = 0.0f;
  uint64_t seed = 0;
  // SynthSAEBench's generator as SAELens's code defines it (synthsaebench_16k_config, docs/synth-bench.md):
  //  - siblings: capped (above) or random_winner: every feature is drawn with its Zipf probability, a
  //    child's compensated to z_c / z_p * (1 + (z_siblings - z_c) / z_p) (clamped to 1); a child is kept
  //    only if its parent fired, and of several siblings drawn one, chosen uniformly, is kept. The model
  //    stores the result: cond_prob[c] = P(c is kept | parent fired) (me_win_probabilities).
  //  - correlation: factor (above) or copula (FeatureModel::copula; factor entries N(0, corr_scale^2),
  //    scaled down if a row's squared norm exceeds 0.99), over the parentless features.
  //  - scale_children_by_parent (FeatureModel).
  //  - ortho_steps > 0: the directions are orthogonalized (orthogonalize_directions) before rounding.
  enum class Siblings { capped, random_winner };
  enum class Correlation { factor, copula };
  Siblings siblings = Siblings::capped;
  Correlation correlation = Correlation::factor;
  bool scale_children_by_parent = false;
  int64_t ortho_steps = 0;
  double ortho_lr = 3e-4;
};
// The synthsaebench-16k preset's configuration (SynthSAEBench-16k's create_synth_bench_16k_model.py).
HierarchicalConfig synthsaebench_16k_config(uint64_t seed);

// Given that their parent fired, siblings are drawn independently with probabilities q and one drawn
// sibling, chosen uniformly, is kept: P(sibling i is kept) = q_i E[1 / (1 + K_i)], K_i the number of the
// others drawn (a Poisson-binomial count). Exact; O(n^3) for n siblings.
std::vector<double> me_win_probabilities(const std::vector<double>& q);
// Phi^-1(p), the standard normal quantile (relative error ~1e-15 after two Newton steps); +-inf at 0, 1.
double normal_quantile(double p);
// SAELens's orthogonalize_embeddings on the (N, d) rows of E, in place: rows normalized, `steps` Adam
// steps (lr, betas 0.9 / 0.999, eps 1e-8) on sum_{i != j} (e_i . e_j)^2 + N sum_i (|e_i|^2 - 1)^2,
// rows normalized again. Costs about 4 N d^2 flops per step (two GEMMs through the d x d Gram matrix, in
// fixed parts: the result does not depend on the thread count).
void orthogonalize_directions(float* E, int64_t N, int64_t d, int64_t steps, double lr);
// A child's conditional probability is its Zipf marginal divided by the parent's marginal; when the
// siblings' conditional probabilities sum to more than 0.9 they are scaled down to sum to 0.9 (their
// actual marginal is then lower; `marginal` records the true values). Throws usage errors on bad fields.
FeatureModel make_hierarchical(const HierarchicalConfig& cfg);

// Presets: "synth-16k" (the SynthSAEBench-16k parameters above, msae's own generator), "synthsaebench-16k"
// (the same parameters with SynthSAEBench's generator: synthsaebench_16k_config), "synth-lite" (d=256, N=512, p 0.4 to
// 2e-3, 32 roots, branching 3, depth 2, correlation rank 8: trains in about a minute here), "tree"
// (Nabeshima's nested toy: 20 orthogonal features in 20-d; 3 parents p=0.15 with 3 mutually exclusive
// children 0.2 each; 8 independent p=0.05),
// "absorption" (Chanin et al.'s parent/child toy: 1 parent p=0.25 with 4 mutually exclusive children
// 0.2 each, 11 independent features p=0.05, orthogonal in 16-d). Throws a usage error listing the names.
FeatureModel make_preset(const std::string& name, uint64_t seed);
std::vector<std::string> preset_names();

// Sparse "which features fired" per row, CSR: ids[offsets[r] .. offsets[r+1]) ascending.
struct FiredFeatures {
  std::vector<int64_t> offsets{0};  // (rows + 1)
  std::vector<int32_t> ids;
  int64_t rows() const { return static_cast<int64_t>(offsets.size()) - 1; }
};

// Streams rows. Row i depends only on (model, seed, i): the same for any thread count and any split of
// the stream into sample() calls. Keeps a copy of the model. Not thread-safe itself; sample()
// parallelizes internally.
//
// How a row is drawn (docs/synth-bench.md, "Generator"): the correlation factor z, then the base
// features in two ways that give the same distribution. Frequent ones ("dense": base probability >=
// dense_min_prob) are each tested with one uniform against p_f(z), their p_f(z) computed for all of
// them at once in float (loadings transposed, a vectorized exp). Rare ones come in segments whose
// probabilities lie within a factor 2 of the segment's maximum q: candidates by geometric skipping at
// rate min(1, q * bound(z)), each accepted with probability p_f(z) / that rate. Then, breadth-first,
// at most one child of every fired feature (one uniform against the siblings' cumulative
// probabilities), the magnitudes (normals 64 at a time), and the row: bias (+ noise) plus every fired
// direction times its magnitude, summed 64 coordinates at a time in registers.
struct SamplerOptions {
  double dense_min_prob = 1.0 / 64;  // base features at or above this probability take the dense test
  // Small models (no correlation, no rare features, no noise, no scale_children_by_parent, <= 32 dense
  // base features, <= 64 features, d <= 64: the toys) take a shorter loop: the dense features' joint
  // outcome eight at a time from alias tables, then the same children, magnitudes and sum. Same
  // distribution, other rows than the general loop, which false forces.
  bool small_path = true;
  // Stream the directions from a binary16 copy when every coordinate is a binary16 value (the
  // hierarchical models round them so): half the bytes per row, the same rows. false forces the float
  // copy (tests compare the two).
  bool half_directions = true;
};

class FeatureSampler {
 public:
  // Which rows a (model, seed) gives: raised whenever the sampler changes them (same distribution, other
  // draws). 1: up to commit 614912c; 2: since 1c34bd9; 3: wyrand per row, draws only where used, FMA in
  // every coordinate of the sum (session 7); 4: the hierarchical models' directions rounded to binary16
  // values (session 8: same draws, other rows for synth-lite, synth-16k and custom models; the toys' rows
  // are unchanged); 5: synthsaebench-16k's orthogonalized directions the same for any thread count (session
  // 15: the same draws; the other presets' rows unchanged). Resumable runs record it (a run must not change
  // streams halfway).
  static constexpr int kStreamVersion = 5;

  FeatureSampler(const FeatureModel& model, uint64_t seed, const SamplerOptions& options = {});
  // Writes the next n rows to out (n, d); when fired != nullptr it is overwritten with those rows'
  // fired features.
  void sample(int64_t n, float* out, FiredFeatures* fired = nullptr);
  int64_t position() const { return next_row_; }
  // Continues the stream at `row` (rows are drawn from a counter-based RNG keyed by their index, so this
  // is exact: a resumed run sees the rows an uninterrupted one would have).
  void seek(int64_t row) { next_row_ = row; }
  const FeatureModel& model() const { return m_; }
  int64_t dense_count() const { return static_cast<int64_t>(dense_ids_.size()); }
  bool half_directions() const { return half_; }  // the binary16 copy is in use (SamplerOptions)

 private:
  FeatureModel m_;
  // Directions (N, stride_) and bias (stride_) padded with zeros to stride_ = d rounded up to 8; empty
  // when d is a multiple of 8 (the model's own are used).
  int64_t stride_ = 0;
  std::vector<float> dirs_padded_, bias_padded_;
  const float* float_dirs() const { return dirs_padded_.empty() ? m_.directions.ptr() : dirs_padded_.data(); }
  bool half_ = false;              // directions streamed from dirs_half_ (N, stride_) binary16 bits
  std::vector<uint16_t> dirs_half_;
  // Dense base features, padded to a multiple of 16 (padding: probability 0, never fires).
  std::vector<int32_t> dense_ids_;     // (n_dense) feature ids
  int64_t dense_padded_ = 0;
  std::vector<float> dense_logp_;      // (padded) log p_f - s^2 / 2: p_f(z) = exp(logp + s * L_f . z)
  std::vector<float> dense_p_;         // (padded) p_f (used when there is no correlation)
  std::vector<float> dense_load_t_;    // (r, padded) the dense features' loadings, transposed
  // Copula models (FeatureModel::copula): every base feature takes this path instead of dense / sparse.
  static constexpr int64_t kCopulaBlock = 64;
  static constexpr int kCopulaTile = 8;  // rows whose arguments are computed together (sample())
  bool copula_ = false;
  std::vector<int32_t> base_ids_;      // base feature ids
  int64_t base_padded_ = 0;            // their count rounded up to kCopulaBlock
  std::vector<float> base_thr_;        // (padded) t_f = Phi^-1(1 - p_f); +inf in the padding
  std::vector<float> base_inv_sigma_;  // (padded) 1 / sqrt(1 - |L_f|^2)
  std::vector<float> base_load_t_;     // (r, padded) their loadings, transposed
  // Sparse (rare) base features, in segments.
  std::vector<int32_t> sparse_ids_;    // feature ids
  std::vector<double> sparse_p_;       // their cond_prob
  struct Segment {
    int64_t begin = 0, end = 0;        // range in sparse_ids_
    double q = 0.0;                    // max probability in the segment
  };
  std::vector<Segment> segments_;
  // Skipping rates per segment and bound level l (the row's bound rounded up to 2^(l/4)):
  // rate[seg * kBoundLevels + l] = min(1, q * 2^(l/4)) and inv_log1m = 1 / log(1 - rate) (0 at rate 1).
  static constexpr int kBoundLevels = 64;
  std::vector<double> seg_rate_, seg_inv_log1m_;
  // Children: the first sibling c with u < cum[c] fires (none when u is past the last). Up to four
  // children per parent as a padded row of cum4_ (entries past the last: 2), more in child_cum_.
  std::vector<float> cum4_;            // (N, 4)
  std::vector<float> child_cum_;       // (N) cond_prob summed over the feature and its earlier siblings
  static constexpr int64_t kSmallMaxFeatures = 64;
  bool small_ = false;  // the small-model loop applies (SamplerOptions::small_path)
  // Small models: the joint outcome of dense features 8c..8c+7 as alias tables, (chunks, 256) each.
  std::vector<uint32_t> alias_thr_;  // own outcome when the low 24 bits are below this
  std::vector<uint8_t> alias_own_, alias_other_;
  // sample() reads the directions through once per thread when that thread has at least this many rows
  // (about N / expected L0) and they take at most kWarmMaxBytes; otherwise never (the maximum int64).
  static constexpr double kWarmMaxBytes = 1 << 20;
  int64_t warm_min_rows_ = 0;
  uint64_t key_ = 0;
  int64_t next_row_ = 0;
};


// The two streams `msae synth-bench --seeds seed` draws from a seed's feature model: the training rows
// (shared by every architecture of that seed) and the held-out rows it scores on.
inline uint64_t synth_bench_train_stream(uint64_t seed) { return 2 * seed + 1; }
inline uint64_t synth_bench_eval_stream(uint64_t seed) { return 1000003 + seed; }

// The embedded default dataset of `msae train` with no data: d=64, the defaults above, seed 0.
PlantedConfig default_planted_config();

}  // namespace msae::synth
