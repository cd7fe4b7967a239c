// msae kernels: the BLAS shim and the compute kernels of a training step.
// Contract for every kernel: row-major float32, shapes in the comments, no aliasing between inputs and
// outputs unless stated, multithreaded with OpenMP unless stated. Each kernel here has a naive twin in
// kernels_ref.h (src/kernels/ref/) that is the test oracle.
#pragma once

#include <cstdint>
#include <string>
#include <memory>
#include <string>
#include <vector>

#include "msae/comm.h"
#include "msae/core.h"

namespace msae::kernels {

// ---------------------------------------------------------------------------------------------
// GEMM shim: the only place that includes cblas.h. C = alpha * op(A) @ op(B) + beta * C.
// op(A) is (M, K), op(B) is (K, N), C is (M, N); lda/ldb/ldc are row strides of the stored matrices.
// ---------------------------------------------------------------------------------------------
enum class Trans { no, yes };
void sgemm(Trans trans_a, Trans trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
// Threading: a GEMM large enough to benefit is split (over the larger of M and N) across msae's thread
// pool (msae::parallel), each part one single-threaded OpenBLAS call; OpenBLAS's own workers stay idle.
// set_blas_threads(n) caps the parts per GEMM (n <= 0: msae::num_threads()); blas_threads() reports it.
void set_blas_threads(int n);
int blas_threads();
// sgemm split into `parts` fixed parts, whatever the thread count (the parts are shared among up to
// blas_threads() threads): the result depends on the shapes, `parts` and the BLAS kernel only, not on the
// thread count, which sgemm's results do (its parts are the threads). For results that must not change
// with --threads (synth::orthogonalize_directions).
void sgemm_fixed_parts(int parts, Trans trans_a, Trans trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                       const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
std::string blas_info();  // e.g. "OpenBLAS 0.3.21 ... Zen core=Zen threads=2 (...)"

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

// Reusable scratch of the selection kernels: after the first call with a given shape, the calls below
// allocate nothing (given `out` keeps its capacity too).
struct SelectScratch {
  std::vector<std::vector<int32_t>> ids;  // per thread: extracted (row-major) candidate ids
  std::vector<FloatBuffer> vals;          // per thread: their values
  std::vector<std::vector<uint32_t>> hist;  // per thread: histogram of float bit patterns
  std::vector<int64_t> row_count;         // (B) candidates per row
  std::vector<int64_t> thread_info;       // per-thread counters
  FloatBuffer work;                       // values of the cut bin / candidate set
};
// BatchTopK as batch_topk above (same result, same tie policy), multithreaded on msae's pool. `hint` (> 0)
// is a guess of the cut value (e.g. the previous step's): entries >= hint are extracted in the first pass
// over `pre`, and when at least `keep` of them are found the cut is resolved among those alone (one pass
// over the (B, D) matrix instead of two). A wrong hint costs time, never correctness. Returns the cut (the
// smallest kept value; 0 when nothing is kept).
float batch_topk(const float* pre /*(B, D)*/, int64_t B, int64_t D, int64_t keep, SparseCodes& out,
                 SelectScratch& scratch, float hint);
// TopK per row (row_topk) on msae's pool without allocation.
void row_topk(const float* pre /*(B, D)*/, int64_t B, int64_t D, int64_t k, SparseCodes& out, SelectScratch& scratch);

// ---- Screened BatchTopK (src/kernels/screen.cpp; docs/performance.md, "Screened selection"). The same
// selection as batch_topk over the exact pre-activations pre[r, i] = exact_dot(x_r, W_i, d) + b[i], without
// computing most of them exactly: an int8 GEMM (oneDNN; x and W quantized per row) gives approximations with
// a proven error bound (per entry, from the quantization residuals' norms: |exact - approx| <=
// |x^_r| |dW_i| + |dx_r| |W_i| plus a margin for float rounding); the keep-th largest lower bound L is a
// lower bound of the true cut, so every entry of the selection has an upper bound >= L; only those
// candidates are computed exactly, and the selection is made among them with batch_topk's tie rule. When
// the bound is too loose (L <= 0, or candidates over a quarter of B*D) the approximations come from the
// fp32 GEMM instead, with its rounding bound (same result, fp32 speed).
// exact_dot: sum_k x[k] * w[k] accumulated in double in a fixed order, rounded once to float. The
// selection's reference (kernels_ref.h) computes every entry with it.
float exact_dot(const float* x, const float* w, int64_t d, float b);
// Whether the screened selection is expected to pay for a batch-wide selection of B rows over D latents of
// width d on this build, as measured (docs/performance.md, "Screened selection"): on an AVX2 build with
// d >= 768 and B * D >= 2^24 (Zen 3, no VNNI: oneDNN's int8 GEMM at about twice fp32; 0.75x to 0.85x the
// sparse step there, 1.0x at the edge); where oneDNN runs VNNI (int8_gemm_vnni) with d >= 512 and
// B * D >= 2^22 (Zen 5: 0.31x to 0.82x the sparse step there, 1.1x at d = 256). Slower on smaller shapes
// (its per-step costs). The default engine (`--engine auto`) uses it.
// int8_gemm_vnni: oneDNN's effective ISA has VNNI (AVX-512 VNNI and up, or AVX-VNNI); DNNL_MAX_CPU_ISA
// caps it.
bool int8_gemm_vnni();
bool screen_pays(int64_t B, int64_t D, int64_t d);
struct ScreenStats {
  int64_t candidates = 0;    // entries whose upper bound reaches the proven cut L
  int64_t exact = 0;         // entries computed exactly (candidates left after the second cut)
  int64_t keep = 0;
  // How the candidates were found: 0 int8, threshold from a sample of rows; 1 int8, from all rows;
  // 3, 4 the same from the fp32 GEMM (the int8 bound was too loose); 5 fp32, fewer than keep positive
  // lower bounds (every entry that may be positive is a candidate).
  int path = 0;
  bool fp32_fallback = false;  // the approximations came from the fp32 GEMM (path >= 3)
  double seconds_quantize = 0, seconds_gemm = 0, seconds_bound = 0, seconds_candidates = 0, seconds_select = 0;
};
class Screener {
 public:
  Screener();
  ~Screener();
  Screener(const Screener&) = delete;
  Screener& operator=(const Screener&) = delete;
  // x (B, d), W (D, d) row-major, b (D) or nullptr. Out: CSR codes (ids ascending, values > 0) of the keep
  // largest positive exact pre-activations, ties by lower flat index. Returns the cut (smallest kept; 0 if
  // none). `work` must hold B * D floats (the engine's pre-activation buffer); its contents are scratch.
  float batch_topk(const float* x, int64_t B, int64_t d, const float* W, const float* b, int64_t D, int64_t keep,
                   float* work, SparseCodes& out);
  const ScreenStats& stats() const { return stats_; }
  // The kernel in use, for msae.json and msae bench ("oneDNN <version> int8 matmul (<impl>, <n>-bit
  // weights)").
  std::string kernel() const;
  // Encoder rows are quantized to [-L, L]: L = 127 where the int8 GEMM sums u8 x s8 products in int32
  // (VNNI, AMX; found by probing each new primitive), else 63 (vpmaddubsw's int16 pairs would saturate).
  // weight_levels: L of the last call (0 before one). set_max_weight_levels caps L (tests take the 63 path
  // on any host with it); the selection is the same either way.
  int weight_levels() const;
  void set_max_weight_levels(int levels);

 private:
  struct Impl;
  struct Pass;
  std::unique_ptr<Impl> impl_;
  ScreenStats stats_;
};

// AuxK selection: for each row r, the top `keep` values of relu(pre[r, i]) over the latents i in `dead`
// (ascending ids), positive values only (zeros carry nothing), ties broken by lower latent id; CSR out
// with ids ascending. Multithreaded; allocation-free after the first call (per-thread scratch in `scratch`).
void aux_topk(const float* pre /*(B, D)*/, int64_t B, int64_t D, const std::vector<int32_t>& dead, int64_t keep,
              SparseCodes& out, SelectScratch& scratch);

// ---- Selection across processes (src/kernels/select_dist.cpp; docs/distributed.md). Each process holds the
// pre-activations of a shard of the latents: local column i is global latent global_ids[i] (ascending).
// `codes` holds this process's candidates, selected from its own (B, D_local) slice by the kernels above
// with the same `keep`; on return it holds this process's part of the selection one process would make
// over all D_global latents (same entries, same tie rule). Collective: every process calls with the same
// keep. Allocation-free after the first calls at a shape (scratch in DistScratch).
struct DistScratch {
  std::vector<int64_t> hist, ties, counts, row_need, row_total, row_ties;
  std::vector<uint32_t> row_prefix;
  std::vector<char> send, bytes;
  std::vector<float> row_cut_val;
  std::vector<int32_t> row_cut_id;
};
// How dist_row_cut agrees on each row's cut: by sending every candidate to every process, or by rounds of
// per-row histograms of the value bits (traffic independent of the number of processes). Both are exact
// and keep the same entries; `automatic` takes the one that sends less.
enum class RowCutMethod { automatic, candidates, histograms };
// BatchTopK: candidates from batch_topk(local pre, keep); keeps the `keep` largest over all processes, ties
// by lower global flat index r * D_global + id. Returns the cut (the smallest kept value; 0 if none).
float dist_batch_cut(SparseCodes& codes, int64_t keep, const std::vector<int64_t>& global_ids, int64_t D_global,
                     comm::Comm& comm, DistScratch& scratch);
// Per row (TopK, AuxK): candidates from row_topk / aux_topk with `keep` per row; keeps each row's `keep`
// largest over all processes, ties by lower global id. Returns the smallest kept value over all rows of all
// processes (0 if none).
float dist_row_cut(SparseCodes& codes, int64_t keep, const std::vector<int64_t>& global_ids, comm::Comm& comm,
                   DistScratch& scratch, RowCutMethod method = RowCutMethod::automatic);

// CSC transpose of CSR codes: for latent i, entries [col_ptr[i], col_ptr[i+1]) in ascending row order;
// row[e] is the row and src[e] the CSR index of the entry (for its value and its gradient).
struct CscIndex {
  std::vector<int64_t> col_ptr;  // (D + 1)
  std::vector<int32_t> row;      // (nnz)
  std::vector<int64_t> src;      // (nnz)
  std::vector<int64_t> counts;   // (threads, D) scratch
};
void csr_to_csc(const SparseCodes& codes, CscIndex& out);

// ---------------------------------------------------------------------------------------------
// Sparse x dense products (src/kernels/sparse_mm.cpp) on packed, chunk-major copies of the dense operands
// (the AuxK products: hundreds of entries per row over a few thousand latents; why packing: that file).
// ---------------------------------------------------------------------------------------------
// Chosen rows of a row-major (., d) matrix, chunk-major: data[(c * n + s) * width + j] = M[rows[s], c * width + j],
// zero past d. Buffers only grow.
struct ChunkedRows {
  int64_t n = 0, d = 0, width = 0, chunks = 0;
  FloatBuffer data;  // (chunks, n, width)
};
// rows == nullptr: rows 0..n-1. width: a multiple of 8. Multithreaded over rows.
void pack_rows_chunked(const float* M /*(., d)*/, int64_t d, const int32_t* rows /*(n)*/, int64_t n, int64_t width,
                       ChunkedRows& out);

// The rows of W that CSR codes use, packed for csr_times_dense / csr_row_dots.
struct PackedCodesRows {
  std::vector<int32_t> slot_of;     // (D) slot of a used latent, -1 otherwise
  std::vector<int32_t> used;        // (n) used latent ids, ascending
  std::vector<int32_t> entry_slot;  // (nnz) slot of each entry's latent
  ChunkedRows rows;                 // (chunks, n, 64)
};
void pack_for_codes(const SparseCodes& codes, const float* W /*(D, d)*/, int64_t d, PackedCodesRows& out);
// out[r] = sum_{e in row r} vals[e] * W[ids[e]]; rows without entries get zeros. Multithreaded over rows.
void csr_times_dense(const SparseCodes& codes, const PackedCodesRows& W, float* out /*(B, d)*/);
// out[e] = <W[ids[e]], Q[r]> for every entry e of row r. Multithreaded over rows.
void csr_row_dots(const SparseCodes& codes, const PackedCodesRows& W, const float* Q /*(B, d)*/, float* out /*(nnz)*/);

// Operand layout of csc_accumulate_pair (chunks of 32 floats).
void pack_pair_operand(const float* Q /*(B, d)*/, int64_t B, int64_t d, ChunkedRows& out);
struct PairScratch {  // per calling thread
  std::vector<int32_t> latents;
  std::vector<int64_t> cursor;
  ChunkedRows G1, G2;
  FloatBuffer a, b;  // the entries' a_vals / b_vals in CSC order
};
// For every latent i in [i0, i1), over its CSC entries e (row r = csc.row[e], s = csc.src[e]) in ascending
// row order:  G1[i] += a_vals[s] * Q1[r];  G2[i] += b_vals[s] * Q2[r];  sum_b[i] += b_vals[s].
// Q1, Q2 from pack_pair_operand. Each element accumulates in ascending row order with one multiply-add per
// entry, exactly as a plain per-entry axpy loop would. Single-threaded: threads call it on disjoint latent
// ranges, each with its own scratch.
void csc_accumulate_pair(const CscIndex& csc, const float* a_vals /*(nnz)*/, const ChunkedRows& Q1,
                         float* G1 /*(D, d)*/, const float* b_vals /*(nnz)*/, const ChunkedRows& Q2,
                         float* G2 /*(D, d)*/, float* sum_b /*(D)*/, int64_t i0, int64_t i1, PairScratch& scratch);

// ---------------------------------------------------------------------------------------------
// Adam (PyTorch semantics, no weight decay, bias-corrected with step t >= 1), one fused pass:
//   m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
// ---------------------------------------------------------------------------------------------
struct AdamHyper {
  float lr = 3e-4f, beta1 = 0.9f, beta2 = 0.99f, eps = 1e-8f;
};
void adam_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h, int64_t t);
// The same with the gradient first multiplied by grad_scale in float (the clip coefficient, exactly the
// reference's in-place `g *= c`; 1 = no clipping). g is not modified. Multithreaded, vectorized.
void adam_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h, int64_t t,
                 float grad_scale);
// SPEC update steps 2 and 3 for the decoder, fused into one pass per row i (D rows of width d):
// g_i = grad_scale * grad_i; u_i = W_dec[i] / ||W_dec[i]||; g_i -= (g_i . u_i) u_i; W_dec[i] = u_i;
// then Adam on W_dec[i] with g_i. `grad` is not modified. Multithreaded, vectorized.
void decoder_constraint_adam(float* W_dec /*(D, d)*/, const float* grad /*(D, d)*/, float* m, float* v, int64_t D,
                             int64_t d, const AdamHyper& h, int64_t t, float grad_scale);

// Sum of squares in double (for the global gradient norm).
double sum_squares(const float* x, int64_t n);

}  // namespace msae::kernels
