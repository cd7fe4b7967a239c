// Table-driven comparison of every fast kernel (src/kernels) against its naive twin (src/kernels/ref):
// many shapes, ties at the cut, rows without positives, keep >= positives, keep = 0, wrong hints.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "msae/kernels_ref.h"

#include "compare.h"

namespace msae::kernels {
namespace {

void expect_same_codes(const SparseCodes& a, const SparseCodes& b, const std::string& what) {
  ASSERT_EQ(a.rows, b.rows) << what;
  ASSERT_EQ(a.cols, b.cols) << what;
  ASSERT_EQ(a.row_ptr, b.row_ptr) << what;
  ASSERT_EQ(a.ids, b.ids) << what;
  ASSERT_EQ(a.vals.size(), b.vals.size()) << what;
  for (size_t j = 0; j < a.vals.size(); ++j) ASSERT_EQ(a.vals[j], b.vals[j]) << what << " at " << j;
}

// Values: normal, or quantized to few levels (many ties), with some rows entirely non-positive.
std::vector<float> make_pre(int64_t B, int64_t D, uint64_t seed, int quantize, bool dead_rows) {
  Rng rng(seed);
  std::vector<float> pre(B * D);
  for (float& v : pre) {
    v = static_cast<float>(rng.normal());
    if (quantize > 0) v = std::round(v * static_cast<float>(quantize)) / static_cast<float>(quantize);
  }
  if (dead_rows)
    for (int64_t r = 0; r < B; r += 5)
      for (int64_t i = 0; i < D; ++i) pre[r * D + i] = -std::abs(pre[r * D + i]);
  return pre;
}

struct Shape {
  int64_t B, D;
  int quantize;
  bool dead_rows;
};

std::vector<Shape> shapes() {
  return {{1, 1, 0, false},    {1, 7, 0, false},    {3, 16, 0, false},  {8, 64, 2, false},  {17, 33, 0, true},
          {64, 128, 0, false}, {64, 128, 1, true},  {5, 1000, 4, false}, {100, 40, 3, true}, {256, 512, 0, false},
          {33, 257, 8, true},  {128, 2048, 0, false}};
}

TEST(Kernels, BatchTopKMatchesReference) {
  SelectScratch scratch;  // reused across shapes on purpose
  for (const Shape& s : shapes()) {
    const std::vector<float> pre = make_pre(s.B, s.D, 7 + s.B * 31 + s.D, s.quantize, s.dead_rows);
    int64_t positives = 0;
    for (float v : pre) positives += v > 0.0f;
    for (int64_t keep : {int64_t{0}, int64_t{1}, s.B, 3 * s.B, positives - 1, positives, positives + 5, s.B * s.D}) {
      if (keep < 0) continue;
      SparseCodes want;
      ref::batch_topk(pre.data(), s.B, s.D, keep, want);
      for (float hint_factor : {0.0f, 1.0f, 0.5f, 0.9f, 1.1f, 3.0f, 100.0f}) {
        // hint relative to the true cut (the smallest kept value)
        float true_cut = 0.0f;
        if (want.nnz() > 0) true_cut = *std::min_element(want.vals.begin(), want.vals.end());
        SparseCodes got;
        const float cut = batch_topk(pre.data(), s.B, s.D, keep, got, scratch, hint_factor * true_cut);
        const std::string what = "B=" + std::to_string(s.B) + " D=" + std::to_string(s.D) + " q=" +
                                 std::to_string(s.quantize) + " keep=" + std::to_string(keep) +
                                 " hint x" + std::to_string(hint_factor);
        expect_same_codes(got, want, what);
        EXPECT_EQ(cut, true_cut) << what;
      }
      SparseCodes plain;
      batch_topk(pre.data(), s.B, s.D, keep, plain);
      expect_same_codes(plain, want, "plain overload");
    }
  }
}

TEST(Kernels, RowTopKMatchesReference) {
  SelectScratch scratch;
  for (const Shape& s : shapes())
    for (int64_t k : {int64_t{0}, int64_t{1}, int64_t{3}, s.D / 2, s.D}) {
      const std::vector<float> pre = make_pre(s.B, s.D, 99 + s.D, s.quantize, s.dead_rows);
      SparseCodes want, got;
      ref::row_topk(pre.data(), s.B, s.D, k, want);
      row_topk(pre.data(), s.B, s.D, k, got, scratch);
      expect_same_codes(got, want, "row_topk B=" + std::to_string(s.B) + " D=" + std::to_string(s.D) + " k=" +
                                       std::to_string(k));
    }
}

TEST(Kernels, AuxTopKMatchesReference) {
  SelectScratch scratch;
  for (const Shape& s : shapes()) {
    const std::vector<float> pre = make_pre(s.B, s.D, 5 + s.B, s.quantize, s.dead_rows);
    Rng rng(s.D);
    for (double share : {0.0, 0.1, 0.5, 1.0}) {
      std::vector<int32_t> dead;
      for (int64_t i = 0; i < s.D; ++i)
        if (rng.uniform() < share) dead.push_back(static_cast<int32_t>(i));
      for (int64_t keep : {int64_t{0}, int64_t{1}, int64_t{4}, static_cast<int64_t>(dead.size()), int64_t{512}}) {
        SparseCodes want, got;
        ref::aux_topk(pre.data(), s.B, s.D, dead, keep, want);
        aux_topk(pre.data(), s.B, s.D, dead, keep, got, scratch);
        expect_same_codes(got, want, "aux_topk B=" + std::to_string(s.B) + " D=" + std::to_string(s.D) +
                                         " dead=" + std::to_string(dead.size()) + " keep=" + std::to_string(keep));
      }
    }
  }
}

TEST(Kernels, CscMatchesReference) {
  SelectScratch scratch;
  for (const Shape& s : shapes()) {
    const std::vector<float> pre = make_pre(s.B, s.D, 3 + s.D, s.quantize, s.dead_rows);
    SparseCodes codes;
    batch_topk(pre.data(), s.B, s.D, 2 * s.B, codes, scratch, 0.0f);
    CscIndex want, got;
    ref::csr_to_csc(codes, want);
    csr_to_csc(codes, got);
    EXPECT_EQ(got.col_ptr, want.col_ptr);
    EXPECT_EQ(got.row, want.row);
    EXPECT_EQ(got.src, want.src);
  }
}

TEST(Kernels, ThresholdSelectMatchesReference) {
  for (const Shape& s : shapes())
    for (float t : {0.0f, 0.5f, 2.0f})
      for (int64_t limit : {int64_t{0}, s.D / 2, s.D}) {
        const std::vector<float> pre = make_pre(s.B, s.D, 11, s.quantize, s.dead_rows);
        SparseCodes want, got;
        ref::threshold_select(pre.data(), s.B, s.D, t, limit, want);
        threshold_select(pre.data(), s.B, s.D, t, limit, got);
        expect_same_codes(got, want, "threshold_select");
      }
}

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  return msae::testing_support::rel_err(a.data(), b.data(), static_cast<int64_t>(a.size()));
}

TEST(Kernels, SgemmMatchesReference) {
  struct G {
    Trans ta, tb;
    int64_t M, N, K;
    float alpha, beta;
  };
  const std::vector<G> cases = {{Trans::no, Trans::no, 1, 1, 1, 1.0f, 0.0f},     {Trans::no, Trans::yes, 37, 129, 16, 1.0f, 0.0f},
                                {Trans::yes, Trans::no, 300, 20, 64, 0.5f, 1.0f}, {Trans::yes, Trans::yes, 17, 400, 33, 1.0f, 0.25f},
                                {Trans::no, Trans::yes, 513, 700, 40, 1.0f, 0.0f}, {Trans::no, Trans::no, 64, 1500, 70, 2.0f, 1.0f}};
  Rng rng(1);
  for (const G& g : cases) {
    const int64_t lda = g.ta == Trans::no ? g.K : g.M, ldb = g.tb == Trans::no ? g.N : g.K;
    std::vector<float> A((g.ta == Trans::no ? g.M : g.K) * lda), Bm((g.tb == Trans::no ? g.K : g.N) * ldb),
        C(g.M * g.N);
    for (float& v : A) v = static_cast<float>(rng.normal());
    for (float& v : Bm) v = static_cast<float>(rng.normal());
    for (float& v : C) v = static_cast<float>(rng.normal());
    std::vector<float> want = C, got = C;
    ref::sgemm(g.ta, g.tb, g.M, g.N, g.K, g.alpha, A.data(), lda, Bm.data(), ldb, g.beta, want.data(), g.N);
    sgemm(g.ta, g.tb, g.M, g.N, g.K, g.alpha, A.data(), lda, Bm.data(), ldb, g.beta, got.data(), g.N);
    EXPECT_LT(max_rel(got, want), 1e-5) << g.M << "x" << g.N << "x" << g.K;
  }
}

// sgemm_fixed_parts: the reference's values, and the same bits for every thread count (sgemm's own split
// follows the threads, and OpenBLAS rounds a row differently at another offset in its part).
TEST(Kernels, SgemmFixedPartsDoNotFollowTheThreads) {
  const int64_t M = 1000, N = 200, K = 300;
  Rng rng(4);
  std::vector<float> A(M * K), Bm(K * N);
  for (float& v : A) v = static_cast<float>(rng.normal());
  for (float& v : Bm) v = static_cast<float>(rng.normal());
  std::vector<float> want(M * N, 0.0f);
  ref::sgemm(Trans::no, Trans::no, M, N, K, 1.0f, A.data(), K, Bm.data(), N, 0.0f, want.data(), N);
  const int saved = num_threads();
  std::vector<float> first;
  for (int t : {1, 2, 3, 4}) {
    set_num_threads(t);
    std::vector<float> got(M * N, 0.0f);
    sgemm_fixed_parts(7, Trans::no, Trans::no, M, N, K, 1.0f, A.data(), K, Bm.data(), N, 0.0f, got.data(), N);
    EXPECT_LT(max_rel(got, want), 1e-5) << t << " threads";
    if (first.empty())
      first = got;
    else
      EXPECT_EQ(0, std::memcmp(first.data(), got.data(), got.size() * sizeof(float))) << t << " threads";
  }
  set_num_threads(saved);
}

// The blocked sparse x dense products (src/kernels/sparse_mm.cpp) against their double-precision twins:
// widths below, at and off the column chunks (32 / 64 floats) and packing, rows without entries, dense and sparse
// codes. The fast kernels sum in float (a few hundred terms here), the twins in double: 1e-5 of the
// largest output is ~100x the float rounding of such sums and far below any indexing mistake (which
// moves outputs by O(1) of their scale).
TEST(Kernels, SparseTimesDenseMatchReference) {
  SelectScratch scratch;
  Rng rng(11);
  // Plus one batch taller than two of csc_accumulate_pair's 256-row blocks, the last one partial.
  std::vector<Shape> product_shapes = shapes();
  product_shapes.push_back({600, 96, 0, true});
  for (const Shape& s : product_shapes) {
    const std::vector<float> pre = make_pre(s.B, s.D, 17 + s.D, s.quantize, s.dead_rows);
    for (int64_t per_row : {int64_t{1}, int64_t{3}, int64_t{40}}) {
      SparseCodes codes;
      batch_topk(pre.data(), s.B, s.D, per_row * s.B, codes, scratch, 0.0f);
      CscIndex csc;
      csr_to_csc(codes, csc);
      for (int64_t d : {int64_t{1}, int64_t{7}, int64_t{32}, int64_t{64}, int64_t{100}, int64_t{192}}) {
        const std::string what = "B=" + std::to_string(s.B) + " D=" + std::to_string(s.D) + " d=" +
                                 std::to_string(d) + " nnz=" + std::to_string(codes.nnz());
        std::vector<float> W(s.D * d), Q(s.B * d), Q2(s.B * d), b_vals(codes.nnz());
        for (float& v : W) v = static_cast<float>(rng.normal());
        for (float& v : Q) v = static_cast<float>(rng.normal());
        for (float& v : Q2) v = static_cast<float>(rng.normal());
        for (float& v : b_vals) v = static_cast<float>(rng.normal());

        PackedCodesRows packed;
        pack_for_codes(codes, W.data(), d, packed);
        std::vector<float> want(s.B * d), got(s.B * d, 123.0f);
        ref::csr_times_dense(codes, W.data(), d, want.data());
        csr_times_dense(codes, packed, got.data());
        EXPECT_LT(max_rel(got, want), 1e-5) << "csr_times_dense " << what;

        std::vector<float> want_dots(codes.nnz()), got_dots(codes.nnz(), 123.0f);
        ref::csr_row_dots(codes, W.data(), Q.data(), d, want_dots.data());
        csr_row_dots(codes, packed, Q.data(), got_dots.data());
        EXPECT_LT(max_rel(got_dots, want_dots), 1e-5) << "csr_row_dots " << what;

        // accumulate onto nonzero starting values, over two latent ranges as two threads would
        std::vector<float> G1(s.D * d), G2(s.D * d), sums(s.D);
        for (float& v : G1) v = static_cast<float>(rng.normal());
        for (float& v : G2) v = static_cast<float>(rng.normal());
        for (float& v : sums) v = static_cast<float>(rng.normal());
        std::vector<float> G1w = G1, G2w = G2, sumsw = sums;
        ChunkedRows Qp, Q2p;
        pack_pair_operand(Q.data(), s.B, d, Qp);
        pack_pair_operand(Q2.data(), s.B, d, Q2p);
        PairScratch scratch0, scratch1;
        const int64_t mid = s.D / 3;
        ref::csc_accumulate_pair(csc, s.B, codes.vals.data(), Q.data(), G1w.data(), b_vals.data(), Q2.data(),
                                 G2w.data(), sumsw.data(), d, 0, s.D);
        csc_accumulate_pair(csc, codes.vals.data(), Qp, G1.data(), b_vals.data(), Q2p, G2.data(), sums.data(), 0,
                            mid, scratch0);
        csc_accumulate_pair(csc, codes.vals.data(), Qp, G1.data(), b_vals.data(), Q2p, G2.data(), sums.data(), mid,
                            s.D, scratch1);
        EXPECT_LT(max_rel(G1, G1w), 1e-5) << "csc_accumulate_pair G1 " << what;
        EXPECT_LT(max_rel(G2, G2w), 1e-5) << "csc_accumulate_pair G2 " << what;
        EXPECT_LT(max_rel(sums, sumsw), 1e-5) << "csc_accumulate_pair sums " << what;
      }
    }
  }
}

TEST(Kernels, AdamAndDecoderConstraintMatchReference) {
  Rng rng(2);
  for (int64_t D : {1, 3, 64}) {
    for (int64_t d : {1, 5, 32, 100}) {
      for (float scale : {1.0f, 0.25f}) {
        std::vector<float> w(D * d), g(D * d), m(D * d), v(D * d);
        for (float& x : w) x = static_cast<float>(rng.normal());
        for (float& x : g) x = static_cast<float>(rng.normal());
        for (float& x : m) x = 0.1f * static_cast<float>(rng.normal());
        for (float& x : v) x = 0.1f * static_cast<float>(rng.uniform());
        AdamHyper h;
        for (int64_t t : {1, 7}) {
          std::vector<float> w1 = w, m1 = m, v1 = v, w2 = w, m2 = m, v2 = v;
          ref::decoder_constraint_adam(w1.data(), g.data(), m1.data(), v1.data(), D, d, h, t, scale);
          decoder_constraint_adam(w2.data(), g.data(), m2.data(), v2.data(), D, d, h, t, scale);
          EXPECT_LT(max_rel(w2, w1), 1e-6);
          EXPECT_LT(max_rel(m2, m1), 1e-5);
          EXPECT_LT(max_rel(v2, v1), 1e-5);
          std::vector<float> p3 = w, m3 = m, v3 = v, p4 = w, m4 = m, v4 = v, gs = g;
          for (float& x : gs) x *= scale;
          ref::adam_update(p3.data(), gs.data(), m3.data(), v3.data(), D * d, h, t);
          adam_update(p4.data(), g.data(), m4.data(), v4.data(), D * d, h, t, scale);
          EXPECT_EQ(p4, p3);  // elementwise: same float operations
          EXPECT_EQ(m4, m3);
          EXPECT_EQ(v4, v3);
        }
      }
    }
  }
  std::vector<float> big(100003);
  double want = 0;
  for (size_t i = 0; i < big.size(); ++i) {
    big[i] = static_cast<float>(rng.normal());
    want += static_cast<double>(big[i]) * big[i];
  }
  EXPECT_NEAR(sum_squares(big.data(), static_cast<int64_t>(big.size())), want, 1e-6 * want);
}

// The pool: many tiny regions, nested regions, odd thread counts.
TEST(Kernels, ThreadPoolRegions) {
  for (int threads : {1, 2, 3, 0}) {
    set_num_threads(threads);
    for (int rep = 0; rep < 2000; ++rep) {
      std::vector<int> hit(num_threads(), 0);
      parallel([&](int tid, int nt) {
        ASSERT_LT(tid, nt);
        hit[tid] += 1;
        int inner = 0;
        parallel([&](int, int) { ++inner; });  // nested: serial on this thread
        EXPECT_EQ(inner, nt > 0 ? inner : 0);
      });
      for (int h : hit) ASSERT_EQ(h, 1);
    }
    int64_t sum = 0;
    std::vector<int64_t> part(64, 0);
    parallel_for(1000, [&](int64_t lo, int64_t hi, int tid) {
      for (int64_t i = lo; i < hi; ++i) part[tid] += i;
    });
    for (int64_t p : part) sum += p;
    EXPECT_EQ(sum, 999 * 1000 / 2);
  }
  set_num_threads(0);
}

}  // namespace
}  // namespace msae::kernels

// ---- Screened BatchTopK (kernels::Screener): the selection equals the oracle's (every pre-activation by
// exact_dot, then batch_topk) bit for bit, on cases built to break a loose or wrong bound.
namespace {

struct ScreenCase {
  const char* name;
  int64_t B, d, D, keep;
  // 0 random, 1 outliers in x, 2 columns of very different norms, 3 ties at the cut, 4 bias, 5 few positive,
  // 6 the sampled rows (every B/64-th) scaled down (the guessed threshold lets through too many), 7 scaled up
  // (too few pass it), 8 a huge coordinate of x that no encoder row reads (the int8 bound is too loose)
  int kind;
  int path = -1;  // ScreenStats::path the case must take (-1: any)
};

void fill_screen_case(const ScreenCase& c, std::vector<float>& x, std::vector<float>& W, std::vector<float>& b,
                      uint64_t seed) {
  msae::Rng rng(seed);
  x.resize(static_cast<size_t>(c.B * c.d));
  W.resize(static_cast<size_t>(c.D * c.d));
  b.assign(static_cast<size_t>(c.D), 0.0f);
  for (float& v : x) v = static_cast<float>(rng.normal());
  for (float& v : W) v = static_cast<float>(rng.normal()) / std::sqrt(static_cast<float>(c.d));
  if (c.kind == 1)  // one huge coordinate per row: the per-row int8 scale crushes the others to 0
    for (int64_t r = 0; r < c.B; ++r) x[r * c.d + r % c.d] = 300.0f * (r % 2 ? 1.0f : -1.0f);
  if (c.kind == 2)  // column norms over 6 decades
    for (int64_t i = 0; i < c.D; ++i)
      for (int64_t k = 0; k < c.d; ++k) W[i * c.d + k] *= std::pow(10.0f, static_cast<float>(i % 7) - 3.0f);
  if (c.kind == 3) {  // duplicated columns and rows: many exactly equal values at the cut
    for (int64_t i = 1; i < c.D; i += 2) std::copy_n(&W[(i - 1) * c.d], c.d, &W[i * c.d]);
    for (int64_t r = 1; r < c.B; r += 3) std::copy_n(&x[(r - 1) * c.d], c.d, &x[r * c.d]);
  }
  if (c.kind == 4)
    for (float& v : b) v = static_cast<float>(rng.normal()) * 0.5f;
  if (c.kind == 5)  // almost everything negative: fewer positive entries than keep
    for (float& v : b) v = -20.0f;
  if (c.kind == 6 || c.kind == 7)
    for (int64_t r = 0; r < c.B; r += std::max<int64_t>(1, c.B / 64))
      for (int64_t k = 0; k < c.d; ++k) x[r * c.d + k] *= c.kind == 6 ? 1e-3f : 1e3f;
  if (c.kind == 8) {  // x^ keeps only the huge coordinate, which no latent reads: every lower bound < 0
    for (int64_t r = 0; r < c.B; ++r) x[r * c.d] = 1e4f;
    for (int64_t i = 0; i < c.D; ++i) W[i * c.d] = 0.0f;
  }
}

}  // namespace

TEST(Kernels, ScreenedBatchTopKEqualsExactSelection) {
  const ScreenCase cases[] = {{"random", 64, 96, 512, 64 * 8, 0},   {"outliers in x", 64, 96, 512, 64 * 8, 1},
                              {"column norms", 64, 96, 512, 64 * 8, 2}, {"ties at the cut", 60, 64, 256, 60 * 5, 3},
                              {"encoder bias", 48, 80, 300, 48 * 6, 4}, {"few positive", 32, 64, 256, 32 * 4, 5},
                              {"keep everything", 8, 16, 32, 8 * 32, 0}, {"wide d", 32, 1200, 256, 32 * 4, 0},
                              // B >= 128: the threshold is first guessed on 64 rows
                              {"sampled threshold", 256, 64, 512, 256 * 8, 0, 0},
                              {"sampled threshold, bias", 192, 40, 300, 192 * 6, 4, 0},
                              {"sample too low", 256, 64, 512, 256 * 8, 6, 1},
                              {"sample too high", 256, 64, 512, 256 * 8, 7, 1},
                              {"int8 too loose", 64, 48, 256, 64 * 4, 8, 4},
                              {"int8 too loose, sampled", 256, 48, 256, 256 * 4, 8, 3},
                              {"few positive, sampled", 256, 64, 256, 256 * 4, 5, 5}};
  for (int levels : {127, 63}) {  // 8-bit weights where the GEMM allows them, and 7-bit on every host
    msae::kernels::Screener screener;
    screener.set_max_weight_levels(levels);
    std::set<int> paths;
    for (const ScreenCase& c : cases) {
      for (uint64_t seed : {1u, 2u}) {
        std::vector<float> x, W, b, work(static_cast<size_t>(c.B * c.D));
        fill_screen_case(c, x, W, b, seed);
        const bool bias = c.kind == 4 || c.kind == 5;
        msae::kernels::SparseCodes want, got;
        msae::kernels::ref::screened_batch_topk(x.data(), c.B, c.d, W.data(), bias ? b.data() : nullptr, c.D, c.keep, want);
        const float cut = screener.batch_topk(x.data(), c.B, c.d, W.data(), bias ? b.data() : nullptr, c.D, c.keep,
                                              work.data(), got);
        EXPECT_EQ(got.row_ptr, want.row_ptr) << c.name << " levels " << levels;
        EXPECT_EQ(got.ids, want.ids) << c.name << " levels " << levels;
        ASSERT_EQ(got.vals.size(), want.vals.size()) << c.name << " levels " << levels;
        for (size_t e = 0; e < got.vals.size(); ++e) ASSERT_EQ(got.vals[e], want.vals[e]) << c.name << " levels " << levels << " entry " << e;
        if (!want.vals.empty()) {
          EXPECT_EQ(cut, *std::min_element(want.vals.begin(), want.vals.end())) << c.name << " levels " << levels;
        }
        EXPECT_GE(screener.stats().candidates, static_cast<int64_t>(want.vals.size())) << c.name << " levels " << levels;
        EXPECT_GE(screener.stats().exact, static_cast<int64_t>(want.vals.size())) << c.name << " levels " << levels;
        EXPECT_LE(screener.stats().exact, screener.stats().candidates) << c.name << " levels " << levels;
        if (c.path >= 0) {
          EXPECT_EQ(screener.stats().path, c.path) << c.name << " levels " << levels << " seed " << seed;
        }
        paths.insert(screener.stats().path);
      }
    }
    EXPECT_EQ(paths, (std::set<int>{0, 1, 3, 4, 5})) << levels;  // every way to the candidates was taken
  }
}

// A case where the bound is tight and the selection depends on all of it: a test that a smaller bound (a
// wrong factor, a missing term) fails. Latent 0 reads only x's first half, where the even rows hold only
// quantization residuals (below half a step, so x^ is 0 there) laid along latent 0's encoder row: its
// int8 approximation is 0 while its exact value V (about the same in every even row) equals the bound's
// |dx| |w| term. 48 "runner-up" latents, each parallel to the second half of one odd row (whose first
// half is 0, so their values are known to 1.5%), take values 0.90 V to 0.95 V. With keep = 48 the
// selection is the 32 even rows' latent-0 entries and the 16 best runner-ups, and the proven cut L is
// about 0.89 V: latent 0's entries stay candidates only because approx + bound = V >= L.
TEST(Kernels, ScreenedSelectionNeedsTheWholeBound) {
  const int64_t B = 64, d = 64, h = 32, D = 49, keep = 48;
  msae::Rng rng(3);
  std::vector<float> x(B * d, 0.0f), W(D * d, 0.0f);
  std::vector<int> qt(h);
  // Entries 0 and +-63/64 lie on latent 0's grid at 7 bits (step 1/64) and at 8 bits (step 63/64/127).
  for (int64_t k = 0; k < h; ++k) qt[k] = k == 0 ? 63 : 63 * (static_cast<int>(rng.below(3)) - 1);
  for (int64_t k = 0; k < h; ++k) W[k] = static_cast<float>(qt[k]) / 64.0f;
  double sq = 0;
  for (int q : qt) sq += q * q;
  const double V = 0.49 / 128.0 * sq / (63.0 * 64.0);  // latent 0's exact value at rho = 1
  for (int64_t r = 0; r < B; ++r) {
    float* xr = &x[r * d];
    xr[h] = 127.0f / 128.0f;  // the row's largest coordinate: x's scale is exactly 2^-7
    for (int64_t k = h + 1; k < d; ++k) xr[k] = static_cast<float>(static_cast<int>(rng.below(255)) - 127) / 128.0f;
    if (r % 2 == 0) {
      const double rho = 0.97 + 0.03 * rng.uniform();
      for (int64_t k = 0; k < h; ++k) xr[k] = static_cast<float>(0.49 / 128.0 * qt[k] / 63.0 * rho);
    }
  }
  for (int64_t j = 1; j < D; ++j) {
    const float* xr = &x[(2 * ((j - 1) % 32) + 1) * d];  // an odd row
    double n2 = 0;
    for (int64_t k = h; k < d; ++k) n2 += static_cast<double>(xr[k]) * xr[k];
    const double alpha = V * (0.90 + 0.05 * rng.uniform()) / n2;
    for (int64_t k = h; k < d; ++k) W[j * d + k] = static_cast<float>(alpha * xr[k]);
  }
  msae::kernels::SparseCodes want, got;
  msae::kernels::ref::screened_batch_topk(x.data(), B, d, W.data(), nullptr, D, keep, want);
  int64_t latent0 = 0;
  for (int32_t id : want.ids) latent0 += id == 0;
  ASSERT_EQ(latent0, 32);  // the case is what it claims: every even row's latent 0 is selected
  std::vector<float> work(B * D);
  for (int levels : {127, 63}) {  // 8-bit weights where the GEMM allows them, and 7-bit
    msae::kernels::Screener screener;
    screener.set_max_weight_levels(levels);
    screener.batch_topk(x.data(), B, d, W.data(), nullptr, D, keep, work.data(), got);
    EXPECT_EQ(screener.stats().path, 1) << levels;  // the int8 path (B < 128: no sampled threshold)
    EXPECT_EQ(got.row_ptr, want.row_ptr) << levels;
    EXPECT_EQ(got.ids, want.ids) << levels;
    EXPECT_EQ(got.vals, want.vals) << levels;
  }
}

// The weight grid follows the int8 GEMM: 8 bits where oneDNN runs VNNI (int32 sums), 7 bits where its
// vpmaddubsw would saturate pairs of 8-bit products (the probe of each new primitive finds which), and 7
// bits when capped. ctest runs this also under DNNL_MAX_CPU_ISA=AVX2 (test_screen_avx2), which takes VNNI
// away on any host: there the probe must see the saturation.
TEST(Kernels, ScreenWeightBitsFollowTheGemm) {
  const ScreenCase c{"random", 256, 64, 512, 256 * 8, 0};
  std::vector<float> x, W, b, work(static_cast<size_t>(c.B * c.D));
  fill_screen_case(c, x, W, b, 5);
  msae::kernels::SparseCodes want, got;
  msae::kernels::ref::screened_batch_topk(x.data(), c.B, c.d, W.data(), nullptr, c.D, c.keep, want);
  msae::kernels::Screener screener;
  EXPECT_EQ(screener.weight_levels(), 0);
  EXPECT_NE(screener.kernel().find("not yet run"), std::string::npos) << screener.kernel();
  const bool vnni = msae::kernels::int8_gemm_vnni();
  const char* cap = std::getenv("DNNL_MAX_CPU_ISA");
  if (cap != nullptr && std::string(cap) == "AVX2") {
    EXPECT_FALSE(vnni);
  }
  screener.batch_topk(x.data(), c.B, c.d, W.data(), nullptr, c.D, c.keep, work.data(), got);
  EXPECT_EQ(screener.weight_levels(), vnni ? 127 : 63) << screener.kernel();
  EXPECT_NE(screener.kernel().find(vnni ? ", 8-bit weights)" : ", 7-bit weights)"), std::string::npos)
      << screener.kernel();
  EXPECT_EQ(got.ids, want.ids);
  EXPECT_EQ(got.vals, want.vals);
  const int64_t candidates8 = screener.stats().candidates;
  screener.set_max_weight_levels(63);
  screener.batch_topk(x.data(), c.B, c.d, W.data(), nullptr, c.D, c.keep, work.data(), got);
  EXPECT_EQ(screener.weight_levels(), 63);
  EXPECT_EQ(got.ids, want.ids);
  EXPECT_EQ(got.vals, want.vals);
  if (vnni) {
    EXPECT_LT(candidates8, screener.stats().candidates);  // the finer grid's tighter bound
  }
}

// kernels::exact_dot (AVX2 code where built for it) sums in the order ref::exact_dot spells out, bit for
// bit, and is within one float rounding (plus the double sums' own error) of the true value.
TEST(Kernels, ExactDotEqualsReferenceOrder) {
  msae::Rng rng(5);
  int compared = 0;
  for (int64_t d : {1, 2, 3, 4, 5, 7, 8, 12, 15, 16, 17, 20, 31, 32, 33, 47, 48, 63, 64, 100, 767, 768, 769, 1200, 2304}) {
    for (int rep = 0; rep < 12; ++rep) {
      std::vector<float> x(static_cast<size_t>(d)), w(static_cast<size_t>(d));
      const float sx = rep % 4 == 0 ? 1e-20f : rep % 4 == 1 ? 1e20f : 1.0f, sw = rep % 3 == 0 ? 1e-3f : 1.0f;
      for (float& v : x) v = static_cast<float>(rng.normal()) * sx;
      for (float& v : w) v = static_cast<float>(rng.normal()) * sw;
      if (rep % 5 == 4)  // cancellation: the second half undoes the first
        for (int64_t k = d / 2; k < d; ++k) x[k] = -x[k - d / 2], w[k] = w[k - d / 2];
      const float b = rep % 2 ? static_cast<float>(rng.normal()) * sx * sw : 0.0f;
      const float got = msae::kernels::exact_dot(x.data(), w.data(), d, b);
      const float want = msae::kernels::ref::exact_dot(x.data(), w.data(), d, b);
      ASSERT_EQ(std::memcmp(&got, &want, 4), 0) << "d " << d << " rep " << rep << ": " << got << " vs " << want;
      __float128 exact = b;
      double mag = std::fabs(static_cast<double>(b));
      for (int64_t k = 0; k < d; ++k) {
        const double p = static_cast<double>(x[k]) * w[k];  // exact
        exact += p;
        mag += std::fabs(p);
      }
      const double err = std::fabs(static_cast<double>(static_cast<__float128>(got) - exact));
      const double ulp = std::fabs(static_cast<double>(std::nextafter(got, INFINITY)) - got);
      EXPECT_LE(err, 0.5 * ulp + static_cast<double>(d + 4) * std::ldexp(mag, -53)) << "d " << d << " rep " << rep;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 25 * 12);
}

// The bound itself: |exact - int8 approximation| <= the bound on every entry, for the adversarial inputs.
TEST(Kernels, ScreenBoundHoldsEverywhere) {
  // Re-derived here independently of screen.cpp: quantize per row, dot in int64, compare.
  const ScreenCase cases[] = {{"random", 32, 96, 128, 0, 0}, {"outliers", 32, 96, 128, 0, 1}, {"norms", 32, 96, 128, 0, 2}};
  for (const ScreenCase& c : cases) {
    std::vector<float> x, W, b;
    fill_screen_case(c, x, W, b, 7);
    auto quant = [&](const float* a, int64_t d, std::vector<int>& q, double& s, double& nh, double& nr, double& na) {
      float m = 0;
      for (int64_t k = 0; k < d; ++k) m = std::max(m, std::fabs(a[k]));
      s = m / 127.0;
      q.resize(static_cast<size_t>(d));
      nh = nr = na = 0;
      for (int64_t k = 0; k < d; ++k) {
        q[k] = m > 0 ? static_cast<int>(std::nearbyint(a[k] * (127.0f / m))) : 0;
        const double hat = static_cast<float>(s) * q[k];
        nh += hat * hat, nr += (a[k] - hat) * (a[k] - hat), na += static_cast<double>(a[k]) * a[k];
      }
      nh = std::sqrt(nh), nr = std::sqrt(nr), na = std::sqrt(na);
    };
    double worst = 0;
    for (int64_t r = 0; r < c.B; ++r) {
      std::vector<int> qx, qw;
      double sx, xh, xr, xa;
      quant(&x[r * c.d], c.d, qx, sx, xh, xr, xa);
      for (int64_t i = 0; i < c.D; ++i) {
        double sw, wh, wr, wa;
        quant(&W[i * c.d], c.d, qw, sw, wh, wr, wa);
        int64_t dot = 0;
        for (int64_t k = 0; k < c.d; ++k) dot += static_cast<int64_t>(qx[k]) * qw[k];
        const double approx = static_cast<double>(static_cast<float>(sx)) * static_cast<float>(sw) * dot;
        const double exact = msae::kernels::exact_dot(&x[r * c.d], &W[i * c.d], c.d, 0.0f);
        const double bound = xh * wr + xr * wa;
        EXPECT_LE(std::fabs(exact - approx), bound * (1 + 1e-6) + 1e-6 * xa * wa) << c.name << " r " << r << " i " << i;
        worst = std::max(worst, std::fabs(exact - approx) / bound);
      }
    }
    EXPECT_GT(worst, 0.0) << c.name;  // the check compared something
  }
}
