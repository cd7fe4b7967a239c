// The screened engine over a whole training run (issue 25): at every one of 2000 steps of training on the
// embedded synthetic data, its selected codes equal, bit for bit, the exact selection (every pre-activation
// by kernels::exact_dot, then batch_topk) made from the same parameters, with AuxK active in some steps.
#include <gtest/gtest.h>

#include "msae/data.h"
#include "msae/engine.h"
#include "msae/kernels_ref.h"
#include "msae/train.h"

using namespace msae;

TEST(Screened, SelectionEqualsExactSelectionForAWholeRun) {
  const auto source = data::open_synthetic(3);
  const int64_t d = source->d(), D = 256, B = 128, steps = 2000;
  SaeConfig cfg;
  cfg.d_in = d;
  cfg.d_sae = D;
  cfg.k = 4;
  cfg.dead_after_batches = 5;  // latents die within the run, so AuxK runs
  cfg.finalize();
  auto engine = train::make_engine("screened");
  ASSERT_STREQ(engine->name(), "screened");
  SaeParams p = SaeParams::init(d, D, 11);
  SaeGrads g = SaeGrads::zeros(d, D);
  train::AdamState opt;
  LatentState state;
  state.n_inactive.assign(D, 0);
  kernels::AdamHyper hyper;
  hyper.lr = 1e-3f;
  std::vector<float> x(B * d), xc(B * d);
  kernels::SparseCodes want;
  int64_t aux_steps = 0, fallback_steps = 0;
  double candidates = 0;
  for (int64_t s = 0; s < steps; ++s) {
    source->next_batch(B, x.data());
    for (int64_t r = 0; r < B; ++r)
      for (int64_t j = 0; j < d; ++j) xc[r * d + j] = x[r * d + j] - p.b_dec.data[j];
    kernels::ref::screened_batch_topk(xc.data(), B, d, p.W_enc_t.ptr(), nullptr, D, cfg.k * B, want);
    const StepStats& st = engine->forward_backward(cfg, x.data(), B, p, state, g);
    const kernels::SparseCodes& got = *engine->last_codes();
    ASSERT_EQ(got.row_ptr, want.row_ptr) << "step " << s;
    ASSERT_EQ(got.ids, want.ids) << "step " << s;
    for (size_t e = 0; e < want.vals.size(); ++e) ASSERT_EQ(got.vals[e], want.vals[e]) << "step " << s << " entry " << e;
    aux_steps += st.aux_active;
    for (const auto& [name, v] : engine->last_counters()) {
      if (name == "screen_fp32_fallback") fallback_steps += v > 0;
      if (name == "screen_candidates_per_kept") candidates += v;
    }
    train::apply_update(cfg, hyper, 1.0f, p, g, opt);
  }
  EXPECT_GT(aux_steps, 0) << "AuxK never ran";
  // Report what the run measured (the ratio that decides the speed of the screened step).
  std::printf("screened run: %lld steps, AuxK in %lld, fp32 fallback in %lld, mean candidates per kept entry %.2f\n",
              static_cast<long long>(steps), static_cast<long long>(aux_steps), static_cast<long long>(fallback_steps),
              candidates / static_cast<double>(steps));
}
