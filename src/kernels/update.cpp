// The update kernels: gradient sum of squares, Adam, and the decoder constraint fused with Adam.
// All run on msae's pool over contiguous ranges; the inner loops are plain float loops the compiler
// vectorizes (sqrt and division stay IEEE, so the arithmetic is the reference's element for element;
// only the row reductions of the decoder constraint are summed in a different order).
#include <algorithm>
#include <cmath>

#include "msae/kernels_ref.h"

namespace msae::kernels {
namespace {

struct AdamConsts {
  float step_size, bc2_sqrt, b1, b2, one_b1, one_b2, eps;
};
AdamConsts adam_consts(const AdamHyper& h, int64_t t) {
  const double bc1 = 1.0 - std::pow(static_cast<double>(h.beta1), static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(static_cast<double>(h.beta2), static_cast<double>(t));
  return {static_cast<float>(h.lr / bc1), static_cast<float>(std::sqrt(bc2)), h.beta1, h.beta2, 1.0f - h.beta1,
          1.0f - h.beta2, h.eps};
}

// One Adam range; g already scaled. Same expression tree as ref::adam_update.
inline void adam_range(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                       int64_t n, const AdamConsts& c) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = c.b1 * m[i] + c.one_b1 * gi;
    const float vi = c.b2 * v[i] + c.one_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= c.step_size * (mi / (std::sqrt(vi) / c.bc2_sqrt + c.eps));
  }
}

inline void adam_range_scaled(float* __restrict p, const float* __restrict g, float* __restrict m,
                              float* __restrict v, int64_t n, const AdamConsts& c, float s) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * s;
    const float mi = c.b1 * m[i] + c.one_b1 * gi;
    const float vi = c.b2 * v[i] + c.one_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= c.step_size * (mi / (std::sqrt(vi) / c.bc2_sqrt + c.eps));
  }
}

constexpr int64_t kGrain = 1 << 14;  // elements per thread at least

}  // namespace

double sum_squares(const float* x, int64_t n) {
  constexpr int kMaxParts = 64;
  double part[kMaxParts] = {};
  const int threads = static_cast<int>(std::clamp<int64_t>(n / kGrain, 1, kMaxParts));
  parallel(
      [&](int tid, int nt) {
        const int64_t lo = n * tid / nt, hi = n * (tid + 1) / nt;
        // Blocks of 256 floats summed in float (vector lanes), then added in double: plenty for a norm.
        double total = 0.0;
        for (int64_t b = lo; b < hi; b += 256) {
          const int64_t e = std::min(hi, b + 256);
          float s = 0.0f;
#pragma omp simd reduction(+ : s)
          for (int64_t i = b; i < e; ++i) s += x[i] * x[i];
          total += s;
        }
        part[tid] = total;
      },
      threads);
  double total = 0.0;
  for (int t = 0; t < kMaxParts; ++t) total += part[t];
  return total;
}

void adam_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h, int64_t t) {
  adam_update(p, g, m, v, n, h, t, 1.0f);
}

void adam_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h, int64_t t,
                 float grad_scale) {
  const AdamConsts c = adam_consts(h, t);
  parallel_for(
      n,
      [&](int64_t lo, int64_t hi, int) {
        if (grad_scale == 1.0f)
          adam_range(p + lo, g + lo, m + lo, v + lo, hi - lo, c);
        else
          adam_range_scaled(p + lo, g + lo, m + lo, v + lo, hi - lo, c, grad_scale);
      },
      kGrain);
}

void decoder_constraint_adam(float* W_dec, const float* grad, float* m, float* v, int64_t D, int64_t d,
                             const AdamHyper& h, int64_t t, float grad_scale) {
  const AdamConsts c = adam_consts(h, t);
  parallel_for(
      D,
      [&](int64_t lo, int64_t hi, int) {
        thread_local FloatBuffer gbuf;  // allocated once per thread and width
        if (gbuf.size() < static_cast<size_t>(d)) gbuf.resize(static_cast<size_t>(d));
        float* __restrict gs = gbuf.data();
        for (int64_t i = lo; i < hi; ++i) {
          float* __restrict w = W_dec + i * d;
          const float* __restrict gr = grad + i * d;
          float norm2 = 0.0f;
#pragma omp simd reduction(+ : norm2)
          for (int64_t j = 0; j < d; ++j) norm2 += w[j] * w[j];
          const float norm = std::sqrt(norm2);
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int64_t j = 0; j < d; ++j) {
            w[j] = w[j] / norm;
            const float gj = grad_scale == 1.0f ? gr[j] : gr[j] * grad_scale;
            gs[j] = gj;
            dot += gj * w[j];
          }
#pragma omp simd
          for (int64_t j = 0; j < d; ++j) gs[j] -= dot * w[j];
          adam_range(w, gs, m + i * d, v + i * d, d, c);
        }
      },
      16);
}

}  // namespace msae::kernels
