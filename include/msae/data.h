// msae data: activation sources that fill (B, d) float32 batches.
//
// File sources (docs/data.md): a .npy, .safetensors or raw little-endian file, a directory of such
// shards, or a glob. Every shard is memory-mapped; rows are converted to float32 as they are read.
// Three read orders, all seeded and exactly resumable from state():
//   - file order (shuffle = false): the shards' rows in order, wrapping at the end;
//   - permutation (shuffle_buffer = 0): each epoch visits every row once in a fresh seeded permutation
//     (random access: fits data that the page cache holds);
//   - streaming shuffle buffer (shuffle_buffer = S > 0): each epoch reads every shard in blocks of about
//     4 MiB, in a seeded permutation of all blocks of all shards, into a buffer of S rows; each batch row
//     is a uniformly drawn buffer row, replaced by the next streamed row. Memory: S * d * 4 bytes plus
//     8 bytes per buffered row id, plus one block per shard in flight; pages of consumed blocks are
//     dropped (MADV_DONTNEED), so the resident set does not grow with the data.
// With a reader thread (prefetch_batch = B > 0), batches are prepared ahead in a ring of 3 slots of
// (B, d) floats; the consumer only copies one out.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "msae/core.h"

namespace msae::data {

// What a source counted so far (for logs, msae.json and the loader measurements of docs/data.md).
struct DataStats {
  int64_t rows_out = 0;             // rows handed out
  int64_t nonfinite_skipped = 0;    // distinct rows dropped for NaN/Inf (on_nonfinite = skip)
  std::string first_skipped;        // "FILE row R" of the first one
  double epochs = 0;                // rows read from the data / rows in the data
  double wait_seconds = 0;          // time next_batch waited for the reader thread
  double reader_busy_seconds = 0;   // time the reader thread spent reading and converting
  int64_t batches = 0;              // batches handed out
};

class ActivationSource {
 public:
  virtual ~ActivationSource() = default;
  virtual int64_t d() const = 0;
  // Rows available (one epoch); -1 for an endless generator.
  virtual int64_t rows() const = 0;
  // Fill out (B, d) with the next B rows. Throws msae::Error (runtime) on bad data (non-finite values,
  // naming the file and row). A source with a reader thread accepts only its prefetch batch size.
  virtual void next_batch(int64_t B, float* out) = 0;
  virtual std::string describe() const = 0;
  // Rows handed out so far (the data position; for logs and resume).
  virtual int64_t position() const = 0;
  // The read position as JSON, for checkpoints: a source reopened with the same data and options and
  // given this state continues with exactly the rows this one would have handed out next.
  virtual nlohmann::json state() const;
  // Restores state(); throws msae::Error (runtime) if it does not belong to this data and these options.
  virtual void set_state(const nlohmann::json& state);
  virtual DataStats stats() const;
};

enum class OnNonfinite { error, skip };
OnNonfinite parse_on_nonfinite(const std::string& name);  // "error" | "skip"; usage error otherwise

struct DataOptions {
  std::string dtype;            // --dtype: "" (as the file says; raw files: f32) | "f32" | "f16" | "bf16".
                                // .npy: "bf16" reads '<u2' as bfloat16; a mismatch with a header is an error.
  std::string tensor;           // --tensor: the .safetensors tensor; "" = the file's only 2-D tensor
  int64_t d_in = 0;             // --d-in: row width of raw files (required for them)
  bool shuffle = true;
  int64_t shuffle_buffer = -1;  // rows; 0 = full permutation; -1 = automatic (see open_data)
  uint64_t seed = 0;
  OnNonfinite on_nonfinite = OnNonfinite::error;
  float scale = 1.0f;           // every row is multiplied by this (activation normalization)
  int64_t prefetch_batch = 0;   // > 0: a reader thread prepares batches of this many rows ahead
  // Only rows [row_begin, row_end) of the data (all shards concatenated in order; row_end -1 = to the
  // end) exist for the source: how a training run holds out its evaluation rows (msae/run.h). rows(),
  // row ids in state() and every read order refer to the window.
  int64_t row_begin = 0, row_end = -1;
};

// Opens `spec`: a file (.npy, .safetensors; any other name is raw little-endian, d_in required), a
// directory (its .npy / .safetensors / .bin / .raw / .f32 / .f16 / .bf16 files, sorted by name), or a
// glob pattern (sorted). Every shard's header, dtype, width and size is checked up front; errors name the
// file. shuffle_buffer = -1 chooses the permutation when the data is at most 4 GiB on disk and a buffer of
// min(rows, 262144) otherwise.
std::unique_ptr<ActivationSource> open_data(const std::string& spec, const DataOptions& options);

// A float32 (N, d) array in caller memory (not copied; must outlive the source), read like one shard.
std::unique_ptr<ActivationSource> open_array(const float* rows, int64_t N, int64_t d, const std::string& name,
                                             const DataOptions& options);

// Compatibility: one .npy file with the permutation (shuffle) or file order.
std::unique_ptr<ActivationSource> open_npy(const std::string& path, bool shuffle, uint64_t seed,
                                           bool bf16_as_u2 = false);

// The embedded synthetic dataset (synth::default_planted_config()), an endless seeded stream.
std::unique_ptr<ActivationSource> open_synthetic(uint64_t seed);

// SAELens' expected_average_only_in scaling factor, sqrt(d) / mean_r ||x_r||, over the next `rows` rows
// of `source` (SAELens: the mean over batches of the mean row norm; same value with equal batches).
// After scaling, the mean row norm is sqrt(d), so the mean squared norm is about d.
double estimate_norm_scale(ActivationSource& source, int64_t rows);

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
// row_ids: the rows' ids (nullptr: 0..B-1).
void check_finite(const float* batch, int64_t B, int64_t d, const std::string& what, const int64_t* row_ids);

}  // namespace msae::data
