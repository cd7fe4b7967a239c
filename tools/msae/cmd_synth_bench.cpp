// msae synth-bench: trains each architecture on the same synthetic stream (a feature model with known
// features, synth::make_preset), scores the SAEs against the truth (gt_metrics.h) and writes
// results.json, report.html (self-contained, inline SVG) and the truth files into --out.
// docs/synth-bench.md describes the presets, the metrics and measured results.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <memory>
#include <sstream>

#include "commands.h"
#include "msae/eval.h"
#include "msae/gt_metrics.h"
#include "msae/io.h"
#include "msae/report.h"
#include "msae/sae_dir.h"
#include "msae/synth.h"
#include "msae/train.h"
#include "msae/run.h"
#include "progress.h"
#include "table_flags.h"

namespace msae::cli {
namespace {

using nlohmann::json;

// Ctrl-C / SIGTERM: the run in progress stops at its next step and is evaluated as it stands; the runs
// after it are skipped; results.json and the report say so. A second signal kills the process.
std::atomic<bool> g_stop{false};
extern "C" void on_synth_bench_signal(int sig) {
  g_stop = true;
  std::signal(sig, SIG_DFL);
}

struct BenchArgs {
  std::string preset = "synth-lite";
  std::string archs = "matryoshka,batchtopk";
  int64_t meta_steps = -1;
  std::string seeds = "0";
  std::string out;
  bool overwrite = false;
  bool save_saes = false;  // write each trained SAE to OUT/saes/ARCH-seedS (SAELens layout + msae.json)
  int64_t checkpoint_every = 0;  // > 0: resumable, working in OUT.partial with per-run checkpoints
  bool resume = false;
  std::string snapshot_out;  // with --resume: evaluate every run's latest checkpoint into this directory, no training
  // Rows of the option table: the model and run options (--d-sae, --k, --batch, --steps, --group-sizes,
  // --eval-rows, --lr, --engine, --threads) and every variant switch, applied to every arch as msae train
  // applies them. Sizes the user does not give are the preset's.
  TableFlags table;
};

bool synth_bench_row(const run::OptionDef& row) {
  static const std::vector<std::string> keys = {"d_sae", "k", "batch", "steps", "group_sizes", "eval_rows",
                                                "lr", "engine", "threads", "dead_after_batches", "aux_k", "aux_coef"};
  return row.group == run::OptGroup::variant || std::find(keys.begin(), keys.end(), row.key) != keys.end();
}

// The variants record of args.json before the option table: every switch with its value; the given ones
// are those that differ from that time's defaults (a resumed run compares what the options mean).
json legacy_variants(const json& v) {
  static const json old_defaults = {
      {"recipe", ""}, {"prefix-weights", ""}, {"group-k", ""}, {"no-bdec-term", false},
      {"stop-gradient-groups", false}, {"aux-detach", false}, {"sampled-prefixes", 0},
      {"prefix-distribution", "pareto"}, {"pareto-power", 0.5}, {"min-prefix", 1}, {"reorder-every", 0},
      {"reorder-decay", 0.95}, {"l1-coef", 1.2}, {"l1-adapt-rate", 3e-4}, {"l1-warmup-steps", -1},
      {"threshold-rate", 0.01}, {"threshold-start-step", 0}, {"beta2", 0.99}, {"lr-warmup-steps", 0},
      {"lr-decay-start", -1}, {"bdec-median", false}};
  if (!v.is_object() || !v.contains("sampled-prefixes")) return v;  // today's format
  run::Options o;
  for (const auto& [key, value] : v.items()) {
    const json def = old_defaults.value(key, json());
    const bool same = value.is_number() && def.is_number() ? std::abs(value.get<double>() - def.get<double>()) <= 1e-7 * std::abs(def.get<double>())
                                                           : value == def;
    if (!same) o.set(key, value);
  }
  return o.to_json();
}

std::vector<std::string> split_list(const std::string& s, const char* flag) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ','))
    if (!item.empty()) out.push_back(item);
  if (out.empty()) usage_error(flag, ": empty list");
  return out;
}

std::string f3(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3f", v);
  return b;
}

struct Run {
  std::string arch;
  uint64_t seed = 0;
  SaeConfig cfg;
  json result;
  eval::EvalReport ev;
  eval::GtReport gt;
  std::vector<double> curve_step, curve_fvu, curve_dead, curve_silent;
};

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}
double std_of(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean_of(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

void write_truth(const std::string& dir, const synth::FeatureModel& m, const synth::FiredFeatures& fired) {
  const int64_t N = m.n_features();
  std::vector<float> parent(N), depth(N), cond(N), marg(N);
  for (int64_t f = 0; f < N; ++f) {
    parent[f] = static_cast<float>(m.parent[f]);
    depth[f] = static_cast<float>(m.depth[f]);
    cond[f] = static_cast<float>(m.cond_prob[f]);
    marg[f] = static_cast<float>(m.marginal[f]);
  }
  std::vector<float> offsets(fired.offsets.begin(), fired.offsets.end()), ids(fired.ids.begin(), fired.ids.end());
  io::write_safetensors(dir + "/truth.safetensors",
                        {{"directions", {N, m.d}, m.directions.ptr()},
                         {"bias", {m.d}, m.bias.ptr()},
                         {"parent", {N}, parent.data()},
                         {"depth", {N}, depth.data()},
                         {"cond_prob", {N}, cond.data()},
                         {"marginal", {N}, marg.data()},
                         {"eval_fired_offsets", {static_cast<int64_t>(offsets.size())}, offsets.data()},
                         {"eval_fired_ids", {static_cast<int64_t>(ids.size())}, ids.data()}},
                        {{"format", "msae-truth"}, {"model", m.name}});
}

void write_report(const std::string& path, const std::string& preset, const synth::FeatureModel& m,
                  const std::vector<Run>& runs, const std::vector<std::string>& archs, const json& summary,
                  bool interrupted) {
  report::Page page("msae synth-bench: " + preset);
  if (interrupted)
    page.paragraph("Interrupted: the last run stopped before its planned steps and was evaluated as it stood, and "
                   "the runs after it were skipped. Compare runs only at equal steps (results.json, train.steps).");
  page.paragraph(cat("Feature model '", m.name, "': N = ", m.n_features(), " features in d = ", m.d,
                     ", hierarchy depth ", m.max_depth(), ", expected L0 ", f3(m.expected_l0()), ". ", runs.size(),
                     " runs. Metrics are defined in docs/synth-bench.md."));
  // Summary table.
  bool one_seed = true;  // then each figure is that seed's, without a "± 0.000"
  for (const auto& a : archs) one_seed = one_seed && summary.at(a).at("seeds").get<int64_t>() < 2;
  page.heading(one_seed ? "Summary (one seed)" : "Summary (mean ± std over seeds)");
  const std::vector<std::pair<std::string, std::string>> keys = {
      {"f1", "F1"}, {"mcc", "MCC"}, {"uniqueness", "uniqueness"}, {"explained_variance", "EV"},
      {"absorption_rate", "absorption"}, {"splitting", "splitting"}, {"mean_max_cosine", "mean max cos"},
      {"l0", "L0"}, {"dead_fraction", "dead"}, {"roots_in_first_prefix", "roots in first prefix"},
      {"meta_sae_ev", "meta-SAE EV"}};
  std::vector<std::string> header = {"arch", "seeds"};
  for (const auto& k : keys) header.push_back(k.second);
  std::vector<std::vector<std::string>> rows;
  for (const auto& a : archs) {
    const json& s = summary.at(a);
    std::vector<std::string> r = {a, std::to_string(s.at("seeds").get<int64_t>())};
    for (const auto& k : keys)
      r.push_back(!s.contains(k.first)          ? "-"
                  : s.at("seeds").get<int64_t>() < 2 ? f3(s.at(k.first).at("mean").get<double>())
                                                     : f3(s.at(k.first).at("mean").get<double>()) + " ± " +
                                                           f3(s.at(k.first).at("std").get<double>()));
    rows.push_back(r);
  }
  page.raw(report::table_html(header, rows));

  // Plots, first seed of each arch.
  std::vector<const Run*> first;
  for (const auto& a : archs)
    for (const auto& r : runs)
      if (r.arch == a) {
        first.push_back(&r);
        break;
      }
  page.heading(one_seed ? "Reconstruction per Matryoshka prefix" : "Reconstruction per Matryoshka prefix (every seed)");
  std::vector<report::PrefixCurve> curves;
  for (const auto& r : runs) {
    report::PrefixCurve c{r.arch, std::to_string(r.seed), {}, {}};
    for (const auto& p : r.ev.prefixes) {
      c.latents.push_back(static_cast<double>(p.latents));
      c.fvu.push_back(p.fvu);
    }
    curves.push_back(std::move(c));
  }
  page.paragraph(one_seed ? "FVU of each prefix on the held-out rows. An arch without prefixes (BatchTopK) is the dashed "
                            "line at its FVU."
                          : "FVU of each prefix on the held-out rows: every seed a thin line, their mean with whiskers "
                            "of ± 1 sample std over seeds. An arch without prefixes (BatchTopK) is the dashed line at its "
                            "mean FVU, shaded ± 1 std. The other plots show the first seed of each arch.");
  const std::string fvu_svg = report::prefix_fvu_svg("FVU per prefix", curves, archs);
  report::LinePlot curve{"Training curve", "step", "FVU (training batch)", {}, false, true, false};
  for (const Run* r : first) curve.series.push_back({r->arch, r->curve_step, r->curve_fvu});
  page.raw(fvu_svg + report::line_svg(curve));
  report::LinePlot dead{"Dead latents during training", "step", "% of latents", {}, false, false, false};
  for (const Run* r : first) {
    std::vector<double> silent, auxk;
    for (double v : r->curve_silent) silent.push_back(100 * v);
    for (double v : r->curve_dead) auxk.push_back(100 * v);
    dead.series.push_back({cat(r->arch, ": silent through the interval"), r->curve_step, silent});
    dead.series.push_back({cat(r->arch, ": dead by the AuxK window (", r->cfg.dead_after_batches, " batches)"),
                           r->curve_step, auxk});
  }
  page.paragraph("Dead latents during training (first seed of each arch), at each logging point: the share of latents "
                 "that fired in none of the training batches since the previous point, and the share that AuxK counts "
                 "as dead (no firing in its window of batches). results.json: train.curve_silent, train.curve_dead.");
  page.raw(report::line_svg(dead));

  page.heading("Activation frequency");
  // Share of activations in each Matryoshka group's latent range (the Matryoshka boundaries for every arch).
  std::vector<int64_t> bounds;
  for (const Run* r : first)
    if (r->cfg.num_groups() > 1) bounds = r->cfg.boundaries();
  if (bounds.empty() && !first.empty()) bounds = {first[0]->cfg.d_sae};
  report::BarChart by_group{"Share of activations by latent group", "share of activations", {}, {}};
  for (size_t g = 0; g < bounds.size(); ++g)
    by_group.categories.push_back(cat("[", g == 0 ? 0 : bounds[g - 1], ",", bounds[g], ")"));
  report::Histogram freq{"Latent firing frequency", "fraction of rows (log10)", {}, 30, 0, 0, true};
  for (const Run* r : first) {
    report::Series s{r->arch, {}, std::vector<double>(bounds.size(), 0.0)};
    double total = 0;
    for (int64_t l = 0; l < static_cast<int64_t>(r->ev.latent_frequency.size()); ++l) {
      const size_t g = static_cast<size_t>(std::upper_bound(bounds.begin(), bounds.end(), l) - bounds.begin());
      s.y[std::min(g, bounds.size() - 1)] += r->ev.latent_frequency[l];
      total += r->ev.latent_frequency[l];
    }
    for (auto& v : s.y) v = total > 0 ? v / total : 0;
    by_group.series.push_back(s);
    freq.series.push_back({r->arch, {}, r->ev.latent_frequency});
  }
  page.raw(report::bar_svg(by_group) + report::histogram_svg(freq));

  page.heading("Feature recovery");
  report::Histogram f1h{"F1 of alive latents vs their best feature", "F1", {}, 20, 0, 1, false};
  report::Histogram cosh{"Max decoder cosine per true feature", "cosine", {}, 20, -0.1, 1, false};
  for (const Run* r : first) {
    report::Series s{r->arch, {}, {}};
    for (size_t l = 0; l < r->gt.latent_f1.size(); ++l)
      if (r->ev.latent_frequency[l] > 0) s.y.push_back(r->gt.latent_f1[l]);
    f1h.series.push_back(s);
    cosh.series.push_back({r->arch, {}, r->gt.feature_max_cos});
  }
  page.raw(report::histogram_svg(f1h) + report::histogram_svg(cosh));

  page.heading("Absorption and where features land");
  report::BarChart absb{"Absorption rate by child depth (parent latent silent while a child fires)", "rate", {}, {}};
  report::BarChart land{"Matryoshka: learned features whose best latent is in group 1, by depth", "share", {}, {}};
  const int32_t D = m.max_depth();
  for (int32_t l = 1; l <= D; ++l) absb.categories.push_back(cat("depth ", l));
  for (int32_t l = 0; l <= D; ++l) land.categories.push_back(cat("depth ", l));
  for (const Run* r : first) {
    report::Series s{r->arch, {}, {}}, t{r->arch, {}, {}};
    for (const auto& a : r->gt.absorption) s.y.push_back(a.rate());
    for (const auto& v : r->gt.landing) t.y.push_back(v.empty() ? 0.0 : v[0]);
    absb.series.push_back(s);
    if (r->cfg.num_groups() > 1) land.series.push_back(t);
  }
  if (D > 0) page.raw(report::bar_svg(absb));
  if (!land.series.empty()) page.raw(report::bar_svg(land));

  page.heading("Every run");
  std::vector<std::vector<std::string>> all;
  for (const auto& r : runs)
    all.push_back({r.arch, std::to_string(r.seed), f3(r.gt.f1), f3(r.gt.mcc), f3(r.gt.uniqueness),
                   f3(r.ev.prefixes.back().explained_variance), f3(r.gt.absorption_rate), f3(r.ev.prefixes.back().l0),
                   f3(r.ev.dead_fraction), f3(r.result.at("train").at("seconds").get<double>())});
  page.raw(report::table_html({"arch", "seed", "F1", "MCC", "uniqueness", "EV", "absorption", "L0", "dead", "train s"}, all));
  page.write(path);
}

int run_synth_bench(BenchArgs& a) {
  const run::Options opts = a.table.options();
  set_num_threads(static_cast<int>(opts.integer("threads")));
  kernels::set_blas_threads(num_threads());
  run::Options variant_options;  // the variant switches (recorded in args.json)
  for (const auto& [key, value] : opts.given_json().items())
    if (run::option(key).group == run::OptGroup::variant) variant_options.set(key, value);
  const run::PresetDefaults def = run::preset_defaults(a.preset);  // a usage error listing the presets if unknown
  const int64_t d_sae = opts.given("d_sae") ? opts.integer("d_sae") : def.d_sae;
  const int64_t k = opts.given("k") ? opts.integer("k") : def.k;
  const int64_t batch = opts.given("batch") ? opts.integer("batch") : def.batch;
  const int64_t steps = opts.given("steps") ? opts.integer("steps") : def.steps;
  const int64_t eval_rows = opts.given("eval_rows") ? opts.integer("eval_rows") : def.eval_rows;
  const int64_t meta_steps = a.meta_steps >= 0 ? a.meta_steps : def.meta_steps;
  const double lr = opts.real("lr");
  const std::string engine = opts.text("engine");
  const std::vector<std::string> archs = split_list(a.archs, "--archs");
  std::vector<uint64_t> seeds;
  for (const auto& s : split_list(a.seeds, "--seeds")) {
    size_t used = 0;
    unsigned long long v = 0;
    try {
      v = std::stoull(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != s.size() || used == 0) usage_error("--seeds: '", s, "' is not a non-negative integer");
    seeds.push_back(v);
  }
  for (const auto& ar : archs) (void)parse_arch(ar);
  const std::vector<int64_t> matryoshka_groups = opts.int_list("group_sizes");  // empty: the default groups
  while (a.out.size() > 1 && a.out.back() == '/') a.out.pop_back();
  if (a.out.empty()) usage_error("--out DIR is required");
  const io::OutputLock lock = io::lock_output(a.out, "msae synth-bench");
  io::report_leftovers(io::clean_leftovers(a.out));
  if (io::path_exists(a.out) && !a.overwrite) usage_error("output directory '", a.out, "' exists; pass --overwrite to replace it");
  if (a.checkpoint_every < 0) usage_error("--checkpoint-every must be >= 0");
  const bool snapshot = !a.snapshot_out.empty();
  if (snapshot) {
    while (a.snapshot_out.size() > 1 && a.snapshot_out.back() == '/') a.snapshot_out.pop_back();
    if (!a.resume) usage_error("--snapshot-out evaluates a resumable run as it stands: add --resume and the original flags");
    if (a.snapshot_out == a.out) usage_error("--snapshot-out must differ from --out (the finished run goes there)");
    if (io::path_exists(a.snapshot_out) && !a.overwrite)
      usage_error("output directory '", a.snapshot_out, "' exists; pass --overwrite to replace it");
  }
  // Resumable runs work in OUT.partial (kept on errors and interrupts); the others in OUT.tmp-PID.
  const bool resumable = a.checkpoint_every > 0 || a.resume;
  const std::string tmp = resumable ? a.out + ".partial" : io::temp_name(a.out);
  int64_t checkpoint_every = a.checkpoint_every;
  if (resumable) {
    // Everything that changes the results; a resumed command must repeat it.
    json args = {{"preset", a.preset}, {"archs", archs}, {"seeds", seeds}, {"d_sae", d_sae}, {"k", k},
                       {"batch", batch}, {"steps", steps}, {"eval_rows", eval_rows}, {"meta_steps", meta_steps},
                       {"group_sizes", matryoshka_groups}, {"lr", lr}, {"engine", engine},
                       {"threads", num_threads()}, {"save_saes", a.save_saes},
                       {"variants", variant_options.to_json()}};
    // The AuxK settings, recorded only when given (args.json of the runs before they were options stays valid).
    json auxk = json::object();
    for (const char* key : {"dead_after_batches", "aux_k", "aux_coef"})
      if (opts.given(key)) auxk[key] = opts.given_json().at(key);
    if (!auxk.empty()) args["auxk"] = auxk;
    const std::string args_path = tmp + "/args.json";
    if (a.resume) {
      if (!io::path_exists(args_path))
        usage_error("--resume: no resumable run at ", tmp, " (start one with --checkpoint-every N)");
      json before;
      try {
        before = json::parse(io::read_text_file(args_path));
      } catch (const json::exception& e) {
        runtime_error(args_path, " is not valid JSON (", e.what(), "); remove ", tmp, " to start over");
      }
      json recorded = before.value("args", json());
      if (recorded.is_object() && recorded.contains("variants")) recorded["variants"] = legacy_variants(recorded["variants"]);
      if (recorded != args)
        usage_error("--resume: ", args_path, " records another command line; repeat the original flags (",
                    before.value("args", json()).dump(), ")");
      if (checkpoint_every == 0) checkpoint_every = before.value("checkpoint_every", int64_t{0});
      log_info(cat("resuming the run in ", tmp));
    } else {
      if (io::path_exists(tmp))
        usage_error("a resumable run exists at ", tmp, ": add --resume to continue it, or remove that directory");
      io::create_directories(tmp);
      io::write_text_file_atomic(args_path, json{{"args", args}, {"checkpoint_every", checkpoint_every}}.dump(1) + "\n");
    }
  } else {
    io::create_directories(tmp);  // a new, unique name (io::temp_name)
  }
  // Where the outputs are written before they are committed: the run's own directory, or for a snapshot a
  // directory of its own (OUT.partial and its checkpoints stay as they are, to be continued).
  const std::string work = snapshot ? io::temp_name(a.snapshot_out) : tmp;
  if (snapshot) io::create_directories(work);  // a new, unique name (io::temp_name)
  static std::atomic<bool> stop_at_once{true};
  bool any_partial = false;  // a snapshot with a run that has not finished (or not started)

  std::vector<Run> runs;
  json runs_json = json::array();
  synth::FeatureModel model0;
  std::signal(SIGINT, on_synth_bench_signal);
  std::signal(SIGTERM, on_synth_bench_signal);
  try {
    for (uint64_t seed : seeds) {
      if (g_stop) break;
      synth::FeatureModel model = synth::make_preset(a.preset, seed);
      if (resumable) {
        // The model this run started on, even on another CPU (run::pin_preset_model); runs started before the
        // pinned files existed recorded the first seed's in truth.safetensors.
        const int64_t moved = run::pin_preset_model(model, cat(tmp, "/model-seed", seed, ".safetensors"),
                                                    seed == seeds.front() ? tmp + "/truth.safetensors" : "");
        if (moved > 0)
          log_info(cat("preset ", a.preset, " seed ", seed, ": ", moved, " values of the model taken from the run's ",
                       "start, where this machine's differ by rounding (another CPU's BLAS kernel)"));
      }
      if (runs.empty()) model0 = model;
      log_info(cat("preset ", a.preset, " seed ", seed, ": N=", model.n_features(), " d=", model.d, " expected L0 ",
                   model.expected_l0()));
      // Held-out evaluation rows with their fired features.
      const run::PresetEvalRows held_out = run::preset_eval_rows(model, seed, eval_rows);
      if (seed == seeds.front()) write_truth(work, model, held_out.fired);
      for (const auto& arch : archs) {
        if (g_stop) break;
        SaeConfig cfg;
        cfg.arch = parse_arch(arch);
        cfg.d_in = model.d;
        cfg.d_sae = d_sae;
        cfg.k = k;
        if (cfg.arch == Arch::matryoshka) cfg.group_sizes = matryoshka_groups;
        cfg.finalize();
        // The run's options: this command's, and the variant switches, through the run layer's table.
        run::Options ro_opts = opts;
        ro_opts.erase("eval_rows");
        ro_opts.erase("threads");
        ro_opts.erase("group_sizes");
        ro_opts.set("arch", arch);
        if (cfg.arch == Arch::matryoshka) ro_opts.set("group_sizes", cfg.group_sizes);
        ro_opts.set("seed", static_cast<int64_t>(seed));
        const train::TrainOptions opt = run::make_train_options(ro_opts, model.d, {d_sae, k, batch, steps});
        cfg = opt.sae;  // the variant switches may change the SAE config (recipes, per-group k, ...)
        run::PresetRunOptions ro;
        std::unique_ptr<Progress> progress;
        ro.progress = [&](int64_t done, int64_t planned, const StepStats& st) {
          // The first call is for the first step this process takes (done - 1 were taken before a resume):
          // the ETA then counts only this process's steps in its own time.
          if (!progress) progress = std::make_unique<Progress>(planned, 10.0, done - 1);
          char buf[96];
          std::snprintf(buf, sizeof buf, " | FVU %.3f | L0 %.3f", st.var_x > 0 ? st.mse_prefix.back() / st.var_x : 0.0,
                        static_cast<double>(st.l0));
          progress->update(done, cat(arch, " seed ", seed, buf), done == planned);
        };
        ro.meta_steps = meta_steps;
        ro.label = cat(arch, " seed ", seed);
        ro.keep_sae = a.save_saes;
        ro.stop = &g_stop;
        ro.evaluate_if_stopped = !resumable;
        if (resumable) {
          ro.checkpoint_dir = cat(tmp, "/runs/", arch, "-seed", seed);
          ro.checkpoint_every = checkpoint_every;
          if (snapshot && !train::has_checkpoint(ro.checkpoint_dir)) {
            log_warn(cat(arch, " seed ", seed, ": no checkpoint yet in ", ro.checkpoint_dir, "; not in the snapshot"));
            any_partial = true;
            continue;
          }
          io::create_directories(ro.checkpoint_dir);
        }
        if (snapshot) {  // stop before the first step, and evaluate the SAE as the checkpoint has it
          ro.stop = &stop_at_once;
          ro.evaluate_if_stopped = true;
        }
        run::PresetRun pr = run::train_on_preset(model, opt, held_out, ro);
        if (progress) progress->finish();
        if (snapshot) {
          any_partial = any_partial || pr.interrupted;
          log_info(cat(arch, " seed ", seed, ": snapshot at step ", pr.steps_done, " of ", steps));
        } else if (pr.interrupted && resumable) {
          log_warn(cat(arch, " seed ", seed, ": interrupted at step ", pr.steps_done, " of ", steps, "; checkpoint in ",
                       ro.checkpoint_dir, ". Continue with the same command and --resume"));
          return 130;
        }
        if (pr.interrupted && !snapshot)
          log_warn(cat(arch, " seed ", seed, ": interrupted after ", pr.steps_done, " of ", steps,
                       " steps; evaluating the SAE as it stands and skipping the remaining runs"));
        json entries = run::preset_run_json(pr, opt, true);
        json sae_dir = nullptr;
        if (a.save_saes) {  // the trained SAE itself, so a long run can be evaluated or inspected again
          const std::string rel = cat("saes/", arch, "-seed", seed);
          io::create_directories(work + "/" + rel);
          pr.msae_json["final_metrics"] = {{"synth_bench", {{"f1", pr.gt.f1}, {"mcc", pr.gt.mcc},
                                                             {"explained_variance", pr.ev.prefixes.back().explained_variance}}}};
          saedir::write_sae_files(work + "/" + rel, opt.sae, pr.params, pr.msae_json);
          sae_dir = rel;
        }
        entries["train"]["lr"] = lr;  // as given (a double), not the float the optimizer uses
        Run run;
        run.arch = arch;
        run.seed = seed;
        run.cfg = cfg;
        run.ev = std::move(pr.ev);
        run.gt = std::move(pr.gt);
        run.curve_step = pr.curve_step;
        run.curve_fvu = pr.curve_fvu;
        run.curve_dead = pr.curve_dead;
        run.curve_silent = pr.curve_silent;
        const double gen_s = pr.generation_seconds, step_s = pr.step_seconds;
        run.result = {{"arch", arch},
                      {"seed", seed},
                      {"config", saedir::config_json(cfg)},
                      {"train", entries["train"]},
                      {"eval", entries["eval"]},
                      {"ground_truth", entries["ground_truth"]},
                      {"meta_sae", entries["meta_sae"]},
                      {"sae_dir", sae_dir}};
        log_info(cat(arch, " seed ", seed, ": F1 ", f3(run.gt.f1), " MCC ", f3(run.gt.mcc), " uniqueness ",
                     f3(run.gt.uniqueness), " EV ", f3(run.ev.prefixes.back().explained_variance), " absorption ",
                     f3(run.gt.absorption_rate), " L0 ", f3(run.ev.prefixes.back().l0), " (train ", f3(step_s),
                     " s, generation ", f3(gen_s), " s)"));
        runs_json.push_back(run.result);
        runs.push_back(std::move(run));
      }
    }

    const bool interrupted = g_stop.load();
    if (runs.empty())
      runtime_error(snapshot ? "no run has a checkpoint yet; nothing to evaluate"
                             : "interrupted before the first run finished; nothing to write");
    // The archs with at least one run (all of them unless interrupted).
    std::vector<std::string> done_archs;
    for (const auto& arch : archs)
      if (std::any_of(runs.begin(), runs.end(), [&](const Run& r) { return r.arch == arch; })) done_archs.push_back(arch);
    json summary = json::object();
    for (const auto& arch : done_archs) {
      std::map<std::string, std::vector<double>> vals;
      int64_t n = 0;
      for (const auto& r : runs) {
        if (r.arch != arch) continue;
        ++n;
        vals["f1"].push_back(r.gt.f1);
        vals["mcc"].push_back(r.gt.mcc);
        vals["uniqueness"].push_back(r.gt.uniqueness);
        vals["f1_all_latents"].push_back(r.gt.f1_all_latents);
        vals["uniqueness_all_latents"].push_back(r.gt.uniqueness_all_latents);
        vals["explained_variance"].push_back(r.ev.prefixes.back().explained_variance);
        vals["absorption_rate"].push_back(r.gt.absorption_rate);
        vals["splitting"].push_back(r.gt.splitting);
        vals["mean_max_cosine"].push_back(r.gt.mean_max_cosine);
        vals["feature_f1_mean"].push_back(r.gt.feature_f1_mean);
        vals["l0"].push_back(r.ev.prefixes.back().l0);
        vals["dead_fraction"].push_back(r.ev.dead_fraction);
        vals["roots_in_first_prefix"].push_back(r.gt.roots_in_first_prefix);
        if (!r.result.at("meta_sae").is_null())
          vals["meta_sae_ev"].push_back(r.result.at("meta_sae").at("explained_variance").get<double>());
      }
      json s = {{"seeds", n}};
      for (const auto& [key, v] : vals) s[key] = {{"mean", mean_of(v)}, {"std", std_of(v)}, {"values", v}};
      summary[arch] = s;
    }
    const json results = {{"format", "msae-synth-bench"},
                          {"format_version", 1},
                          {"msae_version", version_string()},
                          {"git_commit", git_commit()},
                          {"preset", a.preset},
                          {"model",
                           {{"name", model0.name},
                            {"n_features", model0.n_features()},
                            {"d", model0.d},
                            {"max_depth", model0.max_depth()},
                            {"expected_l0", model0.expected_l0()},
                            {"corr_rank", model0.corr_rank()},
                            {"corr_scale", model0.corr_scale}}},
                          {"d_sae", d_sae},
                          {"k", k},
                          {"eval_rows", eval_rows},
                          {"threads", num_threads()},
                          {"completed", !interrupted && !any_partial},  // false: stopped by a signal, or a snapshot
                                                                         // of unfinished runs (see train.completed)
                          {"summary", summary},
                          {"runs", runs_json}};
    io::write_text_file_atomic(work + "/results.json", results.dump(1) + "\n");
    write_report(work + "/report.html", a.preset, model0, runs, done_archs, summary, interrupted || any_partial);
    if (resumable && !snapshot) {  // the checkpoints (parameters and Adam moments) are not part of the output
      io::remove_all(tmp + "/runs");
      io::remove_all(tmp + "/args.json");
    }
    const std::string& out_dir = snapshot ? a.snapshot_out : a.out;
    io::commit_directory(work, out_dir, a.overwrite);

    std::printf("msae synth-bench: preset %s, d_sae %lld, k %lld, %lld steps x %lld rows, seeds %s\n", a.preset.c_str(),
                static_cast<long long>(d_sae), static_cast<long long>(k), static_cast<long long>(steps),
                static_cast<long long>(batch), a.seeds.c_str());
    std::printf("  %-11s %-15s %-15s %-15s %-15s %-15s %-15s\n", "arch", "F1", "MCC", "uniqueness", "EV", "absorption",
                "roots in 1st prefix");
    for (const auto& arch : done_archs) {
      const json& s = summary.at(arch);
      auto cell = [&](const char* key) {  // one seed: its figure, without a "±0.000"
        return f3(s.at(key).at("mean").get<double>()) +
               (s.at("seeds").get<int64_t>() < 2 ? std::string() : "±" + f3(s.at(key).at("std").get<double>()));
      };
      std::printf("  %-11s %-15s %-15s %-15s %-15s %-15s %-15s\n", arch.c_str(), cell("f1").c_str(), cell("mcc").c_str(),
                  cell("uniqueness").c_str(), cell("explained_variance").c_str(), cell("absorption_rate").c_str(),
                  cell("roots_in_first_prefix").c_str());
    }
    std::printf("output: %s (results.json, report.html, truth.safetensors%s)\n", out_dir.c_str(), a.save_saes ? ", saes/" : "");
    if (snapshot)
      std::printf("snapshot: the runs as their checkpoints stand%s; %s.partial is unchanged, continue it with --resume\n",
                  any_partial ? " (results.json: completed false)" : "", a.out.c_str());
    if (interrupted)
      std::printf("interrupted: %zu run(s) written, the last one evaluated where it stopped (results.json: completed false)\n",
                  runs.size());
    return interrupted ? 130 : 0;
  } catch (...) {
    if (!resumable) io::remove_all(tmp);  // a resumable run keeps its checkpoints
    if (snapshot) io::remove_all(work);
    throw;
  }
}

}  // namespace

Action add_synth_bench_command(CLI::App& root) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* app = root.add_subcommand("synth-bench", "Train architectures on a synthetic feature model with known features and score them");
  app->add_option("--preset", a->preset, "synth-lite | synth-16k | synthsaebench-16k | tree | absorption")->capture_default_str();
  app->add_option("--archs", a->archs, "Comma-separated architectures, each trained on the same stream")->capture_default_str();
  app->add_option("--seeds", a->seeds, "Comma-separated seeds: each seeds the feature model, the stream and the init")
      ->capture_default_str();
  app->add_option("--meta-steps", a->meta_steps, "Meta-SAE training steps (0 = skip; default 1000, 2000 for the 16k presets, 0 for the toys)");
  app->add_option("--out", a->out, "Output directory (results.json, report.html, truth.safetensors)")->required();
  app->add_flag("--overwrite", a->overwrite, "Replace an existing output directory");
  app->add_option("--checkpoint-every", a->checkpoint_every,
                  "Resumable: checkpoint each run every N steps (and on Ctrl-C) in OUT.partial; 0 = off")
      ->capture_default_str();
  app->add_flag("--resume", a->resume, "Continue the resumable run in OUT.partial (repeat the original flags)");
  app->add_option("--snapshot-out", a->snapshot_out,
                  "With --resume: evaluate every run at its latest checkpoint, without training, into this directory "
                  "(OUT.partial is left to continue)");
  app->add_flag("--save-saes", a->save_saes,
                "Also write every trained SAE to OUT/saes/ARCH-seedS (the msae train output layout)");
  a->table.add_to(app, run::kCli, synth_bench_row);
  return [a]() { return run_synth_bench(*a); };
}

}  // namespace msae::cli
