// Selection kernels on msae's thread pool. BatchTopK finds the global cut without sorting: a histogram
// of the float bit patterns (positive floats order like their bits) locates the bin holding the keep-th
// largest value, the entries at or above that bin are extracted row by row (so they come out in flat
// index order, CSR-ready), and nth_element on the extracted few resolves the exact cut. With a hint (the
// previous step's cut) the extraction happens in the first and only pass over the (B, D) matrix.
// Tie policy everywhere (kernels.h): among values equal at the cut, lower flat index / lower id first.
#include <algorithm>
#include <bit>
#include <cstring>
#include <cstdint>
#include <functional>
#include <limits>
#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "msae/kernels_ref.h"

namespace msae::kernels {
namespace {

constexpr int kBins = 2048;  // sign bit is 0 for positives: exponent (8 bits) + 3 mantissa bits
inline uint32_t bin_of(float v) { return std::bit_cast<uint32_t>(v) >> 20; }

// Value and count of the cut among `vals` (keep < vals.size()): the keep-th largest, and how many
// entries equal to it are kept.
struct Cut {
  float value;
  int64_t ties_to_keep;
};
Cut find_cut(float* vals, int64_t n, int64_t keep) {
  std::nth_element(vals, vals + (keep - 1), vals + n, std::greater<float>());
  const float value = vals[keep - 1];
  int64_t above = 0;
  for (int64_t j = 0; j < keep - 1; ++j) above += vals[j] > value;
  return {value, keep - above};
}

void prepare(SelectScratch& sc, int threads, int64_t B) {
  if (static_cast<int>(sc.ids.size()) < threads) {
    sc.ids.resize(threads);
    sc.vals.resize(threads);
    sc.hist.resize(threads);
  }
  if (static_cast<int64_t>(sc.row_count.size()) < B) sc.row_count.resize(B);
  if (static_cast<int>(sc.thread_info.size()) < 4 * threads) sc.thread_info.resize(4 * threads);
}

int select_threads(int64_t B) { return static_cast<int>(std::clamp<int64_t>(B, 1, num_threads())); }

inline int64_t row_begin(int64_t B, int tid, int nt) { return B * tid / nt; }

// Bit j of the result: p[j] >= floor (false for NaN, like the scalar comparison), for n <= 64. The
// extraction below tests every block of a row with it and then visits only the set bits, in ascending
// order. Both halves matter: GCC left the plain `any |= p[i] >= floor` loop scalar (vcomiss per element),
// and with the 0.85 x hint floor about a third of the 64-float blocks hold a hit, so rescanning a hit
// block element by element cost as much again.
constexpr int64_t kTestBlock = 64;
inline uint64_t at_least_mask(const float* p, int64_t n, float floor) {
#if defined(__AVX__)
  if (n == kTestBlock) {
    const __m256 f = _mm256_set1_ps(floor);
    uint64_t bits = 0;
    for (int64_t v = 0; v < kTestBlock; v += 8)
      bits |= static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + v), f, _CMP_GE_OQ))) << v;
    return bits;
  }
#endif
  uint64_t bits = 0;
  for (int64_t i = 0; i < n; ++i) bits |= static_cast<uint64_t>(p[i] >= floor) << i;
  return bits;
}

constexpr int kMaxLevels = 6;  // the most levels extract_rows counts (batch_topk's ladder)

// Extracts entries of rows [r0, r1) with value >= lo (and > 0) into ids/vals; counts per row. Stops
// storing (but keeps counting) beyond `cap` entries; returns the count. Also counts, for each of the
// `nlev` (<= kMaxLevels) ascending levels (all >= lo), the entries >= that level (into level_count).
int64_t extract_rows(const float* pre, int64_t D, int64_t r0, int64_t r1, float lo, std::vector<int32_t>& ids,
                     FloatBuffer& vals, int64_t* row_count, int64_t cap, const float* levels = nullptr,
                     int nlev = 0, int64_t* level_count = nullptr) {
  // Appended to as locals (moved in and back out: no copy, no allocation), so their end pointers can stay in
  // registers; pushed through the references, each hit loaded and stored both vectors' ends in memory.
  std::vector<int32_t> out_ids = std::move(ids);
  FloatBuffer out_vals = std::move(vals);
  out_ids.clear();
  out_vals.clear();
  int64_t total = 0;
  const float floor = std::max(lo, std::numeric_limits<float>::denorm_min());
  // The level counts live in locals over a fixed number of levels (unused ones at +inf, which no finite
  // value reaches), so they stay in registers: counted through the level_count pointer, every hit did
  // six read-modify-writes to memory, chained from hit to hit (about half of the extraction's time at the
  // bench shape, ~1.1M hits per step).
  MSAE_ASSERT(nlev >= 0 && nlev <= kMaxLevels, "levels: ", nlev);
  float lev[kMaxLevels];
  int64_t lev_count[kMaxLevels] = {};
  for (int l = 0; l < kMaxLevels; ++l) lev[l] = l < nlev ? levels[l] : std::numeric_limits<float>::infinity();
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = pre + r * D;
    int64_t count = 0;
    for (int64_t i0 = 0; i0 < D; i0 += kTestBlock) {
      const int64_t i1 = std::min(D, i0 + kTestBlock);
      for (uint64_t bits = at_least_mask(row + i0, i1 - i0, floor); bits != 0; bits &= bits - 1) {
        const int64_t i = i0 + std::countr_zero(bits);
        const float v = row[i];
        for (int l = 0; l < kMaxLevels; ++l) lev_count[l] += v >= lev[l];
        if (total + count < cap) {
          out_ids.push_back(static_cast<int32_t>(i));
          out_vals.push_back(v);
        }
        ++count;
      }
    }
    row_count[r] = count;
    total += count;
  }
  for (int l = 0; l < nlev; ++l) level_count[l] = lev_count[l];
  ids = std::move(out_ids);
  vals = std::move(out_vals);
  return total;
}

// Writes the final CSR from the per-thread extracted lists, keeping v > cut and the first ties_to_keep
// entries equal to cut in flat order (keep_all: everything). Thread t owns rows [row_begin(t), ...).
void compact(SelectScratch& sc, int64_t B, int nt, bool keep_all, Cut cut, SparseCodes& out) {
  int64_t* gt = sc.thread_info.data();
  int64_t* eq = gt + nt;
  int64_t* base = eq + nt;
  int64_t* ties = base + nt;
  parallel(
      [&](int tid, int) {
        int64_t g = 0, e = 0;
        const FloatBuffer& v = sc.vals[tid];
        for (size_t j = 0; j < v.size(); ++j) {
          g += v[j] > cut.value;
          e += v[j] == cut.value;
        }
        gt[tid] = keep_all ? static_cast<int64_t>(v.size()) : g;
        eq[tid] = keep_all ? 0 : e;
      },
      nt);
  int64_t offset = 0, ties_left = keep_all ? 0 : cut.ties_to_keep;
  for (int t = 0; t < nt; ++t) {
    ties[t] = std::min(ties_left, eq[t]);
    ties_left -= ties[t];
    base[t] = offset;
    offset += gt[t] + ties[t];
  }
  out.ids.resize(offset);
  out.vals.resize(offset);
  parallel(
      [&](int tid, int) {
        const std::vector<int32_t>& ids = sc.ids[tid];
        const FloatBuffer& vals = sc.vals[tid];
        int64_t o = base[tid], left = ties[tid];
        size_t j = 0;
        for (int64_t r = row_begin(B, tid, nt); r < row_begin(B, tid + 1, nt); ++r) {
          for (int64_t c = 0; c < sc.row_count[r]; ++c, ++j) {
            const float v = vals[j];
            bool take = keep_all || v > cut.value;
            if (!take && v == cut.value && left > 0) {
              take = true;
              --left;
            }
            if (take) {
              out.ids[o] = ids[j];
              out.vals[o] = v;
              ++o;
            }
          }
          out.row_ptr[r + 1] = o;
        }
      },
      nt);
}

}  // namespace

float batch_topk(const float* pre, int64_t B, int64_t D, int64_t keep, SparseCodes& out, SelectScratch& sc,
                 float hint) {
  out.rows = B;
  out.cols = D;
  out.row_ptr.assign(B + 1, 0);
  out.ids.clear();
  out.vals.clear();
  if (keep <= 0 || B <= 0 || D <= 0) return 0.0f;
  const int nt = select_threads(B);
  prepare(sc, nt, B);
  int64_t* found = sc.thread_info.data();

  // Pass 1 with a hint (a guess of the cut, e.g. the previous step's): extract everything >= 0.85 hint
  // (bounded) and count the extracted entries above a ladder of levels. Enough entries: the cut is among
  // them, and the highest level that still holds `keep` entries bounds the nth_element below. Too many
  // (the hint was far too low): one more extraction at the best level. Too few (the cut fell by more
  // than 15%): the histogram path.
  bool resolved = false;
  float work_floor = 0.0f;
  if (hint > 0.0f) {
    constexpr int kLevels = kMaxLevels;
    const float ladder[kLevels] = {0.85f, 1.0f, 1.15f, 1.35f, 1.6f, 2.0f};
    float levels[kLevels];
    for (int l = 0; l < kLevels; ++l) levels[l] = hint * ladder[l];
    const int64_t cap = 16 * keep / nt + 4096;
    for (int t = 0; t < nt; ++t)
      if (static_cast<int64_t>(sc.ids[t].capacity()) < cap) {
        sc.ids[t].reserve(cap);
        sc.vals[t].reserve(cap);
      }
    if (static_cast<int>(sc.thread_info.size()) < (4 + kLevels) * nt) sc.thread_info.resize((4 + kLevels) * nt);
    found = sc.thread_info.data();
    int64_t* level_count = found + 4 * nt;
    parallel(
        [&](int tid, int) {
          found[tid] = extract_rows(pre, D, row_begin(B, tid, nt), row_begin(B, tid + 1, nt), levels[0], sc.ids[tid],
                                    sc.vals[tid], sc.row_count.data(), cap, levels, kLevels,
                                    level_count + kLevels * tid);
        },
        nt);
    int64_t level_total[kLevels] = {};
    int64_t level_most[kLevels] = {};
    for (int l = 0; l < kLevels; ++l)
      for (int t = 0; t < nt; ++t) {
        level_total[l] += level_count[kLevels * t + l];
        level_most[l] = std::max(level_most[l], level_count[kLevels * t + l]);
      }
    int best = -1;  // highest level with >= keep entries
    for (int l = kLevels - 1; l >= 0 && best < 0; --l)
      if (level_total[l] >= keep) best = l;
    if (best >= 0) {
      if (level_most[0] <= cap) {
        resolved = true;
        work_floor = levels[best];
      } else if (level_most[best] <= cap) {
        const float lo = levels[best];
        parallel(
            [&](int tid, int) {
              found[tid] = extract_rows(pre, D, row_begin(B, tid, nt), row_begin(B, tid + 1, nt), lo, sc.ids[tid],
                                        sc.vals[tid], sc.row_count.data(), cap);
            },
            nt);
        resolved = true;
        work_floor = lo;
      }
    }
  }
  if (!resolved) {
    // Histogram pass, then extraction of the bins at and above the cut bin.
    parallel(
        [&](int tid, int) {
          // Four interleaved sub-histograms, summed at the end: neighbouring values mostly share a bin,
          // and increments of one counter back to back wait on each other (measured ~200 ms a pass at the
          // bench shape with one histogram). The first step of every run takes this path.
          std::vector<uint32_t>& h = sc.hist[tid];
          h.assign(4 * kBins, 0);
          const int64_t f0 = row_begin(B, tid, nt) * D, f1 = row_begin(B, tid + 1, nt) * D;
          int64_t f = f0;
          for (; f + 4 <= f1; f += 4)
            for (int u = 0; u < 4; ++u) {
              const float v = pre[f + u];
              h[u * kBins + (bin_of(v) & (kBins - 1))] += v > 0.0f;  // branch-free: non-positives add 0
            }
          for (; f < f1; ++f) h[bin_of(pre[f]) & (kBins - 1)] += pre[f] > 0.0f;
          for (int b = 0; b < kBins; ++b) h[b] += h[kBins + b] + h[2 * kBins + b] + h[3 * kBins + b];
        },
        nt);
    int64_t cum = 0;
    int cut_bin = 0;
    for (int b = kBins - 1; b >= 0; --b) {
      for (int t = 0; t < nt; ++t) cum += sc.hist[t][b];
      if (cum >= keep) {
        cut_bin = b;
        break;
      }
    }
    // cum < keep: fewer positives than keep, every positive is kept (cut_bin 0 extracts all).
    const float lo = cum >= keep ? std::bit_cast<float>(static_cast<uint32_t>(cut_bin) << 20) : 0.0f;
    parallel(
        [&](int tid, int) {
          found[tid] = extract_rows(pre, D, row_begin(B, tid, nt), row_begin(B, tid + 1, nt), lo, sc.ids[tid],
                                    sc.vals[tid], sc.row_count.data(), INT64_MAX);
        },
        nt);
  }
  int64_t total = 0;
  for (int t = 0; t < nt; ++t) total += found[t];
  const bool keep_all = total <= keep;
  Cut cut{0.0f, 0};
  float smallest = 0.0f;
  if (keep_all) {
    smallest = std::numeric_limits<float>::infinity();
    for (int t = 0; t < nt; ++t)
      for (float v : sc.vals[t]) smallest = std::min(smallest, v);
    if (total == 0) smallest = 0.0f;
  } else {
    // The cut is among the values >= work_floor (at least `keep` of them exist).
    sc.work.resize(total);
    int64_t o = 0;
    for (int t = 0; t < nt; ++t)
      for (float v : sc.vals[t])
        if (v >= work_floor) sc.work[o++] = v;
    if (o > keep) {
      cut = find_cut(sc.work.data(), o, keep);
    } else {  // exactly keep values: all kept
      cut.value = *std::min_element(sc.work.data(), sc.work.data() + o);
      cut.ties_to_keep = std::count(sc.work.data(), sc.work.data() + o, cut.value);
    }
    smallest = cut.value;
  }
  compact(sc, B, nt, keep_all, cut, out);
  return smallest;
}

void batch_topk(const float* pre, int64_t B, int64_t D, int64_t keep, SparseCodes& out) {
  SelectScratch scratch;
  batch_topk(pre, B, D, keep, out, scratch, 0.0f);
}

void row_topk(const float* pre, int64_t B, int64_t D, int64_t k, SparseCodes& out, SelectScratch& sc) {
  out.rows = B;
  out.cols = D;
  out.row_ptr.assign(B + 1, 0);
  out.ids.clear();
  out.vals.clear();
  if (k <= 0 || B <= 0 || D <= 0) return;
  const int nt = select_threads(B);
  prepare(sc, nt, B);
  parallel(
      [&](int tid, int) {
        std::vector<int32_t>& ids = sc.ids[tid];
        FloatBuffer& vals = sc.vals[tid];
        ids.clear();
        vals.clear();
        thread_local FloatBuffer work;
        if (work.size() < static_cast<size_t>(D)) work.resize(D);
        for (int64_t r = row_begin(B, tid, nt); r < row_begin(B, tid + 1, nt); ++r) {
          const float* row = pre + r * D;
          int64_t n = 0;
          for (int64_t i = 0; i < D; ++i) {
            work[n] = row[i];
            n += row[i] > 0.0f;
          }
          const bool keep_all = k >= n;
          Cut cut{0.0f, 0};
          if (!keep_all) cut = find_cut(work.data(), n, k);
          int64_t left = cut.ties_to_keep, count = 0;
          for (int64_t i = 0; i < D; ++i) {
            const float v = row[i];
            if (!(v > 0.0f)) continue;
            bool take = keep_all || v > cut.value;
            if (!take && v == cut.value && left > 0) {
              take = true;
              --left;
            }
            if (take) {
              ids.push_back(static_cast<int32_t>(i));
              vals.push_back(v);
              ++count;
            }
          }
          sc.row_count[r] = count;
        }
      },
      nt);
  compact(sc, B, nt, true, Cut{0.0f, 0}, out);
}

void row_topk(const float* pre, int64_t B, int64_t D, int64_t k, SparseCodes& out) {
  SelectScratch scratch;
  row_topk(pre, B, D, k, out, scratch);
}

void aux_topk(const float* pre, int64_t B, int64_t D, const std::vector<int32_t>& dead, int64_t keep,
              SparseCodes& out, SelectScratch& sc) {
  out.rows = B;
  out.cols = D;
  out.row_ptr.assign(B + 1, 0);
  out.ids.clear();
  out.vals.clear();
  const int64_t n_dead = static_cast<int64_t>(dead.size());
  if (keep <= 0 || B <= 0 || n_dead == 0) return;
  const int nt = select_threads(B);
  prepare(sc, nt, B);
  parallel(
      [&](int tid, int) {
        std::vector<int32_t>& ids = sc.ids[tid];
        FloatBuffer& vals = sc.vals[tid];
        ids.clear();
        vals.clear();
        // Per row: the positive values among the dead latents and their ids, in ascending id order
        // (one gather pass over the row), then the cut among them when there are more than `keep`.
        thread_local FloatBuffer work, pos_vals;
        thread_local std::vector<int32_t> pos_ids;
        if (work.size() < static_cast<size_t>(n_dead)) {
          work.resize(n_dead);
          pos_vals.resize(n_dead);
          pos_ids.resize(n_dead);
        }
        for (int64_t r = row_begin(B, tid, nt); r < row_begin(B, tid + 1, nt); ++r) {
          const float* row = pre + r * D;
          int64_t n = 0;
          for (int64_t j = 0; j < n_dead; ++j) {  // branch-free: every value is written, positives advance n
            const int32_t id = dead[j];
            const float v = row[id];
            pos_vals[n] = v;
            pos_ids[n] = id;
            n += v > 0.0f;
          }
          const bool keep_all = keep >= n;
          Cut cut{0.0f, 0};
          if (!keep_all) {
            std::copy_n(pos_vals.data(), n, work.data());  // find_cut reorders its input
            cut = find_cut(work.data(), n, keep);
          }
          int64_t left = cut.ties_to_keep, count = 0;
          for (int64_t j = 0; j < n; ++j) {
            const float v = pos_vals[j];
            bool take = keep_all || v > cut.value;
            if (!take && v == cut.value && left > 0) {
              take = true;
              --left;
            }
            if (take) {
              ids.push_back(pos_ids[j]);
              vals.push_back(v);
              ++count;
            }
          }
          sc.row_count[r] = count;
        }
      },
      nt);
  compact(sc, B, nt, true, Cut{0.0f, 0}, out);
}

void csr_to_csc(const SparseCodes& codes, CscIndex& out) {
  const int64_t B = codes.rows, D = codes.cols;
  const int nt = static_cast<int>(std::clamp<int64_t>(B, 1, num_threads()));
  out.col_ptr.assign(D + 1, 0);
  out.row.resize(codes.nnz());
  out.src.resize(codes.nnz());
  out.counts.assign(static_cast<size_t>(nt) * D, 0);
  parallel(
      [&](int tid, int) {
        int64_t* c = out.counts.data() + static_cast<int64_t>(tid) * D;
        for (int64_t e = codes.row_ptr[row_begin(B, tid, nt)]; e < codes.row_ptr[row_begin(B, tid + 1, nt)]; ++e)
          ++c[codes.ids[e]];
      },
      nt);
  // Column starts, then each thread's first slot per column (threads own ascending row ranges).
  int64_t offset = 0;
  for (int64_t i = 0; i < D; ++i) {
    out.col_ptr[i] = offset;
    for (int t = 0; t < nt; ++t) {
      int64_t& c = out.counts[static_cast<int64_t>(t) * D + i];
      const int64_t n = c;
      c = offset;
      offset += n;
    }
  }
  out.col_ptr[D] = offset;
  parallel(
      [&](int tid, int) {
        int64_t* slot = out.counts.data() + static_cast<int64_t>(tid) * D;
        for (int64_t r = row_begin(B, tid, nt); r < row_begin(B, tid + 1, nt); ++r)
          for (int64_t e = codes.row_ptr[r]; e < codes.row_ptr[r + 1]; ++e) {
            const int64_t s = slot[codes.ids[e]]++;
            out.row[s] = static_cast<int32_t>(r);
            out.src[s] = e;
          }
      },
      nt);
}

void threshold_select(const float* pre, int64_t B, int64_t D, float threshold, int64_t limit, SparseCodes& out) {
  out.rows = B;
  out.cols = D;
  out.row_ptr.assign(B + 1, 0);
  out.ids.clear();
  out.vals.clear();
  const int64_t m = std::min(limit, D);
  for (int64_t r = 0; r < B; ++r) {
    const float* row = pre + r * D;
    for (int64_t i = 0; i < m; ++i)
      if (row[i] > 0.0f && row[i] > threshold) {
        out.ids.push_back(static_cast<int32_t>(i));
        out.vals.push_back(row[i]);
      }
    out.row_ptr[r + 1] = static_cast<int64_t>(out.ids.size());
  }
}

}  // namespace msae::kernels
