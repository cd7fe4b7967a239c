// run::train: a whole training run from options (msae/run.h).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "msae/comm.h"
#include "msae/io.h"
#include "msae/recovery.h"
#include "msae/run.h"
#include "msae/synth.h"

namespace msae::run {
namespace {

using nlohmann::json;

constexpr int64_t kNormSampleRows = 262144;  // rows sampled to estimate the expected-norm scale

// Keeps the lines of metrics.jsonl up to `step` (a resumed run rewrites what came after its checkpoint).
void truncate_metrics(const std::string& path, int64_t step) {
  std::string kept;
  if (io::path_exists(path)) {
    std::istringstream in(io::read_text_file(path));
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      try {
        if (io::json_int(json::parse(line).at("step"), path + ": \"step\"") > step) break;
      } catch (const json::exception&) {
        break;  // a torn last line of a killed run
      } catch (const Error&) {
        break;  // or a step that is not an integer: the file is cut there too
      }
      kept += line + "\n";
    }
  }
  io::write_text_file_atomic(path, kept);
}

// An existing output directory may be replaced (--overwrite) only when msae wrote everything in it: the
// files of an SAE directory, metrics.jsonl, checkpoints/ and msae's temporary names. Anything else (the
// user's data, another program's files) makes --overwrite a usage error, so nothing msae did not write is
// ever removed.
void check_replaceable(const std::string& out) {
  if (!io::is_directory(out))
    usage_error(opt("out"), " ", out, " exists and is not a directory; msae replaces only a directory it wrote");
  static const std::set<std::string> ours = {"cfg.json",      "sae_weights.safetensors", "msae.json",
                                             "metrics.jsonl", "report.html",             "checkpoints"};
  for (const auto& entry : std::filesystem::directory_iterator(out)) {
    const std::string name = entry.path().filename().string();
    if (ours.count(name) || name.find(".tmp") != std::string::npos) continue;
    usage_error(opt("overwrite"), " would remove ", out, "/", name, ", which msae did not write; choose another ",
                opt("out"), " (or move that file away first)");
  }
}

void say(const Callbacks& cb, const std::string& line) {
  if (cb.info)
    cb.info(line);
  else
    log_info(line);
}

// The hook of a harvest directory (msae harvest's harvest.json: model, layer, site, hook_name, ctx,
// prepend_bos, skip_bos), as msae.json
// records it ("hook") and cfg.json's SAELens fields take it (saedir::write_sae_files); null for other data.
json harvest_hook(const std::string& data) {
  const std::string manifest = io::without_trailing_slash(data) + "/harvest.json";
  if (data.empty() || !io::is_directory(data) || !io::path_exists(manifest)) return nullptr;
  const json h = io::parse_json_file_text(io::read_text_file(manifest), manifest);
  if (!h.is_object() || h.value("format", "") != "msae-harvest" || !h.contains("hook_name")) return nullptr;
  const std::string model = h.value("model", "");
  return {{"model_name", std::filesystem::path(io::without_trailing_slash(model)).filename().string()}, {"model", model},
          {"hook_name", h["hook_name"]}, {"layer", h.value("layer", -1)}, {"site", h.value("site", "")},
          {"context_size", h.value("ctx", json())}, {"prepend_bos", h.value("prepend_bos", json())},
          {"skip_bos", h.value("skip_bos", json())}, {"harvest", data}};
}

}  // namespace

data::DataOptions data_options(const Options& o, bool shuffle, uint64_t seed) {
  data::DataOptions d;
  const std::string dtype = o.text("dtype");
  if (o.flag("bf16") && !dtype.empty() && dtype != "bf16")
    usage_error(opt("bf16"), " and ", opt("dtype"), " ", dtype, " contradict each other");
  d.dtype = o.flag("bf16") ? "bf16" : dtype;
  d.tensor = o.text("tensor");
  d.d_in = o.integer("d_in");
  d.shuffle = shuffle;
  d.shuffle_buffer = o.automatic("shuffle_buffer") ? -1 : o.integer("shuffle_buffer");
  d.seed = seed;
  d.on_nonfinite = data::parse_on_nonfinite(o.text("on_nonfinite"));
  return d;
}

int64_t threshold_settle_steps(const SaeConfig& cfg) {
  // (1 - rate)^n <= 0.05: the start value (0) weighs at most 5% of the threshold.
  const double rate = std::clamp(static_cast<double>(cfg.threshold_rate), 1e-9, 1.0);
  const double n = rate >= 1.0 ? 1.0 : std::ceil(std::log(0.05) / std::log1p(-rate));
  return cfg.threshold_start_step + static_cast<int64_t>(n);
}

nlohmann::json sae_quality(const SaeConfig& cfg, const eval::EvalReport& ev, int64_t steps_done, double train_fvu,
                           bool calibrated) {
  std::vector<std::string> problems;
  const eval::PrefixMetrics& whole = ev.prefixes.back();
  if (cfg.arch != Arch::relu_l1 && !calibrated) {
    const int64_t updates = std::max<int64_t>(0, steps_done - cfg.threshold_start_step);
    const double start_weight = std::pow(1.0 - static_cast<double>(cfg.threshold_rate), static_cast<double>(updates));
    if (start_weight > 0.05)
      problems.push_back(cat("the inference threshold has not settled: the EMA had ", updates, " updates at rate ",
                             cfg.threshold_rate, " and still weighs its start value (0) at ",
                             static_cast<int>(std::lround(100 * start_weight)), "%; train for at least ",
                             threshold_settle_steps(cfg), " steps"));
  }
  const double k = static_cast<double>(cfg.k);
  if (whole.l0 > 2 * k || whole.l0 < 0.5 * k)
    problems.push_back(cat("inference L0 is ", whole.l0, " latents per row, against k = ", cfg.k,
                           " in training (outside [k/2, 2k])"));
  if (whole.fvu > 1.0)
    problems.push_back(cat("the SAE reconstructs its evaluation rows worse than their mean does (FVU ", whole.fvu, ")"));
  if (ev.prefixes.size() > 1 && whole.fvu > ev.prefixes.front().fvu)
    problems.push_back(cat("the whole SAE reconstructs worse (FVU ", whole.fvu, ") than its first prefix (FVU ",
                           ev.prefixes.front().fvu, ")"));
  if (train_fvu >= 0 && whole.fvu > 2 * train_fvu + 0.05)
    problems.push_back(cat("FVU on the evaluation rows (", whole.fvu, ") is far above training's last FVU (", train_fvu,
                           ")"));
  return {{"usable", problems.empty()}, {"problems", problems}};
}

// --resume DIR where DIR has no checkpoint: says why in the terms of what DIR holds (nothing, a finished SAE
// of a run without checkpoints, or a run that stopped before its first checkpoint, at the step metrics.jsonl
// last recorded), and what to do instead. Checked here, before train::read_checkpoint.
[[noreturn]] void no_checkpoint_to_resume(const std::string& dir) {
  if (!io::is_directory(dir))
    runtime_error(opt("resume"), " ", dir, ": no such directory; ", opt("resume"), " takes the ", opt("out"),
                " directory of a run that wrote checkpoints");
  const std::string again = cat("; start it again with the same options and ", opt("out"), " ", dir, " ", opt("overwrite"),
                                " (", opt("checkpoint_every"), " N writes checkpoints to resume from)");
  if (io::path_exists(dir + "/sae_weights.safetensors"))
    runtime_error(dir, " has no checkpoint to resume from: it holds the SAE of a run that wrote no checkpoints", again);
  int64_t last_step = -1;
  const std::string metrics = dir + "/metrics.jsonl";
  if (io::path_exists(metrics)) {
    std::istringstream in(io::read_text_file(metrics));
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("step") && j["step"].is_number_integer()) last_step = j["step"].get<int64_t>();
    }
  }
  runtime_error(dir, " has no checkpoint yet: the run stopped before its first one",
                last_step >= 0 ? cat(" (metrics.jsonl records it up to step ", last_step, ")") : std::string(),
                ", so it cannot be resumed", again);
}

uint64_t synthetic_eval_seed(uint64_t seed) { return seed + 1000003; }
uint64_t norm_sample_seed(uint64_t seed) { return seed ^ 0x6e6f726dULL; }

Result train(const Options& given, const Inputs& in, const Callbacks& cb) {
  Options o = given;
  // Under an MPI launch every process runs this function on the same options and data; the latents are
  // sharded among them (train::make_training_engine) and the root alone writes the output and evaluates
  // (docs/distributed.md). The others take part in every collective (steps, checkpoint gathers).
  comm::Comm& world = comm::world();
  const bool root = world.rank() == 0;
  if (world.size() > 1 && (in.array != nullptr || in.stream))
    usage_error("data in memory (an array or a stream) trains in one process; across processes give a path");
  // ---- resume: the run's own options come from its checkpoint
  std::optional<train::Checkpoint> ckpt;
  std::string out = io::without_trailing_slash(o.text("out"));
  // The output is this run's alone from here to the end: a second msae on it is refused, and what a
  // crashed run left there is cleaned up (docs/reliability.md).
  io::OutputLock lock;
  auto take_output = [&](const std::string& dir) {
    lock = io::lock_output(dir, o.given("resume") ? "msae train --resume" : "msae train");
    io::report_leftovers(io::clean_leftovers(dir));
  };
  if (root && o.given("resume")) take_output(io::without_trailing_slash(o.text("resume")));
  else if (root && !out.empty()) take_output(out);
  if (o.given("resume")) {
    for (const auto& [key, value] : o.given_json().items())
      if (key != "resume" && key != "threads" && key != "no_memory_check")
        usage_error(opt("resume"), " continues a run with the options it was started with (recorded in its checkpoint); ",
                    "drop ", opt(key), " (only ", opt("threads"), " may be given, and bit-identical results need the same count)");
    const std::string dir = io::without_trailing_slash(o.text("resume"));
    if (!train::has_checkpoint(dir)) no_checkpoint_to_resume(dir);
    ckpt = train::read_checkpoint(dir);
    const bool threads_given = o.given("threads"), no_memory_check = o.flag("no_memory_check");
    const int64_t threads = o.integer("threads");
    const std::string where = ckpt->path + "/state.json";
    if (ckpt->extra.contains("options"))
      o = Options::from_json(ckpt->extra.at("options"), where);
    else if (ckpt->extra.contains("args"))
      o = options_from_legacy_args(ckpt->extra.at("args"), where);
    else
      runtime_error(where, ": no recorded run options (a checkpoint of msae synth-bench? resume those with msae synth-bench --resume)");
    if (threads_given && threads != o.integer("threads"))
      log_warn(cat(opt("threads"), " ", threads, " differs from the run's ", o.integer("threads"),
                   " threads: the result will not be bit-identical to an uninterrupted run"));
    if (threads_given) o.set("threads", threads);
    if (no_memory_check) o.set("no_memory_check", true);
    out = dir;
  }
  if (o.integer("threads") > 0 && o.integer("threads") != num_threads()) set_num_threads(static_cast<int>(o.integer("threads")));
  kernels::set_blas_threads(num_threads());
  o.set("threads", num_threads());  // recorded resolved, so a resumed run uses the same count

  // ---- what the data is
  const bool array = in.array != nullptr, stream = static_cast<bool>(in.stream);
  const std::string data_spec = o.text("data");
  if ((array || stream) && !data_spec.empty())
    usage_error(opt("data"), " names a path, and the caller also handed over data in memory; give one");
  if (!data_spec.empty() && o.flag("synthetic"))
    usage_error(opt("data"), " and ", opt("synthetic"), " are mutually exclusive");
  const bool synthetic = !array && !stream && data_spec.empty();
  if (synthetic && (o.given("dtype") || o.flag("bf16") || o.given("tensor") || o.given("d_in")))
    usage_error(opt("dtype"), ", ", opt("bf16"), ", ", opt("tensor"), " and ", opt("d_in"),
                " describe data files; the synthetic data needs none");
  const std::string normalize = o.text("normalize");
  if (synthetic && normalize != "none")
    usage_error(opt("normalize"), " expected-norm applies to data files (the synthetic data is generated at unit scale)");
  if (stream && normalize != "none")
    usage_error(opt("normalize"), " expected-norm needs the data up front (a path or an array), not a stream");
  if (stream && (o.integer("checkpoint_every") > 0 || ckpt))
    usage_error("a stream of batches cannot be resumed: ", opt("checkpoint_every"), " and ", opt("resume"),
                " need data that can be read again (a path or an array)");
  if (o.integer("checkpoint_every") > 0 && out.empty())
    usage_error(opt("checkpoint_every"), " writes checkpoints into the output directory: give ", opt("out"));
  const int64_t batch = o.automatic("batch") ? (synthetic ? data::SyntheticDefaults::batch : 4096) : o.integer("batch");
  const uint64_t seed = static_cast<uint64_t>(o.integer("seed"));

  // The output directory is refused before any work.
  if (!ckpt && !out.empty() && io::path_exists(out)) {
    if (!o.flag("overwrite"))
      usage_error("output directory '", out, "' exists; pass ", opt("overwrite"), " to replace it",
                  train::has_checkpoint(out) ? cat(" (or ", opt("resume"), " ", out, " to continue its interrupted run)") : "");
    check_replaceable(out);
  }

  auto open_file_data = [&](const data::DataOptions& d) {
    return array ? data::open_array(in.array, in.rows, in.d, in.array_name, d) : data::open_data(data_spec, d);
  };
  const std::string data_name = synthetic ? "synthetic" : array ? in.array_name : stream ? "stream" : data_spec;

  // ---- held-out rows: the last holdout_rows of the data, unless eval_data names other data
  int64_t total_rows = -1, holdout = 0;
  const std::string eval_data = o.text("eval_data");
  const int64_t eval_rows_cap = o.integer("eval_rows");
  if (!synthetic && !stream) {
    total_rows = open_file_data(data_options(o, false, 0))->rows();
    holdout = o.automatic("holdout_rows") ? (eval_data.empty() && !in.eval_array ? std::min(eval_rows_cap, total_rows / 10) : 0)
                                          : o.integer("holdout_rows");
    if (holdout >= total_rows)
      usage_error(opt("holdout_rows"), " ", holdout, " leaves no rows to train on (the data has ", total_rows, ")");
    o.set("holdout_rows", holdout);
  }
  auto train_window = [&](data::DataOptions d) {
    if (holdout > 0) d.row_end = total_rows - holdout;
    return d;
  };

  // ---- normalization: the scale is estimated once (or taken from the checkpoint) and applied by the reader
  float scale = 1.0f;
  if (normalize == "expected-norm") {
    if (ckpt) {
      scale = io::json_float(ckpt->extra.at("scale"), "checkpoint run state \"scale\"");
    } else {
      data::DataOptions so = train_window(data_options(o, true, norm_sample_seed(seed)));
      so.shuffle_buffer = 65536;
      std::unique_ptr<data::ActivationSource> sample = open_file_data(so);
      const int64_t n = std::min<int64_t>(sample->rows(), kNormSampleRows);
      scale = static_cast<float>(data::estimate_norm_scale(*sample, n));
      say(cb, cat("normalization: expected-norm scale ", scale, " (sqrt(d) / mean row norm over ", n, " sampled rows)"));
    }
  }

  std::unique_ptr<data::ActivationSource> source;
  int64_t d = 0;
  if (synthetic) {
    source = data::open_synthetic(seed);
  } else if (!stream) {
    data::DataOptions dopt = train_window(data_options(o, !o.flag("no_shuffle"), seed));
    dopt.scale = scale;
    dopt.prefetch_batch = o.flag("no_reader_thread") ? 0 : batch;
    source = open_file_data(dopt);
  }
  d = source ? source->d() : in.stream_d;
  MSAE_ASSERT(d > 0, "the data's width is unknown");
  if (!eval_data.empty()) {  // checked now, not after hours of training
    const int64_t eval_d = data::open_data(eval_data, data_options(o, false, 0))->d();
    if (eval_d != d)
      usage_error(opt("eval_data"), " ", eval_data, " has width ", eval_d, " but the training data has ", d);
  }

  // ---- init and config
  std::optional<SaeParams> init_params;
  std::string init_name;
  if (!ckpt && (in.init || !o.text("init").empty())) {
    if (in.init) {
      init_params = *in.init;
      init_name = in.init_name;
    } else {
      init_name = o.text("init");
      init_params = saedir::read_sae_dir(init_name).params;
    }
    if (o.given("init_encoder_norm"))
      usage_error(opt("init_encoder_norm"), " sets the initialization, and ", opt("init"), " ", init_name,
                  " gives the parameters: drop one of them");
    if (init_params->d != d)
      usage_error(opt("init"), " ", init_name, ": the SAE has d_in ", init_params->d, " but the data has width ", d);
    if (o.automatic("d_sae")) o.set("d_sae", init_params->D);
    if (init_params->D != o.integer("d_sae"))
      usage_error(opt("init"), " ", init_name, ": the SAE has d_sae ", init_params->D, " but ", opt("d_sae"), " is ",
                  o.integer("d_sae"));
    init_params->rule = EncodeRule{};  // an imported SAE's inference rule is not the trained one
    // The init SAE takes raw activations; training sees x * scale.
    if (scale != 1.0f) saedir::unfold_input_scale(*init_params, scale);
  }
  DataDefaults def;
  def.d_sae = synthetic ? data::SyntheticDefaults::d_sae : 8 * d;
  def.k = synthetic ? data::SyntheticDefaults::k : 32;
  def.batch = batch;
  def.steps = synthetic ? data::SyntheticDefaults::steps
              : stream  ? -1
                        : std::max<int64_t>(1, (source->rows() + batch - 1) / batch);  // one epoch
  train::TrainOptions topt = make_train_options(o, d, def);
  // A default length (one epoch) too short for the threshold EMA to settle exports a threshold that still
  // remembers its start (0): inference then keeps far more than k latents per row. The default runs at
  // least as long as the EMA needs (docs/cli.md); a length the user gives is kept, and the final check says so.
  int64_t one_epoch = -1;
  if (!synthetic && !stream && !o.given("steps") && !o.given("tokens") && topt.sae.arch != Arch::relu_l1) {
    const int64_t settle = threshold_settle_steps(topt.sae);
    if (topt.steps < settle) {
      one_epoch = topt.steps;
      def.steps = settle;
      topt = make_train_options(o, d, def);
    }
  }
  const SaeConfig& cfg = topt.sae;
  if (o.flag("calibrate_threshold") && cfg.arch == Arch::relu_l1)
    usage_error(opt("calibrate_threshold"), " sets a JumpReLU threshold for inference L0 = k; ", opt("arch"),
                " relu_l1 has no k");
  if (o.flag("calibrate_threshold") && stream && eval_data.empty() && !in.eval_array)
    usage_error(opt("calibrate_threshold"), " needs evaluation rows (", opt("eval_data"),
                " or data that can be read again), and a stream has none");
  const int64_t steps = topt.steps;  // -1: until the stream ends
  topt.steps = std::max<int64_t>(steps, 0);
  topt.log_every = o.automatic("log_every") ? (steps > 0 ? std::max<int64_t>(1, steps / 100) : 100) : o.integer("log_every");
  // Recorded resolved, so that a resumed run rebuilds exactly this run.
  o.set("d_sae", cfg.d_sae);
  o.set("k", cfg.k);
  o.set("batch", batch);
  if (steps > 0) {
    o.erase("tokens");
    o.set("steps", steps);
  }
  o.set("log_every", topt.log_every);

  // The memory the run will take, refused with the figure before the parameters are allocated (docs/cli.md).
  say(cb, check_training_memory(topt, d, o.flag("no_memory_check") ? -1 : available_memory_bytes(), world.size()));
  train::Trainer trainer(topt, init_params ? std::move(*init_params) : SaeParams::init(d, cfg.d_sae, seed, topt.init_encoder_norm));
  int64_t start = 0;
  double seconds_before = 0.0;
  train::MetricsInterval interval;
  std::vector<int64_t> resumed_at;
  if (ckpt) {
    if (ckpt->params.d != d || ckpt->params.D != cfg.d_sae)
      runtime_error(ckpt->path, ": the checkpoint has d_in ", ckpt->params.d, ", d_sae ", ckpt->params.D,
                    " but the run's data and options give ", d, ", ", cfg.d_sae);
    if (ckpt->step > steps) runtime_error(ckpt->path, ": step ", ckpt->step, " is past the run's ", steps, " steps");
    start = ckpt->step;
    try {
      source->set_state(ckpt->extra.at("data"));
      interval = train::MetricsInterval::from_state_json(ckpt->extra.at("interval"), "checkpoint run state");
      seconds_before = io::json_double(ckpt->extra.at("seconds"), "checkpoint run state \"seconds\"");
      resumed_at = io::json_int_vector(ckpt->extra.at("resumed_at"), "checkpoint run state \"resumed_at\"");
    } catch (const json::exception& e) {
      runtime_error(ckpt->path, "/state.json: malformed run state: ", e.what());
    }
    resumed_at.push_back(start);
    trainer.restore(std::move(ckpt->params), std::move(ckpt->opt), std::move(ckpt->latents));
    trainer.restore_variants(ckpt->extra.at("variant_state"));
    say(cb, cat("resuming ", out, " from ", ckpt->path, " (step ", start, " of ", steps, ")"));
  }

  if (one_epoch > 0)
    say(cb, cat("steps: ", steps, " (one epoch of the training rows is ", one_epoch, " steps; the threshold EMA needs ",
                steps, " updates at rate ", cfg.threshold_rate, " to settle, so the default runs that long; give ",
                opt("steps"), " to choose)"));
  say(cb, cat("data: ", source ? source->describe() : in.stream_describe ? in.stream_describe() : data_name,
              holdout > 0 ? cat(", the last ", holdout, " rows held out for evaluation") : ""));
  say(cb, cat("model: ", arch_name(cfg.arch), " SAE, d=", d, " D=", cfg.d_sae, " k=", cfg.k, " groups=",
              json(cfg.group_sizes).dump(), cfg.encoder_bias ? " +encoder-bias" : "",
              init_name.empty() ? "" : cat(" init from ", init_name)));
  say(cb, cat("training: ", steps >= 0 ? cat(steps, " steps x batch ", batch, " = ", steps * batch, " tokens")
                                       : cat("until the stream ends, batch ", batch),
              ", lr ", topt.adam.lr, ", engine ", trainer.options().engine, ", ", num_threads(), " threads, BLAS: ",
              kernels::blas_info()));

  // ---- output directory. With checkpoints (or when resuming) the run lives in `out` from the start:
  // checkpoints/ and metrics.jsonl there, the SAE files written at the end (each atomically). Otherwise it
  // is written under a temporary name and renamed into place when complete.
  // `has_out`: the run has an output (every process gathers the state for its checkpoints); `writes`: this
  // process writes it (the root).
  const bool has_out = !out.empty();
  const bool writes = has_out && root;
  const int64_t checkpoint_every = o.integer("checkpoint_every");
  const int keep = static_cast<int>(o.integer("keep_checkpoints"));
  const bool live = has_out && (ckpt || checkpoint_every > 0);
  const std::string work_dir = !has_out ? "" : live ? out : io::temp_name(out);
  // Every process has read what it needs of `out` (the checkpoint, whether it exists) before the root
  // changes anything there.
  world.barrier();
  // A run that lives in `out` and replaces an earlier output moves that one aside until the new SAE is
  // written (and puts it back if the run fails before its first checkpoint), so a failure never leaves the
  // user without an SAE they had.
  std::string replaced;
  const bool out_existed = writes && io::path_exists(out);
  if (writes && !live) {
    io::create_directories(work_dir);  // a new, unique name (io::temp_name)
  } else if (writes && live && !ckpt) {
    if (io::path_exists(out)) {  // overwrite (checked above)
      replaced = cat(out, ".replaced-", getpid());
      io::remove_all(replaced);
      io::rename_path(out, replaced);
      say(cb, cat("the previous ", out, " is kept as ", replaced, " until this run has written its SAE"));
    }
    io::create_directories(out);
  }
  // On a failure: the previous output back in place when this run has no checkpoint to resume from, else
  // both are kept and named.
  auto keep_previous = [&] {
    if (replaced.empty()) return;
    try {
      if (!train::has_checkpoint(out)) {
        io::remove_all(out);
        io::rename_path(replaced, out);
        log_warn(cat("the run failed before its first checkpoint; ", out, " is the previous output again"));
      } else {
        log_warn(cat("the previous output is kept as ", replaced, "; ", out, " holds this run's checkpoints (",
                     opt("resume"), " ", out, " continues it)"));
      }
    } catch (const std::exception& e) {
      log_warn(cat("the previous output is kept as ", replaced, " (", e.what(), ")"));
    }
  };
  // Whether an earlier output was moved aside: the root's decision, known to all (a data fault saves a
  // checkpoint, a collective, only when none was).
  int64_t replacing = replaced.empty() ? 0 : 1;
  world.broadcast(&replacing, sizeof replacing, 0);
  const std::string metrics_path = work_dir + "/metrics.jsonl";
  if (ckpt && writes) truncate_metrics(metrics_path, start);
  io::AppendFile metrics;
  if (writes) metrics.open(metrics_path, !ckpt);

  Timer clock;
  double checkpoint_seconds = 0.0;
  auto checkpoint_extra = [&](double secs) {
    return json{{"options", o.to_json()},  {"data", source->state()}, {"interval", interval.state_json()},
                {"scale", scale},          {"seconds", secs},         {"resumed_at", resumed_at},
                {"variant_state", trainer.variant_state().state_json()}};
  };
  auto tokens_per_s = [&](int64_t done) {
    return static_cast<double>((done - start) * batch) / std::max(clock.seconds(), 1e-9);
  };
  StepStats last;
  double last_train_fvu = -1;  // the last metrics.jsonl line's (interval mean) FVU
  auto log_line = [&](int64_t done, const train::MetricsInterval& iv, const StepStats& s) {
    json line = iv.to_json();
    last_train_fvu = line.at("fvu").get<double>();
    line["step"] = done;
    line["tokens"] = done * batch;
    line["seconds"] = seconds_before + clock.seconds();
    line["tokens_per_s"] = tokens_per_s(done);
    line["n_dead"] = s.n_dead;
    line["dead_fraction"] = static_cast<double>(s.n_dead) / static_cast<double>(cfg.d_sae);
    line["threshold"] = json_number(trainer.threshold());
    line["grad_norm"] = trainer.last_grad_norm();
    if (const auto counters = train::engine_counters(trainer); !counters.empty()) {
      json c = json::object();
      for (const auto& [name, v] : counters) c[name] = v;
      line["engine_counters"] = c;
    }
    if (writes) metrics.append(line.dump() + "\n");
    if (cb.log) cb.log(line);
  };

  LoopHooks hooks;
  // A data read fault (a file truncated, changed or unreadable mid-run) ends the loop like the end of the
  // data: the state so far is saved as for an interrupt, then the error is reported (exit 1).
  std::optional<Error> data_fault;
  if (source)
    hooks.next_batch = [&](float* x) {
      try {
        source->next_batch(batch, x);
        return true;
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::runtime) throw;
        data_fault = e;
        return false;
      }
    };
  else
    hooks.next_batch = [&](float* x) { return in.stream(x, batch); };
  hooks.stop = cb.stop;
  if (world.size() > 1)  // a signal reaches the processes at different steps: they stop at the same one
    hooks.stop = [&] {
      int64_t stop = cb.stop && cb.stop() ? 1 : 0;
      world.allreduce_max(&stop, 1);
      return stop != 0;
    };
  hooks.log = log_line;
  hooks.progress = [&](int64_t done, const StepStats& s) {
    last = s;
    if (cb.progress) cb.progress(done, steps, s, tokens_per_s(done));
  };
  if (live)
    hooks.checkpoint = [&](int64_t done) {
      const Timer ct;
      if (writes) metrics.sync();  // the lines up to this step are on disk before the checkpoint that resumes after them
      train::write_checkpoint(work_dir, done, trainer, checkpoint_extra(seconds_before + clock.seconds()), keep);
      checkpoint_seconds += ct.seconds();
    };
  LoopSpec spec;
  spec.start = start;
  spec.steps = steps;
  spec.log_every = topt.log_every;
  spec.checkpoint_every = checkpoint_every;
  if (cb.started) cb.started(cfg, start, steps);
  LoopResult lr;
  try {
    run_loop(trainer, spec, interval, hooks, lr);
    if (data_fault && lr.done == start) throw *data_fault;  // nothing trained: nothing to save
    if (lr.data_ended && lr.done == 0 && !data_fault)
      usage_error(opt("data"), ": the stream ended before one batch of ", batch, " rows; nothing to train on (lower ",
                  opt("batch"), ")");
    if (lr.data_ended && interval.steps > 0 && !data_fault) {  // the stream ended between two logging points
      log_line(lr.done, interval, last);
      interval = train::MetricsInterval{};
    }
  } catch (...) {
    try {
      metrics.close();
    } catch (const std::exception&) {
    }
    if (writes && !live) io::remove_all(work_dir);
    keep_previous();
    throw;
  }
  if (writes) metrics.close();
  const double session_seconds = clock.seconds();
  const double train_seconds = seconds_before + session_seconds;
  const int64_t done = lr.done;
  const bool completed = !lr.interrupted && !data_fault;
  const data::DataStats dstats = source ? source->stats() : data::DataStats{};
  if (data_fault) {
    // The state is saved unless that would displace an earlier output (a live run with --overwrite keeps
    // the earlier output aside and its own periodic checkpoints, see keep_previous).
    const bool save = has_out && source && replacing == 0;
    log_warn(cat(data_fault->what(), "; training stopped after ", done, " of ", steps, " steps",
                 save ? "; saving a checkpoint and the SAE as they are" : ""));
    if (save) train::write_checkpoint(work_dir, done, trainer, checkpoint_extra(train_seconds), keep);
  } else if (!completed) {
    log_warn(cat("interrupted after ", done, " of ", steps, " steps",
                 writes ? cat("; saving a checkpoint and the SAE as it is (continue with: ", opt("resume"), " ", out, ")")
                        : ""));
    if (has_out && source) train::write_checkpoint(work_dir, done, trainer, checkpoint_extra(train_seconds), keep);
  }
  if (dstats.nonfinite_skipped > 0)
    log_warn(cat("skipped ", dstats.nonfinite_skipped, " rows with non-finite values (first: ", dstats.first_skipped, ")"));
  if (source && !synthetic && done - start > 0)
    say(cb, cat("reader: waited ", dstats.wait_seconds, " s for data in ", session_seconds, " s of training (reader busy ",
                dstats.reader_busy_seconds, " s); ", dstats.epochs, " epochs read"));
  source.reset();  // stops the reader thread

  Result res;
  res.completed = completed;
  res.steps = done;
  res.steps_planned = steps;
  res.batch = batch;
  res.cfg = cfg;
  res.synthetic = synthetic;
  res.seconds = train_seconds;
  res.session_tokens_per_s = static_cast<double>((done - start) * batch) / std::max(session_seconds, 1e-9);
  // ---- the exported SAE takes raw activations: the normalization is folded into the weights
  res.params = std::as_const(trainer).params();
  if (scale != 1.0f) saedir::fold_input_scale(res.params, scale);

  train::RunFacts facts;
  facts.completed = completed;
  facts.steps = done;
  facts.steps_planned = steps >= 0 ? json(steps) : json(nullptr);
  facts.seed = seed;
  facts.shuffle = !synthetic && !stream && !o.flag("no_shuffle");
  facts.data = stream && in.stream_describe ? in.stream_describe() : data_name;
  facts.init = init_name.empty() ? json(nullptr) : json(init_name);
  facts.normalize = normalize;
  facts.scale = scale;
  facts.epochs = dstats.epochs;
  facts.nonfinite_rows_skipped = dstats.nonfinite_skipped;
  facts.seconds = train_seconds;
  facts.tokens_per_s = res.session_tokens_per_s;
  res.msae_json = train::run_record(trainer, facts);
  json& training = res.msae_json["training"];
  training["options"] = o.to_json();
  json data_opts = json::object();  // every data option in force (given or default)
  for (const OptionDef& row : option_table())
    if (row.group == OptGroup::data && row.key != std::string("data") && !o.automatic(row.key))
      data_opts[row.key] = o.given(row.key) ? o.given_json().at(row.key) : row.def;
  training["data_options"] = synthetic || stream ? json(nullptr) : data_opts;
  training["held_out_rows"] = holdout;
  training["reader_wait_seconds"] = dstats.wait_seconds;
  training["checkpoint_every"] = checkpoint_every;
  training["checkpoint_seconds"] = checkpoint_seconds;
  training["resumed_at_steps"] = resumed_at;
  training["schedule"] = schedule_json(topt);
  if (!synthetic && !array && !stream)
    if (json hook = harvest_hook(data_spec); !hook.is_null()) res.msae_json["hook"] = std::move(hook);
  // ---- the SAE goes to disk before the final evaluation (which takes minutes at large D, and may be cut
  // short by a scheduler's SIGTERM then SIGKILL); msae.json gains the evaluation once it is done.
  // A run that failed on its data does not replace an earlier output: its state goes beside it (or, in
  // a run that lives in `out`, stays in out's checkpoints while the earlier output stays aside).
  const std::string target = data_fault && !live && out_existed ? cat(out, ".failed-", getpid()) : out;
  if (writes && data_fault && !replaced.empty()) {
    keep_previous();
  } else if (writes) {
    try {
      res.msae_json["files"] = saedir::write_sae_files(work_dir, cfg, res.params, res.msae_json);
      if (!live) io::commit_directory(work_dir, target, o.flag("overwrite"));
    } catch (...) {
      if (!live) io::remove_all(work_dir);
      keep_previous();
      throw;
    }
    if (!replaced.empty()) io::remove_all(replaced);
    res.out = target;
    say(cb, cat("wrote ", target, completed ? " (the final evaluation follows)" : ""));
  }
  if (data_fault) {
    if (!writes || !train::has_checkpoint(target)) throw *data_fault;
    MSAE_ASSERT(root);
    runtime_error(data_fault->what(), "; the run's last checkpoint is in ", target, " (", opt("resume"), " ", target,
                  " continues it once the data is whole again)");
  }

  if (!root) return res;  // the root evaluates the whole SAE; the others' res.params hold no latents

  // ---- final evaluation (inference encoding at the learned threshold) on raw activations the run did
  // not train on. Skipped for an interrupted run: a signal asks to stop soon (schedulers follow SIGTERM
  // with SIGKILL), and at large D it takes minutes; `msae eval` gives the figures on demand.
  // The SAE is on disk already: a failing evaluation (the data deleted or changed under the run, say)
  // is reported and recorded, and the run still ends with its SAE.
  try {
    // The evaluation rows (opened again after a calibration pass has read them).
    auto open_eval = [&]() -> std::unique_ptr<data::ActivationSource> {
      std::unique_ptr<data::ActivationSource> eval_source;
      data::DataOptions eo = data_options(o, false, 0);
      if (synthetic) {
        eval_source = data::open_synthetic(synthetic_eval_seed(seed));
        res.eval_on = "held-out synthetic rows (another seed of the generator)";
      } else if (in.eval_array) {
        if (in.eval_array_d != d)
          usage_error("the held-out rows (", in.eval_array_name, ") have width ", in.eval_array_d, " but the training data has ", d);
        eval_source = data::open_array(in.eval_array, in.eval_array_rows, in.eval_array_d, in.eval_array_name, eo);
        res.eval_on = cat("held-out rows of ", in.eval_array_name);
      } else if (!eval_data.empty()) {
        eval_source = data::open_data(eval_data, eo);
        if (eval_source->d() != d)
          usage_error(opt("eval_data"), " ", eval_data, " has width ", eval_source->d(), " but the training data has ", d);
        res.eval_on = cat("rows of ", eval_data, " (", opt("eval_data"), ")");
      } else if (holdout > 0) {
        eo.row_begin = total_rows - holdout;
        eval_source = open_file_data(eo);
        res.eval_on = cat("held-out rows [", total_rows - holdout, ", ", total_rows, ") of ", data_name,
                          " (training read only the rows before them)");
      } else if (!stream) {
        eval_source = open_file_data(eo);
        res.eval_on = cat("rows of ", data_name, " that training also read (", opt("holdout_rows"), " 0)");
      }
      return eval_source;
    };
    std::unique_ptr<data::ActivationSource> eval_source = completed ? open_eval() : nullptr;
    bool calibrated = false;
    if (eval_source) {
      res.eval_rows = eval_source->rows() > 0 ? std::min(eval_source->rows(), eval_rows_cap) : eval_rows_cap;
      if (o.flag("calibrate_threshold")) {
        const float ema = res.params.threshold;
        res.params.threshold = eval::calibrate_threshold(cfg, res.params, *eval_source, res.eval_rows);
        calibrated = true;
        res.msae_json["training"]["threshold_calibration"] = {
            {"ema_threshold", json_number(ema)}, {"calibrated_threshold", json_number(res.params.threshold)},
            {"rows", res.eval_rows},
            {"on", res.eval_on}};
        say(cb, cat("threshold: ", res.params.threshold, " (calibrated for inference L0 = k on ", res.eval_rows,
                    " evaluation rows; the training EMA was ", ema, ")"));
        if (writes) res.msae_json["files"] = saedir::write_sae_files(target, cfg, res.params, res.msae_json);
        eval_source = open_eval();
      }
      res.eval = eval::evaluate(cfg, res.params, *eval_source, res.eval_rows);
      res.evaluated = true;
    }
    if (res.evaluated) {
      res.final_metrics = eval::to_json(res.eval);
      res.final_metrics["evaluated_on"] = res.eval_on;
      res.final_metrics["evaluated_rows"] = res.eval_rows;
      res.final_metrics["quality"] = sae_quality(cfg, res.eval, done, last_train_fvu, calibrated);
      if (synthetic) {
        const synth::PlantedDictionary truth = synth::make_planted(synth::default_planted_config());
        const eval::RecoveryReport rec = eval::score_recovery(truth.directions, res.params.W_dec.ptr(), cfg.d_sae);
        res.final_metrics["recovery"] = {{"mean_max_cosine", rec.mean_max_cosine},
                                         {"frac_recovered_cos_0.9", rec.frac_recovered},
                                         {"mcc", rec.mcc}};
      }
    }
  } catch (const Error& e) {
    res.evaluated = false;
    res.eval_error = e.what();
    res.msae_json["final_evaluation_error"] = res.eval_error;
    log_warn(cat("the final evaluation failed: ", e.what(), writes ? cat("; the SAE is written (", opt("out"), " ", target,
                                                                       "): msae eval gives its figures") : ""));
    if (writes) io::write_text_file_atomic(target + "/msae.json", res.msae_json.dump(2) + "\n");
  }
  if (res.evaluated) {
    res.msae_json["final_metrics"] = res.final_metrics;
    if (writes) io::write_text_file_atomic(target + "/msae.json", res.msae_json.dump(2) + "\n");
  }
  if (writes) write_run_report(target, res);
  return res;
}

}  // namespace msae::run
