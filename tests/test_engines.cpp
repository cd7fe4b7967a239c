// The sparse engine reproduces the dense reference engine (SPEC.md): loss terms, stats, every gradient,
// the threshold EMA and the dead counters, on several configurations; and full Trainer steps agree.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "msae/model.h"
#include "msae/train.h"

namespace msae {
namespace {

// max |a - b| / max |b| (0 when both are zero).
double rel_err(const float* a, const float* b, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return scale == 0 ? diff : diff / scale;
}

struct Case {
  std::string name;
  Arch arch;
  int64_t d, D, k, B;
  std::vector<int64_t> groups;
  bool encoder_bias;
  int64_t aux_k;
  double dead_share;  // fraction of latents whose counter says "dead unless it fires now"
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// Data with structure (a few directions + offset) so the SAE sees something like activations.
std::vector<float> make_batch(int64_t B, int64_t d, uint64_t seed) {
  Rng rng(seed);
  const int64_t dirs = 2 * d;
  std::vector<float> basis(dirs * d);
  for (float& v : basis) v = static_cast<float>(rng.normal());
  std::vector<float> x(B * d, 0.0f);
  for (int64_t r = 0; r < B; ++r) {
    for (int64_t f = 0; f < dirs; ++f)
      if (rng.uniform() < 0.2) {
        const float c = static_cast<float>(rng.uniform());
        for (int64_t j = 0; j < d; ++j) x[r * d + j] += c * basis[f * d + j];
      }
    for (int64_t j = 0; j < d; ++j) x[r * d + j] += 0.3f + 0.05f * static_cast<float>(rng.normal());
  }
  return x;
}

SaeConfig make_config(const Case& c) {
  SaeConfig cfg;
  cfg.arch = c.arch;
  cfg.d_in = c.d;
  cfg.d_sae = c.D;
  cfg.k = c.k;
  cfg.group_sizes = c.groups;
  cfg.encoder_bias = c.encoder_bias;
  cfg.aux_k = c.aux_k;
  cfg.dead_after_batches = 5;
  cfg.finalize();
  return cfg;
}

SaeParams make_params(const Case& c, uint64_t seed) {
  SaeParams p = SaeParams::init(c.d, c.D, seed);
  Rng rng(seed + 7);
  for (float& v : p.b_dec.data) v = 0.1f * static_cast<float>(rng.normal());
  if (c.encoder_bias)
    for (float& v : p.b_enc.data) v = 0.05f * static_cast<float>(rng.normal());
  p.threshold = 0.01f;
  return p;
}

LatentState make_state(const Case& c, int64_t dead_after) {
  LatentState s;
  s.n_inactive.assign(c.D, 0);
  const int64_t n = static_cast<int64_t>(c.dead_share * static_cast<double>(c.D));
  for (int64_t i = 0; i < n; ++i) s.n_inactive[c.D - 1 - 3 * i % c.D] = dead_after + 2;
  for (int64_t i = 0; i < c.D; i += 7) s.n_inactive[i] = std::max<int64_t>(s.n_inactive[i], 1);
  return s;
}

std::vector<Case> cases() {
  return {
      {"matryoshka_default", Arch::matryoshka, 32, 256, 8, 64, {}, false, 512, 0.0},
      {"matryoshka_default_auxk", Arch::matryoshka, 32, 256, 8, 64, {}, false, 512, 0.3},
      {"matryoshka_auxk_lt_dead", Arch::matryoshka, 24, 320, 6, 48, {}, false, 7, 0.4},
      {"matryoshka_custom_groups_bias", Arch::matryoshka, 20, 96, 4, 40, {10, 30, 56}, true, 5, 0.3},
      {"batchtopk", Arch::batchtopk, 32, 128, 5, 50, {}, false, 512, 0.2},
      {"batchtopk_bias", Arch::batchtopk, 16, 64, 3, 33, {}, true, 3, 0.5},
      {"topk", Arch::topk, 32, 128, 6, 40, {}, false, 512, 0.25},
      {"topk_groups", Arch::topk, 24, 96, 4, 30, {16, 32, 48}, false, 9, 0.3},
      {"matryoshka_wide", Arch::matryoshka, 64, 1024, 16, 128, {}, false, 64, 0.1},
  };
}

class EngineEquivalence : public ::testing::TestWithParam<Case> {};

// The sum of squares of all four gradients, in double: what the sparse engine reports in
// SaeGrads::sum_squares for the update's clipping norm.
double grad_sum_squares(const SaeGrads& g) {
  double s = 0.0;
  for (const Tensor* t : {&g.W_enc_t, &g.b_enc, &g.W_dec, &g.b_dec})
    for (float v : t->data) s += static_cast<double>(v) * v;
  return s;
}

// Both AuxK paths of the sparse engine: dense GEMMs over the dead columns, and sparse products.
struct AuxPath {
  const char* name;
  double min_density;
};
constexpr AuxPath kAuxPaths[] = {{"dense AuxK", 0.0}, {"sparse AuxK", 2.0}};

void check_engine_case(const Case& c, const SaeConfig& cfg, std::unique_ptr<StepEngine> fast) {
  auto ref = make_reference_engine();
  SaeParams p_ref = make_params(c, 11), p_fast = make_params(c, 11);
  LatentState s_ref = make_state(c, cfg.dead_after_batches), s_fast = s_ref;
  SaeGrads g_ref = SaeGrads::zeros(c.d, c.D), g_fast = SaeGrads::zeros(c.d, c.D);
  // Garbage in the output gradients: the engine must overwrite every element.
  for (float& v : g_fast.W_dec.data) v = 123.0f;
  for (float& v : g_fast.W_enc_t.data) v = -7.0f;
  for (float& v : g_fast.b_enc.data) v = 5.0f;
  for (int call = 0; call < 2; ++call) {  // twice: the second call reuses the engine's buffers and cut hint
    const std::vector<float> x = make_batch(c.B, c.d, 100 + call);
    const StepStats a = ref->forward_backward(cfg, x.data(), c.B, p_ref, s_ref, g_ref);
    const StepStats b = fast->forward_backward(cfg, x.data(), c.B, p_fast, s_fast, g_fast);
    SCOPED_TRACE(c.name + " call " + std::to_string(call));
    EXPECT_NEAR(b.loss, a.loss, 1e-5 * std::abs(a.loss));
    EXPECT_NEAR(b.l_rec, a.l_rec, 1e-5 * std::abs(a.l_rec));
    EXPECT_NEAR(b.l_aux, a.l_aux, 1e-5 * std::abs(a.l_aux) + 1e-12);
    EXPECT_NEAR(b.mse_bdec, a.mse_bdec, 1e-5 * a.mse_bdec);
    ASSERT_EQ(b.mse_prefix.size(), a.mse_prefix.size());
    for (size_t g = 0; g < a.mse_prefix.size(); ++g) EXPECT_NEAR(b.mse_prefix[g], a.mse_prefix[g], 1e-5 * a.mse_prefix[g]);
    EXPECT_NEAR(b.var_x, a.var_x, 1e-9 * a.var_x);
    EXPECT_EQ(b.l0, a.l0);
    EXPECT_EQ(b.n_dead, a.n_dead);
    EXPECT_EQ(b.aux_active, a.aux_active);
    EXPECT_EQ(p_fast.threshold, p_ref.threshold);
    EXPECT_EQ(s_fast.n_inactive, s_ref.n_inactive);
    EXPECT_LT(rel_err(g_fast.W_dec.ptr(), g_ref.W_dec.ptr(), g_ref.W_dec.numel()), 2e-5);
    EXPECT_LT(rel_err(g_fast.W_enc_t.ptr(), g_ref.W_enc_t.ptr(), g_ref.W_enc_t.numel()), 2e-5);
    EXPECT_LT(rel_err(g_fast.b_dec.ptr(), g_ref.b_dec.ptr(), g_ref.b_dec.numel()), 2e-5);
    EXPECT_LT(rel_err(g_fast.b_enc.ptr(), g_ref.b_enc.ptr(), g_ref.b_enc.numel()), 2e-5);
    // The clipping norm the sparse engine accumulates on the fly (the update then skips its own pass);
    // the reference engine leaves it unknown.
    const double sq = grad_sum_squares(g_fast);
    EXPECT_NEAR(g_fast.sum_squares, sq, 1e-5 * sq);
    EXPECT_LT(g_ref.sum_squares, 0.0);
    if (c.dead_share > 0 && call == 0) {
      EXPECT_TRUE(a.aux_active) << "case should exercise AuxK";
    }
  }
}

TEST_P(EngineEquivalence, ForwardBackwardMatchesReference) {
  const Case c = GetParam();
  const SaeConfig cfg = make_config(c);
  for (const AuxPath& path : kAuxPaths) {
    SCOPED_TRACE(path.name);
    check_engine_case(c, cfg, make_sparse_engine({path.min_density}));
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, EngineEquivalence, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& param) { return param.param.name; });

// Several full optimizer steps through train::Trainer (engine + fused update) agree with the reference
// trainer, with dead latents appearing along the way.
TEST(EngineEquivalence, TrainerStepsAgree) {
  for (const Case& c : {cases()[1], cases()[3], cases()[6]}) {
    SCOPED_TRACE(c.name);
    train::TrainOptions opt;
    opt.sae = make_config(c);
    opt.sae.dead_after_batches = 2;
    opt.batch = c.B;
    opt.steps = 6;
    opt.engine = "reference";
    train::Trainer ref(opt, make_params(c, 3));
    opt.engine = "sparse";
    train::Trainer fast(opt, make_params(c, 3));
    for (int step = 0; step < 6; ++step) {
      const std::vector<float> x = make_batch(c.B, c.d, 500 + step);
      const StepStats a = ref.step(x.data());
      const StepStats b = fast.step(x.data());
      EXPECT_NEAR(b.loss, a.loss, 1e-4 * std::abs(a.loss));
      EXPECT_EQ(b.n_dead, a.n_dead);
      EXPECT_NEAR(fast.last_grad_norm(), ref.last_grad_norm(), 1e-4 * ref.last_grad_norm());
    }
    const SaeParams& pa = ref.params();
    const SaeParams& pb = fast.params();
    EXPECT_LT(rel_err(pb.W_dec.ptr(), pa.W_dec.ptr(), pa.W_dec.numel()), 1e-4);
    EXPECT_LT(rel_err(pb.W_enc_t.ptr(), pa.W_enc_t.ptr(), pa.W_enc_t.numel()), 1e-4);
    EXPECT_LT(rel_err(pb.b_dec.ptr(), pa.b_dec.ptr(), pa.b_dec.numel()), 1e-4);
    EXPECT_LT(rel_err(pb.b_enc.ptr(), pa.b_enc.ptr(), pa.b_enc.numel()), 1e-4);
    EXPECT_NEAR(pb.threshold, pa.threshold, 1e-5 * std::abs(pa.threshold));
    EXPECT_EQ(fast.latent_state().n_inactive, ref.latent_state().n_inactive);
  }
}

// Clipping active (tiny max_grad_norm): the fused update scales exactly like the reference's in-place clip.
TEST(EngineEquivalence, ClippedTrainerStepsAgree) {
  const Case c = cases()[0];
  train::TrainOptions opt;
  opt.sae = make_config(c);
  opt.batch = c.B;
  opt.max_grad_norm = 1e-4f;
  opt.engine = "reference";
  train::Trainer ref(opt, make_params(c, 5));
  opt.engine = "sparse";
  train::Trainer fast(opt, make_params(c, 5));
  for (int step = 0; step < 3; ++step) {
    const std::vector<float> x = make_batch(c.B, c.d, 900 + step);
    ref.step(x.data());
    fast.step(x.data());
  }
  EXPECT_LT(rel_err(fast.params().W_dec.ptr(), ref.params().W_dec.ptr(), ref.params().W_dec.numel()), 1e-4);
  EXPECT_LT(rel_err(fast.params().W_enc_t.ptr(), ref.params().W_enc_t.ptr(), ref.params().W_enc_t.numel()), 1e-4);
}

}  // namespace
}  // namespace msae

// ---- Variants and ablation switches the sparse engine implements (docs/variants.md): the same
// forward/backward as the reference, on top of the SPEC cases above.
namespace msae {
namespace {

struct VariantEngineCase {
  std::string name;
  Case base;
  std::function<void(SaeConfig&)> tweak;
};
void PrintTo(const VariantEngineCase& c, std::ostream* os) { *os << c.name; }

std::vector<VariantEngineCase> variant_engine_cases() {
  const Case m = cases()[1];   // matryoshka_default_auxk: d 32, D 256 (groups 16,16,32,64,128), k 8, B 64
  const Case cg = cases()[3];  // matryoshka_custom_groups_bias: groups 10, 30, 56, AuxK
  const Case tg = cases()[7];  // topk_groups: groups 16, 32, 48
  return {
      {"prefix_weights_auxk", m, [](SaeConfig& c) { c.prefix_weights = {0.25f, 1.0f, 0.0f, 2.0f, 1.5f}; }},
      {"no_bdec_term", m, [](SaeConfig& c) { c.bdec_loss_term = false; }},
      {"stop_gradient_auxk", m, [](SaeConfig& c) { c.stop_gradient_groups = true; }},
      {"aux_detach", m, [](SaeConfig& c) { c.aux_detach = true; }},
      {"group_k", cg, [](SaeConfig& c) { c.group_k = {1, 1, 2}; }},
      {"group_k_topk", tg, [](SaeConfig& c) { c.group_k = {1, 2, 1}; }},
      {"threshold_rate", m, [](SaeConfig& c) { c.threshold_rate = 0.2f; }},
      {"sampled_like_groups", m, [](SaeConfig& c) { c.group_sizes = {1, 2, 7, 50, 196}; }},
      {"all_switches", cg,
       [](SaeConfig& c) {
         c.prefix_weights = {2.0f, 0.5f, 1.0f};
         c.bdec_loss_term = false;
         c.stop_gradient_groups = true;
         c.aux_detach = true;
         c.group_k = {2, 1, 1};
       }},
  };
}

class VariantEngineEquivalence : public ::testing::TestWithParam<VariantEngineCase> {};

void check_variant_case(const VariantEngineCase& vc, const SaeConfig& cfg, std::unique_ptr<StepEngine> fast) {
  const Case& c = vc.base;
  auto ref = make_reference_engine();
  ASSERT_EQ(fast->unsupported(cfg), "");
  SaeParams p_ref = make_params(c, 11), p_fast = make_params(c, 11);
  LatentState s_ref = make_state(c, cfg.dead_after_batches), s_fast = s_ref;
  SaeGrads g_ref = SaeGrads::zeros(c.d, c.D), g_fast = SaeGrads::zeros(c.d, c.D);
  for (int call = 0; call < 2; ++call) {
    const std::vector<float> x = make_batch(c.B, c.d, 300 + call);
    const StepStats a = ref->forward_backward(cfg, x.data(), c.B, p_ref, s_ref, g_ref);
    const StepStats b = fast->forward_backward(cfg, x.data(), c.B, p_fast, s_fast, g_fast);
    SCOPED_TRACE(vc.name + " call " + std::to_string(call));
    EXPECT_NEAR(b.loss, a.loss, 1e-5 * std::abs(a.loss));
    EXPECT_NEAR(b.l_rec, a.l_rec, 1e-5 * std::abs(a.l_rec));
    EXPECT_NEAR(b.l_aux, a.l_aux, 1e-5 * std::abs(a.l_aux) + 1e-12);
    EXPECT_EQ(b.l0, a.l0);
    EXPECT_EQ(b.n_dead, a.n_dead);
    EXPECT_EQ(b.aux_active, a.aux_active);
    EXPECT_EQ(p_fast.threshold, p_ref.threshold);
    EXPECT_LT(rel_err(g_fast.W_dec.ptr(), g_ref.W_dec.ptr(), g_ref.W_dec.numel()), 2e-5);
    EXPECT_LT(rel_err(g_fast.W_enc_t.ptr(), g_ref.W_enc_t.ptr(), g_ref.W_enc_t.numel()), 2e-5);
    EXPECT_LT(rel_err(g_fast.b_dec.ptr(), g_ref.b_dec.ptr(), g_ref.b_dec.numel()), 2e-5);
    EXPECT_LT(rel_err(g_fast.b_enc.ptr(), g_ref.b_enc.ptr(), g_ref.b_enc.numel()), 2e-5);
    const double sq = grad_sum_squares(g_fast);
    EXPECT_NEAR(g_fast.sum_squares, sq, 1e-5 * sq);
    if (call == 0) {
      EXPECT_TRUE(a.aux_active) << "case should exercise AuxK";
    }
  }
}

TEST_P(VariantEngineEquivalence, ForwardBackwardMatchesReference) {
  const VariantEngineCase& vc = GetParam();
  SaeConfig cfg = make_config(vc.base);
  vc.tweak(cfg);
  cfg.finalize();
  for (const AuxPath& path : kAuxPaths) {
    SCOPED_TRACE(path.name);
    check_variant_case(vc, cfg, make_sparse_engine({path.min_density}));
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, VariantEngineEquivalence, ::testing::ValuesIn(variant_engine_cases()),
                         [](const ::testing::TestParamInfo<VariantEngineCase>& param) { return param.param.name; });

// Trainer-level variants (sampled prefixes drawn per batch, latent reordering, the threshold schedule):
// both engines see the same per-batch configs and agree over several steps.
TEST(VariantEngineEquivalence, TrainerWithSampledPrefixesAndReorderingAgrees) {
  const Case c = cases()[1];
  train::TrainOptions opt;
  opt.sae = make_config(c);
  opt.sae.dead_after_batches = 2;
  opt.sae.sampled_prefixes = 6;
  opt.sae.reorder_every = 2;
  opt.sae.threshold_start_step = 2;
  opt.batch = c.B;
  opt.steps = 6;
  opt.seed = 9;
  opt.engine = "reference";
  train::Trainer ref(opt, make_params(c, 3));
  opt.engine = "sparse";
  train::Trainer fast(opt, make_params(c, 3));
  for (int step = 0; step < 6; ++step) {
    const std::vector<float> x = make_batch(c.B, c.d, 700 + step);
    const StepStats a = ref.step(x.data());
    const StepStats b = fast.step(x.data());
    EXPECT_NEAR(b.loss, a.loss, 1e-4 * std::abs(a.loss));
    ASSERT_EQ(b.mse_prefix.size(), a.mse_prefix.size());
    EXPECT_EQ(a.mse_prefix.size(), 6u) << "6 sampled prefixes per batch";
  }
  EXPECT_GT(ref.variant_state().permutations(), 0) << "reordering should have permuted at least once";
  EXPECT_EQ(fast.variant_state().permutations(), ref.variant_state().permutations());
  EXPECT_LT(rel_err(fast.params().W_dec.ptr(), ref.params().W_dec.ptr(), ref.params().W_dec.numel()), 1e-4);
  EXPECT_LT(rel_err(fast.params().W_enc_t.ptr(), ref.params().W_enc_t.ptr(), ref.params().W_enc_t.numel()), 1e-4);
  EXPECT_EQ(fast.latent_state().n_inactive, ref.latent_state().n_inactive);
}

// relu_l1 is reference-only: the sparse engine is a usage error at construction, never a silent fallback.
TEST(VariantEngineEquivalence, SparseRefusesReluL1) {
  const Case c = cases()[0];
  train::TrainOptions opt;
  opt.sae = make_config(c);
  opt.sae.arch = Arch::relu_l1;
  opt.batch = c.B;
  opt.engine = "sparse";
  try {
    train::Trainer t(opt, make_params(c, 1));
    FAIL() << "expected a usage error";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_NE(std::string(e.what()).find("--engine reference"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace msae
