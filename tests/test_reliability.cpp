// Output safety (issue 21, docs/reliability.md): nothing a user already had is lost, whatever fails and
// whenever. The failpoint walks make every disk-changing operation of a run kill the process or fail, and
// check after each that the earlier output is intact, that no intermediate state loads as another SAE, and
// that resuming (or rerunning) ends bit-identical to an uninterrupted run. The other tests take each
// defect of the issue that is not about one operation: checkpoint fallback and digests, the lock,
// leftovers, partial SAE directories.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_run.h"
#include "failpoint_walk.h"
#include "msae/io.h"
#include "msae/sae_dir.h"
#include "msae/train.h"

namespace fs = std::filesystem;
using msae::test_util::Failpoint;
using msae::test_util::Result;
using msae::test_util::slurp;

namespace {

class Reliability : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("msae_rel_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    data_ = make_data("x.npy", 640, 8);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string make_data(const std::string& name, int64_t rows, int64_t d) {
    std::vector<float> x(rows * d);
    uint64_t s = 777;
    for (auto& v : x) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      v = float((s >> 40) % 2000) / 1000.0f - 1.0f;
    }
    msae::io::write_npy(path(name), x.data(), {rows, d});
    return path(name);
  }
  // A small run: 24 steps of 16 rows, 32 latents; `extra` adds flags.
  std::string train_args(const std::string& out, const std::string& extra = "") const {
    return "train --data " + data_ + " --d-sae 32 --k 2 --batch 16 --steps 24 --threads 1 --holdout-rows 64 " +
           extra + " --out " + out;
  }
  // Removes the output and everything named after it beside it (leftovers, the lock file).
  void clear(const std::string& name) {
    for (const auto& e : fs::directory_iterator(dir_)) {
      const std::string n = e.path().filename().string();
      if (n == name || n.rfind(name + ".", 0) == 0) fs::remove_all(e.path());
    }
  }
  // Names beside `name` that msae may leave after a crash (the state of the walk checks them).
  std::vector<std::string> siblings(const std::string& name) const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) {
      const std::string n = e.path().filename().string();
      if (n.rfind(name + ".", 0) == 0) out.push_back(n);
    }
    return out;
  }
  // An SAE directory that exists must either load as the run's SAE or be refused: never load as another.
  void expect_loads_right_or_refused(const std::string& dir, const std::string& context) {
    if (!fs::exists(fs::path(dir) / "sae_weights.safetensors")) return;
    try {
      const msae::saedir::SaeDirectory sae = msae::saedir::read_sae_dir(dir);
      EXPECT_EQ(sae.sae.arch, msae::Arch::matryoshka) << context;
      EXPECT_EQ(sae.sae.k, 2) << context;
      EXPECT_EQ(sae.sae.d_sae, 32) << context;
      EXPECT_EQ(sae.sae.group_sizes.size(), 5u) << context;
    } catch (const msae::Error&) {
      // refused: fine
    }
  }
  fs::path dir_;
  std::string data_;
};

// What a user does after a failed run: --resume when the output holds a run to continue, else the same
// command again (with --overwrite when something is in the way).
Result recover(const std::string& out, const std::string& rerun_with_overwrite) {
  if (fs::exists(out)) {
    const Result resumed = msae::test_util::run("train --resume " + out);
    if (resumed.code == 0 || resumed.output.find(out + " has no checkpoint") == std::string::npos) return resumed;
  }
  return msae::test_util::run(rerun_with_overwrite);
}

std::string describe(const Failpoint& f, const std::string& action, const Result& r) {
  return "failpoint " + std::to_string(f.index) + " (" + f.op + " " + f.path + ", " + action + ")\n" + r.output;
}

// Every operation of a checkpointing run, killed or failing: what is left either resumes or reruns, and
// the result is bit-identical to the uninterrupted run; no intermediate directory loads as another SAE.
TEST_F(Reliability, FailpointWalkOfACheckpointingRun) {
  const std::string flags = "--checkpoint-every 8";
  ASSERT_EQ(msae::test_util::run(train_args(path("ref"), flags)).code, 0);
  const std::string ref = slurp(dir_ / "ref" / "sae_weights.safetensors");
  ASSERT_FALSE(ref.empty());
  const std::string out = path("R");
  const int64_t runs = msae::test_util::walk_failpoints(
      train_args(out, flags), dir_ / "fp.log", [&] { clear("R"); },
      [&](const Failpoint& f, const std::string& action, const Result& r) {
        const std::string what = describe(f, action, r);
        expect_loads_right_or_refused(out, what);
        const Result again = recover(out, train_args(out, flags + " --overwrite"));
        ASSERT_EQ(again.code, 0) << what << "\nrecovery:\n" << again.output;
        EXPECT_EQ(slurp(dir_ / "R" / "sae_weights.safetensors"), ref) << what;
        EXPECT_TRUE(siblings("R").empty()) << what << "\nleft beside: " << siblings("R").front();
      });
  std::printf("checkpointing run: %lld faulted runs\n", static_cast<long long>(runs));
}

// --overwrite of an earlier SAE, without and with checkpoints: at every operation the earlier SAE is
// intact (in place, or for a run that lives in its output, moved aside and named) or the new one is
// complete; rerunning or resuming ends with the new one, bit-identical.
TEST_F(Reliability, FailpointWalkOfAnOverwritingRun) {
  for (const std::string& flags : {std::string(""), std::string("--checkpoint-every 8")}) {
    SCOPED_TRACE(flags);
    ASSERT_EQ(msae::test_util::run(train_args(path("old"), "--seed 1")).code, 0);
    ASSERT_EQ(msae::test_util::run(train_args(path("new"), "--seed 2")).code, 0);
    const std::string old_w = slurp(dir_ / "old" / "sae_weights.safetensors");
    const std::string new_w = slurp(dir_ / "new" / "sae_weights.safetensors");
    ASSERT_NE(old_w, new_w);
    const std::string out = path("P");
    const std::string args = train_args(out, "--seed 2 --overwrite " + flags);
    msae::test_util::walk_failpoints(
        args, dir_ / "fp.log",
        [&] {
          clear("P");
          fs::copy(dir_ / "old", dir_ / "P", fs::copy_options::recursive);
        },
        [&](const Failpoint& f, const std::string& action, const Result& r) {
          const std::string what = describe(f, action, r);
          expect_loads_right_or_refused(out, what);
          // The earlier SAE: in place, or aside under a name the run gave; else the new one is complete.
          bool old_kept = slurp(dir_ / "P" / "sae_weights.safetensors") == old_w;
          for (const std::string& s : siblings("P"))
            if (s.rfind("P.replaced-", 0) == 0) old_kept |= slurp(dir_ / s / "sae_weights.safetensors") == old_w;
          const bool new_done = slurp(dir_ / "P" / "sae_weights.safetensors") == new_w;
          EXPECT_TRUE(old_kept || new_done) << what;
          const Result again = recover(out, args);
          ASSERT_EQ(again.code, 0) << what << "\nrecovery:\n" << again.output;
          EXPECT_EQ(slurp(dir_ / "P" / "sae_weights.safetensors"), new_w) << what;
        });
    clear("old");
    clear("new");
  }
}

// Issue 21 case 4 and 12: a checkpoint with one flipped bit, or `latest` naming one that is gone, is not
// resumed from; the newest checkpoint that verifies is, with a message, and the run ends as it would have.
TEST_F(Reliability, ResumeFallsBackToTheNewestCheckpointThatVerifies) {
  ASSERT_EQ(msae::test_util::run(train_args(path("ref"))).code, 0);
  const std::string ref = slurp(dir_ / "ref" / "sae_weights.safetensors");
  // A run stopped after its checkpoints of steps 8 and 16 (SIGKILL at the first write after step 16's).
  const std::string args = train_args(path("R"), "--checkpoint-every 8");
  const std::vector<Failpoint> points = msae::test_util::list_failpoints(args, dir_ / "fp.log");
  int64_t after16 = -1;
  int seen = 0;
  for (const Failpoint& f : points)
    if (f.op == "rename" && fs::path(f.path).filename() == "latest" && ++seen == 2) after16 = f.index + 2;
  ASSERT_GT(after16, 0);
  clear("R");
  ASSERT_EQ(msae::test_util::run_with_failpoint(args, after16, "kill").code, 137);
  const fs::path ck = dir_ / "R" / "checkpoints";
  ASSERT_TRUE(fs::exists(ck / "step-0000000008")) << "keep_checkpoints 2";
  ASSERT_TRUE(fs::exists(ck / "step-0000000016"));
  const fs::path saved = dir_ / "saved";
  fs::copy(dir_ / "R", saved, fs::copy_options::recursive);

  // One flipped bit in the newest checkpoint's tensors: refused by its digest, step 8 resumed instead.
  {
    std::fstream f(ck / "step-0000000016" / "state.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-5, std::ios::end);
    char c = 0;
    f.read(&c, 1);
    f.seekp(-5, std::ios::end);
    c ^= 0x10;
    f.write(&c, 1);
  }
  Result r = msae::test_util::run("train --resume " + path("R"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("does not match the digest"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("resuming from " + (ck / "step-0000000008").string()), std::string::npos) << r.output;
  EXPECT_EQ(slurp(dir_ / "R" / "sae_weights.safetensors"), ref);

  // `latest` naming a checkpoint that is gone (a crash while a step was rewritten, before this version).
  clear("R");
  fs::copy(saved, dir_ / "R", fs::copy_options::recursive);
  fs::remove_all(ck / "step-0000000016");
  r = msae::test_util::run("train --resume " + path("R"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("names step-0000000016, which is missing"), std::string::npos) << r.output;
  EXPECT_EQ(slurp(dir_ / "R" / "sae_weights.safetensors"), ref);

  // Every checkpoint damaged: refused, each named with its reason, nothing changed.
  clear("R");
  fs::copy(saved, dir_ / "R", fs::copy_options::recursive);
  for (const char* step : {"step-0000000008", "step-0000000016"}) std::ofstream(ck / step / "state.json") << "{}";
  r = msae::test_util::run("train --resume " + path("R"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("no usable checkpoint"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step-0000000008/state.json does not match"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "R" / "sae_weights.safetensors"));
}

// Issue 21 case 4: a checkpoint written again at the same step (a resumed run stopped again where it
// started) is replaced in one exchange. Killed at each of that write's operations (in a forked child),
// the run directory always reads back as one whole checkpoint, the old or the new, never none.
TEST_F(Reliability, RewritingACheckpointOfTheSameStepNeverLeavesNone) {
  msae::train::TrainOptions topt;
  topt.sae.arch = msae::Arch::matryoshka;
  topt.sae.d_in = 8;
  topt.sae.d_sae = 32;
  topt.sae.k = 2;
  topt.sae.finalize();
  topt.batch = 16;
  topt.steps = 10;
  topt.engine = "sparse";
  const msae::train::Trainer old_run(topt, msae::SaeParams::init(8, 32, 1));
  const msae::train::Trainer new_run(topt, msae::SaeParams::init(8, 32, 2));
  const std::string run_dir = path("run");
  const nlohmann::json extra = {{"what", "test"}};
  msae::io::set_failpoint(0, "kill");
  msae::train::write_checkpoint(run_dir, 8, old_run, extra, 2);
  const int64_t before = msae::io::failpoint_calls();
  const fs::path saved = dir_ / "saved";
  fs::copy(run_dir, saved, fs::copy_options::recursive);
  msae::train::write_checkpoint(run_dir, 8, new_run, extra, 2);
  const int64_t ops = msae::io::failpoint_calls() - before;
  ASSERT_GT(ops, 10);
  const msae::FloatBuffer& old_w = old_run.params().W_dec.data;
  const msae::FloatBuffer& new_w = new_run.params().W_dec.data;
  ASSERT_NE(old_w, new_w);
  for (int64_t i = 1; i <= ops; ++i) {
    fs::remove_all(run_dir);
    fs::copy(saved, run_dir, fs::copy_options::recursive);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      msae::io::set_failpoint(i, "kill");
      msae::train::write_checkpoint(run_dir, 8, new_run, extra, 2);
      ::_exit(0);
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "operation " << i << " of " << ops;
    try {
      const msae::train::Checkpoint c = msae::train::read_checkpoint(run_dir);
      EXPECT_EQ(c.step, 8);
      EXPECT_TRUE(c.params.W_dec.data == old_w || c.params.W_dec.data == new_w) << "operation " << i;
    } catch (const msae::Error& e) {
      ADD_FAILURE() << "killed at operation " << i << " of " << ops << ": " << e.what();
    }
  }
  msae::io::set_failpoint(0, "kill");
}

// Issue 21 case 6: one output, one run. A second msae on an output in use is refused with the holder's
// line, and the first run's files are untouched.
TEST_F(Reliability, AnOutputInUseIsRefused) {
  ASSERT_EQ(msae::test_util::run(train_args(path("R"), "--checkpoint-every 8")).code, 0);
  const std::string before = slurp(dir_ / "R" / "sae_weights.safetensors");
  const std::string metrics = slurp(dir_ / "R" / "metrics.jsonl");
  {
    const msae::io::OutputLock held = msae::io::lock_output(path("R"), "the test");
    for (const std::string& args : {train_args(path("R"), "--overwrite"), std::string("train --resume " + path("R"))}) {
      const Result r = msae::test_util::run(args);
      EXPECT_EQ(r.code, 1) << r.output;
      EXPECT_NE(r.output.find(path("R") + " is in use by another msae process (pid " + std::to_string(::getpid())),
                std::string::npos)
          << r.output;
      EXPECT_NE(r.output.find("the test"), std::string::npos) << r.output;
    }
    EXPECT_EQ(slurp(dir_ / "R" / "sae_weights.safetensors"), before);
    EXPECT_EQ(slurp(dir_ / "R" / "metrics.jsonl"), metrics);
  }
  EXPECT_FALSE(fs::exists(path("R.lock"))) << "released and removed";
  // Free again: a run goes ahead (a killed holder's lock is free the same way: the kernel drops it).
  EXPECT_EQ(msae::test_util::run(train_args(path("R"), "--overwrite")).code, 0);
}

// Issue 21 case 9: what a crashed run left is cleaned by the next run on that output (temporary names),
// or named (an earlier output that was moved aside), never silently kept or silently removed.
TEST_F(Reliability, LeftoversOfACrashedRunAreCleanedOrNamed) {
  ASSERT_EQ(msae::test_util::run(train_args(path("R"), "--checkpoint-every 8")).code, 0);
  fs::create_directories(dir_ / "R.tmp-99999-0" / "x");
  std::ofstream(dir_ / "R.tmp-99999-0" / "x" / "big") << std::string(1000, 'x');
  fs::create_directories(dir_ / "R" / "checkpoints" / "step-0000000099.tmp-99999-3");
  std::ofstream(dir_ / "R" / "cfg.json.tmp-99999-4") << "{";
  fs::create_directories(dir_ / "R.replaced-99999");
  std::ofstream(dir_ / "R.replaced-99999" / "sae_weights.safetensors") << "earlier";
  std::ofstream(dir_ / "R.lock") << "pid 99999 on a host that died\n";  // a killed holder's lock file
  const Result r = msae::test_util::run(train_args(path("R"), "--overwrite"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "R.tmp-99999-0"));
  EXPECT_NE(r.output.find("removed " + path("R.tmp-99999-0") + ", left behind by an interrupted msae run"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("step-0000000099.tmp-99999-3"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("cfg.json.tmp-99999-4"), std::string::npos) << r.output;
  EXPECT_EQ(slurp(dir_ / "R.replaced-99999" / "sae_weights.safetensors"), "earlier");
  EXPECT_NE(r.output.find(path("R.replaced-99999") + " holds an earlier output"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(path("R.lock")));
}

// Issue 21 case 5: an SAE directory caught between its files (new weights beside an older msae.json, or
// weights alone) is refused, not loaded as another SAE.
TEST_F(Reliability, AHalfWrittenSaeDirectoryIsRefused) {
  ASSERT_EQ(msae::test_util::run(train_args(path("a"), "--seed 1")).code, 0);
  ASSERT_EQ(msae::test_util::run(train_args(path("b"), "--seed 2")).code, 0);
  fs::copy_file(dir_ / "b" / "sae_weights.safetensors", dir_ / "a" / "sae_weights.safetensors",
                fs::copy_options::overwrite_existing);
  Result r = msae::test_util::run("inspect " + path("a"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("does not match the digest recorded in " + path("a") + "/msae.json"), std::string::npos)
      << r.output;
  fs::remove(dir_ / "a" / "cfg.json");
  fs::remove(dir_ / "a" / "msae.json");
  r = msae::test_util::run("eval --sae " + path("a") + " --data " + data_);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("without cfg.json or msae.json"), std::string::npos) << r.output;
}

}  // namespace
