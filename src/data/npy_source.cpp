#include <cmath>
#include <numeric>

#include "msae/data.h"
#include "msae/io.h"

namespace msae::data {

void check_finite(const float* batch, int64_t B, int64_t d, const std::string& what, const int64_t* row_ids) {
  for (int64_t r = 0; r < B; ++r)
    for (int64_t j = 0; j < d; ++j)
      if (!std::isfinite(batch[r * d + j]))
        runtime_error(what, ": row ", row_ids ? row_ids[r] : r, " column ", j, " is ", batch[r * d + j],
                      "; activations must be finite (clean or drop that row)");
}

namespace {

class NpySource final : public ActivationSource {
 public:
  NpySource(const std::string& path, bool shuffle, uint64_t seed, bool bf16)
      : rows_(path, bf16), shuffle_(shuffle), rng_(seed) {
    if (rows_.rows() == 0) runtime_error(path, ": the array has 0 rows; nothing to train on");
    if (rows_.cols() == 0) runtime_error(path, ": the array has 0 columns");
    if (shuffle_) new_epoch();
  }

  int64_t d() const override { return rows_.cols(); }
  int64_t rows() const override { return rows_.rows(); }
  int64_t position() const override { return position_; }
  std::string describe() const override {
    return cat(rows_.path(), " (", rows_.rows(), " x ", rows_.cols(), ", ", io::dtype_name(rows_.dtype()),
               shuffle_ ? ", shuffled" : ", file order", ")");
  }

  void next_batch(int64_t B, float* out) override {
    ids_.resize(B);
    const int64_t N = rows_.rows();
    for (int64_t r = 0; r < B; ++r) {
      const int64_t in_epoch = (position_ + r) % N;
      if (shuffle_ && in_epoch == 0 && position_ + r > 0) new_epoch();
      ids_[r] = shuffle_ ? order_[in_epoch] : in_epoch;
    }
    rows_.gather_rows(ids_.data(), B, out);
    check_finite(out, B, rows_.cols(), rows_.path(), ids_.data());
    position_ += B;
  }

 private:
  void new_epoch() {
    order_.resize(rows_.rows());
    std::iota(order_.begin(), order_.end(), 0);
    shuffle_indices(order_, rng_);
  }

  io::NpyRows rows_;
  bool shuffle_;
  Rng rng_;
  std::vector<int64_t> order_;  // (N) this epoch's permutation
  std::vector<int64_t> ids_;    // (B) rows of the current batch
  int64_t position_ = 0;
};

}  // namespace

std::unique_ptr<ActivationSource> open_npy(const std::string& path, bool shuffle, uint64_t seed, bool bf16_as_u2) {
  return std::make_unique<NpySource>(path, shuffle, seed, bf16_as_u2);
}

}  // namespace msae::data
