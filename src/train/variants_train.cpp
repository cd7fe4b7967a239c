// The training-time side of the variants (docs/variants.md): sampled prefixes per batch, latent
// reordering, the adaptive L1 coefficient, and the variants' part of msae.json's config.
#include <algorithm>
#include <cmath>

#include "msae/io.h"
#include "msae/train.h"

namespace msae::train {

using nlohmann::json;

VariantState::VariantState(const SaeConfig& cfg, uint64_t seed)
    : step_cfg_(cfg), rng_(seed ^ 0x5a3d'9e1b'47c2'0f61ULL), l1_coef_(cfg.l1_coef) {}

const SaeConfig& VariantState::before_step(const SaeConfig& cfg, LatentState& latents) {
  latents.update_threshold = step_ >= cfg.threshold_start_step;
  if (cfg.arch == Arch::relu_l1) {
    // Linear warm-up of the coefficient (Nabeshima: coef * step / warmup during the first warmup steps).
    const double ramp = cfg.l1_warmup_steps > 0 && step_ < cfg.l1_warmup_steps
                            ? static_cast<double>(step_ + 1) / static_cast<double>(cfg.l1_warmup_steps)
                            : 1.0;
    latents.l1_coef = l1_coef_ * ramp;
  }
  if (cfg.sampled_prefixes <= 0) return cfg;
  step_cfg_ = cfg;
  step_cfg_.group_sizes = sample_prefix_sizes(cfg, rng_);
  step_cfg_.sampled_prefixes = 0;  // this batch's config is a plain fixed-group one
  return step_cfg_;
}

void permute_training_state(const std::vector<int64_t>& perm, SaeParams& p, AdamState& opt, LatentState& latents) {
  permute_latents(p, perm);
  for (SaeGrads* g : {&opt.m, &opt.v}) {
    if (g->W_dec.data.empty()) continue;  // no step taken yet
    permute_rows(g->W_enc_t.ptr(), p.D, p.d, perm);
    permute_rows(g->W_dec.ptr(), p.D, p.d, perm);
    permute_rows(g->b_enc.ptr(), p.D, 1, perm);
  }
  std::vector<int64_t> n(latents.n_inactive);
  for (size_t j = 0; j < perm.size(); ++j) latents.n_inactive[j] = n[perm[j]];
}

void VariantState::after_step(const SaeConfig& cfg, const StepStats& stats, SaeParams& params, AdamState& opt,
                              LatentState& latents) {
  ++step_;
  if (cfg.arch == Arch::relu_l1 && step_ > cfg.l1_warmup_steps) {
    // Nabeshima's SparsityLossController: multiply by (1 + rate) when L0 >= target, else by (1 - rate).
    l1_coef_ *= stats.l0 >= static_cast<double>(cfg.k) ? 1.0 + cfg.l1_adapt_rate : 1.0 - cfg.l1_adapt_rate;
  }
  if (cfg.reorder_every > 0) {
    MSAE_ASSERT(static_cast<int64_t>(latents.batch_sq_act.size()) == params.D, "engine did not fill batch_sq_act");
    sq_act_mean_.resize(params.D, 0.0);
    const double a = cfg.reorder_decay;
    for (int64_t i = 0; i < params.D; ++i) sq_act_mean_[i] = a * sq_act_mean_[i] + (1.0 - a) * latents.batch_sq_act[i];
    if (step_ % cfg.reorder_every == 0) {
      const std::vector<int64_t> perm = descending_order(sq_act_mean_);
      bool identity = true;
      for (size_t j = 0; j < perm.size() && identity; ++j) identity = perm[j] == static_cast<int64_t>(j);
      if (!identity) {
        permute_training_state(perm, params, opt, latents);
        std::vector<double> m(sq_act_mean_);
        for (size_t j = 0; j < perm.size(); ++j) sq_act_mean_[j] = m[perm[j]];
        ++permutations_;
      }
    }
  }
}

json VariantState::state_json() const {
  return {{"step", step_},
          {"permutations", permutations_},
          {"l1_coef", l1_coef_},
          {"rng", rng_.state()},
          {"sq_act_mean", sq_act_mean_}};
}

void VariantState::restore(const json& s) {
  try {
    step_ = io::json_int(s.at("step"), "checkpoint variant state \"step\"");
    permutations_ = io::json_int(s.at("permutations"), "checkpoint variant state \"permutations\"");
    l1_coef_ = io::json_double(s.at("l1_coef"), "checkpoint variant state \"l1_coef\"");
    rng_.set_state(io::json_uint64_vector(s.at("rng"), "checkpoint variant state \"rng\""));
    sq_act_mean_ = io::json_double_vector(s.at("sq_act_mean"), "checkpoint variant state \"sq_act_mean\"");
  } catch (const json::exception& e) {
    runtime_error("checkpoint: malformed variant state (", e.what(), ")");
  }
}

double lr_factor(const TrainOptions& o, int64_t t) {
  double f = 1.0;
  if (o.lr_warmup_steps > 0 && t < o.lr_warmup_steps) f = static_cast<double>(t + 1) / static_cast<double>(o.lr_warmup_steps);
  if (o.lr_decay_start >= 0 && t >= o.lr_decay_start && o.steps > o.lr_decay_start)
    f = std::min(f, static_cast<double>(o.steps - t) / static_cast<double>(o.steps - o.lr_decay_start));
  return f;
}

}  // namespace msae::train
