// Exact resume and normalization, end to end through the msae binary (docs/data.md, docs/formats.md):
//  - a run interrupted by SIGTERM (final checkpoint) or killed with SIGKILL (periodic checkpoint) and
//    continued with `msae train --resume DIR` ends bit-identical to an uninterrupted run: multi-shard
//    float16 data, streaming shuffle buffer, reader thread, expected-norm normalization and AuxK active;
//  - --resume refuses other flags and directories without a checkpoint;
//  - an SAE trained with --normalize expected-norm, exported with the scale folded into its weights,
//    gives the same FVU on raw data as the unfolded SAE on the normalized data it was trained on
//    (tolerance 1e-4 relative: the two evaluate different float32 products, x @ (s W) vs (s x) @ W, whose
//    rounding differs at ~1e-7 per value; FVU is a ratio of sums over 4096 x 16 values).
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "msae/io.h"
#include "msae/sae_dir.h"
#include "msae/synth.h"
#include "msae/train.h"

namespace fs = std::filesystem;
using nlohmann::json;

extern char** environ;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<std::string> split(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// Starts msae with `args`, stdout + stderr into `log`.
pid_t spawn(const std::string& args, const std::string& log) {
  std::vector<std::string> words = split(args);
  words.insert(words.begin(), MSAE_BINARY);
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, MSAE_BINARY, &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

int wait_exit(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int run(const std::string& args, const std::string& log) { return wait_exit(spawn(args, log)); }

// Waits until `file` exists (or the process ends); true if it appeared while `pid` still ran.
bool wait_for_file(const fs::path& file, pid_t pid) {
  for (int i = 0; i < 120000; ++i) {
    if (fs::exists(file)) return true;
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

// The metrics.jsonl losses by step (the timing fields differ between runs).
std::vector<std::pair<int64_t, double>> losses(const fs::path& file) {
  std::vector<std::pair<int64_t, double>> out;
  std::istringstream in(slurp(file));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) {
      const json j = json::parse(line);
      out.emplace_back(j["step"].get<int64_t>(), j["loss"].get<double>());
    }
  return out;
}

class Resume : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("msae_resume_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string p(const std::string& name) const { return (dir_ / name).string(); }

  // float16 .npy shards of smooth random rows (offset and scale far from unit norm).
  std::string make_shards(const std::vector<int64_t>& sizes, int64_t d) {
    fs::create_directories(dir_ / "shards");
    msae::Rng rng(99);
    for (size_t i = 0; i < sizes.size(); ++i) {
      std::vector<uint16_t> h(sizes[i] * d);
      for (auto& v : h) v = msae::io::float_to_half(static_cast<float>(rng.normal() * 4.0 + 1.5));
      std::string header = "{'descr': '<f2', 'fortran_order': False, 'shape': (" + std::to_string(sizes[i]) + ", " +
                           std::to_string(d) + "), }";
      header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
      header += '\n';
      std::ofstream out(dir_ / "shards" / ("part" + std::to_string(i) + ".npy"), std::ios::binary);
      out.write("\x93NUMPY\x01\x00", 8);
      const auto len = static_cast<uint16_t>(header.size());
      out.write(reinterpret_cast<const char*>(&len), 2);
      out << header;
      out.write(reinterpret_cast<const char*>(h.data()), static_cast<std::streamsize>(h.size() * 2));
    }
    return p("shards");
  }

  void check_snapshot(const std::string& flags, const std::string& out, const std::string& log);
  fs::path dir_;
};

TEST_F(Resume, InterruptedAndResumedRunsAreBitIdentical) {
  const std::string data = make_shards({2000, 1500, 2500}, 32);
  const std::string flags = "train --data " + data +
                            " --shuffle-buffer 1500 --normalize expected-norm --d-sae 256 --k 4 --batch 128"
                            " --steps 1200 --dead-after-batches 3 --checkpoint-every 100 --threads 1 --seed 3";
  const std::string log = p("log.txt");
  ASSERT_EQ(run(flags + " --out " + p("A"), log), 0) << slurp(log);
  const std::string weights_a = slurp(dir_ / "A" / "sae_weights.safetensors");
  ASSERT_FALSE(weights_a.empty());
  // AuxK was active during the run (dead latents after 3 batches without firing).
  double max_aux = 0;
  {
    std::istringstream in(slurp(dir_ / "A" / "metrics.jsonl"));
    for (std::string line; std::getline(in, line);) max_aux = std::max(max_aux, json::parse(line)["l_aux"].get<double>());
  }
  EXPECT_GT(max_aux, 0.0) << "AuxK never active";

  for (int sig : {SIGTERM, SIGKILL}) {
    const std::string out = p(sig == SIGTERM ? "B" : "C");
    const pid_t pid = spawn(flags + " --out " + out, log);
    ASSERT_GT(pid, 0);
    ASSERT_TRUE(wait_for_file(fs::path(out) / "checkpoints" / "latest", pid))
        << "the run ended before its first checkpoint; log:\n" << slurp(log);
    ::kill(pid, sig);
    const int code = wait_exit(pid);
    if (sig == SIGTERM) {
      ASSERT_EQ(code, 130) << "SIGTERM must stop the run with a final checkpoint; log:\n" << slurp(log);
      const json m = json::parse(slurp(fs::path(out) / "msae.json"));
      EXPECT_FALSE(m["training"]["completed"].get<bool>());
    } else {
      ASSERT_EQ(code, 128 + SIGKILL);
    }
    ASSERT_EQ(run("train --resume " + out, log), 0) << slurp(log);
    const json m = json::parse(slurp(fs::path(out) / "msae.json"));
    EXPECT_TRUE(m["training"]["completed"].get<bool>());
    ASSERT_EQ(m["training"]["resumed_at_steps"].size(), 1u);
    const int64_t at = m["training"]["resumed_at_steps"][0].get<int64_t>();
    EXPECT_TRUE(at > 0 && at < 1200) << at;
    EXPECT_TRUE(slurp(fs::path(out) / "sae_weights.safetensors") == weights_a)
        << "signal " << sig << ": resumed at step " << at << ", the weights differ from the uninterrupted run";
    EXPECT_EQ(slurp(fs::path(out) / "cfg.json"), slurp(dir_ / "A" / "cfg.json"));
    EXPECT_EQ(losses(fs::path(out) / "metrics.jsonl"), losses(dir_ / "A" / "metrics.jsonl"));
  }
}

// Variants keep state outside the engine (the prefix sampler's RNG, the reordering means) and flags that
// --resume must restore: a killed sampled-prefix + reordering run with a warm-up schedule resumes exactly.
// So must the engine option --aux-dense-density (0: AuxK as dense GEMMs; the default takes the sparse
// products at this run's densities, which agree only to round-off).
TEST_F(Resume, VariantRunResumesBitIdentically) {
  const std::string flags = "train --d-sae 128 --k 3 --batch 128 --steps 700 --sampled-prefixes 3 --reorder-every 40"
                            " --lr-warmup-steps 100 --threshold-start-step 50 --checkpoint-every 100 --threads 1 --seed 4"
                            " --dead-after-batches 3 --aux-dense-density 0";
  const std::string log = p("log.txt");
  ASSERT_EQ(run(flags + " --out " + p("A"), log), 0) << slurp(log);
  const std::string out = p("B");
  const pid_t pid = spawn(flags + " --out " + out, log);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(wait_for_file(fs::path(out) / "checkpoints" / "latest", pid)) << slurp(log);
  ::kill(pid, SIGKILL);
  ASSERT_EQ(wait_exit(pid), 128 + SIGKILL);
  ASSERT_EQ(run("train --resume " + out, log), 0) << slurp(log);
  const json m = json::parse(slurp(fs::path(out) / "msae.json"));
  ASSERT_EQ(m["training"]["resumed_at_steps"].size(), 1u);
  EXPECT_TRUE(slurp(fs::path(out) / "sae_weights.safetensors") == slurp(dir_ / "A" / "sae_weights.safetensors"))
      << "resumed at step " << m["training"]["resumed_at_steps"][0] << ": weights differ from the uninterrupted run";
  EXPECT_EQ(losses(fs::path(out) / "metrics.jsonl"), losses(dir_ / "A" / "metrics.jsonl"));
}

// A checkpoint is outside bytes too (fuzz/fuzz_checkpoint.cpp): malformed or pathologically deep state.json
// gives an error naming the file, never a crash (copying a 100000-deep JSON value would overflow the stack).
TEST_F(Resume, MalformedCheckpointStateIsRefused) {
  const fs::path step = dir_ / "R" / "checkpoints" / "step-0000000001";
  fs::create_directories(step);
  { std::ofstream(dir_ / "R" / "checkpoints" / "latest") << "step-0000000001\n"; }
  const std::pair<std::string, std::string> cases[] = {
      {std::string(100000, '[') + std::string(100000, ']'), "nested deeper"},
      {"{\"format\": \"msae-checkpoint\",", "not valid JSON"},
      {"{\"format\": \"something-else\", \"format_version\": 1}", "msae-checkpoint"},
      // Fuzz finding (fuzz_checkpoint): a float where an integer belongs was read with get<int64_t>(),
      // undefined behaviour for 1e88; every number is now type- and range-checked (io::json_int).
      {"{\"format\": \"msae-checkpoint\", \"format_version\": 1, \"step\": 2, \"adam_t\": 2, \"d_in\": 4, "
       "\"d_sae\": 1.1e88, \"n_inactive\": [], \"threshold_bits\": 0, \"extra\": {}}",
       "\"d_sae\" must be an integer"},
      {"{\"format\": \"msae-checkpoint\", \"format_version\": 1.5}", "\"format_version\" must be an integer"},
      {"{\"format\": \"msae-checkpoint\", \"format_version\": 1, \"step\": 2, \"adam_t\": 2, \"d_in\": 4, "
       "\"d_sae\": 2, \"n_inactive\": [0, 3.5], \"threshold_bits\": 0, \"extra\": {}}",
       "\"n_inactive\"[1] must be an integer"},
      {"{\"format\": \"msae-checkpoint\", \"format_version\": 1, \"step\": 2, \"adam_t\": 2, \"d_in\": 4, "
       "\"d_sae\": 2, \"n_inactive\": [0, 3], \"threshold_bits\": -1, \"extra\": {}}",
       "\"threshold_bits\" must be an integer in [0, 4294967295]"},
  };
  for (const auto& [text, expected] : cases) {
    { std::ofstream(step / "state.json") << text; }
    try {
      msae::train::read_checkpoint((dir_ / "R").string());
      ADD_FAILURE() << "accepted: " << text.substr(0, 40);
    } catch (const msae::Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("state.json"), std::string::npos) << e.what();
    }
  }
}

TEST_F(Resume, ResumeTakesNoOtherFlagsAndNeedsACheckpoint) {
  const std::string log = p("log.txt");
  fs::create_directories(dir_ / "plain");
  EXPECT_EQ(run("train --resume " + p("plain"), log), 1);
  EXPECT_NE(slurp(log).find("no checkpoint"), std::string::npos) << slurp(log);
  EXPECT_EQ(run("train --resume " + p("plain") + " --k 3", log), 2);
  EXPECT_NE(slurp(log).find("drop --k"), std::string::npos) << slurp(log);
}

TEST_F(Resume, NormalizedSaeHasTheSameFvuOnRawData) {
  const std::string data = make_shards({4096}, 16);
  const std::string log = p("log.txt");
  // (--holdout-rows 0: the run's own final evaluation reads the data's first rows, as msae eval --data does)
  const std::string flags =
      "train --data " + data + " --normalize expected-norm --d-sae 128 --k 4 --batch 256 --threads 1 --holdout-rows 0";
  // X: 100 steps, exported with the scale folded in. Y: the same run continued to 200 steps; its checkpoint
  // at step 100 holds X's final parameters as trained (in the normalized space), independently of the fold.
  ASSERT_EQ(run(flags + " --steps 100 --out " + p("sae"), log), 0) << slurp(log);
  ASSERT_EQ(run(flags + " --steps 200 --checkpoint-every 100 --out " + p("Y"), log), 0) << slurp(log);
  const json m = json::parse(slurp(dir_ / "sae" / "msae.json"));
  const auto norm = m["data_normalization"];
  EXPECT_EQ(norm["method"], "expected-norm");
  EXPECT_TRUE(norm["folded_into_weights"].get<bool>());
  const float s = norm["scale"].get<float>();
  EXPECT_LT(s, 0.5f) << "rows have norm ~ 4 * sqrt(d): the scale must shrink them";
  EXPECT_EQ(json::parse(slurp(dir_ / "sae" / "cfg.json"))["normalize_activations"], "none");

  const msae::train::Checkpoint ck = msae::train::read_checkpoint(p("Y"));
  ASSERT_EQ(ck.step, 100);
  EXPECT_EQ(ck.extra["scale"].get<float>(), s);
  msae::saedir::SaeDirectory sae = msae::saedir::read_sae_dir(p("sae"));
  fs::create_directories(dir_ / "unfolded");
  msae::saedir::write_sae_files(p("unfolded"), sae.sae, ck.params, sae.msae_json);
  msae::Tensor x = msae::io::read_npy(data + "/part0.npy");
  for (float& v : x.data) v *= s;
  msae::io::write_npy(p("scaled.npy"), x);

  auto eval_json = [&](const std::string& sae_dir, const std::string& d) {
    const std::string cmd = std::string(MSAE_BINARY) + " eval --json --sae " + sae_dir + " --data " + d + " --threads 1 2>/dev/null";
    FILE* pipe = popen(cmd.c_str(), "r");
    std::string text;
    char buf[4096];
    for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) text.append(buf, n);
    EXPECT_EQ(pclose(pipe), 0);
    return json::parse(text);
  };
  const json raw = eval_json(p("sae"), data);
  const json normalized = eval_json(p("unfolded"), p("scaled.npy"));
  const double f_raw = raw["whole"]["fvu"].get<double>(), f_norm = normalized["whole"]["fvu"].get<double>();
  EXPECT_LT(f_raw, 0.95) << "the SAE learned something";
  EXPECT_NEAR(f_raw, f_norm, 1e-4 * f_norm);
  EXPECT_NEAR(raw["whole"]["l0"].get<double>(), normalized["whole"]["l0"].get<double>(), 1e-3);
  // The training run's own final evaluation (raw data) agrees too.
  EXPECT_NEAR(m["final_metrics"]["whole"]["fvu"].get<double>(), f_raw, 1e-4 * f_raw);
}

}  // namespace

// msae synth-bench on SIGINT: the run in progress stops at its next step and is evaluated as it stands,
// the remaining runs are skipped, and everything written says so (exit code 130 like msae train).
TEST_F(Resume, InterruptedSynthBenchWritesTheRunSoFar) {
  const std::string out = p("bench");
  const std::string log = p("bench-log.txt");
  const pid_t pid = spawn("synth-bench --preset synth-lite --archs matryoshka,batchtopk --steps 200000 --eval-rows 2048"
                          " --meta-steps 0 --threads 1 --save-saes --out " + out, log);
  ASSERT_GT(pid, 0);
  // truth.safetensors is written into the temporary output directory just before the first run trains.
  // (named OUT.tmp-PID-N: io::temp_name)
  bool started = false;
  for (int i = 0; i < 120000 && !started; ++i) {
    for (const auto& e : fs::directory_iterator(dir_))
      if (e.path().filename().string().rfind("bench.tmp-" + std::to_string(pid) + "-", 0) == 0 &&
          fs::exists(e.path() / "truth.safetensors"))
        started = true;
    int status = 0;
    if (!started && waitpid(pid, &status, WNOHANG) == pid) break;
    if (!started) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(started) << slurp(log);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::kill(pid, SIGINT);
  ASSERT_EQ(wait_exit(pid), 130) << slurp(log);
  const json r = json::parse(slurp(fs::path(out) / "results.json"));
  EXPECT_FALSE(r["completed"].get<bool>());
  ASSERT_EQ(r["runs"].size(), 1u) << "the batchtopk run must be skipped";
  const json& train = r["runs"][0]["train"];
  EXPECT_FALSE(train["completed"].get<bool>());
  EXPECT_LT(train["steps"].get<int64_t>(), 200000);
  EXPECT_EQ(train["steps_planned"].get<int64_t>(), 200000);
  EXPECT_EQ(train["samples"].get<int64_t>(), train["steps"].get<int64_t>() * 1024);
  EXPECT_TRUE(r["runs"][0]["ground_truth"]["f1"].is_number());
  EXPECT_TRUE(r["summary"].contains("matryoshka"));
  EXPECT_FALSE(r["summary"].contains("batchtopk"));
  const json m = json::parse(slurp(fs::path(out) / "saes" / "matryoshka-seed0" / "msae.json"));
  EXPECT_FALSE(m["training"]["completed"].get<bool>());
  EXPECT_EQ(m["training"]["steps"], train["steps"]);
  EXPECT_NE(slurp(fs::path(out) / "report.html").find("Interrupted"), std::string::npos);
}

// --snapshot-out on a stopped resumable run: evaluates each run at its latest checkpoint without training,
// leaves OUT.partial to be continued, and gives the SAE of that step: the same ground-truth scores as a run
// trained for exactly that many steps (there is no learning-rate schedule).
void Resume::check_snapshot(const std::string& flags, const std::string& out, const std::string& log) {
  const std::string snap = p("snap");
  EXPECT_EQ(run(flags + " --out " + out + " --snapshot-out " + snap, log), 2) << "needs --resume\n" << slurp(log);
  EXPECT_EQ(run(flags + " --resume --out " + out + " --snapshot-out " + out, log), 2) << slurp(log);
  ASSERT_EQ(run(flags + " --resume --out " + out + " --snapshot-out " + snap, log), 0) << slurp(log);
  EXPECT_TRUE(fs::exists(fs::path(out + ".partial") / "args.json"));
  EXPECT_FALSE(fs::exists(out));
  const json s = json::parse(slurp(fs::path(snap) / "results.json"));
  EXPECT_FALSE(s["completed"].get<bool>());
  ASSERT_GE(s["runs"].size(), 1u);
  const json& m = s["runs"][0];
  ASSERT_EQ(m["arch"], "matryoshka");
  const int64_t at = m["train"]["steps"].get<int64_t>();
  ASSERT_GT(at, 0);
  EXPECT_EQ(m["train"]["completed"].get<bool>(), at == 300);
  const std::string short_run = "synth-bench --preset synth-lite --archs matryoshka --d-sae 64 --steps " +
                                std::to_string(at) + " --eval-rows 1024 --meta-steps 20 --threads 1 --out " + p("short");
  ASSERT_EQ(run(short_run, log), 0) << slurp(log);
  const json t = json::parse(slurp(dir_ / "short" / "results.json"));
  EXPECT_EQ(m["ground_truth"], t["runs"][0]["ground_truth"]);
  EXPECT_EQ(m["eval"], t["runs"][0]["eval"]);
}

// msae synth-bench --checkpoint-every: a run killed (SIGKILL) or stopped (SIGINT) continues with --resume
// to exactly the results of an uninterrupted run; the checkpoints do not end up in the output.
TEST_F(Resume, ResumedSynthBenchEqualsAnUninterruptedOne) {
  const std::string flags = "synth-bench --preset synth-lite --archs matryoshka,batchtopk --d-sae 64 --steps 300"
                            " --eval-rows 1024 --meta-steps 20 --threads 1";
  const std::string log = p("sb-log.txt");
  ASSERT_EQ(run(flags + " --out " + p("A"), log), 0) << slurp(log);
  const json a = json::parse(slurp(dir_ / "A" / "results.json"));
  for (int sig : {SIGKILL, SIGINT}) {
    const std::string out = p(sig == SIGKILL ? "K" : "I");
    const std::string resumable = flags + " --checkpoint-every 25 --out " + out;
    const pid_t pid = spawn(resumable, log);
    ASSERT_GT(pid, 0);
    ASSERT_TRUE(wait_for_file(fs::path(out + ".partial") / "runs" / "matryoshka-seed0" / "checkpoints" / "latest", pid))
        << slurp(log);
    ::kill(pid, sig);
    ASSERT_EQ(wait_exit(pid), sig == SIGKILL ? 128 + SIGKILL : 130) << slurp(log);
    EXPECT_FALSE(fs::exists(out)) << "nothing is committed before the last run";
    // Starting over on top of a resumable run, or resuming with other flags, is refused.
    EXPECT_EQ(run(resumable, log), 2) << slurp(log);
    EXPECT_EQ(run(flags + " --k 3 --resume --out " + out, log), 2) << slurp(log);
    if (sig == SIGINT) {
      check_snapshot(flags, out, log);
      // A checkpoint of another sampler stream version (or of one from before versions were recorded) is not
      // trained on: the run would switch streams halfway.
      const fs::path ckdir = fs::path(out + ".partial") / "runs" / "matryoshka-seed0" / "checkpoints";
      std::string name = slurp(ckdir / "latest");
      name.erase(name.find_last_not_of("\n") + 1);
      const fs::path state = ckdir / name / "state.json";
      const std::string original = slurp(state);
      const std::string digest = slurp(ckdir / name / "digest.json");
      json edited = json::parse(original);
      ASSERT_EQ(edited["extra"]["stream_version"], msae::synth::FeatureSampler::kStreamVersion);
      for (const int older : {0, 1, msae::synth::FeatureSampler::kStreamVersion - 1}) {  // 0: no version recorded
        if (older == 0)
          edited["extra"].erase("stream_version");
        else
          edited["extra"]["stream_version"] = older;
        { std::ofstream(state) << edited.dump(); }
        fs::remove(ckdir / name / "digest.json");  // as msae before checkpoint digests wrote it
        EXPECT_EQ(run(flags + " --resume --out " + out, log), 2) << slurp(log);
        const std::string said = "stream version " + std::to_string(older == 0 ? 1 : older);
        EXPECT_NE(slurp(log).find(said), std::string::npos) << slurp(log);
      }
      { std::ofstream(state) << original; }
      { std::ofstream(ckdir / name / "digest.json") << digest; }
    }
    ASSERT_EQ(run(flags + " --resume --out " + out, log), 0) << slurp(log);
    EXPECT_FALSE(fs::exists(out + ".partial"));
    EXPECT_FALSE(fs::exists(fs::path(out) / "runs"));
    const json b = json::parse(slurp(fs::path(out) / "results.json"));
    ASSERT_EQ(b["runs"].size(), 2u);
    EXPECT_FALSE(b["runs"][0]["train"]["resumed_at"].is_null()) << "the first run must have been resumed";
    for (size_t i = 0; i < 2; ++i) {
      SCOPED_TRACE("signal " + std::to_string(sig) + " run " + std::to_string(i));
      EXPECT_EQ(b["runs"][i]["ground_truth"], a["runs"][i]["ground_truth"]);
      EXPECT_EQ(b["runs"][i]["eval"], a["runs"][i]["eval"]);
      EXPECT_EQ(b["runs"][i]["meta_sae"], a["runs"][i]["meta_sae"]);
      EXPECT_EQ(b["runs"][i]["train"]["curve_fvu"], a["runs"][i]["train"]["curve_fvu"]);
      EXPECT_EQ(b["runs"][i]["train"]["curve_dead"], a["runs"][i]["train"]["curve_dead"]);
      EXPECT_EQ(b["runs"][i]["train"]["curve_silent"], a["runs"][i]["train"]["curve_silent"]);
      EXPECT_EQ(b["runs"][i]["train"]["curve_silent"].size(), b["runs"][i]["train"]["curve_step"].size());
      EXPECT_EQ(b["runs"][i]["train"]["steps"], 300);
    }
  }
}
