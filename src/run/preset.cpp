// Train on a ground-truth preset and score against its truth (msae/run.h, "Ground-truth runs").
#include "msae/run.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>

#include "msae/data.h"
#include "msae/io.h"

namespace msae::run {

PresetDefaults preset_defaults(const std::string& p) {
  if (p == "synth-16k" || p == "synthsaebench-16k") return {4096, 25, 1024, 50000, 65536, 2000};
  if (p == "synth-lite") return {128, 8, 1024, 2000, 32768, 1000};
  if (p == "tree") return {20, 1, 256, 4000, 32768, 0};
  if (p == "absorption") return {16, 1, 256, 4000, 32768, 0};
  (void)synth::make_preset(p, 0);  // throws the usage error listing the presets
  usage_error("unknown preset '", p, "'");
}

PresetEvalRows preset_eval_rows(const synth::FeatureModel& model, uint64_t seed, int64_t rows) {
  PresetEvalRows e;
  e.rows = rows;
  e.x.resize(static_cast<size_t>(rows * model.d));
  synth::FeatureSampler(model, synth::synth_bench_eval_stream(seed)).sample(rows, e.x.data(), &e.fired);
  return e;
}

int64_t pin_preset_model(synth::FeatureModel& model, const std::string& path, const std::string& fallback) {
  const int64_t N = model.n_features(), d = model.d;
  auto record = [&] {
    io::write_safetensors(path, {{"directions", {N, d}, model.directions.ptr()}, {"bias", {d}, model.bias.ptr()}},
                          {{"format", "msae-pinned-model"}, {"model", model.name}});
  };
  const std::string source =
      io::path_exists(path) ? path : (!fallback.empty() && io::path_exists(fallback) ? fallback : "");
  if (source.empty()) {
    record();
    return 0;
  }
  const io::SafetensorsFile f = io::read_safetensors(source);
  auto tensor = [&](const char* name, std::vector<int64_t> shape) -> const Tensor& {
    const auto it = f.tensors.find(name);
    if (it == f.tensors.end() || it->second.shape != shape)
      runtime_error(source, " has no ", name, " of shape ", shape_str(shape), " for model ", model.name,
                    "; it is not this run's (remove the run's directory to start over)");
    return it->second;
  };
  int64_t moved = 0;
  for (const auto& [name, values, shape] : {std::tuple{"directions", model.directions.ptr(), std::vector<int64_t>{N, d}},
                                             std::tuple{"bias", model.bias.ptr(), std::vector<int64_t>{d}}}) {
    const float* rec = tensor(name, shape).ptr();
    const int64_t n = msae::numel(shape);
    for (int64_t i = 0; i < n; ++i) {
      if (rec[i] == values[i]) continue;
      if (!(std::fabs(rec[i] - values[i]) <= kPinTolerance))
        runtime_error(source, ": the ", name, " this run started with differ from this msae's model ", model.name,
                      " by ", std::fabs(rec[i] - values[i]), " at coordinate ", i,
                      ", more than another CPU's rounding; it is another model (another msae version?): finish the "
                      "run with the msae that started it, or remove its directory to start over");
      values[i] = rec[i];
      ++moved;
    }
  }
  if (source != path) record();
  return moved;
}

namespace {
// The share of latents that fired in none of the last `steps` batches (their consecutive silent batches
// reach it): the dead-latent curve's point for a logging interval of that many steps, whatever the AuxK
// window. 0 before any step.
double silent_share(const train::Trainer& trainer, int64_t steps) {
  const std::vector<int64_t>& n_inactive = trainer.latent_state().n_inactive;
  if (steps <= 0 || n_inactive.empty()) return 0.0;
  const auto silent = std::count_if(n_inactive.begin(), n_inactive.end(), [&](int64_t n) { return n >= steps; });
  return static_cast<double>(silent) / static_cast<double>(n_inactive.size());
}

// A checkpoint's run identity against this run's. Floats compare as float32: msae before json_number
// (core.h) wrote 0.95f as 0.949999988079071, now 0.95; both are the same float.
bool same_identity(const nlohmann::json& a, const nlohmann::json& b) {
  if (a.is_number() && b.is_number()) {  // (a checkpoint reads 5 back unsigned; this run holds it signed)
    if (a.is_number_float() || b.is_number_float())
      return static_cast<float>(a.get<double>()) == static_cast<float>(b.get<double>());
    return a == b;
  }
  if (a.type() != b.type() || a.size() != b.size()) return false;
  if (a.is_object()) {
    for (auto it = a.begin(); it != a.end(); ++it)
      if (!b.contains(it.key()) || !same_identity(it.value(), b.at(it.key()))) return false;
    return true;
  }
  if (a.is_array()) {
    for (size_t i = 0; i < a.size(); ++i)
      if (!same_identity(a[i], b[i])) return false;
    return true;
  }
  return a == b;
}
}  // namespace

PresetRun train_on_preset(const synth::FeatureModel& model, const train::TrainOptions& opt,
                          const PresetEvalRows& held_out, const PresetRunOptions& ro) {
  MSAE_ASSERT(opt.sae.d_in == model.d, "d_in ", opt.sae.d_in, " vs the model's d ", model.d);
  const int64_t steps = opt.steps, batch = opt.batch, D = opt.sae.d_sae;
  train::Trainer trainer(opt, SaeParams::init(model.d, D, opt.seed, opt.init_encoder_norm));
  synth::FeatureSampler stream(model, synth::synth_bench_train_stream(opt.seed));  // every arch of a seed
  PresetRun run;
  const int64_t log_every = std::max<int64_t>(1, steps / 100);
  train::MetricsInterval interval;
  // What a checkpoint adds to the trainer's state, and what makes a checkpoint this run's.
  const nlohmann::json identity = {{"config", saedir::config_json(opt.sae)}, {"steps", steps}, {"batch", batch},
                                   {"seed", opt.seed},  {"lr", json_number(opt.adam.lr)},  {"model", model.name}};
  auto save = [&](int64_t done) {
    const nlohmann::json extra = {{"run", identity},
                                  {"stream_row", stream.position()},
                                  {"stream_version", synth::FeatureSampler::kStreamVersion},
                                  {"variant_state", trainer.variant_state().state_json()},
                                  {"curve_step", run.curve_step},
                                  {"curve_fvu", run.curve_fvu},
                                  {"curve_dead", run.curve_dead},
                                  {"curve_silent", run.curve_silent},
                                  {"interval", interval.state_json()},
                                  {"generation_seconds", run.generation_seconds},
                                  {"step_seconds", run.step_seconds}};
    train::write_checkpoint(ro.checkpoint_dir, done, trainer, extra, 1);
  };
  int64_t start = 0;
  if (!ro.checkpoint_dir.empty() && train::has_checkpoint(ro.checkpoint_dir)) {
    train::Checkpoint ck = train::read_checkpoint(ro.checkpoint_dir);
    const nlohmann::json& e = ck.extra;
    const std::string where = ck.path + "/state.json";
    if (!e.contains("run") || !same_identity(e.at("run"), identity))
      usage_error(where, " belongs to another run configuration than ", ro.label, " of this command");
    start = ck.step;
    if (start < 0 || start > steps) runtime_error(where, ": step ", start, " outside [0, ", steps, "]");
    // Training on needs the stream the run started on; evaluating the checkpoint as it stands does not.
    const int64_t version =
        e.contains("stream_version") ? io::json_int(e.at("stream_version"), where + " stream_version", 1) : 1;
    const bool trains_on = start < steps && !(ro.stop && ro.stop->load());
    if (trains_on && version != synth::FeatureSampler::kStreamVersion)
      usage_error(where, " was written with the feature sampler's stream version ", version,
                  ", and this msae draws version ", synth::FeatureSampler::kStreamVersion,
                  " (docs/synth-bench.md, \"Stream versions\"): resumed, ", ro.label,
                  " would train on other rows than it started on. Finish it with the msae that started it (the ",
                  "commit is state.json's git_commit), or start it again; --snapshot-out still evaluates it as it "
                  "stands");
    trainer.restore(std::move(ck.params), std::move(ck.opt), std::move(ck.latents));
    trainer.restore_variants(e.at("variant_state"));
    stream.seek(io::json_int(e.at("stream_row"), where + " stream_row", 0));
    run.curve_step = io::json_double_vector(e.at("curve_step"), where + " curve_step");
    run.curve_fvu = io::json_double_vector(e.at("curve_fvu"), where + " curve_fvu");
    // (checkpoints written before the dead-latent curves: those points are unknown, NaN, null in results.json)
    for (auto [key, curve] : {std::pair{"curve_dead", &run.curve_dead}, std::pair{"curve_silent", &run.curve_silent}}) {
      *curve = e.contains(key) ? io::json_double_vector(e.at(key), where + " " + key) : std::vector<double>{};
      if (curve->size() > run.curve_step.size()) runtime_error(where, ": ", key, " is longer than curve_step");
      curve->insert(curve->begin(), run.curve_step.size() - curve->size(), std::nan(""));
    }
    interval = train::MetricsInterval::from_state_json(e.at("interval"), where + " interval");
    run.generation_seconds = io::json_double(e.at("generation_seconds"), where + " generation_seconds");
    run.step_seconds = io::json_double(e.at("step_seconds"), where + " step_seconds");
    run.resumed_at = start;
    run.steps_done = start;
    log_info(cat(ro.label, ": resuming at step ", start, " of ", steps, " (", ck.path, ")"));
  }
  const double generation_before = run.generation_seconds, step_before = run.step_seconds;
  LoopResult lr;
  LoopHooks hooks;
  hooks.next_batch = [&](float* x) {
    stream.sample(batch, x);
    return true;
  };
  if (ro.stop) hooks.stop = [&] { return ro.stop->load(); };
  hooks.log = [&](int64_t done, const train::MetricsInterval& iv, const StepStats& last) {
    run.curve_step.push_back(static_cast<double>(done));
    run.curve_fvu.push_back(iv.to_json().at("fvu").get<double>());
    run.curve_dead.push_back(static_cast<double>(last.n_dead) / static_cast<double>(D));
    run.curve_silent.push_back(silent_share(trainer, iv.steps));
  };
  hooks.progress = [&](int64_t done, const StepStats& st) {
    run.steps_done = done;
    if (ro.progress) ro.progress(done, steps, st);
  };
  auto times = [&] {
    run.generation_seconds = generation_before + lr.data_seconds;
    run.step_seconds = step_before + lr.step_seconds;
  };
  if (!ro.checkpoint_dir.empty())
    hooks.checkpoint = [&](int64_t done) {
      times();
      save(done);
    };
  LoopSpec spec;
  spec.start = start;
  spec.steps = steps;
  spec.log_every = log_every;
  spec.checkpoint_every = ro.checkpoint_every;
  spec.checkpoint_at_end = true;
  spec.label = ro.label;
  run_loop(trainer, spec, interval, hooks, lr);
  times();
  if (lr.interrupted) {
    run.interrupted = true;
    if (!ro.checkpoint_dir.empty() && lr.done > start) save(lr.done);  // (at start the last checkpoint is there)
    if (!ro.evaluate_if_stopped) return run;
  }
  if (run.interrupted && interval.steps > 0) {  // the last, partial logging interval
    run.curve_step.push_back(static_cast<double>(run.steps_done));
    run.curve_fvu.push_back(interval.to_json().at("fvu").get<double>());
    const std::vector<int64_t>& n_inactive = trainer.latent_state().n_inactive;
    run.curve_dead.push_back(static_cast<double>(std::count_if(n_inactive.begin(), n_inactive.end(), [&](int64_t n) {
                               return n >= opt.sae.dead_after_batches;
                             })) / static_cast<double>(D));
    run.curve_silent.push_back(silent_share(trainer, interval.steps));
  }
  if (ro.keep_sae) {
    train::RunFacts facts;
    facts.completed = !run.interrupted;
    facts.steps = run.steps_done;
    facts.steps_planned = steps;
    facts.seed = opt.seed;
    facts.shuffle = false;
    facts.data = cat("preset:", model.name, " seed ", opt.seed, " (stream FeatureSampler seed ", synth::synth_bench_train_stream(opt.seed), ")");
    facts.seconds = run.generation_seconds + run.step_seconds;
    facts.tokens_per_s = static_cast<double>(run.steps_done * batch) / std::max(facts.seconds, 1e-9);
    run.params = std::as_const(trainer).params();
    run.msae_json = train::run_record(trainer, facts);
  }
  data::DataOptions in_order;
  in_order.shuffle = false;  // file order, wrapping at the end
  auto src = data::open_array(held_out.x.data(), held_out.rows, model.d, "held-out synthetic rows", in_order);
  run.ev = eval::evaluate(opt.sae, std::as_const(trainer).params(), *src, held_out.rows);
  run.gt = eval::score_ground_truth(opt.sae, std::as_const(trainer).params(), model, held_out.x.data(), held_out.fired);
  run.meta_sae = nullptr;
  if (ro.meta_steps > 0 && D / 4 >= 16) {
    run::MetaSaeOptions mo;
    mo.steps = ro.meta_steps;
    mo.seed = opt.seed;
    const run::MetaSaeResult mr = run::meta_sae(std::as_const(trainer).params().W_dec.ptr(), D, model.d, mo);
    run.meta_sae = {{"width", mr.width}, {"k", mr.k}, {"steps", mr.steps}, {"explained_variance", mr.explained_variance}};
  }
  return run;
}

nlohmann::json preset_run_json(const PresetRun& run, const train::TrainOptions& opt, bool per_feature) {
  nlohmann::json j = {{"train",
                       {{"steps", run.steps_done},
                        {"steps_planned", opt.steps},
                        {"completed", !run.interrupted},
                        {"batch", opt.batch},
                        {"samples", run.steps_done * opt.batch},
                        {"lr", static_cast<double>(opt.adam.lr)},
                        {"seconds", run.generation_seconds + run.step_seconds},
                        {"generation_seconds", run.generation_seconds},
                        {"step_seconds", run.step_seconds},
                        {"resumed_at", run.resumed_at >= 0 ? nlohmann::json(run.resumed_at) : nlohmann::json(nullptr)},
                        {"curve_step", run.curve_step},
                        {"curve_fvu", run.curve_fvu},
                        {"curve_dead", run.curve_dead},
                        {"curve_silent", run.curve_silent}}},
                      {"eval", eval::to_json(run.ev)},
                      {"ground_truth", eval::to_json(run.gt, per_feature)},
                      {"meta_sae", run.meta_sae}};
  j["eval"].erase("latent_frequency");
  return j;
}

}  // namespace msae::run
