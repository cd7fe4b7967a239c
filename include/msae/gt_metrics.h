// msae eval: ground-truth metrics of an SAE trained on a synthetic feature model (synth::FeatureModel),
// and the meta-SAE. Definitions follow SynthSAEBench (Chanin & Garriga-Alonso 2026) where it has one;
// docs/synth-bench.md states every definition.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "msae/eval.h"
#include "msae/kernels.h"
#include "msae/model.h"
#include "msae/synth.h"

namespace msae::eval {

// Firing agreement of one (latent, feature) pair over a set of rows.
struct Confusion {
  int64_t tp = 0;  // rows where both fire
  int64_t fp = 0;  // the latent fires, the feature does not
  int64_t fn = 0;  // the feature fires, the latent does not
  double precision() const { return tp + fp > 0 ? static_cast<double>(tp) / static_cast<double>(tp + fp) : 0.0; }
  double recall() const { return tp + fn > 0 ? static_cast<double>(tp) / static_cast<double>(tp + fn) : 0.0; }
  double f1() const {  // 2 tp / (2 tp + fp + fn); 0 when neither ever fires
    const int64_t den = 2 * tp + fp + fn;
    return den > 0 ? 2.0 * static_cast<double>(tp) / static_cast<double>(den) : 0.0;
  }
};

// Counts, for each pair p = (pair_latent[p], pair_feature[p]), the confusion of "latent p fires" (an entry
// in z) against "feature p fires" (in fired) over the rows of z (z.rows == fired.rows()). Pairs may repeat
// latents and features. Cost O(nnz(z) + nnz(fired)) times the pairs per latent/feature.
std::vector<Confusion> firing_confusion(const kernels::SparseCodes& z, const synth::FiredFeatures& fired,
                                        const std::vector<int64_t>& pair_latent,
                                        const std::vector<int64_t>& pair_feature, int64_t n_features);

// Distinct values among `best_feature` divided by its size (1 when empty): the share of latents that track
// a feature no other latent tracks.
double uniqueness(const std::vector<int64_t>& best_feature);

struct GtOptions {
  double match_cos = 0.5;  // a feature is "learned" when its best latent's decoder cosine is >= this; only
                           // learned parents count for absorption, only learned features for landing
};

struct AbsorptionLevel {
  int32_t child_depth = 0;  // depth of the child feature (1 = children of roots)
  int64_t pairs = 0;        // (parent, child) pairs whose parent is learned
  int64_t child_rows = 0;   // rows in which such a child fired
  int64_t silent = 0;       // ... and the parent's latent did not
  double rate() const { return child_rows > 0 ? static_cast<double>(silent) / static_cast<double>(child_rows) : 0.0; }
};

struct GtReport {
  int64_t rows = 0, n_features = 0, d_sae = 0;
  // Decoder geometry (no activations needed).
  double mcc = 0;              // mean |cos| over the min(N, D) pairs of the Hungarian matching
  double mean_max_cosine = 0;  // mean over features of the max cosine to any decoder row
  // Per latent: its best feature is the one with the largest decoder cosine. Means over alive latents.
  double f1 = 0, precision = 0, recall = 0;
  double uniqueness = 0;       // distinct best features / alive latents
  // The same two averaged over all D latents, as SAELens's synthetic evals (SynthSAEBench) compute them:
  // a dead latent adds F1 0 and still counts its best feature and itself in uniqueness. Equal to the
  // above when no latent is dead.
  double f1_all_latents = 0, uniqueness_all_latents = 0;
  int64_t alive_latents = 0;   // latents that fired at least once on the rows
  double splitting = 0;        // among learned features, the share claimed (as best feature) by >= 2
                               // alive latents with cosine >= match_cos
  std::vector<int64_t> latent_best_feature;  // (D)
  std::vector<double> latent_best_cos;       // (D)
  std::vector<double> latent_f1;             // (D), 0 for dead latents
  // Per feature: its best latent is the one with the largest decoder cosine.
  std::vector<int64_t> feature_best_latent;  // (N)
  std::vector<double> feature_max_cos;       // (N)
  std::vector<double> feature_f1;            // (N) F1 of the best latent against the feature
  std::vector<int32_t> feature_group;        // (N) Matryoshka group of the best latent
  double feature_f1_mean = 0;                // mean of feature_f1 over features that fired on the rows
  // Absorption: in rows where a child fires (so its parent fires too), the parent's best latent is silent.
  std::vector<AbsorptionLevel> absorption;   // one per child depth 1..max depth
  double absorption_rate = 0;                // pooled over levels
  // Landing: for learned features of each depth, the share whose best latent is in each group.
  std::vector<std::vector<double>> landing;  // (max depth + 1, G)
  std::vector<int64_t> learned_by_depth;     // (max depth + 1)
  std::vector<int64_t> features_by_depth;    // (max depth + 1)
  // Roots (depth-0 features with children) that are learned and whose best latent lies in the first m*
  // latents, over all such roots; m* is the smallest group boundary >= the number of roots, of the SAE's
  // own groups when it has several, else of the default Matryoshka groups for D (model.h
  // default_group_sizes), so that for a flat SAE it measures chance (about m*/D).
  int64_t roots_prefix = 0;                  // m*
  double roots_in_first_prefix = 0;
};

// Scores an SAE against the truth on `rows` rows x (rows, d) whose fired features are `fired`, with
// inference encoding (JumpReLU at the SAE's threshold).
GtReport score_ground_truth(const SaeConfig& cfg, const SaeParams& params, const synth::FeatureModel& truth,
                            const float* x, const synth::FiredFeatures& fired, const GtOptions& opt = {});
nlohmann::json to_json(const GtReport& r, bool per_feature = false);

// The meta-SAE (an SAE trained on an SAE's decoder rows) is run::meta_sae (msae/run.h): it trains.


}  // namespace msae::eval
