// Next-token cross-entropy from final hidden states (lm.h: token_cross_entropy). The fast path never
// forms a (rows, V) logits matrix: it walks the vocabulary in blocks, computing a cache-sized tile of
// logits with kernels::sgemm and folding it into an online (max, sum of exp) per row, the way a fused
// softmax/flash-attention kernel does. Why it is faster than the reference (docs/lm.md, "Speed"):
//  - the reference writes the whole (rows, V) logits to memory (25 MB for 127 rows of GPT-2's 50257) and
//    reads it twice more, while a tile here (256 x 256 floats, 256 KiB) stays in L2;
//  - the reference takes a double-precision std::exp per logit (a libm call); here exp is a branch-free
//    float polynomial the compiler vectorizes (relative error a few float ulps, summed in float over at
//    most 256 logits, then in double across tiles).
#include <algorithm>
#include <bit>
#include <cmath>
#include <vector>

#include "core/fast_exp.h"
#include "msae/kernels.h"
#include "msae/lm.h"

namespace msae::lm {

using kernels::Trans;

namespace {

constexpr int64_t kRowBlock = 256;    // rows per tile
constexpr int64_t kVocabBlock = 256;  // vocabulary columns per tile (a 256 KiB tile stays in L2)

// exp(x) for x <= 0 here: detail::exp_fast (core/fast_exp.h). Its clamp gives x < -87 a value under 1.7e-38
// instead of ~0, which cannot change a sum that holds exp(0) = 1.
using detail::exp_fast;

// Max and sum of exp(z - max) of n floats, in 16 independent lanes (vectorizable without -ffast-math).
// A row whose logits span more than kMaxSpan (far beyond any trained model's) is summed exactly instead,
// since exp_fast's range ends at -2^21.
constexpr float kMaxSpan = 1e5f;
inline void tile_row_stats(const float* z, int64_t n, float& max_out, float& sum_out) {
  constexpr int L = 16;
  float hi[L], lo[L];
  for (int j = 0; j < L; ++j) hi[j] = -INFINITY, lo[j] = INFINITY;
  const int64_t nl = n / L * L;
  for (int64_t v = 0; v < nl; v += L)
    for (int j = 0; j < L; ++j) {
      hi[j] = z[v + j] > hi[j] ? z[v + j] : hi[j];
      lo[j] = z[v + j] < lo[j] ? z[v + j] : lo[j];
    }
  float mx = -INFINITY, mn = INFINITY;
  for (int j = 0; j < L; ++j) mx = std::max(mx, hi[j]), mn = std::min(mn, lo[j]);
  for (int64_t v = nl; v < n; ++v) mx = std::max(mx, z[v]), mn = std::min(mn, z[v]);
  max_out = mx;
  if (!(mx - mn <= kMaxSpan)) {  // also NaN
    double s = 0;
    for (int64_t v = 0; v < n; ++v) s += std::exp(static_cast<double>(z[v]) - mx);
    sum_out = static_cast<float>(s);
    return;
  }
  float s[L] = {};
  for (int64_t v = 0; v < nl; v += L)
    for (int j = 0; j < L; ++j) s[j] += exp_fast(z[v + j] - mx);
  float sum = 0.0f;
  for (int j = 0; j < L; ++j) sum += s[j];
  for (int64_t v = nl; v < n; ++v) sum += exp_fast(z[v] - mx);
  sum_out = sum;
}

}  // namespace

void token_cross_entropy(const float* hidden, int64_t R, int64_t d, const float* unembed, int64_t V,
                         const int32_t* targets, float* loss) {
  MSAE_ASSERT(R >= 0 && d > 0 && V > 0);
  if (R == 0) return;
  for (int64_t r = 0; r < R; ++r)
    if (targets[r] < 0 || targets[r] >= V) usage_error("target token id ", targets[r], " is outside the vocabulary [0, ", V, ")");
  // Tasks: row blocks x vocabulary splits. With fewer row blocks than threads the vocabulary is split
  // too, each split keeping its own (max, sum) per row, merged below.
  const int64_t row_blocks = (R + kRowBlock - 1) / kRowBlock;
  const int64_t vocab_blocks = (V + kVocabBlock - 1) / kVocabBlock;
  const int64_t splits = std::min<int64_t>(vocab_blocks, (num_threads() + row_blocks - 1) / row_blocks);
  std::vector<double> run_max(static_cast<size_t>(splits * R), -INFINITY), run_sum(static_cast<size_t>(splits * R), 0.0);
  std::vector<float> target_logit(static_cast<size_t>(R), 0.0f);
  parallel_for(row_blocks * splits, [&](int64_t t0, int64_t t1, int) {
    std::vector<float> tile(static_cast<size_t>(kRowBlock * kVocabBlock));
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t rb = task / splits, split = task % splits;
      const int64_t r0 = rb * kRowBlock, nr = std::min(kRowBlock, R - r0);
      const int64_t vb0 = vocab_blocks * split / splits, vb1 = vocab_blocks * (split + 1) / splits;
      double* M = run_max.data() + split * R + r0;
      double* S = run_sum.data() + split * R + r0;
      for (int64_t vb = vb0; vb < vb1; ++vb) {
        const int64_t v0 = vb * kVocabBlock, nv = std::min(kVocabBlock, V - v0);
        // tile (nr, nv) = hidden[r0:r0+nr] @ unembed[v0:v0+nv]^T; single-threaded inside the pool.
        kernels::sgemm(Trans::no, Trans::yes, nr, nv, d, 1.0f, hidden + r0 * d, d, unembed + v0 * d, d, 0.0f,
                       tile.data(), nv);
        for (int64_t i = 0; i < nr; ++i) {
          const float* z = tile.data() + i * nv;
          const int32_t tgt = targets[r0 + i];
          if (tgt >= v0 && tgt < v0 + nv) target_logit[static_cast<size_t>(r0 + i)] = z[tgt - v0];
          float m, s;
          tile_row_stats(z, nv, m, s);
          if (m > M[i]) {
            S[i] = S[i] * std::exp(M[i] - m) + s;  // exp(-inf) = 0 on the first tile
            M[i] = m;
          } else {
            S[i] += static_cast<double>(s) * std::exp(static_cast<double>(m) - M[i]);
          }
        }
      }
    }
  });
  for (int64_t r = 0; r < R; ++r) {
    double m = -INFINITY;
    for (int64_t sp = 0; sp < splits; ++sp) m = std::max(m, run_max[static_cast<size_t>(sp * R + r)]);
    double s = 0.0;
    for (int64_t sp = 0; sp < splits; ++sp) {
      const size_t k = static_cast<size_t>(sp * R + r);
      if (run_sum[k] > 0) s += run_sum[k] * std::exp(run_max[k] - m);
    }
    loss[r] = static_cast<float>(std::log(s) + m - static_cast<double>(target_logit[static_cast<size_t>(r)]));
  }
}

void token_cross_entropy_reference(const float* hidden, int64_t R, int64_t d, const float* unembed, int64_t V,
                                   const int32_t* targets, float* loss) {
  MSAE_ASSERT(R >= 0 && d > 0 && V > 0);
  for (int64_t r = 0; r < R; ++r)
    if (targets[r] < 0 || targets[r] >= V) usage_error("target token id ", targets[r], " is outside the vocabulary [0, ", V, ")");
  const int64_t block = 256;
  FloatBuffer lg(static_cast<size_t>(std::min(block, std::max<int64_t>(R, 1)) * V));
  for (int64_t r0 = 0; r0 < R; r0 += block) {
    const int64_t rows = std::min(block, R - r0);
    kernels::sgemm(Trans::no, Trans::yes, rows, V, d, 1.0f, hidden + r0 * d, d, unembed, d, 0.0f, lg.data(), V);
    parallel_for(rows, [&](int64_t a, int64_t b, int) {
      for (int64_t r = a; r < b; ++r) {
        const float* z = lg.data() + r * V;
        float mx = -INFINITY;
        for (int64_t v = 0; v < V; ++v) mx = std::max(mx, z[v]);
        double sum = 0;
        for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(z[v] - mx));
        loss[r0 + r] = static_cast<float>(std::log(sum) + mx - static_cast<double>(z[targets[r0 + r]]));
      }
    });
  }
}

}  // namespace msae::lm
