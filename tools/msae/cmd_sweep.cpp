// msae sweep: trains a grid of configurations one after another in this process, evaluates each, and
// appends one JSON line per finished run to DIR/results.jsonl. Each run's configuration is hashed to an
// id; runs whose id is already in results.jsonl are skipped, so a killed sweep resumes where it stopped.
// After the runs it writes the comparison tables DIR/table.md and DIR/table.csv (one row per
// configuration, mean and standard deviation over the seeds). Grid format: docs/cli.md "msae sweep".
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "commands.h"
#include "msae/eval.h"
#include "msae/io.h"
#include "msae/recovery.h"
#include "msae/synth.h"
#include "msae/train.h"
#include "progress.h"
#include "variant_flags.h"

namespace msae::cli {
namespace {

using nlohmann::json;

struct SweepArgs {
  std::string grid;
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
      "aux-k", "aux-coef", "max-grad-norm", "encoder-bias", "engine", "eval-rows",
      // variant_flags.h
      "recipe", "prefix-weights", "no-bdec-term", "stop-gradient-groups", "aux-detach", "group-k",
      "sampled-prefixes", "prefix-distribution", "pareto-power", "min-prefix", "reorder-every", "reorder-decay",
      "l1-coef", "l1-adapt-rate", "l1-warmup-steps", "threshold-rate", "threshold-start-step", "beta2",
      "lr-warmup-steps", "lr-decay-start", "bdec-median"};
  return keys;
}

// FNV-1a 64 of the canonical dump (nlohmann::json objects keep their keys sorted).
std::string run_id(const json& config) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : config.dump()) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// Expands the grid file into run configurations. A .jsonl file: one configuration object per line.
// A .json file: {"base": {...}, "axes": {"key": [v1, v2, ...], ...}, "runs": [{...}, ...]}: each entry of
// "runs" merged over the base (or the base alone when there is no "runs"), each crossed with the cartesian
// product of the axes (axes in key order, the last varying fastest).
std::vector<json> expand_grid(const std::string& path) {
  const std::string text = io::read_text_file(path);
  std::vector<json> runs;
  auto fail = [&](const std::string& what) { usage_error("--grid ", path, ": ", what); };
  const bool jsonl = path.size() >= 6 && path.substr(path.size() - 6) == ".jsonl";
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
      const json base = g.value("base", json::object());
      if (!base.is_object()) fail("\"base\" must be an object");
      const json axes = g.value("axes", json::object());
      if (!axes.is_object()) fail("\"axes\" must be an object of lists");
      // templates: the base, or each entry of "runs" merged over the base; then each template crossed with the axes
      std::vector<json> product;
      if (g.contains("runs")) {
        if (!g["runs"].is_array() || g["runs"].empty()) fail("\"runs\" must be a non-empty list of objects");
        for (const json& extra : g["runs"]) {
          if (!extra.is_object()) fail("every entry of \"runs\" must be an object");
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

template <class T>
T get(const json& r, const char* key, T fallback) {
  try {
    return r.contains(key) ? r[key].get<T>() : fallback;
  } catch (const json::exception&) {
    usage_error("grid: key '", key, "' has the wrong type (", r[key].dump(), ")");
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

// One run: build the options as `msae train` would, train, evaluate. Returns the result line.
json run_one(const json& r, const std::string& id) {
  const std::string data_path = get<std::string>(r, "data", "synthetic");
  const bool synthetic = data_path == "synthetic";
  const uint64_t seed = get<uint64_t>(r, "seed", 0);
  const bool bf16 = get<bool>(r, "bf16", false);
  std::unique_ptr<data::ActivationSource> source =
      synthetic ? data::open_synthetic(seed) : data::open_npy(data_path, true, seed, bf16);
  const int64_t d = source->d();
  train::TrainOptions opt;
  SaeConfig& cfg = opt.sae;
  cfg.arch = parse_arch(get<std::string>(r, "arch", "matryoshka"));
  cfg.d_in = d;
  cfg.d_sae = get<int64_t>(r, "d-sae", synthetic ? data::SyntheticDefaults::d_sae : 8 * d);
  cfg.k = get<int64_t>(r, "k", synthetic ? data::SyntheticDefaults::k : 32);
  if (r.contains("group-sizes")) cfg.group_sizes = parse_sizes(list_text(r, "group-sizes"));
  cfg.encoder_bias = get<bool>(r, "encoder-bias", false);
  cfg.dead_after_batches = get<int64_t>(r, "dead-after-batches", 20);
  cfg.aux_k = get<int64_t>(r, "aux-k", 512);
  cfg.aux_coef = get<float>(r, "aux-coef", 1.0f / 32.0f);
  cfg.finalize();
  opt.batch = get<int64_t>(r, "batch", synthetic ? data::SyntheticDefaults::batch : 4096);
  if (opt.batch <= 0) usage_error("grid: batch must be positive");
  opt.steps = get<int64_t>(r, "steps", synthetic ? data::SyntheticDefaults::steps
                                                  : std::max<int64_t>(1, (source->rows() + opt.batch - 1) / opt.batch));
  if (opt.steps <= 0) usage_error("grid: steps must be positive");
  opt.adam.lr = get<float>(r, "lr", 3e-4f);
  opt.max_grad_norm = get<float>(r, "max-grad-norm", 1e5f);
  opt.seed = seed;
  opt.engine = get<std::string>(r, "engine", "sparse");
  json variant_keys = r;
  if (r.contains("prefix-weights")) variant_keys["prefix-weights"] = list_text(r, "prefix-weights");
  if (r.contains("group-k")) variant_keys["group-k"] = list_text(r, "group-k");
  VariantArgs va;
  try {
    va = variant_args_from_json(variant_keys);
  } catch (const json::exception& e) {
    usage_error("grid run ", id, ": a variant key has the wrong type (", e.what(), ")");
  }
  apply_variant_args(va, [&](const std::string& flag) { return r.contains(flag.substr(2)); }, opt);

  train::Trainer trainer(opt, SaeParams::init(d, cfg.d_sae, seed));
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
          {"sae", train::config_json(opt.sae)},
          {"engine", opt.engine},
          {"steps", opt.steps},
          {"seconds", seconds},
          {"train_loss_last_5pct", loss_tail / std::max<int64_t>(tail_n, 1)},
          {"metrics", metrics}};
}

// The numbers each table row shows, from one result line.
std::vector<std::pair<std::string, double>> row_metrics(const json& res) {
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

// Writes table.md and table.csv: one row per configuration without its seed (mean, and "± std" over
// seeds where there are several), columns = the keys that vary across the grid, then the metrics.
// (The HTML report with plots is the benchmark suite's report writer; this writes the tables it reads.)
void write_tables(const std::string& dir, const std::vector<json>& results) {
  std::set<std::string> keys;
  for (const json& r : results)
    for (const auto& [k, v] : r["config"].items()) keys.insert(k);
  std::vector<std::string> varying;
  for (const std::string& k : keys) {
    if (k == "seed") continue;
    std::set<std::string> values;
    for (const json& r : results) values.insert(r["config"].contains(k) ? r["config"][k].dump() : "-");
    if (values.size() > 1) varying.push_back(k);
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
  std::vector<std::string> metric_names;
  for (const json& r : results)
    for (const auto& [name, v] : row_metrics(r))
      if (std::find(metric_names.begin(), metric_names.end(), name) == metric_names.end()) metric_names.push_back(name);

  std::ostringstream md, csv;
  md << "| ";
  for (const std::string& k : varying) md << k << " | ";
  md << "seeds | ";
  for (const std::string& m : metric_names) md << m << " | ";
  md << "\n|";
  for (size_t i = 0; i < varying.size() + 1 + metric_names.size(); ++i) md << "---|";
  md << "\n";
  for (const std::string& k : varying) csv << k << ",";
  csv << "seeds";
  for (const std::string& m : metric_names) csv << "," << m << "," << m << " std";
  csv << "\n";
  for (const std::string& key : order) {
    const auto& runs = groups[key];
    const json& c = (*runs[0])["config"];
    md << "| ";
    for (const std::string& k : varying) {
      const std::string v = c.contains(k) ? (c[k].is_string() ? c[k].get<std::string>() : c[k].dump()) : "-";
      md << v << " | ";
      csv << "\"" << v << "\",";
    }
    md << runs.size() << " | ";
    csv << runs.size();
    for (const std::string& m : metric_names) {
      double sum = 0, sq = 0;
      int n = 0;
      for (const json* r : runs)
        for (const auto& [name, v] : row_metrics(*r))
          if (name == m && !std::isnan(v)) {
            sum += v;
            sq += v * v;
            ++n;
          }
      const double mean = n ? sum / n : NAN;
      const double sd = n > 1 ? std::sqrt(std::max(0.0, (sq - n * mean * mean) / (n - 1))) : NAN;
      md << num(mean) << (n > 1 ? " ± " + num(sd, "%.2g") : "") << " | ";
      csv << "," << num(mean, "%.6g") << "," << num(sd, "%.6g");
    }
    md << "\n";
    csv << "\n";
  }
  io::write_text_file_atomic(dir + "/table.md", md.str());
  io::write_text_file_atomic(dir + "/table.csv", csv.str());
}

int run_sweep(const SweepArgs& a) {
  set_num_threads(a.threads);
  kernels::set_blas_threads(num_threads());
  const std::vector<json> runs = expand_grid(a.grid);
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
  if (!results.empty()) write_tables(dir, results);
  std::printf("msae sweep: %lld runs in the grid, %lld trained now, %lld already done%s\n",
              static_cast<long long>(runs.size()), static_cast<long long>(trained), static_cast<long long>(skipped),
              g_stop ? " (interrupted; run again to resume)" : "");
  std::printf("results: %s\ntables: %s/table.md, %s/table.csv\n", results_path.c_str(), dir.c_str(), dir.c_str());
  if (!results.empty()) std::fputs(io::read_text_file(dir + "/table.md").c_str(), stdout);
  return g_stop ? 130 : 0;
}

}  // namespace

Action add_sweep_command(CLI::App& root) {
  auto a = std::make_shared<SweepArgs>();
  CLI::App* app = root.add_subcommand("sweep", "Train and evaluate a grid of configurations (resumable)");
  app->add_option("--grid", a->grid, "Grid file: .json (base + axes + runs) or .jsonl (one run per line)")->required();
  app->add_option("--out", a->out, "Output directory (results.jsonl, table.md, table.csv)")->required();
  app->add_option("--threads", a->threads, "Threads (default: all cores)");
  app->add_flag("--dry-run", a->dry_run, "Print each run's id and configuration, train nothing");
  return [a]() { return run_sweep(*a); };
}

}  // namespace msae::cli
