// msae eval: how well a learned decoder recovers known ("planted") feature directions.
#pragma once

#include <cstdint>
#include <vector>

#include "msae/core.h"

namespace msae::eval {

struct RecoveryReport {
  double mean_max_cosine = 0.0;     // mean over true features of max_cosine
  double frac_recovered = 0.0;      // fraction of true features with max_cosine >= cos_threshold
  double mcc = 0.0;                 // mean |cos| of an optimal one-to-one matching of true features to
                                    // decoder rows; divided by N, so when D < N the unmatched features
                                    // count as 0
  std::vector<double> max_cosine;   // (N) max over latents of cos(true_f, W_dec row), signed
  std::vector<int64_t> best_latent; // (N) the argmax latent (lowest index on ties)
  std::vector<int64_t> matched_latent;  // (N) latent matched to feature f by the MCC matching, or -1
};

// Scores decoder rows against true directions. Rows of either matrix need not be unit norm (they are
// normalized here); a zero row has cosine 0 with everything. Throws msae::Error (usage) on bad shapes
// (true_directions not 2-D, N < 1, d < 1, D < 1, W_dec null).
// Cost: O(N*D*d) for the cosines (OpenMP, tiled) plus the Hungarian matching, O(min^2 * max) worst case
// in N and D, usually far less when the matching is clear-cut.
RecoveryReport score_recovery(const Tensor& true_directions /*(N, d)*/, const float* W_dec /*(D, d)*/,
                              int64_t D, double cos_threshold = 0.9);

// Cosine similarities of every row of A with every row of B: out (n, m) row-major, float accumulation.
// Zero rows give 0; values are clamped to [-1, 1].
void cosine_matrix(const float* A /*(n, d)*/, int64_t n, const float* B /*(m, d)*/, int64_t m, int64_t d,
                   float* out /*(n, m)*/);

// The Hungarian algorithm (shortest augmenting paths with potentials, O(rows^2 * cols)) for a
// rectangular assignment problem with rows <= cols: minimizes the total cost over injective maps
// rows -> cols. Returns the column assigned to each row. Throws msae::Error (usage) when rows > cols,
// the size does not match, or a cost is not finite.
std::vector<int64_t> hungarian_min_cost(const std::vector<double>& cost /*(rows, cols) row-major*/,
                                        int64_t rows, int64_t cols);

}  // namespace msae::eval
