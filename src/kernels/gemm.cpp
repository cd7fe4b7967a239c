// The GEMM shim: the only file that includes cblas.h (DESIGN.md), so a different BLAS or a GPU backend
// replaces one file.
#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>

#include "msae/kernels.h"

namespace msae::kernels {

namespace {
// GEMM parallelism: msae splits every large GEMM over its own pool (msae::parallel) and runs OpenBLAS
// single-threaded inside each part. One set of threads in the process, all with passive waits: see
// src/core/threads.cpp and docs/performance.md for why (OpenBLAS's workers spin after each call).
std::atomic<int> g_gemm_threads{0};  // 0: follow msae::num_threads()

void blas_single_threaded() {
  static const bool once = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)once;
}

void cblas_call(Trans trans_a, Trans trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a == Trans::yes ? CblasTrans : CblasNoTrans,
              trans_b == Trans::yes ? CblasTrans : CblasNoTrans, static_cast<blasint>(M), static_cast<blasint>(N),
              static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}

// C = alpha op(A) op(B) + beta C as `parts` single-threaded OpenBLAS calls over contiguous ranges of the
// larger of M and N (multiples of 16 where possible), run on up to `threads` of msae's pool. The result
// depends on the parts (OpenBLAS's micro-kernels round a row differently at other offsets), not on the
// threads.
void split_gemm(int parts, int threads, Trans trans_a, Trans trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const bool split_m = M >= N;
  const int64_t extent = split_m ? M : N;
  auto edge = [&](int t) {
    const int64_t e = extent * t / parts;
    return t == parts ? extent : std::min(extent, (e + 15) / 16 * 16);
  };
  auto part = [&](int p) {
    const int64_t lo = edge(p), hi = edge(p + 1);
    if (lo >= hi) return;
    if (split_m) {
      const float* a = trans_a == Trans::no ? A + lo * lda : A + lo;
      cblas_call(trans_a, trans_b, hi - lo, N, K, alpha, a, lda, B, ldb, beta, C + lo * ldc, ldc);
    } else {
      const float* b = trans_b == Trans::no ? B + lo : B + lo * ldb;
      cblas_call(trans_a, trans_b, M, hi - lo, K, alpha, A, lda, b, ldb, beta, C + lo, ldc);
    }
  };
  if (threads <= 1) {
    for (int p = 0; p < parts; ++p) part(p);
    return;
  }
  parallel(
      [&](int tid, int nt) {
        for (int p = tid; p < parts; p += nt) part(p);
      },
      std::min(threads, parts));
}

}  // namespace

void sgemm(Trans trans_a, Trans trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  blas_single_threaded();
  const int threads = blas_threads();
  // Below ~8 MFLOP a split costs more than it saves.
  if (threads <= 1 || static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) < 4e6) {
    cblas_call(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  split_gemm(threads, threads, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void sgemm_fixed_parts(int parts, Trans trans_a, Trans trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                       const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  MSAE_ASSERT(parts >= 1);
  if (M == 0 || N == 0) return;
  blas_single_threaded();
  split_gemm(parts, blas_threads(), trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void set_blas_threads(int n) {
  blas_single_threaded();
  g_gemm_threads.store(std::max(0, n));
}
int blas_threads() {
  const int n = g_gemm_threads.load();
  return n <= 0 ? num_threads() : std::min(n, num_threads());
}

std::string blas_info() {
  std::string info = openblas_get_config();
  info += cat(" core=", openblas_get_corename(), " threads=", blas_threads(),
              " (GEMMs split over msae's pool, OpenBLAS single-threaded per part)");
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  if (coretype) info += cat(" (OPENBLAS_CORETYPE=", coretype, " set in the environment)");
  const char* l2 = std::getenv("OPENBLAS_L2_SIZE");
  if (l2) info += cat(" (OPENBLAS_L2_SIZE=", l2, " set in the environment)");
  return info;
}

}  // namespace msae::kernels
