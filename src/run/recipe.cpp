// Options -> SaeConfig + TrainOptions, with the recipes of other trainers as presets (docs/variants.md).
#include <cmath>
#include <limits>

#include "msae/comm.h"
#include "msae/run.h"

namespace msae::run {

train::TrainOptions make_train_options(const Options& o, int64_t d, const DataDefaults& def) {
  train::TrainOptions t;
  SaeConfig& cfg = t.sae;
  auto given = [&](const char* key) { return o.given(key); };
  cfg.arch = parse_arch(o.text("arch"));
  cfg.d_in = d;
  cfg.d_sae = o.automatic("d_sae") ? def.d_sae : o.integer("d_sae");
  cfg.k = o.automatic("k") ? def.k : o.integer("k");
  cfg.group_sizes = o.int_list("group_sizes");
  cfg.encoder_bias = o.flag("encoder_bias");
  cfg.dead_after_batches = o.integer("dead_after_batches");
  cfg.aux_k = o.integer("aux_k");
  cfg.aux_coef = static_cast<float>(o.real("aux_coef"));
  cfg.finalize();
  t.batch = o.automatic("batch") ? def.batch : o.integer("batch");
  if (given("steps") && given("tokens")) usage_error("give ", opt("steps"), " or ", opt("tokens"), ", not both");
  if (given("steps"))
    t.steps = o.integer("steps");
  else if (given("tokens"))
    t.steps = o.integer("tokens") / t.batch + (o.integer("tokens") % t.batch != 0);  // ceil, without overflow
  else
    t.steps = def.steps;
  // Every count derived from the run length (tokens = steps * batch) must fit in 64 bits.
  if (t.steps > std::numeric_limits<int64_t>::max() / t.batch)
    usage_error(opt(given("tokens") ? "tokens" : "steps"), ": ", t.steps, " steps of ", t.batch,
                " rows is more rows than msae can count (2^63)");
  // The sizes the buffers are made of: (d_sae, d) parameters (six copies with Adam and the gradients), the
  // (batch, d_sae) pre-activations and (batch, d) rows, in bytes, must fit in 64 bits (the memory estimate
  // then refuses what does not fit the machine).
  constexpr int64_t kMaxElems = std::numeric_limits<int64_t>::max() / 64;
  if (cfg.d_sae > kMaxElems / d)
    usage_error(opt("d_sae"), " ", cfg.d_sae, " x d_in ", d, " parameters are more than msae can address");
  if (t.batch > kMaxElems / cfg.d_sae || t.batch > kMaxElems / d)
    usage_error(opt("batch"), " ", t.batch, " x ", opt("d_sae"), " ", cfg.d_sae, " pre-activations (and ", t.batch, " x d_in ",
                d, " rows) are more than msae can address");
  t.adam.lr = static_cast<float>(o.real("lr"));
  t.max_grad_norm = static_cast<float>(o.real("max_grad_norm"));
  t.seed = static_cast<uint64_t>(o.integer("seed"));
  t.engine = o.text("engine");
  t.sparse_engine.aux_dense_min_density = o.real("aux_dense_density");
  t.adam.beta2 = static_cast<float>(o.real("beta2"));

  // ---- recipe defaults, only where the option was not given; the sources and the differences that
  // are not reproduced are listed in docs/variants.md.
  const int64_t D = cfg.d_sae, B = t.batch, G = cfg.num_groups();
  const std::string recipe = o.text("recipe");
  if (recipe == "bussmann") {
    // SPEC.md is written from the authors' code: nothing to change.
  } else if (recipe == "dictionary-learning") {
    if (!given("encoder_bias")) cfg.encoder_bias = true;
    if (!given("no_bdec_term")) cfg.bdec_loss_term = false;
    if (!given("prefix_weights")) cfg.prefix_weights.assign(G, 1.0f / static_cast<float>(G));
    if (!given("aux_detach")) cfg.aux_detach = true;
    if (!given("aux_k")) cfg.aux_k = std::max<int64_t>(1, d / 2);
    if (!given("dead_after_batches")) cfg.dead_after_batches = std::max<int64_t>(1, (10'000'000 + B - 1) / B);
    if (!given("threshold_rate")) cfg.threshold_rate = 0.001f;
    if (!given("threshold_start_step")) cfg.threshold_start_step = 1000;
    if (!given("beta2")) t.adam.beta2 = 0.999f;
    if (!given("max_grad_norm")) t.max_grad_norm = 1.0f;
    if (!given("lr_warmup_steps")) t.lr_warmup_steps = 1000;
    if (!given("bdec_median")) t.bdec_geometric_median = true;
    if (!given("lr")) t.adam.lr = static_cast<float>(2e-4 / std::sqrt(static_cast<double>(D) / 16384.0));
  } else if (recipe == "saelens") {
    if (!given("encoder_bias")) cfg.encoder_bias = true;
    if (!given("no_bdec_term")) cfg.bdec_loss_term = false;
    if (!given("aux_detach")) cfg.aux_detach = true;
    if (!given("aux_k")) cfg.aux_k = std::max<int64_t>(1, d / 2);
    // SAELens sums the level losses and adds AuxK with coefficient 1; msae averages the G levels, so the
    // same relative weight is 1/G.
    if (!given("aux_coef")) cfg.aux_coef = 1.0f / static_cast<float>(G);
    if (!given("dead_after_batches")) cfg.dead_after_batches = 1000;
    if (!given("beta2")) t.adam.beta2 = 0.999f;
  }
  // ---- explicit variant options
  if (given("prefix_weights")) {
    cfg.prefix_weights.clear();
    for (double w : o.real_list("prefix_weights")) cfg.prefix_weights.push_back(static_cast<float>(w));
  }
  if (given("no_bdec_term")) cfg.bdec_loss_term = !o.flag("no_bdec_term");
  if (given("stop_gradient_groups")) cfg.stop_gradient_groups = o.flag("stop_gradient_groups");
  if (given("aux_detach")) cfg.aux_detach = o.flag("aux_detach");
  if (given("group_k")) cfg.group_k = o.int_list("group_k");
  cfg.sampled_prefixes = o.integer("sampled_prefixes");
  cfg.prefix_distribution = o.text("prefix_distribution");
  cfg.pareto_power = static_cast<float>(o.real("pareto_power"));
  cfg.min_prefix = o.integer("min_prefix");
  cfg.reorder_every = o.integer("reorder_every");
  cfg.reorder_decay = static_cast<float>(o.real("reorder_decay"));
  // Nabeshima's 1.2 multiplies an MSE summed over the d columns; msae's MSE is a mean over them, so the
  // same strength is 1.2 / d.
  cfg.l1_coef = given("l1_coef") ? static_cast<float>(o.real("l1_coef")) : 1.2f / static_cast<float>(std::max<int64_t>(d, 1));
  cfg.l1_adapt_rate = static_cast<float>(o.real("l1_adapt_rate"));
  cfg.l1_warmup_steps = o.automatic("l1_warmup_steps") ? t.steps / 5 : o.integer("l1_warmup_steps");
  if (given("threshold_rate")) cfg.threshold_rate = static_cast<float>(o.real("threshold_rate"));
  if (given("threshold_start_step")) cfg.threshold_start_step = o.integer("threshold_start_step");
  if (given("lr_warmup_steps")) t.lr_warmup_steps = o.integer("lr_warmup_steps");
  if (given("lr_decay_start")) t.lr_decay_start = o.integer("lr_decay_start");
  if (given("bdec_median")) t.bdec_geometric_median = o.flag("bdec_median");
  if (given("init_encoder_norm")) t.init_encoder_norm = static_cast<float>(o.real("init_encoder_norm"));
  if (!(t.adam.beta2 > 0.0f && t.adam.beta2 < 1.0f)) usage_error(opt("beta2"), " must be in (0, 1), got ", t.adam.beta2);
  cfg.recipe = recipe;
  cfg.finalize();
  // --engine auto (the default): the sparse engine has no ReLU + L1 path, so relu_l1 trains on the
  // reference; large batch-wide BatchTopK runs in one process take the screened engine, faster there
  // (kernels::screen_pays; docs/performance.md); everything else the sparse engine.
  if (t.engine == "auto") {
    const bool batch_wide = (cfg.arch == Arch::batchtopk || cfg.arch == Arch::matryoshka) && cfg.group_k.empty();
    t.engine = cfg.arch == Arch::relu_l1 ? "reference"
               : batch_wide && comm::world().size() == 1 && kernels::screen_pays(t.batch, cfg.d_sae, d) ? "screened"
                                                                                                   : "sparse";
  }
  // --cuda-precision is the cuda engine's encoder GEMM (docs/cuda.md); no other engine has a choice to make.
  t.cuda_precision = o.text("cuda_precision");
  if (t.cuda_precision != "fp32" && t.engine != "cuda")
    usage_error(opt("cuda_precision"), " ", t.cuda_precision, " applies to ", opt("engine"), " cuda only, and this run uses ",
                opt("engine"), " ", t.engine, ": give ", opt("engine"), " cuda, or drop ", opt("cuda_precision"));
  return t;
}

nlohmann::json schedule_json(const train::TrainOptions& t) {
  return {{"lr_warmup_steps", t.lr_warmup_steps},
          {"lr_decay_start", t.lr_decay_start},
          {"bdec_geometric_median", t.bdec_geometric_median},
          {"init_encoder_norm", t.init_encoder_norm}};
}

}  // namespace msae::run
