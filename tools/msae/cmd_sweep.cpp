// msae sweep: trains a grid of configurations one after another in this process, evaluates each, and
// appends one JSON line per finished run to DIR/results.jsonl. Each run's configuration is hashed to an
// id; runs whose id is already in results.jsonl are skipped, so a killed sweep resumes where it stopped.
// After the runs it writes the comparison tables DIR/table.md and DIR/table.csv (one row per
// configuration, mean and standard deviation over the seeds, and whether its runs are on the L0-vs-FVU Pareto
// frontier) and DIR/report.html (that table, the frontier plot (also DIR/frontier.svg) and bar charts with
// error bars, src/eval/report.cpp). Grid format: docs/cli.md "msae sweep".
// A run whose "data" is "preset:NAME" trains on that ground-truth preset's stream with the routine of
// `msae synth-bench` (run::train_on_preset, msae/run.h) and is scored with the suite's ground-truth metrics.
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <type_traits>

#include "commands.h"
#include "msae/eval.h"
#include "msae/io.h"
#include "msae/recovery.h"
#include "msae/report.h"
#include "msae/synth.h"
#include "msae/train.h"
#include "progress.h"
#include "msae/run.h"

namespace msae::cli {
namespace {

using nlohmann::json;

struct SweepArgs {
  std::string grid;
  std::vector<std::string> sets;  // --set KEY=VALUE, in order
  std::string out;
  int threads = 0;
  bool dry_run = false;
};

std::atomic<bool> g_stop{false};
extern "C" void on_sweep_signal(int) { g_stop = true; }

// A run configuration's keys are the option table's grid rows (msae/options.h), spelled as flags without
// the dashes ("d-sae") or as keys ("d_sae").
bool known_key(const std::string& key) {
  const run::OptionDef* row = run::find_option(key);
  return row && (row->scopes & run::kGrid);
}

std::string grid_keys() {
  std::string keys;
  for (const run::OptionDef& row : run::option_table())
    if (row.scopes & run::kGrid) keys += cat(keys.empty() ? "" : ", ", opt(row.key).substr(2));
  return keys;
}

// FNV-1a 64 of the canonical dump (nlohmann::json objects keep their keys sorted).
std::string run_id(const json& config) {
  const std::string dump = config.dump();
  const uint64_t h = fnv1a64(dump.data(), dump.size());
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// Expands the grid file into run configurations. A .jsonl file: one configuration object per line.
// A .json file: {"base": {...}, "axes": {"key": [v1, v2, ...], ...}, "runs": [{...}, ...]}: each entry of
// "runs" merged over the base (or the base alone when there is no "runs"), each crossed with the cartesian
// product of the axes (axes in key order, the last varying fastest).
// --set KEY=VALUE overrides the grid everywhere: VALUE is parsed as JSON (a bare word that is not JSON is
// a string). A list becomes the axis KEY (replacing an axis or base value of that name); any other value
// sets KEY in the base and in every entry of "runs", and removes an axis KEY.
void apply_sets(const std::vector<std::string>& sets, json& base, json& axes, json* runs) {
  for (const std::string& s : sets) {
    const size_t eq = s.find('=');
    if (eq == std::string::npos || eq == 0) usage_error("--set '", s, "': expected KEY=VALUE, e.g. --set steps=500");
    const std::string key = s.substr(0, eq), text = s.substr(eq + 1);
    if (!known_key(key)) usage_error("--set: unknown key '", key, "'; the keys are ", grid_keys());
    json value;
    try {
      value = json::parse(text);
    } catch (const json::exception&) {
      value = text;
    }
    if (value.is_array()) {
      if (value.empty()) usage_error("--set ", key, ": an axis needs at least one value");
      axes[key] = value;
      base.erase(key);
      if (runs)
        for (json& r : *runs) r.erase(key);
    } else {
      axes.erase(key);
      base[key] = value;
      if (runs)
        for (json& r : *runs) r[key] = value;
    }
  }
}

std::vector<json> expand_grid(const std::string& path, const std::vector<std::string>& sets) {
  const std::string text = io::read_text_file(path);
  std::vector<json> runs;
  auto fail = [&](const std::string& what) { usage_error("--grid ", path, ": ", what); };
  const bool jsonl = path.size() >= 6 && path.substr(path.size() - 6) == ".jsonl";
  if (jsonl && !sets.empty()) usage_error("--set works with .json grids (base + axes), not with .jsonl run lists");
  try {
    if (jsonl) {
      std::istringstream in(text);
      std::string line;
      int64_t n = 0;
      while (std::getline(in, line)) {
        ++n;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        json j = json::parse(line);
        if (!j.is_object()) fail(cat("line ", n, " is not a JSON object"));
        runs.push_back(j);
      }
    } else {
      const json g = json::parse(text);
      if (!g.is_object()) fail("expected a JSON object with \"base\" and \"axes\" (or a .jsonl file of runs)");
      for (const auto& [key, value] : g.items())
        if (key != "base" && key != "axes" && key != "runs")
          fail(cat("unknown top-level key '", key, "'; expected base, axes, runs"));
      json base = g.value("base", json::object());
      if (!base.is_object()) fail("\"base\" must be an object");
      json axes = g.value("axes", json::object());
      if (!axes.is_object()) fail("\"axes\" must be an object of lists");
      json run_list = g.value("runs", json());
      if (g.contains("runs") && (!run_list.is_array() || run_list.empty()))
        fail("\"runs\" must be a non-empty list of objects");
      for (const json& extra : run_list)
        if (!extra.is_object()) fail("every entry of \"runs\" must be an object");
      apply_sets(sets, base, axes, g.contains("runs") ? &run_list : nullptr);
      // templates: the base, or each entry of "runs" merged over the base; then each template crossed with the axes
      std::vector<json> product;
      if (g.contains("runs")) {
        for (const json& extra : run_list) {
          json r = base;
          r.update(extra);
          product.push_back(r);
        }
      } else {
        product.push_back(base);
      }
      for (const auto& [key, values] : axes.items()) {
        if (!values.is_array() || values.empty()) fail(cat("axis '", key, "' must be a non-empty list"));
        std::vector<json> next;
        for (const json& partial : product)
          for (const json& v : values) {
            json r = partial;
            r[key] = v;
            next.push_back(r);
          }
        product.swap(next);
      }
      runs = product;
    }
  } catch (const json::exception& e) {
    fail(cat("not valid JSON (", e.what(), ")"));
  }
  if (runs.empty()) fail("no runs");
  for (const json& r : runs)
    for (const auto& [key, value] : r.items())
      if (!known_key(key)) fail(cat("unknown key '", key, "' in a run; the keys are ", grid_keys()));
  return runs;
}

// Run r's options, checked against the table (errors name the run and the key). "data": "synthetic" is the
// embedded synthetic data (no data option).
run::Options run_options(const json& r, const std::string& id) {
  run::Options o;
  for (const auto& [key, value] : r.items()) {
    if (run::find_option(key) && std::string(run::find_option(key)->key) == "data" && value == "synthetic") continue;
    try {
      o.set(key, value);
    } catch (const Error& e) {
      usage_error("grid run ", id, ": ", e.what());
    }
  }
  return o;
}

constexpr const char* kPresetPrefix = "preset:";

// A run on a ground-truth preset: the preset's defaults for what r does not set, `seed` seeding the
// feature model, the stream and the init exactly as `msae synth-bench --seeds` does; scored against
// the truth. Returns a null json when interrupted.
json run_preset(const run::Options& o, const json& r, const std::string& id, const std::string& preset) {
  const run::PresetDefaults def = run::preset_defaults(preset);  // usage error listing the presets if unknown
  const uint64_t seed = static_cast<uint64_t>(o.integer("seed"));
  const synth::FeatureModel model = synth::make_preset(preset, seed);
  run::Options po = o;
  po.erase("data");
  const train::TrainOptions opt = run::make_train_options(po, model.d, {def.d_sae, def.k, def.batch, def.steps});
  const int64_t eval_rows = o.given("eval_rows") ? o.integer("eval_rows") : def.eval_rows;
  const run::PresetEvalRows held_out = run::preset_eval_rows(model, seed, eval_rows);
  run::PresetRunOptions ro;
  ro.meta_steps = o.integer("meta_steps");
  ro.label = cat("run ", id);
  ro.stop = &g_stop;
  const run::PresetRun pr = run::train_on_preset(model, opt, held_out, ro);
  if (pr.interrupted) return json();
  json entries = run::preset_run_json(pr, opt, false);
  json metrics = entries["eval"];
  metrics["ground_truth"] = entries["ground_truth"];
  if (!entries["meta_sae"].is_null()) metrics["meta_sae"] = entries["meta_sae"];
  return {{"id", id},
          {"config", r},
          {"preset", preset},
          {"sae", saedir::config_json(opt.sae)},
          {"engine", opt.engine},
          {"steps", opt.steps},
          {"seconds", entries["train"]["seconds"]},
          {"train", entries["train"]},
          {"metrics", metrics}};
}

// One run through the run layer (the same as `msae train` with the same options, without an output
// directory), then its evaluation. Returns the result line (null when interrupted).
json run_one(const json& r, const std::string& id) {
  run::Options o = run_options(r, id);
  const std::string data_spec = o.text("data");
  if (data_spec.rfind(kPresetPrefix, 0) == 0) return run_preset(o, r, id, data_spec.substr(std::string(kPresetPrefix).size()));
  if (o.given("meta_steps")) usage_error("grid run ", id, ": meta-steps needs ground truth (\"data\": \"preset:NAME\")");
  double loss_tail = 0;
  int64_t tail_n = 0;
  run::Callbacks cb;
  cb.stop = [] { return g_stop.load(); };
  cb.info = [](const std::string& line) { log_debug(line); };
  cb.progress = [&](int64_t done, int64_t steps, const StepStats& st, double) {
    if (done - 1 >= steps - std::max<int64_t>(1, steps / 20)) {
      loss_tail += st.loss;
      ++tail_n;
    }
  };
  run::Result res;
  try {
    res = run::train(o, {}, cb);
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::usage) usage_error("grid run ", id, ": ", e.what());
    runtime_error("run ", id, ": ", e.what());
  }
  if (!res.completed) return json();
  json metrics = res.final_metrics;
  metrics.erase("latent_frequency");
  return {{"id", id},
          {"config", r},
          {"sae", saedir::config_json(res.cfg)},
          {"engine", res.msae_json["training"]["engine"]},
          {"steps", res.steps},
          {"seconds", res.seconds},
          {"train_loss_last_5pct", loss_tail / std::max<int64_t>(tail_n, 1)},
          {"metrics", metrics}};
}

double number_at(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}

// The numbers a table row shows for a run on a ground-truth preset: the suite's metrics (docs/synth-bench.md).
std::vector<std::pair<std::string, double>> preset_row_metrics(const json& res) {
  std::vector<std::pair<std::string, double>> m;
  const json& met = res["metrics"];
  const json& gt = met["ground_truth"];
  m.push_back({"F1", number_at(gt, "f1")});
  m.push_back({"MCC", number_at(gt, "mcc")});
  m.push_back({"uniqueness", number_at(gt, "uniqueness")});
  m.push_back({"absorption", number_at(gt, "absorption_rate")});
  if (gt.contains("absorption_by_level"))
    for (const json& level : gt["absorption_by_level"])
      m.push_back({cat("absorption d", level.value("child_depth", 0)), number_at(level, "rate")});
  m.push_back({"splitting", number_at(gt, "splitting")});
  m.push_back({"roots in 1st prefix", number_at(gt, "roots_in_first_prefix")});
  m.push_back({"mean max cos", number_at(gt, "mean_max_cosine")});
  m.push_back({"EV", number_at(met["whole"], "explained_variance")});
  m.push_back({"FVU", number_at(met["whole"], "fvu")});
  if (met.contains("prefixes") && met["prefixes"].is_array())
    for (size_t g = 0; g + 1 < met["prefixes"].size(); ++g)
      m.push_back({cat("FVU p", g + 1), number_at(met["prefixes"][g], "fvu")});
  m.push_back({"L0", number_at(met["whole"], "l0")});
  m.push_back({"dead %", 100.0 * number_at(met, "dead_fraction")});
  if (met.contains("meta_sae")) m.push_back({"meta-SAE EV", number_at(met["meta_sae"], "explained_variance")});
  m.push_back({"seconds", number_at(res, "seconds")});
  return m;
}

// The numbers each table row shows, from one result line.
std::vector<std::pair<std::string, double>> row_metrics(const json& res) {
  if (res.contains("preset")) return preset_row_metrics(res);
  std::vector<std::pair<std::string, double>> m;
  const json& met = res["metrics"];
  auto whole = [&](const char* key) -> double {
    if (met.contains("whole") && met["whole"].contains(key)) return met["whole"][key].get<double>();
    return NAN;
  };
  m.push_back({"FVU", whole("fvu")});
  if (met.contains("prefixes") && met["prefixes"].is_array() && !met["prefixes"].empty())
    m.push_back({"FVU prefix 1", met["prefixes"][0].value("fvu", NAN)});
  m.push_back({"L0", whole("l0")});
  m.push_back({"dead %", 100.0 * met.value("dead_fraction", NAN)});
  if (met.contains("recovery")) {
    m.push_back({"recovered % (cos>=0.9)", 100.0 * met["recovery"].value("frac_recovered_cos_0.9", NAN)});
    m.push_back({"mean max cos", met["recovery"].value("mean_max_cosine", NAN)});
    m.push_back({"MCC", met["recovery"].value("mcc", NAN)});
  }
  m.push_back({"seconds", res.value("seconds", NAN)});
  return m;
}

std::string num(double v, const char* f = "%.4g") {
  if (std::isnan(v)) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// The results pooled per configuration (the run's config without its seed), in grid order.
struct Summary {
  std::vector<std::string> varying;   // config keys (not "seed") whose value differs across the runs
  std::vector<std::string> metrics;   // column names, in row_metrics order
  struct Row {
    json config;                      // the first run's config
    int64_t seeds = 0;
    std::vector<double> mean, sd;     // per metric; sd NaN with fewer than 2 values, mean NaN with none
    std::vector<int64_t> n;           // values per metric
    int64_t frontier = 0;             // runs (seeds) on the L0-vs-FVU Pareto frontier
  };
  std::vector<Row> rows;
  // Per run, in the order of the results: its whole-SAE L0 and FVU (NaN when it has none), whether it is
  // on the Pareto frontier across all runs (report::pareto_frontier), and its row.
  std::vector<double> run_l0, run_fvu;
  std::vector<bool> run_frontier;
  std::vector<size_t> run_row;
};

// A run's figure named `name` in its table row (row_metrics); NaN when it has none.
double metric_of(const json& res, const std::string& name) {
  for (const auto& [m, v] : row_metrics(res))
    if (m == name) return v;
  return NAN;
}

std::string config_value(const json& c, const std::string& k) {
  return c.contains(k) ? (c[k].is_string() ? c[k].get<std::string>() : c[k].dump()) : "-";
}

Summary summarize(const std::vector<json>& results) {
  Summary sum;
  std::set<std::string> keys;
  for (const json& r : results)
    for (const auto& [k, v] : r["config"].items()) keys.insert(k);
  for (const std::string& k : keys) {
    if (k == "seed") continue;
    std::set<std::string> values;
    for (const json& r : results) values.insert(r["config"].contains(k) ? r["config"][k].dump() : "-");
    if (values.size() > 1) sum.varying.push_back(k);
  }
  std::map<std::string, std::vector<const json*>> groups;  // config without seed -> runs
  std::vector<std::string> order;
  for (const json& r : results) {
    json c = r["config"];
    c.erase("seed");
    const std::string key = c.dump();
    if (!groups.count(key)) order.push_back(key);
    groups[key].push_back(&r);
  }
  // The union of the runs' metric names; a name first seen in a later run goes right after the name
  // that precedes it there (so "FVU p6" of an 8-group run lands after "FVU p5", not at the end).
  for (const json& r : results) {
    size_t pos = 0;
    for (const auto& [name, v] : row_metrics(r)) {
      auto it = std::find(sum.metrics.begin(), sum.metrics.end(), name);
      if (it == sum.metrics.end()) it = sum.metrics.insert(sum.metrics.begin() + static_cast<std::ptrdiff_t>(pos), name);
      pos = static_cast<size_t>(it - sum.metrics.begin()) + 1;
    }
  }
  for (const json& r : results) {
    sum.run_l0.push_back(metric_of(r, "L0"));
    sum.run_fvu.push_back(metric_of(r, "FVU"));
  }
  sum.run_frontier = report::pareto_frontier(sum.run_l0, sum.run_fvu);
  sum.run_row.resize(results.size());
  for (const std::string& key : order) {
    const auto& runs = groups[key];
    Summary::Row row;
    for (const json* r : runs) {
      const size_t i = static_cast<size_t>(r - results.data());
      sum.run_row[i] = sum.rows.size();
      if (sum.run_frontier[i]) ++row.frontier;
    }
    row.config = (*runs[0])["config"];
    row.seeds = static_cast<int64_t>(runs.size());
    for (const std::string& m : sum.metrics) {
      std::vector<double> vals;
      for (const json* r : runs)
        for (const auto& [name, v] : row_metrics(*r))
          if (name == m && !std::isnan(v)) vals.push_back(v);
      double mean = NAN, sd = NAN;
      if (!vals.empty()) {
        mean = 0;
        for (double v : vals) mean += v;
        mean /= static_cast<double>(vals.size());
      }
      if (vals.size() > 1) {
        double sq = 0;
        for (double v : vals) sq += (v - mean) * (v - mean);
        sd = std::sqrt(sq / static_cast<double>(vals.size() - 1));
      }
      row.mean.push_back(mean);
      row.sd.push_back(sd);
      row.n.push_back(static_cast<int64_t>(vals.size()));
    }
    sum.rows.push_back(std::move(row));
  }
  return sum;
}

// The frontier column of table.md: "yes" when every run (seed) of the row is on the L0-vs-FVU Pareto
// frontier, "no" when none is, else "K of N".
std::string frontier_text(const Summary::Row& row) {
  if (row.frontier == 0) return "no";
  if (row.frontier == row.seeds) return "yes";
  return cat(row.frontier, " of ", row.seeds);
}

// Writes table.md and table.csv: one row per configuration without its seed (mean, and "± std" over
// seeds where there are several), columns = the keys that vary across the grid, the seeds, the frontier
// column (frontier_text; table.csv: the number of the row's runs on the frontier), then the metrics.
void write_tables(const std::string& dir, const Summary& sum) {
  std::ostringstream md, csv;
  md << "| ";
  for (const std::string& k : sum.varying) md << k << " | ";
  md << "seeds | frontier | ";
  for (const std::string& m : sum.metrics) md << m << " | ";
  md << "\n|";
  for (size_t i = 0; i < sum.varying.size() + 2 + sum.metrics.size(); ++i) md << "---|";
  md << "\n";
  for (const std::string& k : sum.varying) csv << k << ",";
  csv << "seeds,frontier";
  for (const std::string& m : sum.metrics) csv << "," << m << "," << m << " std";
  csv << "\n";
  for (const Summary::Row& row : sum.rows) {
    md << "| ";
    for (const std::string& k : sum.varying) {
      const std::string v = config_value(row.config, k);
      md << v << " | ";
      std::string quoted;
      for (char ch : v) quoted += ch == '"' ? std::string("\"\"") : std::string(1, ch);
      csv << "\"" << quoted << "\",";
    }
    md << row.seeds << " | " << frontier_text(row) << " | ";
    csv << row.seeds << "," << row.frontier;
    for (size_t m = 0; m < sum.metrics.size(); ++m) {
      md << num(row.mean[m]) << (row.n[m] > 1 ? " ± " + num(row.sd[m], "%.2g") : "") << " | ";
      csv << "," << num(row.mean[m], "%.6g") << "," << num(row.sd[m], "%.6g");
    }
    md << "\n";
    csv << "\n";
  }
  io::write_text_file_atomic(dir + "/table.md", md.str());
  io::write_text_file_atomic(dir + "/table.csv", csv.str());
}

// The metrics drawn as bar charts in report.html, in this order, where the runs have them.
const std::vector<std::string>& plotted_metrics() {
  static const std::vector<std::string> names = {
      "F1", "MCC", "uniqueness", "absorption", "splitting", "roots in 1st prefix", "EV", "FVU", "FVU p1",
      "FVU prefix 1", "L0", "dead %", "meta-SAE EV", "recovered % (cos>=0.9)", "mean max cos"};
  return names;
}
// The ground-truth metrics that share the [0, 1] scale, drawn together in overview.svg, with the short
// category labels that fit under their bars.
const std::vector<std::pair<std::string, std::string>>& overview_metrics() {
  static const std::vector<std::pair<std::string, std::string>> names = {
      {"F1", "F1"},         {"MCC", "MCC"},          {"uniqueness", "unique"},
      {"absorption", "absorb"}, {"roots in 1st prefix", "roots p1"}, {"EV", "EV"}};
  return names;
}

// overview.svg: the [0, 1] ground-truth metrics (categories) for every configuration (series, named
// "#i"), mean with +- 1 std whiskers over seeds. Empty when the runs have none of those metrics.
std::string overview_svg(const Summary& sum, const std::string& title) {
  report::BarChart chart{title, "mean ± std over seeds", {}, {}};
  std::vector<size_t> cols;
  for (const auto& [m, label] : overview_metrics()) {
    auto it = std::find(sum.metrics.begin(), sum.metrics.end(), m);
    if (it == sum.metrics.end()) continue;
    cols.push_back(static_cast<size_t>(it - sum.metrics.begin()));
    chart.categories.push_back(label);
  }
  if (cols.empty()) return {};
  std::vector<std::vector<double>> errors;
  for (size_t i = 0; i < sum.rows.size(); ++i) {
    report::Series s{cat("#", i + 1), {}, {}};
    std::vector<double> e;
    for (size_t c : cols) {
      s.y.push_back(sum.rows[i].mean[c]);
      e.push_back(sum.rows[i].sd[c]);
    }
    chart.series.push_back(s);
    errors.push_back(e);
  }
  return report::bar_svg(chart, errors);
}

// frontier.svg: every run's whole-SAE L0 (x) and FVU (y), one colour per configuration ("#i"), and the Pareto
// frontier across the runs as a line. Empty when no run has both figures.
std::string frontier_svg(const Summary& sum, const std::string& title) {
  std::vector<report::Series> groups;
  for (size_t i = 0; i < sum.rows.size(); ++i) groups.push_back({cat("#", i + 1), {}, {}});
  bool any = false;
  for (size_t i = 0; i < sum.run_row.size(); ++i) {
    if (!std::isfinite(sum.run_l0[i]) || !std::isfinite(sum.run_fvu[i])) continue;
    groups[sum.run_row[i]].x.push_back(sum.run_l0[i]);
    groups[sum.run_row[i]].y.push_back(sum.run_fvu[i]);
    any = true;
  }
  return any ? report::frontier_svg(title, "L0 (active latents per row, held-out)", "FVU (held-out)", groups) : std::string();
}

// report.html: the comparison table (mean ± std over seeds) and one bar chart with +- 1 std whiskers
// per key metric, configurations along x (numbered as in the table); also writes overview.svg and frontier.svg.
void write_report(const std::string& dir, const std::string& grid, const Summary& sum, size_t n_runs) {
  report::Page page("msae sweep: " + grid);
  std::set<std::string> data;
  for (const Summary::Row& row : sum.rows) data.insert(config_value(row.config, "data"));
  std::string sources;
  for (const std::string& d : data) sources += (sources.empty() ? "" : ", ") + (d == "-" ? std::string("synthetic") : d);
  page.paragraph(cat(n_runs, " runs, ", sum.rows.size(), " configurations, data: ", sources,
                     ". Each row pools a configuration's seeds: mean ± sample standard deviation. Ground-truth metrics "
                     "(preset: data) are defined in docs/synth-bench.md; whiskers are ± 1 std. Overview labels: unique = "
                     "uniqueness, absorb = absorption, roots p1 = roots in 1st prefix."));
  page.heading("Comparison (mean ± std over seeds)");
  std::vector<std::string> header = {"#"};
  for (const std::string& k : sum.varying) header.push_back(k);
  header.push_back("seeds");
  header.push_back("frontier");
  for (const std::string& m : sum.metrics) header.push_back(m);
  std::vector<std::vector<std::string>> rows;
  for (size_t i = 0; i < sum.rows.size(); ++i) {
    const Summary::Row& row = sum.rows[i];
    std::vector<std::string> r = {cat("#", i + 1)};
    for (const std::string& k : sum.varying) r.push_back(config_value(row.config, k));
    r.push_back(std::to_string(row.seeds));
    r.push_back(frontier_text(row));
    for (size_t m = 0; m < sum.metrics.size(); ++m)
      r.push_back(num(row.mean[m]) + (row.n[m] > 1 ? " ± " + num(row.sd[m], "%.2g") : ""));
    rows.push_back(r);
  }
  page.raw("<div style=\"overflow-x:auto\">\n" + report::table_html(header, rows) + "</div>\n");
  const std::string grid_name = grid.substr(grid.find_last_of('/') == std::string::npos ? 0 : grid.find_last_of('/') + 1);
  const std::string overview = overview_svg(sum, cat(grid_name, " on ", sources, " (mean ± std)"));
  if (!overview.empty()) {
    page.heading("Overview");
    page.raw(overview);
    io::write_text_file_atomic(dir + "/overview.svg", overview);
  }
  const std::string frontier = frontier_svg(sum, cat(grid_name, ": L0 vs FVU, every run"));
  if (!frontier.empty()) {
    page.heading("L0 vs FVU frontier");
    page.paragraph("Every run (seed) is a point, coloured by its configuration (#i as in the table). The line joins the "
                   "runs on the Pareto frontier: no other run has an L0 and an FVU at least as low, one of them lower "
                   "(the table's frontier column). Also in frontier.svg.");
    page.raw(frontier);
    io::write_text_file_atomic(dir + "/frontier.svg", frontier);
  }
  page.heading("Key metrics per configuration");
  std::string plots;
  for (const std::string& m : plotted_metrics()) {
    auto it = std::find(sum.metrics.begin(), sum.metrics.end(), m);
    if (it == sum.metrics.end()) continue;
    const size_t c = static_cast<size_t>(it - sum.metrics.begin());
    report::BarChart chart{m, m, {}, {report::Series{"mean ± std", {}, {}}}};
    std::vector<double> e;
    for (size_t i = 0; i < sum.rows.size(); ++i) {
      chart.categories.push_back(cat("#", i + 1));
      chart.series[0].y.push_back(sum.rows[i].mean[c]);
      e.push_back(sum.rows[i].sd[c]);
    }
    plots += report::bar_svg(chart, {e});
  }
  page.raw(plots);
  page.write(dir + "/report.html");
}

int run_sweep(const SweepArgs& a) {
  set_num_threads(a.threads);
  kernels::set_blas_threads(num_threads());
  const std::vector<json> runs = expand_grid(a.grid, a.sets);
  std::vector<std::string> ids;
  for (const json& r : runs) ids.push_back(run_id(r));
  if (a.dry_run) {
    for (size_t i = 0; i < runs.size(); ++i) std::printf("%s %s\n", ids[i].c_str(), runs[i].dump().c_str());
    return 0;
  }
  std::string dir = a.out;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  io::create_directories(dir);
  const std::string results_path = dir + "/results.jsonl";
  std::map<std::string, json> done;
  if (io::path_exists(results_path)) {
    std::istringstream in(io::read_text_file(results_path));
    std::string line;
    int64_t n = 0;
    while (std::getline(in, line)) {
      ++n;
      if (line.empty()) continue;
      try {
        json j = json::parse(line);
        done[j.at("id").get<std::string>()] = j;
      } catch (const json::exception&) {
        // a line cut by a kill: the run is redone
        log_warn(cat(results_path, ": line ", n, " is not a complete result; its run will be redone"));
      }
    }
  }
  std::signal(SIGINT, on_sweep_signal);
  std::signal(SIGTERM, on_sweep_signal);
  std::ofstream out(results_path, std::ios::app);
  if (!out) runtime_error("cannot append to ", results_path);
  int64_t skipped = 0, trained = 0;
  for (size_t i = 0; i < runs.size() && !g_stop; ++i) {
    if (done.count(ids[i])) {
      ++skipped;
      continue;
    }
    log_info(cat("run ", i + 1, "/", runs.size(), " [", ids[i], "] ", runs[i].dump()));
    json res = run_one(runs[i], ids[i]);
    if (res.is_null()) break;  // interrupted mid-run: not recorded
    out << res.dump() << "\n";
    out.flush();
    done[ids[i]] = res;
    ++trained;
    const auto m = row_metrics(res);
    std::string line;
    for (const auto& [name, v] : m) line += cat(name, " ", num(v), "  ");
    log_info(cat("  ", line));
  }
  out.close();
  std::vector<json> results;  // in grid order, only this grid's runs
  for (const std::string& id : ids)
    if (done.count(id)) results.push_back(done[id]);
  if (!results.empty()) {
    const Summary sum = summarize(results);
    write_tables(dir, sum);
    write_report(dir, a.grid, sum, results.size());
  }
  std::printf("msae sweep: %lld runs in the grid, %lld trained now, %lld already done%s\n",
              static_cast<long long>(runs.size()), static_cast<long long>(trained), static_cast<long long>(skipped),
              g_stop ? " (interrupted; run again to resume)" : "");
  std::printf("results: %s\ntables: %s/table.md, %s/table.csv\nreport: %s/report.html\n", results_path.c_str(),
              dir.c_str(), dir.c_str(), dir.c_str());
  if (!results.empty()) std::fputs(io::read_text_file(dir + "/table.md").c_str(), stdout);
  return g_stop ? 130 : 0;
}

}  // namespace

Action add_sweep_command(CLI::App& root) {
  auto a = std::make_shared<SweepArgs>();
  CLI::App* app = root.add_subcommand("sweep", "Train and evaluate a grid of configurations (resumable)");
  app->add_option("--grid", a->grid, "Grid file: .json (base + axes + runs) or .jsonl (one run per line)")->required();
  app->add_option("--set", a->sets,
                  "KEY=VALUE (repeatable): override a grid key everywhere; a JSON list makes KEY an axis "
                  "(e.g. --set data=preset:synth-lite --set seed=[0,1,2] --set steps=500)");
  app->add_option("--out", a->out, "Output directory (results.jsonl, table.md, table.csv, report.html, frontier.svg, overview.svg)")->required();
  app->add_option("--threads", a->threads, "Threads (default: all cores)");
  app->add_flag("--dry-run", a->dry_run, "Print each run's id and configuration, train nothing");
  return [a]() { return run_sweep(*a); };
}

}  // namespace msae::cli
