// msae: train and evaluate Matryoshka sparse autoencoders.
// Exit codes: 0 ok, 1 runtime error (bad files/data), 2 usage error (bad flags).
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <new>

#include "commands.h"
#include "msae/core.h"

namespace {

// Every command prints its results with stdio. A full disk or a closed pipe shows up only when stdout is
// flushed (or as its error flag from an earlier write): a command that lost its output fails (exit 1, or
// its own non-zero code) with the reason instead of exiting 0 with nothing written.
int finish(int code) {
  errno = 0;
  const bool flush_failed = std::fflush(stdout) != 0;
  const int err = errno;
  if (flush_failed || std::ferror(stdout)) {
    std::fprintf(stderr, "msae: error: cannot write to standard output: %s\n", err ? std::strerror(err) : "write error");
    return code == 0 ? 1 : code;
  }
  return code;
}

int run_command(int argc, char** argv) {
  CLI::App app{"msae: train and evaluate Matryoshka sparse autoencoders"};
  app.set_version_flag("--version", std::string("msae ") + msae::version_string() + " (" + msae::git_commit() + ")");
  app.require_subcommand(1);
  int verbosity = 1;
  app.add_option("--log-level", verbosity, "0 errors only, 1 info (default), 2 debug")->check(CLI::Range(0, 2));

  const std::pair<const char*, msae::cli::Action> commands[] = {
      {"train", msae::cli::add_train_command(app)},
      {"eval", msae::cli::add_eval_command(app)},
      {"inspect", msae::cli::add_inspect_command(app)},
      {"bench", msae::cli::add_bench_command(app)},
      {"bench-data", msae::cli::add_bench_data_command(app)},
      {"sweep", msae::cli::add_sweep_command(app)},
      {"synth-bench", msae::cli::add_synth_bench_command(app)},
      {"harvest", msae::cli::add_harvest_command(app)},
      {"absorption", msae::cli::add_absorption_command(app)},
  };

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  msae::set_log_level(verbosity);
  try {
    for (const auto& [name, action] : commands)
      if (app.got_subcommand(name)) return action();
    return 2;
  } catch (const msae::Error& e) {
    std::fprintf(stderr, "msae: error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "msae: error: out of memory (try a smaller --batch or --d-sae)\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "msae: error: %s\n", e.what());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) { return finish(run_command(argc, argv)); }
