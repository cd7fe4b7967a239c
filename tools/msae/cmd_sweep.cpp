// msae sweep: trains a grid of configurations one after another in this process, evaluates each, and
// appends one JSON line per finished run to DIR/results.jsonl. Each run's configuration is hashed to an
// id; runs whose id is already in results.jsonl are skipped, so a killed sweep resumes where it stopped.
// After the runs it writes the comparison tables DIR/table.md and DIR/table.csv (one row per
// configuration, mean and standard deviation over the seeds) and DIR/report.html (that table and bar charts
// with error bars, src/eval/report.cpp). Grid format: docs/cli.md "msae sweep".
// A run whose "data" is "preset:NAME" trains on that ground-truth preset's stream with the routine of
// `msae synth-bench` (preset_run.h) and is scored with the suite's ground-truth metrics.
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
#include "msae/sae_dir.h"
#include "msae/synth.h"
#include "msae/train.h"
#include "preset_run.h"
#include "progress.h"
#include "variant_flags.h"

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

// The keys a run configuration may hold: `msae train`'s flags without the dashes (plus "data").
const std::set<std::string>& known_keys() {
  static const std::set<std::string> keys = {
      "data", "bf16", "arch", "d-sae", "group-sizes", "k", "batch", "steps", "lr", "seed", "dead-after-batches",
      "aux-k", "aux-coef", "max-grad-norm", "encoder-bias", "engine", "eval-rows", "meta-steps",
      // variant_flags.h
      "recipe", "prefix-weights", "no-bdec-term", "stop-gradient-groups", "aux-detach", "group-k",
      "sampled-prefixes", "prefix-distribution", "pareto-power", "min-prefix", "reorder-every", "reorder-decay",
      "l1-coef", "l1-adapt-rate", "l1-warmup-steps", "threshold-rate", "threshold-start-step", "beta2",
      "lr-warmup-steps", "lr-decay-start", "bdec-median"};
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
    if (!known_keys().count(key)) usage_error("--set: unknown key '", key, "'; keys are msae train's flags without the dashes");
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
      if (!known_keys().count(key))
        fail(cat("unknown key '", key, "' in a run; keys are msae train's flags without the dashes (see docs/cli.md)"));
  return runs;
}

// A grid value of type T, or the fallback when the key is absent. Numbers go through io::json_* (type and
// range checked: nlohmann's get<int64_t>() of 1e30 is undefined behaviour, of 2.7 a silent 2).
template <class T>
T get(const json& r, const char* key, T fallback) {
  if (!r.contains(key)) return fallback;
  const json& v = r[key];
  const std::string what = cat("grid: key '", key, "'");
  try {
    if constexpr (std::is_same_v<T, bool> || std::is_same_v<T, std::string>)
      return v.get<T>();
    else if constexpr (std::is_same_v<T, uint64_t>)
      return io::json_uint64(v, what);
    else if constexpr (std::is_integral_v<T>)
      return static_cast<T>(io::json_int(v, what, std::numeric_limits<T>::min(), std::numeric_limits<T>::max()));
    else
      return io::json_float(v, what);
  } catch (const json::exception&) {
    usage_error(what, " has the wrong type (", io::json_excerpt(v), ")");
  } catch (const Error& e) {
    usage_error(e.what());
  }
}

std::string list_text(const json& r, const char* key) {
  if (!r.contains(key)) return {};
  if (r[key].is_string()) return r[key].get<std::string>();
  std::string s;
  for (const json& v : r[key]) s += (s.empty() ? "" : ",") + v.dump();
  return s;
}

std::vector<int64_t> parse_sizes(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::stoll(item));
  return out;
}

// The training options of run r, as `msae train` would build them from the same flags; `def` holds the
// data source's defaults (width, k, batch, steps) for the keys r does not set.
train::TrainOptions run_options(const json& r, const std::string& id, int64_t d, const PresetDefaults& def) {
  train::TrainOptions opt;
  SaeConfig& cfg = opt.sae;
  cfg.arch = parse_arch(get<std::string>(r, "arch", "matryoshka"));
  cfg.d_in = d;
  cfg.d_sae = get<int64_t>(r, "d-sae", def.d_sae);
  cfg.k = get<int64_t>(r, "k", def.k);
  if (r.contains("group-sizes")) cfg.group_sizes = parse_sizes(list_text(r, "group-sizes"));
  cfg.encoder_bias = get<bool>(r, "encoder-bias", false);
  cfg.dead_after_batches = get<int64_t>(r, "dead-after-batches", 20);
  cfg.aux_k = get<int64_t>(r, "aux-k", 512);
  cfg.aux_coef = get<float>(r, "aux-coef", 1.0f / 32.0f);
  cfg.finalize();
  opt.batch = get<int64_t>(r, "batch", def.batch);
  if (opt.batch <= 0) usage_error("grid: batch must be positive");
  opt.steps = get<int64_t>(r, "steps", def.steps);
  if (opt.steps <= 0) usage_error("grid: steps must be positive");
  opt.adam.lr = get<float>(r, "lr", 3e-4f);
  opt.max_grad_norm = get<float>(r, "max-grad-norm", 1e5f);
  opt.seed = get<uint64_t>(r, "seed", 0);
  opt.engine = get<std::string>(r, "engine", "sparse");
  json variant_keys = r;
  if (r.contains("prefix-weights")) variant_keys["prefix-weights"] = list_text(r, "prefix-weights");
  if (r.contains("group-k")) variant_keys["group-k"] = list_text(r, "group-k");
  VariantArgs va;
  try {
    va = variant_args_from_json(variant_keys);
  } catch (const json::exception& e) {
    usage_error("grid run ", id, ": a variant key has the wrong type (", e.what(), ")");
  } catch (const Error& e) {  // a number of the wrong kind or range (io::json_*)
    usage_error("grid run ", id, ": ", e.what());
  }
  apply_variant_args(va, [&](const std::string& flag) { return r.contains(flag.substr(2)); }, opt);
  return opt;
}

constexpr const char* kPresetPrefix = "preset:";

// A run on a ground-truth preset: the preset's defaults for what r does not set, `seed` seeding the
// feature model, the stream and the init exactly as `msae synth-bench --seeds` does; scored against
// the truth. Returns a null json when interrupted.
json run_preset(const json& r, const std::string& id, const std::string& preset) {
  const PresetDefaults def = preset_defaults(preset);  // usage error listing the presets if unknown
  const uint64_t seed = get<uint64_t>(r, "seed", 0);
  const synth::FeatureModel model = synth::make_preset(preset, seed);
  const train::TrainOptions opt = run_options(r, id, model.d, def);
  const int64_t eval_rows = get<int64_t>(r, "eval-rows", def.eval_rows);
  if (eval_rows <= 0) usage_error("grid: eval-rows must be positive");
  const PresetEvalRows held_out = preset_eval_rows(model, seed, eval_rows);
  PresetRunOptions ro;
  ro.meta_steps = get<int64_t>(r, "meta-steps", 0);
  ro.label = cat("run ", id);
  ro.stop = &g_stop;
  const PresetRun run = train_on_preset(model, opt, held_out, ro);
  if (run.interrupted) return json();
  json entries = preset_run_json(run, opt, false);
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

// One run: build the options as `msae train` would, train, evaluate. Returns the result line (null when
// interrupted).
json run_one(const json& r, const std::string& id) {
  const std::string data_path = get<std::string>(r, "data", "synthetic");
  if (data_path.rfind(kPresetPrefix, 0) == 0) return run_preset(r, id, data_path.substr(std::string(kPresetPrefix).size()));
  const bool synthetic = data_path == "synthetic";
  if (r.contains("meta-steps")) usage_error("grid run ", id, ": meta-steps needs ground truth (\"data\": \"preset:NAME\")");
  const uint64_t seed = get<uint64_t>(r, "seed", 0);
  const bool bf16 = get<bool>(r, "bf16", false);
  std::unique_ptr<data::ActivationSource> source =
      synthetic ? data::open_synthetic(seed) : data::open_npy(data_path, true, seed, bf16);
  const int64_t d = source->d();
  const int64_t rows_per_batch = get<int64_t>(r, "batch", synthetic ? data::SyntheticDefaults::batch : 4096);
  if (rows_per_batch <= 0) usage_error("grid: batch must be positive");
  const PresetDefaults def{synthetic ? data::SyntheticDefaults::d_sae : 8 * d, synthetic ? data::SyntheticDefaults::k : 32,
                           rows_per_batch,
                           synthetic ? data::SyntheticDefaults::steps
                                     : std::max<int64_t>(1, (source->rows() + rows_per_batch - 1) / rows_per_batch),
                           16384, 0};
  const train::TrainOptions opt = run_options(r, id, d, def);
  train::Trainer trainer(opt, SaeParams::init(d, opt.sae.d_sae, seed));
  std::vector<float> batch(opt.batch * d);
  Timer clock;
  double loss_tail = 0;
  int64_t tail_n = 0;
  for (int64_t s = 0; s < opt.steps; ++s) {
    if (g_stop) return json();
    source->next_batch(opt.batch, batch.data());
    const StepStats& st = trainer.step(batch.data());
    if (!std::isfinite(st.loss)) runtime_error("run ", id, ": the loss became ", st.loss, " at step ", s + 1);
    if (s >= opt.steps - std::max<int64_t>(1, opt.steps / 20)) {
      loss_tail += st.loss;
      ++tail_n;
    }
  }
  const double seconds = clock.seconds();
  std::unique_ptr<data::ActivationSource> eval_source =
      synthetic ? data::open_synthetic(seed + 1000003) : data::open_npy(data_path, false, 0, bf16);
  const int64_t eval_rows_cap = get<int64_t>(r, "eval-rows", 16384);
  const int64_t eval_rows = eval_source->rows() > 0 ? std::min(eval_source->rows(), eval_rows_cap) : eval_rows_cap;
  const eval::EvalReport report = eval::evaluate(opt.sae, trainer.params(), *eval_source, eval_rows);
  json metrics = eval::to_json(report);
  metrics.erase("latent_frequency");
  if (synthetic) {
    const synth::PlantedDictionary truth = synth::make_planted(synth::default_planted_config());
    const eval::RecoveryReport rec = eval::score_recovery(truth.directions, trainer.params().W_dec.ptr(), opt.sae.d_sae);
    metrics["recovery"] = {{"mean_max_cosine", rec.mean_max_cosine},
                           {"frac_recovered_cos_0.9", rec.frac_recovered},
                           {"mcc", rec.mcc}};
  }
  return {{"id", id},
          {"config", r},
          {"sae", saedir::config_json(opt.sae)},
          {"engine", opt.engine},
          {"steps", opt.steps},
          {"seconds", seconds},
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
  };
  std::vector<Row> rows;
};

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
  for (const std::string& key : order) {
    const auto& runs = groups[key];
    Summary::Row row;
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

// Writes table.md and table.csv: one row per configuration without its seed (mean, and "± std" over
// seeds where there are several), columns = the keys that vary across the grid, then the metrics.
void write_tables(const std::string& dir, const Summary& sum) {
  std::ostringstream md, csv;
  md << "| ";
  for (const std::string& k : sum.varying) md << k << " | ";
  md << "seeds | ";
  for (const std::string& m : sum.metrics) md << m << " | ";
  md << "\n|";
  for (size_t i = 0; i < sum.varying.size() + 1 + sum.metrics.size(); ++i) md << "---|";
  md << "\n";
  for (const std::string& k : sum.varying) csv << k << ",";
  csv << "seeds";
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
    md << row.seeds << " | ";
    csv << row.seeds;
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

// report.html: the comparison table (mean ± std over seeds) and one bar chart with +- 1 std whiskers
// per key metric, configurations along x (numbered as in the table); also writes overview.svg.
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
  for (const std::string& m : sum.metrics) header.push_back(m);
  std::vector<std::vector<std::string>> rows;
  for (size_t i = 0; i < sum.rows.size(); ++i) {
    const Summary::Row& row = sum.rows[i];
    std::vector<std::string> r = {cat("#", i + 1)};
    for (const std::string& k : sum.varying) r.push_back(config_value(row.config, k));
    r.push_back(std::to_string(row.seeds));
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
  app->add_option("--out", a->out, "Output directory (results.jsonl, table.md, table.csv, report.html)")->required();
  app->add_option("--threads", a->threads, "Threads (default: all cores)");
  app->add_flag("--dry-run", a->dry_run, "Print each run's id and configuration, train nothing");
  return [a]() { return run_sweep(*a); };
}

}  // namespace msae::cli
