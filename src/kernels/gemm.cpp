// The GEMM shim: the only file that includes cblas.h (DESIGN.md), so a different BLAS or a GPU backend
// replaces one file.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "msae/kernels.h"

namespace msae::kernels {

void sgemm(Trans trans_a, Trans trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, trans_a == Trans::yes ? CblasTrans : CblasNoTrans,
              trans_b == Trans::yes ? CblasTrans : CblasNoTrans, static_cast<blasint>(M), static_cast<blasint>(N),
              static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}

void set_blas_threads(int n) { openblas_set_num_threads(std::max(1, n)); }
int blas_threads() { return openblas_get_num_threads(); }

std::string blas_info() {
  std::string info = openblas_get_config();
  info += cat(" core=", openblas_get_corename(), " threads=", openblas_get_num_threads());
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  if (coretype) info += cat(" (OPENBLAS_CORETYPE=", coretype, " set in the environment)");
  return info;
}

double sum_squares(const float* x, int64_t n) {
  double total = 0.0;
#pragma omp parallel for reduction(+ : total) schedule(static)
  for (int64_t i = 0; i < n; ++i) total += static_cast<double>(x[i]) * x[i];
  return total;
}

void adam_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h, int64_t t) {
  // Same arithmetic as kernels::ref::adam_update and torch.optim.Adam (foreach=False):
  // step_size = lr / bc1; denom = sqrt(v) / sqrt(bc2) + eps; p -= step_size * m / denom.
  const double bc1 = 1.0 - std::pow(static_cast<double>(h.beta1), static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(static_cast<double>(h.beta2), static_cast<double>(t));
  const float step_size = static_cast<float>(h.lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float b1 = h.beta1, b2 = h.beta2, one_b1 = 1.0f - h.beta1, one_b2 = 1.0f - h.beta2, eps = h.eps;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = b1 * m[i] + one_b1 * gi;
    const float vi = b2 * v[i] + one_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= step_size * (mi / (std::sqrt(vi) / bc2_sqrt + eps));
  }
}

}  // namespace msae::kernels
