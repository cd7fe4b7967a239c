#include <algorithm>
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


void Trainer::restore(SaeParams params, AdamState opt, LatentState latents) {
  MSAE_ASSERT(params.d == params_.d && params.D == params_.D);
  MSAE_ASSERT(static_cast<int64_t>(latents.n_inactive.size()) == params_.D);
  params_ = std::move(params);
  opt_ = std::move(opt);
  latents_ = std::move(latents);
}

nlohmann::json config_json(const SaeConfig& c) {
  return {{"arch", arch_name(c.arch)},       {"d_in", c.d_in},
          {"d_sae", c.d_sae},                {"k", c.k},
          {"group_sizes", c.group_sizes},    {"group_boundaries", c.boundaries()},
          {"encoder_bias", c.encoder_bias},  {"dead_after_batches", c.dead_after_batches},
          {"aux_k", c.aux_k},                {"aux_coef", c.aux_coef}};
}

void MetricsInterval::add(const StepStats& s) {
  steps += 1;
  loss += s.loss;
  l_aux += s.l_aux;
  fvu += s.var_x > 0 ? s.mse_prefix.back() / s.var_x : 0.0;
  l0 += s.l0;
  mse_prefix.resize(s.mse_prefix.size(), 0.0);
  for (size_t g = 0; g < s.mse_prefix.size(); ++g) mse_prefix[g] += s.mse_prefix[g];
}

nlohmann::json MetricsInterval::to_json() const {
  const double n = static_cast<double>(std::max<int64_t>(steps, 1));
  std::vector<double> prefix(mse_prefix);
  for (double& v : prefix) v /= n;
  return {{"loss", loss / n}, {"l_aux", l_aux / n}, {"fvu", fvu / n}, {"l0", l0 / n}, {"mse_prefix", prefix}};
}

}  // namespace msae::train
