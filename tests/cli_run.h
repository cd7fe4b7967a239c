// Shared by the end-to-end tests that run the msae binary (MSAE_BINARY, set by tests/CMakeLists.txt).
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace msae::test_util {

struct Result {
  int code = -1;
  std::string output;  // stdout + stderr, or stdout alone with stdout_only
};

// Runs `cmd` through the shell; the exit code (128 + signal when killed) and what it wrote to the pipe.
inline Result run_shell(const std::string& cmd) {
  Result r;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// Runs msae with `args` through the shell; the exit code (128 + signal when killed) and the output.
inline Result run(const std::string& args, bool stdout_only = false) {
  return run_shell(std::string(MSAE_BINARY) + " " + args + (stdout_only ? " 2>/dev/null" : " 2>&1"));
}

// Runs msae with `args` and the caller's own redirections, e.g. "inspect DIR 2>&1 >/dev/full" (the output
// is then stderr alone).
inline Result run_redirected(const std::string& args_and_redirections) {
  return run_shell(std::string(MSAE_BINARY) + " " + args_and_redirections);
}

// A whole file as bytes ("" when it cannot be read).
inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace msae::test_util
