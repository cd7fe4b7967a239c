// Ground-truth recovery metrics (see include/msae/recovery.h).
#include <algorithm>
#include <cmath>
#include <limits>

#include "msae/recovery.h"

namespace msae::eval {
namespace {

constexpr int64_t kLane = 16;  // row padding: one AVX-512 vector of floats

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Unit-normalized copy of src (rows, d) into (rows_padded, dp), zero padding; zero or non-finite rows
// become zero rows, so their cosines are 0.
FloatBuffer normalized_padded(const float* src, int64_t rows, int64_t d, int64_t rows_padded, int64_t dp) {
  FloatBuffer out(static_cast<size_t>(rows_padded * dp), 0.0f);
#pragma omp parallel for schedule(static) if (rows * d >= (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * d;
    double norm2 = 0.0;
    for (int64_t j = 0; j < d; ++j) norm2 += static_cast<double>(s[j]) * s[j];
    if (!(norm2 > 0.0) || !std::isfinite(norm2)) continue;
    const double inv = 1.0 / std::sqrt(norm2);
    float* o = out.data() + r * dp;
    for (int64_t j = 0; j < d; ++j) o[j] = static_cast<float>(s[j] * inv);
  }
  return out;
}

// 4x4 tile of dot products over dp (a multiple of kLane) entries; 16 independent accumulators keep
// the FMA units busy, and each loaded vector is used four times.
void dot_tile_4x4(const float* a, const float* b, int64_t dp, float* s /*(4, 4)*/) {
  const float *a0 = a, *a1 = a + dp, *a2 = a + 2 * dp, *a3 = a + 3 * dp;
  const float *b0 = b, *b1 = b + dp, *b2 = b + 2 * dp, *b3 = b + 3 * dp;
  float s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
  float s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
#pragma omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)
  for (int64_t k = 0; k < dp; ++k) {
    const float x0 = a0[k], x1 = a1[k], x2 = a2[k], x3 = a3[k];
    const float y0 = b0[k], y1 = b1[k], y2 = b2[k], y3 = b3[k];
    s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3;
    s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3;
    s20 += x2 * y0; s21 += x2 * y1; s22 += x2 * y2; s23 += x2 * y3;
    s30 += x3 * y0; s31 += x3 * y1; s32 += x3 * y2; s33 += x3 * y3;
  }
  s[0] = s00; s[1] = s01; s[2] = s02; s[3] = s03;
  s[4] = s10; s[5] = s11; s[6] = s12; s[7] = s13;
  s[8] = s20; s[9] = s21; s[10] = s22; s[11] = s23;
  s[12] = s30; s[13] = s31; s[14] = s32; s[15] = s33;
}

}  // namespace

void cosine_matrix(const float* A, int64_t n, const float* B, int64_t m, int64_t d, float* out) {
  MSAE_ASSERT(n >= 0 && m >= 0 && d >= 1);
  if (n == 0 || m == 0) return;
  MSAE_ASSERT(A && B && out);
  const int64_t dp = round_up(d, kLane);
  const int64_t n4 = round_up(n, 4), m4 = round_up(m, 4);
  const FloatBuffer a = normalized_padded(A, n, d, n4, dp);
  const FloatBuffer b = normalized_padded(B, m, d, m4, dp);
  // Tiles of 32 A rows x 128 B rows: for d = 768 the B tile (384 KiB) stays in L2 while the A rows
  // stream through it from L1.
  constexpr int64_t kTileA = 32, kTileB = 128;
  const int64_t tiles_a = (n4 + kTileA - 1) / kTileA, tiles_b = (m4 + kTileB - 1) / kTileB;
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int64_t tb = 0; tb < tiles_b; ++tb) {
    for (int64_t ta = 0; ta < tiles_a; ++ta) {
      const int64_t i_end = std::min(n4, (ta + 1) * kTileA), j_end = std::min(m4, (tb + 1) * kTileB);
      float s[16];
      for (int64_t i = ta * kTileA; i < i_end; i += 4) {
        for (int64_t j = tb * kTileB; j < j_end; j += 4) {
          dot_tile_4x4(a.data() + i * dp, b.data() + j * dp, dp, s);
          for (int64_t u = 0; u < 4 && i + u < n; ++u)
            for (int64_t v = 0; v < 4 && j + v < m; ++v) out[(i + u) * m + (j + v)] = std::clamp(s[u * 4 + v], -1.0f, 1.0f);
        }
      }
    }
  }
}

std::vector<int64_t> hungarian_min_cost(const std::vector<double>& cost, int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0) usage_error("hungarian_min_cost: negative shape (", rows, ", ", cols, ")");
  if (rows > cols)
    usage_error("hungarian_min_cost: needs rows <= cols, got (", rows, ", ", cols, "); hint: transpose the cost");
  if (static_cast<int64_t>(cost.size()) != rows * cols)
    usage_error("hungarian_min_cost: cost has ", cost.size(), " entries, expected ", rows, " * ", cols);
  for (double c : cost)
    if (!std::isfinite(c)) usage_error("hungarian_min_cost: costs must be finite, found ", c);
  if (rows == 0) return {};

  // Shortest augmenting paths with row potentials u and column potentials v (1-based; column 0 is a
  // virtual column holding the row being inserted). Reduced costs cost - u - v stay >= 0, and each
  // row insertion is a Dijkstra over columns: O(rows * cols) per row.
  const double inf = std::numeric_limits<double>::infinity();
  const size_t n = static_cast<size_t>(rows), m = static_cast<size_t>(cols);
  std::vector<double> u(n + 1, 0.0), v(m + 1, 0.0), minv(m + 1);
  std::vector<size_t> p(m + 1, 0), way(m + 1, 0);  // p[j]: row matched to column j (0 = none)
  std::vector<char> used(m + 1);
  for (size_t i = 1; i <= n; ++i) {
    p[0] = i;
    size_t j0 = 0;
    std::fill(minv.begin(), minv.end(), inf);
    std::fill(used.begin(), used.end(), 0);
    do {
      used[j0] = 1;
      const size_t i0 = p[j0];
      const double* row = cost.data() + (i0 - 1) * m - 1;  // row[j] for j in [1, m]
      const double ui = u[i0];
      double delta = inf;
      size_t j1 = 0;
      for (size_t j = 1; j <= m; ++j) {
        if (used[j]) continue;
        const double cur = row[j] - ui - v[j];
        if (cur < minv[j]) {
          minv[j] = cur;
          way[j] = j0;
        }
        if (minv[j] < delta) {
          delta = minv[j];
          j1 = j;
        }
      }
      MSAE_ASSERT(j1 != 0, "hungarian: no augmenting column (rows ", rows, ", cols ", cols, ")");
      for (size_t j = 0; j <= m; ++j) {
        if (used[j]) {
          u[p[j]] += delta;
          v[j] -= delta;
        } else {
          minv[j] -= delta;
        }
      }
      j0 = j1;
    } while (p[j0] != 0);
    do {  // flip the augmenting path
      const size_t j1 = way[j0];
      p[j0] = p[j1];
      j0 = j1;
    } while (j0 != 0);
  }
  std::vector<int64_t> assign(n, -1);
  for (size_t j = 1; j <= m; ++j)
    if (p[j] != 0) assign[p[j] - 1] = static_cast<int64_t>(j - 1);
  return assign;
}

RecoveryReport score_recovery(const Tensor& true_directions, const float* W_dec, int64_t D, double cos_threshold) {
  if (true_directions.shape.size() != 2)
    usage_error("score_recovery: true directions must be 2-D (N, d), got shape ", shape_str(true_directions.shape));
  const int64_t N = true_directions.shape[0], d = true_directions.shape[1];
  if (N < 1 || d < 1) usage_error("score_recovery: true directions ", shape_str(true_directions.shape), " are empty");
  if (D < 1) usage_error("score_recovery: the decoder needs at least one row, got D = ", D);
  if (W_dec == nullptr) usage_error("score_recovery: W_dec is null");

  std::vector<float> cos(static_cast<size_t>(N * D));
  cosine_matrix(true_directions.ptr(), N, W_dec, D, d, cos.data());

  RecoveryReport rep;
  rep.max_cosine.resize(static_cast<size_t>(N));
  rep.best_latent.resize(static_cast<size_t>(N));
  int64_t recovered = 0;
  double sum_max = 0.0;
  for (int64_t f = 0; f < N; ++f) {
    const float* row = cos.data() + f * D;
    int64_t best = 0;
    for (int64_t l = 1; l < D; ++l)
      if (row[l] > row[best]) best = l;
    const double c = row[best];
    rep.max_cosine[static_cast<size_t>(f)] = c;
    rep.best_latent[static_cast<size_t>(f)] = best;
    sum_max += c;
    if (c >= cos_threshold) ++recovered;
  }
  rep.mean_max_cosine = sum_max / static_cast<double>(N);
  rep.frac_recovered = static_cast<double>(recovered) / static_cast<double>(N);

  // MCC: maximize the total |cos| = minimize -|cos|; the Hungarian solver wants rows <= cols.
  rep.matched_latent.assign(static_cast<size_t>(N), -1);
  double matched_sum = 0.0;
  if (N <= D) {
    std::vector<double> cost(static_cast<size_t>(N * D));
    for (size_t k = 0; k < cost.size(); ++k) cost[k] = -std::fabs(static_cast<double>(cos[k]));
    const std::vector<int64_t> a = hungarian_min_cost(cost, N, D);
    for (int64_t f = 0; f < N; ++f) {
      rep.matched_latent[static_cast<size_t>(f)] = a[static_cast<size_t>(f)];
      matched_sum += std::fabs(static_cast<double>(cos[static_cast<size_t>(f * D + a[static_cast<size_t>(f)])]));
    }
  } else {
    std::vector<double> cost(static_cast<size_t>(D * N));
    for (int64_t l = 0; l < D; ++l)
      for (int64_t f = 0; f < N; ++f)
        cost[static_cast<size_t>(l * N + f)] = -std::fabs(static_cast<double>(cos[static_cast<size_t>(f * D + l)]));
    const std::vector<int64_t> a = hungarian_min_cost(cost, D, N);
    for (int64_t l = 0; l < D; ++l) {
      const int64_t f = a[static_cast<size_t>(l)];
      rep.matched_latent[static_cast<size_t>(f)] = l;
      matched_sum += std::fabs(static_cast<double>(cos[static_cast<size_t>(f * D + l)]));
    }
  }
  rep.mcc = matched_sum / static_cast<double>(N);
  return rep;
}

}  // namespace msae::eval
