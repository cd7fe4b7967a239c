// msae train: the CLI front end of the run layer (msae/run.h). It parses the option table's flags, calls
// run::train, shows progress and prints the summary; everything a run does is in the library.
#include <atomic>
#include <csignal>
#include <cstdio>

#include "commands.h"
#include "msae/run.h"
#include "progress.h"
#include "table_flags.h"

namespace msae::cli {
namespace {

std::atomic<bool> g_interrupted{false};
extern "C" void on_interrupt(int) { g_interrupted = true; }

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

int run_train(const TableFlags& flags) {
  run::Options o = flags.options();
  if (!o.given("out") && !o.given("resume")) usage_error(opt("out"), " DIR is required");
  if (!o.given("threads")) set_num_threads(0);  // all cores

  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
  std::unique_ptr<Progress> progress;
  int64_t d_sae = 0;
  run::Callbacks cb;
  cb.stop = [] { return g_interrupted.load(); };
  cb.progress = [&](int64_t done, int64_t planned, const StepStats& s, double tps) {
    if (!progress) progress = std::make_unique<Progress>(planned);  // (created at the first step: it times the run)
    const double fvu = s.var_x > 0 ? s.mse_prefix.back() / s.var_x : 0.0;
    progress->update(done,
                     cat("step ", done, "/", planned, " | ", fmt("%.0f", tps), " tok/s | loss ", fmt("%.4g", s.loss),
                         " | FVU ", fmt("%.4f", fvu), " | L0 ", fmt("%.1f", s.l0), " | dead ",
                         fmt("%.1f", d_sae > 0 ? 100.0 * static_cast<double>(s.n_dead) / static_cast<double>(d_sae) : 0.0), "%"),
                     done == planned);
  };
  cb.started = [&](const SaeConfig& cfg, int64_t, int64_t) { d_sae = cfg.d_sae; };
  cb.info = [&](const std::string& line) {
    if (progress) progress->finish();
    log_info(line);
  };
  run::Result r;
  try {
    r = run::train(o, {}, cb);
  } catch (...) {
    if (progress) progress->finish();
    throw;
  }
  if (progress) progress->finish();

  const SaeConfig& cfg = r.cfg;
  std::printf("msae train: %s SAE (d=%lld, D=%lld, k=%lld) %s after %lld steps, %lld tokens, %.1f s (%.0f tokens/s)\n",
              arch_name(cfg.arch), static_cast<long long>(cfg.d_in), static_cast<long long>(cfg.d_sae),
              static_cast<long long>(cfg.k), r.completed ? "trained" : "INTERRUPTED", static_cast<long long>(r.steps),
              static_cast<long long>(r.steps * r.batch), r.seconds, r.session_tokens_per_s);
  if (!r.completed) {  // no evaluation of an interrupted run
    std::printf("output: %s (resume with: msae train --resume %s)\n", r.out.c_str(), r.out.c_str());
    return 130;
  }
  std::printf("evaluation on %lld %s (threshold %.4g):\n", static_cast<long long>(r.eval_rows), r.eval_on.c_str(),
              r.eval.threshold);
  std::printf("  %-8s %-9s %-11s %-9s %-8s\n", "prefix", "latents", "MSE", "FVU", "L0");
  for (size_t g = 0; g < r.eval.prefixes.size(); ++g) {
    const auto& m = r.eval.prefixes[g];
    std::printf("  %-8zu %-9lld %-11.4g %-9.4f %-8.2f\n", g + 1, static_cast<long long>(m.latents), m.mse, m.fvu, m.l0);
  }
  std::printf("  dead latents %.1f%%, dense latents %.1f%%\n", 100 * r.eval.dead_fraction, 100 * r.eval.dense_fraction);
  if (r.synthetic)
    std::printf("  planted features recovered (cos >= 0.9): %.1f%%, mean max cosine %.3f\n",
                100 * r.final_metrics["recovery"]["frac_recovered_cos_0.9"].get<double>(),
                r.final_metrics["recovery"]["mean_max_cosine"].get<double>());
  const nlohmann::json& quality = r.final_metrics["quality"];
  if (!quality["usable"].get<bool>()) {
    std::printf("WARNING: this SAE is not usable as it is:\n");
    for (const auto& p : quality["problems"]) std::printf("  - %s\n", p.get<std::string>().c_str());
  }
  std::printf("output: %s\n", r.out.c_str());
  return 0;
}

}  // namespace

Action add_train_command(CLI::App& root) {
  auto flags = std::make_shared<TableFlags>();
  CLI::App* app = root.add_subcommand("train", "Train an SAE (default: Matryoshka BatchTopK on the embedded synthetic data)");
  flags->add_to(app, run::kCli);
  return [flags]() { return run_train(*flags); };
}

}  // namespace msae::cli
