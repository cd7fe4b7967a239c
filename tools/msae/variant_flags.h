// The variant, ablation-switch and recipe flags (docs/variants.md), shared by `msae train` and
// `msae sweep` so both accept the same names with the same meaning.
#pragma once

#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "msae/train.h"

namespace msae::cli {

struct VariantArgs {
  std::string recipe;  // bussmann | dictionary-learning | saelens; empty = bussmann (SPEC)
  std::string prefix_weights;
  bool no_bdec_term = false;
  bool stop_gradient_groups = false;
  bool aux_detach = false;
  std::string group_k;
  int64_t sampled_prefixes = 0;
  std::string prefix_distribution = "pareto";
  float pareto_power = 0.5f;
  int64_t min_prefix = 1;
  int64_t reorder_every = 0;
  float reorder_decay = 0.95f;
  float l1_coef = 1.2f;
  float l1_adapt_rate = 3e-4f;
  int64_t l1_warmup_steps = -1;  // -1: 20% of the steps (Nabeshima)
  float threshold_rate = 0.01f;
  int64_t threshold_start_step = 0;
  float beta2 = 0.99f;
  int64_t lr_warmup_steps = 0;
  int64_t lr_decay_start = -1;
  bool bdec_median = false;
};

// Registers the flags on app (a train-like subcommand).
void add_variant_flags(CLI::App* app, VariantArgs& a);

// Applies the recipe and then every variant flag to opt (opt.sae, opt.adam, schedule), then re-finalizes
// opt.sae. A recipe sets only what the user did not give explicitly: `given(flag)` says whether a flag
// (e.g. "--aux-k") was on the command line. `lr_given` likewise for --lr.
void apply_variant_args(const VariantArgs& a, const std::function<bool(const std::string&)>& given,
                        train::TrainOptions& opt);

// The same options from a JSON object of flag names without dashes ({"stop-gradient-groups": true, ...});
// used by msae sweep. Unknown keys are not looked at here.
VariantArgs variant_args_from_json(const nlohmann::json& j);

// The inverse of variant_args_from_json (every field; recorded in checkpoints for --resume).
nlohmann::json variant_args_json(const VariantArgs& a);

// The names of every recipe, and what each sets (for --help and docs/variants.md).
const char* recipe_names();

// msae.json "training.schedule" (recipe options outside the SAE config).
nlohmann::json schedule_json(const train::TrainOptions& opt);

}  // namespace msae::cli
