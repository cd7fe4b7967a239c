// The CUDA training step (msae/cuda.h, docs/cuda.md): SPEC.md's default path on one GPU, the device twin of
// the sparse engine (src/model/step_sparse.cpp), phase by phase:
//   encode    x_cent = x - b_dec; pre = x_cent @ W_enc (+ b_enc)          cuBLAS, (B, D), fp32 output; the inputs
//             fp32 (sgemm, no tensor cores), tf32 (CUBLAS_COMPUTE_32F_FAST_TF32) or bf16 (bf16 copies of
//             x_cent and W_enc, the latter refreshed after each change; cublasGemmEx, CUBLAS_COMPUTE_32F)
//   select    BatchTopK over the batch: radix select over the float bits (radix_select.h), 4 histogram
//             passes over pre, per-row counts (ties ranked in flat order), an ordered compaction per row into
//             CSR (ids ascending); the threshold EMA; the dead counters and the dead list; a stable radix sort
//             of the entries by latent (CSC, rows ascending within a latent)
//   auxk      per row, the top min(aux_k, n_dead) among the dead latents (a block-local radix select), CSC
//   rows      per row (one block): AuxK decode, prefix reconstructions as snapshots of one running sum, the
//             losses, q = aux_scale (a - e), the suffix sums S_g, grad z = <W_dec[i], S_g(i)>, grad a = <W_dec[i], q>
//   latents   per latent (one block, its entries in ascending row order): grad W_dec[i], grad W_enc^T[i],
//             sum grad pre, grad b_enc[i]; grad b_dec and the statistics by two-level column/row reductions
//   update    clip (coefficient on the host from the device's sum of squares), decoder constraint fused with
//             Adam per row, Adam on the other tensors
// Determinism: the only atomics are integer ones (histograms, a flag); every float sum runs in a fixed order
// (per-thread strided loops, fixed shared-memory trees, serial loops over fixed chunks), cub's scans and
// radix sort are deterministic, and cuBLAS gives the same bits on the same GPU and toolkit. So two runs on
// the same GPU give bit-identical results.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <tuple>

#include <cub/cub.cuh>

#include "cuda/radix_select.h"
#include "msae/cuda.h"

namespace msae::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxGroups = 64;
constexpr int kRowChunk = 64;      // rows per partial of the column reductions
constexpr int kLatentChunk = 256;  // latents per partial of grad b_dec's latent part

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) runtime_error("CUDA error in ", what, ": ", cudaGetErrorString(e));
}
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) runtime_error("cuBLAS error in ", what, ": ", cublasGetStatusString(s));
}
#define MSAE_CUDA_CHECK(call) check((call), #call)
#define MSAE_LAUNCH_CHECK(name) check(cudaGetLastError(), name)

// A device buffer that only grows.
struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  DevBuf() = default;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  ~DevBuf() {
    if (p) cudaFree(p);
  }
  void ensure(size_t n) {
    if (n <= bytes) return;
    if (p) MSAE_CUDA_CHECK(cudaFree(p));
    p = nullptr;
    MSAE_CUDA_CHECK(cudaMalloc(&p, n));
    bytes = n;
  }
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

struct Groups {
  int G;
  long long bounds[kMaxGroups];  // m_1 < ... < m_G = D
  float scale[kMaxGroups];       // rec_scale * w_g
};

struct DevStats {
  double loss_sums[kMaxGroups + 2];  // mse(b_dec) sum, the G prefix sums, the AuxK sum
  double var_x;
  double grad_sq;
};

__device__ inline int group_of(const Groups& gr, long long id) {
  int g = 0;
  while (id >= gr.bounds[g]) ++g;
  return g;
}

// Fixed-order block sums (every thread of the block calls; the result is returned to every thread).
template <class T>
__device__ T block_sum(T v, T* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  const T r = sh[0];
  __syncthreads();
  return r;
}

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;  // lane 0 holds the sum
}

// ---- encode
// x_cent = x - b_dec; with bf16 GEMM inputs also its bf16 copy (round to nearest even), else xc16 is nullptr.
__global__ void k_center(const float* __restrict__ x, const float* __restrict__ b_dec, float* __restrict__ xc,
                         __nv_bfloat16* __restrict__ xc16, long long n, int d) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const float v = x[i] - b_dec[i % d];
    xc[i] = v;
    if (xc16) xc16[i] = __float2bfloat16_rn(v);
  }
}

// The bf16 copy of an fp32 buffer (round to nearest even).
__global__ void k_to_bf16(const float* __restrict__ a, __nv_bfloat16* __restrict__ out, long long n) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(a[i]);
}

__global__ void k_fill_rows(float* __restrict__ pre, const float* __restrict__ b_enc, long long n, int D) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    pre[i] = b_enc[i % D];
}

// ---- BatchTopK over the batch
__global__ void k_hist(const float* __restrict__ v, long long n, const RadixState* st, int pass,
                       unsigned long long* hist) {
  __shared__ unsigned int sh[kRadixBins];
  for (int b = threadIdx.x; b < kRadixBins; b += blockDim.x) sh[b] = 0;
  __syncthreads();
  const RadixState s = *st;
  if (pass == 0 || s.keep > 0)
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
      const uint32_t u = radix_key(v[i]);
      if (radix_in_pass(u, s)) atomicAdd(&sh[radix_digit(u, pass)], 1u);
    }
  __syncthreads();
  for (int b = threadIdx.x; b < kRadixBins; b += blockDim.x)
    if (sh[b]) atomicAdd(&hist[b], static_cast<unsigned long long>(sh[b]));
}

__global__ void k_radix_advance(RadixState* st, unsigned long long* hist, int pass, long long keep_asked) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  if (pass == 0) {
    long long total = 0;
    for (int b = 0; b < kRadixBins; ++b) total += static_cast<long long>(hist[b]);
    radix_begin(*st, keep_asked, total);
  }
  radix_advance(*st, hist, pass);
  for (int b = 0; b < kRadixBins; ++b) hist[b] = 0;
}

__global__ void k_row_counts(const float* __restrict__ pre, int D, const RadixState* st, long long* above,
                             long long* ties) {
  __shared__ long long sh[kThreads];
  const RadixState s = *st;
  const float* row = pre + static_cast<long long>(blockIdx.x) * D;
  long long a = 0, t = 0;
  if (s.keep > 0)
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
      const uint32_t u = radix_key(row[i]);
      if (u == 0u) continue;
      a += u > s.cut;
      t += u == s.cut;
    }
  a = block_sum(a, sh);
  t = block_sum(t, sh);
  if (threadIdx.x == 0) {
    above[blockIdx.x] = a;
    ties[blockIdx.x] = t;
  }
}

// cnt[r] = the row's kept entries; cnt[B] = 0 (the scan of B + 1 entries ends with the total).
__global__ void k_row_sizes(const long long* above, const long long* ties, const long long* ties_before,
                            const RadixState* st, int B, long long* cnt) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r > B) return;
  if (r == B) {
    cnt[B] = 0;
    return;
  }
  const RadixState s = *st;
  long long kt = s.need - ties_before[r];
  kt = kt < 0 ? 0 : (kt > ties[r] ? ties[r] : kt);
  cnt[r] = s.keep > 0 ? above[r] + kt : 0;
}

__global__ void k_compact(const float* __restrict__ pre, int D, const RadixState* st,
                          const long long* __restrict__ ties_before, const long long* __restrict__ row_ptr,
                          int* __restrict__ ids, float* __restrict__ vals, int* __restrict__ entry_row) {
  using BlockScan = cub::BlockScan<int, kThreads>;
  __shared__ typename BlockScan::TempStorage tmp;
  __shared__ long long base_out, base_tie;
  const RadixState s = *st;
  const int r = blockIdx.x;
  if (s.keep == 0) return;
  if (threadIdx.x == 0) {
    base_out = row_ptr[r];
    base_tie = ties_before[r];
  }
  __syncthreads();
  const float* row = pre + static_cast<long long>(r) * D;
  for (int c0 = 0; c0 < D; c0 += kThreads) {
    const int i = c0 + threadIdx.x;
    const float v = i < D ? row[i] : 0.0f;
    const uint32_t u = radix_key(v);
    // Most chunks hold nothing at or above the cut (k of D per row): no kept entry and no tie to count.
    if (!__syncthreads_or(u != 0u && u >= s.cut)) continue;
    const int is_tie = (u != 0u && u == s.cut) ? 1 : 0;
    int tie_rank = 0, tie_total = 0;
    BlockScan(tmp).ExclusiveSum(is_tie, tie_rank, tie_total);
    __syncthreads();
    const bool kept = radix_kept(u, s, base_tie + tie_rank);
    int pos = 0, kept_total = 0;
    BlockScan(tmp).ExclusiveSum(kept ? 1 : 0, pos, kept_total);
    if (kept) {
      const long long e = base_out + pos;
      ids[e] = i;
      vals[e] = v;
      entry_row[e] = r;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      base_out += kept_total;
      base_tie += tie_total;
    }
    __syncthreads();
  }
}

// threshold = (1 - rate) threshold + rate * cut, without contraction (the CPU's float expression).
__global__ void k_threshold(const RadixState* st, float* thr, float one_minus_rate, float rate, int update,
                            float* cut_out) {
  const RadixState s = *st;
  const float cut = s.keep > 0 ? __uint_as_float(s.cut) : 0.0f;
  *cut_out = cut;
  if (update && s.keep > 0) *thr = __fadd_rn(__fmul_rn(one_minus_rate, *thr), __fmul_rn(rate, cut));
}

// ---- dead counters
__global__ void k_mark_fired(const int* __restrict__ ids, const long long* row_ptr_end, unsigned char* fired) {
  const long long nnz = *row_ptr_end;
  for (long long e = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; e < nnz;
       e += static_cast<long long>(gridDim.x) * blockDim.x)
    fired[ids[e]] = 1;
}

// dead_flag has D + 1 entries (the last 0, so that the scan ends with n_dead).
__global__ void k_counters(const unsigned char* fired, long long* n_inactive, int D, long long dead_after,
                           int* dead_flag) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i > D) return;
  if (i == D) {
    dead_flag[D] = 0;
    return;
  }
  const long long n = fired[i] ? 0 : n_inactive[i] + 1;
  n_inactive[i] = n;
  dead_flag[i] = n >= dead_after ? 1 : 0;
}

__global__ void k_dead_list(const int* dead_flag, const int* dead_pos, int D, int* dead) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < D && dead_flag[i]) dead[dead_pos[i]] = i;
}

__global__ void k_iota(int* a, long long n) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    a[i] = static_cast<int>(i);
}

// col_ptr[i] = the first position p of the sorted keys with key >= i (i in 0..D); keys in [0, D], D marking an
// unused slot, so col_ptr[D] = the used entries.
__global__ void k_col_ptr(const int* keys, long long n, int D, long long* col_ptr) {
  for (long long p = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; p <= n;
       p += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int prev = p == 0 ? -1 : keys[p - 1];
    const int cur = p == n ? D : min(keys[p], D);
    for (int i = prev + 1; i <= cur; ++i) col_ptr[i] = p;
  }
}

// ---- AuxK: per row, the top `keep` among the dead latents (block-local radix select, ties by lower id).
__global__ void k_aux_select(const float* __restrict__ pre, int D, const int* __restrict__ dead, const int* n_dead_p,
                             int keep, int* __restrict__ aux_ids, float* __restrict__ aux_vals, int* aux_cnt) {
  using BlockScan = cub::BlockScan<int, kThreads>;
  __shared__ typename BlockScan::TempStorage tmp;
  __shared__ unsigned int hist[kRadixBins];
  __shared__ RadixState s_sh;
  __shared__ long long base_tie;
  __shared__ int base_out;
  const int r = blockIdx.x;
  const int n = *n_dead_p;
  const float* row = pre + static_cast<long long>(r) * D;
  if (threadIdx.x == 0) s_sh = RadixState{};
  __syncthreads();
  for (int pass = 0; pass < kRadixPasses; ++pass) {
    for (int b = threadIdx.x; b < kRadixBins; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    const RadixState s = s_sh;
    for (int k = threadIdx.x; k < n; k += blockDim.x) {
      const uint32_t u = radix_key(row[dead[k]]);
      if (radix_in_pass(u, s)) atomicAdd(&hist[radix_digit(u, pass)], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      if (pass == 0) {
        long long total = 0;
        for (int b = 0; b < kRadixBins; ++b) total += hist[b];
        radix_begin(s_sh, keep, total);
      }
      radix_advance(s_sh, hist, pass);
    }
    __syncthreads();
  }
  const RadixState s = s_sh;
  if (threadIdx.x == 0) {
    base_out = 0;
    base_tie = 0;
    aux_cnt[r] = static_cast<int>(s.keep);
  }
  __syncthreads();
  if (s.keep == 0) return;
  for (int c0 = 0; c0 < n; c0 += kThreads) {
    const int k = c0 + threadIdx.x;
    const float v = k < n ? row[dead[k]] : 0.0f;
    const uint32_t u = radix_key(v);
    if (!__syncthreads_or(u != 0u && u >= s.cut)) continue;
    const int is_tie = (u != 0u && u == s.cut) ? 1 : 0;
    int tie_rank = 0, tie_total = 0;
    BlockScan(tmp).ExclusiveSum(is_tie, tie_rank, tie_total);
    __syncthreads();
    const bool kept = radix_kept(u, s, base_tie + tie_rank);
    int pos = 0, kept_total = 0;
    BlockScan(tmp).ExclusiveSum(kept ? 1 : 0, pos, kept_total);
    if (kept) {
      const long long slot = static_cast<long long>(r) * keep + base_out + pos;
      aux_ids[slot] = dead[k];
      aux_vals[slot] = v;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      base_out += kept_total;
      base_tie += tie_total;
    }
    __syncthreads();
  }
}

// Sort keys of the AuxK slots: the latent, or D for an unused slot.
__global__ void k_aux_keys(const int* aux_ids, const int* aux_cnt, int keep, long long n, int D, int* keys) {
  for (long long p = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; p < n;
       p += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = p / keep;
    const int j = static_cast<int>(p - r * keep);
    keys[p] = j < aux_cnt[r] ? aux_ids[p] : D;
  }
}

// a = the AuxK decode of each row, into q; *any = 1 when some a is not 0.
__global__ void k_aux_decode(const float* __restrict__ W_dec, int d, const int* __restrict__ aux_ids,
                             const float* __restrict__ aux_vals, const int* aux_cnt, int keep, float* __restrict__ q,
                             int* any) {
  const int r = blockIdx.x;
  const int n = aux_cnt[r];
  const int* ids = aux_ids + static_cast<long long>(r) * keep;
  const float* vals = aux_vals + static_cast<long long>(r) * keep;
  bool nonzero = false;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float a = 0.0f;
    for (int e = 0; e < n; ++e) a += vals[e] * W_dec[static_cast<long long>(ids[e]) * d + j];
    q[static_cast<long long>(r) * d + j] = a;
    nonzero |= a != 0.0f;
  }
  if (nonzero) atomicOr(any, 1);
}

// ---- rows: one block per row
__global__ void k_rows(const float* __restrict__ x, const float* __restrict__ b_dec, const float* __restrict__ W_dec,
                       int d, const long long* __restrict__ row_ptr, const int* __restrict__ ids,
                       const float* __restrict__ vals, Groups gr, const int* use_aux_p, float aux_scale,
                       const int* __restrict__ aux_ids, const int* aux_cnt, int aux_keep, float* __restrict__ S,
                       float* __restrict__ q, double* __restrict__ row_loss, float* __restrict__ gz,
                       float* __restrict__ ga) {
  __shared__ double sh[kThreads];
  const int r = blockIdx.x;
  const int G = gr.G;
  const long long e0 = row_ptr[r], e1 = row_ptr[r + 1];
  const bool use_aux = aux_keep > 0 && *use_aux_p != 0;
  float* Sr = S + static_cast<long long>(r) * G * d;
  const float* xr = x + static_cast<long long>(r) * d;
  float* qr = q + static_cast<long long>(r) * d;
  double* loss = row_loss + static_cast<long long>(r) * (G + 2);
  // prefix reconstructions: snapshots of one running sum (ids ascending)
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float run = b_dec[j];
    int g = 0;
    for (long long e = e0; e < e1; ++e) {
      const int id = ids[e];
      while (id >= gr.bounds[g]) Sr[static_cast<long long>(g++) * d + j] = run;
      run += vals[e] * W_dec[static_cast<long long>(id) * d + j];
    }
    while (g < G) Sr[static_cast<long long>(g++) * d + j] = run;
  }
  // losses (each thread reads back only its own columns: no barrier needed)
  double acc = 0.0;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    const float t = b_dec[j] - xr[j];
    acc += static_cast<double>(t * t);
  }
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) loss[0] = acc;
  for (int h = 0; h < G; ++h) {
    acc = 0.0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
      const float t = Sr[static_cast<long long>(h) * d + j] - xr[j];
      acc += static_cast<double>(t * t);
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) loss[1 + h] = acc;
  }
  // e_G (+ AuxK's q), then the suffix sums S_h = S_{h+1} + scale_h (r_h - x)
  acc = 0.0;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    const float xj = xr[j];
    float* SG = Sr + static_cast<long long>(G - 1) * d + j;
    const float rG = *SG;
    float s = gr.scale[G - 1] * (rG - xj);
    if (use_aux) {
      const float diff = qr[j] - (xj - rG);
      acc += static_cast<double>(diff * diff);
      const float qq = aux_scale * diff;
      qr[j] = qq;
      s += qq;
    }
    *SG = s;
    for (int h = G - 2; h >= 0; --h) {
      float* Sh = Sr + static_cast<long long>(h) * d + j;
      *Sh = Sh[d] + gr.scale[h] * (*Sh - xj);
    }
  }
  acc = block_sum(acc, sh);  // (its barriers also publish S and q to the whole block)
  if (threadIdx.x == 0) loss[G + 1] = acc;
  // grad z and grad a: one warp per entry, lanes over the columns, a fixed shuffle tree
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (long long e = e0 + warp; e < e1; e += warps) {
    const int id = ids[e];
    const float* w = W_dec + static_cast<long long>(id) * d;
    const float* Sg = Sr + static_cast<long long>(group_of(gr, id)) * d;
    float t = 0.0f;
    for (int j = lane; j < d; j += 32) t += w[j] * Sg[j];
    t = warp_sum(t);
    if (lane == 0) gz[e] = t;
  }
  if (use_aux) {
    const int n = aux_cnt[r];
    for (int e = warp; e < n; e += warps) {
      const long long slot = static_cast<long long>(r) * aux_keep + e;
      const float* w = W_dec + static_cast<long long>(aux_ids[slot]) * d;
      float t = 0.0f;
      for (int j = lane; j < d; j += 32) t += w[j] * qr[j];
      t = warp_sum(t);
      if (lane == 0) ga[slot] = t;
    }
  }
}

// ---- latents: one block per latent, its entries in ascending row order
__global__ void k_latents(int d, Groups gr, const long long* __restrict__ col_ptr, const int* __restrict__ csc_src,
                          const int* __restrict__ entry_row, const float* __restrict__ vals,
                          const float* __restrict__ gz, const float* __restrict__ S, const float* __restrict__ x_cent,
                          const long long* __restrict__ aux_col_ptr, const int* __restrict__ aux_src, int aux_keep,
                          const float* __restrict__ aux_vals, const float* __restrict__ ga,
                          const float* __restrict__ q, const int* use_aux_p, int encoder_bias,
                          float* __restrict__ gW_dec, float* __restrict__ gW_enc, float* __restrict__ gb_enc,
                          float* __restrict__ sum_gz, double* __restrict__ sq_part) {
  __shared__ double sh[kThreads];
  const int i = blockIdx.x;
  const int G = gr.G;
  const int g = group_of(gr, i);
  const long long p0 = col_ptr[i], p1 = col_ptr[i + 1];
  const bool use_aux = aux_keep > 0 && *use_aux_p != 0;
  const long long a0 = use_aux ? aux_col_ptr[i] : 0, a1 = use_aux ? aux_col_ptr[i + 1] : 0;
  double sq = 0.0;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float wd = 0.0f, we = 0.0f;
    for (long long p = p0; p < p1; ++p) {
      const int s = csc_src[p];
      const long long r = entry_row[s];
      wd += vals[s] * S[(r * G + g) * d + j];
      we += gz[s] * x_cent[r * d + j];
    }
    for (long long p = a0; p < a1; ++p) {
      const int s = aux_src[p];
      const long long r = s / aux_keep;
      wd += aux_vals[s] * q[r * d + j];
      we += ga[s] * x_cent[r * d + j];
    }
    gW_dec[static_cast<long long>(i) * d + j] = wd;
    gW_enc[static_cast<long long>(i) * d + j] = we;
    sq += static_cast<double>(wd) * wd + static_cast<double>(we) * we;
  }
  sq = block_sum(sq, sh);
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (long long p = p0; p < p1; ++p) s += gz[csc_src[p]];
    for (long long p = a0; p < a1; ++p) s += ga[aux_src[p]];
    sum_gz[i] = s;
    const float b = encoder_bias ? s : 0.0f;
    gb_enc[i] = b;
    sq_part[i] = sq + static_cast<double>(b) * b;
  }
}

// Column partials over chunks of kRowChunk rows: grad b_dec's row part (S_1 + the b_dec term), and x's column
// sums and sums of squares (the batch variance).
__global__ void k_col_rows(const float* __restrict__ x, const float* __restrict__ S, const float* __restrict__ b_dec,
                           int B, int d, int G, float bdec_scale, double* __restrict__ part /*(chunks, 3, d)*/) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int c = blockIdx.y;
  if (j >= d) return;
  double gb = 0.0, xs = 0.0, xq = 0.0;
  const int r1 = min(B, (c + 1) * kRowChunk);
  for (int r = c * kRowChunk; r < r1; ++r) {
    const float xv = x[static_cast<long long>(r) * d + j];
    gb += static_cast<double>(S[static_cast<long long>(r) * G * d + j]) + bdec_scale * (b_dec[j] - xv);
    xs += xv;
    xq += static_cast<double>(xv) * xv;
  }
  double* out = part + static_cast<long long>(c) * 3 * d;
  out[j] = gb;
  out[d + j] = xs;
  out[2 * d + j] = xq;
}

// grad b_dec's latent part over chunks of kLatentChunk latents: - sum_i sum_gz[i] W_enc^T[i].
__global__ void k_col_latents(const float* __restrict__ W_enc_t, const float* __restrict__ sum_gz, int D, int d,
                              double* __restrict__ part /*(chunks, d)*/) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int c = blockIdx.y;
  if (j >= d) return;
  double s = 0.0;
  const int i1 = min(D, (c + 1) * kLatentChunk);
  for (int i = c * kLatentChunk; i < i1; ++i) {
    const float gsum = sum_gz[i];
    if (gsum != 0.0f) s -= static_cast<double>(gsum) * W_enc_t[static_cast<long long>(i) * d + j];
  }
  part[static_cast<long long>(c) * d + j] = s;
}

__global__ void k_col_final(const double* __restrict__ row_part, int row_chunks, const double* __restrict__ lat_part,
                            int lat_chunks, int B, int d, float* __restrict__ gb_dec, double* __restrict__ col_var,
                            double* __restrict__ col_sq) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= d) return;
  double gb = 0.0, xs = 0.0, xq = 0.0;
  for (int c = 0; c < row_chunks; ++c) {
    const double* p = row_part + static_cast<long long>(c) * 3 * d;
    gb += p[j];
    xs += p[d + j];
    xq += p[2 * d + j];
  }
  for (int c = 0; c < lat_chunks; ++c) gb += lat_part[static_cast<long long>(c) * d + j];
  const float g = static_cast<float>(gb);
  gb_dec[j] = g;
  col_sq[j] = static_cast<double>(g) * g;
  const double m = xs / B;
  col_var[j] = xq / B - m * m;
}

// The statistics: per-quantity sums over the rows (serial, in row order), the variance, the gradient sum of
// squares (strided per thread, then a fixed tree). One block.
__global__ void k_stats(const double* __restrict__ row_loss, int B, int G, const double* __restrict__ col_var,
                        const double* __restrict__ col_sq, int d, const double* __restrict__ sq_part, int D,
                        DevStats* out) {
  __shared__ double sh[kThreads];
  const int t = threadIdx.x;
  if (t < G + 2) {
    double s = 0.0;
    for (int r = 0; r < B; ++r) s += row_loss[static_cast<long long>(r) * (G + 2) + t];
    out->loss_sums[t] = s;
  }
  double v = 0.0;
  for (int j = t; j < d; j += blockDim.x) v += col_var[j];
  v = block_sum(v, sh);
  double q = 0.0;
  for (int i = t; i < D; i += blockDim.x) q += sq_part[i];
  for (int j = t; j < d; j += blockDim.x) q += col_sq[j];
  q = block_sum(q, sh);
  if (t == 0) {
    out->var_x = v / d;
    out->grad_sq = q;
  }
}

// ---- update
struct AdamConsts {
  float step_size, bc2_sqrt, b1, b2, one_b1, one_b2, eps;
};

__device__ inline void adam_one(float& p, float g, float& m, float& v, const AdamConsts& c) {
  const float mi = c.b1 * m + c.one_b1 * g;
  const float vi = c.b2 * v + c.one_b2 * g * g;
  m = mi;
  v = vi;
  p -= c.step_size * (mi / (sqrtf(vi) / c.bc2_sqrt + c.eps));
}

__global__ void k_adam(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                       long long n, AdamConsts c, float scale) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const float gi = scale == 1.0f ? g[i] : g[i] * scale;
    adam_one(p[i], gi, m[i], v[i], c);
  }
}

// Per W_dec row: u = w / ||w||; g = scale * grad; g -= (g . u) u; w = u; Adam on w with g.
__global__ void k_decoder_adam(float* __restrict__ W, const float* __restrict__ grad, float* __restrict__ m,
                               float* __restrict__ v, int d, AdamConsts c, float scale) {
  __shared__ float sh[kThreads];
  const long long base = static_cast<long long>(blockIdx.x) * d;
  float* w = W + base;
  const float* gr = grad + base;
  float n2 = 0.0f;
  for (int j = threadIdx.x; j < d; j += blockDim.x) n2 += w[j] * w[j];
  n2 = block_sum(n2, sh);
  const float norm = sqrtf(n2);
  float dot = 0.0f;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    const float u = w[j] / norm;
    w[j] = u;
    const float gj = scale == 1.0f ? gr[j] : gr[j] * scale;
    dot += gj * u;
  }
  dot = block_sum(dot, sh);
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    const float gj = (scale == 1.0f ? gr[j] : gr[j] * scale) - dot * w[j];
    adam_one(w[j], gj, m[base + j], v[base + j], c);
  }
}

int grid_for(long long n) { return static_cast<int>(std::min<long long>((n + kThreads - 1) / kThreads, 4096)); }

int sort_end_bit(long long max_key) {
  int bits = 1;
  while ((1LL << bits) <= max_key) ++bits;
  return bits;
}

}  // namespace

// ------------------------------------------------------------------------------------------------

std::string unavailable() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error state of the runtime
    return std::string("no CUDA device is usable (cudaGetDeviceCount: ") + cudaGetErrorString(e) + ")";
  }
  if (n == 0) return "no CUDA device is visible";
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return "the properties of CUDA device 0 cannot be read";
  if (prop.major < 9)
    return std::string("CUDA device 0 (") + prop.name + ") has compute capability " + std::to_string(prop.major) + "." +
           std::to_string(prop.minor) + "; this build has sm_90 code only (CMAKE_CUDA_ARCHITECTURES)";
  return {};
}

std::string device_info() {
  if (const std::string why = unavailable(); !why.empty()) return why;
  cudaDeviceProp prop{};
  MSAE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  cublasHandle_t h = nullptr;
  int cublas = 0;
  if (cublasCreate(&h) == CUBLAS_STATUS_SUCCESS) {
    cublasGetVersion(h, &cublas);
    cublasDestroy(h);
  }
  char line[512];
  std::snprintf(line, sizeof(line), "%s, sm_%d%d, %d SMs, %.1f GiB, driver CUDA %d.%d, runtime %d.%d, cuBLAS %d",
                prop.name, prop.major, prop.minor, prop.multiProcessorCount,
                static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0), driver / 1000,
                (driver % 1000) / 10, runtime / 1000, (runtime % 1000) / 10, cublas);
  return line;
}

GemmPrecision parse_precision(const std::string& name) {
  if (name == "fp32") return GemmPrecision::fp32;
  if (name == "tf32") return GemmPrecision::tf32;
  if (name == "bf16") return GemmPrecision::bf16;
  usage_error(opt("cuda_precision"), ": unknown value '", name, "'; expected one of fp32, tf32, bf16");
}

const char* precision_name(GemmPrecision p) {
  switch (p) {
    case GemmPrecision::fp32: return "fp32";
    case GemmPrecision::tf32: return "tf32";
    case GemmPrecision::bf16: return "bf16";
  }
  return "";
}

std::string unsupported(const SaeConfig& cfg) {
  if (cfg.arch == Arch::topk) return opt("arch") + " topk (per-row TopK)";
  if (cfg.arch == Arch::relu_l1) return opt("arch") + " relu_l1 (dense ReLU codes with an L1 penalty)";
  if (!cfg.group_k.empty()) return opt("group_k") + " (per-group selection)";
  if (cfg.stop_gradient_groups) return opt("stop_gradient_groups") + " (stop-gradient between groups)";
  if (cfg.aux_detach) return opt("aux_detach") + " (detached AuxK residual)";
  if (cfg.sampled_prefixes > 0) return opt("sampled_prefixes") + " (prefixes drawn per batch)";
  if (cfg.reorder_every > 0) return opt("reorder_every") + " (latent reordering)";
  if (cfg.num_groups() > kMaxGroups) return "more than " + std::to_string(kMaxGroups) + " groups";
  return {};
}

struct DeviceStep::Impl {
  int64_t d, D, B;
  GemmPrecision prec;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  cudaEvent_t ev[8] = {};
  // parameters, gradients, moments
  DevBuf W_enc_t, b_enc, W_dec, b_dec, thr;
  DevBuf gW_enc_t, gb_enc, gW_dec, gb_dec;
  DevBuf mW_enc_t, mb_enc, mW_dec, mb_dec, vW_enc_t, vb_enc, vW_dec, vb_dec;
  DevBuf n_inactive;
  // step buffers
  DevBuf x, x_cent, pre, S, q;
  DevBuf radix, hist, above, ties, ties_before, cnt, row_ptr, cut;
  DevBuf ids, vals, entry_row, gz, csc_keys, csc_src, col_ptr, iota;
  DevBuf fired, dead_flag, dead_pos, dead;
  DevBuf aux_ids, aux_vals, aux_cnt, ga, aux_keys_in, aux_keys, aux_iota, aux_src, aux_col_ptr, any;
  DevBuf row_loss, row_part, lat_part, col_var, col_sq, sum_gz, sq_part, stats;
  DevBuf cub_tmp;
  // bf16 GEMM inputs (precision bf16 only): x_cent's copy, written with x_cent each step, and W_enc_t's,
  // refreshed before a GEMM when W_enc_t changed since (w16_stale: an upload, an update).
  DevBuf x16, w16;
  bool w16_stale = true;
  // pinned host memory
  float* h_x = nullptr;
  void* h_small = nullptr;  // DevStats + counts
  StepStats st;
  double grad_sq = -1.0;
  int64_t nnz = 0, aux_keep = 0;
  bool timed_update = false;

  Impl(int64_t d_, int64_t D_, int64_t B_, GemmPrecision p) : d(d_), D(D_), B(B_), prec(p) {
    MSAE_ASSERT(d > 0 && D > 0 && B > 0);
    if (const std::string why = unavailable(); !why.empty()) runtime_error("--engine cuda: ", why);
    if (D >= (1LL << 30) || B * d >= (1LL << 40)) usage_error("--engine cuda: shape too large");
    MSAE_CUDA_CHECK(cudaSetDevice(0));
    // A blocking stream: it waits for the legacy default stream's work, so the uploads below (cudaMemcpy and
    // cudaMemset, which may return before their transfer completes) are ordered before the step's kernels.
    MSAE_CUDA_CHECK(cudaStreamCreate(&stream));
    check(cublasCreate(&blas), "cublasCreate");
    check(cublasSetStream(blas, stream), "cublasSetStream");
    // No TF32 unless asked: the tf32 and bf16 GEMMs name their compute type in cublasGemmEx.
    check(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    for (cudaEvent_t& e : ev) MSAE_CUDA_CHECK(cudaEventCreate(&e));
    const size_t f = sizeof(float);
    for (DevBuf* b : {&W_enc_t, &W_dec, &gW_enc_t, &gW_dec, &mW_enc_t, &mW_dec, &vW_enc_t, &vW_dec})
      b->ensure(static_cast<size_t>(D * d) * f);
    for (DevBuf* b : {&b_enc, &gb_enc, &mb_enc, &vb_enc, &sum_gz}) b->ensure(static_cast<size_t>(D) * f);
    for (DevBuf* b : {&b_dec, &gb_dec, &mb_dec, &vb_dec}) b->ensure(static_cast<size_t>(d) * f);
    thr.ensure(f);
    cut.ensure(f);
    n_inactive.ensure(static_cast<size_t>(D) * sizeof(long long));
    x.ensure(static_cast<size_t>(B * d) * f);
    x_cent.ensure(static_cast<size_t>(B * d) * f);
    q.ensure(static_cast<size_t>(B * d) * f);
    pre.ensure(static_cast<size_t>(B * D) * f);
    if (prec == GemmPrecision::bf16) {
      x16.ensure(static_cast<size_t>(B * d) * sizeof(__nv_bfloat16));
      w16.ensure(static_cast<size_t>(D * d) * sizeof(__nv_bfloat16));
    }
    radix.ensure(sizeof(RadixState));
    hist.ensure(kRadixBins * sizeof(unsigned long long));
    for (DevBuf* b : {&above, &ties, &ties_before}) b->ensure(static_cast<size_t>(B) * sizeof(long long));
    for (DevBuf* b : {&cnt, &row_ptr}) b->ensure(static_cast<size_t>(B + 1) * sizeof(long long));
    col_ptr.ensure(static_cast<size_t>(D + 1) * sizeof(long long));
    aux_col_ptr.ensure(static_cast<size_t>(D + 1) * sizeof(long long));
    fired.ensure(static_cast<size_t>(D));
    for (DevBuf* b : {&dead_flag, &dead_pos}) b->ensure(static_cast<size_t>(D + 1) * sizeof(int));
    dead.ensure(static_cast<size_t>(D) * sizeof(int));
    aux_cnt.ensure(static_cast<size_t>(B) * sizeof(int));
    any.ensure(sizeof(int));
    const int64_t row_chunks = (B + kRowChunk - 1) / kRowChunk, lat_chunks = (D + kLatentChunk - 1) / kLatentChunk;
    row_part.ensure(static_cast<size_t>(row_chunks * 3 * d) * sizeof(double));
    lat_part.ensure(static_cast<size_t>(lat_chunks * d) * sizeof(double));
    col_var.ensure(static_cast<size_t>(d) * sizeof(double));
    col_sq.ensure(static_cast<size_t>(d) * sizeof(double));
    sq_part.ensure(static_cast<size_t>(D) * sizeof(double));
    stats.ensure(sizeof(DevStats));
    MSAE_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&h_x), static_cast<size_t>(B * d) * f));
    MSAE_CUDA_CHECK(cudaMallocHost(&h_small, sizeof(DevStats) + 64));
    zero_moments();
    MSAE_CUDA_CHECK(cudaMemset(n_inactive.p, 0, static_cast<size_t>(D) * sizeof(long long)));
    MSAE_CUDA_CHECK(cudaMemset(gb_enc.p, 0, static_cast<size_t>(D) * f));
    MSAE_CUDA_CHECK(cudaMemset(x_cent.p, 0, static_cast<size_t>(B * d) * f));  // time_encoder_gemm before a step
    MSAE_CUDA_CHECK(cudaDeviceSynchronize());
  }
  ~Impl() {
    if (stream) cudaStreamSynchronize(stream);
    for (cudaEvent_t e : ev)
      if (e) cudaEventDestroy(e);
    if (blas) cublasDestroy(blas);
    if (h_x) cudaFreeHost(h_x);
    if (h_small) cudaFreeHost(h_small);
    if (stream) cudaStreamDestroy(stream);
  }

  void zero_moments() {
    for (DevBuf* b : {&mW_enc_t, &mb_enc, &mW_dec, &mb_dec, &vW_enc_t, &vb_enc, &vW_dec, &vb_dec})
      MSAE_CUDA_CHECK(cudaMemset(b->p, 0, b->bytes));
  }

  // cub temporary storage for a call (grown as needed).
  template <class F>
  void cub_call(F&& f) {
    size_t bytes = 0;
    check(f(nullptr, bytes), "cub (size)");
    cub_tmp.ensure(std::max<size_t>(bytes, 16));
    check(f(cub_tmp.p, bytes), "cub");
  }

  // bf16: W_enc_t's bf16 copy, when W_enc_t changed since the last one (on the stream, before the GEMM).
  void refresh_w16() {
    if (prec != GemmPrecision::bf16 || !w16_stale) return;
    k_to_bf16<<<grid_for(D * d), kThreads, 0, stream>>>(W_enc_t.as<float>(), w16.as<__nv_bfloat16>(), D * d);
    MSAE_LAUNCH_CHECK("k_to_bf16 (W_enc)");
    w16_stale = false;
  }

  // pre (+)= x_cent W_enc in the step's precision (bf16: on the copies, refresh_w16 and k_center having run).
  void encoder_gemm(bool encoder_bias) {
    const float one = 1.0f, zero = 0.0f;
    const float* beta = encoder_bias ? &one : &zero;
    const int Di = static_cast<int>(D), Bi = static_cast<int>(B), di = static_cast<int>(d);
    // Row-major pre (B, D) = x_cent (B, d) W_enc_t^T is, in cuBLAS's column-major terms, C (D x B) =
    // op(A) (D x d) * B' (d x B): A = W_enc_t stored as a (d x D) column-major matrix (transposed), B' =
    // x_cent stored as (d x B) column-major. Accumulation fp32 in all three precisions.
    switch (prec) {
      case GemmPrecision::fp32:
        check(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, Di, Bi, di, &one, W_enc_t.as<float>(), di,
                          x_cent.as<float>(), di, beta, pre.as<float>(), Di),
              "cublasSgemm (encoder)");
        break;
      case GemmPrecision::tf32:
        check(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, Di, Bi, di, &one, W_enc_t.p, CUDA_R_32F, di, x_cent.p,
                           CUDA_R_32F, di, beta, pre.p, CUDA_R_32F, Di, CUBLAS_COMPUTE_32F_FAST_TF32,
                           CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx (encoder, tf32)");
        break;
      case GemmPrecision::bf16:
        check(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, Di, Bi, di, &one, w16.p, CUDA_R_16BF, di, x16.p,
                           CUDA_R_16BF, di, beta, pre.p, CUDA_R_32F, Di, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx (encoder, bf16)");
        break;
    }
  }

  const StepStats& forward_backward(const SaeConfig& cfg, const float* x_host, bool update_threshold) {
    if (const std::string why = unsupported(cfg); !why.empty())
      usage_error(opt("engine"), " cuda does not implement ", why, "; use ", opt("engine"), " sparse or reference");
    MSAE_ASSERT(cfg.d_in == d && cfg.d_sae == D);
    const int G = static_cast<int>(cfg.num_groups());
    MSAE_ASSERT(G >= 1 && G <= kMaxGroups);
    const long long N = B * d;
    const size_t f = sizeof(float);
    const int Bi = static_cast<int>(B), Di = static_cast<int>(D), di = static_cast<int>(d);
    Groups gr{};
    gr.G = G;
    {
      long long m = 0;
      for (int g = 0; g < G; ++g) gr.bounds[g] = m += cfg.group_sizes[g];
      MSAE_ASSERT(gr.bounds[G - 1] == D);
    }
    const int64_t t_bdec = cfg.bdec_loss_term ? 1 : 0;
    const double rec_scale_d = 2.0 / (static_cast<double>(N) * static_cast<double>(G + t_bdec));
    const float rec_scale = static_cast<float>(rec_scale_d);
    for (int g = 0; g < G; ++g) gr.scale[g] = rec_scale * cfg.prefix_weight(g);
    const float aux_scale = static_cast<float>(2.0 * cfg.aux_coef / static_cast<double>(N));
    const long long keep_asked = std::min<long long>(cfg.k * B, B * D);
    S.ensure(static_cast<size_t>(B * G * d) * f);
    row_loss.ensure(static_cast<size_t>(B * (G + 2)) * sizeof(double));
    for (DevBuf* b : {&ids, &entry_row, &csc_keys, &csc_src, &iota}) b->ensure(static_cast<size_t>(keep_asked + 1) * sizeof(int));
    for (DevBuf* b : {&vals, &gz}) b->ensure(static_cast<size_t>(keep_asked + 1) * f);

    // ---- encode
    MSAE_CUDA_CHECK(cudaEventRecord(ev[0], stream));
    std::memcpy(h_x, x_host, static_cast<size_t>(N) * f);
    MSAE_CUDA_CHECK(cudaMemcpyAsync(x.p, h_x, static_cast<size_t>(N) * f, cudaMemcpyHostToDevice, stream));
    k_center<<<grid_for(N), kThreads, 0, stream>>>(x.as<float>(), b_dec.as<float>(), x_cent.as<float>(),
                                                   prec == GemmPrecision::bf16 ? x16.as<__nv_bfloat16>() : nullptr,
                                                   N, di);
    MSAE_LAUNCH_CHECK("k_center");
    refresh_w16();
    if (cfg.encoder_bias) {
      k_fill_rows<<<grid_for(B * D), kThreads, 0, stream>>>(pre.as<float>(), b_enc.as<float>(), B * D, Di);
      MSAE_LAUNCH_CHECK("k_fill_rows");
    }
    encoder_gemm(cfg.encoder_bias);
    MSAE_CUDA_CHECK(cudaEventRecord(ev[1], stream));

    // ---- select: the cut, per-row counts, the compaction into CSR
    RadixState* rs = radix.as<RadixState>();
    unsigned long long* h = hist.as<unsigned long long>();
    MSAE_CUDA_CHECK(cudaMemsetAsync(rs, 0, sizeof(RadixState), stream));
    MSAE_CUDA_CHECK(cudaMemsetAsync(h, 0, kRadixBins * sizeof(unsigned long long), stream));
    for (int pass = 0; pass < kRadixPasses; ++pass) {
      k_hist<<<grid_for(B * D), kThreads, 0, stream>>>(pre.as<float>(), B * D, rs, pass, h);
      MSAE_LAUNCH_CHECK("k_hist");
      k_radix_advance<<<1, 1, 0, stream>>>(rs, h, pass, keep_asked);
      MSAE_LAUNCH_CHECK("k_radix_advance");
    }
    k_row_counts<<<Bi, kThreads, 0, stream>>>(pre.as<float>(), Di, rs, above.as<long long>(), ties.as<long long>());
    MSAE_LAUNCH_CHECK("k_row_counts");
    cub_call([&](void* tmp, size_t& bytes) {
      return cub::DeviceScan::ExclusiveSum(tmp, bytes, ties.as<long long>(), ties_before.as<long long>(), Bi, stream);
    });
    k_row_sizes<<<(Bi + 1 + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        above.as<long long>(), ties.as<long long>(), ties_before.as<long long>(), rs, Bi, cnt.as<long long>());
    MSAE_LAUNCH_CHECK("k_row_sizes");
    cub_call([&](void* tmp, size_t& bytes) {
      return cub::DeviceScan::ExclusiveSum(tmp, bytes, cnt.as<long long>(), row_ptr.as<long long>(), Bi + 1, stream);
    });
    k_compact<<<Bi, kThreads, 0, stream>>>(pre.as<float>(), Di, rs, ties_before.as<long long>(),
                                           row_ptr.as<long long>(), ids.as<int>(), vals.as<float>(),
                                           entry_row.as<int>());
    MSAE_LAUNCH_CHECK("k_compact");
    k_threshold<<<1, 1, 0, stream>>>(rs, thr.as<float>(), 1.0f - cfg.threshold_rate, cfg.threshold_rate,
                                     update_threshold ? 1 : 0, cut.as<float>());
    MSAE_LAUNCH_CHECK("k_threshold");
    // dead counters and the dead list
    MSAE_CUDA_CHECK(cudaMemsetAsync(fired.p, 0, static_cast<size_t>(D), stream));
    k_mark_fired<<<grid_for(keep_asked), kThreads, 0, stream>>>(ids.as<int>(), row_ptr.as<long long>() + B,
                                                                fired.as<unsigned char>());
    MSAE_LAUNCH_CHECK("k_mark_fired");
    k_counters<<<(Di + 1 + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        fired.as<unsigned char>(), n_inactive.as<long long>(), Di, cfg.dead_after_batches, dead_flag.as<int>());
    MSAE_LAUNCH_CHECK("k_counters");
    cub_call([&](void* tmp, size_t& bytes) {
      return cub::DeviceScan::ExclusiveSum(tmp, bytes, dead_flag.as<int>(), dead_pos.as<int>(), Di + 1, stream);
    });
    k_dead_list<<<(Di + kThreads - 1) / kThreads, kThreads, 0, stream>>>(dead_flag.as<int>(), dead_pos.as<int>(), Di,
                                                                         dead.as<int>());
    MSAE_LAUNCH_CHECK("k_dead_list");
    // the kept count and the dead count to the host (the sizes of the sorts below)
    long long* h_counts = reinterpret_cast<long long*>(static_cast<char*>(h_small) + sizeof(DevStats));
    int* h_dead = reinterpret_cast<int*>(h_counts + 1);
    MSAE_CUDA_CHECK(cudaMemcpyAsync(h_counts, row_ptr.as<long long>() + B, sizeof(long long), cudaMemcpyDeviceToHost, stream));
    MSAE_CUDA_CHECK(cudaMemcpyAsync(h_dead, dead_pos.as<int>() + D, sizeof(int), cudaMemcpyDeviceToHost, stream));
    MSAE_CUDA_CHECK(cudaStreamSynchronize(stream));
    nnz = *h_counts;
    const int64_t n_dead = *h_dead;
    MSAE_ASSERT(nnz >= 0 && nnz <= keep_asked, "kept ", nnz, " of ", keep_asked);
    // CSC: the entries stably sorted by latent (rows ascend within a latent)
    if (nnz > 0) {
      k_iota<<<grid_for(nnz), kThreads, 0, stream>>>(iota.as<int>(), nnz);
      MSAE_LAUNCH_CHECK("k_iota");
      cub_call([&](void* tmp, size_t& bytes) {
        return cub::DeviceRadixSort::SortPairs(tmp, bytes, ids.as<int>(), csc_keys.as<int>(), iota.as<int>(),
                                               csc_src.as<int>(), static_cast<int>(nnz), 0, sort_end_bit(D), stream);
      });
    }
    k_col_ptr<<<grid_for(nnz + 1), kThreads, 0, stream>>>(csc_keys.as<int>(), nnz, Di, col_ptr.as<long long>());
    MSAE_LAUNCH_CHECK("k_col_ptr");
    MSAE_CUDA_CHECK(cudaEventRecord(ev[2], stream));

    // ---- AuxK selection
    aux_keep = std::min<int64_t>(cfg.aux_k, n_dead);
    MSAE_CUDA_CHECK(cudaMemsetAsync(any.p, 0, sizeof(int), stream));
    if (aux_keep > 0) {
      const long long slots = B * aux_keep;
      for (DevBuf* b : {&aux_ids, &aux_keys_in, &aux_keys, &aux_iota, &aux_src}) b->ensure(static_cast<size_t>(slots) * sizeof(int));
      for (DevBuf* b : {&aux_vals, &ga}) b->ensure(static_cast<size_t>(slots) * f);
      k_aux_select<<<Bi, kThreads, 0, stream>>>(pre.as<float>(), Di, dead.as<int>(), dead_pos.as<int>() + D,
                                                static_cast<int>(aux_keep), aux_ids.as<int>(), aux_vals.as<float>(),
                                                aux_cnt.as<int>());
      MSAE_LAUNCH_CHECK("k_aux_select");
      k_aux_keys<<<grid_for(slots), kThreads, 0, stream>>>(aux_ids.as<int>(), aux_cnt.as<int>(),
                                                           static_cast<int>(aux_keep), slots, Di, aux_keys_in.as<int>());
      MSAE_LAUNCH_CHECK("k_aux_keys");
      k_iota<<<grid_for(slots), kThreads, 0, stream>>>(aux_iota.as<int>(), slots);
      MSAE_LAUNCH_CHECK("k_iota");
      cub_call([&](void* tmp, size_t& bytes) {
        return cub::DeviceRadixSort::SortPairs(tmp, bytes, aux_keys_in.as<int>(), aux_keys.as<int>(),
                                               aux_iota.as<int>(), aux_src.as<int>(), static_cast<int>(slots), 0,
                                               sort_end_bit(D), stream);
      });
      k_col_ptr<<<grid_for(slots + 1), kThreads, 0, stream>>>(aux_keys.as<int>(), slots, Di, aux_col_ptr.as<long long>());
      MSAE_LAUNCH_CHECK("k_col_ptr (aux)");
      k_aux_decode<<<Bi, kThreads, 0, stream>>>(W_dec.as<float>(), di, aux_ids.as<int>(), aux_vals.as<float>(),
                                                aux_cnt.as<int>(), static_cast<int>(aux_keep), q.as<float>(),
                                                any.as<int>());
      MSAE_LAUNCH_CHECK("k_aux_decode");
    }
    MSAE_CUDA_CHECK(cudaEventRecord(ev[3], stream));

    // ---- rows
    k_rows<<<Bi, kThreads, 0, stream>>>(x.as<float>(), b_dec.as<float>(), W_dec.as<float>(), di, row_ptr.as<long long>(),
                                        ids.as<int>(), vals.as<float>(), gr, any.as<int>(), aux_scale,
                                        aux_keep > 0 ? aux_ids.as<int>() : nullptr, aux_cnt.as<int>(),
                                        static_cast<int>(aux_keep), S.as<float>(), q.as<float>(),
                                        row_loss.as<double>(), gz.as<float>(), aux_keep > 0 ? ga.as<float>() : nullptr);
    MSAE_LAUNCH_CHECK("k_rows");
    MSAE_CUDA_CHECK(cudaEventRecord(ev[4], stream));

    // ---- latents, grad b_dec, statistics
    k_latents<<<Di, kThreads, 0, stream>>>(
        di, gr, col_ptr.as<long long>(), csc_src.as<int>(), entry_row.as<int>(), vals.as<float>(), gz.as<float>(),
        S.as<float>(), x_cent.as<float>(), aux_col_ptr.as<long long>(), aux_keep > 0 ? aux_src.as<int>() : nullptr,
        static_cast<int>(aux_keep), aux_keep > 0 ? aux_vals.as<float>() : nullptr,
        aux_keep > 0 ? ga.as<float>() : nullptr, q.as<float>(), any.as<int>(), cfg.encoder_bias ? 1 : 0,
        gW_dec.as<float>(), gW_enc_t.as<float>(), gb_enc.as<float>(), sum_gz.as<float>(), sq_part.as<double>());
    MSAE_LAUNCH_CHECK("k_latents");
    const int row_chunks = static_cast<int>((B + kRowChunk - 1) / kRowChunk);
    const int lat_chunks = static_cast<int>((D + kLatentChunk - 1) / kLatentChunk);
    const int col_blocks = (di + kThreads - 1) / kThreads;
    k_col_rows<<<dim3(col_blocks, row_chunks), kThreads, 0, stream>>>(x.as<float>(), S.as<float>(), b_dec.as<float>(),
                                                                      Bi, di, G, cfg.bdec_loss_term ? rec_scale : 0.0f,
                                                                      row_part.as<double>());
    MSAE_LAUNCH_CHECK("k_col_rows");
    k_col_latents<<<dim3(col_blocks, lat_chunks), kThreads, 0, stream>>>(W_enc_t.as<float>(), sum_gz.as<float>(), Di,
                                                                         di, lat_part.as<double>());
    MSAE_LAUNCH_CHECK("k_col_latents");
    k_col_final<<<col_blocks, kThreads, 0, stream>>>(row_part.as<double>(), row_chunks, lat_part.as<double>(),
                                                     lat_chunks, Bi, di, gb_dec.as<float>(), col_var.as<double>(),
                                                     col_sq.as<double>());
    MSAE_LAUNCH_CHECK("k_col_final");
    k_stats<<<1, kThreads, 0, stream>>>(row_loss.as<double>(), Bi, G, col_var.as<double>(), col_sq.as<double>(), di,
                                        sq_part.as<double>(), Di, stats.as<DevStats>());
    MSAE_LAUNCH_CHECK("k_stats");
    MSAE_CUDA_CHECK(cudaEventRecord(ev[5], stream));
    DevStats* hs = static_cast<DevStats*>(h_small);
    int* h_any = h_dead + 1;
    MSAE_CUDA_CHECK(cudaMemcpyAsync(hs, stats.p, sizeof(DevStats), cudaMemcpyDeviceToHost, stream));
    MSAE_CUDA_CHECK(cudaMemcpyAsync(h_any, any.p, sizeof(int), cudaMemcpyDeviceToHost, stream));
    MSAE_CUDA_CHECK(cudaStreamSynchronize(stream));
    timed_update = false;

    // ---- the statistics, as the sparse engine computes them from the sums
    st.reset();
    const bool use_aux = aux_keep > 0 && *h_any != 0;
    st.mse_bdec = hs->loss_sums[0] / static_cast<double>(N);
    double rec_sum = cfg.bdec_loss_term ? st.mse_bdec : 0.0;
    st.mse_prefix.assign(static_cast<size_t>(G), 0.0);
    for (int g = 0; g < G; ++g) {
      st.mse_prefix[g] = hs->loss_sums[1 + g] / static_cast<double>(N);
      rec_sum += cfg.prefix_weight(g) * st.mse_prefix[g];
    }
    st.l_rec = rec_sum / static_cast<double>(G + t_bdec);
    st.l_aux = use_aux ? cfg.aux_coef * hs->loss_sums[G + 1] / static_cast<double>(N) : 0.0;
    st.loss = st.l_rec + st.l_aux;
    st.var_x = hs->var_x;
    st.l0 = static_cast<double>(nnz) / static_cast<double>(B);
    st.n_dead = n_dead;
    st.aux_active = use_aux;
    grad_sq = hs->grad_sq;
    return st;
  }

  double update(const SaeConfig& cfg, const kernels::AdamHyper& adam, float max_grad_norm, int64_t t) {
    MSAE_ASSERT(t >= 1 && grad_sq >= 0.0, "update without a forward_backward");
    const double grad_norm = std::sqrt(grad_sq);
    const double coef = static_cast<double>(max_grad_norm) / (grad_norm + 1e-6);
    const float scale = coef < 1.0 ? static_cast<float>(coef) : 1.0f;
    const double bc1 = 1.0 - std::pow(static_cast<double>(adam.beta1), static_cast<double>(t));
    const double bc2 = 1.0 - std::pow(static_cast<double>(adam.beta2), static_cast<double>(t));
    const AdamConsts c{static_cast<float>(adam.lr / bc1), static_cast<float>(std::sqrt(bc2)), adam.beta1, adam.beta2,
                       1.0f - adam.beta1, 1.0f - adam.beta2, adam.eps};
    MSAE_CUDA_CHECK(cudaEventRecord(ev[6], stream));
    k_decoder_adam<<<static_cast<int>(D), kThreads, 0, stream>>>(W_dec.as<float>(), gW_dec.as<float>(),
                                                                  mW_dec.as<float>(), vW_dec.as<float>(),
                                                                  static_cast<int>(d), c, scale);
    MSAE_LAUNCH_CHECK("k_decoder_adam");
    k_adam<<<grid_for(D * d), kThreads, 0, stream>>>(W_enc_t.as<float>(), gW_enc_t.as<float>(), mW_enc_t.as<float>(),
                                                     vW_enc_t.as<float>(), D * d, c, scale);
    MSAE_LAUNCH_CHECK("k_adam (W_enc)");
    w16_stale = true;  // bf16: the next GEMM converts the new W_enc
    k_adam<<<grid_for(d), kThreads, 0, stream>>>(b_dec.as<float>(), gb_dec.as<float>(), mb_dec.as<float>(),
                                                 vb_dec.as<float>(), d, c, scale);
    MSAE_LAUNCH_CHECK("k_adam (b_dec)");
    if (cfg.encoder_bias) {
      k_adam<<<grid_for(D), kThreads, 0, stream>>>(b_enc.as<float>(), gb_enc.as<float>(), mb_enc.as<float>(),
                                                   vb_enc.as<float>(), D, c, scale);
      MSAE_LAUNCH_CHECK("k_adam (b_enc)");
    }
    MSAE_CUDA_CHECK(cudaEventRecord(ev[7], stream));
    MSAE_CUDA_CHECK(cudaStreamSynchronize(stream));
    timed_update = true;
    grad_sq = -1.0;
    return grad_norm;
  }

  void copy_to_device(DevBuf& b, const float* src, int64_t n) {
    MSAE_ASSERT(static_cast<size_t>(n) * sizeof(float) <= b.bytes);
    MSAE_CUDA_CHECK(cudaMemcpy(b.p, src, static_cast<size_t>(n) * sizeof(float), cudaMemcpyHostToDevice));
  }
  void copy_to_host(const DevBuf& b, Tensor& t, std::vector<int64_t> shape) const {
    if (t.shape != shape) t = Tensor(shape);
    MSAE_CUDA_CHECK(cudaStreamSynchronize(stream));
    MSAE_CUDA_CHECK(cudaMemcpy(t.ptr(), b.p, static_cast<size_t>(t.numel()) * sizeof(float), cudaMemcpyDeviceToHost));
  }
};

DeviceStep::DeviceStep(int64_t d, int64_t D, int64_t B, GemmPrecision precision)
    : impl_(std::make_unique<Impl>(d, D, B, precision)) {}
DeviceStep::~DeviceStep() = default;
int64_t DeviceStep::d() const { return impl_->d; }
int64_t DeviceStep::D() const { return impl_->D; }
int64_t DeviceStep::B() const { return impl_->B; }
GemmPrecision DeviceStep::precision() const { return impl_->prec; }

void DeviceStep::upload_params(const SaeParams& p) {
  Impl& m = *impl_;
  MSAE_ASSERT(p.d == m.d && p.D == m.D && p.W_enc_t.numel() == m.D * m.d && p.W_dec.numel() == m.D * m.d);
  MSAE_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  m.copy_to_device(m.W_enc_t, p.W_enc_t.ptr(), m.D * m.d);
  m.copy_to_device(m.W_dec, p.W_dec.ptr(), m.D * m.d);
  if (p.b_enc.numel() == m.D) m.copy_to_device(m.b_enc, p.b_enc.ptr(), m.D);
  else MSAE_CUDA_CHECK(cudaMemset(m.b_enc.p, 0, static_cast<size_t>(m.D) * sizeof(float)));
  m.copy_to_device(m.b_dec, p.b_dec.ptr(), m.d);
  m.copy_to_device(m.thr, &p.threshold, 1);
  m.w16_stale = true;
  MSAE_CUDA_CHECK(cudaDeviceSynchronize());
}

void DeviceStep::download_params(SaeParams& p) const {
  const Impl& m = *impl_;
  p.d = m.d;
  p.D = m.D;
  m.copy_to_host(m.W_enc_t, p.W_enc_t, {m.D, m.d});
  m.copy_to_host(m.W_dec, p.W_dec, {m.D, m.d});
  m.copy_to_host(m.b_enc, p.b_enc, {m.D});
  m.copy_to_host(m.b_dec, p.b_dec, {m.d});
  p.threshold = threshold();
}

void DeviceStep::set_b_dec(const float* b_dec) {
  MSAE_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  impl_->copy_to_device(impl_->b_dec, b_dec, impl_->d);
  MSAE_CUDA_CHECK(cudaDeviceSynchronize());
}

void DeviceStep::upload_moments(const SaeGrads* m, const SaeGrads* v) {
  Impl& s = *impl_;
  MSAE_CUDA_CHECK(cudaStreamSynchronize(s.stream));
  if (!m || !v) {
    s.zero_moments();
    MSAE_CUDA_CHECK(cudaDeviceSynchronize());
    return;
  }
  for (auto [src, W_enc_t, b_enc, W_dec, b_dec] :
       {std::tuple{m, &s.mW_enc_t, &s.mb_enc, &s.mW_dec, &s.mb_dec}, std::tuple{v, &s.vW_enc_t, &s.vb_enc, &s.vW_dec, &s.vb_dec}}) {
    s.copy_to_device(*W_enc_t, src->W_enc_t.ptr(), s.D * s.d);
    s.copy_to_device(*W_dec, src->W_dec.ptr(), s.D * s.d);
    s.copy_to_device(*b_enc, src->b_enc.ptr(), s.D);
    s.copy_to_device(*b_dec, src->b_dec.ptr(), s.d);
  }
  MSAE_CUDA_CHECK(cudaDeviceSynchronize());
}

void DeviceStep::download_moments(SaeGrads& m, SaeGrads& v) const {
  const Impl& s = *impl_;
  for (auto [dst, W_enc_t, b_enc, W_dec, b_dec] :
       {std::tuple{&m, &s.mW_enc_t, &s.mb_enc, &s.mW_dec, &s.mb_dec}, std::tuple{&v, &s.vW_enc_t, &s.vb_enc, &s.vW_dec, &s.vb_dec}}) {
    s.copy_to_host(*W_enc_t, dst->W_enc_t, {s.D, s.d});
    s.copy_to_host(*W_dec, dst->W_dec, {s.D, s.d});
    s.copy_to_host(*b_enc, dst->b_enc, {s.D});
    s.copy_to_host(*b_dec, dst->b_dec, {s.d});
  }
}

void DeviceStep::upload_counters(const std::vector<int64_t>& n_inactive) {
  Impl& s = *impl_;
  MSAE_ASSERT(static_cast<int64_t>(n_inactive.size()) == s.D);
  static_assert(sizeof(int64_t) == sizeof(long long));
  MSAE_CUDA_CHECK(cudaStreamSynchronize(s.stream));
  MSAE_CUDA_CHECK(cudaMemcpy(s.n_inactive.p, n_inactive.data(), static_cast<size_t>(s.D) * sizeof(int64_t),
                             cudaMemcpyHostToDevice));
  MSAE_CUDA_CHECK(cudaDeviceSynchronize());
}

void DeviceStep::download_counters(std::vector<int64_t>& n_inactive) const {
  const Impl& s = *impl_;
  n_inactive.resize(static_cast<size_t>(s.D));
  MSAE_CUDA_CHECK(cudaStreamSynchronize(s.stream));
  MSAE_CUDA_CHECK(cudaMemcpy(n_inactive.data(), s.n_inactive.p, static_cast<size_t>(s.D) * sizeof(int64_t),
                             cudaMemcpyDeviceToHost));
}

void DeviceStep::download_grads(SaeGrads& g) const {
  const Impl& s = *impl_;
  s.copy_to_host(s.gW_enc_t, g.W_enc_t, {s.D, s.d});
  s.copy_to_host(s.gW_dec, g.W_dec, {s.D, s.d});
  s.copy_to_host(s.gb_enc, g.b_enc, {s.D});
  s.copy_to_host(s.gb_dec, g.b_dec, {s.d});
  g.sum_squares = s.grad_sq;
}

void DeviceStep::download_codes(kernels::SparseCodes& codes, kernels::SparseCodes& aux) const {
  const Impl& s = *impl_;
  MSAE_CUDA_CHECK(cudaStreamSynchronize(s.stream));
  codes.rows = aux.rows = s.B;
  codes.cols = aux.cols = s.D;
  std::vector<long long> rp(static_cast<size_t>(s.B + 1));
  MSAE_CUDA_CHECK(cudaMemcpy(rp.data(), s.row_ptr.p, rp.size() * sizeof(long long), cudaMemcpyDeviceToHost));
  codes.row_ptr.assign(rp.begin(), rp.end());
  codes.ids.resize(static_cast<size_t>(s.nnz));
  codes.vals.resize(static_cast<size_t>(s.nnz));
  if (s.nnz > 0) {
    MSAE_CUDA_CHECK(cudaMemcpy(codes.ids.data(), s.ids.p, codes.ids.size() * sizeof(int), cudaMemcpyDeviceToHost));
    MSAE_CUDA_CHECK(cudaMemcpy(codes.vals.data(), s.vals.p, codes.vals.size() * sizeof(float), cudaMemcpyDeviceToHost));
  }
  aux.row_ptr.assign(static_cast<size_t>(s.B + 1), 0);
  aux.ids.clear();
  aux.vals.clear();
  if (s.aux_keep == 0) return;
  const size_t slots = static_cast<size_t>(s.B * s.aux_keep);
  std::vector<int> cnt(static_cast<size_t>(s.B)), ids(slots);
  std::vector<float> vals(slots);
  MSAE_CUDA_CHECK(cudaMemcpy(cnt.data(), s.aux_cnt.p, cnt.size() * sizeof(int), cudaMemcpyDeviceToHost));
  MSAE_CUDA_CHECK(cudaMemcpy(ids.data(), s.aux_ids.p, slots * sizeof(int), cudaMemcpyDeviceToHost));
  MSAE_CUDA_CHECK(cudaMemcpy(vals.data(), s.aux_vals.p, slots * sizeof(float), cudaMemcpyDeviceToHost));
  for (int64_t r = 0; r < s.B; ++r) {
    for (int j = 0; j < cnt[r]; ++j) {
      aux.ids.push_back(ids[static_cast<size_t>(r * s.aux_keep + j)]);
      aux.vals.push_back(vals[static_cast<size_t>(r * s.aux_keep + j)]);
    }
    aux.row_ptr[r + 1] = static_cast<int64_t>(aux.ids.size());
  }
}

const StepStats& DeviceStep::forward_backward(const SaeConfig& cfg, const float* x, bool update_threshold) {
  return impl_->forward_backward(cfg, x, update_threshold);
}
double DeviceStep::grad_sum_squares() const { return impl_->grad_sq; }
double DeviceStep::update(const SaeConfig& cfg, const kernels::AdamHyper& adam, float max_grad_norm, int64_t t) {
  return impl_->update(cfg, adam, max_grad_norm, t);
}

float DeviceStep::threshold() const {
  float t = 0.0f;
  MSAE_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  MSAE_CUDA_CHECK(cudaMemcpy(&t, impl_->thr.p, sizeof(float), cudaMemcpyDeviceToHost));
  return t;
}

double DeviceStep::time_encoder_gemm(int reps) {
  Impl& s = *impl_;
  MSAE_ASSERT(reps >= 1);
  if (s.prec == GemmPrecision::bf16) {  // the GEMM's bf16 inputs, from the current x_cent and W_enc (untimed)
    k_to_bf16<<<grid_for(s.B * s.d), kThreads, 0, s.stream>>>(s.x_cent.as<float>(), s.x16.as<__nv_bfloat16>(),
                                                                s.B * s.d);
    MSAE_LAUNCH_CHECK("k_to_bf16 (x_cent)");
    s.refresh_w16();
  }
  s.encoder_gemm(false);  // warm-up
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    MSAE_CUDA_CHECK(cudaEventRecord(s.ev[0], s.stream));
    s.encoder_gemm(false);
    MSAE_CUDA_CHECK(cudaEventRecord(s.ev[1], s.stream));
    MSAE_CUDA_CHECK(cudaEventSynchronize(s.ev[1]));
    float ms = 0.0f;
    MSAE_CUDA_CHECK(cudaEventElapsedTime(&ms, s.ev[0], s.ev[1]));
    t.push_back(1e-3 * ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

std::vector<std::pair<std::string, double>> DeviceStep::last_phase_seconds() const {
  const Impl& s = *impl_;
  auto span = [&](int a, int b) {
    float ms = 0.0f;
    if (cudaEventElapsedTime(&ms, s.ev[a], s.ev[b]) != cudaSuccess) {
      cudaGetLastError();
      return -1.0;
    }
    return 1e-3 * ms;
  };
  std::vector<std::pair<std::string, double>> p = {{"encode", span(0, 1)}, {"select", span(1, 2)},
                                                   {"auxk_select", span(2, 3)}, {"rows", span(3, 4)},
                                                   {"latents", span(4, 5)}};
  if (s.timed_update) p.emplace_back("update", span(6, 7));
  return p;
}

}  // namespace msae::cuda
