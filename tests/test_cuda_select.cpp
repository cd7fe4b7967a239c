// The radix-select logic of the CUDA engine (src/cuda/radix_select.h), run on the host: the same functions
// the device kernels call pick the same entries as the CPU selections (kernels::batch_topk for BatchTopK over
// the batch, kernels::aux_topk per row among the dead latents), with ties at the cut (values drawn from a few
// levels), fewer positive entries than asked, nothing positive, and keep == 0. Runs in every build (no GPU).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cuda/radix_select.h"
#include "msae/kernels.h"

namespace msae {
namespace {

// pre (B, D): half the entries at a handful of values from 1 up (many exact ties at the cut), a fifth continuous
// in [0, 2), about a
// third negative or zero.
std::vector<float> make_pre(int64_t B, int64_t D, uint64_t seed, int levels) {
  Rng rng(seed);
  std::vector<float> pre(static_cast<size_t>(B * D));
  for (float& v : pre) {
    const double u = rng.uniform();
    if (u < 0.3) v = u < 0.05 ? 0.0f : -static_cast<float>(rng.uniform());
    else if (levels > 0 && u < 0.8) v = 1.0f + 0.5f * static_cast<float>(rng.below(static_cast<uint64_t>(levels)));
    else v = static_cast<float>(rng.uniform() * 2.0);
  }
  return pre;
}

// BatchTopK as the kernels do it: the cut over all B * D entries in flat order, then per row the kept flags
// with the ties counted over the rows before (the row-count kernel's scan) and within the row.
kernels::SparseCodes mirror_batch_topk(const std::vector<float>& pre, int64_t B, int64_t D, int64_t keep,
                                       cuda::RadixState& state) {
  state = cuda::host_radix_select(pre.data(), B * D, keep);
  kernels::SparseCodes out;
  out.rows = B;
  out.cols = D;
  out.row_ptr.assign(static_cast<size_t>(B + 1), 0);
  long long ties_before_row = 0;
  for (int64_t r = 0; r < B; ++r) {
    long long ties = ties_before_row;
    for (int64_t i = 0; i < D; ++i) {
      const float v = pre[static_cast<size_t>(r * D + i)];
      const uint32_t u = cuda::radix_key(v);
      if (cuda::radix_kept(u, state, ties)) {
        out.ids.push_back(static_cast<int32_t>(i));
        out.vals.push_back(v);
      }
      if (u != 0u && u == state.cut) ++ties;
    }
    ties_before_row = ties;
    out.row_ptr[r + 1] = static_cast<int64_t>(out.ids.size());
  }
  return out;
}

void expect_same_codes(const kernels::SparseCodes& got, const kernels::SparseCodes& want) {
  ASSERT_EQ(got.row_ptr, want.row_ptr);
  ASSERT_EQ(got.ids, want.ids);
  ASSERT_EQ(got.vals.size(), want.vals.size());
  for (size_t e = 0; e < want.vals.size(); ++e) ASSERT_EQ(got.vals[e], want.vals[e]) << e;
}

TEST(CudaRadixSelect, BatchTopKMatchesTheCpuSelection) {
  struct Shape {
    int64_t B, D, keep;
    int levels;
  };
  int tie_cuts = 0;
  for (const Shape s : {Shape{16, 64, 40, 3}, Shape{33, 100, 330, 5}, Shape{8, 512, 64, 0}, Shape{5, 40, 1, 2},
                        Shape{4, 16, 60, 2} /* fewer positive than keep */, Shape{12, 80, 0, 4}})
    for (uint64_t seed = 1; seed <= 4; ++seed) {
      SCOPED_TRACE("B " + std::to_string(s.B) + " D " + std::to_string(s.D) + " keep " + std::to_string(s.keep) +
                   " seed " + std::to_string(seed));
      const std::vector<float> pre = make_pre(s.B, s.D, seed, s.levels);
      kernels::SparseCodes want;
      kernels::batch_topk(pre.data(), s.B, s.D, s.keep, want);
      cuda::RadixState state;
      const kernels::SparseCodes got = mirror_batch_topk(pre, s.B, s.D, s.keep, state);
      expect_same_codes(got, want);
      EXPECT_EQ(got.nnz(), state.keep);
      if (state.keep > 0) {
        float cut = 0.0f;
        std::memcpy(&cut, &state.cut, sizeof(cut));
        float smallest = want.vals[0];
        for (float v : want.vals) smallest = std::min(smallest, v);
        EXPECT_EQ(cut, smallest) << "the cut is the smallest kept value (the threshold EMA's input)";
        EXPECT_GE(state.need, 1);
        int64_t equal = 0;
        for (float v : pre) equal += v == cut;
        tie_cuts += equal > state.need;
      }
    }
  EXPECT_GT(tie_cuts, 5) << "the data should put ties across the cut";
}

TEST(CudaRadixSelect, NothingPositiveKeepsNothing) {
  const std::vector<float> pre(64, -1.0f);
  const cuda::RadixState s = cuda::host_radix_select(pre.data(), 64, 10);
  EXPECT_EQ(s.keep, 0);
  std::vector<char> kept(64, 1);
  cuda::host_radix_keep(pre.data(), 64, s, kept.data());
  for (char k : kept) EXPECT_FALSE(k);
}

// AuxK: per row, the top `keep` among the dead latents (ascending ids), ties by lower id.
TEST(CudaRadixSelect, AuxTopKMatchesTheCpuSelection) {
  const int64_t B = 20, D = 90;
  std::vector<int32_t> dead;
  for (int32_t i = 0; i < D; ++i)
    if (i % 3 != 1) dead.push_back(i);
  for (const int64_t keep : {int64_t{1}, int64_t{7}, int64_t{40}, static_cast<int64_t>(dead.size())})
    for (uint64_t seed = 1; seed <= 3; ++seed) {
      const std::vector<float> pre = make_pre(B, D, 50 + seed, 3);
      kernels::SparseCodes want;
      kernels::SelectScratch scratch;
      kernels::aux_topk(pre.data(), B, D, dead, keep, want, scratch);
      kernels::SparseCodes got;
      got.row_ptr.assign(static_cast<size_t>(B + 1), 0);
      std::vector<float> cand(dead.size());
      std::vector<char> kept(dead.size());
      for (int64_t r = 0; r < B; ++r) {
        for (size_t s = 0; s < dead.size(); ++s) cand[s] = pre[static_cast<size_t>(r * D + dead[s])];
        const cuda::RadixState st = cuda::host_radix_select(cand.data(), static_cast<long long>(cand.size()), keep);
        cuda::host_radix_keep(cand.data(), static_cast<long long>(cand.size()), st, kept.data());
        for (size_t s = 0; s < dead.size(); ++s)
          if (kept[s]) {
            got.ids.push_back(dead[s]);
            got.vals.push_back(cand[s]);
          }
        got.row_ptr[r + 1] = static_cast<int64_t>(got.ids.size());
      }
      SCOPED_TRACE("keep " + std::to_string(keep) + " seed " + std::to_string(seed));
      expect_same_codes(got, want);
    }
}

}  // namespace
}  // namespace msae
