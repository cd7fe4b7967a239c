// The radix select of the CUDA engine's BatchTopK and AuxK selections, as functions that compile both for
// the device (src/cuda/device_step.cu calls them from its kernels) and for the host (the host mirror below,
// which tests/test_cuda_select.cpp checks against kernels::batch_topk / aux_topk on the CPU, so that the
// selection logic is tested on machines without a GPU).
//
// The method: a candidate is an entry with value v > 0 (relu: zeros are never kept); for positive floats the
// IEEE bit pattern u = bits(v) orders like v. The cut is found in kRadixPasses passes of kRadixBits bits each,
// from the high digit down: each pass histograms the digit of the candidates whose higher digits equal the
// prefix found so far, and radix_advance picks the bin that holds the keep-th largest. After the last pass
// the prefix is the cut's bit pattern T, and `need` (>= 1) says how many entries equal to T are kept. An entry
// is kept iff u > T, or u == T and fewer than `need` entries equal to T come before it in the tie order
// (the flat index r * D + i for BatchTopK, the latent id within a row for AuxK; docs/numerics.md: the lower
// index is kept). Fewer than `keep` candidates: all of them are kept (T is the smallest, need its count).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MSAE_HD __host__ __device__
#else
#define MSAE_HD
#endif

namespace msae::cuda {

constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kRadixPasses = 32 / kRadixBits;

// The state of one selection between passes.
struct RadixState {
  uint32_t prefix = 0;     // the digits found so far
  uint32_t mask = 0;       // the bits of those digits
  long long remaining = 0; // how many of the candidates matching prefix/mask are still to be kept
  long long keep = 0;      // min(keep asked, candidates): the entries kept in all
  uint32_t cut = 0;        // after the last pass: T
  long long need = 0;      // after the last pass: entries equal to T that are kept
};

// The bit pattern of a candidate (v > 0), or 0 for anything else (0 is never a positive float's pattern).
MSAE_HD inline uint32_t radix_key(float v) {
#if defined(__CUDA_ARCH__)
  return v > 0.0f ? __float_as_uint(v) : 0u;
#else
  uint32_t u = 0;
  std::memcpy(&u, &v, sizeof(u));
  return v > 0.0f ? u : 0u;
#endif
}

MSAE_HD inline int radix_shift(int pass) { return 32 - kRadixBits * (pass + 1); }

// Whether candidate u takes part in pass `pass` of state s, and its digit there.
MSAE_HD inline bool radix_in_pass(uint32_t u, const RadixState& s) { return u != 0u && (u & s.mask) == s.prefix; }
MSAE_HD inline int radix_digit(uint32_t u, int pass) {
  return static_cast<int>((u >> radix_shift(pass)) & static_cast<uint32_t>(kRadixBins - 1));
}

// Before the first pass: keep = min(keep_asked, candidates), the candidates being the sum of the first
// pass's histogram (every positive entry takes part in it).
MSAE_HD inline void radix_begin(RadixState& s, long long keep_asked, long long candidates) {
  s.prefix = 0;
  s.mask = 0;
  s.keep = keep_asked < candidates ? keep_asked : candidates;
  s.remaining = s.keep;
  s.cut = 0;
  s.need = 0;
}

// After pass `pass` with histogram hist (kRadixBins counts of the candidates in that pass): the bin that holds
// the remaining-th largest, scanning from the top. Nothing to keep (s.keep == 0): the state stays empty.
template <class Count>
MSAE_HD inline void radix_advance(RadixState& s, const Count* hist, int pass) {
  if (s.keep == 0) return;
  long long above = 0;
  int bin = 0;
  for (int b = kRadixBins - 1; b >= 0; --b) {
    const long long h = static_cast<long long>(hist[b]);
    if (above + h >= s.remaining) {
      bin = b;
      break;
    }
    above += h;
  }
  const int shift = radix_shift(pass);
  s.prefix |= static_cast<uint32_t>(bin) << shift;
  s.mask |= static_cast<uint32_t>(kRadixBins - 1) << shift;
  s.remaining -= above;
  if (pass == kRadixPasses - 1) {
    s.cut = s.prefix;
    s.need = s.remaining;
  }
}

// Whether an entry with key u is kept, given how many entries equal to the cut come before it in the tie order.
MSAE_HD inline bool radix_kept(uint32_t u, const RadixState& s, long long ties_before) {
  if (s.keep == 0 || u == 0u) return false;
  return u > s.cut || (u == s.cut && ties_before < s.need);
}

// ---- Host mirror: the selection the kernels make, computed on the host with the same functions (tests).

// The state after every pass over the n values (one flat array in the tie order).
inline RadixState host_radix_select(const float* v, long long n, long long keep_asked) {
  RadixState s;
  long long hist[kRadixBins];
  for (int pass = 0; pass < kRadixPasses; ++pass) {
    for (long long& h : hist) h = 0;
    for (long long i = 0; i < n; ++i) {
      const uint32_t u = radix_key(v[i]);
      if (radix_in_pass(u, s)) ++hist[radix_digit(u, pass)];
    }
    if (pass == 0) {
      long long total = 0;
      for (long long h : hist) total += h;
      radix_begin(s, keep_asked, total);
    }
    radix_advance(s, hist, pass);
  }
  return s;
}

// The kept flags of the n values (in the tie order) for state s.
template <class Flag>
inline void host_radix_keep(const float* v, long long n, const RadixState& s, Flag* kept) {
  long long ties = 0;
  for (long long i = 0; i < n; ++i) {
    const uint32_t u = radix_key(v[i]);
    kept[i] = radix_kept(u, s, ties);
    if (u != 0u && u == s.cut) ++ties;
  }
}

}  // namespace msae::cuda
