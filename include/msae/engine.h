// msae train engines: the object that owns a run's whole training state (parameters, gradients, Adam
// moments, dead counters, variant state) and takes whole optimizer steps in its own memory, and the
// registry of named engines (`--engine`). train::Trainer is a thin front end over one Engine.
//
// A host engine (HostEngine below) keeps everything in host memory and wraps one StepEngine (model.h,
// the forward + loss + backward kernel); both built-in engines ("reference", "sparse") are host engines.
// An engine whose state lives elsewhere (a GPU, MPI processes) implements Engine directly: it hands
// parameters out only through the accessors below (checkpoints, evaluation, export), never per step.
// The sharded engine (src/train/sharded_engine.cpp: the sparse step over latent shards on the processes of
// an MPI job) gathers them onto the root process: its accessors are collective calls, every process making
// them in the same order, and the views are whole on the root only (docs/distributed.md).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "msae/model.h"
#include "msae/train.h"

namespace msae::train {

class Engine {
 public:
  virtual ~Engine() = default;
  virtual const char* name() const = 0;

  // One whole optimizer step on x (B, d), B = options.batch, x in host memory: before the first step the
  // geometric-median b_dec init (options.bdec_geometric_median); the variant config of this batch; forward,
  // loss, backward (threshold EMA, dead counters); the lr schedule; clip, decoder constraint, Adam; then the
  // variants' after-step work (adaptive L1, reordering means, latent permutation). The statistics live in
  // the engine until its next step.
  virtual const StepStats& step(const float* x) = 0;

  // Host views of the state, for checkpoints, evaluation and export (not for per-step use): a device engine
  // synchronizes a host mirror on each call. Valid until the next step() or restore().
  virtual const SaeParams& params() const = 0;
  // A writable host view of the parameters (train::Trainer::params(), used by the Python module to fold
  // the input scale into the final weights and to move them out). A device engine treats the host copy as
  // the newer one from this call on and uploads it before its next step.
  virtual SaeParams& mutable_params() = 0;
  virtual const LatentState& latent_state() const = 0;
  virtual const AdamState& optimizer() const = 0;
  virtual const VariantState& variant_state() const = 0;
  virtual double last_grad_norm() const = 0;  // the global gradient norm of the last step, before clipping
  // The inference threshold (params().threshold) without a host view of the whole state (per log line).
  virtual float threshold() const { return params().threshold; }

  // Replaces the training state with a checkpoint's (parameters, Adam moments and step, dead counters);
  // the next step() continues exactly as the engine that saved them would have.
  virtual void restore(SaeParams params, AdamState opt, LatentState latents) = 0;
  // A checkpoint's variant state (VariantState::state_json), after restore().
  virtual void restore_variants(const nlohmann::json& state) = 0;

  // Seconds per phase of the last step's forward/backward (empty if not measured).
  virtual std::vector<std::pair<std::string, double>> last_phase_seconds() const { return {}; }
  // The forward/backward kernel of a host or sharded engine (its last codes, for tests); nullptr otherwise.
  virtual const StepEngine* step_kernel() const { return nullptr; }
};

// The host engine: all state in host memory, the forward/backward of `kernel`, and the shared host update
// (train::apply_update), lr schedule and VariantState. `options` must be finalized (options.sae.finalize())
// and params must match options.sae's d_in and d_sae. Allocates nothing per step once the kernel's buffers
// have grown.
class HostEngine final : public Engine {
 public:
  HostEngine(const TrainOptions& options, SaeParams params, std::unique_ptr<StepEngine> kernel);
  const char* name() const override { return kernel_->name(); }
  const StepStats& step(const float* x) override;
  const SaeParams& params() const override { return params_; }
  SaeParams& mutable_params() override { return params_; }
  const LatentState& latent_state() const override { return latents_; }
  const AdamState& optimizer() const override { return opt_; }
  const VariantState& variant_state() const override { return variants_; }
  double last_grad_norm() const override { return grad_norm_; }
  void restore(SaeParams params, AdamState opt, LatentState latents) override;
  void restore_variants(const nlohmann::json& state) override { variants_.restore(state); }
  std::vector<std::pair<std::string, double>> last_phase_seconds() const override {
    return kernel_->last_phase_seconds();
  }
  const StepEngine* step_kernel() const override { return kernel_.get(); }

 private:
  TrainOptions options_;
  std::unique_ptr<StepEngine> kernel_;
  SaeParams params_;
  SaeGrads grads_;
  AdamState opt_;
  LatentState latents_;
  StepStats stats_;
  double grad_norm_ = 0;
  VariantState variants_;
};

// One whole optimizer step of a host engine on `params` (the whole SAE, or a shard of it), as Engine::step
// describes it. `median`, when set, gives the geometric-median b_dec of the first batch (the sharded engine's
// is computed on one process and sent). Returns the global gradient norm before clipping.
double host_step(const TrainOptions& options, StepEngine& kernel, const float* x, SaeParams& params, SaeGrads& grads,
                 AdamState& opt, LatentState& latents, VariantState& variants, StepStats& stats,
                 const std::function<std::vector<float>(const float* x)>& median = {});

// ---- The engine registry. `--engine NAME` picks an entry; tests loop over engine_names().
struct EngineEntry {
  std::string name;
  std::string description;  // one line, shown when --engine names no registered engine
  // The forward/backward kernel as a host StepEngine (gradient checks, the PyTorch fixtures, `msae bench`,
  // and the host engine). `sparse` is TrainOptions::sparse_engine (only the sparse engine reads it).
  std::function<std::unique_ptr<StepEngine>(const SparseEngineOptions& sparse)> make_step;
  // The whole training engine for finalized options. Empty: a HostEngine around make_step's kernel.
  std::function<std::unique_ptr<Engine>(const TrainOptions& options, SaeParams params)> make;
  // Empty when the engine implements every option of cfg (a finalized config); otherwise the options it
  // does not implement (train::Trainer turns that into a usage error naming the engine).
  std::function<std::string(const SaeConfig& cfg)> unsupported;
};

// Every registered engine, in registration order: the built-in "reference" (first: the oracle) and
// "sparse", then those added by register_engine. References and pointers into it (and find_engine's)
// stay valid until the next register_engine or unregister_engine.
const std::vector<EngineEntry>& engine_registry();
// Adds an engine (a test build's, a plugin's). The name must be new and make_step and unsupported set
// (MSAE_ASSERT). Not thread-safe: register before any thread reads the registry.
void register_engine(EngineEntry entry);
// Removes a registered engine by name (tests that registered one); false when there was none. The
// built-in engines cannot be removed (MSAE_ASSERT).
bool unregister_engine(const std::string& name);
// The entry called `name`; a usage error listing every registered engine (with its description) otherwise.
const EngineEntry& find_engine(const std::string& name);
// The whole training engine `options.engine` for finalized options: a usage error for an unknown name or
// a configuration the engine does not implement ("--engine NAME does not implement ...").
// Under an MPI launch with more than one process (comm::world().size() > 1) it is the sharded engine, which
// only --engine sparse has; every process passes the same whole initial params and keeps its shard.
std::unique_ptr<Engine> make_training_engine(const TrainOptions& options, SaeParams params);
// The sparse step over latent shards on the processes of `comm` (docs/distributed.md).
std::unique_ptr<Engine> make_sharded_engine(const TrainOptions& options, SaeParams params, comm::Comm& comm);

}  // namespace msae::train
