// Naive reference kernels: the test oracle for kernels.h and a debug fallback. Single-threaded,
// written for clarity, never deleted. Same contracts (shapes, tie policy) as kernels.h.
#pragma once

#include "msae/kernels.h"

namespace msae::kernels::ref {

// C = alpha * op(A) @ op(B) + beta * C, triple loop, accumulating in double.
void sgemm(Trans trans_a, Trans trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

void batch_topk(const float* pre, int64_t B, int64_t D, int64_t keep, SparseCodes& out);
// kernels::exact_dot's order spelled out: the products (exact in double) summed in four interleaved
// columns of four lanes (element k of each block of 16 goes to column (k / 4) % 4, lane k % 4), the
// remaining blocks of four in columns 0, 1, 2, the last < 4 products in a scalar, then the columns, the
// lanes, the scalar and b added in a fixed tree; one rounding to float. exact_dot must equal it bit for bit.
float exact_dot(const float* x, const float* w, int64_t d, float b);
// Screener::batch_topk's oracle: every pre-activation with exact_dot, then batch_topk.
void screened_batch_topk(const float* x, int64_t B, int64_t d, const float* W, const float* b, int64_t D, int64_t keep,
                         SparseCodes& out);
void row_topk(const float* pre, int64_t B, int64_t D, int64_t k, SparseCodes& out);
void threshold_select(const float* pre, int64_t B, int64_t D, float threshold, int64_t limit, SparseCodes& out);
void adam_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h, int64_t t);
void aux_topk(const float* pre, int64_t B, int64_t D, const std::vector<int32_t>& dead, int64_t keep, SparseCodes& out);
void csr_to_csc(const SparseCodes& codes, CscIndex& out);
void decoder_constraint_adam(float* W_dec, const float* grad, float* m, float* v, int64_t D, int64_t d,
                             const AdamHyper& h, int64_t t, float grad_scale);
void csr_times_dense(const SparseCodes& codes, const float* W, int64_t d, float* out);
void csr_row_dots(const SparseCodes& codes, const float* W, const float* Q, int64_t d, float* out);
void csc_accumulate_pair(const CscIndex& csc, int64_t B, const float* a_vals, const float* Q1, float* G1,
                         const float* b_vals, const float* Q2, float* G2, float* sum_b, int64_t d, int64_t i0,
                         int64_t i1);

}  // namespace msae::kernels::ref
