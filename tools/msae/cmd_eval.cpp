// msae eval: reconstruction and sparsity of an SAE on activations, per Matryoshka prefix: a table for a person,
// or with --json every figure as JSON (for scripts).
#include <cstdio>

#include "cmd_lm_eval.h"
#include "commands.h"
#include "progress.h"
#include "table_flags.h"
#include "msae/run.h"
#include "msae/eval.h"
#include "msae/kernels.h"
#include "msae/sae_dir.h"

namespace msae::cli {
namespace {

struct EvalArgs {
  std::string sae;
  TableFlags data_flags;  // --data and how to read it: rows of the option table
  bool synthetic = false;
  int64_t rows = 0;
  uint64_t seed = 0;
  int threads = 0;
  bool json = false;  // --json: JSON on stdout instead of the table
  LmEvalArgs lm;  // --model/--text: downstream CE (cmd_lm_eval.cpp)
};

int run_eval(const EvalArgs& a) {
  if (!a.lm.model.empty() || !a.lm.text.empty()) {
    if (a.lm.model.empty() || a.lm.text.empty()) usage_error("--model and --text go together (downstream CE eval)");
    if (a.data_flags.options().given("data") || a.synthetic) usage_error("--model/--text cannot be combined with --data or --synthetic");
    LmEvalArgs lm = a.lm;
    lm.sae = a.sae;
    lm.threads = a.threads;
    lm.json = a.json;
    return run_lm_eval(lm);
  }
  set_num_threads(a.threads);
  kernels::set_blas_threads(num_threads());
  const run::Options o = a.data_flags.options();
  const std::string data = o.text("data");
  if (data.empty() == !a.synthetic) usage_error("give exactly one of --data PATH or --synthetic");
  saedir::SaeDirectory sae = saedir::read_sae_dir(a.sae);
  std::unique_ptr<data::ActivationSource> source =
      a.synthetic ? data::open_synthetic(run::synthetic_eval_seed(a.seed)) : data::open_data(data, run::data_options(o, false, 0));
  if (source->d() != sae.params.d)
    usage_error("the SAE in ", a.sae, " has d_in ", sae.params.d, " but the data has width ", source->d());
  if (a.rows < 0) usage_error("--rows must be positive, got ", a.rows);
  int64_t rows = a.rows;
  if (rows == 0) rows = source->rows() > 0 ? source->rows() : run::option("eval_rows").def.get<int64_t>();
  if (source->rows() > 0 && rows > source->rows())
    usage_error("--rows ", rows, " exceeds the ", source->rows(), " rows of ", data);
  log_info(cat("evaluating ", a.sae, " on ", rows, " rows of ", source->describe()));
  const eval::EvalReport report = eval::evaluate(sae.sae, sae.params, *source, rows);
  nlohmann::json out = eval::to_json(report);
  out["sae"] = a.sae;
  out["data"] = a.synthetic ? "synthetic" : data;
  const data::DataStats st = source->stats();
  if (st.nonfinite_skipped > 0) out["nonfinite_rows_skipped"] = st.nonfinite_skipped;
  out["arch"] = arch_name(sae.sae.arch);
  out["format"] = sae.format;  // msae, or the trainer an imported SAE came from (docs/interop.md)
  if (a.json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("msae eval: %s (%s, %s) on %lld rows of %s, threshold %s\n", a.sae.c_str(), arch_name(sae.sae.arch),
              sae.format.c_str(), static_cast<long long>(report.rows), out["data"].get<std::string>().c_str(),
              shortest(report.threshold).c_str());
  std::printf("  %-7s %-8s %-11s %-8s %-8s %-8s\n", "prefix", "latents", "MSE", "FVU", "EV", "L0");
  for (size_t g = 0; g < report.prefixes.size(); ++g) {
    const auto& m = report.prefixes[g];
    std::printf("  %-7zu %-8lld %-11s %-8s %-8s %-8s\n", g + 1, static_cast<long long>(m.latents), sig_digits(m.mse, 4).c_str(),
                fixed(m.fvu, 4).c_str(), fixed(m.explained_variance, 4).c_str(), fixed(m.l0, 2).c_str());
  }
  std::string share;
  for (double v : report.group_l0_share) share += (share.empty() ? "" : " ") + fixed(100 * v, 1) + "%";
  std::printf("  L0 share per group: %s\n", share.c_str());
  std::printf("  %s\n", dead_dense_line(report).c_str());
  if (st.nonfinite_skipped > 0) std::printf("  non-finite rows skipped: %lld\n", static_cast<long long>(st.nonfinite_skipped));
  std::printf("(--json prints every figure as JSON)\n");
  return 0;
}

}  // namespace

Action add_eval_command(CLI::App& root) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* app = root.add_subcommand("eval", "Evaluate an SAE directory on activations (a table; --json for JSON)");
  app->add_option("--sae", a->sae, "SAE directory: msae output, SAELens (jumprelu/standard/topk) or EleutherAI sparsify (docs/interop.md)")->required();
  a->data_flags.add_to(app, run::kCli, [](const run::OptionDef& row) {
    const std::string k = row.key;  // the rows that say what the data is and how its rows are read
    return k == "data" || k == "dtype" || k == "bf16" || k == "tensor" || k == "d_in" || k == "on_nonfinite";
  });
  app->add_flag("--synthetic", a->synthetic, "Evaluate on held-out rows of the embedded synthetic dataset");
  app->add_option("--rows", a->rows, "Rows to evaluate (default: all rows of --data; 16384 synthetic)");
  app->add_option("--seed", a->seed, "Synthetic stream seed");
  app->add_option("--threads", a->threads, "Threads (default: all cores)");
  app->add_flag("--json", a->json, "Print every figure as JSON on stdout (for scripts) instead of the table");
  add_lm_eval_options(app, a->lm);
  return [a]() { return run_eval(*a); };
}

}  // namespace msae::cli
