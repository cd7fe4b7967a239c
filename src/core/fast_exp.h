// Internal to msae: a float exp without branches, calls or float comparisons, so that loops over it
// vectorize (GCC does not if-convert a float clamp in such a loop under its default -ftrapping-math).
// Used by the LM cross-entropy (src/lm/cross_entropy.cpp) and the feature sampler
// (src/synth/feature_model.cpp). Not a public header.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

namespace msae::detail {

// exp(x) for |x| < 2^21, as Cephes' expf: x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-6 polynomial,
// times 2^n built in the exponent bits. n = round(x / ln2) comes from the 1.5 * 2^23 trick (adding it
// leaves n in the low mantissa bits; exact for |x / ln2| < 2^22) and is clamped to [-126, 127] as an
// integer (only the exponent: r keeps the true n). Relative error below 1e-7 on [-87, 88] (test_core,
// against std::exp); below -87 the result is e^r 2^-126, a positive number under 1.7e-38 (possibly
// subnormal) instead of ~0; above 88 it is e^r 2^127, about 1e38 or more, finite.
inline float exp_fast(float x) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  const float shifted = x * 1.44269504088896341f + kMagic;
  const float n = shifted - kMagic;  // round(x / ln2)
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t ni = std::min(127, std::max(-126, std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(kMagic)));
  return p * std::bit_cast<float>((ni + 127) << 23);  // 2^n, a normal float
}

}  // namespace msae::detail
