// Naive reference kernels (test oracle). Clarity over speed; single-threaded.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "msae/kernels_ref.h"

namespace msae::kernels {

void codes_to_dense(const SparseCodes& codes, float* dense) {
  std::fill(dense, dense + codes.rows * codes.cols, 0.0f);
  for (int64_t r = 0; r < codes.rows; ++r)
    for (int64_t j = codes.row_ptr[r]; j < codes.row_ptr[r + 1]; ++j) dense[r * codes.cols + codes.ids[j]] = codes.vals[j];
}

namespace ref {
namespace {

// Builds CSR codes from a dense (B, D) keep-mask over relu(pre); zero values are dropped.
void codes_from_mask(const float* pre, int64_t B, int64_t D, const std::vector<char>& keep, SparseCodes& out) {
  out.rows = B;
  out.cols = D;
  out.row_ptr.assign(B + 1, 0);
  out.ids.clear();
  out.vals.clear();
  for (int64_t r = 0; r < B; ++r) {
    for (int64_t i = 0; i < D; ++i) {
      const int64_t flat = r * D + i;
      if (keep[flat] && pre[flat] > 0.0f) {
        out.ids.push_back(static_cast<int32_t>(i));
        out.vals.push_back(pre[flat]);
      }
    }
    out.row_ptr[r + 1] = static_cast<int64_t>(out.ids.size());
  }
}

// Orders flat indices by value descending, ties by lower index first (the documented tie policy).
struct ByValueThenIndex {
  const float* values;
  bool operator()(int64_t a, int64_t b) const {
    const float va = std::max(values[a], 0.0f), vb = std::max(values[b], 0.0f);
    return va != vb ? va > vb : a < b;
  }
};

}  // namespace

void sgemm(Trans trans_a, Trans trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int64_t p = 0; p < K; ++p) {
        const float a = trans_a == Trans::no ? A[i * lda + p] : A[p * lda + i];
        const float b = trans_b == Trans::no ? B[p * ldb + j] : B[j * ldb + p];
        acc += static_cast<double>(a) * b;
      }
      float& c = C[i * ldc + j];
      c = static_cast<float>(alpha * acc + (beta == 0.0f ? 0.0 : static_cast<double>(beta) * c));
    }
}

float exact_dot(const float* x, const float* w, int64_t d, float b) {
  double col[4][4] = {};
  int64_t k = 0;
  for (; k + 16 <= d; k += 16)
    for (int j = 0; j < 16; ++j) col[j / 4][j % 4] += static_cast<double>(x[k + j]) * static_cast<double>(w[k + j]);
  for (int c = 0; k + 4 <= d; k += 4, ++c)
    for (int l = 0; l < 4; ++l) col[c][l] += static_cast<double>(x[k + l]) * static_cast<double>(w[k + l]);
  double tail = 0;
  for (; k < d; ++k) tail += static_cast<double>(x[k]) * static_cast<double>(w[k]);
  double lane[4];
  for (int l = 0; l < 4; ++l) lane[l] = (col[0][l] + col[1][l]) + (col[2][l] + col[3][l]);
  return static_cast<float>((((lane[0] + lane[1]) + (lane[2] + lane[3])) + tail) + static_cast<double>(b));
}

void screened_batch_topk(const float* x, int64_t B, int64_t d, const float* W, const float* b, int64_t D, int64_t keep,
                         SparseCodes& out) {
  std::vector<float> pre(static_cast<size_t>(B * D));
  for (int64_t r = 0; r < B; ++r)
    for (int64_t i = 0; i < D; ++i) pre[r * D + i] = exact_dot(x + r * d, W + i * d, d, b ? b[i] : 0.0f);
  ref::batch_topk(pre.data(), B, D, keep, out);
}

void batch_topk(const float* pre, int64_t B, int64_t D, int64_t keep, SparseCodes& out) {
  const int64_t n = B * D;
  keep = std::clamp<int64_t>(keep, 0, n);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), ByValueThenIndex{pre});
  std::vector<char> mask(n, 0);
  for (int64_t j = 0; j < keep; ++j) mask[order[j]] = 1;
  codes_from_mask(pre, B, D, mask, out);
}

void row_topk(const float* pre, int64_t B, int64_t D, int64_t k, SparseCodes& out) {
  k = std::clamp<int64_t>(k, 0, D);
  std::vector<char> mask(B * D, 0);
  std::vector<int64_t> order(D);
  for (int64_t r = 0; r < B; ++r) {
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), ByValueThenIndex{pre + r * D});
    for (int64_t j = 0; j < k; ++j) mask[r * D + order[j]] = 1;
  }
  codes_from_mask(pre, B, D, mask, out);
}

void threshold_select(const float* pre, int64_t B, int64_t D, float threshold, int64_t limit, SparseCodes& out) {
  std::vector<char> mask(B * D, 0);
  for (int64_t r = 0; r < B; ++r)
    for (int64_t i = 0; i < std::min(limit, D); ++i) mask[r * D + i] = std::max(pre[r * D + i], 0.0f) > threshold;
  codes_from_mask(pre, B, D, mask, out);
}

void adam_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h, int64_t t) {
  const double bc1 = 1.0 - std::pow(static_cast<double>(h.beta1), static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(static_cast<double>(h.beta2), static_cast<double>(t));
  const float step_size = static_cast<float>(h.lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  for (int64_t i = 0; i < n; ++i) {
    m[i] = h.beta1 * m[i] + (1.0f - h.beta1) * g[i];
    v[i] = h.beta2 * v[i] + (1.0f - h.beta2) * g[i] * g[i];
    const float denom = std::sqrt(v[i]) / bc2_sqrt + h.eps;
    p[i] -= step_size * (m[i] / denom);
  }
}


void aux_topk(const float* pre, int64_t B, int64_t D, const std::vector<int32_t>& dead, int64_t keep, SparseCodes& out) {
  // Dense mask: per row, order the dead latents by relu value descending then id ascending; keep the first
  // `keep` (zeros are dropped by codes_from_mask).
  std::vector<char> mask(B * D, 0);
  std::vector<int32_t> order(dead);
  const int64_t take = std::min<int64_t>(std::max<int64_t>(keep, 0), static_cast<int64_t>(dead.size()));
  for (int64_t r = 0; r < B; ++r) {
    order = dead;
    const float* row = pre + r * D;
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      const float va = std::max(row[a], 0.0f), vb = std::max(row[b], 0.0f);
      return va != vb ? va > vb : a < b;
    });
    for (int64_t j = 0; j < take; ++j) mask[r * D + order[j]] = 1;
  }
  codes_from_mask(pre, B, D, mask, out);
}

void csr_to_csc(const SparseCodes& codes, CscIndex& out) {
  out.col_ptr.assign(codes.cols + 1, 0);
  out.row.clear();
  out.src.clear();
  for (int64_t i = 0; i < codes.cols; ++i) {
    for (int64_t r = 0; r < codes.rows; ++r)
      for (int64_t e = codes.row_ptr[r]; e < codes.row_ptr[r + 1]; ++e)
        if (codes.ids[e] == i) {
          out.row.push_back(static_cast<int32_t>(r));
          out.src.push_back(e);
        }
    out.col_ptr[i + 1] = static_cast<int64_t>(out.row.size());
  }
}

void decoder_constraint_adam(float* W_dec, const float* grad, float* m, float* v, int64_t D, int64_t d,
                             const AdamHyper& h, int64_t t, float grad_scale) {
  // The unfused sequence of train::apply_update: scale, constrain (as in src/train/adam.cpp), then Adam.
  std::vector<float> g(grad, grad + D * d);
  if (grad_scale != 1.0f)
    for (float& x : g) x *= grad_scale;
  for (int64_t i = 0; i < D; ++i) {
    float* w = W_dec + i * d;
    float* gr = g.data() + i * d;
    float norm2 = 0.0f;
    for (int64_t j = 0; j < d; ++j) norm2 += w[j] * w[j];
    const float norm = std::sqrt(norm2);
    float dot = 0.0f;
    for (int64_t j = 0; j < d; ++j) {
      w[j] /= norm;
      dot += gr[j] * w[j];
    }
    for (int64_t j = 0; j < d; ++j) gr[j] -= dot * w[j];
  }
  ref::adam_update(W_dec, g.data(), m, v, D * d, h, t);
}

// Sparse x dense products, accumulated in double, entry by entry.
void csr_times_dense(const SparseCodes& codes, const float* W, int64_t d, float* out) {
  for (int64_t r = 0; r < codes.rows; ++r)
    for (int64_t j = 0; j < d; ++j) {
      double s = 0.0;
      for (int64_t e = codes.row_ptr[r]; e < codes.row_ptr[r + 1]; ++e)
        s += static_cast<double>(codes.vals[e]) * W[static_cast<int64_t>(codes.ids[e]) * d + j];
      out[r * d + j] = static_cast<float>(s);
    }
}

void csr_row_dots(const SparseCodes& codes, const float* W, const float* Q, int64_t d, float* out) {
  for (int64_t r = 0; r < codes.rows; ++r)
    for (int64_t e = codes.row_ptr[r]; e < codes.row_ptr[r + 1]; ++e) {
      double s = 0.0;
      for (int64_t j = 0; j < d; ++j)
        s += static_cast<double>(W[static_cast<int64_t>(codes.ids[e]) * d + j]) * Q[r * d + j];
      out[e] = static_cast<float>(s);
    }
}

void csc_accumulate_pair(const CscIndex& csc, int64_t /*B*/, const float* a_vals, const float* Q1, float* G1,
                         const float* b_vals, const float* Q2, float* G2, float* sum_b, int64_t d, int64_t i0,
                         int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t j = 0; j < d; ++j) {
      double s1 = G1[i * d + j], s2 = G2[i * d + j];
      for (int64_t e = csc.col_ptr[i]; e < csc.col_ptr[i + 1]; ++e) {
        s1 += static_cast<double>(a_vals[csc.src[e]]) * Q1[csc.row[e] * d + j];
        s2 += static_cast<double>(b_vals[csc.src[e]]) * Q2[csc.row[e] * d + j];
      }
      G1[i * d + j] = static_cast<float>(s1);
      G2[i * d + j] = static_cast<float>(s2);
    }
    double s = sum_b[i];
    for (int64_t e = csc.col_ptr[i]; e < csc.col_ptr[i + 1]; ++e) s += b_vals[csc.src[e]];
    sum_b[i] = static_cast<float>(s);
  }
}

}  // namespace ref
}  // namespace msae::kernels
