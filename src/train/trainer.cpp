#include "msae/train.h"

namespace msae::train {

std::vector<std::string> engine_names() { return {"reference", "sparse"}; }

std::unique_ptr<StepEngine> make_engine(const std::string& name) {
  if (name == "reference") return make_reference_engine();
  if (name == "sparse") return make_sparse_engine();
  usage_error("--engine: unknown training engine '", name, "'; expected: sparse (the fast default) or reference");
}

Trainer::Trainer(TrainOptions options, SaeParams params)
    : options_(std::move(options)), params_(std::move(params)), engine_(make_engine(options_.engine)) {
  options_.sae.finalize();
  MSAE_ASSERT(params_.d == options_.sae.d_in && params_.D == options_.sae.d_sae);
  grads_ = SaeGrads::zeros(params_.d, params_.D);
  latents_.n_inactive.assign(params_.D, 0);
}

const StepStats& Trainer::step(const float* x) {
  stats_ = engine_->forward_backward(options_.sae, x, options_.batch, params_, latents_, grads_);
  grad_norm_ = apply_update(options_.sae, options_.adam, options_.max_grad_norm, params_, grads_, opt_);
  return stats_;
}

}  // namespace msae::train
