// SPEC "Update": clip, decoder constraint, Adam, in that order (fused kernels: src/kernels/update.cpp;
// their unfused twins in src/kernels/ref are the test oracle).
#include <array>
#include <cmath>

#include "msae/train.h"

namespace msae::train {
namespace {

// The tensors Adam trains, paired with their gradients and moments.
struct TrainedTensor {
  Tensor* param;
  Tensor* grad;
  Tensor* m;
  Tensor* v;
};

// At most four; a fixed array, so that the update allocates nothing.
struct TrainedTensors {
  std::array<TrainedTensor, 4> items;
  size_t n = 0;
  const TrainedTensor* begin() const { return items.data(); }
  const TrainedTensor* end() const { return items.data() + n; }
};

TrainedTensors trained_tensors(const SaeConfig& cfg, SaeParams& p, SaeGrads& g, AdamState& opt) {
  TrainedTensors list;
  list.items[list.n++] = {&p.W_enc_t, &g.W_enc_t, &opt.m.W_enc_t, &opt.v.W_enc_t};
  list.items[list.n++] = {&p.W_dec, &g.W_dec, &opt.m.W_dec, &opt.v.W_dec};
  list.items[list.n++] = {&p.b_dec, &g.b_dec, &opt.m.b_dec, &opt.v.b_dec};
  if (cfg.encoder_bias) list.items[list.n++] = {&p.b_enc, &g.b_enc, &opt.m.b_enc, &opt.v.b_enc};
  return list;
}

}  // namespace

double apply_update(const SaeConfig& cfg, const kernels::AdamHyper& adam, float max_grad_norm, SaeParams& p,
                    SaeGrads& g, AdamState& opt) {
  if (opt.m.W_dec.data.empty()) {
    opt.m = SaeGrads::zeros(p.d, p.D);
    opt.v = SaeGrads::zeros(p.d, p.D);
  }
  const auto tensors = trained_tensors(cfg, p, g, opt);

  // 1. Global gradient-norm clipping (torch.nn.utils.clip_grad_norm_: coef = max / (norm + 1e-6), capped at 1).
  //    The scaling is applied on the fly by the kernels below (same float product as scaling in place).
  double total = g.sum_squares;  // from the engine when it had the rows in cache (b_enc included even
  if (total < 0.0) {               // without the encoder bias: it is all zeros then)
    total = 0.0;
    for (const auto& t : tensors) total += kernels::sum_squares(t.grad->ptr(), t.grad->numel());
  }
  g.sum_squares = -1.0;
  const double grad_norm = std::sqrt(total);
  const double coef = static_cast<double>(max_grad_norm) / (grad_norm + 1e-6);
  const float scale = coef < 1.0 ? static_cast<float>(coef) : 1.0f;

  // 2 + 3. Decoder constraint fused with Adam per W_dec row, then Adam on the other tensors. One pass
  // over each tensor; `g` itself is left as the engine computed it.
  opt.t += 1;
  for (const auto& t : tensors) {
    if (t.param == &p.W_dec)
      kernels::decoder_constraint_adam(p.W_dec.ptr(), g.W_dec.ptr(), opt.m.W_dec.ptr(), opt.v.W_dec.ptr(), p.D, p.d,
                                       adam, opt.t, scale);
    else
      kernels::adam_update(t.param->ptr(), t.grad->ptr(), t.m->ptr(), t.v->ptr(), t.param->numel(), adam, opt.t,
                           scale);
  }
  return grad_norm;
}

}  // namespace msae::train
