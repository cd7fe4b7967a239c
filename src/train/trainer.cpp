#include <algorithm>

#include "msae/engine.h"
#include "msae/io.h"
#include "msae/sae_dir.h"
#include "msae/train.h"

namespace msae::train {

Trainer::Trainer(TrainOptions options, SaeParams params) : options_(std::move(options)) {
  find_engine(options_.engine);  // an unknown name is the first error, before the config's
  options_.sae.finalize();
  engine_ = make_training_engine(options_, std::move(params));
}

Trainer::Trainer(Trainer&&) noexcept = default;
Trainer& Trainer::operator=(Trainer&&) noexcept = default;
Trainer::~Trainer() = default;

const StepStats& Trainer::step(const float* x) { return engine_->step(x); }
const SaeParams& Trainer::params() const { return engine_->params(); }
SaeParams& Trainer::params() { return engine_->mutable_params(); }
const LatentState& Trainer::latent_state() const { return engine_->latent_state(); }
const AdamState& Trainer::optimizer() const { return engine_->optimizer(); }
double Trainer::last_grad_norm() const { return engine_->last_grad_norm(); }
float Trainer::threshold() const { return engine_->threshold(); }
const VariantState& Trainer::variant_state() const { return engine_->variant_state(); }
void Trainer::restore_variants(const nlohmann::json& state) { engine_->restore_variants(state); }

void Trainer::restore(SaeParams params, AdamState opt, LatentState latents) {
  engine_->restore(std::move(params), std::move(opt), std::move(latents));
}

std::string engine_kernel(const Trainer& trainer) {
  const StepEngine* k = trainer.engine().step_kernel();
  return k ? k->kernel_info() : std::string();
}

std::vector<std::pair<std::string, double>> engine_counters(const Trainer& trainer) {
  const StepEngine* k = trainer.engine().step_kernel();
  return k ? k->last_counters() : std::vector<std::pair<std::string, double>>{};
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
          {"data_normalization", {{"method", f.normalize}, {"scale", json_number(static_cast<float>(f.scale))}, {"folded_into_weights", true}}},
          {"training",
           {{"completed", f.completed},
            {"steps", f.steps},
            {"steps_planned", f.steps_planned},
            {"tokens", f.steps * opt.batch},
            {"batch", opt.batch},
            {"lr", json_number(opt.adam.lr)},
            {"beta1", json_number(opt.adam.beta1)},
            {"beta2", json_number(opt.adam.beta2)},
            {"eps", json_number(opt.adam.eps)},
            {"max_grad_norm", json_number(opt.max_grad_norm)},
            {"seed", f.seed},
            {"shuffle", f.shuffle},
            {"data", f.data},
            {"epochs", f.epochs},
            {"nonfinite_rows_skipped", f.nonfinite_rows_skipped},
            {"init", f.init},
            {"engine", opt.engine},
            {"engine_kernel", engine_kernel(trainer)},
            {"blas", kernels::blas_info()},
            {"threads", num_threads()},
            {"seconds", f.seconds},
            {"tokens_per_s", f.tokens_per_s},
            {"threshold", json_number(trainer.params().threshold)},
            {"dead_latents_at_end", dead}}}};
}

void MetricsInterval::add(const StepStats& s) {
  steps += 1;
  loss += s.loss;
  l_aux += s.l_aux;
  fvu += s.var_x > 0 ? s.mse_prefix.back() / s.var_x : 0.0;
  l0 += s.l0;
  mse_prefix.resize(s.mse_prefix.size(), 0.0);
  fvu_prefix.resize(s.mse_prefix.size(), 0.0);
  for (size_t g = 0; g < s.mse_prefix.size(); ++g) {
    mse_prefix[g] += s.mse_prefix[g];
    fvu_prefix[g] += s.var_x > 0 ? s.mse_prefix[g] / s.var_x : 0.0;
  }
}

nlohmann::json MetricsInterval::to_json() const {
  const double n = static_cast<double>(std::max<int64_t>(steps, 1));
  std::vector<double> prefix(mse_prefix), fvus(fvu_prefix);
  for (double& v : prefix) v /= n;
  for (double& v : fvus) v /= n;
  return {{"loss", loss / n}, {"l_aux", l_aux / n}, {"fvu", fvu / n},
          {"l0", l0 / n},     {"mse_prefix", prefix}, {"fvu_prefix", fvus}};
}

nlohmann::json MetricsInterval::state_json() const {
  return {{"steps", steps}, {"loss", loss},           {"l_aux", l_aux},          {"fvu", fvu},
          {"l0", l0},       {"mse_prefix", mse_prefix}, {"fvu_prefix", fvu_prefix}};
}

MetricsInterval MetricsInterval::from_state_json(const nlohmann::json& j, const std::string& what) {
  MetricsInterval m;
  m.steps = io::json_int(j.at("steps"), what + " \"steps\"", 0);
  m.loss = io::json_double(j.at("loss"), what + " \"loss\"");
  m.l_aux = io::json_double(j.at("l_aux"), what + " \"l_aux\"");
  m.fvu = io::json_double(j.at("fvu"), what + " \"fvu\"");
  m.l0 = io::json_double(j.at("l0"), what + " \"l0\"");
  m.mse_prefix = io::json_double_vector(j.at("mse_prefix"), what + " \"mse_prefix\"");
  // (checkpoints written before fvu_prefix existed: the interval's per-prefix FVU starts from zero sums, so
  // the first line after such a resume under-reports it; every later line is exact)
  if (j.contains("fvu_prefix")) m.fvu_prefix = io::json_double_vector(j.at("fvu_prefix"), what + " \"fvu_prefix\"");
  return m;
}

}  // namespace msae::train
