// Training one SAE on a ground-truth preset's stream (synth::make_preset) and scoring it against the truth
// (gt_metrics.h): the routine `msae synth-bench` runs for each arch and seed, and `msae sweep` for each run
// whose "data" is "preset:NAME". Both call it, so a sweep run with default switches reproduces the
// synth-bench figures for the same arch, seed, width, k, batch, steps and eval rows exactly.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "msae/eval.h"
#include "msae/gt_metrics.h"
#include "msae/synth.h"
#include "msae/train.h"

namespace msae::cli {

// Per-preset defaults: width D, L0 k, batch B, steps, held-out eval rows, meta-SAE steps (0 = skip).
struct PresetDefaults {
  int64_t d_sae, k, batch, steps, eval_rows, meta_steps;
};
// Throws the usage error of synth::make_preset (listing the presets) for an unknown name.
PresetDefaults preset_defaults(const std::string& preset);

// Held-out rows of a preset and the features that fired in each: FeatureSampler(model, synth_bench_eval_stream(seed)).
struct PresetEvalRows {
  int64_t rows = 0;
  std::vector<float> x;  // (rows, d)
  synth::FiredFeatures fired;
};
PresetEvalRows preset_eval_rows(const synth::FeatureModel& model, uint64_t seed, int64_t rows);

struct PresetRunOptions {
  int64_t meta_steps = 0;                  // > 0: train the meta-SAE (only when D / 4 >= 16)
  std::string label;                       // progress-bar and error prefix, e.g. "matryoshka seed 0"
  const std::atomic<bool>* stop = nullptr;  // when set and true, training stops at the next step
  bool keep_sae = false;                    // fill PresetRun::params and ::msae_json (synth-bench --save-saes)
  bool evaluate_if_stopped = false;         // on `stop`, evaluate the SAE trained so far (synth-bench)
  // Resumable runs (synth-bench --checkpoint-every): when checkpoint_dir holds a checkpoint, training
  // continues from it exactly (parameters, Adam, dead counters, variant state, stream position, curves,
  // timings); a checkpoint is written every checkpoint_every steps, when `stop` is raised (then the run
  // returns interrupted without evaluating) and at the last step (so a finished run is only re-evaluated).
  std::string checkpoint_dir;
  int64_t checkpoint_every = 0;
};

struct PresetRun {
  bool interrupted = false;  // `stop` was raised: nothing below is filled in unless evaluate_if_stopped
  int64_t steps_done = 0;    // optimizer steps taken (opt.steps unless interrupted)
  int64_t resumed_at = -1;   // the checkpoint step it continued from, or -1
  eval::EvalReport ev;       // eval::evaluate on the held-out rows, in file order
  eval::GtReport gt;         // eval::score_ground_truth on the same rows
  nlohmann::json meta_sae;   // {width, k, steps, explained_variance}, or null when not run
  std::vector<double> curve_step, curve_fvu;  // about 100 points of the training-batch FVU
  double generation_seconds = 0, step_seconds = 0;
  SaeParams params;          // the trained SAE, when keep_sae (else empty)
  nlohmann::json msae_json;  // its msae.json (train::run_record; data "preset:NAME seed S"), when keep_sae
};

// Trains opt (opt.sae.d_in must be model.d) from SaeParams::init(model.d, opt.sae.d_sae, opt.seed) on the
// stream FeatureSampler(model, synth_bench_train_stream(opt.seed)) for opt.steps batches of opt.batch rows, then evaluates
// and scores on `held_out`. A non-finite loss is a runtime error naming the step. Deterministic for a
// given thread count.
PresetRun train_on_preset(const synth::FeatureModel& model, const train::TrainOptions& opt,
                          const PresetEvalRows& held_out, const PresetRunOptions& ro);

// The run's "train", "eval", "ground_truth" and "meta_sae" entries as results.json of synth-bench writes
// them (eval without latent_frequency; ground_truth with the per-feature arrays when per_feature).
nlohmann::json preset_run_json(const PresetRun& run, const train::TrainOptions& opt, bool per_feature);

}  // namespace msae::cli
