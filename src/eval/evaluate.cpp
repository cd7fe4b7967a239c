#include <algorithm>
#include <functional>

#include "msae/eval.h"

namespace msae::eval {

EvalReport evaluate(const SaeConfig& cfg, const SaeParams& p, data::ActivationSource& source, int64_t rows,
                    int64_t chunk) {
  const int64_t d = p.d, D = p.D;
  const std::vector<int64_t> bounds = cfg.boundaries();
  const int64_t G = static_cast<int64_t>(bounds.size());
  MSAE_ASSERT(source.d() == d);
  std::vector<double> sq_err(G, 0.0), active(G, 0.0), col_sum(d, 0.0), col_sq(d, 0.0);
  std::vector<int64_t> fired(D, 0);
  std::vector<float> x(chunk * d), running(d);

  for (int64_t done = 0; done < rows; done += chunk) {
    const int64_t n = std::min(chunk, rows - done);
    source.next_batch(n, x.data());
    const kernels::SparseCodes z = encode_inference(cfg, p, x.data(), n, D);
    for (int64_t r = 0; r < n; ++r) {
      const float* xr = x.data() + r * d;
      for (int64_t j = 0; j < d; ++j) {
        col_sum[j] += xr[j];
        col_sq[j] += static_cast<double>(xr[j]) * xr[j];
      }
      // Prefix reconstructions are snapshots of one running sum over the ascending latent ids.
      std::copy(p.b_dec.ptr(), p.b_dec.ptr() + d, running.begin());
      int64_t e = z.row_ptr[r];
      for (int64_t g = 0; g < G; ++g) {
        for (; e < z.row_ptr[r + 1] && z.ids[e] < bounds[g]; ++e) {
          const float v = p.rule.decode_value(z.ids[e], z.vals[e]);
          const float* w = p.W_dec.ptr() + static_cast<int64_t>(z.ids[e]) * d;
          for (int64_t j = 0; j < d; ++j) running[j] += v * w[j];
          fired[z.ids[e]] += 1;
          active[g] += 1;
        }
        double err = 0.0;
        for (int64_t j = 0; j < d; ++j) {
          const double diff = static_cast<double>(running[j]) - xr[j];
          err += diff * diff;
        }
        sq_err[g] += err;
      }
    }
  }

  EvalReport rep;
  rep.rows = rows;
  rep.threshold = p.threshold;
  double total_var = 0.0;
  for (int64_t j = 0; j < d; ++j) total_var += col_sq[j] - col_sum[j] * col_sum[j] / static_cast<double>(rows);
  double cumulative_active = 0.0, all_active = 0.0;
  for (double a : active) all_active += a;
  for (int64_t g = 0; g < G; ++g) {
    cumulative_active += active[g];
    PrefixMetrics m;
    m.latents = bounds[g];
    m.mse = sq_err[g] / static_cast<double>(rows * d);
    m.fvu = total_var > 0 ? sq_err[g] / total_var : 0.0;
    m.explained_variance = 1.0 - m.fvu;
    m.l0 = cumulative_active / static_cast<double>(rows);
    rep.prefixes.push_back(m);
    rep.group_l0_share.push_back(all_active > 0 ? active[g] / all_active : 0.0);
  }
  rep.latent_frequency.resize(D);
  int64_t dead = 0, dense = 0;
  for (int64_t i = 0; i < D; ++i) {
    const double f = static_cast<double>(fired[i]) / static_cast<double>(rows);
    rep.latent_frequency[i] = f;
    dead += f < 1e-7;
    dense += f > 0.1;
  }
  rep.dead_fraction = static_cast<double>(dead) / static_cast<double>(D);
  rep.dense_fraction = static_cast<double>(dense) / static_cast<double>(D);
  return rep;
}

float calibrate_threshold(const SaeConfig& cfg, SaeParams& p, data::ActivationSource& source, int64_t rows,
                          int64_t chunk) {
  MSAE_ASSERT(p.rule.is_default(), "calibrate_threshold: only for the msae inference rule");
  const float saved = p.threshold;
  p.threshold = 0.0f;  // every positive pre-activation is a candidate
  const size_t K = static_cast<size_t>(cfg.k * rows);
  std::vector<float> x(static_cast<size_t>(chunk * p.d)), best;
  auto keep_top = [&](size_t n) {  // best[0..n) become the n largest, in no order
    std::nth_element(best.begin(), best.begin() + static_cast<std::ptrdiff_t>(n - 1), best.end(), std::greater<float>());
    best.resize(n);
  };
  try {
    for (int64_t done = 0; done < rows; done += chunk) {
      const int64_t n = std::min(chunk, rows - done);
      source.next_batch(n, x.data());
      const kernels::SparseCodes z = encode_inference(cfg, p, x.data(), n, p.D);
      best.insert(best.end(), z.vals.begin(), z.vals.end());
      if (best.size() > 2 * (K + 1)) keep_top(K + 1);
    }
  } catch (...) {
    p.threshold = saved;
    throw;
  }
  p.threshold = saved;
  if (best.size() <= K) return 0.0f;
  keep_top(K + 1);
  return *std::min_element(best.begin(), best.end());  // the (K + 1)-th largest: K values lie above it
}

nlohmann::json to_json(const EvalReport& r) {
  nlohmann::json prefixes = nlohmann::json::array();
  for (size_t g = 0; g < r.prefixes.size(); ++g) {
    const auto& m = r.prefixes[g];
    prefixes.push_back({{"group", g + 1},
                        {"latents", m.latents},
                        {"mse", m.mse},
                        {"fvu", m.fvu},
                        {"explained_variance", m.explained_variance},
                        {"l0", m.l0}});
  }
  const auto& whole = r.prefixes.back();
  return {{"rows", r.rows},
          {"threshold", json_number(r.threshold)},
          {"whole", {{"latents", whole.latents}, {"mse", whole.mse}, {"fvu", whole.fvu},
                     {"explained_variance", whole.explained_variance}, {"l0", whole.l0}}},
          {"prefixes", prefixes},
          {"group_l0_share", r.group_l0_share},
          {"dead_fraction", r.dead_fraction},
          {"dense_fraction", r.dense_fraction}};
}

}  // namespace msae::eval
