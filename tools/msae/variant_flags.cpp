// Variant, ablation-switch and recipe flags (docs/variants.md).
#include "variant_flags.h"

#include <cmath>
#include <sstream>

#include "msae/io.h"

namespace msae::cli {
namespace {

template <class T>
std::vector<T> parse_list(const std::string& text, const char* flag) {
  std::vector<T> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    std::stringstream one(item);
    T v{};
    one >> v;
    if (one.fail() || !one.eof())
      usage_error(flag, ": '", item, "' is not a number; expected a comma-separated list such as 1,1,2");
    out.push_back(v);
  }
  if (out.empty()) usage_error(flag, ": empty list");
  return out;
}

}  // namespace

const char* recipe_names() { return "bussmann | dictionary-learning | saelens"; }

void add_variant_flags(CLI::App* app, VariantArgs& a) {
  app->add_option("--recipe", a.recipe,
                  "Another trainer's semantics as defaults: bussmann (= SPEC, the default) | dictionary-learning | saelens")
      ->group("Variants");
  app->add_option("--prefix-weights", a.prefix_weights, "Loss weight of each Matryoshka prefix, one per group (default all 1)")
      ->group("Variants");
  app->add_flag("--no-bdec-term", a.no_bdec_term, "Drop the b_dec-only term of the reconstruction loss (SPEC keeps it)")
      ->group("Variants");
  app->add_flag("--stop-gradient-groups", a.stop_gradient_groups,
                "Later groups' losses do not update earlier groups' latents")
      ->group("Variants");
  app->add_flag("--aux-detach", a.aux_detach, "Detach the AuxK residual (AuxK trains only the dead latents)")->group("Variants");
  app->add_option("--group-k", a.group_k, "Per-group selection: k_g per group instead of the global BatchTopK k")
      ->group("Variants");
  app->add_option("--sampled-prefixes", a.sampled_prefixes,
                  "Sample this many prefix lengths per batch (Nabeshima); 0 = the fixed groups")
      ->group("Variants");
  app->add_option("--prefix-distribution", a.prefix_distribution, "Sampled prefix lengths: pareto | uniform")
      ->capture_default_str()
      ->group("Variants");
  app->add_option("--pareto-power", a.pareto_power, "Pareto power of the prefix-length distribution")
      ->capture_default_str()
      ->group("Variants");
  app->add_option("--min-prefix", a.min_prefix, "Shortest sampled prefix")->capture_default_str()->group("Variants");
  app->add_option("--reorder-every", a.reorder_every,
                  "Permute latents by running mean squared activation every N steps (0 = never)")
      ->group("Variants");
  app->add_option("--reorder-decay", a.reorder_decay, "EMA decay of the reordering statistic")
      ->capture_default_str()
      ->group("Variants");
  app->add_option("--l1-coef", a.l1_coef, "relu_l1: initial L1 coefficient (default 1.2/d: Nabeshima's 1.2 on msae's per-element MSE)")
      ->group("Variants");
  app->add_option("--l1-adapt-rate", a.l1_adapt_rate, "relu_l1: per-step multiplicative adaptation toward L0 = k")
      ->capture_default_str()
      ->group("Variants");
  app->add_option("--l1-warmup-steps", a.l1_warmup_steps, "relu_l1: linear warm-up of the L1 coefficient (default 20% of steps)")
      ->group("Variants");
  app->add_option("--threshold-rate", a.threshold_rate, "Threshold EMA rate (threshold += rate * (cut - threshold))")
      ->capture_default_str()
      ->group("Variants");
  app->add_option("--threshold-start-step", a.threshold_start_step, "First step that updates the threshold")
      ->capture_default_str()
      ->group("Variants");
  app->add_option("--beta2", a.beta2, "Adam beta2")->capture_default_str()->group("Variants");
  app->add_option("--lr-warmup-steps", a.lr_warmup_steps, "Linear learning-rate warm-up")->capture_default_str()->group("Variants");
  app->add_option("--lr-decay-start", a.lr_decay_start, "Step from which lr decays linearly to 0 (-1 = never)")
      ->capture_default_str()
      ->group("Variants");
  app->add_flag("--bdec-median", a.bdec_median, "Initialize b_dec to the geometric median of the first batch")->group("Variants");
}

void apply_variant_args(const VariantArgs& a, const std::function<bool(const std::string&)>& given,
                        train::TrainOptions& opt) {
  SaeConfig& cfg = opt.sae;
  const int64_t d = cfg.d_in, D = cfg.d_sae, B = opt.batch;
  // ---- recipe defaults (only where the flag was not given); sources and the differences not
  // reproduced are listed in docs/variants.md.
  if (a.recipe.empty() || a.recipe == "bussmann") {
    // SPEC.md is written from the authors' code: nothing to change.
  } else if (a.recipe == "dictionary-learning") {
    const int64_t G = cfg.num_groups();
    if (!given("--encoder-bias")) cfg.encoder_bias = true;
    if (!given("--no-bdec-term")) cfg.bdec_loss_term = false;
    if (!given("--prefix-weights")) cfg.prefix_weights.assign(G, 1.0f / static_cast<float>(G));
    if (!given("--aux-detach")) cfg.aux_detach = true;
    if (!given("--aux-k")) cfg.aux_k = std::max<int64_t>(1, d / 2);
    if (!given("--dead-after-batches")) cfg.dead_after_batches = std::max<int64_t>(1, (10'000'000 + B - 1) / B);
    if (!given("--threshold-rate")) cfg.threshold_rate = 0.001f;
    if (!given("--threshold-start-step")) cfg.threshold_start_step = 1000;
    if (!given("--beta2")) opt.adam.beta2 = 0.999f;
    if (!given("--max-grad-norm")) opt.max_grad_norm = 1.0f;
    if (!given("--lr-warmup-steps")) opt.lr_warmup_steps = 1000;
    if (!given("--bdec-median")) opt.bdec_geometric_median = true;
    if (!given("--lr")) opt.adam.lr = static_cast<float>(2e-4 / std::sqrt(static_cast<double>(D) / 16384.0));
  } else if (a.recipe == "saelens") {
    const int64_t G = cfg.num_groups();
    if (!given("--encoder-bias")) cfg.encoder_bias = true;
    if (!given("--no-bdec-term")) cfg.bdec_loss_term = false;
    if (!given("--aux-detach")) cfg.aux_detach = true;
    if (!given("--aux-k")) cfg.aux_k = std::max<int64_t>(1, d / 2);
    // SAELens sums the level losses and adds AuxK with coefficient 1; msae averages the G levels, so the
    // same relative weight is 1/G.
    if (!given("--aux-coef")) cfg.aux_coef = 1.0f / static_cast<float>(G);
    if (!given("--dead-after-batches")) cfg.dead_after_batches = 1000;
    if (!given("--beta2")) opt.adam.beta2 = 0.999f;
  } else {
    usage_error("--recipe: unknown '", a.recipe, "'; expected one of ", recipe_names());
  }
  // ---- explicit flags
  if (given("--prefix-weights")) cfg.prefix_weights = parse_list<float>(a.prefix_weights, "--prefix-weights");
  if (given("--no-bdec-term")) cfg.bdec_loss_term = !a.no_bdec_term;
  if (given("--stop-gradient-groups")) cfg.stop_gradient_groups = a.stop_gradient_groups;
  if (given("--aux-detach")) cfg.aux_detach = a.aux_detach;
  if (given("--group-k")) cfg.group_k = parse_list<int64_t>(a.group_k, "--group-k");
  cfg.sampled_prefixes = a.sampled_prefixes;
  cfg.prefix_distribution = a.prefix_distribution;
  cfg.pareto_power = a.pareto_power;
  cfg.min_prefix = a.min_prefix;
  cfg.reorder_every = a.reorder_every;
  cfg.reorder_decay = a.reorder_decay;
  // Nabeshima's 1.2 multiplies an MSE summed over the d columns; msae's MSE is a mean over them, so the
  // same strength is 1.2 / d.
  cfg.l1_coef = given("--l1-coef") ? a.l1_coef : 1.2f / static_cast<float>(std::max<int64_t>(d, 1));
  cfg.l1_adapt_rate = a.l1_adapt_rate;
  cfg.l1_warmup_steps = a.l1_warmup_steps >= 0 ? a.l1_warmup_steps : opt.steps / 5;
  if (given("--threshold-rate")) cfg.threshold_rate = a.threshold_rate;
  if (given("--threshold-start-step")) cfg.threshold_start_step = a.threshold_start_step;
  if (given("--beta2")) opt.adam.beta2 = a.beta2;
  if (given("--lr-warmup-steps")) opt.lr_warmup_steps = a.lr_warmup_steps;
  if (given("--lr-decay-start")) opt.lr_decay_start = a.lr_decay_start;
  if (given("--bdec-median")) opt.bdec_geometric_median = a.bdec_median;
  if (!(opt.adam.beta2 > 0.0f && opt.adam.beta2 < 1.0f)) usage_error("--beta2 must be in (0, 1), got ", opt.adam.beta2);
  if (opt.lr_warmup_steps < 0) usage_error("--lr-warmup-steps must be >= 0, got ", opt.lr_warmup_steps);
  cfg.recipe = a.recipe.empty() ? "bussmann" : a.recipe;
  // The sparse engine has no ReLU + L1 path: without an explicit --engine, relu_l1 trains on the reference.
  if (cfg.arch == Arch::relu_l1 && !given("--engine")) opt.engine = "reference";
  cfg.finalize();
}

VariantArgs variant_args_from_json(const nlohmann::json& j) {
  VariantArgs a;
  auto str_or_list = [&](const char* key, std::string& out) {
    if (!j.contains(key)) return;
    const auto& v = j[key];
    if (v.is_string()) {
      out = v.get<std::string>();
    } else if (v.is_array()) {
      std::string s;
      for (const auto& e : v) s += (s.empty() ? "" : ",") + e.dump();
      out = s;
    } else {
      usage_error("grid: '", key, "' must be a list or a comma-separated string");
    }
  };
  // Numbers through io::json_* (type and range checked: a float read with value<int64_t> would be
  // truncated, or undefined behaviour when out of range; the JSON comes from grid files and checkpoints).
  auto int_or = [&](const char* key, int64_t fallback) {
    return j.contains(key) ? io::json_int(j[key], cat("\"", key, "\"")) : fallback;
  };
  auto float_or = [&](const char* key, float fallback) {
    return j.contains(key) ? io::json_float(j[key], cat("\"", key, "\"")) : fallback;
  };
  a.recipe = j.value("recipe", std::string());
  str_or_list("prefix-weights", a.prefix_weights);
  str_or_list("group-k", a.group_k);
  a.no_bdec_term = j.value("no-bdec-term", false);
  a.stop_gradient_groups = j.value("stop-gradient-groups", false);
  a.aux_detach = j.value("aux-detach", false);
  a.sampled_prefixes = int_or("sampled-prefixes", 0);
  a.prefix_distribution = j.value("prefix-distribution", std::string("pareto"));
  a.pareto_power = float_or("pareto-power", 0.5f);
  a.min_prefix = int_or("min-prefix", 1);
  a.reorder_every = int_or("reorder-every", 0);
  a.reorder_decay = float_or("reorder-decay", 0.95f);
  a.l1_coef = float_or("l1-coef", 1.2f);
  a.l1_adapt_rate = float_or("l1-adapt-rate", 3e-4f);
  a.l1_warmup_steps = int_or("l1-warmup-steps", -1);
  a.threshold_rate = float_or("threshold-rate", 0.01f);
  a.threshold_start_step = int_or("threshold-start-step", 0);
  a.beta2 = float_or("beta2", 0.99f);
  a.lr_warmup_steps = int_or("lr-warmup-steps", 0);
  a.lr_decay_start = int_or("lr-decay-start", -1);
  a.bdec_median = j.value("bdec-median", false);
  return a;
}

nlohmann::json variant_args_json(const VariantArgs& a) {
  return {{"recipe", a.recipe},
          {"prefix-weights", a.prefix_weights},
          {"group-k", a.group_k},
          {"no-bdec-term", a.no_bdec_term},
          {"stop-gradient-groups", a.stop_gradient_groups},
          {"aux-detach", a.aux_detach},
          {"sampled-prefixes", a.sampled_prefixes},
          {"prefix-distribution", a.prefix_distribution},
          {"pareto-power", a.pareto_power},
          {"min-prefix", a.min_prefix},
          {"reorder-every", a.reorder_every},
          {"reorder-decay", a.reorder_decay},
          {"l1-coef", a.l1_coef},
          {"l1-adapt-rate", a.l1_adapt_rate},
          {"l1-warmup-steps", a.l1_warmup_steps},
          {"threshold-rate", a.threshold_rate},
          {"threshold-start-step", a.threshold_start_step},
          {"beta2", a.beta2},
          {"lr-warmup-steps", a.lr_warmup_steps},
          {"lr-decay-start", a.lr_decay_start},
          {"bdec-median", a.bdec_median}};
}

nlohmann::json schedule_json(const train::TrainOptions& opt) {
  return {{"lr_warmup_steps", opt.lr_warmup_steps},
          {"lr_decay_start", opt.lr_decay_start},
          {"bdec_geometric_median", opt.bdec_geometric_median}};
}

}  // namespace msae::cli
