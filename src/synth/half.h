// Internal to msae_synth: IEEE half precision (binary16) for the feature sampler's copy of the
// directions. The hierarchical models round their directions to values that binary16 holds exactly
// (round_to_half), so the sampler can stream them at 2 bytes per coordinate and convert each back to
// the very same float. Not a public header.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace msae::synth::detail {

// The binary16 value nearest to x (ties to even), as a float. |x| must be below 65504 (no overflow
// handling: the directions are unit vectors). Subnormal halves (|x| < 2^-14) are multiples of 2^-24.
inline float round_to_half(float x) {
  if (std::fabs(x) < 0x1.0p-14f) return std::nearbyint(x * 0x1.0p24f) * 0x1.0p-24f;  // ties to even
  uint32_t b = std::bit_cast<uint32_t>(x);
  b += 0x0fffu + ((b >> 13) & 1u);  // round the 23-bit significand to 10 bits, ties to even (carries into
  b &= ~0x1fffu;                    // the exponent when it rounds up to the next power of two)
  return std::bit_cast<float>(b);
}

// The binary16 bits of x, which must be a value binary16 holds exactly (round_to_half(x) == x).
inline uint16_t half_bits(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
  const float a = std::fabs(x);
  if (a < 0x1.0p-14f) return static_cast<uint16_t>(sign | static_cast<uint16_t>(a * 0x1.0p24f));  // subnormal or 0
  const uint32_t exponent = ((b >> 23) & 0xffu) - 127u + 15u;
  return static_cast<uint16_t>(sign | (exponent << 10) | ((b >> 13) & 0x3ffu));
}

// The float value of binary16 bits h (finite values only).
inline float half_to_float(uint16_t h) {
  const float sign = (h & 0x8000u) ? -1.0f : 1.0f;
  const uint32_t exponent = (h >> 10) & 0x1fu, significand = h & 0x3ffu;
  if (exponent == 0) return sign * static_cast<float>(significand) * 0x1.0p-24f;
  return std::bit_cast<float>(((h & 0x8000u) << 16) | ((exponent - 15u + 127u) << 23) | (significand << 13));
}

// Whether every one of n floats is a binary16 value.
inline bool all_half(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (round_to_half(x[i]) != x[i]) return false;
  return true;
}

}  // namespace msae::synth::detail
