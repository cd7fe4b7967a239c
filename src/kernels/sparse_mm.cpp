// Sparse x dense products over CSR / CSC codes (the AuxK products of a training step: hundreds of entries
// per row over a few thousand latents), on packed, chunk-major copies of the dense operands.
// Why packing: an entry touches a whole row of W (3 KiB at d = 768) and at these densities the touched rows
// do not fit in L2. Restricted to a column chunk, the touched slices would fit, but rows of 3 KiB stride
// map a chunk's slices onto a quarter of L2's sets (and an eighth of L1's), so they thrash; measured, the
// unpacked chunked loops were 3x slower than plain per-entry axpy. Copied chunk-major, a chunk's slices
// of all used rows are one contiguous block (420 KiB for 1638 latents x 64 floats) that stays in L2 while
// every row of the batch is processed against it. Packing costs one copy of the used rows.
#include <algorithm>
#include <cstring>

#include "msae/kernels.h"

namespace msae::kernels {
namespace {

constexpr int64_t kLanes = 8;  // floats per vector
typedef float v8 __attribute__((vector_size(kLanes * sizeof(float))));

inline v8 load(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, v8 v) { std::memcpy(p, &v, sizeof(v)); }
inline v8 splat(float a) { return v8{a, a, a, a, a, a, a, a}; }

constexpr int64_t kRowChunk = 64;   // chunk width of the row-side products (8 vector accumulators)
constexpr int64_t kPairChunk = 32;  // chunk width of the latent-side pair (2 x 4 accumulators fit 16 registers)
// Rows per block of the row-parallel kernels: a thread takes a block and runs every chunk over it, so the
// block's ids, values and output stay in L1/L2 while the chunks advance.
constexpr int64_t kRowBlock = 64;
// Rows per block of the latent-side pair: 256 rows x 32 floats of Q1 and Q2 are 64 KiB (L2). Each latent's
// accumulators are loaded and stored once per block, so shorter blocks pay that more often: measured on a
// Zen 1 EPYC (32 KiB L1, 512 KiB L2) at the AuxK bench shape, 256 rows took 132 ms, 128 rows 160 ms,
// 64 rows 210 ms, 512 rows 142-150 ms.
constexpr int64_t kPairRowBlock = 256;
// Software prefetch distance, in entries. An entry's operand slice is at a random slot (row-side products:
// a W_dec slice in L2; the latent-side pair: a row of Q1 and Q2 in L2), which the hardware prefetchers do
// not predict; fetching the slice of the entry a few places ahead hides most of L2's latency (measured on
// Zen 1: csr_times_dense 56 -> 47 ms, csr_row_dots 70 -> 55 ms, csc_accumulate_pair 131 -> 125 ms).
constexpr int64_t kRowPrefetch = 8;
constexpr int64_t kPairPrefetch = 4;

// Fetches the cache lines of n floats from p (a 64-byte aligned slice of a packed operand).
inline void prefetch_floats(const float* p, int64_t n) {
  for (int64_t l = 0; l < n; l += 16) __builtin_prefetch(p + l);
}

}  // namespace

void pack_rows_chunked(const float* M, int64_t d, const int32_t* rows, int64_t n, int64_t width, ChunkedRows& out) {
  MSAE_ASSERT(width % kLanes == 0 && width > 0, "chunk width ", width);
  out.n = n;
  out.d = d;
  out.width = width;
  out.chunks = (d + width - 1) / width;
  const size_t need = static_cast<size_t>(out.chunks * n * width);
  if (out.data.size() < need) out.data.resize(need);
  float* dst = out.data.data();
  parallel_for(
      n,
      [&](int64_t lo, int64_t hi, int) {
        for (int64_t s = lo; s < hi; ++s) {
          const float* src = M + (rows ? static_cast<int64_t>(rows[s]) : s) * d;
          for (int64_t c = 0; c < out.chunks; ++c) {
            const int64_t c0 = c * width, w = std::min(width, d - c0);
            float* o = dst + (c * n + s) * width;
            std::memcpy(o, src + c0, static_cast<size_t>(w) * sizeof(float));
            if (w < width) std::fill(o + w, o + width, 0.0f);
          }
        }
      },
      64);
}

void pack_for_codes(const SparseCodes& codes, const float* W, int64_t d, PackedCodesRows& out) {
  out.slot_of.assign(static_cast<size_t>(codes.cols), -1);
  for (int32_t id : codes.ids) out.slot_of[id] = 0;
  out.used.clear();
  for (int64_t i = 0; i < codes.cols; ++i)
    if (out.slot_of[i] == 0) {
      out.slot_of[i] = static_cast<int32_t>(out.used.size());
      out.used.push_back(static_cast<int32_t>(i));
    }
  out.entry_slot.resize(codes.ids.size());
  for (size_t e = 0; e < codes.ids.size(); ++e) out.entry_slot[e] = out.slot_of[codes.ids[e]];
  pack_rows_chunked(W, d, out.used.data(), static_cast<int64_t>(out.used.size()), kRowChunk, out.rows);
}

void csr_times_dense(const SparseCodes& codes, const PackedCodesRows& W, float* out) {
  const int64_t B = codes.rows, d = W.rows.d, n = W.rows.n;
  parallel_for(
      (B + kRowBlock - 1) / kRowBlock,
      [&](int64_t lo, int64_t hi, int) {
        for (int64_t blk = lo; blk < hi; ++blk) {
          const int64_t r0 = blk * kRowBlock, r1 = std::min(B, r0 + kRowBlock);
          for (int64_t c = 0; c < W.rows.chunks; ++c) {
            const float* Wc = W.rows.data.data() + c * n * kRowChunk;
            const int64_t c0 = c * kRowChunk, w = std::min(kRowChunk, d - c0);
            for (int64_t r = r0; r < r1; ++r) {
              v8 acc[kRowChunk / kLanes];
              for (v8& a : acc) a = splat(0.0f);
              const int64_t e_end = codes.row_ptr[r + 1];
              for (int64_t e = codes.row_ptr[r]; e < e_end; ++e) {
                const float* wr = Wc + static_cast<int64_t>(W.entry_slot[e]) * kRowChunk;
                if (e + kRowPrefetch < e_end)
                  prefetch_floats(Wc + static_cast<int64_t>(W.entry_slot[e + kRowPrefetch]) * kRowChunk, kRowChunk);
                const v8 a = splat(codes.vals[e]);
                for (int64_t v = 0; v < kRowChunk / kLanes; ++v) acc[v] += a * load(wr + v * kLanes);
              }
              float* o = out + r * d + c0;
              if (w == kRowChunk) {
                for (int64_t v = 0; v < kRowChunk / kLanes; ++v) store(o + v * kLanes, acc[v]);
              } else {
                float tmp[kRowChunk];
                for (int64_t v = 0; v < kRowChunk / kLanes; ++v) store(tmp + v * kLanes, acc[v]);
                std::memcpy(o, tmp, static_cast<size_t>(w) * sizeof(float));
              }
            }
          }
        }
      },
      1);
}

void csr_row_dots(const SparseCodes& codes, const PackedCodesRows& W, const float* Q, float* out) {
  const int64_t B = codes.rows, d = W.rows.d, n = W.rows.n;
  parallel_for(
      (B + kRowBlock - 1) / kRowBlock,
      [&](int64_t lo, int64_t hi, int) {
        for (int64_t blk = lo; blk < hi; ++blk) {
          const int64_t r0 = blk * kRowBlock, r1 = std::min(B, r0 + kRowBlock);
          std::fill(out + codes.row_ptr[r0], out + codes.row_ptr[r1], 0.0f);
          for (int64_t c = 0; c < W.rows.chunks; ++c) {
            const float* Wc = W.rows.data.data() + c * n * kRowChunk;
            const int64_t c0 = c * kRowChunk, w = std::min(kRowChunk, d - c0);
            for (int64_t r = r0; r < r1; ++r) {
              float qbuf[kRowChunk] = {};  // zero past d, like the packed rows
              std::memcpy(qbuf, Q + r * d + c0, static_cast<size_t>(w) * sizeof(float));
              v8 q[kRowChunk / kLanes];
              for (int64_t v = 0; v < kRowChunk / kLanes; ++v) q[v] = load(qbuf + v * kLanes);
              const int64_t e_end = codes.row_ptr[r + 1];
              for (int64_t e = codes.row_ptr[r]; e < e_end; ++e) {
                const float* wr = Wc + static_cast<int64_t>(W.entry_slot[e]) * kRowChunk;
                if (e + kRowPrefetch < e_end)
                  prefetch_floats(Wc + static_cast<int64_t>(W.entry_slot[e + kRowPrefetch]) * kRowChunk, kRowChunk);
                v8 s0 = q[0] * load(wr), s1 = q[1] * load(wr + kLanes);
                for (int64_t v = 2; v < kRowChunk / kLanes; v += 2) {
                  s0 += q[v] * load(wr + v * kLanes);
                  s1 += q[v + 1] * load(wr + (v + 1) * kLanes);
                }
                const v8 s = s0 + s1;
                out[e] += ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
              }
            }
          }
        }
      },
      1);
}

void pack_pair_operand(const float* Q, int64_t B, int64_t d, ChunkedRows& out) {
  pack_rows_chunked(Q, d, nullptr, B, kPairChunk, out);
}

void csc_accumulate_pair(const CscIndex& csc, const float* a_vals, const ChunkedRows& Q1, float* G1,
                         const float* b_vals, const ChunkedRows& Q2, float* G2, float* sum_b, int64_t i0, int64_t i1,
                         PairScratch& scratch) {
  MSAE_ASSERT(Q1.width == kPairChunk && Q2.width == kPairChunk && Q1.n == Q2.n && Q1.d == Q2.d,
              "csc_accumulate_pair wants operands from pack_pair_operand");
  const int64_t B = Q1.n, d = Q1.d;
  // The entries' values in CSC order (src is a random CSR index: read in the chunk loop below, the values
  // would be two scattered loads per entry and chunk, from arrays of several MiB).
  const int64_t e_lo = csc.col_ptr[i0], e_hi = csc.col_ptr[i1];
  scratch.a.resize(static_cast<size_t>(e_hi - e_lo));
  scratch.b.resize(static_cast<size_t>(e_hi - e_lo));
  for (int64_t e = e_lo; e < e_hi; ++e) {
    scratch.a[e - e_lo] = a_vals[csc.src[e]];
    scratch.b[e - e_lo] = b_vals[csc.src[e]];
  }
  const float* a_csc = scratch.a.data();  // CSC entry e at [e - e_lo]
  const float* b_csc = scratch.b.data();
  // This range's latents with entries, their G1 / G2 rows packed chunk-major (as the operands are), so a
  // chunk's slices of them are contiguous and stay in L2 across the row blocks.
  scratch.latents.clear();
  for (int64_t i = i0; i < i1; ++i) {
    if (csc.col_ptr[i + 1] == csc.col_ptr[i]) continue;
    scratch.latents.push_back(static_cast<int32_t>(i));
    float s = sum_b[i];
    for (int64_t e = csc.col_ptr[i]; e < csc.col_ptr[i + 1]; ++e) s += b_csc[e - e_lo];
    sum_b[i] = s;
  }
  const int64_t n = static_cast<int64_t>(scratch.latents.size());
  if (n == 0) return;
  pack_rows_chunked(G1, d, scratch.latents.data(), n, kPairChunk, scratch.G1);
  pack_rows_chunked(G2, d, scratch.latents.data(), n, kPairChunk, scratch.G2);
  scratch.cursor.resize(static_cast<size_t>(n));
  constexpr int64_t V = kPairChunk / kLanes;
  for (int64_t c = 0; c < Q1.chunks; ++c) {
    const float* q1c = Q1.data.data() + c * B * kPairChunk;
    const float* q2c = Q2.data.data() + c * B * kPairChunk;
    float* g1c = scratch.G1.data.data() + c * n * kPairChunk;
    float* g2c = scratch.G2.data.data() + c * n * kPairChunk;
    for (int64_t s = 0; s < n; ++s) scratch.cursor[s] = csc.col_ptr[scratch.latents[s]];
    for (int64_t rb = 0; rb < B; rb += kPairRowBlock) {
      const int64_t rend = std::min(B, rb + kPairRowBlock);
      for (int64_t s = 0; s < n; ++s) {
        int64_t e = scratch.cursor[s];
        const int64_t end = csc.col_ptr[scratch.latents[s] + 1];
        if (e == end || csc.row[e] >= rend) continue;
        float* g1 = g1c + s * kPairChunk;
        float* g2 = g2c + s * kPairChunk;
        v8 acc1[V], acc2[V];
        for (int64_t v = 0; v < V; ++v) {
          acc1[v] = load(g1 + v * kLanes);
          acc2[v] = load(g2 + v * kLanes);
        }
        for (; e < end && csc.row[e] < rend; ++e) {
          const int64_t r = csc.row[e];
          const v8 a = splat(a_csc[e - e_lo]), b = splat(b_csc[e - e_lo]);
          const float* q1 = q1c + r * kPairChunk;
          const float* q2 = q2c + r * kPairChunk;
          if (e + kPairPrefetch < end) {  // (that row may lie in the next row block: a wasted fetch, no harm)
            const int64_t rp = csc.row[e + kPairPrefetch];
            prefetch_floats(q1c + rp * kPairChunk, kPairChunk);
            prefetch_floats(q2c + rp * kPairChunk, kPairChunk);
          }
          for (int64_t v = 0; v < V; ++v) {
            acc1[v] += a * load(q1 + v * kLanes);
            acc2[v] += b * load(q2 + v * kLanes);
          }
        }
        for (int64_t v = 0; v < V; ++v) {
          store(g1 + v * kLanes, acc1[v]);
          store(g2 + v * kLanes, acc2[v]);
        }
        scratch.cursor[s] = e;
      }
    }
  }
  // unpack
  for (int64_t s = 0; s < n; ++s) {
    const int64_t i = scratch.latents[s];
    for (int64_t c = 0; c < Q1.chunks; ++c) {
      const int64_t c0 = c * kPairChunk, w = std::min(kPairChunk, d - c0);
      std::memcpy(G1 + i * d + c0, scratch.G1.data.data() + (c * n + s) * kPairChunk, static_cast<size_t>(w) * 4);
      std::memcpy(G2 + i * d + c0, scratch.G2.data.data() + (c * n + s) * kPairChunk, static_cast<size_t>(w) * 4);
    }
  }
}

}  // namespace msae::kernels
