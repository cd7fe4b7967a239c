#include <algorithm>

#include "msae/io.h"
#include "msae/sae_dir.h"
#include "msae/train.h"

namespace msae::train {

std::vector<std::string> engine_names() { return {"reference", "sparse"}; }

std::unique_ptr<StepEngine> make_engine(const std::string& name, const SparseEngineOptions& sparse) {
  if (name == "reference") return make_reference_engine();
  if (name == "sparse") return make_sparse_engine(sparse);
  usage_error("--engine: unknown training engine '", name, "'; expected: sparse (the fast default) or reference");
}

Trainer::Trainer(TrainOptions options, SaeParams params)
    : options_(std::move(options)), params_(std::move(params)), engine_(make_engine(options_.engine, options_.sparse_engine)) {
  options_.sae.finalize();
  MSAE_ASSERT(params_.d == options_.sae.d_in && params_.D == options_.sae.d_sae);
  grads_ = SaeGrads::zeros(params_.d, params_.D);
  latents_.n_inactive.assign(params_.D, 0);
  if (const std::string why = engine_->unsupported(options_.sae); !why.empty())
    usage_error("--engine ", engine_->name(), " does not implement ", why, "; use --engine reference");
  variants_ = VariantState(options_.sae, options_.seed);
}

const StepStats& Trainer::step(const float* x) {
  if (opt_.t == 0 && options_.bdec_geometric_median)
  {
    const std::vector<float> median = geometric_median(x, options_.batch, params_.d);
    std::copy(median.begin(), median.end(), params_.b_dec.data.begin());
  }
  const SaeConfig& cfg = variants_.before_step(options_.sae, latents_);
  stats_ = engine_->forward_backward(cfg, x, options_.batch, params_, latents_, grads_);
  kernels::AdamHyper adam = options_.adam;
  if (options_.lr_warmup_steps > 0 || options_.lr_decay_start >= 0)
    adam.lr = static_cast<float>(adam.lr * lr_factor(options_, opt_.t));
  grad_norm_ = apply_update(cfg, adam, options_.max_grad_norm, params_, grads_, opt_);
  variants_.after_step(options_.sae, stats_, params_, opt_, latents_);
  return stats_;
}


void Trainer::restore(SaeParams params, AdamState opt, LatentState latents) {
  MSAE_ASSERT(params.d == params_.d && params.D == params_.D);
  MSAE_ASSERT(static_cast<int64_t>(latents.n_inactive.size()) == params_.D);
  params_ = std::move(params);
  opt_ = std::move(opt);
  latents_ = std::move(latents);
}

nlohmann::json run_record(const Trainer& trainer, const RunFacts& f) {
  const SaeConfig& cfg = trainer.options().sae;
  const TrainOptions& opt = trainer.options();
  const auto& n_inactive = trainer.latent_state().n_inactive;
  const int64_t dead = std::count_if(n_inactive.begin(), n_inactive.end(),
                                     [&](int64_t n) { return n >= cfg.dead_after_batches; });
  return {{"format", "msae-sae"},
          {"format_version", 1},
          {"msae_version", version_string()},
          {"git_commit", git_commit()},
          {"config", saedir::config_json(cfg)},
          {"data_normalization", {{"method", f.normalize}, {"scale", f.scale}, {"folded_into_weights", true}}},
          {"training",
           {{"completed", f.completed},
            {"steps", f.steps},
            {"steps_planned", f.steps_planned},
            {"tokens", f.steps * opt.batch},
            {"batch", opt.batch},
            {"lr", opt.adam.lr},
            {"beta1", opt.adam.beta1},
            {"beta2", opt.adam.beta2},
            {"eps", opt.adam.eps},
            {"max_grad_norm", opt.max_grad_norm},
            {"seed", f.seed},
            {"shuffle", f.shuffle},
            {"data", f.data},
            {"epochs", f.epochs},
            {"nonfinite_rows_skipped", f.nonfinite_rows_skipped},
            {"init", f.init},
            {"engine", opt.engine},
            {"threads", num_threads()},
            {"seconds", f.seconds},
            {"tokens_per_s", f.tokens_per_s},
            {"threshold", trainer.params().threshold},
            {"dead_latents_at_end", dead}}}};
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

nlohmann::json MetricsInterval::state_json() const {
  return {{"steps", steps}, {"loss", loss}, {"l_aux", l_aux}, {"fvu", fvu}, {"l0", l0}, {"mse_prefix", mse_prefix}};
}

MetricsInterval MetricsInterval::from_state_json(const nlohmann::json& j, const std::string& what) {
  MetricsInterval m;
  m.steps = io::json_int(j.at("steps"), what + " \"steps\"", 0);
  m.loss = io::json_double(j.at("loss"), what + " \"loss\"");
  m.l_aux = io::json_double(j.at("l_aux"), what + " \"l_aux\"");
  m.fvu = io::json_double(j.at("fvu"), what + " \"fvu\"");
  m.l0 = io::json_double(j.at("l0"), what + " \"l0\"");
  m.mse_prefix = io::json_double_vector(j.at("mse_prefix"), what + " \"mse_prefix\"");
  return m;
}

}  // namespace msae::train
