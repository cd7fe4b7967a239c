// Internal to msae: IEEE binary16 (half) <-> float32, exact on the way up and round-to-nearest-even on
// the way down (inf and NaN kept). Used by io (float16 files and tensors: io::half_to_float and
// io::float_to_half forward here) and by the feature sampler's binary16 copy of its directions
// (src/synth/feature_model.cpp). Not a public header. Tested exhaustively in test_io ("Convert").
#pragma once

#include <bit>
#include <cstdint>

namespace msae::detail {

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, or NaN keeping its payload
  } else if (exp != 0) {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal: value = mant * 2^-24. Shift the leading 1 up to the implicit-bit position (bit 10);
    // each shift lowers the exponent by one from that of the smallest normal, 2^-14.
    int e = -14;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (static_cast<uint32_t>(e + 127) << 23) | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

// Shift right by `shift` (1..31) rounding to nearest, ties to even.
inline uint32_t shift_round_even(uint32_t v, int shift) {
  const uint32_t kept = v >> shift;
  const uint32_t rest = v & ((1u << shift) - 1);
  const uint32_t halfway = 1u << (shift - 1);
  return kept + ((rest > halfway || (rest == halfway && (kept & 1u))) ? 1u : 0u);
}

inline uint16_t float_to_half(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) {
    // NaN: keep the top payload bits and force the quiet bit so the payload can never become 0 (= inf).
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  }
  // 65520 = 0x477ff000 is the tie between 65504 (largest half, odd mantissa) and 2^16: rounds up to inf.
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (abs >= 0x38800000u) {
    // Normal half (>= 2^-14): rebias the exponent and round off 13 mantissa bits; a mantissa carry
    // correctly bumps the exponent.
    const uint32_t rebased = abs - ((127u - 15u) << 23);
    return static_cast<uint16_t>(sign | shift_round_even(rebased, 13));
  }
  // 2^-25 = 0x33000000 is the tie between 0 and the smallest subnormal (odd): rounds to 0.
  if (abs <= 0x33000000u) return sign;
  // Subnormal half: value / 2^-24 = mant24 * 2^(e - 126), with e in [102, 112] here, so shift in [14, 24].
  // Rounding up out of the subnormal range yields 0x400, the encoding of the smallest normal.
  const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
  const int shift = 126 - static_cast<int>(abs >> 23);
  return static_cast<uint16_t>(sign | shift_round_even(mant, shift));
}

// The binary16 value nearest to f (ties to even), as a float.
inline float round_to_half(float f) { return half_to_float(float_to_half(f)); }

}  // namespace msae::detail
