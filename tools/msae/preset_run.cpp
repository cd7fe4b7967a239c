// Train on a ground-truth preset and score against its truth (see preset_run.h).
#include "preset_run.h"

#include <algorithm>
#include <cmath>

#include "msae/data.h"
#include "progress.h"

namespace msae::cli {

PresetDefaults preset_defaults(const std::string& p) {
  if (p == "synth-16k") return {4096, 25, 1024, 50000, 65536, 2000};
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
  synth::FeatureSampler(model, 1000003 + seed).sample(rows, e.x.data(), &e.fired);
  return e;
}

PresetRun train_on_preset(const synth::FeatureModel& model, const train::TrainOptions& opt,
                          const PresetEvalRows& held_out, const PresetRunOptions& ro) {
  MSAE_ASSERT(opt.sae.d_in == model.d, "d_in ", opt.sae.d_in, " vs the model's d ", model.d);
  const int64_t steps = opt.steps, batch = opt.batch, D = opt.sae.d_sae;
  train::Trainer trainer(opt, SaeParams::init(model.d, D, opt.seed));
  synth::FeatureSampler stream(model, 2 * opt.seed + 1);  // the same stream for every arch of a seed
  std::vector<float> x(static_cast<size_t>(batch * model.d));
  PresetRun run;
  Progress progress(steps);
  const int64_t log_every = std::max<int64_t>(1, steps / 100);
  train::MetricsInterval interval;
  char buf[96];
  for (int64_t s = 0; s < steps; ++s) {
    if (ro.stop && ro.stop->load()) {
      run.interrupted = true;
      if (!ro.evaluate_if_stopped) {
        progress.finish();
        return run;
      }
      break;
    }
    Timer t;
    stream.sample(batch, x.data());
    run.generation_seconds += t.seconds();
    t.reset();
    const StepStats& st = trainer.step(x.data());
    run.step_seconds += t.seconds();
    if (!std::isfinite(st.loss)) runtime_error("the loss became ", st.loss, " at step ", s + 1, " (", ro.label, ")");
    interval.add(st);
    if ((s + 1) % log_every == 0 || s + 1 == steps) {
      run.curve_step.push_back(static_cast<double>(s + 1));
      run.curve_fvu.push_back(interval.to_json().at("fvu").get<double>());
      interval = train::MetricsInterval{};
    }
    std::snprintf(buf, sizeof buf, " | FVU %.3f | L0 %.3f", st.var_x > 0 ? st.mse_prefix.back() / st.var_x : 0.0,
                  static_cast<double>(st.l0));
    progress.update(s + 1, ro.label + buf, s + 1 == steps);
    run.steps_done = s + 1;
  }
  progress.finish();
  if (run.interrupted && interval.steps > 0) {  // the last, partial logging interval
    run.curve_step.push_back(static_cast<double>(run.steps_done));
    run.curve_fvu.push_back(interval.to_json().at("fvu").get<double>());
  }
  if (ro.keep_sae) {
    train::RunFacts facts;
    facts.completed = !run.interrupted;
    facts.steps = run.steps_done;
    facts.steps_planned = steps;
    facts.seed = opt.seed;
    facts.shuffle = false;
    facts.data = cat("preset:", model.name, " seed ", opt.seed, " (stream FeatureSampler seed ", 2 * opt.seed + 1, ")");
    facts.seconds = run.generation_seconds + run.step_seconds;
    facts.tokens_per_s = static_cast<double>(run.steps_done * batch) / std::max(facts.seconds, 1e-9);
    run.params = trainer.params();
    run.msae_json = train::run_record(trainer, facts);
  }
  data::DataOptions in_order;
  in_order.shuffle = false;  // file order, wrapping at the end
  auto src = data::open_array(held_out.x.data(), held_out.rows, model.d, "held-out synthetic rows", in_order);
  run.ev = eval::evaluate(opt.sae, trainer.params(), *src, held_out.rows);
  run.gt = eval::score_ground_truth(opt.sae, trainer.params(), model, held_out.x.data(), held_out.fired);
  run.meta_sae = nullptr;
  if (ro.meta_steps > 0 && D / 4 >= 16) {
    eval::MetaSaeOptions mo;
    mo.steps = ro.meta_steps;
    mo.seed = opt.seed;
    const eval::MetaSaeResult mr = eval::meta_sae(trainer.params().W_dec.ptr(), D, model.d, mo);
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
                        {"curve_step", run.curve_step},
                        {"curve_fvu", run.curve_fvu}}},
                      {"eval", eval::to_json(run.ev)},
                      {"ground_truth", eval::to_json(run.gt, per_feature)},
                      {"meta_sae", run.meta_sae}};
  j["eval"].erase("latent_frequency");
  return j;
}

}  // namespace msae::cli
