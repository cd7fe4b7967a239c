// `mpirun -np P msae train` end to end (docs/distributed.md): the output is the one-process layout, within
// the engine tolerances of a one-process run; the same P twice is bit-identical; a process killed mid-run
// ends the job non-zero naming it, its last checkpoint stays intact, and --resume continues with the same
// P (bit for bit the uninterrupted run) or another P.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "cli_run.h"
#include "msae/io.h"
#include "msae/sae_dir.h"

namespace fs = std::filesystem;
namespace cli = msae::test_util;

namespace msae {
namespace {

const std::string kMpirun = MSAE_MPIRUN;  // the launcher and the flags the mpi tests use (tests/CMakeLists.txt)

cli::Result mpirun(int np, const std::string& args) {
  return cli::run_shell(kMpirun + " -np " + std::to_string(np) + " " + MSAE_BINARY + " " + args + " 2>&1");
}

struct MpiCli : ::testing::Test {
  fs::path dir;
  void SetUp() override {
    dir = fs::temp_directory_path() / ("msae_mpi_cli_" + std::to_string(getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    // Activations with structure: a few hundred sparse directions in 32 dimensions.
    Rng rng(3);
    const int64_t n = 12000, d = 32, f = 200;
    std::vector<float> basis(f * d), x(n * d, 0.0f);
    for (float& v : basis) v = static_cast<float>(rng.normal());
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t j = 0; j < f; ++j)
        if (rng.uniform() < 0.03) {
          const float c = static_cast<float>(rng.uniform());
          for (int64_t t = 0; t < d; ++t) x[r * d + t] += c * basis[j * d + t];
        }
    }
    io::write_npy((dir / "acts.npy").string(), x.data(), {n, d});
  }
  void TearDown() override { fs::remove_all(dir); }
  std::string args(const std::string& out, int64_t steps, const std::string& extra = "") const {
    return "train --data " + (dir / "acts.npy").string() + " --d-sae 256 --k 8 --batch 128 --steps " + std::to_string(steps) +
           " --holdout-rows 1000 --seed 4 --out " + (dir / out).string() + " " + extra;
  }
  std::string weights(const std::string& out) const { return cli::slurp(dir / out / "sae_weights.safetensors"); }
};

double rel_err(const Tensor& a, const Tensor& b) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a.data[i]) - b.data[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b.data[i])));
  }
  return scale == 0 ? diff : diff / scale;
}

void expect_close(const fs::path& a, const fs::path& b, double tol) {
  const saedir::SaeDirectory x = saedir::read_sae_dir(a.string()), y = saedir::read_sae_dir(b.string());
  EXPECT_LT(rel_err(x.params.W_enc_t, y.params.W_enc_t), tol);
  EXPECT_LT(rel_err(x.params.W_dec, y.params.W_dec), tol);
  EXPECT_LT(rel_err(x.params.b_dec, y.params.b_dec), tol);
  EXPECT_NEAR(x.params.threshold, y.params.threshold, tol * std::abs(y.params.threshold));
}

TEST_F(MpiCli, SameLayoutAsOneProcessAndBitIdenticalReruns) {
  ASSERT_EQ(cli::run(args("one", 80)).code, 0);
  const cli::Result two = mpirun(2, args("two", 80));
  ASSERT_EQ(two.code, 0) << two.output;
  EXPECT_NE(two.output.find("evaluation on"), std::string::npos) << two.output;
  ASSERT_EQ(mpirun(2, args("two_again", 80)).code, 0);
  EXPECT_EQ(weights("two"), weights("two_again")) << "two runs with 2 processes differ";
  for (const char* f : {"cfg.json", "msae.json", "sae_weights.safetensors", "metrics.jsonl"})
    EXPECT_TRUE(fs::exists(dir / "two" / f)) << f;
  EXPECT_FALSE(fs::exists(dir / "two.lock")) << "the lock outlived the run";
  expect_close(dir / "two", dir / "one", 1e-4);
}

// The pid of the process of `rank` started for output `out` (its environment names the rank).
pid_t find_rank(const std::string& out, int rank) {
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string cmd = cli::slurp(e.path() / "cmdline"), env = cli::slurp(e.path() / "environ");
    if (cmd.find(out) == std::string::npos || cmd.rfind(std::string(MSAE_BINARY), 0) != 0) continue;
    if (env.find("OMPI_COMM_WORLD_RANK=" + std::to_string(rank) + '\0') != std::string::npos) return std::stoi(name);
  }
  return -1;
}

TEST_F(MpiCli, KilledProcessEndsTheJobAndTheRunResumes) {
  const int64_t steps = 400;
  ASSERT_EQ(mpirun(2, args("whole", steps, "--checkpoint-every 20")).code, 0);
  // The same run, one of its processes killed once a checkpoint past step 40 is on disk.
  const std::string out = (dir / "killed").string();
  const std::string log = (dir / "killed.log").string();
  const pid_t job = fork();
  ASSERT_GE(job, 0);
  if (job == 0) {
    const std::string cmd =
        kMpirun + " -np 2 " + MSAE_BINARY + " " + args("killed", steps, "--checkpoint-every 20") + " > " + log + " 2>&1";
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  pid_t victim = -1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (victim < 0 && std::chrono::steady_clock::now() < deadline) {
    const fs::path latest = fs::path(out) / "checkpoints" / "latest";
    if (fs::exists(latest) && cli::slurp(latest) >= "step-0000000040") victim = find_rank(out, 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_GT(victim, 0) << "no checkpoint past step 40, or no process of rank 1, within 120 s";
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(job, &status, 0), job);
  const std::string said = cli::slurp(log);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << said;
  EXPECT_NE(said.find("rank 1"), std::string::npos) << "the launcher's message names the killed process:\n" << said;
  EXPECT_FALSE(fs::exists(fs::path(out) / "sae_weights.safetensors")) << "the run finished before the kill";

  // Resumed with 2 processes: the uninterrupted run bit for bit. A copy resumed with 3 processes: within
  // the engine tolerances of it.
  fs::copy(out, dir / "killed3", fs::copy_options::recursive);
  const cli::Result resumed = mpirun(2, "train --resume " + out);
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_EQ(weights("killed"), weights("whole")) << "the resumed run differs from the uninterrupted one";
  const cli::Result three = mpirun(3, "train --resume " + (dir / "killed3").string());
  ASSERT_EQ(three.code, 0) << three.output;
  expect_close(dir / "killed3", dir / "whole", 1e-4);
}

}  // namespace
}  // namespace msae
