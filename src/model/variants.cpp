// Building blocks of the Matryoshka variants (docs/variants.md): per-group selection, sampled prefix
// boundaries, and latent permutation. Both engines and the trainer use them, so each exists once.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "msae/kernels.h"
#include "msae/model.h"

namespace msae {

void select_per_group(const float* pre, int64_t B, int64_t D, const std::vector<int64_t>& bounds,
                      const std::vector<int64_t>& group_k, bool row_topk, kernels::SparseCodes& out) {
  const int64_t G = static_cast<int64_t>(bounds.size());
  MSAE_ASSERT(static_cast<int64_t>(group_k.size()) == G && G >= 1 && bounds.back() == D);
  std::vector<kernels::SparseCodes> parts(G);
  std::vector<float> slice;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t lo = g == 0 ? 0 : bounds[g - 1], s = bounds[g] - lo;
    slice.resize(B * s);  // (B, s_g): the group's columns, contiguous
    for (int64_t r = 0; r < B; ++r) std::copy(pre + r * D + lo, pre + r * D + lo + s, slice.begin() + r * s);
    if (row_topk)
      kernels::row_topk(slice.data(), B, s, group_k[g], parts[g]);
    else
      kernels::batch_topk(slice.data(), B, s, group_k[g] * B, parts[g]);
  }
  // Merge per row in group order: ids stay ascending.
  out.rows = B;
  out.cols = D;
  out.row_ptr.assign(B + 1, 0);
  out.ids.clear();
  out.vals.clear();
  for (int64_t r = 0; r < B; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t lo = g == 0 ? 0 : bounds[g - 1];
      const kernels::SparseCodes& p = parts[g];
      for (int64_t e = p.row_ptr[r]; e < p.row_ptr[r + 1]; ++e) {
        out.ids.push_back(static_cast<int32_t>(p.ids[e] + lo));
        out.vals.push_back(p.vals[e]);
      }
    }
    out.row_ptr[r + 1] = static_cast<int64_t>(out.ids.size());
  }
}

std::vector<int64_t> sample_prefix_sizes(const SaeConfig& cfg, Rng& rng) {
  const int64_t D = cfg.d_sae, N = cfg.sampled_prefixes, lo = cfg.min_prefix;
  MSAE_ASSERT(N >= 1 && D - lo >= N - 1, "N=", N, " D=", D, " min=", lo);
  const int64_t n = D - lo;  // candidate lengths lo .. D-1
  std::set<int64_t> chosen;
  const bool pareto = cfg.prefix_distribution == "pareto";
  const double inv_power = 1.0 / static_cast<double>(cfg.pareto_power);
  // Sampling without replacement = sequential draws with duplicates rejected (what numpy's
  // choice(replace=False) does). The rejection loop is bounded; when a tail-heavy distribution makes
  // the last draws slow, the remaining lengths are the smallest unused ones (the distribution's mode).
  int64_t tries = 0;
  while (static_cast<int64_t>(chosen.size()) < N - 1 && tries < 1000 * N) {
    ++tries;
    const double u = rng.uniform();
    // Pareto: P(len <= l) = ((l - lo + 1) / n)^power, so l - lo + 1 = ceil(n * u^(1/power)).
    int64_t offset = pareto ? static_cast<int64_t>(std::ceil(static_cast<double>(n) * std::pow(u, inv_power))) - 1
                            : static_cast<int64_t>(rng.below(static_cast<uint64_t>(n)));
    offset = std::clamp<int64_t>(offset, 0, n - 1);
    chosen.insert(lo + offset);
  }
  for (int64_t l = lo; static_cast<int64_t>(chosen.size()) < N - 1; ++l) chosen.insert(l);
  std::vector<int64_t> sizes;
  int64_t prev = 0;
  for (int64_t m : chosen) {
    sizes.push_back(m - prev);
    prev = m;
  }
  sizes.push_back(D - prev);
  return sizes;
}

void permute_rows(float* a, int64_t D, int64_t cols, const std::vector<int64_t>& perm) {
  MSAE_ASSERT(static_cast<int64_t>(perm.size()) == D);
  std::vector<float> copy(a, a + D * cols);
  for (int64_t j = 0; j < D; ++j) std::copy(copy.begin() + perm[j] * cols, copy.begin() + (perm[j] + 1) * cols, a + j * cols);
}

std::vector<float> geometric_median(const float* x, int64_t B, int64_t d, int max_iter, double tol) {
  std::vector<double> guess(d, 0.0), next(d);
  for (int64_t r = 0; r < B; ++r)
    for (int64_t j = 0; j < d; ++j) guess[j] += x[r * d + j] / static_cast<double>(B);
  for (int it = 0; it < max_iter; ++it) {
    std::fill(next.begin(), next.end(), 0.0);
    double wsum = 0.0;
    for (int64_t r = 0; r < B; ++r) {
      double dist2 = 0.0;
      for (int64_t j = 0; j < d; ++j) dist2 += (x[r * d + j] - guess[j]) * (x[r * d + j] - guess[j]);
      const double w = 1.0 / std::max(std::sqrt(dist2), 1e-12);
      wsum += w;
      for (int64_t j = 0; j < d; ++j) next[j] += w * x[r * d + j];
    }
    double moved2 = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      next[j] /= wsum;
      moved2 += (next[j] - guess[j]) * (next[j] - guess[j]);
    }
    guess.swap(next);
    if (std::sqrt(moved2) < tol) break;
  }
  return std::vector<float>(guess.begin(), guess.end());
}

std::vector<int64_t> descending_order(const std::vector<double>& score) {
  std::vector<int64_t> order(score.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return score[a] > score[b]; });
  return order;
}

void permute_latents(SaeParams& p, const std::vector<int64_t>& perm) {
  permute_rows(p.W_enc_t.ptr(), p.D, p.d, perm);
  permute_rows(p.W_dec.ptr(), p.D, p.d, perm);
  permute_rows(p.b_enc.ptr(), p.D, 1, perm);
}

const std::vector<VariantEntry>& variant_registry() {
  static const std::vector<VariantEntry> entries = {
      {"matryoshka", "SPEC.md: BatchTopK, nested groups D/16, D/16, D/8, D/4, D/2", [](SaeConfig&) {}, true},
      {"batchtopk", "BatchTopK, one group", [](SaeConfig& c) { c.arch = Arch::batchtopk; }, true},
      {"topk", "per-row TopK, one group", [](SaeConfig& c) { c.arch = Arch::topk; }, true},
      {"matryoshka_topk", "per-row TopK with the nested groups",
       [](SaeConfig& c) {
         c.arch = Arch::topk;
         c.group_sizes = default_group_sizes(c.d_sae);
       },
       true},
      {"prefix_weights", "loss weight per prefix (here: 2, 1, 1, 1, 0.5)",
       [](SaeConfig& c) { c.prefix_weights = {2.0f, 1.0f, 1.0f, 1.0f, 0.5f}; }, true},
      {"no_bdec_term", "no b_dec-only loss term", [](SaeConfig& c) { c.bdec_loss_term = false; }, true},
      {"stop_gradient", "stop-gradient between groups", [](SaeConfig& c) { c.stop_gradient_groups = true; }, true},
      {"aux_detach", "detached AuxK residual", [](SaeConfig& c) { c.aux_detach = true; }, true},
      {"group_k", "per-group BatchTopK (k_g = k for every group, capped by the group size)",
       [](SaeConfig& c) {
         c.group_sizes = default_group_sizes(c.d_sae);
         c.group_k.clear();
         for (int64_t s : c.group_sizes) c.group_k.push_back(std::min(c.k, s));
       },
       true},
      {"sampled_prefixes", "Nabeshima's sampled prefixes (8 per batch, Pareto 0.5)",
       [](SaeConfig& c) { c.sampled_prefixes = 8; }, true},
      {"reordering", "latent reordering every step by running mean z^2", [](SaeConfig& c) { c.reorder_every = 1; },
       true},
      {"sampled_prefixes_reordering", "Nabeshima's full recipe shape: sampled prefixes + reordering",
       [](SaeConfig& c) {
         c.sampled_prefixes = 8;
         c.reorder_every = 1;
       },
       true},
      {"threshold_schedule", "threshold EMA rate 0.001 from step 2",
       [](SaeConfig& c) {
         c.threshold_rate = 0.001f;
         c.threshold_start_step = 2;
       },
       true},
      {"relu_l1", "ReLU + adaptive L1 (nested groups)", [](SaeConfig& c) { c.arch = Arch::relu_l1; }, false},
      {"relu_l1_sampled", "ReLU + adaptive L1 with sampled prefixes and reordering (Nabeshima's setup)",
       [](SaeConfig& c) {
         c.arch = Arch::relu_l1;
         c.sampled_prefixes = 8;
         c.reorder_every = 1;
       },
       false},
  };
  return entries;
}

}  // namespace msae
