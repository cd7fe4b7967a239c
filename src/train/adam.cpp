// SPEC "Update": clip, decoder constraint, Adam, in that order.
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

std::vector<TrainedTensor> trained_tensors(const SaeConfig& cfg, SaeParams& p, SaeGrads& g, AdamState& opt) {
  std::vector<TrainedTensor> list = {
      {&p.W_enc_t, &g.W_enc_t, &opt.m.W_enc_t, &opt.v.W_enc_t},
      {&p.W_dec, &g.W_dec, &opt.m.W_dec, &opt.v.W_dec},
      {&p.b_dec, &g.b_dec, &opt.m.b_dec, &opt.v.b_dec},
  };
  if (cfg.encoder_bias) list.push_back({&p.b_enc, &g.b_enc, &opt.m.b_enc, &opt.v.b_enc});
  return list;
}

// grad_i -= (grad_i . u_i) u_i and W_dec[i] = u_i with u_i = W_dec[i] / ||W_dec[i]||.
void constrain_decoder(Tensor& W_dec, Tensor& grad, int64_t D, int64_t d) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < D; ++i) {
    float* w = W_dec.ptr() + i * d;
    float* gr = grad.ptr() + i * d;
    float norm2 = 0.0f;
    for (int64_t j = 0; j < d; ++j) norm2 += w[j] * w[j];
    const float norm = std::sqrt(norm2);
    float dot = 0.0f;
    for (int64_t j = 0; j < d; ++j) {
      w[j] /= norm;
      dot += gr[j] * w[j];
    }
    for (int64_t j = 0; j < d; ++j) gr[j] -= dot * w[j];
  }
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
  double total = 0.0;
  for (const auto& t : tensors) total += kernels::sum_squares(t.grad->ptr(), t.grad->numel());
  const double grad_norm = std::sqrt(total);
  const double coef = static_cast<double>(max_grad_norm) / (grad_norm + 1e-6);
  if (coef < 1.0) {
    const float c = static_cast<float>(coef);
    for (const auto& t : tensors)
      for (float& x : t.grad->data) x *= c;
  }

  // 2. Decoder constraint.
  constrain_decoder(p.W_dec, g.W_dec, p.D, p.d);

  // 3. Adam.
  opt.t += 1;
  for (const auto& t : tensors)
    kernels::adam_update(t.param->ptr(), t.grad->ptr(), t.m->ptr(), t.v->ptr(), t.param->numel(), adam, opt.t);
  return grad_norm;
}

}  // namespace msae::train
