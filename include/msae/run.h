// msae run: the one layer that turns a set of options (msae/options.h) into a trained, evaluated, saved SAE.
// `msae train`, `msae sweep`, `msae synth-bench` and Python's msae.train are front ends over it: they parse,
// call and print. Everything a run does is here: open and normalize the data, hold out the evaluation
// rows, build the config (recipes included), train through the one training loop (run_loop), write
// metrics.jsonl and checkpoints, resume, evaluate on held-out rows, fold the scale, write the directory.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "msae/data.h"
#include "msae/eval.h"
#include "msae/gt_metrics.h"
#include "msae/synth.h"
#include "msae/options.h"
#include "msae/sae_dir.h"
#include "msae/train.h"

namespace msae::run {

// ---------------------------------------------------------------------------------------------
// Options -> training options
// ---------------------------------------------------------------------------------------------

// What a data source makes of the options the user left automatic (d_sae, k, batch, steps).
struct DataDefaults {
  int64_t d_sae = 0, k = 32, batch = 4096, steps = 0;
};

// The SAE config and training options of `o` for data of width d: the arch and model options, then the
// recipe (it sets only what `o` does not give), then every variant option, then finalize(). Usage errors
// name the option (opt()).
train::TrainOptions make_train_options(const Options& o, int64_t d, const DataDefaults& defaults);

// The data options (docs/data.md) of `o`: element type, tensor, row width, bad-row policy and shuffle
// buffer, with the read order and seed given. Every front end that reads data builds them here.
data::DataOptions data_options(const Options& o, bool shuffle, uint64_t seed);

// msae.json "training.schedule" (recipe options outside the SAE config).
nlohmann::json schedule_json(const train::TrainOptions& opt);

// ---------------------------------------------------------------------------------------------
// The training loop: every way of training runs its steps here.
// ---------------------------------------------------------------------------------------------
struct LoopHooks {
  // Fills x (batch, d); false when the data has ended (an open-ended stream). Required.
  std::function<bool(float* x)> next_batch;
  // Polled before every step; true stops the loop (the run is then interrupted).
  std::function<bool()> stop;
  // After every log_every-th step and the last one: the interval's means (then reset) and the step's stats.
  std::function<void(int64_t done, const train::MetricsInterval& interval, const StepStats& last)> log;
  // After every step (progress bars).
  std::function<void(int64_t done, const StepStats& stats)> progress;
  // When a checkpoint is due (every checkpoint_every steps; also at the last step with checkpoint_at_end).
  std::function<void(int64_t done)> checkpoint;
};

struct LoopSpec {
  int64_t start = 0;             // steps already done (a resumed run)
  int64_t steps = 0;             // -1: until next_batch returns false
  int64_t log_every = 1;
  int64_t checkpoint_every = 0;  // 0: none during the run
  bool checkpoint_at_end = false;
  std::string label;             // names the run in errors ("run 3f2a...: the loss became nan ...")
};

struct LoopResult {
  int64_t done = 0;               // steps done in all (start included)
  bool interrupted = false;       // stop() said so
  bool data_ended = false;        // next_batch returned false
  double data_seconds = 0, step_seconds = 0;  // in next_batch, in Trainer::step (this session)
};

// Runs steps [spec.start, spec.steps) of trainer. `interval` carries the running means of the current
// logging interval (a checkpoint saves it); `r` is filled as the loop goes (hooks may read it: a checkpoint
// records the times so far). A non-finite loss is a runtime error naming the step.
void run_loop(train::Trainer& trainer, const LoopSpec& spec, train::MetricsInterval& interval, LoopHooks& hooks,
              LoopResult& r);

// ---------------------------------------------------------------------------------------------
// train(): a whole run
// ---------------------------------------------------------------------------------------------

// Data a caller holds in memory (Python): an array, or a stream of batches, instead of options.data.
struct Inputs {
  // A float32 (rows, d) array in caller memory, read like one shard (must outlive the run).
  const float* array = nullptr;
  int64_t rows = 0, d = 0;
  std::string array_name;  // for logs and msae.json, e.g. "numpy array (1000 x 64)"
  // A stream: fills a (batch, d) array, false at its end; d given. The run then lasts until the stream
  // ends unless steps/tokens are given. No normalization, hold-out or shuffling applies.
  std::function<bool(float* x, int64_t batch)> stream;
  int64_t stream_d = 0;
  std::function<std::string()> stream_describe;
  // Held-out rows in caller memory for the final evaluation (instead of options.eval_data).
  const float* eval_array = nullptr;
  int64_t eval_array_rows = 0, eval_array_d = 0;
  std::string eval_array_name;
  // An SAE to start from (instead of options.init), and how to name it.
  std::optional<SaeParams> init;
  std::string init_name;
};

// What a front end sees while a run goes on. Every callback is optional.
struct Callbacks {
  std::function<bool()> stop;  // polled before every step (signals); true: checkpoint and stop
  // Every log point (metrics.jsonl line): the line's JSON (step, tokens, loss, fvu, l0, ...).
  std::function<void(const nlohmann::json& line)> log;
  // After every step: done, planned (-1 open), the step's stats and the elapsed seconds of this session.
  std::function<void(int64_t done, int64_t planned, const StepStats& stats, double tokens_per_s)> progress;
  std::function<void(const std::string& line)> info;  // log lines ("data: ...", "model: ..."); default log_info
  // Once, before the first step: the config trained, the steps already done (resume) and planned (-1 open).
  std::function<void(const SaeConfig& cfg, int64_t start, int64_t planned)> started;
};

struct Result {
  bool completed = false;       // every planned step (or the stream's end) was trained
  int64_t steps = 0;            // steps done
  int64_t steps_planned = -1;   // -1: open (a stream)
  int64_t batch = 0;
  SaeConfig cfg;
  SaeParams params;             // raw-activation space (the normalization folded in)
  nlohmann::json msae_json;     // what msae.json holds (also when no directory is written)
  bool evaluated = false;
  eval::EvalReport eval;
  nlohmann::json final_metrics = nullptr;
  std::string eval_on;          // which rows were evaluated, in words ("4096 held-out rows [36864, 40960) of acts.npy")
  std::string eval_error;       // why the final evaluation failed (the SAE is written regardless); empty if it did not
  int64_t eval_rows = 0;
  bool synthetic = false;
  std::string out;              // the directory written ("" when options.out is empty)
  double seconds = 0, session_tokens_per_s = 0;
};

// The whole run. With options.resume, the run's own options come from its latest checkpoint (only threads
// may be given, plus in-memory Inputs for data the checkpoint cannot name). Throws msae::Error on bad
// options or data; an interrupted run (callbacks.stop) writes a checkpoint and returns completed = false.
Result train(const Options& options, const Inputs& inputs = {}, const Callbacks& callbacks = {});

// ---------------------------------------------------------------------------------------------
// Memory: an estimate before anything is allocated (src/run/memory.cpp)
// ---------------------------------------------------------------------------------------------

// What a training run of `t` (t.batch rows of width d) holds at its peak, in bytes, by part: counted from
// what the host engines allocate (include/msae/engine.h HostEngine, src/model/step_sparse.cpp and
// src/model/loss_ref.cpp), not measured. Doubles, so that no product of sizes can wrap.
struct MemoryEstimate {
  double parameters = 0;  // W_enc^T, W_dec, b_enc, b_dec: (2 D d + D + d) floats
  double optimizer = 0;   // Adam's two moments of every parameter
  double gradients = 0;   // one gradient per parameter
  double step = 0;        // the step's buffers: the (B, D) pre-activations, the (B, d) rows, codes, AuxK
  double data = 0;        // the batch and the reader thread's batches
  double output = 0;      // the copy of the parameters (and the transposed W_enc) written at the end
  double evaluation = 0;  // the final evaluation's (1024, D) pre-activations
  // The sparse engine keeps its step buffers for the whole run (they are alive during the final evaluation);
  // the reference engine's are freed after each step.
  bool step_kept = true;
  double total() const {
    return parameters + optimizer + gradients + data + output + (step_kept ? step + evaluation : std::max(step, evaluation));
  }
};
// With `processes` > 1 (a latent-sharded MPI run, docs/distributed.md): the root process's peak, whose
// parameters, moments, gradients and step buffers are those of its D / processes latents, plus the
// candidates every process receives and the whole parameters and moments gathered for a checkpoint.
MemoryEstimate estimate_training_bytes(const train::TrainOptions& t, int64_t d, int processes = 1);
// The memory this process may still take: min(/proc/meminfo MemAvailable, the cgroup v2 limit
// memory.max - memory.current) in bytes; -1 when neither can be read.
int64_t available_memory_bytes();
// Refuses (runtime error, exit 1) a run whose estimate exceeds the available memory, with both figures in
// GiB and the options that lower it; `available` < 0 (unknown) passes. Returns the estimate's line for the
// log: "memory: about 1.4 GiB estimated, 22.0 GiB available".
// With `processes` > 1 the estimate is per process and is compared with the available memory shared by the
// processes of this machine (comm::local_processes()).
std::string check_training_memory(const train::TrainOptions& t, int64_t d, int64_t available, int processes = 1);

// ---------------------------------------------------------------------------------------------
// Ground-truth runs: training one SAE on a preset's stream (synth::make_preset) and scoring it against the
// truth (gt_metrics.h); `msae synth-bench` runs it for each arch and seed, and `msae sweep` for each run
// whose data is "preset:NAME", so a sweep run with default switches reproduces the synth-bench figures.
// ---------------------------------------------------------------------------------------------
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

// Resumable ground-truth runs keep the model they started on. A preset's model is a function of its name and
// seed, except that orthogonalized directions (synthsaebench-16k) depend on the CPU's BLAS kernel in their
// last bits, so a run continued on another machine would draw its rows from a slightly different model.
// The first call (no file at `path`, nor at `fallback` when given) writes the model's directions and bias to
// `path`; later calls put the recorded values back into `model` where they differ by at most kPinTolerance
// (the rounding of binary16 directions), and throw a runtime error where one differs by more (another
// model). `fallback`: a file with the same tensors written by an older msae (synth-bench's truth.safetensors);
// when it is used, `path` is written from it. Returns the number of values replaced.
constexpr double kPinTolerance = 1e-3;
int64_t pin_preset_model(synth::FeatureModel& model, const std::string& path, const std::string& fallback = "");

struct PresetRunOptions {
  // After every step (a progress bar): done, planned, the step's stats.
  std::function<void(int64_t done, int64_t steps, const StepStats& stats)> progress;
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
  // Dead latents at the same points, as shares of D: curve_dead by the run's AuxK definition (no firing in
  // the last dead_after_batches batches, metrics.jsonl's dead_fraction), curve_silent by the logging
  // interval (no firing in any batch since the previous point), which does not depend on the AuxK window.
  // NaN where a resumed checkpoint predates them.
  std::vector<double> curve_dead, curve_silent;
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


// ---------------------------------------------------------------------------------------------
// Meta-SAE (Bussmann et al.): a BatchTopK SAE of width D / width_div and k on the decoder rows of an SAE.
struct MetaSaeOptions {
  int64_t width_div = 4, k = 4, steps = 2000, batch = 1024;
  float lr = 3e-4f;
  uint64_t seed = 0;
};
struct MetaSaeResult {
  int64_t width = 0, k = 0, steps = 0;
  double explained_variance = 0;  // 1 - FVU of the meta-SAE on all D decoder rows (inference encoding)
};
// Trained through run_loop. Throws a usage error when D / width_div < 16 (the smallest SAE msae trains).
MetaSaeResult meta_sae(const float* W_dec /*(D, d)*/, int64_t D, int64_t d, const MetaSaeOptions& opt = {});

// Steps the threshold EMA needs before its start value (0) weighs at most 5% (threshold_start_step plus
// ceil(ln 0.05 / ln(1 - rate)): 299 at SPEC's rate 0.01). The default run length on data is at least this.
int64_t threshold_settle_steps(const SaeConfig& cfg);

// Whether a trained SAE is usable, from its final evaluation: {"usable": bool, "problems": [sentences]}. A
// problem is a threshold EMA that has not settled, inference L0 outside [k/2, 2k], FVU above 1, the whole
// SAE worse than its first prefix, or evaluation FVU far above training's (train_fvu < 0: unknown).
// `calibrated`: the exported threshold was calibrated (calibrate_threshold), so the EMA's settling does not matter.
nlohmann::json sae_quality(const SaeConfig& cfg, const eval::EvalReport& ev, int64_t steps_done, double train_fvu,
                           bool calibrated = false);

// Writes DIR/report.html for a run that wrote DIR: the curves of DIR/metrics.jsonl (loss, FVU of every
// prefix, L0, dead latents, threshold), the final per-prefix table, the latent-frequency histogram, and the
// usability problems when there are any. run::train calls it for every run with an output directory.
void write_run_report(const std::string& dir, const Result& r);

// The seeds the run layer derives from options.seed, named once.
uint64_t synthetic_eval_seed(uint64_t seed);       // the embedded synthetic data's held-out stream
uint64_t norm_sample_seed(uint64_t seed);          // rows sampled for the expected-norm scale

}  // namespace msae::run
