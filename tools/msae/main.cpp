// msae: train and evaluate Matryoshka sparse autoencoders.
// Exit codes: 0 ok, 1 runtime error (bad files/data), 2 usage error (bad flags).
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include <unistd.h>

#include "commands.h"
#include "msae/comm.h"
#include "msae/core.h"

namespace {

// Levenshtein distance (for "did you mean").
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// The candidate nearest to `word` by edit distance, if it is near enough to be a typo ("" otherwise).
std::string nearest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const std::string& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  return best;
}

std::vector<std::string> long_names(const CLI::App* app) {
  std::vector<std::string> names;
  for (const CLI::Option* o : app->get_options())
    for (const std::string& n : o->get_lnames()) names.push_back("--" + n);
  return names;
}

// After a parse error: name an unknown subcommand and suggest the nearest (returns true: the error is
// printed), or, with `flags`, suggest the nearest known flag for each unknown one.
bool explain_parse_error(const CLI::App& app, int argc, char** argv, bool flags) {
  int first = 1;  // the first word that is not the root's own option
  while (first < argc && argv[first][0] == '-') {
    if (std::strcmp(argv[first], "--log-level") == 0) ++first;
    ++first;
  }
  if (first >= argc) return false;
  std::vector<std::string> subs;
  for (const CLI::App* sub : app.get_subcommands({})) subs.push_back(sub->get_name());
  const std::string word = argv[first];
  const CLI::App* sub = nullptr;
  for (const CLI::App* s : app.get_subcommands({}))
    if (s->get_name() == word) sub = s;
  if (!sub) {
    if (flags) return false;
    const std::string near = nearest(word, subs);
    std::string list;
    for (const std::string& n : subs) list += (list.empty() ? "" : ", ") + n;
    std::fprintf(stderr, "msae: error: unknown subcommand '%s'%s\nsubcommands: %s (msae SUBCOMMAND --help)\n",
                 word.c_str(), near.empty() ? "" : ("; did you mean '" + near + "'?").c_str(), list.c_str());
    return true;
  }
  if (!flags) return false;
  const std::vector<std::string> known = long_names(sub);
  for (int i = first + 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag.rfind("--", 0) != 0 || flag.size() == 2) continue;
    flag = flag.substr(0, flag.find('='));
    if (std::find(known.begin(), known.end(), flag) != known.end()) continue;
    const std::string near = nearest(flag, known);
    if (!near.empty()) std::fprintf(stderr, "msae %s: unknown flag %s; did you mean %s?\n", word.c_str(), flag.c_str(), near.c_str());
  }
  return false;
}

// Every command prints its results with stdio. A full disk or a closed pipe shows up only when stdout is
// flushed (or as its error flag from an earlier write): a command that lost its output fails (exit 1, or
// its own non-zero code) with the reason instead of exiting 0 with nothing written.
// An error message. Under an MPI launch the root prints its own at once; another process first waits a
// moment, because an error that every process meets (a usage error, a data fault) is the root's to report
// and the root's abort ends this process before it prints a copy; an error of its own (the root still
// waiting in a collective) is then printed naming the process.
void report_error(const std::string& message) {
  const msae::comm::Comm& world = msae::comm::world();
  if (world.size() > 1 && world.rank() != 0) {
    sleep(3);
    std::fprintf(stderr, "msae (process %d of %d): %s\n", world.rank(), world.size(), message.c_str());
    return;
  }
  std::fprintf(stderr, "%s\n", message.c_str());
}

int finish(int code) {
  const bool had_error = std::ferror(stdout) != 0;
  errno = 0;
  const bool flush_failed = std::fflush(stdout) != 0;
  int err = flush_failed ? errno : 0;
  if (!flush_failed && had_error) {
    // An earlier write failed (output longer than stdio's buffer) and its errno is gone: one more byte to
    // the broken output gives the reason again.
    std::clearerr(stdout);
    errno = 0;
    if (std::fputc('\n', stdout) == EOF || std::fflush(stdout) != 0) err = errno;
  }
  if (flush_failed || had_error) {
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
      {"browse", msae::cli::add_browse_command(app)},
      {"convert", msae::cli::add_convert_command(app)},
  };

  // --log-level also after the subcommand (msae train --log-level 2 ...), and in each one's --help.
  for (CLI::App* sub : app.get_subcommands({}))
    sub->add_option("--log-level", verbosity, "0 errors only, 1 info (default), 2 debug")->check(CLI::Range(0, 2));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() != 0 && explain_parse_error(app, argc, argv, false)) return 2;
    const int code = app.exit(e);
    if (code != 0) explain_parse_error(app, argc, argv, true);
    return code == 0 ? 0 : 2;
  }
  // Under an MPI launch only the root logs, warns and prints results; the others report errors only.
  msae::set_log_level(msae::comm::is_root() ? verbosity : -1);
  try {
    // Under mpirun the processes share one training run (docs/distributed.md); the other commands would
    // each do the whole job P times, writing the same files.
    if (const int P = msae::comm::world().size(); P > 1)
      for (const auto& [name, action] : commands)
        if (app.got_subcommand(name) && std::strcmp(name, "train") != 0 && std::strcmp(name, "bench") != 0)
          msae::usage_error("msae ", name, " runs in one process, not across the ", P,
                            " processes of an MPI job; start it without mpirun (msae train and msae bench run across processes)");
    for (const auto& [name, action] : commands)
      if (app.got_subcommand(name)) return action();
    return 2;
  } catch (const msae::Error& e) {
    report_error(std::string("msae: error: ") + e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    report_error("msae: error: out of memory (try a smaller --batch or --d-sae)");
    return 1;
  } catch (const std::exception& e) {
    report_error(std::string("msae: error: ") + e.what());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    msae::comm::init(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "msae: error: %s\n", e.what());
    return 1;
  }
  msae::comm::Comm& world = msae::comm::world();
  if (world.size() > 1 && world.rank() != 0 && !std::freopen("/dev/null", "w", stdout))
    std::fprintf(stderr, "msae (process %d): cannot silence standard output\n", world.rank());
  const int code = finish(run_command(argc, argv));
  // A failed process ends the whole job: the others may be waiting for it in a collective. An interrupted
  // run (130) stopped on every process at the same step (a collective flag) and ends normally.
  if (code != 0 && code != 130 && world.size() > 1) world.abort(code);
  msae::comm::finalize();
  return code;
}
