// msae data: activation sources that fill (B, d) float32 batches.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "msae/core.h"

namespace msae::data {

class ActivationSource {
 public:
  virtual ~ActivationSource() = default;
  virtual int64_t d() const = 0;
  // Rows available (one epoch); -1 for an endless generator.
  virtual int64_t rows() const = 0;
  // Fill out (B, d) with the next B rows. Throws msae::Error (runtime) on bad data (non-finite values,
  // naming the file and row).
  virtual void next_batch(int64_t B, float* out) = 0;
  virtual std::string describe() const = 0;
  // Rows handed out so far (the data position; for logs and resume).
  virtual int64_t position() const = 0;
};

// A 2-D (N, d) .npy file, float32 or float16 (or bf16 stored as uint16 when bf16_as_u2), memory-mapped.
// shuffle = false: batch i is rows [i*B, (i+1)*B) modulo N (file order, wrapping at the end).
// shuffle = true: each epoch visits every row once in a fresh permutation drawn from `seed`.
std::unique_ptr<ActivationSource> open_npy(const std::string& path, bool shuffle, uint64_t seed,
                                           bool bf16_as_u2 = false);

// The embedded synthetic dataset (synth::default_planted_config()), an endless seeded stream.
std::unique_ptr<ActivationSource> open_synthetic(uint64_t seed);

// Training defaults on the embedded synthetic dataset (its planted dictionary has 256 features in d=64,
// about 2.1 active per row): sized so that `msae train --out DIR` finishes in well under a minute on two
// cores and recovers most planted features. Used by the CLI and by the recovery test.
struct SyntheticDefaults {
  static constexpr int64_t d_sae = 512;
  static constexpr int64_t k = 3;
  static constexpr int64_t batch = 1024;
  static constexpr int64_t steps = 2400;
};

// Throws a runtime error naming `what` and the absolute row if a row of batch (B, d) has NaN/Inf.
// first_row: absolute index of the batch's row 0 (or the row ids when given).
void check_finite(const float* batch, int64_t B, int64_t d, const std::string& what, const int64_t* row_ids);

}  // namespace msae::data
