// Internal to msae_synth: the counter-based per-row RNG and the ziggurat normal sampler shared by the
// generators (planted.cpp, feature_model.cpp). Not a public header.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "msae/core.h"

namespace msae::synth::detail {

constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ULL;

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Counter-based generator for one row: splitmix64 over a per-row starting point. Every row gets its
// own stream derived from (key, row index), which is what makes sample() independent of the thread
// count and of how the stream is split into calls. Inline here because msae::Rng::next_u64 is out of
// line and this is the hot loop (about d/2 + 20 draws per row).
struct RowRng {
  uint64_t s;
  RowRng(uint64_t key, uint64_t row) : s(mix64(key ^ mix64(row * kGamma + 0x632be59bd9b4e019ULL))) {}
  uint64_t next() {
    s += kGamma;
    return mix64(s);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  uint64_t below(uint64_t n) {  // uniform in [0, n), unbiased (rejection), n > 0
    const uint64_t threshold = (0 - n) % n;
    for (;;) {
      const uint64_t r = next();
      if (r >= threshold) return r % n;
    }
  }
};

// The feature sampler's per-row generator (stream version 3 on): wyrand (Wang Yi's generator from wyhash:
// a Weyl sequence whose state and a masked copy are multiplied to 128 bits and folded; its author
// reports that it passes BigCrush and PractRand), started at one mix64 of (key, row), so distinct rows
// of a stream start at distinct, well spread states. About half the instructions of a splitmix64 draw
// (one multiply instead of two, no shifts). planted.cpp keeps RowRng so that `msae train`'s embedded
// dataset does not change.
struct WyRowRng {
  uint64_t s;
  WyRowRng(uint64_t key, uint64_t row) : s(mix64(key ^ (row * kGamma))) {}
  uint64_t next() {
    __extension__ typedef unsigned __int128 u128;
    s += 0xa0761d6478bd642fULL;
    const u128 t = static_cast<u128>(s) * (s ^ 0xe7037ed1a0b428dbULL);
    return static_cast<uint64_t>(t >> 64) ^ static_cast<uint64_t>(t);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

// Ziggurat normal sampler (Marsaglia & Tsang's method in Doornik's formulation, 128 layers): on the
// fast path (~99% of calls) one table lookup and a compare, against two uniforms plus log, sqrt and
// cos for Box-Muller. The noise costs d normals per row, so this dominates sampling speed.
constexpr int kZigLayers = 128;
constexpr double kZigR = 3.442619855899;          // start of the tail
constexpr double kZigV = 9.91256303526217e-3;     // area of each layer (unnormalized density)

struct ZigTables {
  double x[kZigLayers + 1];  // layer edges, x[0] = V / f(R) (base layer incl. tail), x[1] = R, x[128] = 0
  double ratio[kZigLayers];  // x[i + 1] / x[i]: the fraction of layer i that lies under the curve
  float xf[kZigLayers], ratiof[kZigLayers];  // float copies for the vectorized rectangle test
  ZigTables() {
    double f = std::exp(-0.5 * kZigR * kZigR);
    x[0] = kZigV / f;
    x[1] = kZigR;
    x[kZigLayers] = 0.0;
    for (int i = 2; i < kZigLayers; ++i) {
      x[i] = std::sqrt(-2.0 * std::log(kZigV / x[i - 1] + f));
      f = std::exp(-0.5 * x[i] * x[i]);
    }
    for (int i = 0; i < kZigLayers; ++i) ratio[i] = x[i + 1] / x[i];
    for (int i = 0; i < kZigLayers; ++i) {
      xf[i] = static_cast<float>(x[i]);
      ratiof[i] = static_cast<float>(ratio[i]);
    }
  }
};

inline const ZigTables& zig_tables() {
  static const ZigTables tables;
  return tables;
}

template <class R>
inline double zig_tail(R& rng, bool negative) {
  // Marsaglia's tail method: exact N(0,1) conditioned on |z| > R.
  double a, b;
  do {
    a = std::log(1.0 - rng.uniform()) / kZigR;  // 1 - u in (0, 1]: no log(0)
    b = std::log(1.0 - rng.uniform());
  } while (-2.0 * b < a * a);
  return negative ? a - kZigR : kZigR - a;
}

// The part of the ziggurat after a failed rectangle test on (u, layer i): the tail or wedge test,
// and a fresh start if that rejects too.
template <class R>
inline double zig_finish(R& rng, const ZigTables& t, double u, int i);

template <class R>
inline double zig_normal(R& rng, const ZigTables& t) {
  const uint64_t bits = rng.next();
  const double u = static_cast<double>(bits >> 11) * 0x1.0p-52 - 1.0;  // [-1, 1), top 53 bits
  const int i = static_cast<int>(bits & (kZigLayers - 1));              // layer, low 7 bits
  if (std::fabs(u) < t.ratio[i]) return u * t.x[i];
  return zig_finish(rng, t, u, i);
}

template <class R>
inline double zig_finish(R& rng, const ZigTables& t, double u, int i) {
  if (i == 0) return zig_tail(rng, u < 0.0);
  const double z = u * t.x[i];
  const double f0 = std::exp(-0.5 * (t.x[i] * t.x[i] - z * z));
  const double f1 = std::exp(-0.5 * (t.x[i + 1] * t.x[i + 1] - z * z));
  if (f1 + rng.uniform() * (f0 - f1) < 1.0) return z;
  return zig_normal(rng, t);
}

// zig_finish for a failed vectorized rectangle test on the 32 bits `bits` (7 for the layer, 25 for a
// signed uniform). Out of line: ~1% of normals get here.
template <class R>
[[gnu::noinline]] float zig_finish_bits(R& rng, const ZigTables& t, uint32_t bits) {
  const int li = static_cast<int>(bits & (kZigLayers - 1));
  const double u = static_cast<double>(static_cast<int32_t>(bits & ~uint32_t{kZigLayers - 1})) * 0x1.0p-31;
  return static_cast<float>(zig_finish(rng, t, u, li));
}

// The normals of normals_block for m <= 4, without its vector loops (a row's few magnitudes): the same
// draws in the same order (all the bits first, then the ~1% of rectangle-test failures), the same values.
template <class R>
inline void normals_few(R& rng, const ZigTables& t, float* z, int64_t m) {
  const uint64_t b0 = rng.next(), b1 = m > 2 ? rng.next() : 0;
  for (int64_t k = 0; k < m; ++k) {
    const uint64_t b = k < 2 ? b0 : b1;
    const uint32_t bk = k % 2 == 0 ? static_cast<uint32_t>(b) : static_cast<uint32_t>(b >> 32);
    const int li = static_cast<int>(bk & (kZigLayers - 1));
    const float u = static_cast<float>(static_cast<int32_t>(bk & ~uint32_t{kZigLayers - 1})) * 0x1.0p-31f;
    z[k] = std::fabs(u) < t.ratiof[li] ? u * t.xf[li] : zig_finish_bits(rng, t, bk);
  }
}

// z[k] = N(0, 1) for k < m <= 64, in float. The rectangle test of the ziggurat runs vectorized, two
// normals per 64-bit draw (32 bits each: 7 for the layer, 25 for a signed uniform); the ~1% of lanes
// that fail it finish in scalar code with fresh draws.
constexpr int64_t kNormalBlock = 64;
template <class R>
inline void normals_vector(R& rng, const ZigTables& t, float* z, int64_t m) {
  alignas(64) uint32_t bits[kNormalBlock];
  for (int64_t k = 0; k < m; k += 2) {
    const uint64_t b = rng.next();
    bits[k] = static_cast<uint32_t>(b);
    bits[k + 1] = static_cast<uint32_t>(b >> 32);  // k + 1 < kNormalBlock always; unused when k + 1 == m
  }
#if defined(__AVX2__)
  for (int64_t k = m; k < (m + 7) / 8 * 8; ++k) bits[k] = 0;  // defined lanes past m (masked off below)
  // Eight at a time: the layer's edge and ratio by gathers, the failures as a bit mask (the same float
  // operations as the scalar form below, so the same values).
  const __m256i layer = _mm256_set1_epi32(kZigLayers - 1);
  const __m256 scale = _mm256_set1_ps(0x1.0p-31f), abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t k0 = 0; k0 < m; k0 += 8) {
    const __m256i b = _mm256_load_si256(reinterpret_cast<const __m256i*>(bits + k0));
    const __m256i li = _mm256_and_si256(b, layer);
    const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_andnot_si256(layer, b)), scale);
    const __m256 zk = _mm256_mul_ps(u, _mm256_i32gather_ps(t.xf, li, 4));
    const __m256 ok = _mm256_cmp_ps(_mm256_and_ps(u, abs_mask), _mm256_i32gather_ps(t.ratiof, li, 4), _CMP_LT_OQ);
    const int64_t lanes = std::min<int64_t>(8, m - k0);
    const uint32_t valid = (1u << lanes) - 1;
    if (lanes == 8) {
      _mm256_storeu_ps(z + k0, zk);
    } else {
      const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(lanes)),
                                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      _mm256_maskstore_ps(z + k0, keep, zk);
    }
    for (uint32_t fail = ~static_cast<uint32_t>(_mm256_movemask_ps(ok)) & valid; fail != 0; fail &= fail - 1) {
      const int64_t k = k0 + std::countr_zero(fail);
      z[k] = zig_finish_bits(rng, t, bits[k]);
    }
  }
#else
  alignas(64) int32_t ok[kNormalBlock];
#pragma omp simd
  for (int64_t k = 0; k < m; ++k) {
    const int li = static_cast<int>(bits[k] & (kZigLayers - 1));
    const float u = static_cast<float>(static_cast<int32_t>(bits[k] & ~uint32_t{kZigLayers - 1})) * 0x1.0p-31f;
    z[k] = u * t.xf[li];
    ok[k] = std::fabs(u) < t.ratiof[li];
  }
  for (int64_t k = 0; k < m; ++k)
    if (!ok[k]) z[k] = zig_finish_bits(rng, t, bits[k]);
#endif
}

// normals_vector, or for m <= 4 the same normals without the vector loops.
template <class R>
inline void normals_block(R& rng, const ZigTables& t, float* z, int64_t m) {
  if (m <= 4) {
    normals_few(rng, t, z, m);
  } else {
    normals_vector(rng, t, z, m);
  }
}

// y[j] = base[j] + scale * N(0, 1) for j < n, 64 normals at a time.
template <class R>
inline void add_gaussian(R& rng, const ZigTables& t, const float* base, float scale, float* y, int64_t n) {
  alignas(64) float z[kNormalBlock];
  for (int64_t j0 = 0; j0 < n; j0 += kNormalBlock) {
    const int64_t m = std::min(kNormalBlock, n - j0);
    normals_block(rng, t, z, m);
#pragma omp simd
    for (int64_t k = 0; k < m; ++k) y[j0 + k] = base[j0 + k] + scale * z[k];
  }
}

// A uniformly random unit vector (Gaussian, normalized).
inline void random_unit(Rng& rng, float* v, int64_t d) {
  for (;;) {
    double norm2 = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      v[j] = static_cast<float>(rng.normal());
      norm2 += static_cast<double>(v[j]) * v[j];
    }
    if (norm2 > 1e-12) {
      const float inv = static_cast<float>(1.0 / std::sqrt(norm2));
      for (int64_t j = 0; j < d; ++j) v[j] *= inv;
      return;
    }
  }
}

}  // namespace msae::synth::detail
