// Shared by the tests that train on the embedded synthetic dataset.
#pragma once

#include <string>
#include <vector>

#include "msae/data.h"
#include "msae/train.h"

namespace msae::testing_support {

// Trains with the given engine on the embedded synthetic stream, with `msae train`'s defaults there.
inline train::Trainer train_synthetic(const std::string& engine, int64_t steps, uint64_t seed, Arch arch = Arch::matryoshka) {
  auto source = data::open_synthetic(seed);
  train::TrainOptions opt;
  opt.sae.arch = arch;
  opt.sae.d_in = source->d();
  opt.sae.d_sae = data::SyntheticDefaults::d_sae;
  opt.sae.k = data::SyntheticDefaults::k;
  opt.batch = data::SyntheticDefaults::batch;
  opt.steps = steps;
  opt.engine = engine;
  opt.sae.finalize();
  train::Trainer trainer(opt, SaeParams::init(opt.sae.d_in, opt.sae.d_sae, seed));
  std::vector<float> batch(opt.batch * opt.sae.d_in);
  for (int64_t s = 0; s < steps; ++s) {
    source->next_batch(opt.batch, batch.data());
    trainer.step(batch.data());
  }
  return trainer;
}

}  // namespace msae::testing_support
