// The failpoint walk (docs/reliability.md): a command is run once to count the disk-changing operations
// its io makes (MSAE_FAILPOINT_LOG), then once per operation and action with that operation made to kill
// the process (SIGKILL, no clean-up) or to fail (EIO); after each, the caller's check looks at what is on
// disk and recovers.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "cli_run.h"

namespace msae::test_util {

struct Failpoint {
  int64_t index = 0;
  std::string op, path;  // as the log names them
};

// Runs `msae ARGS` with MSAE_FAILPOINT_LOG and returns its failpoints in order (the command must succeed).
inline std::vector<Failpoint> list_failpoints(const std::string& args, const std::filesystem::path& log) {
  std::filesystem::remove(log);
  const Result r = run_shell("MSAE_FAILPOINT_LOG=" + log.string() + " " + MSAE_BINARY + " " + args + " 2>&1");
  EXPECT_EQ(r.code, 0) << r.output;
  std::vector<Failpoint> out;
  std::ifstream in(log);
  Failpoint f;
  while (in >> f.index >> f.op && std::getline(in, f.path)) {
    if (!f.path.empty() && f.path[0] == ' ') f.path.erase(0, 1);
    out.push_back(f);
  }
  return out;
}

// `msae ARGS` with the Nth failpoint set to `action` ("kill" or "EIO").
inline Result run_with_failpoint(const std::string& args, int64_t n, const std::string& action) {
  return run_shell("MSAE_FAILPOINT=" + std::to_string(n) + ":" + action + " " + MSAE_BINARY + " " + args + " 2>&1");
}

// For every failpoint of `args` and both actions: setup(), the faulted run, then check(failpoint, action,
// result). Returns how many faulted runs were made.
inline int64_t walk_failpoints(const std::string& args, const std::filesystem::path& log, const std::function<void()>& setup,
                               const std::function<void(const Failpoint&, const std::string&, const Result&)>& check) {
  setup();
  const std::vector<Failpoint> points = list_failpoints(args, log);
  EXPECT_GT(points.size(), 5u) << "too few failpoints: is the io layer's failpoint reached?";
  int64_t runs = 0;
  for (const Failpoint& f : points)
    for (const std::string& action : {std::string("kill"), std::string("EIO")}) {
      setup();
      const Result r = run_with_failpoint(args, f.index, action);
      if (action == "kill") EXPECT_EQ(r.code, 128 + 9) << "failpoint " << f.index << " " << f.op << " " << f.path << "\n" << r.output;
      else EXPECT_NE(r.code, 0) << "failpoint " << f.index << " " << f.op << " " << f.path << "\n" << r.output;
      check(f, action, r);
      ++runs;
      if (::testing::Test::HasFailure()) return runs;  // the first broken failpoint is the one to read
    }
  return runs;
}

}  // namespace msae::test_util
