// msae train: the update rule (clip, decoder constraint, Adam), the trainer loop, the msae.json training
// record and checkpoints. The SAE directory itself (reading and writing SAEs) is the saedir module
// (msae/sae_dir.h), which train depends on.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "msae/core.h"
#include "msae/data.h"
#include "msae/kernels.h"
#include "msae/model.h"

namespace msae::train {

struct TrainOptions {
  SaeConfig sae;
  int64_t batch = 4096;          // B
  int64_t steps = 0;             // number of optimizer steps
  kernels::AdamHyper adam;       // lr 3e-4, betas (0.9, 0.99), eps 1e-8
  float max_grad_norm = 1e5f;
  uint64_t seed = 0;             // parameter init and data shuffling
  std::string engine = "reference";
  SparseEngineOptions sparse_engine;  // --engine sparse only: when AuxK runs as dense GEMMs
  // --engine cuda only: the encoder GEMM's input precision, "fp32" | "tf32" | "bf16" (docs/cuda.md); the
  // run layer refuses another value with another engine.
  std::string cuda_precision = "fp32";
  int64_t log_every = 0;         // metrics.jsonl interval in steps; 0 = automatic (about 100 lines a run)
  // Recipe options (docs/variants.md); the defaults are SPEC's (no schedule, b_dec starts at 0).
  bool bdec_geometric_median = false;  // set b_dec to the geometric median of the first batch before step 1
  int64_t lr_warmup_steps = 0;         // linear warm-up of lr over the first steps
  int64_t lr_decay_start = -1;         // >= 0: lr decays linearly to 0 from this step to `steps`
  float init_encoder_norm = 0.0f;      // > 0: SaeParams::init's encoder rows rescaled to this norm
};
// The learning-rate factor at 0-based step t (dictionary_learning's get_lr_schedule: warm-up, then decay).
double lr_factor(const TrainOptions& options, int64_t t);

// Adam moments for every trained tensor (same shapes as SaeGrads).
struct AdamState {
  SaeGrads m, v;
  int64_t t = 0;  // steps taken
};

// SPEC "Update", in order: clip the global gradient norm, remove the radial decoder-gradient component
// and renormalize W_dec rows, then Adam. b_enc is a trained tensor only with encoder_bias.
// Returns the global gradient norm before clipping.
double apply_update(const SaeConfig& cfg, const kernels::AdamHyper& adam, float max_grad_norm, SaeParams& params,
                    SaeGrads& grads, AdamState& opt);

// The forward/backward kernel of the registered engine `name` (engine.h: the registry; a usage error
// listing it for an unknown name); `sparse` configures the sparse engine (the reference engine has no
// options).
std::unique_ptr<StepEngine> make_engine(const std::string& name, const SparseEngineOptions& sparse = {});
std::vector<std::string> engine_names();  // every registered engine, the reference first; tests loop over this list

// Training-time state of the variants (docs/variants.md) that lives outside the engines: the per-batch
// groups of sampled prefixes, the running squared-activation means of latent reordering, and the adaptive
// L1 coefficient of relu_l1. Defaults (no variant) make before_step return the config unchanged and
// after_step do nothing.
class VariantState {
 public:
  VariantState() = default;
  VariantState(const SaeConfig& cfg, uint64_t seed);
  // The config for this batch's forward_backward (sampled group sizes when cfg.sampled_prefixes > 0);
  // sets latents.l1_coef for relu_l1.
  const SaeConfig& before_step(const SaeConfig& cfg, LatentState& latents);
  // After the update: adapts the L1 coefficient to the batch L0 (relu_l1; one step behind, as the
  // coefficient must be known before the step), updates the reordering means and, every
  // cfg.reorder_every steps, permutes the latents (parameters, Adam moments, counters, the means).
  void after_step(const SaeConfig& cfg, const StepStats& stats, SaeParams& params, AdamState& opt,
                  LatentState& latents);
  double l1_coef() const { return l1_coef_; }
  int64_t permutations() const { return permutations_; }
  const std::vector<double>& sq_act_mean() const { return sq_act_mean_; }
  // For checkpoints: everything above plus the sampler's RNG state, as JSON, and its inverse (a resumed
  // run then draws the same prefixes and keeps its L1 coefficient and reordering means).
  nlohmann::json state_json() const;
  void restore(const nlohmann::json& state);

 private:
  SaeConfig step_cfg_;
  Rng rng_{0};
  std::vector<double> sq_act_mean_;  // (D)
  int64_t step_ = 0, permutations_ = 0;
  double l1_coef_ = 0.0;
};

// Applies a latent permutation (new j = old perm[j]) to everything per-latent a trainer holds.
void permute_training_state(const std::vector<int64_t>& perm, SaeParams& params, AdamState& opt,
                            LatentState& latents);

// Running summary a trainer keeps for logs and the final report.
struct ProgressInfo {
  int64_t step = 0, steps = 0, tokens = 0;
  double seconds = 0, tokens_per_second = 0;
  StepStats stats;
  double grad_norm = 0;
  double fvu = 0;  // mse(r_G) / var(x) on the current batch
};

class Engine;  // engine.h

// The front end of training: finalizes the options, builds the registered engine options.engine (a usage
// error for an unknown name or a configuration it does not implement) and delegates to it. The engine owns
// the whole training state; the accessors below are its host views (engine.h), for checkpoints,
// evaluation and export.
class Trainer {
 public:
  Trainer(TrainOptions options, SaeParams params);
  Trainer(Trainer&&) noexcept;
  Trainer& operator=(Trainer&&) noexcept;
  ~Trainer();
  // One optimizer step on x (B, d).
  const StepStats& step(const float* x);
  const SaeParams& params() const;
  // Writable (Engine::mutable_params): the Python module folds the input scale into the final weights
  // and moves them out through it.
  SaeParams& params();
  const LatentState& latent_state() const;
  const AdamState& optimizer() const;
  const TrainOptions& options() const { return options_; }
  double last_grad_norm() const;
  float threshold() const;  // params().threshold without a host view (Engine::threshold)
  // Replaces the training state (a checkpoint's): parameters, Adam moments and step, dead counters.
  // The next step() continues exactly as the trainer that saved them would have (the engines keep no
  // other state that changes results).
  void restore(SaeParams params, AdamState opt, LatentState latents);
  const VariantState& variant_state() const;
  // A checkpoint's variant state (VariantState::state_json), after restore().
  void restore_variants(const nlohmann::json& state);
  // The engine itself (its name, phase timings).
  const Engine& engine() const { return *engine_; }

 private:
  TrainOptions options_;
  std::unique_ptr<Engine> engine_;
};

// What a finished (or interrupted) training run records in msae.json beyond the trainer's own state.
struct RunFacts {
  bool completed = true;
  int64_t steps = 0;                         // optimizer steps done
  nlohmann::json steps_planned = nullptr;    // null when the run length was open (a Python iterator)
  uint64_t seed = 0;
  bool shuffle = false;
  std::string data;                          // the data's description ("synthetic", a path, ...)
  nlohmann::json init = nullptr;             // --init directory, or null
  std::string normalize = "none";            // data normalization method and the scale the SAE sees
  double scale = 1.0;
  int64_t epochs = 0, nonfinite_rows_skipped = 0;
  double seconds = 0, tokens_per_s = 0;
};

// The msae.json document (docs/formats.md "msae.json"): format fields, "config" (saedir::config_json),
// "data_normalization" and the "training" record every way of training writes (msae train, the Python
// module). Callers add their own fields to "training" and "final_metrics".
nlohmann::json run_record(const Trainer& trainer, const RunFacts& facts);
// The step kernel's own report, where its engine has one (host and sharded engines): the kernel it runs
// beside the BLAS (the screened engine: "oneDNN <version> int8 matmul (<impl>)"; else empty), and the
// counters of its last step (the screened engine: screen_candidates_per_kept, ...). In msae.json
// (training.engine_kernel) and metrics.jsonl (engine_counters).
std::string engine_kernel(const Trainer& trainer);
std::vector<std::pair<std::string, double>> engine_counters(const Trainer& trainer);

// Means over one logging interval of the step statistics written to metrics.jsonl (docs/formats.md).
struct MetricsInterval {
  int64_t steps = 0;
  double loss = 0, l_aux = 0, fvu = 0, l0 = 0;
  std::vector<double> mse_prefix;  // (G)
  std::vector<double> fvu_prefix;  // (G) mse(r_g) / var(x) of each step (fvu is its last entry)
  void add(const StepStats& s);
  nlohmann::json to_json() const;  // {loss, l_aux, fvu, l0, mse_prefix, fvu_prefix}
  // The running sums themselves, for checkpoints, and back (numbers checked; `what` names the source).
  nlohmann::json state_json() const;
  static MetricsInterval from_state_json(const nlohmann::json& j, const std::string& what);
};

// ---------------------------------------------------------------------------------------------
// Checkpoints (docs/formats.md): RUN/checkpoints/step-<N>/ holds state.safetensors (float32 parameters
// and Adam moments) and state.json (step, Adam step, threshold, dead counters and the caller's `extra`:
// run arguments, data position, ...). RUN/checkpoints/latest names the newest complete one. Each is
// written under a temporary name and renamed, then `latest` is replaced atomically, so a crash at any
// point leaves the previous checkpoint usable. Older checkpoints beyond the newest `keep` are removed.
// ---------------------------------------------------------------------------------------------
struct Checkpoint {
  int64_t step = 0;
  SaeParams params;
  AdamState opt;
  LatentState latents;
  nlohmann::json extra;
  std::string path;  // the checkpoint directory it was read from
};

// Returns the checkpoint directory written. Collective under a sharded engine (its host views are gathers):
// every process calls it, the root writes, the others return "".
std::string write_checkpoint(const std::string& run_dir, int64_t step, const Trainer& trainer,
                             const nlohmann::json& extra, int keep = 2);
bool has_checkpoint(const std::string& run_dir);
// Reads RUN/checkpoints/latest; throws msae::Error (runtime) naming the file on anything malformed.
Checkpoint read_checkpoint(const std::string& run_dir);

}  // namespace msae::train
