// The msae subcommands. Each add_*_command registers its options on `root` and returns the action that
// runs it after parsing; the action returns the process exit code.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace msae::cli {

using Action = std::function<int()>;
Action add_train_command(CLI::App& root);
Action add_eval_command(CLI::App& root);
Action add_inspect_command(CLI::App& root);
Action add_bench_command(CLI::App& root);
Action add_bench_data_command(CLI::App& root);
Action add_sweep_command(CLI::App& root);
Action add_synth_bench_command(CLI::App& root);
Action add_harvest_command(CLI::App& root);
Action add_absorption_command(CLI::App& root);
Action add_browse_command(CLI::App& root);
Action add_convert_command(CLI::App& root);

}  // namespace msae::cli
