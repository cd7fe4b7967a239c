// The meta-SAE of Bussmann et al.: a BatchTopK SAE trained on the decoder rows of an SAE (msae/run.h).
#include <algorithm>
#include <utility>

#include "msae/run.h"

namespace msae::run {

MetaSaeResult meta_sae(const float* W_dec, int64_t D, int64_t d, const MetaSaeOptions& opt) {
  const int64_t width = D / std::max<int64_t>(1, opt.width_div);
  if (width < 16) usage_error("meta-SAE: width D / ", opt.width_div, " = ", width, " is below 16 (D = ", D, ")");
  SaeConfig cfg;
  cfg.arch = Arch::batchtopk;
  cfg.d_in = d;
  cfg.d_sae = width;
  cfg.k = opt.k;
  cfg.finalize();
  train::TrainOptions to;
  to.sae = cfg;
  to.batch = std::min(opt.batch, D);
  to.steps = opt.steps;
  to.seed = opt.seed;
  to.engine = "sparse";
  to.adam.lr = opt.lr;
  train::Trainer trainer(to, SaeParams::init(d, width, opt.seed));
  Rng rng(opt.seed ^ 0x6d657461ULL);
  LoopHooks hooks;
  hooks.next_batch = [&](float* batch) {  // decoder rows drawn with replacement
    for (int64_t r = 0; r < to.batch; ++r) {
      const int64_t i = static_cast<int64_t>(rng.below(static_cast<uint64_t>(D)));
      std::copy(W_dec + i * d, W_dec + (i + 1) * d, batch + r * d);
    }
    return true;
  };
  LoopSpec spec;
  spec.steps = opt.steps;
  spec.log_every = std::max<int64_t>(1, opt.steps);
  spec.label = "meta-SAE";
  train::MetricsInterval interval;
  LoopResult lr;
  run_loop(trainer, spec, interval, hooks, lr);
  data::DataOptions in_order;
  in_order.shuffle = false;  // file order, wrapping at the end
  auto src = data::open_array(W_dec, D, d, "decoder rows", in_order);
  const eval::EvalReport ev = eval::evaluate(cfg, std::as_const(trainer).params(), *src, D);
  MetaSaeResult res;
  res.width = width;
  res.k = opt.k;
  res.steps = opt.steps;
  res.explained_variance = ev.prefixes.back().explained_variance;
  return res;
}

}  // namespace msae::run
