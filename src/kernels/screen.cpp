// Screened BatchTopK (msae/kernels.h; docs/performance.md, "Screened selection"): an int8 GEMM with a
// proven error bound narrows the batch's pre-activations to a few candidates, which alone are computed
// exactly. The selection equals batch_topk over every exact pre-activation (kernels_ref.h's oracle).
//
// The bound. With x^ = s_x q_x (q_x = round(x / s_x), s_x = max|x| / 127) and dx = x - x^, likewise w^, dw
// (s_w = max|w| / w_levels, 127 or 63: see Impl::w_levels):
//   x.w = x^.w^ + x^.dw + dx.w,  so  |x.w - x^.w^| <= |x^| |dw| + |dx| |w|      (Cauchy-Schwarz, twice)
// x^.w^ = s_x s_w (q_x . q_w) with the integer dot exact in int32 (d * 127^2 < 2^31 for d < 133,000). The
// norms are computed in double from the exact residuals. Float rounding (the approximation's products,
// exact_dot's final rounding, the lower bound's own arithmetic) is covered by a margin of
// 2^-16 (|x| + |dx|)(|w| + |dw|) + 2^-16 |b|, far above those few ulps.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <functional>
#include <limits>
#include <type_traits>
#include <unordered_map>

#include <dnnl.hpp>
#if defined(__AVX__)
#include <immintrin.h>
#endif
#include <omp.h>

#include "msae/kernels.h"

namespace msae::kernels {

namespace {

// Sixteen products at a time in four vectors of four doubles, so that the adds' latency does not bound
// the loop. The order is fixed here; each product of two floats is exact in double, so a fused
// multiply-add gives the same sum as a multiply and an add, and the AVX2 code (intrinsics: GCC's generic
// vectors split each conversion in two) and the portable code give the same result bit for bit.
// W = double: the encoder row already converted (exactly) to double, again the same result.
template <class W>
float exact_dot_t(const float* x, const W* w, int64_t d, float b) {
  int64_t k = 0;
  double s[4][4] = {};
#if defined(__AVX2__) && defined(__FMA__)
  auto load_w = [&](int64_t j) {
    if constexpr (std::is_same_v<W, double>)
      return _mm256_loadu_pd(w + j);
    else
      return _mm256_cvtps_pd(_mm_loadu_ps(w + j));
  };
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  for (; k + 16 <= d; k += 16) {
    a0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + k)), load_w(k), a0);
    a1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + k + 4)), load_w(k + 4), a1);
    a2 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + k + 8)), load_w(k + 8), a2);
    a3 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + k + 12)), load_w(k + 12), a3);
  }
  _mm256_storeu_pd(s[0], a0);
  _mm256_storeu_pd(s[1], a1);
  _mm256_storeu_pd(s[2], a2);
  _mm256_storeu_pd(s[3], a3);
#else
  for (; k + 16 <= d; k += 16)
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 4; ++l) s[j][l] += static_cast<double>(x[k + 4 * j + l]) * static_cast<double>(w[k + 4 * j + l]);
#endif
  for (int j = 0; k + 4 <= d; k += 4, ++j)
    for (int l = 0; l < 4; ++l) s[j][l] += static_cast<double>(x[k + l]) * static_cast<double>(w[k + l]);
  double t = 0;
  for (; k < d; ++k) t += static_cast<double>(x[k]) * static_cast<double>(w[k]);
  double u[4];
  for (int l = 0; l < 4; ++l) u[l] = (s[0][l] + s[1][l]) + (s[2][l] + s[3][l]);
  return static_cast<float>((((u[0] + u[1]) + (u[2] + u[3])) + t) + static_cast<double>(b));
}

}  // namespace

float exact_dot(const float* x, const float* w, int64_t d, float b) { return exact_dot_t(x, w, d, b); }

bool int8_gemm_vnni() {
  const unsigned isa = static_cast<unsigned>(dnnl_get_effective_cpu_isa());
  auto has = [isa](unsigned set) { return (isa & set) == set; };
  return has(dnnl_cpu_isa_avx512_core_vnni) || has(dnnl_cpu_isa_avx2_vnni);
}

bool screen_pays(int64_t B, int64_t D, int64_t d) {
#if defined(__AVX2__)
  if (int8_gemm_vnni()) return d >= 512 && B * D >= (int64_t{1} << 22);
  return d >= 768 && B * D >= (int64_t{1} << 24);
#else
  (void)B, (void)D, (void)d;
  return false;
#endif
}

namespace {

constexpr double kMargin = 1.0 / 65536;

// Per-row quantization of a (n, d) matrix to integers in [-levels, levels]: q, scale, |x^| (n_hat may be
// nullptr), |dx|, |x|.
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
      if (n_hat) n_hat[r] = static_cast<float>(std::sqrt(h2) * (1 + 1e-6));
      n_res[r] = static_cast<float>(std::sqrt(r2) * (1 + 1e-6));
      n_all[r] = static_cast<float>(std::sqrt(a2) * (1 + 1e-6));
    }
  }, 16);
}

}  // namespace

namespace {
// An entry that may be selected: its flat index and its proven lower and upper bounds.
struct Cand {
  int64_t flat;
  float lb, ub;
};
}  // namespace

// oneDNN runs on OpenMP, whose idle threads spin: next to msae's pool that slowed a step 3x on two cores
// (docs/performance.md, "Threads"). So the int8 GEMM is split over msae's pool like kernels::sgemm: each
// thread runs one single-threaded oneDNN matmul on its block of rows.
// Blocks of equal size share one primitive, so it runs on two threads at once: each thread passes its own
// scratchpad (scratchpad_mode::user). With the library's scratchpad the two executions shared one buffer:
// oneDNN's AVX-512 VNNI kernel (brg:avx512_core_vnni) packs the weights there, and the selections came out
// wrong on a Zen 5 host (its AVX2 kernel, gemm:jit, happened to need none).
struct Screener::Impl {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  std::vector<dnnl::stream> streams;       // one per thread
  // One per thread, page-aligned as oneDNN's own scratchpad is (it places its buffers at aligned offsets).
  std::vector<std::vector<uint8_t, AlignedAllocator<uint8_t, 4096>>> scratch;
  struct Matmul {
    int64_t rows;
    dnnl::matmul mm;
    dnnl::memory::desc scratch;  // its scratchpad
  };
  std::vector<Matmul> mms;  // by block rows
  int64_t B = 0, d = 0, D = 0;
  std::string impl_name;
  std::vector<int8_t> qx, qw;
  std::vector<float> sx, xa;  // per row: x's scale and |x|
  std::vector<int32_t> acc;  // (B, D)
  // The bound of entry (r, i) is fa[r] fp[i] + fc[r] fq[i] + fe[r] (fp[i] + fq[i]) + ft[i]: for the int8
  // approximation fa = |x^|, fc = |dx|, fp = |dw|, fq = |w| as quantize_rows writes them (fp32 path:
  // fa = gamma |x|, fp = |w|, fc = fq = fe = 0). The per-latent factors, W's scales fsw and the bias fb
  // are padded to a multiple of 8 with zeros.
  std::vector<float> fa, fc, fe, fp, fq, ft, fsw, fb;
  int64_t D8 = 0;
  std::vector<std::vector<Cand>> cand;         // per thread: entries with upper bound >= the threshold
  std::vector<std::vector<uint32_t>> hist;     // per thread: histogram of the positive lower bounds' bits
  std::vector<int64_t> counts;                 // per thread: lower bounds >= the threshold
  std::vector<char> overflow;                  // per thread: the candidate cap was reached
  std::vector<Cand> all;                       // the candidates, rows ascending
  std::vector<float> lbs;                      // scratch: lower bounds, sums, exact values to rank
  std::vector<std::pair<float, int64_t>> vals;  // exact value, flat index
  std::vector<int64_t> offset, fill;
  std::vector<std::vector<double>> wrow;       // per thread: one encoder row in double

  Matmul& matmul_for(int64_t rows) {
    for (Matmul& m : mms)
      if (m.rows == rows) return m;
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    const dnnl::memory::desc a({rows, d}, dt::s8, tag::ab), w({d, D}, dt::s8, tag::ba), c({rows, D}, dt::s32, tag::ab);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, w, c), attr, eng);
    impl_name = pd.impl_info_str();
    mms.push_back({rows, dnnl::matmul(pd), pd.scratchpad_desc()});
    return mms.back();
  }

  // Weights in 8 bits (127 levels) where the int8 GEMM sums u8 x s8 products in int32 (VNNI's vpdpbusd,
  // AMX), in 7 bits (63) where it adds pairs of them in int16 first (AVX2's and AVX-512's vpmaddubsw),
  // which saturates unless |w| <= 63 (x, shifted to u8 by oneDNN, keeps 8 bits). oneDNN picks its kernel
  // by CPU and shape, so each new primitive is asked (probe): every x at 127 against rows of +127 and of
  // -127 saturates every pair under vpmaddubsw, and is exact (+-127^2 d) only without it. A finer weight
  // grid halves the bound's |x^| |dw| term: fewer candidates, the same selection.
  float w_levels = 127.0f;
  float max_levels = 127.0f;  // set_max_weight_levels
  bool ran = false;           // weight_levels: 0 before a call

  void prepare(int64_t B_, int64_t d_, int64_t D_) {
    if (B_ == B && d_ == d && D_ == D) return;
    B = B_, d = d_, D = D_;
    mms.clear();
    w_levels = 127.0f;  // until a primitive of this shape saturates
    qx.resize(static_cast<size_t>(B * d));
    qw.resize(static_cast<size_t>(D * d));
    acc.resize(static_cast<size_t>(B * D));
    for (auto* v : {&sx, &xa, &fa, &fc, &fe}) v->resize(static_cast<size_t>(B));
    D8 = (D + 7) / 8 * 8;
    for (auto* v : {&fp, &fq, &ft, &fsw, &fb}) v->assign(static_cast<size_t>(D8), 0.0f);
  }

  // The GEMM's blocks of rows, one per thread.
  int gemm_threads() const { return static_cast<int>(std::min<int64_t>(num_threads(), std::max<int64_t>(1, B / 64))); }

  // The primitives, streams and scratchpads for nt blocks, created on this thread (creation is not timed
  // per step after the first); new primitives are probed, and w_levels drops to 63 if one saturates.
  void ensure(int nt) {
    while (static_cast<int>(streams.size()) < nt) streams.emplace_back(eng);
    if (static_cast<int>(scratch.size()) < nt) scratch.resize(static_cast<size_t>(nt));
    const size_t before = mms.size();
    for (int t = 0; t < nt; ++t) {
      const size_t bytes = matmul_for(B * (t + 1) / nt - B * t / nt).scratch.get_size();
      if (scratch[static_cast<size_t>(t)].size() < bytes) scratch[static_cast<size_t>(t)].resize(bytes);
    }
    if (mms.size() == before || w_levels < 127.0f) return;
    std::fill(qx.begin(), qx.end(), int8_t{127});
    for (int64_t i = 0; i < D; ++i)
      std::fill(qw.begin() + i * d, qw.begin() + (i + 1) * d, static_cast<int8_t>(i % 2 ? -127 : 127));
    gemm(nt);
    const int32_t full = static_cast<int32_t>(127 * 127 * d);
    for (int64_t e = 0; e < B * D; ++e)
      if (acc[static_cast<size_t>(e)] != (e % D % 2 ? -full : full)) {
        w_levels = 63.0f;
        return;
      }
  }

  // acc = qx @ qw^T, the rows split over msae's pool (after ensure(nt)).
  void gemm(int nt) {
    parallel(
        [&](int t, int n) {
          const int64_t lo = B * t / n, hi = B * (t + 1) / n;
          if (lo >= hi) return;
          omp_set_num_threads(1);
          using dt = dnnl::memory::data_type;
          using tag = dnnl::memory::format_tag;
          Matmul* mm = nullptr;
          for (Matmul& m : mms)
            if (m.rows == hi - lo) mm = &m;
          dnnl::memory am({{hi - lo, d}, dt::s8, tag::ab}, eng, qx.data() + lo * d),
              wm({{d, D}, dt::s8, tag::ba}, eng, qw.data()), cm({{hi - lo, D}, dt::s32, tag::ab}, eng, acc.data() + lo * D);
          std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, cm}};
          if (mm->scratch.get_size() > 0)
            args.emplace(DNNL_ARG_SCRATCHPAD, dnnl::memory(mm->scratch, eng, scratch[static_cast<size_t>(t)].data()));
          mm->mm.execute(streams[t], args);
          streams[t].wait();
        },
        nt);
  }
};

Screener::Screener() : impl_(std::make_unique<Impl>()) {}
Screener::~Screener() = default;

std::string Screener::kernel() const {
  const dnnl_version_t* v = dnnl_version();
  if (!impl_->ran) return cat("oneDNN ", v->major, ".", v->minor, ".", v->patch, " int8 matmul (not yet run)");
  return cat("oneDNN ", v->major, ".", v->minor, ".", v->patch, " int8 matmul (", impl_->impl_name, ", ",
             weight_levels() == 127 ? 8 : 7, "-bit weights)");
}

int Screener::weight_levels() const {
  return impl_->ran ? static_cast<int>(std::min(impl_->w_levels, impl_->max_levels)) : 0;
}

void Screener::set_max_weight_levels(int levels) {
  MSAE_ASSERT(levels == 63 || levels == 127, "set_max_weight_levels: 63 or 127, got ", levels);
  impl_->max_levels = static_cast<float>(levels);
}


namespace {

typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8v __attribute__((vector_size(32)));

// The lanes where a >= b, as bits.
inline unsigned ge_mask(f8 a, f8 b) {
#if defined(__AVX__)
  return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b), _CMP_GE_OQ)));
#else
  unsigned m = 0;
  for (int l = 0; l < 8; ++l) m |= static_cast<unsigned>(a[l] >= b[l]) << l;
  return m;
#endif
}

// The histograms' bin of a float: its top 16 bits (sign, exponent, 7 mantissa bits); for positive floats
// the bins ascend with the value. bin_edge(b) is the smallest float of bin b.
inline uint32_t bin_of(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return bits >> 16;
}
inline float bin_edge(uint32_t bin) {
  const uint32_t bits = bin << 16;
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

inline f8 load8(const float* p) {
  f8 v;
  std::memcpy(&v, p, 32);
  return v;
}

}  // namespace

// The routines below visit the bounds of a row through for_bounds, eight entries at a time: the lower and
// upper bounds of an entry are one computation, so approx - bound >= T implies approx + bound >= T
// (rounding is monotone, the bound is >= 0).
struct Screener::Pass {
  Screener::Impl& m;
  const float* work;  // fp32 path: the GEMM's output (B, D)
  bool fp32;
  ScreenStats& st;    // seconds_bound: the thresholds' histograms

  // One row's bounds, eight entries at a time (lanes past D: -inf). The bound of (r, i) is
  // (fa + fe)[r] fp[i] + (fc + fe)[r] fq[i] + ft[i] (= fa fp + fc fq + fe (fp + fq) + ft up to rounding,
  // which the margin covers); the approximation s_x[r] s_w[i] acc[r, i] + b[i], or work[r, i] + b[i].
  // Everything a chunk reads is copied into this struct, so that the hot loops keep it in registers.
  struct Row {
    const int32_t* acc;
    const float *wk, *sw, *fb, *fp, *fq, *ft;
    float A, C, s;
    int64_t D;
    template <bool FP32>
    void bounds(int64_t i, f8& lb, f8& ub) const {
      f8 raw;
      if (i + 8 <= D) {
        if constexpr (FP32) {
          raw = load8(wk + i);
        } else {
          i8v q;
          std::memcpy(&q, acc + i, 32);
          raw = __builtin_convertvector(q, f8);
        }
      } else {
        raw = f8{0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t l = 0; i + l < D; ++l) raw[l] = FP32 ? wk[i + l] : static_cast<float>(acc[i + l]);
      }
      const f8 ap = FP32 ? raw + load8(fb + i) : s * load8(sw + i) * raw + load8(fb + i);
      const f8 bnd = A * load8(fp + i) + C * load8(fq + i) + load8(ft + i);
      lb = ap - bnd, ub = ap + bnd;
      if (i + 8 > D)
        for (int64_t l = D - i; l < 8; ++l) lb[l] = ub[l] = -std::numeric_limits<float>::infinity();
    }
  };
  Row row(int64_t r) const {
    return {m.acc.data() + r * m.D, fp32 ? work + r * m.D : nullptr, m.fsw.data(), m.fb.data(), m.fp.data(),
            m.fq.data(), m.ft.data(), m.fa[r] + m.fe[r], m.fc[r] + m.fe[r], fp32 ? 0.0f : m.sx[r], m.D};
  }

  // Histogram of the positive lower bounds' top 16 bits of row r into h.
  template <bool FP32>
  void hist_row(int64_t r, uint32_t* h) const {
    const Row w = row(r);
    const float d0 = std::numeric_limits<float>::denorm_min();
    const f8 tiny = {d0, d0, d0, d0, d0, d0, d0, d0};
    for (int64_t i = 0; i < w.D; i += 8) {
      f8 lb, ub;
      w.template bounds<FP32>(i, lb, ub);
      for (unsigned mask = ge_mask(lb, tiny); mask; mask &= mask - 1) h[bin_of(lb[__builtin_ctz(mask)])] += 1;
    }
  }

  // Row r's entries with upper bound >= T appended at out[n...] (room for D more); returns how many of its
  // lower bounds are >= T.
  template <bool FP32>
  int64_t scan_row(int64_t r, float T, Cand* out, size_t& n) const {
    const Row w = row(r);
    const f8 Tv = {T, T, T, T, T, T, T, T};
    const int64_t base = r * w.D;
    int64_t count = 0;
    size_t k = n;
    for (int64_t i = 0; i < w.D; i += 8) {
      f8 lb, ub;
      w.template bounds<FP32>(i, lb, ub);
      count += __builtin_popcount(ge_mask(lb, Tv));
      for (unsigned mask = ge_mask(ub, Tv); mask; mask &= mask - 1) {
        const int l = __builtin_ctz(mask);
        out[k++] = {base + i + l, lb[l], ub[l]};
      }
    }
    n = k;
    return count;
  }

  // A threshold T > 0 such that (it is hoped) at least `want` of the rows r = 0, stride, 2 stride, ... have a
  // lower bound >= T: the lower edge of the histogram bin (the top 16 bits of the float) that holds the
  // want-th largest positive lower bound of those rows. 0 when they have fewer than `want` positive ones.
  float threshold(int64_t stride, int64_t want) const {
    Timer timer;
    struct Add {
      Timer& t;
      double& to;
      ~Add() { to += t.seconds(); }
    } add{timer, st.seconds_bound};
    const int64_t rows = (m.B + stride - 1) / stride;
    for (auto& h : m.hist) std::fill(h.begin(), h.end(), 0u);
    parallel_for(rows, [&](int64_t lo, int64_t hi, int tid) {
      uint32_t* h = m.hist[tid].data();
      for (int64_t j = lo; j < hi; ++j) fp32 ? hist_row<true>(j * stride, h) : hist_row<false>(j * stride, h);
    }, 4);
    int64_t seen = 0;
    for (int64_t bin = 0x7f80; bin >= 0; --bin) {  // +inf's bin down
      for (const auto& h : m.hist) seen += h[bin];
      if (seen >= want) {
        const float t = bin_edge(static_cast<uint32_t>(bin));
        return t > 0.0f ? t : std::numeric_limits<float>::denorm_min();
      }
    }
    return 0.0f;
  }

  // The entries with upper bound >= T into m.cand (per thread, rows ascending); returns the count of lower
  // bounds >= T, or -1 when a thread's candidates passed cap_per_thread.
  int64_t scan(float T, int64_t cap_per_thread) const {
    const int nt = num_threads();
    for (int t = 0; t < nt; ++t) m.cand[t].clear(), m.counts[t] = 0, m.overflow[t] = 0;
    const int64_t D = m.D;
    parallel_for(m.B, [&](int64_t lo, int64_t hi, int tid) {
      std::vector<Cand>& cd = m.cand[tid];  // grown ahead of each row, cut to the entries at the end
      size_t n = 0;
      int64_t count = 0;
      for (int64_t r = lo; r < hi; ++r) {
        if (cd.size() < n + static_cast<size_t>(D)) cd.resize(std::max(2 * cd.size(), n + static_cast<size_t>(D)));
        count += fp32 ? scan_row<true>(r, T, cd.data(), n) : scan_row<false>(r, T, cd.data(), n);
        if (static_cast<int64_t>(n) > cap_per_thread) {
          m.overflow[tid] = 1;
          break;
        }
      }
      cd.resize(n);
      m.counts[tid] = count;
    }, 8);
    int64_t count = 0;
    for (int t = 0; t < nt; ++t) {
      if (m.overflow[t]) return -1;
      count += m.counts[t];
    }
    return count;
  }

  // Candidates with a proven cut: m.all = every entry with upper bound >= L, where L > 0 is at most the
  // keep-th largest exact value. First from a threshold guessed on a sample of the rows (one pass over the
  // matrix when it holds), else from the histogram of all the lower bounds. False when no positive L exists
  // or the candidates would pass `cap` (then the caller takes the next path); with last_resort, L may be
  // the smallest positive float instead (every entry that may be positive is a candidate), never false.
  bool candidates(int64_t keep, int64_t cap, bool last_resort, float& L, int& path) const {
    const int nt = num_threads();
    const int64_t cap_t = cap / nt + 1;
    const int64_t B = m.B, D = m.D;
    for (int attempt = 0; attempt < 2; ++attempt) {
      const int64_t stride = attempt == 0 ? B / 64 : 1;
      if (attempt == 0 && stride < 2) continue;  // small batches: the full histogram costs little
      const int64_t rows = (B + stride - 1) / stride;
      const int64_t want = attempt == 0 ? keep * rows / B + keep * rows / B / 4 + 16 : keep;
      float T = want <= rows * D ? threshold(stride, want) : 0.0f;
      int64_t count = -1;
      while (T > 0.0f) {
        count = scan(T, last_resort ? std::numeric_limits<int64_t>::max() : cap_t);
        if (count < 0 || count >= keep || attempt == 0) break;
        // The histogram promised keep lower bounds >= T; a different rounding in scan may disagree by an
        // ulp: one bin lower.
        T = bin_of(T) > 0 ? bin_edge(bin_of(T) - 1) : 0.0f;
      }
      if (T <= 0.0f || count < keep) continue;  // (count < 0: over the cap)
      path = attempt;
      L = kth_lower_bound(keep, T);
      parallel([&](int tid, int) {
        auto& cd = m.cand[tid];
        cd.erase(std::remove_if(cd.begin(), cd.end(), [&](const Cand& c) { return c.ub < L; }), cd.end());
      }, nt);
      collect_all();
      return true;
    }
    if (!last_resort) return false;
    // Fewer than keep positive lower bounds: every entry whose upper bound is positive.
    path = 2;
    L = std::numeric_limits<float>::denorm_min();
    scan(L, std::numeric_limits<int64_t>::max());
    collect_all();
    return true;
  }

  // The keep-th largest lower bound among the candidates, when at least keep of them are >= T > 0: a
  // histogram of the top 16 bits of those >= T, then the exact value within the bin that holds it.
  float kth_lower_bound(int64_t keep, float T) const {
    for (auto& h : m.hist) std::fill(h.begin(), h.end(), 0u);
    parallel([&](int tid, int) {
      uint32_t* h = m.hist[tid].data();
      for (const Cand& c : m.cand[tid])
        if (c.lb >= T) h[bin_of(c.lb)] += 1;
    }, num_threads());
    int64_t above = 0;
    uint32_t bin = bin_of(T);
    for (int64_t b = 0x7f80; b >= static_cast<int64_t>(bin_of(T)); --b) {
      int64_t n = 0;
      for (const auto& h : m.hist) n += h[b];
      if (above + n >= keep) {
        bin = static_cast<uint32_t>(b);
        break;
      }
      above += n;
    }
    m.lbs.clear();
    for (const auto& cd : m.cand)
      for (const Cand& c : cd)
        if (c.lb >= T && bin_of(c.lb) == bin) m.lbs.push_back(c.lb);
    const int64_t j = keep - above - 1;
    MSAE_ASSERT(j >= 0 && j < static_cast<int64_t>(m.lbs.size()));
    std::nth_element(m.lbs.begin(), m.lbs.begin() + j, m.lbs.end(), std::greater<float>());
    return m.lbs[j];
  }

  void collect_all() const {
    size_t n = 0;
    for (const auto& cd : m.cand) n += cd.size();
    m.all.clear();
    m.all.reserve(n);
    for (const auto& cd : m.cand) m.all.insert(m.all.end(), cd.begin(), cd.end());
  }

  // Exact values of c[0, n) appended to m.vals, grouped by latent so that each encoder row is read (and
  // converted to double) once while the rows of x (B * d floats) stay in cache.
    void exact_values(const Cand* c, int64_t n, const float* x, int64_t d, const float* W, const float* b) const {
    const int64_t D = m.D;
    std::vector<int64_t>& offset = m.offset;
    offset.assign(static_cast<size_t>(D + 1), 0);
    for (int64_t e = 0; e < n; ++e) offset[c[e].flat % D + 1] += 1;
    for (int64_t i = 0; i < D; ++i) offset[i + 1] += offset[i];
    m.fill.assign(offset.begin(), offset.end() - 1);
    const size_t base = m.vals.size();
    m.vals.resize(base + static_cast<size_t>(n));
    std::pair<float, int64_t>* v = m.vals.data() + base;
    for (int64_t e = 0; e < n; ++e) v[m.fill[c[e].flat % D]++].second = c[e].flat;
    parallel_for(D, [&](int64_t lo, int64_t hi, int tid) {
      std::vector<double>& wd = m.wrow[tid];
      wd.resize(static_cast<size_t>(d));
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t n_i = offset[i + 1] - offset[i];
        if (n_i == 0) continue;
        const float* w = W + i * d;
        const float bi = b ? b[i] : 0.0f;
        if (n_i == 1) {
          v[offset[i]].first = exact_dot_t(x + (v[offset[i]].second / D) * d, w, d, bi);
          continue;
        }
        for (int64_t k = 0; k < d; ++k) wd[k] = w[k];
        for (int64_t e = offset[i]; e < offset[i + 1]; ++e) {
          if (e + 1 < offset[i + 1]) {
            const char* nx = reinterpret_cast<const char*>(x + (v[e + 1].second / D) * d);
            for (int64_t k = 0; k < d * 4; k += 64) __builtin_prefetch(nx + k);
          }
          v[e].first = exact_dot_t(x + (v[e].second / D) * d, wd.data(), d, bi);
        }
      }
    }, 64);
  }
};

float Screener::batch_topk(const float* x, int64_t B, int64_t d, const float* W, const float* b, int64_t D,
                           int64_t keep, float* work, SparseCodes& out) {
  Impl& m = *impl_;
  stats_ = ScreenStats{};
  keep = std::min(keep, B * D);
  stats_.keep = keep;
  m.prepare(B, d, D);
  const int gemm_nt = m.gemm_threads();
  m.ensure(gemm_nt);
  Timer t;
  // W in 8 or 7 bits, as the GEMM allows (Impl::ensure).
  // The bound's factors: |x^_r| |dw_i| + |dx_r| |w_i| + M ((|x_r| + |dx_r|)(|w_i| + |dw_i|) + |b_i|).
  quantize_rows(x, B, d, 127.0f, m.qx.data(), m.sx.data(), m.fa.data(), m.fc.data(), m.xa.data());
  m.ran = true;
  quantize_rows(W, D, d, std::min(m.w_levels, m.max_levels), m.qw.data(), m.fsw.data(), nullptr, m.fp.data(),
                m.fq.data());
  const float M = static_cast<float>(kMargin);
  for (int64_t r = 0; r < B; ++r) m.fe[r] = M * (m.xa[r] + m.fc[r]);
  for (int64_t i = 0; i < D; ++i) m.ft[i] = M * (b ? std::fabs(b[i]) : 0.0f), m.fb[i] = b ? b[i] : 0.0f;
  stats_.seconds_quantize = t.seconds();
  t.reset();
  m.gemm(gemm_nt);
  stats_.seconds_gemm = t.seconds();
  t.reset();

  const int nt = num_threads();
  m.cand.resize(static_cast<size_t>(nt));
  m.hist.resize(static_cast<size_t>(nt));
  for (auto& h : m.hist) h.resize(1 << 16);
  m.counts.resize(static_cast<size_t>(nt));
  m.overflow.resize(static_cast<size_t>(nt));
  m.wrow.resize(static_cast<size_t>(nt));

  // Candidates from the int8 approximations; when the bound is too loose (no positive cut, or more than a
  // quarter of the matrix), from the fp32 GEMM with its rounding bound instead:
  // |fl(x.w) - x.w| <= gamma_d |x| |w| (gamma_d = d u / (1 - d u), doubled for safety).
  float L = 0.0f;
  int path = 0;
  Pass pass{m, work, false, stats_};
  double fp32_gemm = 0;
  if (!pass.candidates(keep, B * D / 4, false, L, path)) {
    Timer tg;
    kernels::sgemm(Trans::no, Trans::yes, B, D, d, 1.0f, x, d, W, d, 0.0f, work, D);
    fp32_gemm = tg.seconds();
    stats_.seconds_gemm += fp32_gemm;
    const double u = std::ldexp(1.0, -24);
    const float gamma = static_cast<float>(2 * (d + 2) * u / (1 - (d + 2) * u));
    for (int64_t r = 0; r < B; ++r) m.fa[r] = gamma * m.xa[r], m.fc[r] = 0, m.fe[r] = 0;
    for (int64_t i = 0; i < D; ++i) m.fp[i] = m.fq[i], m.fq[i] = 0, m.ft[i] = gamma * (b ? std::fabs(b[i]) : 0.0f);  // fq held |w|
    pass.fp32 = true;
    pass.candidates(keep, 0, true, L, path);
    path += 3;
  }
  stats_.path = path;
  stats_.fp32_fallback = path >= 3;
  stats_.candidates = static_cast<int64_t>(m.all.size());
  stats_.seconds_candidates = t.seconds() - stats_.seconds_bound - fp32_gemm;
  t.reset();

  // Exact values. When the candidates are many, first those of the keep best approximations (and ties): keep exact
  // values >= L2 prove that the cut is >= L2, and the rest need computing only where their upper bound
  // reaches max(L, L2).
  m.vals.clear();
  const int64_t n_c = static_cast<int64_t>(m.all.size());
  if (path % 3 != 2 && n_c > keep + keep / 8) {
    m.lbs.resize(static_cast<size_t>(n_c));
    for (int64_t e = 0; e < n_c; ++e) m.lbs[e] = m.all[e].lb + m.all[e].ub;
    std::nth_element(m.lbs.begin(), m.lbs.begin() + (keep - 1), m.lbs.end(), std::greater<float>());
    const float A = m.lbs[keep - 1];
    const auto first = std::partition(m.all.begin(), m.all.end(), [&](const Cand& c) { return c.lb + c.ub >= A; });
    const int64_t n1 = first - m.all.begin();  // >= keep
    pass.exact_values(m.all.data(), n1, x, d, W, b);
    m.lbs.resize(static_cast<size_t>(n1));
    for (int64_t e = 0; e < n1; ++e) m.lbs[e] = m.vals[e].first;
    std::nth_element(m.lbs.begin(), m.lbs.begin() + (keep - 1), m.lbs.end(), std::greater<float>());
    const float cut = std::max(L, m.lbs[keep - 1]);
    const auto rest = std::remove_if(first, m.all.end(), [&](const Cand& c) { return c.ub < cut; });
    pass.exact_values(m.all.data() + n1, rest - first, x, d, W, b);
  } else {
    pass.exact_values(m.all.data(), n_c, x, d, W, b);
  }
  stats_.exact = static_cast<int64_t>(m.vals.size());

  // The selection among them: value desc, then flat index asc (batch_topk's rule), positive values only.
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
