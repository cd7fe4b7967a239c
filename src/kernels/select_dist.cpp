// Selection across latent shards (msae/kernels.h, "Selection across processes"). Each process holds the
// pre-activations of its own latents and first selects candidates among them with the one-process kernels;
// these functions then agree on the global cut with a few small collectives and keep, on each process,
// exactly its part of what one process selecting over all D latents would keep (same values, same tie
// rule: lower flat index r * D + id for BatchTopK, lower id per row for TopK and AuxK).
//
// Why the candidates suffice: a process's candidates are the top `keep` of its own entries in the same
// order (value descending, then flat index) that the global rule uses, restricted to its latents (its
// global ids ascend with its local ids, so local flat order is global flat order). An entry of the global
// selection has fewer than `keep` entries before it overall, so fewer than `keep` on its own process: it is
// among that process's candidates.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "msae/comm.h"
#include "msae/kernels.h"

namespace msae::kernels {
namespace {

// Keeps the entries of `codes` for which keep(r, e) is true, in place (CSR order preserved).
template <class Keep>
void filter_codes(SparseCodes& codes, Keep&& keep) {
  int64_t w = 0;
  int64_t start = 0;
  for (int64_t r = 0; r < codes.rows; ++r) {
    const int64_t e1 = codes.row_ptr[r + 1];
    for (int64_t e = start; e < e1; ++e)
      if (keep(r, e)) {
        codes.ids[w] = codes.ids[e];
        codes.vals[w] = codes.vals[e];
        ++w;
      }
    start = e1;
    codes.row_ptr[r + 1] = w;
  }
  codes.ids.resize(static_cast<size_t>(w));
  codes.vals.resize(static_cast<size_t>(w));
}

}  // namespace

float dist_batch_cut(SparseCodes& codes, int64_t keep, const std::vector<int64_t>& global_ids, int64_t D_global,
                     comm::Comm& comm, DistScratch& s) {
  const int64_t n = codes.nnz();
  const float* vals = codes.vals.data();
  // Radix select of the keep-th largest value over all processes' candidates: positive floats order like
  // their bit patterns, so three rounds of one histogram each (bits 31..20, 19..8, 7..0; the sign bit is
  // always 0) fix the cut's bits from the top. Each round is one allreduce of integer counts (exact).
  // The first round's last slot carries the candidate count.
  constexpr int kShift[3] = {20, 8, 0};
  constexpr int kWidth[3] = {12, 12, 8};
  s.hist.assign((1 << 12) + 1, 0);
  for (int64_t e = 0; e < n; ++e) ++s.hist[std::bit_cast<uint32_t>(vals[e]) >> 20];
  s.hist[1 << 12] = n;
  comm.allreduce_sum(s.hist.data(), static_cast<int64_t>(s.hist.size()));
  const int64_t total = s.hist[1 << 12];
  if (total <= keep) {  // every candidate is kept; the cut is the smallest of all
    float smallest = std::numeric_limits<float>::infinity();
    for (int64_t e = 0; e < n; ++e) smallest = std::min(smallest, vals[e]);
    comm.allreduce_min(&smallest, 1);
    return total > 0 ? smallest : 0.0f;
  }
  uint32_t prefix = 0;     // the cut's bits fixed so far
  uint32_t mask = 0;       // which bits those are
  int64_t need = keep;     // rank of the cut among the candidates matching prefix, from the top
  for (int round = 0; round < 3; ++round) {
    const int bins = 1 << kWidth[round];
    if (round > 0) {
      s.hist.assign(static_cast<size_t>(bins), 0);
      for (int64_t e = 0; e < n; ++e) {
        const uint32_t bits = std::bit_cast<uint32_t>(vals[e]);
        if ((bits & mask) == prefix) ++s.hist[(bits >> kShift[round]) & static_cast<uint32_t>(bins - 1)];
      }
      comm.allreduce_sum(s.hist.data(), bins);
    }
    int b = bins - 1;
    for (; b > 0 && s.hist[b] < need; --b) need -= s.hist[b];
    prefix |= static_cast<uint32_t>(b) << kShift[round];
    mask |= static_cast<uint32_t>(bins - 1) << kShift[round];
  }
  // `need` entries equal to the cut are kept, out of ties_total (the last histogram's bin).
  const float cut = std::bit_cast<float>(prefix);
  const int64_t ties_total = s.hist[prefix & 0xff];
  int64_t last_tie = std::numeric_limits<int64_t>::max();  // flat index of the last tie kept
  if (need < ties_total) {
    // Rare (equal floats at the cut): every process's tie positions, in global flat order.
    s.ties.clear();
    for (int64_t r = 0; r < codes.rows; ++r)
      for (int64_t e = codes.row_ptr[r]; e < codes.row_ptr[r + 1]; ++e)
        if (codes.vals[e] == cut) s.ties.push_back(r * D_global + global_ids[codes.ids[e]]);
    comm.allgatherv(s.ties.data(), static_cast<int64_t>(s.ties.size() * sizeof(int64_t)), s.bytes, s.counts);
    std::vector<int64_t>& all = s.ties;
    all.resize(s.bytes.size() / sizeof(int64_t));
    std::memcpy(all.data(), s.bytes.data(), s.bytes.size());
    std::nth_element(all.begin(), all.begin() + (need - 1), all.end());
    last_tie = all[need - 1];
  }
  filter_codes(codes, [&](int64_t r, int64_t e) {
    const float v = codes.vals[e];
    return v > cut || (v == cut && r * D_global + global_ids[codes.ids[e]] <= last_tie);
  });
  return cut;
}

namespace {

// dist_row_cut by per-row histograms: four rounds over the bytes of the float bits (31..24, ..., 7..0), each
// one allreduce of (B, 256) counts, fix every row's cut from the top; ties at a row's cut are then settled
// by their ids, gathered for the rows that have more ties than places (rare). Sends about
// 4 x 2 x B x 256 x 8 bytes per process whatever the number of processes.
float row_cut_by_histograms(SparseCodes& codes, int64_t keep, const std::vector<int64_t>& global_ids,
                            comm::Comm& comm, DistScratch& s) {
  const int64_t B = codes.rows;
  constexpr int kBins = 256;
  s.row_prefix.assign(static_cast<size_t>(B), 0);
  s.row_need.assign(static_cast<size_t>(B), 0);
  s.row_total.assign(static_cast<size_t>(B), 0);
  uint32_t mask = 0;
  for (int round = 0; round < 4; ++round) {
    const int shift = 24 - 8 * round;
    // Round 0 also counts each row's candidates (the last slot of the row).
    const int64_t width = round == 0 ? kBins + 1 : kBins;
    s.hist.assign(static_cast<size_t>(B * width), 0);
    parallel_for(
        B,
        [&](int64_t lo, int64_t hi, int) {
          for (int64_t r = lo; r < hi; ++r) {
            int64_t* h = s.hist.data() + r * width;
            for (int64_t e = codes.row_ptr[r]; e < codes.row_ptr[r + 1]; ++e) {
              const uint32_t bits = std::bit_cast<uint32_t>(codes.vals[e]);
              if ((bits & mask) == s.row_prefix[r]) ++h[(bits >> shift) & 0xff];
            }
            if (round == 0) h[kBins] = codes.row_ptr[r + 1] - codes.row_ptr[r];
          }
        },
        64);
    comm.allreduce_sum(s.hist.data(), B * width);
    for (int64_t r = 0; r < B; ++r) {
      const int64_t* h = s.hist.data() + r * width;
      if (round == 0) {
        s.row_total[r] = h[kBins];
        s.row_need[r] = keep;
      }
      if (s.row_total[r] <= keep) continue;  // every candidate of the row is kept
      int b = kBins - 1;
      int64_t need = s.row_need[r];
      for (; b > 0 && h[b] < need; --b) need -= h[b];
      s.row_need[r] = need;
      s.row_prefix[r] |= static_cast<uint32_t>(b) << shift;
    }
    mask |= 0xffu << shift;
    if (round == 3) {  // the last histogram's bin of the cut: the ties
      s.row_ties.assign(static_cast<size_t>(B), 0);
      for (int64_t r = 0; r < B; ++r)
        if (s.row_total[r] > keep) s.row_ties[r] = s.hist[r * width + (s.row_prefix[r] & 0xff)];
    }
  }
  // Rows with more ties at the cut than places: every process's tied ids there, to keep the lowest.
  s.row_cut_id.assign(static_cast<size_t>(B), std::numeric_limits<int32_t>::max());
  s.ties.clear();
  for (int64_t r = 0; r < B; ++r) {
    if (s.row_total[r] <= keep || s.row_need[r] >= s.row_ties[r]) continue;
    const float cut = std::bit_cast<float>(s.row_prefix[r]);
    for (int64_t e = codes.row_ptr[r]; e < codes.row_ptr[r + 1]; ++e)
      if (codes.vals[e] == cut) s.ties.push_back(r * (int64_t{1} << 32) + global_ids[codes.ids[e]]);
  }
  int64_t any = s.ties.empty() ? 0 : 1;
  comm.allreduce_max(&any, 1);
  if (any) {
    comm.allgatherv(s.ties.data(), static_cast<int64_t>(s.ties.size() * sizeof(int64_t)), s.bytes, s.counts);
    std::vector<int64_t>& all = s.ties;
    all.resize(s.bytes.size() / sizeof(int64_t));
    if (!all.empty()) std::memcpy(all.data(), s.bytes.data(), s.bytes.size());
    std::sort(all.begin(), all.end());  // by row, then id
    for (size_t i = 0; i < all.size();) {
      const int64_t r = all[i] >> 32;
      const size_t first = i;
      while (i < all.size() && (all[i] >> 32) == r) ++i;
      s.row_cut_id[r] = static_cast<int32_t>(all[first + s.row_need[r] - 1] & 0xffffffff);
    }
  }
  float smallest = std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < B; ++r) {
    if (s.row_total[r] > keep) {
      smallest = std::min(smallest, std::bit_cast<float>(s.row_prefix[r]));
    } else {
      for (int64_t e = codes.row_ptr[r]; e < codes.row_ptr[r + 1]; ++e) smallest = std::min(smallest, codes.vals[e]);
    }
  }
  filter_codes(codes, [&](int64_t r, int64_t e) {
    if (s.row_total[r] <= keep) return true;
    const float v = codes.vals[e], cut = std::bit_cast<float>(s.row_prefix[r]);
    return v > cut || (v == cut && global_ids[codes.ids[e]] <= s.row_cut_id[r]);
  });
  comm.allreduce_min(&smallest, 1);
  return std::isinf(smallest) ? 0.0f : smallest;
}

}  // namespace

float dist_row_cut(SparseCodes& codes, int64_t keep, const std::vector<int64_t>& global_ids, comm::Comm& comm,
                   DistScratch& s, RowCutMethod method) {
  // Sending every candidate costs about 8 B keep (P - 1) bytes per process, the histograms about
  // 4 x 2 (P - 1) / P x B x 256 x 8: the candidates win while keep P < 2048 (TopK's k = 32 up to 64 processes,
  // AuxK's 512 up to 4).
  if (method == RowCutMethod::automatic)
    method = keep * comm.size() < 2048 ? RowCutMethod::candidates : RowCutMethod::histograms;
  if (method == RowCutMethod::histograms) return row_cut_by_histograms(codes, keep, global_ids, comm, s);
  const int64_t B = codes.rows, n = codes.nnz();
  // Sent: the candidates of every row as (value, global id) pairs, rows in order, after the B per-row
  // counts. Received: every process's, in rank order.
  struct Pair {
    float v;
    int32_t id;
  };
  static_assert(sizeof(Pair) == 8);
  const size_t head = static_cast<size_t>(B) * sizeof(int32_t);
  s.send.resize(head + static_cast<size_t>(n) * sizeof(Pair));
  for (int64_t r = 0; r < B; ++r) {
    const int32_t c = static_cast<int32_t>(codes.row_ptr[r + 1] - codes.row_ptr[r]);
    std::memcpy(s.send.data() + r * sizeof(int32_t), &c, sizeof c);
  }
  for (int64_t e = 0; e < n; ++e) {
    const Pair p{codes.vals[e], static_cast<int32_t>(global_ids[codes.ids[e]])};
    std::memcpy(s.send.data() + head + e * sizeof(Pair), &p, sizeof p);
  }
  comm.allgatherv(s.send.data(), static_cast<int64_t>(s.send.size()), s.bytes, s.counts);
  const int P = comm.size();
  // Where each process's rows start in the received bytes.
  std::vector<const char*> base(P);
  std::vector<std::vector<int64_t>> offset(P, std::vector<int64_t>(B + 1, 0));
  int64_t at = 0;
  for (int p = 0; p < P; ++p) {
    base[p] = s.bytes.data() + at;
    for (int64_t r = 0; r < B; ++r) {
      int32_t c;
      std::memcpy(&c, base[p] + r * sizeof(int32_t), sizeof c);
      offset[p][r + 1] = offset[p][r] + c;
    }
    at += s.counts[p];
  }
  // Per row: the keep-th pair in (value descending, id ascending) order over all processes, as (cut value,
  // cut id); rows with at most `keep` candidates keep all (cut id = max).
  s.row_cut_val.assign(static_cast<size_t>(B), 0.0f);
  s.row_cut_id.assign(static_cast<size_t>(B), std::numeric_limits<int32_t>::max());
  const int nt = num_threads();
  std::vector<std::vector<Pair>> work(static_cast<size_t>(nt));
  std::vector<float> smallest(static_cast<size_t>(nt), std::numeric_limits<float>::infinity());
  parallel_for(
      B,
      [&](int64_t lo, int64_t hi, int tid) {
        std::vector<Pair>& w = work[tid];
        for (int64_t r = lo; r < hi; ++r) {
          w.clear();
          for (int p = 0; p < P; ++p) {
            const char* pairs = base[p] + head;
            for (int64_t e = offset[p][r]; e < offset[p][r + 1]; ++e) {
              Pair q;
              std::memcpy(&q, pairs + e * sizeof(Pair), sizeof q);
              w.push_back(q);
            }
          }
          if (w.empty()) continue;
          auto before = [](const Pair& a, const Pair& b) { return a.v > b.v || (a.v == b.v && a.id < b.id); };
          if (static_cast<int64_t>(w.size()) > keep) {
            std::nth_element(w.begin(), w.begin() + (keep - 1), w.end(), before);
            s.row_cut_val[r] = w[keep - 1].v;
            s.row_cut_id[r] = w[keep - 1].id;
            smallest[tid] = std::min(smallest[tid], w[keep - 1].v);
          } else {
            const Pair last = *std::min_element(w.begin(), w.end(), [&](const Pair& a, const Pair& b) { return before(b, a); });
            s.row_cut_val[r] = last.v;
            s.row_cut_id[r] = last.id;
            smallest[tid] = std::min(smallest[tid], last.v);
          }
        }
      },
      16);
  filter_codes(codes, [&](int64_t r, int64_t e) {
    const float v = codes.vals[e], cv = s.row_cut_val[r];
    return v > cv || (v == cv && global_ids[codes.ids[e]] <= s.row_cut_id[r]);
  });
  const float m = *std::min_element(smallest.begin(), smallest.end());
  return std::isinf(m) ? 0.0f : m;
}

}  // namespace msae::kernels
