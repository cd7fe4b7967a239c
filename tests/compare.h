// Shared by the tests that compare float arrays.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace msae::testing_support {

// max |a - b| / max |b| over n entries (max |a - b| when b is all zeros).
inline double rel_err(const float* a, const float* b, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return scale == 0 ? diff : diff / scale;
}

}  // namespace msae::testing_support
