#include <cmath>

#include "msae/model.h"

namespace msae {

SaeParams SaeParams::zeros(int64_t d, int64_t D) {
  SaeParams p;
  p.d = d;
  p.D = D;
  p.W_enc_t = Tensor({D, d});
  p.b_enc = Tensor({D});
  p.W_dec = Tensor({D, d});
  p.b_dec = Tensor({d});
  return p;
}

SaeParams SaeParams::init(int64_t d, int64_t D, uint64_t seed, float encoder_norm) {
  SaeParams p = zeros(d, D);
  // kaiming_uniform_ on a (d, D) tensor: fan_in = D, gain sqrt(2), bound = gain * sqrt(3 / fan_in).
  const float bound = static_cast<float>(std::sqrt(6.0 / static_cast<double>(D)));
  Rng rng(seed);
  // Drawn in W_enc's (d, D) order so the stream means the same thing as PyTorch's layout.
  for (int64_t j = 0; j < d; ++j)
    for (int64_t i = 0; i < D; ++i) p.W_enc_t.data[i * d + j] = rng.uniform(-bound, bound);
  for (int64_t i = 0; i < D; ++i) {
    const float* src = p.W_enc_t.ptr() + i * d;
    float* dst = p.W_dec.ptr() + i * d;
    double norm2 = 0.0;
    for (int64_t j = 0; j < d; ++j) norm2 += static_cast<double>(src[j]) * src[j];
    const float inv = static_cast<float>(1.0 / std::sqrt(norm2));
    for (int64_t j = 0; j < d; ++j) dst[j] = src[j] * inv;
    if (encoder_norm > 0.0f) {
      float* enc = p.W_enc_t.ptr() + i * d;
      for (int64_t j = 0; j < d; ++j) enc[j] = dst[j] * encoder_norm;
    }
  }
  return p;
}

SaeGrads SaeGrads::zeros(int64_t d, int64_t D) {
  SaeGrads g;
  g.W_enc_t = Tensor({D, d});
  g.b_enc = Tensor({D});
  g.W_dec = Tensor({D, d});
  g.b_dec = Tensor({d});
  return g;
}

}  // namespace msae
