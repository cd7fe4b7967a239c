// msae train: the update rule (clip, decoder constraint, Adam), the trainer loop, and the SAE output
// directory (SAELens layout + msae.json + metrics.jsonl).
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
  int64_t log_every = 0;         // metrics.jsonl interval in steps; 0 = automatic (about 100 lines a run)
};

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

std::unique_ptr<StepEngine> make_engine(const std::string& name);  // one of engine_names()
std::vector<std::string> engine_names();  // every registered engine; tests loop over this list

// Running summary a trainer keeps for logs and the final report.
struct ProgressInfo {
  int64_t step = 0, steps = 0, tokens = 0;
  double seconds = 0, tokens_per_second = 0;
  StepStats stats;
  double grad_norm = 0;
  double fvu = 0;  // mse(r_G) / var(x) on the current batch
};

class Trainer {
 public:
  Trainer(TrainOptions options, SaeParams params);
  // One optimizer step on x (B, d).
  const StepStats& step(const float* x);
  const SaeParams& params() const { return params_; }
  SaeParams& params() { return params_; }
  const LatentState& latent_state() const { return latents_; }
  const AdamState& optimizer() const { return opt_; }
  const TrainOptions& options() const { return options_; }
  double last_grad_norm() const { return grad_norm_; }
  // Replaces the training state (a checkpoint's): parameters, Adam moments and step, dead counters.
  // The next step() continues exactly as the trainer that saved them would have (the engines keep no
  // other state that changes results).
  void restore(SaeParams params, AdamState opt, LatentState latents);

 private:
  TrainOptions options_;
  SaeParams params_;
  SaeGrads grads_;
  AdamState opt_;
  LatentState latents_;
  std::unique_ptr<StepEngine> engine_;
  StepStats stats_;
  double grad_norm_ = 0;
};

// The SAE config as recorded in msae.json ("config").
nlohmann::json config_json(const SaeConfig& cfg);

// Means over one logging interval of the step statistics written to metrics.jsonl (docs/formats.md).
struct MetricsInterval {
  int64_t steps = 0;
  double loss = 0, l_aux = 0, fvu = 0, l0 = 0;
  std::vector<double> mse_prefix;  // (G)
  void add(const StepStats& s);
  nlohmann::json to_json() const;  // {loss, l_aux, fvu, l0, mse_prefix}
};

// ---------------------------------------------------------------------------------------------
// Output directory: SAELens layout (cfg.json + sae_weights.safetensors) + msae.json + metrics.jsonl.
// ---------------------------------------------------------------------------------------------
struct SaeDirectory {
  SaeConfig sae;
  SaeParams params;
  nlohmann::json msae_json;  // {} when the directory has no msae.json (e.g. a plain SAELens SAE)
};

// Writes the SAE directory files into `dir` (which must exist). Atomic at the directory level is the
// caller's job (write to a temporary directory, then io::commit_directory).
void write_sae_files(const std::string& dir, const SaeConfig& cfg, const SaeParams& params,
                     const nlohmann::json& msae_json);
// Reads a SAELens-layout directory: sae_weights.safetensors with W_enc (d, D), W_dec (D, d), b_enc (D),
// b_dec (d) and optionally threshold (D); cfg.json and msae.json are optional. Validates shapes.
SaeDirectory read_sae_dir(const std::string& dir);

// Loads initial parameters for --init: the tensors of `dir`, checked against d and D.
SaeParams load_init_params(const std::string& dir, int64_t d, int64_t D);

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

// Returns the checkpoint directory written.
std::string write_checkpoint(const std::string& run_dir, int64_t step, const Trainer& trainer,
                             const nlohmann::json& extra, int keep = 2);
bool has_checkpoint(const std::string& run_dir);
// Reads RUN/checkpoints/latest; throws msae::Error (runtime) naming the file on anything malformed.
Checkpoint read_checkpoint(const std::string& run_dir);

// Activation normalization folded into the weights (SAELens fold_activation_norm_scaling_factor): an SAE
// trained on x * s becomes one that takes raw x and returns raw reconstructions: W_enc *= s, W_dec /= s,
// b_dec /= s (b_enc and the threshold, which act on the pre-activations, are unchanged). unfold is the
// inverse (for --init of a normalized run from a raw-space SAE).
void fold_input_scale(SaeParams& params, float s);
void unfold_input_scale(SaeParams& params, float s);

}  // namespace msae::train
