// msae bench-data: the loader alone. Reads batches as msae train would (same flags, same reader thread)
// and reports rows/s and bytes/s, to compare with the training throughput (docs/data.md).
#include <cstdio>
#include <vector>

#include "commands.h"
#include "msae/run.h"
#include "table_flags.h"
#include "msae/io.h"

namespace msae::cli {
namespace {

struct BenchDataArgs {
  TableFlags data_flags;  // --data and how to read it, --seed: rows of the option table
  int64_t batch = 4096;
  int64_t batches = 200;
  double step_ms = 0;  // simulated training step (busy wait) between batches
};

int run_bench_data(const BenchDataArgs& a) {
  const run::Options opts = a.data_flags.options();
  const std::string data = opts.text("data");
  if (data.empty()) usage_error("--data is required");
  if (a.batch <= 0 || a.batches <= 0) usage_error("--batch and --batches must be positive");
  data::DataOptions o = run::data_options(opts, !opts.flag("no_shuffle"), static_cast<uint64_t>(opts.integer("seed")));
  o.prefetch_batch = opts.flag("no_reader_thread") ? 0 : a.batch;
  const Timer open_clock;
  std::unique_ptr<data::ActivationSource> source = data::open_data(data, o);
  const double open_seconds = open_clock.seconds();
  const int64_t d = source->d();
  log_info(cat("data: ", source->describe()));
  std::vector<float> x(static_cast<size_t>(a.batch * d));
  double checksum = 0.0;
  const Timer clock;
  for (int64_t b = 0; b < a.batches; ++b) {
    source->next_batch(a.batch, x.data());
    checksum += x[static_cast<size_t>(b % a.batch) * d];
    if (a.step_ms > 0) {
      const Timer spin;
      while (spin.seconds() * 1e3 < a.step_ms) {
      }
    }
  }
  const double secs = clock.seconds();
  const data::DataStats st = source->stats();
  const double rows = static_cast<double>(a.batch * a.batches);
  nlohmann::json out = {{"data", data},
                        {"source", source->describe()},
                        {"batch", a.batch},
                        {"batches", a.batches},
                        {"open_seconds", open_seconds},
                        {"seconds", secs},
                        {"rows_per_s", rows / secs},
                        {"float32_mb_per_s", rows * static_cast<double>(d) * 4.0 / secs / 1e6},
                        {"simulated_step_ms", a.step_ms},
                        {"wait_seconds", st.wait_seconds},
                        {"reader_busy_seconds", st.reader_busy_seconds},
                        {"epochs", st.epochs},
                        {"nonfinite_rows_skipped", st.nonfinite_skipped},
                        {"peak_rss_mb", static_cast<double>(peak_rss_bytes()) / 1e6},
                        {"checksum", checksum}};
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

}  // namespace

Action add_bench_data_command(CLI::App& root) {
  auto a = std::make_shared<BenchDataArgs>();
  CLI::App* app = root.add_subcommand("bench-data", "Measure the data loader alone (rows/s), as msae train reads");
  a->data_flags.add_to(app, run::kCli, [](const run::OptionDef& row) {
    const std::string k = row.key;  // the data rows msae train reads with, and the shuffle seed
    return (row.group == run::OptGroup::data && k != "synthetic" && k != "normalize" && k != "eval_data" &&
            k != "eval_rows" && k != "holdout_rows") ||
           k == "seed";
  });
  app->add_option("--batch", a->batch, "Rows per batch")->capture_default_str();
  app->add_option("--batches", a->batches, "Batches to read")->capture_default_str();
  app->add_option("--step-ms", a->step_ms, "Simulate a training step of this many ms (busy wait) after each batch");
  return [a]() { return run_bench_data(*a); };
}

}  // namespace msae::cli
