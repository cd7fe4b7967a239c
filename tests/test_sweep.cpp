// `msae sweep` end to end (the binary), on the ground-truth presets: a grid with "data": "preset:tree"
// trains on the preset's stream and writes the suite's ground-truth metrics, a run equals the
// `msae synth-bench` run of the same arch/seed/steps, resuming skips finished runs, the HTML report and
// its error-bar plots are written, --set overrides the grid, and bad keys are usage errors. Plus the report writer's
// bar chart with error bars.
//
// Tolerances: none. The sweep and synth-bench call the same routine (run::train_on_preset, msae/run.h) with the
// same options and --threads 1, so every metric must be bit-identical; both are printed by nlohmann::json,
// which writes doubles with round-trip precision, so equal JSON values mean equal doubles.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "msae/report.h"
#include "cli_run.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using msae::test_util::Result;
using msae::test_util::run;
using msae::test_util::slurp;

std::vector<json> read_jsonl(const fs::path& p) {
  std::vector<json> out;
  std::istringstream in(slurp(p));
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

class Sweep : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("msae_sweep_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return (dir_ / name).string();
  }
  fs::path dir_;
};

// The ground-truth scalars both commands write, compared field by field.
const char* kGtScalars[] = {"f1",          "mcc",          "uniqueness",      "absorption_rate", "splitting",
                            "precision",   "recall",       "mean_max_cosine", "feature_f1_mean", "alive_latents",
                            "roots_prefix", "roots_in_first_prefix", "rows", "n_features", "d_sae"};

TEST_F(Sweep, PresetRunsWriteGroundTruthAndEqualSynthBench) {
  const int64_t steps = 150, eval_rows = 4096;
  const std::string grid = write("grid.json", R"({"base": {"data": "preset:tree", "steps": 150, "eval-rows": 4096},
      "axes": {"arch": ["matryoshka", "batchtopk"], "seed": [0, 1]}})");
  const std::string out = (dir_ / "sweep").string();
  Result r = run("sweep --grid " + grid + " --out " + out + " --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("4 trained now, 0 already done"), std::string::npos) << r.output;
  const std::vector<json> rows = read_jsonl(fs::path(out) / "results.jsonl");
  ASSERT_EQ(rows.size(), 4u);
  for (const json& row : rows) {
    EXPECT_EQ(row.at("preset"), "tree");
    EXPECT_EQ(row.at("steps"), steps);
    // The preset's defaults where the grid sets nothing: D = 20, k = 1, batch 256 (tree).
    EXPECT_EQ(row.at("sae").at("d_sae"), 20);
    EXPECT_EQ(row.at("sae").at("k"), 1);
    EXPECT_EQ(row.at("train").at("batch"), 256);
    const json& gt = row.at("metrics").at("ground_truth");
    for (const char* key : kGtScalars) EXPECT_TRUE(gt.contains(key)) << key;
    EXPECT_EQ(gt.at("rows"), eval_rows);
    EXPECT_EQ(gt.at("n_features"), 20);
    ASSERT_EQ(gt.at("absorption_by_level").size(), 1u);  // tree: one child depth
    EXPECT_TRUE(gt.contains("landing_by_depth"));
    EXPECT_GE(row.at("metrics").at("prefixes").size(), 1u);
    EXPECT_TRUE(row.at("metrics").contains("dead_fraction"));
  }
  const std::string table = slurp(fs::path(out) / "table.md");
  for (const char* col : {"| F1 |", "| MCC |", "| uniqueness |", "| absorption |", "| absorption d1 |", "| splitting |",
                          "| roots in 1st prefix |", "| EV |", "| FVU |", "| FVU p1 |", "| L0 |", "| dead % |"})
    EXPECT_NE(table.find(col), std::string::npos) << col << "\n" << table;
  const std::string html = slurp(fs::path(out) / "report.html");
  EXPECT_NE(html.find("<table>"), std::string::npos);
  EXPECT_NE(html.find("class=\"errorbar\""), std::string::npos);  // 2 seeds per configuration: whiskers
  EXPECT_TRUE(fs::exists(fs::path(out) / "overview.svg"));
  // The L0-vs-FVU frontier: every run a point in frontier.svg and report.html, and the frontier column of
  // table.csv counts each configuration's runs that report::pareto_frontier puts on it.
  const std::string fsvg = slurp(fs::path(out) / "frontier.svg");
  EXPECT_EQ(count(fsvg, "<circle"), 4u) << fsvg;
  EXPECT_EQ(count(fsvg, "class=\"frontier\""), 1u);
  EXPECT_NE(html.find("L0 vs FVU frontier"), std::string::npos);
  EXPECT_NE(table.find("| seeds | frontier |"), std::string::npos) << table;
  std::vector<double> l0, fvu;
  for (const json& row : rows) {
    l0.push_back(row.at("metrics").at("whole").at("l0").get<double>());
    fvu.push_back(row.at("metrics").at("whole").at("fvu").get<double>());
  }
  const std::vector<bool> on = msae::report::pareto_frontier(l0, fvu);
  std::map<std::string, int> expected;  // arch -> runs on the frontier
  for (size_t i = 0; i < rows.size(); ++i) expected[rows[i].at("config").at("arch").get<std::string>()] += on[i] ? 1 : 0;
  std::istringstream csv(slurp(fs::path(out) / "table.csv"));
  std::string line;
  std::getline(csv, line);
  EXPECT_EQ(line.rfind("arch,seeds,frontier,", 0), 0u) << line;
  int csv_rows = 0, total = 0;
  while (std::getline(csv, line)) {
    const std::string arch = line.substr(1, line.find('"', 1) - 1);
    const size_t a = line.find(',') + 1, b = line.find(',', a) + 1;
    EXPECT_EQ(std::stoi(line.substr(b)), expected.at(arch)) << line;
    total += expected.at(arch);
    ++csv_rows;
  }
  EXPECT_EQ(csv_rows, 2);
  EXPECT_GE(total, 1);  // some run is always on the frontier

  // synth-bench, same arch/seed/steps/eval rows: the same figures.
  const std::string sb = (dir_ / "bench").string();
  r = run("synth-bench --preset tree --archs matryoshka,batchtopk --seeds 1 --steps 150 --eval-rows 4096 --threads 1 --out " + sb);
  ASSERT_EQ(r.code, 0) << r.output;
  const json bench = json::parse(slurp(fs::path(sb) / "results.json"));
  int compared = 0;
  for (const json& b : bench.at("runs")) {
    const json* match = nullptr;
    for (const json& row : rows)
      if (row.at("config").at("arch") == b.at("arch") && row.at("config").at("seed") == b.at("seed")) match = &row;
    ASSERT_NE(match, nullptr) << b.at("arch");
    const json& gt = match->at("metrics").at("ground_truth");
    for (const char* key : kGtScalars) EXPECT_EQ(gt.at(key), b.at("ground_truth").at(key)) << b.at("arch") << " " << key;
    EXPECT_EQ(gt.at("absorption_by_level"), b.at("ground_truth").at("absorption_by_level"));
    EXPECT_EQ(gt.at("landing_by_depth"), b.at("ground_truth").at("landing_by_depth"));
    json ev = match->at("metrics");
    ev.erase("ground_truth");
    EXPECT_EQ(ev, b.at("eval")) << b.at("arch");
    EXPECT_EQ(match->at("train").at("curve_fvu"), b.at("train").at("curve_fvu"));
    ++compared;
  }
  EXPECT_EQ(compared, 2);
  // synth-bench's FVU-per-prefix plot, one seed: a marker per Matryoshka prefix, BatchTopK a reference line,
  // no whiskers and no "±".
  const std::string bench_html = slurp(fs::path(sb) / "report.html");
  size_t prefixes = 0;
  for (const json& b : bench.at("runs"))
    if (b.at("arch") == "matryoshka") prefixes = b.at("eval").at("prefixes").size();
  EXPECT_GE(prefixes, 2u);
  EXPECT_EQ(count(bench_html, "<title>matryoshka seed 1:"), prefixes);
  EXPECT_EQ(count(bench_html, "class=\"refline\""), 1u);
  EXPECT_EQ(count(bench_html, "class=\"errorbar\""), 0u);
  EXPECT_EQ(bench_html.find("±"), std::string::npos);
  EXPECT_EQ(r.output.find("±"), std::string::npos) << r.output;  // the printed table too

  // Resume: nothing left to train; the tables are rewritten from results.jsonl.
  r = run("sweep --grid " + grid + " --out " + out + " --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("0 trained now, 4 already done"), std::string::npos) << r.output;
  EXPECT_EQ(read_jsonl(fs::path(out) / "results.jsonl").size(), 4u);
}

TEST_F(Sweep, BadPresetKeysAreUsageErrors) {
  const std::string bad_preset = write("a.json", R"({"base": {"data": "preset:nope", "steps": 5}})");
  Result r = run("sweep --grid " + bad_preset + " --out " + (dir_ / "a").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("tree"), std::string::npos) << r.output;  // the message lists the presets
  const std::string meta = write("b.json", R"({"base": {"steps": 5, "meta-steps": 10}})");
  r = run("sweep --grid " + meta + " --out " + (dir_ / "b").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("meta-steps"), std::string::npos) << r.output;
  // Numbers are type- and range-checked (a float step count was truncated, 1e30 undefined behaviour).
  const std::pair<const char*, const char*> numbers[] = {
      {R"({"base": {"data": "preset:tree", "steps": 2.5}})", "--steps must be an integer"},
      {R"({"base": {"data": "preset:tree", "steps": 1e30}})", "--steps must be an integer"},
      {R"({"base": {"data": "preset:tree", "steps": 5, "sampled-prefixes": 1.5}})", "--sampled-prefixes must be an integer"},
      {R"({"base": {"data": "preset:tree", "steps": 5, "lr": 1e300}})", "--lr must be a finite number"},
  };
  for (const auto& [text, expected] : numbers) {
    r = run("sweep --grid " + write("n.json", text) + " --out " + (dir_ / "n").string());
    EXPECT_EQ(r.code, 2) << text << "\n" << r.output;
    EXPECT_NE(r.output.find(expected), std::string::npos) << r.output;
  }
}

TEST_F(Sweep, SetOverridesTheGridEverywhere) {
  const std::string grid = write("g.json", R"({"base": {"data": "preset:tree", "steps": 5},
      "axes": {"seed": [0, 1]}, "runs": [{}, {"steps": 7, "k": 2}]})");
  Result r = run("sweep --grid " + grid + " --out " + (dir_ / "o").string() +
                 " --dry-run --set steps=3 --set seed=[4] --set data=preset:synth-lite");
  ASSERT_EQ(r.code, 0) << r.output;
  std::vector<json> runs;
  std::istringstream in(r.output);
  std::string line;
  while (std::getline(in, line)) runs.push_back(json::parse(line.substr(line.find(' ') + 1)));
  ASSERT_EQ(runs.size(), 2u) << r.output;  // the seed axis is now [4]
  for (const json& c : runs) {
    EXPECT_EQ(c.at("steps"), 3);  // also over the run entry's own "steps"
    EXPECT_EQ(c.at("seed"), 4);
    EXPECT_EQ(c.at("data"), "preset:synth-lite");
  }
  EXPECT_EQ(runs[1].at("k"), 2);
  for (const char* bad : {"--set nokey=1", "--set steps", "--set =3"}) {
    r = run("sweep --grid " + grid + " --out " + (dir_ / "o").string() + " --dry-run " + bad);
    EXPECT_EQ(r.code, 2) << bad << "\n" << r.output;
    EXPECT_NE(r.output.find("--set"), std::string::npos) << r.output;
  }
}

TEST(Report, BarChartErrorBars) {
  msae::report::BarChart c{"t", "y", {"a", "b", "c"}, {{"s", {}, {1.0, 0.5, 0.25}}}};
  const std::string plain = msae::report::bar_svg(c);
  const std::string with = msae::report::bar_svg(c, {{0.5, 0.0, NAN}});
  EXPECT_EQ(count(plain, "class=\"errorbar\""), 0u);
  EXPECT_EQ(count(with, "class=\"errorbar\""), 1u);  // zero and NaN errors draw nothing
  // The axis reaches 1 + 0.5: with the whisker the ticks step by 0.5 up to 1.5; without, by 0.2 up to 1.
  EXPECT_NE(with.find(">1.5</text>"), std::string::npos) << with;
  EXPECT_EQ(plain.find(">1.5</text>"), std::string::npos) << plain;
  EXPECT_NE(with.find("1 ± 0.5</title>"), std::string::npos);
}

}  // namespace
