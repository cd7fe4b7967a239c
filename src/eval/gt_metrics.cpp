// Ground-truth metrics and the meta-SAE (see include/msae/gt_metrics.h).
#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "msae/gt_metrics.h"
#include "msae/recovery.h"

namespace msae::eval {
namespace {

// pairs grouped by key: CSR over keys [0, n_keys).
void group_pairs(const std::vector<int64_t>& key, int64_t n_keys, std::vector<int64_t>& ptr, std::vector<int64_t>& idx) {
  ptr.assign(n_keys + 1, 0);
  for (int64_t k : key) ptr[k + 1] += 1;
  for (int64_t i = 0; i < n_keys; ++i) ptr[i + 1] += ptr[i];
  idx.assign(key.size(), 0);
  std::vector<int64_t> fill(ptr.begin(), ptr.end() - 1);
  for (size_t p = 0; p < key.size(); ++p) idx[fill[key[p]]++] = static_cast<int64_t>(p);
}

}  // namespace

std::vector<Confusion> firing_confusion(const kernels::SparseCodes& z, const synth::FiredFeatures& fired,
                                        const std::vector<int64_t>& pair_latent,
                                        const std::vector<int64_t>& pair_feature, int64_t n_features) {
  MSAE_ASSERT(pair_latent.size() == pair_feature.size());
  MSAE_ASSERT(z.rows == fired.rows(), "codes have ", z.rows, " rows, fired features ", fired.rows());
  const int64_t D = z.cols, N = n_features, rows = z.rows;
  const int64_t P = static_cast<int64_t>(pair_latent.size());
  for (int64_t p = 0; p < P; ++p)
    MSAE_ASSERT(pair_latent[p] >= 0 && pair_latent[p] < D && pair_feature[p] >= 0 && pair_feature[p] < N);
  std::vector<int64_t> lat_ptr, lat_idx, feat_ptr, feat_idx;
  group_pairs(pair_latent, D, lat_ptr, lat_idx);
  group_pairs(pair_feature, N, feat_ptr, feat_idx);

  const int nt = num_threads();
  std::vector<std::vector<Confusion>> part(nt, std::vector<Confusion>(P));
  parallel_for(
      rows,
      [&](int64_t begin, int64_t end, int tid) {
        std::vector<int64_t> feat_row(N, -1), lat_row(D, -1);  // the last row in which each fired / was active
        std::vector<Confusion>& c = part[tid];
        for (int64_t r = begin; r < end; ++r) {
          for (int64_t e = fired.offsets[r]; e < fired.offsets[r + 1]; ++e) feat_row[fired.ids[e]] = r;
          for (int64_t e = z.row_ptr[r]; e < z.row_ptr[r + 1]; ++e) lat_row[z.ids[e]] = r;
          for (int64_t e = z.row_ptr[r]; e < z.row_ptr[r + 1]; ++e) {
            const int64_t l = z.ids[e];
            for (int64_t q = lat_ptr[l]; q < lat_ptr[l + 1]; ++q) {
              const int64_t p = lat_idx[q];
              if (feat_row[pair_feature[p]] == r)
                c[p].tp += 1;
              else
                c[p].fp += 1;
            }
          }
          for (int64_t e = fired.offsets[r]; e < fired.offsets[r + 1]; ++e) {
            const int64_t f = fired.ids[e];
            for (int64_t q = feat_ptr[f]; q < feat_ptr[f + 1]; ++q) {
              const int64_t p = feat_idx[q];
              if (lat_row[pair_latent[p]] != r) c[p].fn += 1;
            }
          }
        }
      },
      256);
  std::vector<Confusion> out(P);
  for (const auto& c : part)
    for (int64_t p = 0; p < P; ++p) {
      out[p].tp += c[p].tp;
      out[p].fp += c[p].fp;
      out[p].fn += c[p].fn;
    }
  return out;
}

double uniqueness(const std::vector<int64_t>& best_feature) {
  if (best_feature.empty()) return 1.0;
  const std::unordered_set<int64_t> distinct(best_feature.begin(), best_feature.end());
  return static_cast<double>(distinct.size()) / static_cast<double>(best_feature.size());
}

GtReport score_ground_truth(const SaeConfig& cfg, const SaeParams& params, const synth::FeatureModel& truth,
                            const float* x, const synth::FiredFeatures& fired, const GtOptions& opt) {
  const int64_t N = truth.n_features(), D = params.D, d = params.d, rows = fired.rows();
  if (truth.d != d) usage_error("ground truth: the model has d = ", truth.d, " but the SAE has d_in = ", d);
  MSAE_ASSERT(rows > 0);
  const std::vector<int64_t> bounds = cfg.boundaries();
  auto group_of = [&](int64_t l) {
    return static_cast<int32_t>(std::upper_bound(bounds.begin(), bounds.end(), l) - bounds.begin());
  };

  GtReport rep;
  rep.rows = rows;
  rep.n_features = N;
  rep.d_sae = D;

  // Decoder geometry.
  const RecoveryReport rec = score_recovery(truth.directions, params.W_dec.ptr(), D);
  rep.mcc = rec.mcc * static_cast<double>(N) / static_cast<double>(std::min(N, D));
  rep.mean_max_cosine = rec.mean_max_cosine;
  rep.feature_best_latent = rec.best_latent;
  rep.feature_max_cos = rec.max_cosine;
  std::vector<float> cos(static_cast<size_t>(N * D));
  cosine_matrix(truth.directions.ptr(), N, params.W_dec.ptr(), D, d, cos.data());
  rep.latent_best_feature.assign(D, 0);
  rep.latent_best_cos.assign(D, -2.0);
  for (int64_t f = 0; f < N; ++f) {
    const float* row = cos.data() + f * D;
    for (int64_t l = 0; l < D; ++l)
      if (row[l] > rep.latent_best_cos[l]) {
        rep.latent_best_cos[l] = row[l];
        rep.latent_best_feature[l] = f;
      }
  }
  cos.clear();
  cos.shrink_to_fit();

  // Firing: one confusion pass over latent pairs, feature pairs and absorption pairs.
  const kernels::SparseCodes z = encode_inference(cfg, params, x, rows, D);
  std::vector<int64_t> pl, pf;
  for (int64_t l = 0; l < D; ++l) {
    pl.push_back(l);
    pf.push_back(rep.latent_best_feature[l]);
  }
  for (int64_t f = 0; f < N; ++f) {
    pl.push_back(rep.feature_best_latent[f]);
    pf.push_back(f);
  }
  auto learned = [&](int64_t f) { return rep.feature_max_cos[f] >= opt.match_cos; };
  std::vector<int64_t> abs_child;
  for (int64_t c = 0; c < N; ++c) {
    const int32_t p = truth.parent[c];
    if (p < 0 || !learned(p)) continue;
    pl.push_back(rep.feature_best_latent[p]);
    pf.push_back(c);
    abs_child.push_back(c);
  }
  const std::vector<Confusion> conf = firing_confusion(z, fired, pl, pf, N);

  std::vector<int64_t> latent_fires(D, 0);
  for (int64_t e = 0; e < z.nnz(); ++e) latent_fires[z.ids[e]] += 1;
  rep.latent_f1.assign(D, 0.0);
  std::vector<int64_t> alive_best;
  double f1 = 0, prec = 0, recall = 0;
  for (int64_t l = 0; l < D; ++l) {
    if (latent_fires[l] == 0) continue;
    const Confusion& c = conf[l];
    rep.latent_f1[l] = c.f1();
    f1 += c.f1();
    prec += c.precision();
    recall += c.recall();
    alive_best.push_back(rep.latent_best_feature[l]);
  }
  rep.alive_latents = static_cast<int64_t>(alive_best.size());
  if (rep.alive_latents > 0) {
    const double n = static_cast<double>(rep.alive_latents);
    rep.f1 = f1 / n;
    rep.precision = prec / n;
    rep.recall = recall / n;
  }
  rep.uniqueness = uniqueness(alive_best);
  rep.f1_all_latents = D > 0 ? f1 / static_cast<double>(D) : 0.0;
  rep.uniqueness_all_latents = uniqueness(rep.latent_best_feature);

  // Splitting: learned features claimed by >= 2 alive latents that match them at >= match_cos.
  std::vector<int64_t> claims(N, 0);
  for (int64_t l = 0; l < D; ++l)
    if (latent_fires[l] > 0 && rep.latent_best_cos[l] >= opt.match_cos) claims[rep.latent_best_feature[l]] += 1;
  int64_t n_learned = 0, n_split = 0;
  for (int64_t f = 0; f < N; ++f) {
    if (claims[f] >= 1) ++n_learned;
    if (claims[f] >= 2) ++n_split;
  }
  rep.splitting = n_learned > 0 ? static_cast<double>(n_split) / static_cast<double>(n_learned) : 0.0;

  // Per feature.
  rep.feature_f1.assign(N, 0.0);
  rep.feature_group.assign(N, 0);
  int64_t fired_features = 0;
  double ff1 = 0;
  for (int64_t f = 0; f < N; ++f) {
    const Confusion& c = conf[D + f];
    rep.feature_f1[f] = c.f1();
    rep.feature_group[f] = group_of(rep.feature_best_latent[f]);
    if (c.tp + c.fn > 0) {
      ++fired_features;
      ff1 += c.f1();
    }
  }
  rep.feature_f1_mean = fired_features > 0 ? ff1 / static_cast<double>(fired_features) : 0.0;

  // Absorption by child depth.
  const int32_t max_depth = truth.max_depth();
  rep.absorption.resize(std::max(0, static_cast<int>(max_depth)));
  for (int32_t l = 0; l < max_depth; ++l) rep.absorption[l].child_depth = l + 1;
  int64_t child_rows = 0, silent = 0;
  for (size_t i = 0; i < abs_child.size(); ++i) {
    const Confusion& c = conf[D + N + static_cast<int64_t>(i)];
    AbsorptionLevel& lev = rep.absorption[truth.depth[abs_child[i]] - 1];
    lev.pairs += 1;
    lev.child_rows += c.tp + c.fn;
    lev.silent += c.fn;
    child_rows += c.tp + c.fn;
    silent += c.fn;
  }
  rep.absorption_rate = child_rows > 0 ? static_cast<double>(silent) / static_cast<double>(child_rows) : 0.0;

  // Landing.
  const int64_t G = static_cast<int64_t>(bounds.size());
  rep.landing.assign(max_depth + 1, std::vector<double>(G, 0.0));
  rep.learned_by_depth.assign(max_depth + 1, 0);
  rep.features_by_depth.assign(max_depth + 1, 0);
  for (int64_t f = 0; f < N; ++f) {
    const int32_t dep = truth.depth[f];
    rep.features_by_depth[dep] += 1;
    if (!learned(f)) continue;
    rep.learned_by_depth[dep] += 1;
    rep.landing[dep][rep.feature_group[f]] += 1.0;
  }
  for (int32_t dep = 0; dep <= max_depth; ++dep)
    for (auto& v : rep.landing[dep])
      v = rep.learned_by_depth[dep] > 0 ? v / static_cast<double>(rep.learned_by_depth[dep]) : 0.0;
  int64_t roots = 0, roots_in = 0;
  for (int64_t f = 0; f < N; ++f) roots += truth.parent[f] < 0 && truth.n_children[f] > 0;
  // m*: from the SAE's own groups when it has several, else from the default Matryoshka groups for D
  // (for a flat SAE that is a chance-level reference).
  rep.roots_prefix = D;
  std::vector<int64_t> sizes = cfg.num_groups() > 1 ? cfg.group_sizes : (D >= 16 ? default_group_sizes(D) : std::vector<int64_t>{});
  int64_t m = 0;
  for (int64_t size : sizes) {
    m += size;
    if (m >= roots) {
      rep.roots_prefix = m;
      break;
    }
  }
  for (int64_t f = 0; f < N; ++f)
    if (truth.parent[f] < 0 && truth.n_children[f] > 0 && learned(f) && rep.feature_best_latent[f] < rep.roots_prefix)
      ++roots_in;
  rep.roots_in_first_prefix = roots > 0 ? static_cast<double>(roots_in) / static_cast<double>(roots) : 0.0;
  return rep;
}

nlohmann::json to_json(const GtReport& r, bool per_feature) {
  nlohmann::json abs = nlohmann::json::array();
  for (const auto& a : r.absorption)
    abs.push_back({{"child_depth", a.child_depth},
                   {"pairs", a.pairs},
                   {"child_rows", a.child_rows},
                   {"silent", a.silent},
                   {"rate", a.rate()}});
  nlohmann::json j = {{"rows", r.rows},
                      {"n_features", r.n_features},
                      {"d_sae", r.d_sae},
                      {"mcc", r.mcc},
                      {"mean_max_cosine", r.mean_max_cosine},
                      {"f1", r.f1},
                      {"precision", r.precision},
                      {"recall", r.recall},
                      {"uniqueness", r.uniqueness},
                      {"alive_latents", r.alive_latents},
                      {"f1_all_latents", r.f1_all_latents},
                      {"uniqueness_all_latents", r.uniqueness_all_latents},
                      {"splitting", r.splitting},
                      {"feature_f1_mean", r.feature_f1_mean},
                      {"absorption_rate", r.absorption_rate},
                      {"absorption_by_level", abs},
                      {"landing_by_depth", r.landing},
                      {"learned_by_depth", r.learned_by_depth},
                      {"features_by_depth", r.features_by_depth},
                      {"roots_prefix", r.roots_prefix},
                      {"roots_in_first_prefix", r.roots_in_first_prefix}};
  if (per_feature) {
    j["feature_max_cos"] = r.feature_max_cos;
    j["feature_f1"] = r.feature_f1;
    j["feature_best_latent"] = r.feature_best_latent;
    j["latent_best_feature"] = r.latent_best_feature;
    j["latent_best_cos"] = r.latent_best_cos;
    j["latent_f1"] = r.latent_f1;
  }
  return j;
}

}  // namespace msae::eval
