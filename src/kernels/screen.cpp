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

#include "msae/kernels.h"

namespace msae::kernels {

float exact_dot(const float* x, const float* w, int64_t d, float b) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t k = 0;
  for (; k + 4 <= d; k += 4) {
    s0 += static_cast<double>(x[k]) * w[k];
    s1 += static_cast<double>(x[k + 1]) * w[k + 1];
    s2 += static_cast<double>(x[k + 2]) * w[k + 2];
    s3 += static_cast<double>(x[k + 3]) * w[k + 3];
  }
  for (; k < d; ++k) s0 += static_cast<double>(x[k]) * w[k];
  return static_cast<float>(((s0 + s1) + (s2 + s3)) + static_cast<double>(b));
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

struct Screener::Impl {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  int64_t B = 0, d = 0, D = 0;
  std::unique_ptr<dnnl::matmul> mm;
  std::string impl_name;
  std::vector<int8_t> qx, qw;
  std::vector<float> sx, xh, xr, xa, sw, wh, wr, wa;
  std::vector<int32_t> acc;  // (B, D)
  std::vector<std::vector<int64_t>> cand;  // per thread: flat indices
  std::vector<std::pair<float, int64_t>> vals;
  SelectScratch sel;
  SparseCodes tmp;
  std::vector<int64_t> offset;

  void prepare(int64_t B_, int64_t d_, int64_t D_) {
    if (mm && B_ == B && d_ == d && D_ == D) return;
    B = B_, d = d_, D = D_;
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    const dnnl::memory::desc a({B, d}, dt::s8, tag::ab), w({d, D}, dt::s8, tag::ba), c({B, D}, dt::s32, tag::ab);
    const dnnl::matmul::desc md(a, w, c);
    const dnnl::matmul::primitive_desc pd(md, eng);
    impl_name = pd.impl_info_str();
    mm = std::make_unique<dnnl::matmul>(pd);
    qx.resize(static_cast<size_t>(B * d));
    qw.resize(static_cast<size_t>(D * d));
    acc.resize(static_cast<size_t>(B * D));
    for (auto* v : {&sx, &xh, &xr, &xa}) v->resize(static_cast<size_t>(B));
    for (auto* v : {&sw, &wh, &wr, &wa}) v->resize(static_cast<size_t>(D));
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
  {
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    dnnl::memory am({{B, d}, dt::s8, tag::ab}, m.eng, m.qx.data()), wm({{d, D}, dt::s8, tag::ba}, m.eng, m.qw.data()),
        cm({{B, D}, dt::s32, tag::ab}, m.eng, m.acc.data());
    m.mm->execute(m.strm, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, cm}});
    m.strm.wait();
  }
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
  auto collect = [&](auto&& gap) {
    for (auto& c : m.cand) c.clear();
    parallel_for(B, [&](int64_t lo, int64_t hi, int tid) {
      auto& c = m.cand[tid];
      for (int64_t r = lo; r < hi; ++r) {
        const float* o = work + r * D;
        for (int64_t i = 0; i < D; ++i)
          if (o[i] + gap(r, i) >= L) c.push_back(r * D + i);
      }
    }, 8);
    int64_t n = 0;
    for (auto& c : m.cand) n += static_cast<int64_t>(c.size());
    return n;
  };
  int64_t n_cand = 0;
  if (usable) {
    n_cand = collect([&](int64_t r, int64_t i) { return 2.0f * bound(r, i); });
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
    n_cand = collect([&](int64_t r, int64_t i) { return 2.0f * fbound(r, i); });
    stats_.seconds_gemm += t.seconds();
    t.reset();
  }
  stats_.fp32_fallback = fp32;
  stats_.candidates = n_cand;
  stats_.seconds_candidates = t.seconds();
  t.reset();

  // Exact values of the candidates, then the selection among them (value desc, flat index asc).
  m.vals.resize(static_cast<size_t>(n_cand));
  std::vector<int64_t>& offset = m.offset;
  offset.assign(m.cand.size() + 1, 0);
  for (size_t q = 0; q < m.cand.size(); ++q) offset[q + 1] = offset[q] + static_cast<int64_t>(m.cand[q].size());
  parallel_for(static_cast<int64_t>(m.cand.size()), [&](int64_t lo, int64_t hi, int) {
    for (int64_t q = lo; q < hi; ++q)
      for (size_t e = 0; e < m.cand[q].size(); ++e) {
        const int64_t f = m.cand[q][e], r = f / D, i = f % D;
        m.vals[offset[q] + e] = {exact_dot(x + r * d, W + i * d, d, b ? b[i] : 0.0f), f};
      }
  }, 1);
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
