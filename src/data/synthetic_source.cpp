#include "msae/data.h"
#include "msae/io.h"
#include "msae/synth.h"

namespace msae::data {
namespace {

class SyntheticSource final : public ActivationSource {
 public:
  explicit SyntheticSource(uint64_t seed)
      : dict_(synth::make_planted(synth::default_planted_config())), sampler_(dict_, seed), seed_(seed) {}

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
  nlohmann::json state() const override {
    return {{"position", position_}, {"seed", seed_}, {"rng", sampler_.rng_state()}};
  }
  void set_state(const nlohmann::json& j) override {
    try {
      if (io::json_uint64(j.at("seed"), "checkpoint data position \"seed\"") != seed_)
        runtime_error("checkpoint data position: synthetic seed ", io::json_uint64(j.at("seed"), "checkpoint data position \"seed\""), " but this run has ", seed_);
      position_ = io::json_int(j.at("position"), "checkpoint data position \"position\"");
      sampler_.set_rng_state(io::json_uint64_vector(j.at("rng"), "checkpoint data position \"rng\""));
    } catch (const nlohmann::json::exception& e) {
      runtime_error("checkpoint data position is malformed: ", e.what());
    }
  }

 private:
  synth::PlantedDictionary dict_;
  synth::PlantedSampler sampler_;
  uint64_t seed_;
  int64_t position_ = 0;
};

}  // namespace

std::unique_ptr<ActivationSource> open_synthetic(uint64_t seed) { return std::make_unique<SyntheticSource>(seed); }

}  // namespace msae::data
