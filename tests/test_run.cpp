// The run layer (msae/run.h) and the option table (msae/options.h):
//  - the table: unique keys, docs, defaults of the row's type; values checked by type, bounds and choices,
//    with errors that name the option in the front end's spelling; text and JSON parsing; legacy args;
//  - run::train in the library: the held-out split (training never reads the evaluated rows, and says
//    which rows were evaluated), eval rows from the caller, a stream of batches, a stop and exact resume;
//  - end to end (the binary): a checkpoint written by msae before the option table resumes to the same
//    bits the old binary wrote uninterrupted; msae sweep trains on a shard directory and on a safetensors
//    file exactly as msae train does with the same options.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <unistd.h>

#include "cli_run.h"
#include "msae/kernels.h"
#include "msae/io.h"
#include "msae/run.h"
#include "msae/synth.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace msae {
namespace {

// ---------------------------------------------------------------------------------------------
// The option table
// ---------------------------------------------------------------------------------------------
TEST(OptionTable, RowsAreWellFormed) {
  std::set<std::string> keys;
  for (const run::OptionDef& row : run::option_table()) {
    EXPECT_TRUE(keys.insert(row.key).second) << "duplicate key " << row.key;
    EXPECT_FALSE(std::string(row.doc).empty()) << row.key;
    EXPECT_NE(row.scopes, 0u) << row.key << " reaches no front end";
    for (char c : std::string(row.key)) EXPECT_TRUE(std::islower(c) || std::isdigit(c) || c == '_') << row.key;
    if (row.def.is_null()) continue;  // worked out by the run
    // The default is a value of the row's type, and passes the row's own checks.
    run::Options o;
    EXPECT_NO_THROW(o.set(row.key, row.def)) << row.key << " default " << row.def.dump();
  }
  EXPECT_GE(keys.size(), 50u);
}

TEST(OptionTable, EveryFrontEndSpellingFindsTheRow) {
  for (const char* name : {"d_sae", "d-sae", "--d-sae"}) {
    const run::OptionDef* row = run::find_option(name);
    ASSERT_NE(row, nullptr) << name;
    EXPECT_STREQ(row->key, "d_sae");
  }
  EXPECT_EQ(run::find_option("dsae"), nullptr);
  set_option_spelling(OptionSpelling::python);
  EXPECT_EQ(opt("dead_after_batches"), "dead_after_batches");
  set_option_spelling(OptionSpelling::cli);
  EXPECT_EQ(opt("dead_after_batches"), "--dead-after-batches");
}

// The message of the usage error that f throws ("" when none).
template <class F>
std::string usage_message(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage) << e.what();
    return e.what();
  }
  return "";
}

TEST(Options, ValuesAreCheckedAgainstTheirRow) {
  run::Options o;
  o.set_text("k", "12");
  o.set_text("lr", "0.001");
  o.set_text("group_sizes", "8,8,16");
  o.set("prefix_weights", json::array({1, 0.5}));
  o.set("stop_gradient_groups", true);
  EXPECT_EQ(o.integer("k"), 12);
  EXPECT_DOUBLE_EQ(o.real("lr"), 0.001);
  EXPECT_EQ(o.int_list("group_sizes"), (std::vector<int64_t>{8, 8, 16}));
  EXPECT_EQ(o.real_list("prefix_weights"), (std::vector<double>{1.0, 0.5}));
  EXPECT_TRUE(o.flag("stop_gradient_groups"));
  EXPECT_EQ(o.integer("aux_k"), 512) << "not given: the table's default";
  EXPECT_TRUE(o.automatic("d_sae"));
  EXPECT_FALSE(o.given("aux_k"));

  EXPECT_NE(usage_message([&] { o.set_text("k", "1.5"); }).find("--k: '1.5' is not an integer"), std::string::npos);
  EXPECT_NE(usage_message([&] { o.set("k", 0); }).find("--k must be positive"), std::string::npos);
  EXPECT_NE(usage_message([&] { o.set("k", 2.5); }).find("--k must be an integer"), std::string::npos);
  EXPECT_NE(usage_message([&] { o.set("lr", 1e300); }).find("--lr must be a finite number"), std::string::npos);
  EXPECT_NE(usage_message([&] { o.set("aux_k", -1); }).find("--aux-k must be >= 0"), std::string::npos);
  EXPECT_NE(usage_message([&] { o.set("arch", "nope"); }).find("--arch: unknown value 'nope'; expected one of matryoshka"),
            std::string::npos);
  EXPECT_NE(usage_message([&] { o.set("encoder_bias", 1); }).find("--encoder-bias takes true or false"), std::string::npos);
  EXPECT_NE(usage_message([&] { o.set_text("group_sizes", "8,x"); }).find("'x' is not an integer"), std::string::npos);
  EXPECT_NE(usage_message([&] { o.set("nope", 1); }).find("unknown option 'nope'"), std::string::npos);
  // Python spells the same errors with its keywords.
  set_option_spelling(OptionSpelling::python);
  const std::string py = usage_message([&] { o.set("dead_after_batches", 0); });
  set_option_spelling(OptionSpelling::cli);
  EXPECT_NE(py.find("dead_after_batches must be positive"), std::string::npos) << py;
  // Failed sets change nothing.
  EXPECT_EQ(o.integer("k"), 12);
}

TEST(Options, JsonRoundTripKeepsExactlyTheGivenOptions) {
  run::Options o;
  o.set("d-sae", 64);  // a grid spelling
  o.set("recipe", "saelens");
  o.set("group_k", "1,2");
  const json j = o.to_json();
  EXPECT_EQ(j, (json{{"d_sae", 64}, {"recipe", "saelens"}, {"group_k", {1, 2}}}));
  const run::Options back = run::Options::from_json(j, "test");
  EXPECT_EQ(back.to_json(), j);
  EXPECT_THROW(run::Options::from_json(json{{"bogus", 1}}, "test"), Error);
}

// A checkpoint's "args" as msae train wrote them before the option table: only the given flags (and the
// values a run always resolved) become given options, so a recipe still fills in what was not given.
TEST(Options, LegacyArgsKeepTheirMeaning) {
  const json args = json::parse(msae::test_util::slurp(fs::path(MSAE_SOURCE_DIR) /
                                                       "tests/fixtures/legacy_checkpoint/run/checkpoints/step-0000000010/state.json"))
                        .at("extra")
                        .at("args");
  const run::Options o = run::options_from_legacy_args(args, "fixture");
  EXPECT_EQ(o.text("recipe"), "saelens");
  EXPECT_EQ(o.integer("aux_k"), 16);
  EXPECT_EQ(o.integer("d_sae"), 32);
  EXPECT_EQ(o.integer("holdout_rows"), 0) << "runs of that time trained on every row";
  EXPECT_FALSE(o.given("aux_coef")) << "not given then: the recipe sets it";
  EXPECT_FALSE(o.given("dead_after_batches"));
  EXPECT_FALSE(o.given("lr"));
  const train::TrainOptions t = run::make_train_options(o, 8, {});
  EXPECT_TRUE(t.sae.encoder_bias) << "saelens recipe";
  EXPECT_EQ(t.sae.dead_after_batches, 1000);
  EXPECT_EQ(t.sae.aux_k, 16);
}

// --engine auto (the default) is resolved by the shape: the screened engine where it measured faster.
TEST(Options, AutoEngineFollowsTheShape) {
  auto engine_for = [](const json& j, int64_t d) {
    return run::make_train_options(run::Options::from_json(j, "test"), d, {}).engine;
  };
  const std::string big = kernels::screen_pays(4096, 16384, 768) ? "screened" : "sparse";
#if defined(__AVX2__)
  EXPECT_EQ(big, "screened");
#endif
  EXPECT_EQ(engine_for({{"d_sae", 16384}, {"batch", 4096}}, 768), big);
  EXPECT_EQ(engine_for({{"d_sae", 16384}, {"batch", 4096}, {"arch", "batchtopk"}}, 2304), big);
  EXPECT_EQ(engine_for({{"d_sae", 16384}, {"batch", 1024}}, 768), big);  // B * D = 2^24: the edge
  // Where oneDNN's int8 GEMM has VNNI the edges are d = 512 and B * D = 2^22.
  const std::string vnni = kernels::int8_gemm_vnni() ? big : "sparse";
  EXPECT_EQ(engine_for({{"d_sae", 4096}, {"batch", 1024}}, 768), vnni);  // B * D = 2^22
  EXPECT_EQ(engine_for({{"d_sae", 16384}, {"batch", 4096}}, 512), vnni);  // d = 512
  EXPECT_EQ(engine_for({{"d_sae", 2048}, {"batch", 1024}}, 768), "sparse");  // B * D < 2^22
  EXPECT_EQ(engine_for({{"d_sae", 16384}, {"batch", 4096}}, 511), "sparse");  // d < 512
  EXPECT_EQ(engine_for({{"d_sae", 16384}, {"batch", 4096}, {"arch", "topk"}}, 768), "sparse");
  EXPECT_EQ(engine_for({{"arch", "relu_l1"}, {"d_sae", 16384}, {"batch", 4096}}, 768), "reference");
  EXPECT_EQ(engine_for({{"d_sae", 16384}, {"batch", 4096}, {"engine", "sparse"}}, 768), "sparse");  // given: kept
  EXPECT_EQ(engine_for({{"d_sae", 512}, {"batch", 1024}}, 64), "sparse");  // the embedded data's runs
}

// --cuda-precision is the cuda engine's: fp32 (the default) passes with every engine, another value only
// with --engine cuda (auto never picks cuda); the error names the fix.
TEST(Options, CudaPrecisionOnlyWithTheCudaEngine) {
  auto options = [](json j) {
    j["d_sae"] = 512;
    j["batch"] = 64;
    return run::make_train_options(run::Options::from_json(j, "test"), 64, {});
  };
  EXPECT_EQ(options({{"engine", "sparse"}}).cuda_precision, "fp32");
  EXPECT_EQ(options({{"engine", "reference"}, {"cuda_precision", "fp32"}}).cuda_precision, "fp32");
  EXPECT_EQ(options({{"engine", "cuda"}, {"cuda_precision", "bf16"}}).cuda_precision, "bf16");
  EXPECT_EQ(options({{"engine", "cuda"}, {"cuda_precision", "tf32"}}).cuda_precision, "tf32");
  for (const char* engine : {"sparse", "screened", "reference", "auto"}) {
    const std::string msg = usage_message([&] { options({{"engine", engine}, {"cuda_precision", "bf16"}}); });
    EXPECT_NE(msg.find("--cuda-precision bf16 applies to --engine cuda only"), std::string::npos) << engine << ": " << msg;
    EXPECT_NE(msg.find("give --engine cuda, or drop --cuda-precision"), std::string::npos) << msg;
  }
  const std::string bad = usage_message([&] { options({{"engine", "cuda"}, {"cuda_precision", "fp16"}}); });
  EXPECT_NE(bad.find("expected one of fp32, tf32, bf16"), std::string::npos) << bad;
}

// ---------------------------------------------------------------------------------------------
// run::train in the library
// ---------------------------------------------------------------------------------------------
std::vector<float> structured_rows(int64_t N, int64_t d, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> basis(static_cast<size_t>(4 * d * d));
  for (float& v : basis) v = static_cast<float>(rng.normal());
  std::vector<float> x(static_cast<size_t>(N * d), 0.0f);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t f = 0; f < 4 * d; ++f)
      if (rng.uniform() < 0.05)
        for (int64_t j = 0; j < d; ++j) x[r * d + j] += static_cast<float>(rng.uniform()) * basis[f * d + j];
  return x;
}

// The rows x (N, d) as the caller's in-memory data, named "rows".
run::Inputs array_inputs(const std::vector<float>& x, int64_t d) {
  run::Inputs in;
  in.array = x.data();
  in.rows = static_cast<int64_t>(x.size()) / d;
  in.d = d;
  in.array_name = "rows";
  return in;
}

run::Options small_options() {
  run::Options o;
  o.set("d_sae", 64);
  o.set("k", 4);
  o.set("batch", 64);
  o.set("steps", 30);
  o.set("threads", 1);
  return o;
}

run::Callbacks quiet() {
  run::Callbacks cb;
  cb.info = [](const std::string&) {};
  return cb;
}

TEST(RunLayer, TrainingNeverReadsTheHeldOutRows) {
  const int64_t N = 1000, d = 16;
  std::vector<float> x = structured_rows(N, d, 1);
  run::Inputs in = array_inputs(x, d);
  const run::Result a = run::train(small_options(), in, quiet());
  ASSERT_TRUE(a.completed && a.evaluated);
  EXPECT_EQ(a.eval_rows, 100);
  EXPECT_NE(a.eval_on.find("held-out rows [900, 1000) of rows"), std::string::npos) << a.eval_on;
  EXPECT_EQ(a.msae_json["training"]["held_out_rows"], 100);
  // Poisoning the held-out rows changes nothing in training (and makes the evaluation fail on them).
  for (int64_t i = 900 * d; i < N * d; ++i) x[static_cast<size_t>(i)] = 1e6f;
  run::Options no_eval = small_options();
  const run::Result b = run::train(no_eval, in, quiet());
  EXPECT_EQ(a.params.W_dec.data, b.params.W_dec.data);
  EXPECT_GT(b.eval.prefixes.back().mse, 1e3 * a.eval.prefixes.back().mse);
  // With holdout_rows 0 training reads every row, and the evaluation says it read training rows.
  run::Options all = small_options();
  all.set("holdout_rows", 0);
  const run::Result c = run::train(all, in, quiet());
  EXPECT_NE(c.eval_on.find("that training also read"), std::string::npos) << c.eval_on;
  EXPECT_NE(a.params.W_dec.data, c.params.W_dec.data);
  // Evaluation rows given by the caller: no hold-out, training reads every row (as with holdout_rows 0).
  std::vector<float> ev = structured_rows(300, d, 2);
  in.eval_array = ev.data();
  in.eval_array_rows = 300;
  in.eval_array_d = d;
  in.eval_array_name = "mine";
  const run::Result e = run::train(small_options(), in, quiet());
  EXPECT_EQ(e.params.W_dec.data, c.params.W_dec.data);
  EXPECT_EQ(e.eval_rows, 300);
  EXPECT_NE(e.eval_on.find("held-out rows of mine"), std::string::npos) << e.eval_on;
  // A hold-out that leaves nothing to train on is refused, naming the option.
  run::Options bad = small_options();
  bad.set("holdout_rows", N);
  in.eval_array = nullptr;
  EXPECT_NE(usage_message([&] { run::train(bad, in, quiet()); }).find("--holdout-rows 1000 leaves no rows"), std::string::npos);
}

TEST(RunLayer, AStreamRunsUntilItEnds) {
  const int64_t d = 16;
  const std::vector<float> x = structured_rows(64 * 7 + 10, d, 3);
  int64_t served = 0;
  run::Inputs in;
  in.stream_d = d;
  in.stream = [&](float* out, int64_t B) {
    if ((served + 1) * B > static_cast<int64_t>(x.size()) / d) return false;
    std::copy(x.begin() + served * B * d, x.begin() + (served + 1) * B * d, out);
    ++served;
    return true;
  };
  run::Options o = small_options();
  o.erase("steps");
  std::vector<int64_t> logged;
  run::Callbacks cb = quiet();
  cb.log = [&](const json& line) { logged.push_back(line.at("step").get<int64_t>()); };
  const run::Result r = run::train(o, in, cb);
  EXPECT_TRUE(r.completed);
  EXPECT_EQ(r.steps, 7);
  EXPECT_EQ(r.steps_planned, -1);
  EXPECT_FALSE(r.evaluated) << "a stream cannot be read again";
  EXPECT_EQ(logged.back(), 7) << "the last, partial interval is logged";
  o.set("checkpoint_every", 2);
  o.set("out", (fs::temp_directory_path() / "msae-run-stream").string());
  EXPECT_NE(usage_message([&] { run::train(o, in, quiet()); }).find("cannot be resumed"), std::string::npos);
}

TEST(RunLayer, AStoppedRunResumesExactly) {
  const int64_t N = 1000, d = 16;
  const std::vector<float> x = structured_rows(N, d, 4);
  run::Inputs in = array_inputs(x, d);
  const fs::path dir = fs::temp_directory_path() / ("msae-run-resume-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  run::Options o = small_options();
  o.set("recipe", "saelens");
  o.set("sampled_prefixes", 3);
  o.set("checkpoint_every", 10);
  o.set("out", (dir / "whole").string());
  const run::Result whole = run::train(o, in, quiet());

  o.set("out", (dir / "parts").string());
  run::Callbacks stop = quiet();
  int64_t polls = 0;
  stop.stop = [&] { return ++polls > 17; };  // stops before step 18
  const run::Result first = run::train(o, in, stop);
  EXPECT_FALSE(first.completed);
  EXPECT_EQ(first.steps, 17);
  EXPECT_FALSE(first.evaluated);
  run::Options again;
  again.set("resume", (dir / "parts").string());
  const run::Result second = run::train(again, in, quiet());
  EXPECT_TRUE(second.completed);
  EXPECT_EQ(second.steps, 30);
  EXPECT_EQ(second.params.W_enc_t.data, whole.params.W_enc_t.data);
  EXPECT_EQ(second.params.W_dec.data, whole.params.W_dec.data);
  EXPECT_EQ(second.params.b_dec.data, whole.params.b_dec.data);
  EXPECT_EQ(second.params.threshold, whole.params.threshold);
  EXPECT_EQ(msae::test_util::slurp(dir / "parts/sae_weights.safetensors"),
            msae::test_util::slurp(dir / "whole/sae_weights.safetensors"));
  // Only threads may be given with resume.
  again.set("k", 3);
  EXPECT_NE(usage_message([&] { run::train(again, in, quiet()); }).find("drop --k"), std::string::npos);
  fs::remove_all(dir);
}

// A run too short for the threshold EMA exports an SAE whose inference keeps far more than k latents: the
// final evaluation says so (issue 22's 3-step and 49-step cases), and the default length on small data is
// long enough for the EMA, which gives a usable SAE.
TEST(RunLayer, ShortRunsAreFlaggedAndTheDefaultLengthSettles) {
  const int64_t N = 2000, d = 16;
  const std::vector<float> x = structured_rows(N, d, 6);
  run::Inputs in = array_inputs(x, d);
  for (int64_t steps : {3, 49}) {
    run::Options o = small_options();
    o.set("steps", steps);
    const run::Result r = run::train(o, in, quiet());
    const json& q = r.final_metrics.at("quality");
    EXPECT_FALSE(q.at("usable").get<bool>()) << steps;
    ASSERT_FALSE(q.at("problems").empty());
    EXPECT_NE(q.at("problems")[0].get<std::string>().find("has not settled"), std::string::npos) << q.dump();
    EXPECT_NE(q.dump().find("train for at least 299 steps"), std::string::npos) << q.dump();
  }
  run::Options o = small_options();
  o.erase("steps");  // one epoch would be 29 steps of 64 rows
  const run::Result r = run::train(o, in, quiet());
  EXPECT_EQ(r.steps, 299);
  EXPECT_TRUE(r.final_metrics.at("quality").at("usable").get<bool>()) << r.final_metrics.at("quality").dump();
  EXPECT_LT(r.eval.prefixes.back().l0, 2.0 * 4);
  // The threshold's settling time follows the recipe's schedule (dictionary_learning: rate 0.001 from step 1000).
  SaeConfig cfg;
  cfg.threshold_rate = 0.001f;
  cfg.threshold_start_step = 1000;
  EXPECT_EQ(run::threshold_settle_steps(cfg), 1000 + 2995);
}

// ---------------------------------------------------------------------------------------------
// End to end
// ---------------------------------------------------------------------------------------------
class RunCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("msae-test-run-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string p(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

// A checkpoint msae wrote before the option table (its state.json records "args") resumes with the same
// meaning: to the weights the old msae wrote uninterrupted, and to those this binary gives the same run
// uninterrupted. Bit for bit in a Release build like the one that made the fixture (checked by hand); the test
// allows float32 round-off, because the sanitizer build (-O2) computes the steps after the checkpoint, and this
// binary's uninterrupted run all its steps, with other rounding than the Release build that wrote the
// checkpoint. A misread option (another hold-out, recipe or k) changes the weights far beyond it.
TEST_F(RunCli, LegacyCheckpointResumesToTheSameRun) {
  const fs::path fixture = fs::path(MSAE_SOURCE_DIR) / "tests/fixtures/legacy_checkpoint";
  fs::copy(fixture, dir_ / "legacy", fs::copy_options::recursive);
  // The run recorded its data as "acts.npy", relative to where it was started: resume from there.
  const std::string cmd = "cd " + (dir_ / "legacy").string() + " && " + MSAE_BINARY + " train --resume run --threads 1 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  ASSERT_EQ(pclose(pipe), 0) << out;
  EXPECT_NE(out.find("resuming"), std::string::npos) << out;
  // The same run today, uninterrupted: the flags the old run was given, and every row trained on.
  const msae::test_util::Result now = msae::test_util::run(
      "train --data " + (dir_ / "legacy/acts.npy").string() +
      " --d-sae 32 --k 2 --batch 64 --steps 20 --recipe saelens --aux-k 16 --threads 1 --holdout-rows 0 --out " + p("now"));
  ASSERT_EQ(now.code, 0) << now.output;
  const io::SafetensorsFile got = io::read_safetensors((dir_ / "legacy/run/sae_weights.safetensors").string());
  for (const fs::path& other : {fixture / "expected_sae_weights.safetensors", dir_ / "now/sae_weights.safetensors"}) {
    const io::SafetensorsFile want = io::read_safetensors(other.string());
    for (const auto& [name, t] : want.tensors) {
      ASSERT_TRUE(got.tensors.count(name)) << name;
      const auto& a = got.tensors.at(name).data;
      ASSERT_EQ(a.size(), t.data.size()) << name;
      double worst = 0;
      for (size_t i = 0; i < a.size(); ++i)
        worst = std::max(worst, std::abs(static_cast<double>(a[i]) - t.data[i]) / (1e-3 + std::abs(t.data[i])));
      EXPECT_LT(worst, 1e-3) << name << " against " << other;
    }
  }
}

// msae sweep goes through the run layer: a shard directory and a safetensors file train as msae train
// trains on them with the same options (the same final evaluation, to the bit).
TEST_F(RunCli, SweepTrainsOnShardDirectoriesAndSafetensors) {
  const int64_t d = 16;
  const std::vector<float> x = structured_rows(1200, d, 5);
  fs::create_directories(dir_ / "shards");
  {
    Tensor a({700, d}), b({500, d});
    std::copy(x.begin(), x.begin() + 700 * d, a.data.begin());
    std::copy(x.begin() + 700 * d, x.end(), b.data.begin());
    io::write_npy(p("shards/a.npy"), a);
    io::write_npy(p("shards/b.npy"), b);
    Tensor all({1200, d});
    std::copy(x.begin(), x.end(), all.data.begin());
    io::write_safetensors(p("acts.safetensors"), {{"acts", all.shape, all.ptr()}});
  }
  const std::string grid = p("grid.jsonl");
  {
    std::ofstream g(grid);
    g << R"({"data": ")" << p("shards") << R"(", "d-sae": 64, "k": 4, "batch": 64, "steps": 25, "normalize": "expected-norm"})"
      << "\n";
    g << R"({"data": ")" << p("acts.safetensors") << R"(", "d_sae": 64, "k": 4, "batch": 64, "steps": 25, "recipe": "saelens"})"
      << "\n";
  }
  const msae::test_util::Result s = msae::test_util::run("sweep --grid " + grid + " --out " + p("sweep") + " --threads 1");
  ASSERT_EQ(s.code, 0) << s.output;
  std::vector<json> rows;
  {
    std::istringstream in(msae::test_util::slurp(dir_ / "sweep/results.jsonl"));
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) rows.push_back(json::parse(line));
  }
  ASSERT_EQ(rows.size(), 2u);
  const std::string flags[] = {"--data " + p("shards") + " --normalize expected-norm",
                               "--data " + p("acts.safetensors") + " --recipe saelens"};
  for (int i = 0; i < 2; ++i) {
    const std::string out = p("train" + std::to_string(i));
    const msae::test_util::Result t = msae::test_util::run(
        "train " + flags[i] + " --d-sae 64 --k 4 --batch 64 --steps 25 --threads 1 --out " + out);
    ASSERT_EQ(t.code, 0) << t.output;
    const json m = json::parse(msae::test_util::slurp(fs::path(out) / "msae.json"));
    json expected = m["final_metrics"];
    expected.erase("latent_frequency");
    EXPECT_EQ(rows[i]["metrics"], expected) << i;
    EXPECT_NE(rows[i]["metrics"]["evaluated_on"].get<std::string>().find("held-out rows [1080, 1200)"), std::string::npos);
  }
}

// Issue 21 case 8: data that changes under a run. A shard truncated while it is memory-mapped (SIGBUS
// before) is an error naming the file, and the state so far is saved as a checkpoint; data deleted during
// the run (the mapping keeps training going) makes only the final evaluation fail, and the SAE is kept.
// --init-encoder-norm X: the encoder rows at norm X along their decoder rows; the decoder is SPEC's init.
TEST(RunLayer, InitEncoderNormScalesTheEncoderRows) {
  const int64_t d = 48, D = 200;
  const SaeParams spec = SaeParams::init(d, D, 3), scaled = SaeParams::init(d, D, 3, 0.1f);
  EXPECT_EQ(scaled.W_dec.data, spec.W_dec.data);
  double spec_norm = 0.0;
  for (int64_t i = 0; i < D; ++i) {
    double n2 = 0.0, s2 = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      EXPECT_FLOAT_EQ(scaled.W_enc_t.data[i * d + j], 0.1f * spec.W_dec.data[i * d + j]);
      n2 += static_cast<double>(scaled.W_enc_t.data[i * d + j]) * scaled.W_enc_t.data[i * d + j];
      s2 += static_cast<double>(spec.W_enc_t.data[i * d + j]) * spec.W_enc_t.data[i * d + j];
    }
    EXPECT_NEAR(std::sqrt(n2), 0.1, 1e-6);
    spec_norm += std::sqrt(s2) / D;
  }
  EXPECT_NEAR(spec_norm, std::sqrt(2.0 * d / D), 0.05);  // what the option's help says SPEC's scale is
  // The option reaches the run's options, and msae.json's schedule records it.
  run::Options o;
  o.set("init_encoder_norm", 0.1);
  const train::TrainOptions t = run::make_train_options(o, d, {D, 8, 64, 10});
  EXPECT_FLOAT_EQ(t.init_encoder_norm, 0.1f);
  EXPECT_FLOAT_EQ(run::schedule_json(t).at("init_encoder_norm").get<float>(), 0.1f);
}

// Resumable ground-truth runs keep the model they started on (run::pin_preset_model): the first call records
// it, rounding-sized differences (another CPU's orthogonalization) are put back, a larger one is refused
// without touching the record, and a run started before the record existed takes it from its truth file.
TEST(RunLayer, PinnedModelSurvivesAnotherCpusRounding) {
  const fs::path dir = fs::temp_directory_path() / ("msae-run-pin-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string pin = (dir / "model-seed0.safetensors").string();
  const synth::FeatureModel start = synth::make_preset("tree", 0);
  auto same = [](const synth::FeatureModel& a, const synth::FeatureModel& b) {
    return a.directions.data == b.directions.data && a.bias.data == b.bias.data;
  };
  synth::FeatureModel m = start;
  EXPECT_EQ(run::pin_preset_model(m, pin), 0);  // recorded
  ASSERT_TRUE(fs::exists(pin));
  EXPECT_EQ(run::pin_preset_model(m, pin), 0);  // the same model
  // Rounding-sized differences in three directions' coordinates and the bias: put back.
  m.directions.ptr()[0] += 1e-4f;
  m.directions.ptr()[77] -= 6e-5f;
  m.bias.ptr()[3] += 2e-4f;
  EXPECT_EQ(run::pin_preset_model(m, pin), 3);
  EXPECT_TRUE(same(m, start));
  // A larger difference is another model: refused, and the record stays.
  m.directions.ptr()[5] += 0.05f;
  try {
    run::pin_preset_model(m, pin);
    ADD_FAILURE() << "a different model was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("another model"), std::string::npos) << e.what();
  }
  synth::FeatureModel again = synth::make_preset("tree", 0);
  EXPECT_EQ(run::pin_preset_model(again, pin), 0);
  // Another preset's shapes: refused.
  synth::FeatureModel other = synth::make_preset("absorption", 0);
  EXPECT_THROW(run::pin_preset_model(other, pin), Error);
  // No record yet, but the truth file of an older run: the values come from it, and the record is written.
  const std::string truth = (dir / "truth.safetensors").string();
  fs::rename(pin, truth);
  synth::FeatureModel shifted = start;
  shifted.directions.ptr()[9] += 3e-4f;
  EXPECT_EQ(run::pin_preset_model(shifted, pin, truth), 1);
  EXPECT_TRUE(same(shifted, start));
  EXPECT_TRUE(fs::exists(pin));
  fs::remove_all(dir);
}

TEST(RunLayer, DataChangedUnderTheRunIsReportedAndTheStateIsKept) {
  const fs::path dir = fs::temp_directory_path() / ("msae-run-data-fault-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const int64_t N = 2000, d = 16;
  const std::vector<float> x = structured_rows(N, d, 4);
  const std::string data = (dir / "x.npy").string();
  for (const bool truncate : {true, false}) {
    SCOPED_TRACE(truncate ? "truncated" : "deleted");
    io::write_npy(data, x.data(), {N, d});
    run::Options o = small_options();
    o.set("data", data);
    const std::string out = (dir / (truncate ? "T" : "D")).string();
    o.set("out", out);
    run::Callbacks cb = quiet();
    cb.progress = [&](int64_t done, int64_t, const StepStats&, double) {
      if (done != 3) return;
      if (truncate)
        fs::resize_file(data, 128);  // the header only
      else
        fs::remove(data);
    };
    if (truncate) {
      std::string message;
      try {
        run::train(o, run::Inputs{}, cb);
      } catch (const Error& e) {
        message = e.what();
        EXPECT_EQ(e.kind(), ErrorKind::runtime);
      }
      EXPECT_NE(message.find(data + ": row "), std::string::npos) << message;
      EXPECT_NE(message.find("became shorter while it was being read"), std::string::npos) << message;
      EXPECT_NE(message.find("the run's last checkpoint is in " + out), std::string::npos) << message;
      EXPECT_TRUE(fs::exists(fs::path(out) / "checkpoints" / "latest"));
      const json m = json::parse(msae::test_util::slurp(fs::path(out) / "msae.json"));
      EXPECT_FALSE(m.at("training").at("completed").get<bool>());
    } else {
      const run::Result r = run::train(o, run::Inputs{}, cb);
      EXPECT_TRUE(r.completed);
      EXPECT_FALSE(r.evaluated);
      EXPECT_NE(r.eval_error.find("x.npy: no such file"), std::string::npos) << r.eval_error;
      EXPECT_TRUE(fs::exists(fs::path(out) / "sae_weights.safetensors"));
      const json m = json::parse(msae::test_util::slurp(fs::path(out) / "msae.json"));
      EXPECT_NE(m.at("final_evaluation_error").get<std::string>().find("no such file"), std::string::npos);
    }
  }
  fs::remove_all(dir);
}

// calibrate_threshold (issue 22): the exported threshold keeps exactly k latents per row on average on the
// evaluation rows, where a short run's EMA threshold keeps far more; msae.json records both thresholds and
// the quality check no longer blames the EMA. Off, the export is the EMA (the published recipe).
TEST(RunLayer, CalibratedThresholdGivesInferenceL0OfK) {
  const int64_t N = 1000, d = 16;
  const std::vector<float> x = structured_rows(N, d, 5);
  const run::Inputs in = array_inputs(x, d);
  const run::Result plain = run::train(small_options(), in, quiet());
  run::Options o = small_options();
  o.set("calibrate_threshold", true);
  const run::Result cal = run::train(o, in, quiet());
  ASSERT_TRUE(plain.evaluated && cal.evaluated);
  EXPECT_EQ(plain.params.W_dec.data, cal.params.W_dec.data) << "training is the same";
  EXPECT_GT(plain.eval.prefixes.back().l0, 1.5 * 4) << "30 steps: the EMA has not settled";
  EXPECT_NEAR(cal.eval.prefixes.back().l0, 4.0, 1e-9);
  const json& c = cal.msae_json.at("training").at("threshold_calibration");
  EXPECT_EQ(c.at("rows"), 100);
  EXPECT_FLOAT_EQ(c.at("ema_threshold").get<float>(), plain.params.threshold);
  EXPECT_FLOAT_EQ(c.at("calibrated_threshold").get<float>(), cal.params.threshold);
  EXPECT_FALSE(plain.msae_json.at("training").contains("threshold_calibration"));
  const std::string problems = cal.final_metrics.at("quality").at("problems").dump();
  EXPECT_EQ(problems.find("has not settled"), std::string::npos) << problems;
  EXPECT_NE(plain.final_metrics.at("quality").at("problems").dump().find("has not settled"), std::string::npos);
}

}  // namespace
}  // namespace msae
