// msae train: the CLI front end of the run layer (msae/run.h). It parses the option table's flags, calls
// run::train, shows progress and prints the summary; everything a run does is in the library.
#include <atomic>
#include <csignal>
#include <cstdio>

#include "commands.h"
#include "msae/comm.h"
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
  int64_t dead_after = 0;  // the progress line's "dead": no activation in the last dead_after training batches
  run::Callbacks cb;
  cb.stop = [] { return g_interrupted.load(); };
  cb.progress = [&](int64_t done, int64_t planned, const StepStats& s, double tps) {
    if (!progress) progress = std::make_unique<Progress>(planned);  // (made by `started` below; a fallback)
    const double fvu = s.var_x > 0 ? s.mse_prefix.back() / s.var_x : 0.0;
    progress->update(done,
                     cat("step ", done, "/", planned, " | ", fmt("%.0f", tps), " tok/s | loss ", sig_digits(s.loss, 4),
                         " | FVU ", fixed(fvu, 4), " | L0 ", fixed(s.l0, 1), " | dead ",
                         fixed(d_sae > 0 ? 100.0 * static_cast<double>(s.n_dead) / static_cast<double>(d_sae) : 0.0, 1),
                         "% (idle ", dead_after, " batches)"),
                     done == planned);
  };
  cb.started = [&](const SaeConfig& cfg, int64_t start, int64_t planned) {
    d_sae = cfg.d_sae;
    dead_after = cfg.dead_after_batches;
    // Made before the first step, so that it times the run; `start` (a resumed run's earlier steps) is left
    // out of the ETA's rate.
    progress = std::make_unique<Progress>(planned, 10.0, start);
  };
  cb.info = [&](const std::string& line) {
    if (progress) progress->end_line();
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
  // Under mpirun the root reports; the others' result holds no whole SAE.
  if (!comm::is_root()) return r.completed ? 0 : 130;

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
  std::printf("  %s\n", dead_dense_line(r.eval).c_str());
  const nlohmann::json& dead_end = r.msae_json["training"]["dead_latents_at_end"];
  if (dead_end.is_number_integer() && cfg.d_sae > 0)
    std::printf("  dead latents at the end of training %s%% (no activation in the last %lld training batches)\n",
                fixed(100.0 * dead_end.get<double>() / static_cast<double>(cfg.d_sae), 1).c_str(),
                static_cast<long long>(cfg.dead_after_batches));
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
