// Selection kernels: linear-time cut finding (nth_element on the positive candidates) instead of the
// reference's full sort. Same tie policy as the reference: at the cut value, lower flat index first.
#include <algorithm>
#include <functional>

#include "msae/kernels_ref.h"

namespace msae::kernels {
namespace {

// Finds the value of the keep-th largest among `cands` (all > 0) and how many entries equal to it are kept.
// Requires 0 < keep < cands.size().
struct Cut {
  float value;
  int64_t ties_to_keep;
};
Cut find_cut(std::vector<float>& cands, int64_t keep) {
  std::nth_element(cands.begin(), cands.begin() + (keep - 1), cands.end(), std::greater<float>());
  const float value = cands[keep - 1];
  int64_t above = 0;
  for (int64_t j = 0; j < keep - 1; ++j) above += cands[j] > value;
  return {value, keep - above};
}

}  // namespace

void batch_topk(const float* pre, int64_t B, int64_t D, int64_t keep, SparseCodes& out) {
  const int64_t n = B * D;
  std::vector<float> cands;
  cands.reserve(static_cast<size_t>(std::min<int64_t>(n, 4 * std::max<int64_t>(keep, 1))));
  for (int64_t f = 0; f < n; ++f)
    if (pre[f] > 0.0f) cands.push_back(pre[f]);
  const bool keep_all = keep >= static_cast<int64_t>(cands.size());
  Cut cut{0.0f, 0};
  if (!keep_all && keep > 0) cut = find_cut(cands, keep);

  out.rows = B;
  out.cols = D;
  out.row_ptr.assign(B + 1, 0);
  out.ids.clear();
  out.vals.clear();
  if (keep > 0) {
    int64_t ties_left = cut.ties_to_keep;
    for (int64_t r = 0; r < B; ++r) {
      const float* row = pre + r * D;
      for (int64_t i = 0; i < D; ++i) {
        const float v = row[i];
        if (!(v > 0.0f)) continue;
        bool take = keep_all || v > cut.value;
        if (!take && v == cut.value && ties_left > 0) {
          take = true;
          --ties_left;
        }
        if (take) {
          out.ids.push_back(static_cast<int32_t>(i));
          out.vals.push_back(v);
        }
      }
      out.row_ptr[r + 1] = static_cast<int64_t>(out.ids.size());
    }
  }
}

void row_topk(const float* pre, int64_t B, int64_t D, int64_t k, SparseCodes& out) {
  out.rows = B;
  out.cols = D;
  out.row_ptr.assign(B + 1, 0);
  out.ids.clear();
  out.vals.clear();
  std::vector<float> cands;
  for (int64_t r = 0; r < B; ++r) {
    const float* row = pre + r * D;
    cands.clear();
    for (int64_t i = 0; i < D; ++i)
      if (row[i] > 0.0f) cands.push_back(row[i]);
    const bool keep_all = k >= static_cast<int64_t>(cands.size());
    Cut cut{0.0f, 0};
    if (!keep_all && k > 0) cut = find_cut(cands, k);
    int64_t ties_left = cut.ties_to_keep;
    for (int64_t i = 0; i < D && k > 0; ++i) {
      const float v = row[i];
      if (!(v > 0.0f)) continue;
      bool take = keep_all || v > cut.value;
      if (!take && v == cut.value && ties_left > 0) {
        take = true;
        --ties_left;
      }
      if (take) {
        out.ids.push_back(static_cast<int32_t>(i));
        out.vals.push_back(v);
      }
    }
    out.row_ptr[r + 1] = static_cast<int64_t>(out.ids.size());
  }
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
