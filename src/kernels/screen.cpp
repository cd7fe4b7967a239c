// Screened BatchTopK (msae/kernels.h; docs/performance.md, "Screened selection"): an int8 GEMM with a
// proven error bound narrows the batch's pre-activations to a few candidates, which alone are computed
// exactly. The selection equals batch_topk over every exact pre-activation (kernels_ref.h's oracle).
//
// The bound. With x^ = s_x q_x (q_x = round(x / s_x), s_x = max|x| / 127) and dx = x - x^, likewise w^, dw
// (w in 7 bits, s_w = max|w| / 63: see batch_topk):
//   x.w = x^.w^ + x^.dw + dx.w,  so  |x.w - x^.w^| <= |x^| |dw| + |dx| |w|      (Cauchy-Schwarz, twice)
// x^.w^ = s_x s_w (q_x . q_w) with the integer dot exact in int32 (d * 127^2 < 2^31 for d < 133,000). The
// norms are computed in double from the exact residuals. Float rounding (the approximation's products,
// exact_dot's final rounding, the lower bound's own arithmetic) is covered by a margin of
// 2^-16 (|x| + |dx|)(|w| + |dw|) + 2^-16 |b|, far above those few ulps.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <dnnl.hpp>
#include <omp.h>

#include "msae/kernels.h"

namespace msae::kernels {

// Eight products at a time in two vectors of four doubles (GCC's vector extensions: packed AVX2 code under
// -march=native, plain SSE2 or scalar code otherwise, the same sums either way: the order is fixed here).
float exact_dot(const float* x, const float* w, int64_t d, float b) {
  typedef double d4 __attribute__((vector_size(32)));
  typedef float f4 __attribute__((vector_size(16)));
  d4 s0 = {0, 0, 0, 0}, s1 = {0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= d; k += 8) {
    f4 xa, xb, wa, wb;
    std::memcpy(&xa, x + k, 16);
    std::memcpy(&xb, x + k + 4, 16);
    std::memcpy(&wa, w + k, 16);
    std::memcpy(&wb, w + k + 4, 16);
    s0 += __builtin_convertvector(xa, d4) * __builtin_convertvector(wa, d4);
    s1 += __builtin_convertvector(xb, d4) * __builtin_convertvector(wb, d4);
  }
  double t = 0;
  for (; k < d; ++k) t += static_cast<double>(x[k]) * w[k];
  const d4 s = s0 + s1;
  return static_cast<float>((((s[0] + s[1]) + (s[2] + s[3])) + t) + static_cast<double>(b));
}

namespace {

constexpr double kMargin = 1.0 / 65536;

// Per-row quantization of a (n, d) matrix to integers in [-levels, levels]: q, scale, |x^|, |dx|, |x|.
void quantize_rows(const float* a, int64_t n, int64_t d, float levels, int8_t* q, float* scale, float* n_hat,
                   float* n_res, float* n_all) {
  parallel_for(n, [&](int64_t lo, int64_t hi, int) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* ar = a + r * d;
      float m = 0;
      for (int64_t k = 0; k < d; ++k) m = std::max(m, std::fabs(ar[k]));
      const float s = m > 0 ? m / levels : 0.0f;
      const float inv = m > 0 ? levels / m : 0.0f;
      double h2 = 0, r2 = 0, a2 = 0;
      for (int64_t k = 0; k < d; ++k) {
        const float v = std::nearbyint(ar[k] * inv);
        const float c = std::clamp(v, -levels, levels);
        q[r * d + k] = static_cast<int8_t>(c);
        const double hat = static_cast<double>(s) * c;
        h2 += hat * hat;
        r2 += (ar[k] - hat) * (ar[k] - hat);
        a2 += static_cast<double>(ar[k]) * ar[k];
      }
      scale[r] = s;
      // Rounded up so that the bound stays a bound.
      n_hat[r] = static_cast<float>(std::sqrt(h2) * (1 + 1e-6));
      n_res[r] = static_cast<float>(std::sqrt(r2) * (1 + 1e-6));
      n_all[r] = static_cast<float>(std::sqrt(a2) * (1 + 1e-6));
    }
  }, 16);
}

}  // namespace

// oneDNN runs on OpenMP, whose idle threads spin: next to msae's pool that slowed a step 3x on two cores
// (docs/performance.md, "Threads"). So the int8 GEMM is split over msae's pool like kernels::sgemm: each
// thread runs one single-threaded oneDNN matmul on its block of rows.
struct Screener::Impl {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  std::vector<dnnl::stream> streams;       // one per thread
  std::vector<std::pair<int64_t, std::unique_ptr<dnnl::matmul>>> mms;  // by block rows
  int64_t B = 0, d = 0, D = 0;
  std::string impl_name;
  std::vector<int8_t> qx, qw;
  std::vector<float> sx, xh, xr, xa, sw, wh, wr, wa;
  std::vector<int32_t> acc;  // (B, D)
  std::vector<std::vector<int64_t>> cand;  // per thread: flat indices
  std::vector<std::pair<float, int64_t>> vals;
  SelectScratch sel;
  SparseCodes tmp;
  std::vector<int64_t> offset, fill;
  std::vector<std::vector<uint8_t>> flags;  // per thread: one row's candidate flags
  std::vector<float> fa, fc, fe, fp, fq, fs, ft;  // the bound's factors (collect)

  dnnl::matmul& matmul_for(int64_t rows) {
    for (auto& [r, m] : mms)
      if (r == rows) return *m;
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    const dnnl::memory::desc a({rows, d}, dt::s8, tag::ab), w({d, D}, dt::s8, tag::ba), c({rows, D}, dt::s32, tag::ab);
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, w, c), eng);
    impl_name = pd.impl_info_str();
    mms.emplace_back(rows, std::make_unique<dnnl::matmul>(pd));
    return *mms.back().second;
  }

  void prepare(int64_t B_, int64_t d_, int64_t D_) {
    if (B_ == B && d_ == d && D_ == D) return;
    B = B_, d = d_, D = D_;
    mms.clear();
    qx.resize(static_cast<size_t>(B * d));
    qw.resize(static_cast<size_t>(D * d));
    acc.resize(static_cast<size_t>(B * D));
    for (auto* v : {&sx, &xh, &xr, &xa}) v->resize(static_cast<size_t>(B));
    for (auto* v : {&sw, &wh, &wr, &wa}) v->resize(static_cast<size_t>(D));
  }

  // acc = qx @ qw^T, the rows split over msae's pool.
  void gemm() {
    const int nt = static_cast<int>(std::min<int64_t>(num_threads(), std::max<int64_t>(1, B / 64)));
    while (static_cast<int>(streams.size()) < nt) streams.emplace_back(eng);
    // Create the primitives on this thread (creation is not timed per step after the first).
    for (int t = 0; t < nt; ++t) matmul_for(B * (t + 1) / nt - B * t / nt);
    parallel(
        [&](int t, int n) {
          const int64_t lo = B * t / n, hi = B * (t + 1) / n;
          if (lo >= hi) return;
          omp_set_num_threads(1);
          using dt = dnnl::memory::data_type;
          using tag = dnnl::memory::format_tag;
          dnnl::matmul* mm = nullptr;
          for (auto& [r, m] : mms)
            if (r == hi - lo) mm = m.get();
          dnnl::memory am({{hi - lo, d}, dt::s8, tag::ab}, eng, qx.data() + lo * d),
              wm({{d, D}, dt::s8, tag::ba}, eng, qw.data()), cm({{hi - lo, D}, dt::s32, tag::ab}, eng, acc.data() + lo * D);
          mm->execute(streams[t], {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, cm}});
          streams[t].wait();
        },
        nt);
  }
};

Screener::Screener() : impl_(std::make_unique<Impl>()) {}
Screener::~Screener() = default;

std::string Screener::kernel() const {
  const dnnl_version_t* v = dnnl_version();
  return cat("oneDNN ", v->major, ".", v->minor, ".", v->patch, " int8 matmul (", impl_->impl_name.empty() ? "not yet run" : impl_->impl_name, ")");
}

float Screener::batch_topk(const float* x, int64_t B, int64_t d, const float* W, const float* b, int64_t D,
                           int64_t keep, float* work, SparseCodes& out) {
  Impl& m = *impl_;
  stats_ = ScreenStats{};
  stats_.keep = keep;
  Timer t;
  keep = std::min(keep, B * D);
  m.prepare(B, d, D);
  // W in 7 bits: without VNNI, oneDNN's int8 GEMM adds pairs of u8 x s8 products in int16
  // (vpmaddubsw), which saturates unless |w| <= 63 (x, shifted to u8 by oneDNN, keeps 8 bits).
  quantize_rows(x, B, d, 127.0f, m.qx.data(), m.sx.data(), m.xh.data(), m.xr.data(), m.xa.data());
  quantize_rows(W, D, d, 63.0f, m.qw.data(), m.sw.data(), m.wh.data(), m.wr.data(), m.wa.data());
  stats_.seconds_quantize = t.seconds();
  t.reset();
  m.gemm();
  stats_.seconds_gemm = t.seconds();
  t.reset();

  // Lower bounds into work; the cut L of the lower bounds.
  auto bound = [&](int64_t r, int64_t i) {
    const float bi = b ? std::fabs(b[i]) : 0.0f;
    return m.xh[r] * m.wr[i] + m.xr[r] * m.wa[i] +
           static_cast<float>(kMargin) * ((m.xa[r] + m.xr[r]) * (m.wa[i] + m.wr[i]) + bi);
  };
  bool fp32 = false;
  auto fill_int8 = [&] {
    parallel_for(B, [&](int64_t lo, int64_t hi, int) {
      for (int64_t r = lo; r < hi; ++r) {
        const int32_t* a = m.acc.data() + r * D;
        float* o = work + r * D;
        const float s = m.sx[r];
        for (int64_t i = 0; i < D; ++i)
          o[i] = s * m.sw[i] * static_cast<float>(a[i]) + (b ? b[i] : 0.0f) - bound(r, i);
      }
    }, 8);
  };
  fill_int8();
  SelectScratch& sel = m.sel;
  SparseCodes& tmp = m.tmp;
  float L = kernels::batch_topk(work, B, D, keep, tmp, sel, 0.0f);
  bool usable = tmp.nnz() == keep && L > 0;
  stats_.seconds_bound = t.seconds();
  t.reset();
  // Candidates: upper bound >= L.
  const int nt = num_threads();
  m.cand.resize(static_cast<size_t>(nt));
  m.flags.resize(static_cast<size_t>(nt));
  // Candidates: lower bound + gap >= L, gap(r, i) = a_r p_i + c_r q_i + e_r s_i + t_i (twice the bound), one
  // vectorized pass per row into flags, then the rare set flags read 8 at a time.
  auto collect = [&](const float* a, const float* c, const float* e, const float* p, const float* q, const float* sv,
                     const float* tv) {
    for (auto& cd : m.cand) cd.clear();
    parallel_for(B, [&](int64_t lo, int64_t hi, int tid) {
      auto& cd = m.cand[tid];
      std::vector<uint8_t>& flag = m.flags[tid];
      flag.resize(static_cast<size_t>((D + 7) / 8 * 8));
      for (int64_t r = lo; r < hi; ++r) {
        const float* o = work + r * D;
        const float ar = a[r], cr = c[r], er = e[r];
        uint8_t* f = flag.data();
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) f[i] = o[i] + (ar * p[i] + cr * q[i] + er * sv[i] + tv[i]) >= L;
        for (int64_t i = D; i < static_cast<int64_t>(flag.size()); ++i) f[i] = 0;
        for (int64_t i0 = 0; i0 < D; i0 += 8) {
          uint64_t word;
          std::memcpy(&word, f + i0, 8);
          if (!word) continue;
          for (int64_t i = i0; i < std::min<int64_t>(i0 + 8, D); ++i)
            if (f[i]) cd.push_back(r * D + i);
        }
      }
    }, 8);
    int64_t n = 0;
    for (auto& cd : m.cand) n += static_cast<int64_t>(cd.size());
    return n;
  };
  // The per-row and per-latent factors of the two bounds.
  const float M = static_cast<float>(kMargin);
  m.fa.resize(static_cast<size_t>(B)), m.fc.resize(static_cast<size_t>(B)), m.fe.resize(static_cast<size_t>(B));
  m.fp.resize(static_cast<size_t>(D)), m.fq.resize(static_cast<size_t>(D)), m.fs.resize(static_cast<size_t>(D)),
      m.ft.resize(static_cast<size_t>(D));
  for (int64_t r = 0; r < B; ++r) m.fa[r] = 2 * m.xh[r], m.fc[r] = 2 * m.xr[r], m.fe[r] = 2 * M * (m.xa[r] + m.xr[r]);
  for (int64_t i = 0; i < D; ++i)
    m.fp[i] = m.wr[i], m.fq[i] = m.wa[i], m.fs[i] = m.wa[i] + m.wr[i], m.ft[i] = 2 * M * (b ? std::fabs(b[i]) : 0.0f);
  int64_t n_cand = 0;
  if (usable) {
    n_cand = collect(m.fa.data(), m.fc.data(), m.fe.data(), m.fp.data(), m.fq.data(), m.fs.data(), m.ft.data());
    usable = n_cand <= B * D / 4;
  }
  if (!usable) {
    // The fp32 GEMM as the approximation: |fl(x.w) - x.w| <= gamma_d |x| |w| (gamma_d = d u / (1 - d u)).
    fp32 = true;
    t.reset();
    kernels::sgemm(Trans::no, Trans::yes, B, D, d, 1.0f, x, d, W, d, 0.0f, work, D);
    const double u = std::ldexp(1.0, -24);
    const float gamma = static_cast<float>(2 * (d + 2) * u / (1 - (d + 2) * u));
    auto fbound = [&](int64_t r, int64_t i) {
      const float bi = b ? std::fabs(b[i]) : 0.0f;
      return gamma * (m.xa[r] * m.wa[i] + bi);
    };
    parallel_for(B, [&](int64_t lo, int64_t hi, int) {
      for (int64_t r = lo; r < hi; ++r)
        for (int64_t i = 0; i < D; ++i) work[r * D + i] += (b ? b[i] : 0.0f) - fbound(r, i);
    }, 8);
    L = kernels::batch_topk(work, B, D, keep, tmp, sel, 0.0f);
    if (tmp.nnz() < keep) L = std::numeric_limits<float>::min();  // fewer positive lower bounds than keep
    for (int64_t r = 0; r < B; ++r) m.fa[r] = 2 * gamma * m.xa[r], m.fc[r] = 0, m.fe[r] = 0;
    for (int64_t i = 0; i < D; ++i) m.fp[i] = m.wa[i], m.ft[i] = 2 * gamma * (b ? std::fabs(b[i]) : 0.0f);
    n_cand = collect(m.fa.data(), m.fc.data(), m.fe.data(), m.fp.data(), m.fq.data(), m.fs.data(), m.ft.data());
    stats_.seconds_gemm += t.seconds();
    t.reset();
  }
  stats_.fp32_fallback = fp32;
  stats_.candidates = n_cand;
  stats_.seconds_candidates = t.seconds();
  t.reset();

  // Exact values of the candidates, grouped by latent so that each encoder row is read once (the rows of
  // x, B * d floats, stay in cache); then the selection among them (value desc, flat index asc).
  m.vals.resize(static_cast<size_t>(n_cand));
  std::vector<int64_t>& offset = m.offset;
  offset.assign(static_cast<size_t>(D + 1), 0);
  for (const auto& cd : m.cand)
    for (int64_t f : cd) offset[f % D + 1] += 1;
  for (int64_t i = 0; i < D; ++i) offset[i + 1] += offset[i];
  m.fill.assign(offset.begin(), offset.end() - 1);
  for (const auto& cd : m.cand)  // thread blocks of rows in order: each latent's rows ascend
    for (int64_t f : cd) m.vals[m.fill[f % D]++].second = f;
  parallel_for(D, [&](int64_t lo, int64_t hi, int) {
    for (int64_t i = lo; i < hi; ++i) {
      const float* w = W + i * d;
      const float bi = b ? b[i] : 0.0f;
      for (int64_t e = offset[i]; e < offset[i + 1]; ++e)
        m.vals[e].first = exact_dot(x + (m.vals[e].second / D) * d, w, d, bi);
    }
  }, 64);
  auto first = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& c) {
    return a.first > c.first || (a.first == c.first && a.second < c.second);
  };
  int64_t positive = 0;
  for (const auto& v : m.vals) positive += v.first > 0;
  const int64_t n_keep = std::min(keep, positive);
  if (n_keep < static_cast<int64_t>(m.vals.size()))
    std::nth_element(m.vals.begin(), m.vals.begin() + n_keep, m.vals.end(), first);
  m.vals.resize(static_cast<size_t>(n_keep));
  std::sort(m.vals.begin(), m.vals.end(), [](const auto& a, const auto& c) { return a.second < c.second; });
  out.rows = B;
  out.cols = D;
  out.row_ptr.assign(static_cast<size_t>(B + 1), 0);
  out.ids.resize(static_cast<size_t>(n_keep));
  out.vals.resize(static_cast<size_t>(n_keep));
  float cut = 0;
  for (int64_t e = 0; e < n_keep; ++e) {
    const int64_t f = m.vals[e].second;
    out.row_ptr[f / D + 1] += 1;
    out.ids[e] = static_cast<int32_t>(f % D);
    out.vals[e] = m.vals[e].first;
    cut = e == 0 ? out.vals[e] : std::min(cut, out.vals[e]);
  }
  for (int64_t r = 0; r < B; ++r) out.row_ptr[r + 1] += out.row_ptr[r];
  stats_.seconds_select = t.seconds();
  return cut;
}

}  // namespace msae::kernels
