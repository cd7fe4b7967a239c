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
  // Where it came from (docs/interop.md): "msae", "saelens-jumprelu", "saelens-standard", "saelens-topk"
  // or "sparsify-topk". Imported SAEs carry their trainer's inference rule in params.rule.
  std::string format = "msae";
};

// Writes the SAE directory files into `dir` (which must exist). Atomic at the directory level is the
// caller's job (write to a temporary directory, then io::commit_directory).
void write_sae_files(const std::string& dir, const SaeConfig& cfg, const SaeParams& params,
                     const nlohmann::json& msae_json);
// Reads an SAE directory (docs/interop.md), validating every shape and configuration field it uses:
//  - msae's own output (SAELens layout + msae.json, or cfg.json metadata written by msae): the msae rule;
//  - a SAELens directory from another trainer: cfg.json "architecture" jumprelu (tensor threshold (D)),
//    standard (ReLU; activation_fn "topk" with activation_fn_kwargs.k = a SAELens 5 TopK SAE) or topk
//    (cfg "k"), with apply_b_dec_to_input honoured; sae_weights.safetensors W_enc (d, D), W_dec (D, d),
//    b_enc (D), b_dec (d); F32/F16/BF16;
//  - an EleutherAI sparsify directory: cfg.json (d_in, k, num_latents or expansion_factor, activation
//    "topk") + sae.safetensors encoder.weight (D, d), encoder.bias (D), W_dec (D, d), b_dec (d).
// A directory holding such directories (sparsify's layers.N/, one per hookpoint) is refused with a list
// of them. Features the eval path cannot reproduce exactly (gated, per-row normalization, skip
// connections, transcoders, groupmax) are refused with msae::Error naming the field.
SaeDirectory read_sae_dir(const std::string& dir);

// Loads initial parameters for --init: the tensors of `dir`, checked against d and D; an imported SAE's
// encoding rule is dropped (the run trains an msae SAE).
SaeParams load_init_params(const std::string& dir, int64_t d, int64_t D);

}  // namespace msae::train
