// msae kernels: the BLAS shim and the compute kernels of a training step.
// Contract for every kernel: row-major float32, shapes in the comments, no aliasing between inputs and
// outputs unless stated, multithreaded with OpenMP unless stated. Each kernel here has a naive twin in
// kernels_ref.h (src/kernels/ref/) that is the test oracle.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "msae/core.h"

namespace msae::kernels {

// ---------------------------------------------------------------------------------------------
// GEMM shim: the only place that includes cblas.h. C = alpha * op(A) @ op(B) + beta * C.
// op(A) is (M, K), op(B) is (K, N), C is (M, N); lda/ldb/ldc are row strides of the stored matrices.
// ---------------------------------------------------------------------------------------------
enum class Trans { no, yes };
void sgemm(Trans trans_a, Trans trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void set_blas_threads(int n);
int blas_threads();
std::string blas_info();  // e.g. "OpenBLAS 0.3.21 (pthread) core=Haswell threads=2"

// ---------------------------------------------------------------------------------------------
// Sparse codes (CSR). Row r owns entries [row_ptr[r], row_ptr[r+1]); latent ids strictly ascending
// within a row; only strictly positive values are stored.
// ---------------------------------------------------------------------------------------------
struct SparseCodes {
  int64_t rows = 0;              // B
  int64_t cols = 0;              // D
  std::vector<int64_t> row_ptr;  // (B + 1)
  std::vector<int32_t> ids;      // (nnz)
  FloatBuffer vals;              // (nnz), all > 0
  int64_t nnz() const { return row_ptr.empty() ? 0 : row_ptr.back(); }
};

// Dense (B, D) view of CSR codes, for tests and the reference path.
void codes_to_dense(const SparseCodes& codes, float* dense /*(B, D)*/);

// ---------------------------------------------------------------------------------------------
// Selection. All take the encoder pre-activations and apply relu themselves.
// Tie policy (documented in docs/numerics.md): among equal values at the cut, the lower flat index
// r*D + i is kept, so the result is deterministic and independent of thread count.
// ---------------------------------------------------------------------------------------------
// BatchTopK: keep the `keep` (= k*B) largest entries of relu(pre) over the whole (B, D) batch;
// entries equal to 0 are never stored (they carry no value and no gradient).
void batch_topk(const float* pre /*(B, D)*/, int64_t B, int64_t D, int64_t keep, SparseCodes& out);
// TopK per row: the k largest of relu(pre[r]) per row, positive ones only.
void row_topk(const float* pre /*(B, D)*/, int64_t B, int64_t D, int64_t k, SparseCodes& out);
// Inference (JumpReLU with one global threshold): keep pre[r, i] where relu(pre) > threshold and i < limit.
void threshold_select(const float* pre /*(B, D)*/, int64_t B, int64_t D, float threshold, int64_t limit,
                      SparseCodes& out);

// ---------------------------------------------------------------------------------------------
// Adam (PyTorch semantics, no weight decay, bias-corrected with step t >= 1), one fused pass:
//   m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
// ---------------------------------------------------------------------------------------------
struct AdamHyper {
  float lr = 3e-4f, beta1 = 0.9f, beta2 = 0.99f, eps = 1e-8f;
};
void adam_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h, int64_t t);

// Sum of squares in double (for the global gradient norm).
double sum_squares(const float* x, int64_t n);

}  // namespace msae::kernels
