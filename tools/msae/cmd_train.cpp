// msae train: trains an SAE (default: the published Matryoshka BatchTopK recipe, SPEC.md) and writes a
// SAELens-layout directory. The directory is written under a temporary name and renamed at the end, so
// a failed run never leaves a half-written SAE and never touches an existing one without --overwrite.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>

#include "commands.h"
#include "data_args.h"
#include "msae/eval.h"
#include "msae/io.h"
#include "msae/recovery.h"
#include "msae/sae_dir.h"
#include "msae/synth.h"
#include "msae/train.h"
#include "progress.h"
#include "variant_flags.h"

namespace msae::cli {
namespace {

using nlohmann::json;

using SynthDefaults = data::SyntheticDefaults;  // data-dependent defaults on the embedded dataset
constexpr int64_t kEvalRows = 16384;
constexpr int64_t kNormSampleRows = 262144;  // rows sampled to estimate the expected-norm scale

struct TrainArgs {
  DataArgs data_args;
  std::string data;  // = data_args.data (kept for the code below)
  bool synthetic = false;
  std::string normalize = "none";
  int64_t checkpoint_every = 0;
  int keep_checkpoints = 2;
  std::string resume;
  std::vector<std::string> given_flags;  // the options given on the command line (recorded for --resume)
  std::string arch = "matryoshka";
  int64_t d_sae = 0;
  std::string group_sizes;
  int64_t k = 0;
  int64_t batch = 0;
  int64_t steps = 0;
  int64_t tokens = 0;
  float lr = 3e-4f;
  uint64_t seed = 0;
  std::string init;
  bool no_shuffle = false;
  int64_t dead_after = 20;
  int64_t aux_k = 512;
  float aux_coef = 1.0f / 32.0f;
  float max_grad_norm = 1e5f;
  bool encoder_bias = false;
  std::string out;
  bool overwrite = false;
  int64_t log_every = 0;
  int threads = 0;
  std::string engine = "sparse";
  double aux_dense_density = SparseEngineOptions{}.aux_dense_min_density;
  VariantArgs variants;  // variant_flags.h
};

std::atomic<bool> g_interrupted{false};
extern "C" void on_interrupt(int) { g_interrupted = true; }

std::vector<int64_t> parse_group_sizes(const std::string& text) {
  std::vector<int64_t> sizes;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size())
      usage_error("--group-sizes: '", item, "' is not an integer; expected a comma-separated list such as 64,64,128,256,512");
    sizes.push_back(v);
  }
  if (sizes.empty()) usage_error("--group-sizes: empty list");
  return sizes;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// The run's flags as recorded in every checkpoint: --resume DIR rebuilds the run from them.
json args_json(const TrainArgs& a) {
  return {{"data_args", a.data_args.to_json()},
          {"synthetic", a.synthetic},
          {"normalize", a.normalize},
          {"checkpoint_every", a.checkpoint_every},
          {"keep_checkpoints", a.keep_checkpoints},
          {"arch", a.arch},
          {"d_sae", a.d_sae},
          {"group_sizes", a.group_sizes},
          {"k", a.k},
          {"batch", a.batch},
          {"steps", a.steps},
          {"lr", a.lr},
          {"seed", a.seed},
          {"init", a.init},
          {"no_shuffle", a.no_shuffle},
          {"dead_after", a.dead_after},
          {"aux_k", a.aux_k},
          {"aux_coef", a.aux_coef},
          {"max_grad_norm", a.max_grad_norm},
          {"encoder_bias", a.encoder_bias},
          {"log_every", a.log_every},
          {"threads", a.threads},
          {"engine", a.engine},
          {"aux_dense_density", a.aux_dense_density},
          {"variants", variant_args_json(a.variants)},
          {"given_flags", a.given_flags}};
}

TrainArgs args_from_json(const json& j, const std::string& where) {
  TrainArgs a;
  try {
    a.data_args.from_json(j.at("data_args"));
    a.data = a.data_args.data;
    a.synthetic = j.at("synthetic").get<bool>();
    a.normalize = j.at("normalize").get<std::string>();
    a.checkpoint_every = io::json_int(j.at("checkpoint_every"), "checkpoint run state \"checkpoint_every\"");
    a.keep_checkpoints = static_cast<int>(io::json_int(j.at("keep_checkpoints"), "checkpoint run state \"keep_checkpoints\"", INT32_MIN, INT32_MAX));
    a.arch = j.at("arch").get<std::string>();
    a.d_sae = io::json_int(j.at("d_sae"), "checkpoint run state \"d_sae\"");
    a.group_sizes = j.at("group_sizes").get<std::string>();
    a.k = io::json_int(j.at("k"), "checkpoint run state \"k\"");
    a.batch = io::json_int(j.at("batch"), "checkpoint run state \"batch\"");
    a.steps = io::json_int(j.at("steps"), "checkpoint run state \"steps\"");
    a.lr = io::json_float(j.at("lr"), "checkpoint run state \"lr\"");
    a.seed = io::json_uint64(j.at("seed"), "checkpoint run state \"seed\"");
    a.init = j.at("init").get<std::string>();
    a.no_shuffle = j.at("no_shuffle").get<bool>();
    a.dead_after = io::json_int(j.at("dead_after"), "checkpoint run state \"dead_after\"");
    a.aux_k = io::json_int(j.at("aux_k"), "checkpoint run state \"aux_k\"");
    a.aux_coef = io::json_float(j.at("aux_coef"), "checkpoint run state \"aux_coef\"");
    a.max_grad_norm = io::json_float(j.at("max_grad_norm"), "checkpoint run state \"max_grad_norm\"");
    a.encoder_bias = j.at("encoder_bias").get<bool>();
    a.log_every = io::json_int(j.at("log_every"), "checkpoint run state \"log_every\"");
    a.threads = static_cast<int>(io::json_int(j.at("threads"), "checkpoint run state \"threads\"", INT32_MIN, INT32_MAX));
    a.engine = j.at("engine").get<std::string>();
    // (runs checkpointed before the flag existed continue with today's default)
    if (j.contains("aux_dense_density"))
      a.aux_dense_density = io::json_double(j.at("aux_dense_density"), "checkpoint run state \"aux_dense_density\"");
    a.variants = variant_args_from_json(j.at("variants"));
    a.given_flags = j.at("given_flags").get<std::vector<std::string>>();
  } catch (const json::exception& e) {
    runtime_error(where, ": the run's recorded flags are malformed: ", e.what());
  }
  return a;
}

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

int run_train(TrainArgs a, const CLI::App& app) {
  // ---- --resume DIR: the run's own flags come from its checkpoint
  std::optional<train::Checkpoint> ckpt;
  if (!a.resume.empty()) {
    for (const CLI::Option* o : app.get_options())
      if (o->count() > 0 && o->get_name() != "--resume" && o->get_name() != "--threads")
        usage_error("--resume DIR continues a run with the flags it was started with (recorded in its checkpoint); ",
                    "drop ", o->get_name(), " (only --threads may be given, and bit-identical results need the same count)");
    std::string dir = a.resume;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    ckpt = train::read_checkpoint(dir);
    const bool threads_given = app.count("--threads") > 0;
    const int threads = a.threads;
    try {
      a = args_from_json(ckpt->extra.at("args"), ckpt->path);
    } catch (const json::exception& e) {
      runtime_error(ckpt->path, "/state.json: no recorded run flags: ", e.what());
    }
    if (threads_given && threads != a.threads)
      log_warn(cat("--threads ", threads, " differs from the run's ", a.threads,
                   " threads: the result will not be bit-identical to an uninterrupted run"));
    if (threads_given) a.threads = threads;
    a.out = dir;
    a.resume = dir;
  }
  if (a.resume.empty())
    for (const CLI::Option* o : app.get_options())
      if (o->count() > 0) a.given_flags.push_back(o->get_name());
  a.data = a.data_args.data;
  set_num_threads(a.threads);
  kernels::set_blas_threads(num_threads());
  a.threads = num_threads();  // recorded resolved, so a resumed run uses the same count

  // ---- data
  if (!a.data.empty() && a.synthetic) usage_error("--data and --synthetic are mutually exclusive");
  const bool synthetic = a.data.empty();
  if (synthetic && (!a.data_args.dtype.empty() || a.data_args.bf16 || !a.data_args.tensor.empty() || a.data_args.d_in))
    usage_error("--dtype, --bf16, --tensor and --d-in describe --data files; the synthetic data needs none");
  if (a.normalize != "none" && a.normalize != "expected-norm")
    usage_error("--normalize: unknown method '", a.normalize, "'; expected none or expected-norm");
  if (synthetic && a.normalize != "none")
    usage_error("--normalize expected-norm applies to --data files (the synthetic data is generated at unit scale)");
  if (a.checkpoint_every < 0) usage_error("--checkpoint-every must be >= 0, got ", a.checkpoint_every);
  if (a.keep_checkpoints < 1) usage_error("--keep-checkpoints must be >= 1, got ", a.keep_checkpoints);
  const int64_t batch = a.batch > 0 ? a.batch : (synthetic ? SynthDefaults::batch : 4096);
  if (a.batch < 0 || (app.count("--batch") && a.batch <= 0)) usage_error("--batch must be positive, got ", a.batch);

  // The output directory is refused before any work.
  while (a.out.size() > 1 && a.out.back() == '/') a.out.pop_back();  // "DIR/" names DIR
  if (a.out.empty()) usage_error("--out DIR is required");
  if (!ckpt && io::path_exists(a.out) && !a.overwrite)
    usage_error("output directory '", a.out, "' exists; pass --overwrite to replace it (or --resume ", a.out,
                " to continue an interrupted run)");

  // Normalization: the scale is estimated once (or taken from the checkpoint) and applied by the reader.
  float scale = 1.0f;
  if (a.normalize == "expected-norm") {
    if (ckpt) {
      scale = io::json_float(ckpt->extra.at("scale"), "checkpoint run state \"scale\"");
    } else {
      data::DataOptions so = a.data_args.options(true, a.seed ^ 0x6e6f726dULL);
      so.shuffle_buffer = 65536;
      std::unique_ptr<data::ActivationSource> sample = data::open_data(a.data, so);
      const int64_t n = std::min<int64_t>(sample->rows(), kNormSampleRows);
      scale = static_cast<float>(data::estimate_norm_scale(*sample, n));
      log_info(cat("normalization: expected-norm scale ", scale, " (sqrt(d) / mean row norm over ", n, " sampled rows)"));
    }
  }

  std::unique_ptr<data::ActivationSource> source;
  if (synthetic) {
    source = data::open_synthetic(a.seed);
  } else {
    data::DataOptions o = a.data_args.options(!a.no_shuffle, a.seed);
    o.scale = scale;
    o.prefetch_batch = a.data_args.no_reader_thread ? 0 : batch;
    source = data::open_data(a.data, o);
  }
  const int64_t d = source->d();

  // ---- init and config
  std::unique_ptr<SaeParams> init_params;
  SaeConfig cfg;
  cfg.arch = parse_arch(a.arch);
  cfg.d_in = d;
  if (!a.init.empty() && !ckpt) {
    saedir::SaeDirectory init_dir = saedir::read_sae_dir(a.init);
    if (init_dir.params.d != d)
      usage_error("--init ", a.init, ": the SAE has d_in ", init_dir.params.d, " but the data has width ", d);
    if (a.d_sae == 0) a.d_sae = init_dir.params.D;
    if (init_dir.params.D != a.d_sae)
      usage_error("--init ", a.init, ": the SAE has d_sae ", init_dir.params.D, " but --d-sae is ", a.d_sae);
    init_params = std::make_unique<SaeParams>(std::move(init_dir.params));
    init_params->rule = EncodeRule{};  // an imported SAE's inference rule is not the trained one
    // The --init SAE takes raw activations; training sees x * scale.
    if (scale != 1.0f) saedir::unfold_input_scale(*init_params, scale);
  }
  cfg.d_sae = a.d_sae > 0 ? a.d_sae : (synthetic ? SynthDefaults::d_sae : 8 * d);
  if (app.count("--d-sae") && a.d_sae <= 0) usage_error("--d-sae must be positive, got ", a.d_sae);
  a.d_sae = cfg.d_sae;
  cfg.k = a.k > 0 || app.count("--k") ? a.k : (synthetic ? SynthDefaults::k : 32);
  a.k = cfg.k;
  if (!a.group_sizes.empty()) cfg.group_sizes = parse_group_sizes(a.group_sizes);
  cfg.encoder_bias = a.encoder_bias;
  cfg.dead_after_batches = a.dead_after;
  cfg.aux_k = a.aux_k;
  cfg.aux_coef = a.aux_coef;
  cfg.finalize();

  train::TrainOptions opt;
  opt.sae = cfg;
  opt.batch = batch;
  a.batch = batch;
  if (app.count("--steps") && app.count("--tokens")) usage_error("give --steps or --tokens, not both");
  if (app.count("--steps") || a.steps > 0) {
    if (a.steps <= 0) usage_error("--steps must be positive, got ", a.steps);
    opt.steps = a.steps;
  } else if (app.count("--tokens")) {
    if (a.tokens <= 0) usage_error("--tokens must be positive, got ", a.tokens);
    opt.steps = (a.tokens + opt.batch - 1) / opt.batch;
  } else {
    opt.steps = synthetic ? SynthDefaults::steps : std::max<int64_t>(1, (source->rows() + opt.batch - 1) / opt.batch);
  }
  a.steps = opt.steps;
  if (!(a.lr > 0.0f)) usage_error("--lr must be positive, got ", a.lr);
  if (!(a.max_grad_norm > 0.0f)) usage_error("--max-grad-norm must be positive, got ", a.max_grad_norm);
  opt.adam.lr = a.lr;
  opt.max_grad_norm = a.max_grad_norm;
  opt.seed = a.seed;
  opt.engine = a.engine;
  if (!(a.aux_dense_density >= 0.0)) usage_error("--aux-dense-density must be >= 0, got ", a.aux_dense_density);
  opt.sparse_engine.aux_dense_min_density = a.aux_dense_density;
  opt.log_every = a.log_every > 0 ? a.log_every : std::max<int64_t>(1, opt.steps / 100);
  a.log_every = opt.log_every;
  apply_variant_args(
      a.variants,
      [&](const std::string& flag) {
        return std::find(a.given_flags.begin(), a.given_flags.end(), flag) != a.given_flags.end();
      },
      opt);
  cfg = opt.sae;

  SaeParams params = init_params ? std::move(*init_params) : SaeParams::init(d, cfg.d_sae, a.seed);
  train::Trainer trainer(opt, std::move(params));
  int64_t start_step = 0;
  double seconds_before = 0.0;
  train::MetricsInterval interval;
  std::vector<int64_t> resumed_at;
  if (ckpt) {
    if (ckpt->params.d != d || ckpt->params.D != cfg.d_sae)
      runtime_error(ckpt->path, ": the checkpoint has d_in ", ckpt->params.d, ", d_sae ", ckpt->params.D,
                    " but the run's data and flags give ", d, ", ", cfg.d_sae);
    if (ckpt->step > opt.steps) runtime_error(ckpt->path, ": step ", ckpt->step, " is past the run's ", opt.steps, " steps");
    start_step = ckpt->step;
    try {
      source->set_state(ckpt->extra.at("data"));
      interval = train::MetricsInterval::from_state_json(ckpt->extra.at("interval"), "checkpoint run state");
      seconds_before = io::json_double(ckpt->extra.at("seconds"), "checkpoint run state \"seconds\"");
      resumed_at = io::json_int_vector(ckpt->extra.at("resumed_at"), "checkpoint run state \"resumed_at\"");
    } catch (const json::exception& e) {
      runtime_error(ckpt->path, "/state.json: malformed run state: ", e.what());
    }
    resumed_at.push_back(start_step);
    trainer.restore(std::move(ckpt->params), std::move(ckpt->opt), std::move(ckpt->latents));
    trainer.restore_variants(ckpt->extra.at("variant_state"));
    log_info(cat("resuming ", a.out, " from ", ckpt->path, " (step ", start_step, " of ", opt.steps, ")"));
  }

  log_info(cat("data: ", source->describe()));
  log_info(cat("model: ", arch_name(cfg.arch), " SAE, d=", d, " D=", cfg.d_sae, " k=", cfg.k, " groups=",
               json(cfg.group_sizes).dump(), cfg.encoder_bias ? " +encoder-bias" : "",
               a.init.empty() ? "" : cat(" init from ", a.init)));
  log_info(cat("training: ", opt.steps, " steps x batch ", opt.batch, " = ", opt.steps * opt.batch, " tokens, lr ",
               opt.adam.lr, ", engine ", trainer.options().engine, ", ", num_threads(), " threads, BLAS: ",
               kernels::blas_info()));

  // ---- output directory. With checkpoints (or when resuming) the run lives in --out from the start:
  // checkpoints/ and metrics.jsonl there, the SAE files written at the end (each atomically). Otherwise it
  // is written under a temporary name and renamed into place when complete.
  const bool live = ckpt || a.checkpoint_every > 0;
  const std::string work_dir = live ? a.out : cat(a.out, ".tmp-", getpid());
  if (!live) {
    io::remove_all(work_dir);
    io::create_directories(work_dir);
  } else if (!ckpt) {
    if (io::path_exists(a.out)) io::remove_all(a.out);  // --overwrite (checked above)
    io::create_directories(a.out);
  }
  const std::string metrics_path = work_dir + "/metrics.jsonl";
  if (ckpt) truncate_metrics(metrics_path, start_step);
  std::ofstream metrics(metrics_path, ckpt ? std::ios::app : std::ios::trunc);
  if (!metrics) runtime_error("cannot write ", metrics_path);

  auto checkpoint_extra = [&](int64_t done, double secs) {
    return json{{"args", args_json(a)},   {"data", source->state()}, {"interval", interval.state_json()},
                {"scale", scale},         {"seconds", secs},          {"resumed_at", resumed_at},
                {"variant_state", trainer.variant_state().state_json()}};
  };

  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
  std::vector<float> batch_buf(opt.batch * d);
  Progress progress(opt.steps);
  Timer clock;
  int64_t step = start_step;
  double checkpoint_seconds = 0.0;
  try {
    for (step = start_step; step < opt.steps && !g_interrupted; ++step) {
      source->next_batch(opt.batch, batch_buf.data());
      const StepStats& s = trainer.step(batch_buf.data());
      if (!std::isfinite(s.loss))
        runtime_error("the loss became ", s.loss, " at step ", step + 1, "; lower --lr or check the data");
      interval.add(s);
      const int64_t done = step + 1;
      const double secs = seconds_before + clock.seconds();
      const double tps = static_cast<double>((done - start_step) * opt.batch) / std::max(clock.seconds(), 1e-9);
      if (done % opt.log_every == 0 || done == opt.steps) {
        json line = interval.to_json();
        line["step"] = done;
        line["tokens"] = done * opt.batch;
        line["seconds"] = secs;
        line["tokens_per_s"] = tps;
        line["n_dead"] = s.n_dead;
        line["dead_fraction"] = static_cast<double>(s.n_dead) / static_cast<double>(cfg.d_sae);
        line["threshold"] = trainer.params().threshold;
        line["grad_norm"] = trainer.last_grad_norm();
        metrics << line.dump() << "\n";
        metrics.flush();
        interval = train::MetricsInterval{};
      }
      if (a.checkpoint_every > 0 && done % a.checkpoint_every == 0 && done < opt.steps) {
        const Timer ct;
        train::write_checkpoint(work_dir, done, trainer, checkpoint_extra(done, secs), a.keep_checkpoints);
        checkpoint_seconds += ct.seconds();
      }
      const double fvu = s.var_x > 0 ? s.mse_prefix.back() / s.var_x : 0.0;
      progress.update(done,
                      cat("step ", done, "/", opt.steps, " | ", fmt("%.0f", tps), " tok/s | loss ", fmt("%.4g", s.loss),
                          " | FVU ", fmt("%.4f", fvu), " | L0 ", fmt("%.1f", s.l0), " | dead ",
                          fmt("%.1f", 100.0 * static_cast<double>(s.n_dead) / static_cast<double>(cfg.d_sae)), "%"),
                      done == opt.steps);
    }
  } catch (...) {
    progress.finish();
    metrics.close();
    if (!live) io::remove_all(work_dir);
    throw;
  }
  progress.finish();
  metrics.close();
  const double session_seconds = clock.seconds();
  const double train_seconds = seconds_before + session_seconds;
  const bool completed = step == opt.steps;
  const data::DataStats dstats = source->stats();
  if (!completed) {
    log_warn(cat("interrupted after ", step, " of ", opt.steps, " steps; saving a checkpoint and the SAE as it is (",
                 "continue with: msae train --resume ", a.out, ")"));
    train::write_checkpoint(work_dir, step, trainer, checkpoint_extra(step, train_seconds), a.keep_checkpoints);
  }
  if (dstats.nonfinite_skipped > 0)
    log_warn(cat("skipped ", dstats.nonfinite_skipped, " rows with non-finite values (first: ", dstats.first_skipped, ")"));
  if (!synthetic && opt.steps - start_step > 0)
    log_info(cat("reader: waited ", fmt("%.2f", dstats.wait_seconds), " s for data in ", fmt("%.1f", session_seconds),
                 " s of training (reader busy ", fmt("%.1f", dstats.reader_busy_seconds), " s); ",
                 fmt("%.2f", dstats.epochs), " epochs read"));
  source.reset();  // stops the reader thread

  // ---- the exported SAE takes raw activations: the normalization is folded into the weights
  SaeParams out_params = trainer.params();
  if (scale != 1.0f) saedir::fold_input_scale(out_params, scale);

  // ---- final evaluation (inference encoding at the learned threshold), on raw activations. Skipped for
  // an interrupted run: a signal asks to stop soon (schedulers follow SIGTERM with SIGKILL), and at large D
  // the evaluation takes minutes; `msae eval` gives the figures on demand.
  std::unique_ptr<data::ActivationSource> eval_source;
  if (synthetic) {
    eval_source = data::open_synthetic(a.seed + 1000003);
  } else {
    eval_source = data::open_data(a.data, a.data_args.options(false, 0));
  }
  const int64_t eval_rows = eval_source->rows() > 0 ? std::min(eval_source->rows(), kEvalRows) : kEvalRows;
  const eval::EvalReport report = completed ? eval::evaluate(cfg, out_params, *eval_source, eval_rows) : eval::EvalReport{};
  json final_metrics = completed ? eval::to_json(report) : json(nullptr);
  if (synthetic && completed) {
    const synth::PlantedDictionary truth = synth::make_planted(synth::default_planted_config());
    const eval::RecoveryReport rec = eval::score_recovery(truth.directions, out_params.W_dec.ptr(), cfg.d_sae);
    final_metrics["recovery"] = {{"mean_max_cosine", rec.mean_max_cosine},
                                 {"frac_recovered_cos_0.9", rec.frac_recovered},
                                 {"mcc", rec.mcc}};
  }

  train::RunFacts facts;
  facts.completed = completed;
  facts.steps = step;
  facts.steps_planned = opt.steps;
  facts.seed = a.seed;
  facts.shuffle = !synthetic && !a.no_shuffle;
  facts.data = synthetic ? "synthetic" : a.data;
  facts.init = a.init.empty() ? json(nullptr) : json(a.init);
  facts.normalize = a.normalize;
  facts.scale = scale;
  facts.epochs = dstats.epochs;
  facts.nonfinite_rows_skipped = dstats.nonfinite_skipped;
  facts.seconds = train_seconds;
  facts.tokens_per_s = static_cast<double>((step - start_step) * opt.batch) / std::max(session_seconds, 1e-9);
  json msae_json = train::run_record(trainer, facts);
  json& training = msae_json["training"];
  training["data_options"] = synthetic ? json(nullptr) : a.data_args.to_json();
  training["reader_wait_seconds"] = dstats.wait_seconds;
  training["checkpoint_every"] = a.checkpoint_every;
  training["checkpoint_seconds"] = checkpoint_seconds;
  training["resumed_at_steps"] = resumed_at;
  if (completed) msae_json["final_metrics"] = final_metrics;
  msae_json["training"]["schedule"] = schedule_json(opt);
  saedir::write_sae_files(work_dir, cfg, out_params, msae_json);
  if (!live) io::commit_directory(work_dir, a.out, a.overwrite);
  log_info(cat("wrote ", a.out));

  // ---- summary on stdout
  std::printf("msae train: %s SAE (d=%lld, D=%lld, k=%lld) %s after %lld steps, %lld tokens, %.1f s (%.0f tokens/s)\n",
              arch_name(cfg.arch), static_cast<long long>(d), static_cast<long long>(cfg.d_sae),
              static_cast<long long>(cfg.k), completed ? "trained" : "INTERRUPTED", static_cast<long long>(step),
              static_cast<long long>(step * opt.batch), train_seconds,
              static_cast<double>((step - start_step) * opt.batch) / std::max(session_seconds, 1e-9));
  if (!completed) {  // no evaluation of an interrupted run
    std::printf("output: %s (resume with: msae train --resume %s)\n", a.out.c_str(), a.out.c_str());
    return 130;
  }
  std::printf("evaluation on %lld %s rows (threshold %.4g):\n", static_cast<long long>(eval_rows),
              synthetic ? "held-out synthetic" : "data", report.threshold);
  std::printf("  %-8s %-9s %-11s %-9s %-8s\n", "prefix", "latents", "MSE", "FVU", "L0");
  for (size_t g = 0; g < report.prefixes.size(); ++g) {
    const auto& m = report.prefixes[g];
    std::printf("  %-8zu %-9lld %-11.4g %-9.4f %-8.2f\n", g + 1, static_cast<long long>(m.latents), m.mse, m.fvu, m.l0);
  }
  std::printf("  dead latents %.1f%%, dense latents %.1f%%\n", 100 * report.dead_fraction, 100 * report.dense_fraction);
  if (synthetic)
    std::printf("  planted features recovered (cos >= 0.9): %.1f%%, mean max cosine %.3f\n",
                100 * final_metrics["recovery"]["frac_recovered_cos_0.9"].get<double>(),
                final_metrics["recovery"]["mean_max_cosine"].get<double>());
  std::printf("output: %s\n", a.out.c_str());
  return 0;
}

}  // namespace

Action add_train_command(CLI::App& root) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* app = root.add_subcommand("train", "Train an SAE (default: Matryoshka BatchTopK on the embedded synthetic data)");
  a->data_args.add_to(app, true);
  app->add_flag("--synthetic", a->synthetic, "Train on the embedded synthetic dataset (the default when --data is absent)");
  app->add_option("--normalize", a->normalize,
                  "none | expected-norm (scale rows so the mean norm is sqrt(d), as SAELens' expected_average_only_in; "
                  "folded into the exported weights)")->capture_default_str();
  app->add_option("--checkpoint-every", a->checkpoint_every, "Write a checkpoint to OUT/checkpoints/ every N steps (0: only on SIGINT/SIGTERM)");
  app->add_option("--keep-checkpoints", a->keep_checkpoints, "Checkpoints kept (the newest)")->capture_default_str();
  app->add_option("--resume", a->resume, "Continue the interrupted run in this --out directory from its latest checkpoint (no other flags)");
  app->add_option("--arch", a->arch, "matryoshka | batchtopk | topk")->capture_default_str();
  app->add_option("--d-sae", a->d_sae, "Number of latents D (default: 8*d; 512 on the synthetic data; from --init)");
  app->add_option("--group-sizes", a->group_sizes, "Matryoshka group sizes summing to D (default D/16,D/16,D/8,D/4,D/2)");
  app->add_option("--k", a->k, "Mean active latents per row (default 32; 3 on the synthetic data)");
  app->add_option("--batch", a->batch, "Rows per batch B (default 4096; 1024 on the synthetic data)");
  app->add_option("--steps", a->steps, "Optimizer steps (default: one epoch of --data; 2400 on the synthetic data)");
  app->add_option("--tokens", a->tokens, "Training tokens (rows); steps = ceil(tokens / batch)");
  app->add_option("--lr", a->lr, "Adam learning rate")->capture_default_str();
  app->add_option("--seed", a->seed, "Seed for initialization and shuffling")->capture_default_str();
  app->add_option("--init", a->init, "Start from the tensors of a SAELens-layout SAE directory");
  app->add_flag("--no-shuffle", a->no_shuffle, "Read rows in file order: batch i is rows [i*B, (i+1)*B), wrapping");
  app->add_option("--dead-after-batches", a->dead_after, "A latent is dead after this many batches without firing")
      ->capture_default_str();
  app->add_option("--aux-k", a->aux_k, "AuxK: dead latents used per row")->capture_default_str();
  app->add_option("--aux-coef", a->aux_coef, "AuxK loss coefficient")->capture_default_str();
  app->add_option("--max-grad-norm", a->max_grad_norm, "Global gradient-norm clip")->capture_default_str();
  app->add_flag("--encoder-bias", a->encoder_bias, "Add and train the encoder bias b_enc (off in the published recipe)");
  app->add_option("--out", a->out, "Output SAE directory (SAELens layout); required unless --resume");
  app->add_flag("--overwrite", a->overwrite, "Replace an existing output directory");
  app->add_option("--log-every", a->log_every, "metrics.jsonl interval in steps (default: steps/100)");
  app->add_option("--threads", a->threads, "Threads (default: all cores)");
  app->add_option("--engine", a->engine, "Training-step engine: sparse (fast) | reference (dense oracle)")->capture_default_str();
  app->add_option("--aux-dense-density", a->aux_dense_density,
                  "Sparse engine: AuxK runs as dense GEMMs over the dead latents when its entries fill at least this "
                  "share of them, as sparse products below (0: always dense; > 1: never; the fastest choice depends "
                  "on the CPU: msae bench --dead-fraction 0.1 --aux-dense-density X)")
      ->capture_default_str();
  add_variant_flags(app, a->variants);
  return [a, app]() { return run_train(*a, *app); };
}

}  // namespace msae::cli
