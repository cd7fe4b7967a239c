// msae train: trains an SAE (default: the published Matryoshka BatchTopK recipe, SPEC.md) and writes a
// SAELens-layout directory. The directory is written under a temporary name and renamed at the end, so
// a failed run never leaves a half-written SAE and never touches an existing one without --overwrite.
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>

#include "commands.h"
#include "msae/eval.h"
#include "msae/io.h"
#include "msae/recovery.h"
#include "msae/synth.h"
#include "msae/train.h"
#include "progress.h"
#include "variant_flags.h"

namespace msae::cli {
namespace {

using nlohmann::json;

using SynthDefaults = data::SyntheticDefaults;  // data-dependent defaults on the embedded dataset
constexpr int64_t kEvalRows = 16384;

struct TrainArgs {
  std::string data;
  bool synthetic = false;
  bool bf16 = false;
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

int run_train(TrainArgs a, const CLI::App& app) {
  set_num_threads(a.threads);
  kernels::set_blas_threads(num_threads());

  // ---- data
  if (!a.data.empty() && a.synthetic) usage_error("--data and --synthetic are mutually exclusive");
  const bool synthetic = a.data.empty();
  std::unique_ptr<data::ActivationSource> source =
      synthetic ? data::open_synthetic(a.seed) : data::open_npy(a.data, !a.no_shuffle, a.seed, a.bf16);
  const int64_t d = source->d();

  // ---- output directory: refuse before any work
  while (a.out.size() > 1 && a.out.back() == '/') a.out.pop_back();  // "DIR/" names DIR
  if (a.out.empty()) usage_error("--out DIR is required");
  if (io::path_exists(a.out) && !a.overwrite)
    usage_error("output directory '", a.out, "' exists; pass --overwrite to replace it");

  // ---- init and config
  std::unique_ptr<SaeParams> init_params;
  SaeConfig cfg;
  cfg.arch = parse_arch(a.arch);
  cfg.d_in = d;
  if (!a.init.empty()) {
    train::SaeDirectory init_dir = train::read_sae_dir(a.init);
    if (init_dir.params.d != d)
      usage_error("--init ", a.init, ": the SAE has d_in ", init_dir.params.d, " but the data has width ", d);
    if (a.d_sae == 0) a.d_sae = init_dir.params.D;
    if (init_dir.params.D != a.d_sae)
      usage_error("--init ", a.init, ": the SAE has d_sae ", init_dir.params.D, " but --d-sae is ", a.d_sae);
    init_params = std::make_unique<SaeParams>(std::move(init_dir.params));
  }
  cfg.d_sae = a.d_sae > 0 ? a.d_sae : (synthetic ? SynthDefaults::d_sae : 8 * d);
  if (app.count("--d-sae") && a.d_sae <= 0) usage_error("--d-sae must be positive, got ", a.d_sae);
  cfg.k = app.count("--k") ? a.k : (synthetic ? SynthDefaults::k : 32);
  if (!a.group_sizes.empty()) cfg.group_sizes = parse_group_sizes(a.group_sizes);
  cfg.encoder_bias = a.encoder_bias;
  cfg.dead_after_batches = a.dead_after;
  cfg.aux_k = a.aux_k;
  cfg.aux_coef = a.aux_coef;
  cfg.finalize();

  train::TrainOptions opt;
  opt.sae = cfg;
  opt.batch = app.count("--batch") ? a.batch : (synthetic ? SynthDefaults::batch : 4096);
  if (opt.batch <= 0) usage_error("--batch must be positive, got ", opt.batch);
  if (app.count("--steps") && app.count("--tokens")) usage_error("give --steps or --tokens, not both");
  if (app.count("--steps")) {
    if (a.steps <= 0) usage_error("--steps must be positive, got ", a.steps);
    opt.steps = a.steps;
  } else if (app.count("--tokens")) {
    if (a.tokens <= 0) usage_error("--tokens must be positive, got ", a.tokens);
    opt.steps = (a.tokens + opt.batch - 1) / opt.batch;
  } else {
    opt.steps = synthetic ? SynthDefaults::steps : std::max<int64_t>(1, (source->rows() + opt.batch - 1) / opt.batch);
  }
  if (!(a.lr > 0.0f)) usage_error("--lr must be positive, got ", a.lr);
  if (!(a.max_grad_norm > 0.0f)) usage_error("--max-grad-norm must be positive, got ", a.max_grad_norm);
  opt.adam.lr = a.lr;
  opt.max_grad_norm = a.max_grad_norm;
  opt.seed = a.seed;
  opt.engine = a.engine;
  opt.log_every = a.log_every > 0 ? a.log_every : std::max<int64_t>(1, opt.steps / 100);
  apply_variant_args(a.variants, [&](const std::string& flag) { return app.count(flag) > 0; }, opt);
  cfg = opt.sae;

  SaeParams params = init_params ? std::move(*init_params) : SaeParams::init(d, cfg.d_sae, a.seed);
  train::Trainer trainer(opt, std::move(params));

  log_info(cat("data: ", source->describe()));
  log_info(cat("model: ", arch_name(cfg.arch), " SAE, d=", d, " D=", cfg.d_sae, " k=", cfg.k, " groups=",
               json(cfg.group_sizes).dump(), cfg.encoder_bias ? " +encoder-bias" : "",
               a.init.empty() ? "" : cat(" init from ", a.init)));
  log_info(cat("training: ", opt.steps, " steps x batch ", opt.batch, " = ", opt.steps * opt.batch, " tokens, lr ",
               opt.adam.lr, ", engine ", trainer.options().engine, ", ", num_threads(), " threads, BLAS: ",
               kernels::blas_info()));

  // ---- temporary output directory (renamed into place at the end)
  const std::string tmp_dir = cat(a.out, ".tmp-", getpid());
  io::remove_all(tmp_dir);
  io::create_directories(tmp_dir);
  std::ofstream metrics(tmp_dir + "/metrics.jsonl");
  if (!metrics) runtime_error("cannot write ", tmp_dir, "/metrics.jsonl");

  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
  std::vector<float> batch(opt.batch * d);
  Progress progress(opt.steps);
  train::MetricsInterval interval;
  Timer clock;
  int64_t step = 0;
  try {
    for (step = 0; step < opt.steps && !g_interrupted; ++step) {
      source->next_batch(opt.batch, batch.data());
      const StepStats& s = trainer.step(batch.data());
      if (!std::isfinite(s.loss))
        runtime_error("the loss became ", s.loss, " at step ", step + 1, "; lower --lr or check the data");
      interval.add(s);
      const int64_t done = step + 1;
      const double secs = clock.seconds();
      const double tps = static_cast<double>(done * opt.batch) / std::max(secs, 1e-9);
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
        interval = train::MetricsInterval{};
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
    io::remove_all(tmp_dir);
    throw;
  }
  progress.finish();
  metrics.close();
  const double train_seconds = clock.seconds();
  const bool completed = step == opt.steps;
  if (!completed) log_warn(cat("interrupted after ", step, " of ", opt.steps, " steps; saving the SAE as it is"));

  // ---- final evaluation (inference encoding at the learned threshold)
  std::unique_ptr<data::ActivationSource> eval_source =
      synthetic ? data::open_synthetic(a.seed + 1000003) : data::open_npy(a.data, false, 0, a.bf16);
  const int64_t eval_rows = eval_source->rows() > 0 ? std::min(eval_source->rows(), kEvalRows) : kEvalRows;
  const eval::EvalReport report = eval::evaluate(cfg, trainer.params(), *eval_source, eval_rows);
  json final_metrics = eval::to_json(report);
  if (synthetic) {
    const synth::PlantedDictionary truth = synth::make_planted(synth::default_planted_config());
    const eval::RecoveryReport rec = eval::score_recovery(truth.directions, trainer.params().W_dec.ptr(), cfg.d_sae);
    final_metrics["recovery"] = {{"mean_max_cosine", rec.mean_max_cosine},
                                 {"frac_recovered_cos_0.9", rec.frac_recovered},
                                 {"mcc", rec.mcc}};
  }

  json msae_json = {
      {"format", "msae-sae"},
      {"format_version", 1},
      {"msae_version", version_string()},
      {"git_commit", git_commit()},
      {"config", train::config_json(cfg)},
      {"normalization", {{"method", "none"}}},
      {"training",
       {{"completed", completed},
        {"steps", step},
        {"steps_planned", opt.steps},
        {"tokens", step * opt.batch},
        {"batch", opt.batch},
        {"lr", opt.adam.lr},
        {"beta1", opt.adam.beta1},
        {"beta2", opt.adam.beta2},
        {"eps", opt.adam.eps},
        {"max_grad_norm", opt.max_grad_norm},
        {"seed", a.seed},
        {"shuffle", !synthetic && !a.no_shuffle},
        {"data", synthetic ? "synthetic" : a.data},
        {"init", a.init.empty() ? json(nullptr) : json(a.init)},
        {"engine", trainer.options().engine},
        {"threads", num_threads()},
        {"seconds", train_seconds},
        {"tokens_per_s", static_cast<double>(step * opt.batch) / std::max(train_seconds, 1e-9)},
        {"threshold", trainer.params().threshold},
        {"dead_latents_at_end", std::count_if(trainer.latent_state().n_inactive.begin(),
                                              trainer.latent_state().n_inactive.end(),
                                              [&](int64_t n) { return n >= cfg.dead_after_batches; })}}},
      {"final_metrics", final_metrics},
  };
  msae_json["training"]["schedule"] = schedule_json(opt);
  train::write_sae_files(tmp_dir, cfg, trainer.params(), msae_json);
  io::commit_directory(tmp_dir, a.out, a.overwrite);
  log_info(cat("wrote ", a.out));

  // ---- summary on stdout
  std::printf("msae train: %s SAE (d=%lld, D=%lld, k=%lld) %s after %lld steps, %lld tokens, %.1f s (%.0f tokens/s)\n",
              arch_name(cfg.arch), static_cast<long long>(d), static_cast<long long>(cfg.d_sae),
              static_cast<long long>(cfg.k), completed ? "trained" : "INTERRUPTED", static_cast<long long>(step),
              static_cast<long long>(step * opt.batch), train_seconds,
              static_cast<double>(step * opt.batch) / std::max(train_seconds, 1e-9));
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
  return completed ? 0 : 130;
}

}  // namespace

Action add_train_command(CLI::App& root) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* app = root.add_subcommand("train", "Train an SAE (default: Matryoshka BatchTopK on the embedded synthetic data)");
  app->add_option("--data", a->data, "Activations: a 2-D (N, d) .npy file, float32 or float16");
  app->add_flag("--synthetic", a->synthetic, "Train on the embedded synthetic dataset (the default when --data is absent)");
  app->add_flag("--bf16", a->bf16, "The .npy holds bfloat16 stored as uint16 ('<u2')");
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
  app->add_option("--out", a->out, "Output SAE directory (SAELens layout)")->required();
  app->add_flag("--overwrite", a->overwrite, "Replace an existing output directory");
  app->add_option("--log-every", a->log_every, "metrics.jsonl interval in steps (default: steps/100)");
  app->add_option("--threads", a->threads, "Threads (default: all cores)");
  app->add_option("--engine", a->engine, "Training-step engine: sparse (fast) | reference (dense oracle)")->capture_default_str();
  add_variant_flags(app, a->variants);
  return [a, app]() { return run_train(*a, *app); };
}

}  // namespace msae::cli
