#include "msae/data.h"
#include "msae/synth.h"

namespace msae::data {
namespace {

class SyntheticSource final : public ActivationSource {
 public:
  explicit SyntheticSource(uint64_t seed)
      : dict_(synth::make_planted(synth::default_planted_config())), sampler_(dict_, seed) {}

  int64_t d() const override { return dict_.cfg.d; }
  int64_t rows() const override { return -1; }
  int64_t position() const override { return position_; }
  std::string describe() const override {
    return cat("embedded synthetic data (planted dictionary: ", dict_.n_features(), " features in d=", dict_.cfg.d,
               ", ", dict_.cfg.n_roots, " parents with ", dict_.cfg.children_per_root, " children each, ",
               sampler_.mean_active(), " active per row on average)");
  }
  void next_batch(int64_t B, float* out) override {
    sampler_.sample(B, out);
    position_ += B;
  }

 private:
  synth::PlantedDictionary dict_;
  synth::PlantedSampler sampler_;
  int64_t position_ = 0;
};

}  // namespace

std::unique_ptr<ActivationSource> open_synthetic(uint64_t seed) { return std::make_unique<SyntheticSource>(seed); }

}  // namespace msae::data
