// The `cuda` training engine (msae/cuda.h, docs/cuda.md): train::Engine over a cuda::DeviceStep. The
// parameters, gradients, Adam moments, dead counters and threshold live on the device between steps; the host
// keeps the options, the Adam step count, the variant state (threshold schedule) and mirrors of the device
// state that are filled only when a host view is asked for (checkpoints, evaluation, export). Compiled into
// msae_train only when msae is built with -DMSAE_CUDA=ON.
#include <algorithm>
#include <vector>

#include "msae/cuda.h"
#include "msae/engine.h"

namespace msae::train {
namespace {

class CudaEngine final : public Engine {
 public:
  CudaEngine(const TrainOptions& options, SaeParams params)
      : options_(options),
        dev_(params.d, params.D, options.batch, cuda::parse_precision(options.cuda_precision)),
        d_(params.d),
        D_(params.D) {
    MSAE_ASSERT(params.d == options_.sae.d_in && params.D == options_.sae.d_sae);
    rule_ = params.rule;
    dev_.upload_params(params);
    dev_.upload_moments(nullptr, nullptr);
    dev_.upload_counters(std::vector<int64_t>(static_cast<size_t>(D_), 0));
    variants_ = VariantState(options_.sae, options_.seed);
  }

  const char* name() const override { return "cuda"; }

  const StepStats& step(const float* x) override {
    if (host_params_newer_) {
      dev_.upload_params(host_);
      host_params_newer_ = false;
    }
    if (t_ == 0 && options_.bdec_geometric_median) {
      const std::vector<float> m = geometric_median(x, options_.batch, d_);
      dev_.set_b_dec(m.data());
    }
    const SaeConfig& cfg = variants_.before_step(options_.sae, flags_);
    stats_ = dev_.forward_backward(cfg, x, flags_.update_threshold);
    kernels::AdamHyper adam = options_.adam;
    if (options_.lr_warmup_steps > 0 || options_.lr_decay_start >= 0)
      adam.lr = static_cast<float>(adam.lr * lr_factor(options_, t_));
    grad_norm_ = dev_.update(cfg, adam, options_.max_grad_norm, t_ + 1);
    ++t_;
    // No variant the engine implements changes parameters after the step (reordering is refused), so the
    // variant state only counts the step.
    variants_.after_step(options_.sae, stats_, unused_params_, unused_opt_, flags_);
    params_fresh_ = opt_fresh_ = latents_fresh_ = false;
    return stats_;
  }

  const SaeParams& params() const override {
    if (!params_fresh_ && !host_params_newer_) {
      dev_.download_params(host_);
      host_.rule = rule_;
      params_fresh_ = true;
    }
    return host_;
  }
  SaeParams& mutable_params() override {
    params();
    host_params_newer_ = true;  // uploaded before the next step
    return host_;
  }
  const LatentState& latent_state() const override {
    if (!latents_fresh_) {
      dev_.download_counters(host_latents_.n_inactive);
      latents_fresh_ = true;
    }
    return host_latents_;
  }
  const AdamState& optimizer() const override {
    host_opt_.t = t_;
    if (t_ == 0) {  // no step yet: no moments (as the host engines)
      host_opt_.m = host_opt_.v = SaeGrads{};
    } else if (!opt_fresh_) {
      dev_.download_moments(host_opt_.m, host_opt_.v);
      opt_fresh_ = true;
    }
    return host_opt_;
  }
  const VariantState& variant_state() const override { return variants_; }
  double last_grad_norm() const override { return grad_norm_; }
  float threshold() const override { return host_params_newer_ ? host_.threshold : dev_.threshold(); }

  void restore(SaeParams params, AdamState opt, LatentState latents) override {
    MSAE_ASSERT(params.d == d_ && params.D == D_);
    MSAE_ASSERT(static_cast<int64_t>(latents.n_inactive.size()) == D_);
    rule_ = params.rule;
    dev_.upload_params(params);
    if (opt.m.W_dec.data.empty()) dev_.upload_moments(nullptr, nullptr);
    else dev_.upload_moments(&opt.m, &opt.v);
    dev_.upload_counters(latents.n_inactive);
    t_ = opt.t;
    host_params_newer_ = false;
    params_fresh_ = opt_fresh_ = latents_fresh_ = false;
  }
  void restore_variants(const nlohmann::json& state) override { variants_.restore(state); }
  std::vector<std::pair<std::string, double>> last_phase_seconds() const override { return dev_.last_phase_seconds(); }

  cuda::DeviceStep& device() { return dev_; }

 private:
  TrainOptions options_;
  mutable cuda::DeviceStep dev_;
  int64_t d_, D_;
  int64_t t_ = 0;
  EncodeRule rule_;
  LatentState flags_;  // update_threshold, set by the variant state each step (the counters are on the device)
  StepStats stats_;
  double grad_norm_ = 0;
  VariantState variants_;
  SaeParams unused_params_;
  AdamState unused_opt_;
  // host mirrors
  mutable SaeParams host_;
  mutable AdamState host_opt_;
  mutable LatentState host_latents_;
  mutable bool params_fresh_ = false, opt_fresh_ = false, latents_fresh_ = false;
  bool host_params_newer_ = false;
};

// The forward/backward as a host StepEngine: the state comes from and goes back to host memory on every call.
class CudaStepKernel final : public StepEngine {
 public:
  const char* name() const override { return "cuda"; }
  std::string unsupported(const SaeConfig& cfg) const override { return cuda_engine_unsupported(cfg); }
  const StepStats& forward_backward(const SaeConfig& cfg, const float* x, int64_t B, SaeParams& params,
                                    LatentState& state, SaeGrads& grads) override {
    if (!dev_ || dev_->d() != params.d || dev_->D() != params.D || dev_->B() != B)
      dev_ = std::make_unique<cuda::DeviceStep>(params.d, params.D, B);
    state.n_inactive.resize(static_cast<size_t>(params.D), 0);
    dev_->upload_params(params);
    dev_->upload_counters(state.n_inactive);
    stats_ = dev_->forward_backward(cfg, x, state.update_threshold);
    dev_->download_grads(grads);
    dev_->download_counters(state.n_inactive);
    params.threshold = dev_->threshold();
    dev_->download_codes(codes_, aux_);
    return stats_;
  }
  std::vector<std::pair<std::string, double>> last_phase_seconds() const override {
    return dev_ ? dev_->last_phase_seconds() : std::vector<std::pair<std::string, double>>{};
  }
  const kernels::SparseCodes* last_codes() const override { return &codes_; }
  const kernels::SparseCodes* last_aux_codes() const override { return &aux_; }

 private:
  std::unique_ptr<cuda::DeviceStep> dev_;
  StepStats stats_;
  kernels::SparseCodes codes_, aux_;
};

}  // namespace

std::string cuda_engine_unsupported(const SaeConfig& cfg) {
  if (const std::string why = cuda::unavailable(); !why.empty()) return "anything on this machine: " + why;
  return cuda::unsupported(cfg);
}

std::unique_ptr<Engine> make_cuda_engine(const TrainOptions& options, SaeParams params) {
  return std::make_unique<CudaEngine>(options, std::move(params));
}

std::unique_ptr<StepEngine> make_cuda_step() { return std::make_unique<CudaStepKernel>(); }

CudaBenchResult bench_cuda(const TrainOptions& options, SaeParams params, const std::vector<std::vector<float>>& batches,
                           int warmup, int steps) {
  MSAE_ASSERT(!batches.empty() && steps >= 1 && warmup >= 0);
  if (const std::string why = cuda_engine_unsupported(options.sae); !why.empty())
    usage_error("--engine cuda does not implement ", why);
  CudaBenchResult out;
  out.device = cuda::device_info();
  out.precision = cuda::precision_name(cuda::parse_precision(options.cuda_precision));
  CudaEngine engine(options, std::move(params));
  size_t next = 0;
  for (int i = 0; i < warmup; ++i) engine.step(batches[next++ % batches.size()].data());
  for (int i = 0; i < steps; ++i) {
    Timer t;
    out.last = engine.step(batches[next++ % batches.size()].data());  // synchronizes at its end
    out.step_samples.push_back(t.seconds());
  }
  out.phases = engine.last_phase_seconds();
  std::vector<double> s = out.step_samples;
  std::sort(s.begin(), s.end());
  out.step_s = s[s.size() / 2];
  out.gemm_s = engine.device().time_encoder_gemm(std::max(3, steps));
  return out;
}

}  // namespace msae::train
