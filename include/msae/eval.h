// msae eval: reconstruction and sparsity metrics of a trained SAE, per Matryoshka prefix.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "msae/data.h"
#include "msae/model.h"

namespace msae::eval {

struct PrefixMetrics {
  int64_t latents = 0;        // m_g: the prefix width (sub-SAE uses latents [0, m_g))
  double mse = 0;             // mean over rows*d of (r - x)^2
  double fvu = 0;             // sum (r - x)^2 / sum (x - mean(x))^2  (fraction of variance unexplained)
  double explained_variance = 0;  // 1 - fvu
  double l0 = 0;              // mean active latents per row within the prefix
};

struct EvalReport {
  int64_t rows = 0;
  float threshold = 0;
  std::vector<PrefixMetrics> prefixes;     // (G), the last one is the whole SAE
  std::vector<double> group_l0_share;      // (G) share of all activations that fall in each group
  std::vector<double> latent_frequency;    // (D) fraction of rows on which each latent fired
  double dead_fraction = 0;                // latents with frequency < 1e-7 (never fired on fewer than 1e7 rows)
  double dense_fraction = 0;               // latents with frequency > 0.1
};

// Evaluates on `rows` rows from `source` (in chunks of `chunk` rows) with inference encoding
// (JumpReLU at the SAE's global threshold).
EvalReport evaluate(const SaeConfig& cfg, const SaeParams& params, data::ActivationSource& source, int64_t rows,
                    int64_t chunk = 4096);
nlohmann::json to_json(const EvalReport& report);

// The global threshold at which inference encoding keeps, on `rows` rows of `source`, k * rows
// pre-activations in all: the (k * rows + 1)-th largest positive pre-activation (0 when there are fewer),
// so that the mean inference L0 is k (ties aside). For the msae rule only (params.rule default);
// params.threshold is used as scratch and restored.
float calibrate_threshold(const SaeConfig& cfg, SaeParams& params, data::ActivationSource& source, int64_t rows,
                          int64_t chunk = 1024);

}  // namespace msae::eval
