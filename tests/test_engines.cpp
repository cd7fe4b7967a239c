// Every registered engine (engine.h) reproduces the dense reference engine (SPEC.md): loss terms, stats,
// every gradient, the threshold EMA and the dead counters, on several configurations; and full optimizer
// steps agree. The table-driven check at the end runs every engine over every arch x every variant of the
// registry, step by step, and is itself checked against deliberately broken engines.
//
// Tolerances: one forward/backward in float32 with a different summation order gives gradients within
// 2e-5 of the largest entry (relative, max-norm) and loss terms within 1e-5; the selection, the threshold
// and the dead counters are exact (the engines compute the pre-activations with the same GEMM). After a few
// optimizer steps the round-off of the gradients goes through Adam's m / sqrt(v) (close to sign(g) on the
// first step), so parameters and moments are compared at 1e-4 of the tensor's largest entry.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>

#include "msae/engine.h"
#include "msae/model.h"
#include "msae/train.h"

#include "compare.h"

namespace msae {
namespace {

// Engines whose selected values are not the fp32 GEMM's: the screened engine computes them with
// kernels::exact_dot (docs/performance.md, "Screened selection"), so its threshold EMA, made of the cut
// values, agrees with the reference's to float round-off instead of bit for bit.
bool exact_dot_values(const std::string& engine) { return engine == "screened"; }

}  // namespace

namespace {

using testing_support::rel_err;

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

// SPEC init plus small random biases and a positive threshold, so that every term of the step is exercised.
SaeParams random_params(int64_t d, int64_t D, bool encoder_bias, uint64_t seed) {
  SaeParams p = SaeParams::init(d, D, seed);
  Rng rng(seed + 7);
  for (float& v : p.b_dec.data) v = 0.1f * static_cast<float>(rng.normal());
  if (encoder_bias)
    for (float& v : p.b_enc.data) v = 0.05f * static_cast<float>(rng.normal());
  p.threshold = 0.01f;
  return p;
}

SaeParams make_params(const Case& c, uint64_t seed) { return random_params(c.d, c.D, c.encoder_bias, seed); }

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

// Every registered engine but the reference (the oracle, first in the registry).
std::vector<const train::EngineEntry*> engines_under_test() {
  std::vector<const train::EngineEntry*> out;
  for (const train::EngineEntry& e : train::engine_registry())
    if (e.name != "reference") out.push_back(&e);
  return out;
}

// Engines that compute the pre-activations with their own GEMM (the cuda engine: cuBLAS on a GPU) select the
// same entries, but the cut (the smallest kept value, the threshold EMA's input) can differ from the host
// GEMM's in the last bits: their threshold is compared at 1e-6 relative, the host engines' exactly.
// (The screened engine's cut values come from kernels::exact_dot: the same tolerance, exact_dot_values above.)
double threshold_tolerance(const std::string& engine) {
  return engine == "cuda" || exact_dot_values(engine) ? 1e-6 : 0.0;
}
void expect_threshold(const std::string& engine, float got, float want) {
  if (threshold_tolerance(engine) == 0.0) {
    EXPECT_EQ(got, want);
  } else {
    EXPECT_NEAR(got, want, threshold_tolerance(engine) * std::abs(want));
  }
}

// Whether the engine runs this finalized config here (an engine without its device, the cuda engine on a
// machine without a GPU, supports nothing and says why).
bool runs_here(const train::EngineEntry& e, const SaeConfig& cfg) {
  const std::string why = e.unsupported(cfg);
  if (!why.empty() && e.name == "cuda")
    std::cout << "[ engine " << e.name << " ] skipped: " << why << "\n";
  return why.empty();
}

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
    expect_threshold(fast->name(), p_fast.threshold, p_ref.threshold);
    EXPECT_EQ(s_fast.n_inactive, s_ref.n_inactive);
    EXPECT_LT(rel_err(g_fast.W_dec.ptr(), g_ref.W_dec.ptr(), g_ref.W_dec.numel()), 2e-5);
    EXPECT_LT(rel_err(g_fast.W_enc_t.ptr(), g_ref.W_enc_t.ptr(), g_ref.W_enc_t.numel()), 2e-5);
    EXPECT_LT(rel_err(g_fast.b_dec.ptr(), g_ref.b_dec.ptr(), g_ref.b_dec.numel()), 2e-5);
    EXPECT_LT(rel_err(g_fast.b_enc.ptr(), g_ref.b_enc.ptr(), g_ref.b_enc.numel()), 2e-5);
    // The clipping norm an engine may accumulate on the fly (the update then skips its own pass; the
    // sparse engine does); the reference engine leaves it unknown.
    const double sq = grad_sum_squares(g_fast);
    if (std::string(fast->name()) != "reference") {  // the sparse engines
      EXPECT_GE(g_fast.sum_squares, 0.0);
    }
    if (g_fast.sum_squares >= 0.0) {
      EXPECT_NEAR(g_fast.sum_squares, sq, 1e-5 * sq);
    }
    EXPECT_LT(g_ref.sum_squares, 0.0);
    if (c.dead_share > 0 && call == 0) {
      EXPECT_TRUE(a.aux_active) << "case should exercise AuxK";
    }
  }
}

TEST_P(EngineEquivalence, ForwardBackwardMatchesReference) {
  const Case c = GetParam();
  const SaeConfig cfg = make_config(c);
  for (const train::EngineEntry* e : engines_under_test()) {
    if (!e->unsupported(cfg).empty()) continue;
    for (const AuxPath& path : kAuxPaths) {
      SCOPED_TRACE(e->name + ", " + path.name);
      check_engine_case(c, cfg, e->make_step({path.min_density}));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, EngineEquivalence, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& param) { return param.param.name; });

// Several full optimizer steps through train::Trainer (engine + fused update) agree with the reference
// trainer, with dead latents appearing along the way.
TEST(EngineEquivalence, TrainerStepsAgree) {
  for (const train::EngineEntry* e : engines_under_test())
  for (const Case& c : {cases()[1], cases()[3], cases()[6]}) {
    SCOPED_TRACE(e->name + ", " + c.name);
    train::TrainOptions opt;
    opt.sae = make_config(c);
    if (!runs_here(*e, opt.sae)) continue;
    opt.sae.dead_after_batches = 2;
    opt.batch = c.B;
    opt.steps = 6;
    opt.engine = "reference";
    train::Trainer ref(opt, make_params(c, 3));
    opt.engine = e->name;
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
  for (const train::EngineEntry* e : engines_under_test()) {
  SCOPED_TRACE(e->name);
  const Case c = cases()[0];
  train::TrainOptions opt;
  opt.sae = make_config(c);
  if (!runs_here(*e, opt.sae)) continue;
  opt.batch = c.B;
  opt.max_grad_norm = 1e-4f;
  opt.engine = "reference";
  train::Trainer ref(opt, make_params(c, 5));
  opt.engine = e->name;
  train::Trainer fast(opt, make_params(c, 5));
  for (int step = 0; step < 3; ++step) {
    const std::vector<float> x = make_batch(c.B, c.d, 900 + step);
    ref.step(x.data());
    fast.step(x.data());
  }
  EXPECT_LT(rel_err(fast.params().W_dec.ptr(), ref.params().W_dec.ptr(), ref.params().W_dec.numel()), 1e-4);
  EXPECT_LT(rel_err(fast.params().W_enc_t.ptr(), ref.params().W_enc_t.ptr(), ref.params().W_enc_t.numel()), 1e-4);
  }
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
    expect_threshold(fast->name(), p_fast.threshold, p_ref.threshold);
    EXPECT_LT(rel_err(g_fast.W_dec.ptr(), g_ref.W_dec.ptr(), g_ref.W_dec.numel()), 2e-5);
    EXPECT_LT(rel_err(g_fast.W_enc_t.ptr(), g_ref.W_enc_t.ptr(), g_ref.W_enc_t.numel()), 2e-5);
    EXPECT_LT(rel_err(g_fast.b_dec.ptr(), g_ref.b_dec.ptr(), g_ref.b_dec.numel()), 2e-5);
    EXPECT_LT(rel_err(g_fast.b_enc.ptr(), g_ref.b_enc.ptr(), g_ref.b_enc.numel()), 2e-5);
    const double sq = grad_sum_squares(g_fast);
    if (g_fast.sum_squares >= 0.0) {
      EXPECT_NEAR(g_fast.sum_squares, sq, 1e-5 * sq);
    }
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
  for (const train::EngineEntry* e : engines_under_test()) {
    if (!e->unsupported(cfg).empty()) continue;
    for (const AuxPath& path : kAuxPaths) {
      SCOPED_TRACE(e->name + ", " + path.name);
      check_variant_case(vc, cfg, e->make_step({path.min_density}));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, VariantEngineEquivalence, ::testing::ValuesIn(variant_engine_cases()),
                         [](const ::testing::TestParamInfo<VariantEngineCase>& param) { return param.param.name; });

// Trainer-level variants (sampled prefixes drawn per batch, latent reordering, the threshold schedule):
// both engines see the same per-batch configs and agree over several steps.
TEST(VariantEngineEquivalence, TrainerWithSampledPrefixesAndReorderingAgrees) {
  for (const train::EngineEntry* e : engines_under_test()) {
  SCOPED_TRACE(e->name);
  const Case c = cases()[1];
  train::TrainOptions opt;
  opt.sae = make_config(c);
  opt.sae.dead_after_batches = 2;
  opt.sae.sampled_prefixes = 6;
  opt.sae.reorder_every = 2;
  opt.sae.threshold_start_step = 2;
  SaeConfig finalized = opt.sae;
  finalized.finalize();
  if (!runs_here(*e, finalized)) continue;
  opt.batch = c.B;
  opt.steps = 6;
  opt.seed = 9;
  opt.engine = "reference";
  train::Trainer ref(opt, make_params(c, 3));
  opt.engine = e->name;
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
}

// relu_l1 is reference-only: the sparse engine (and any engine whose registry entry says it does not
// implement it) is a usage error at construction, never a silent fallback.
TEST(VariantEngineEquivalence, SparseRefusesReluL1) {
  const Case c = cases()[0];
  train::TrainOptions opt;
  opt.sae = make_config(c);
  opt.sae.arch = Arch::relu_l1;
  opt.batch = c.B;
  SaeConfig finalized = opt.sae;
  finalized.finalize();
  EXPECT_NE(train::find_engine("sparse").unsupported(finalized), "");
  for (const train::EngineEntry* e : engines_under_test()) {
    if (e->unsupported(finalized).empty()) continue;
    opt.engine = e->name;
    try {
      train::Trainer t(opt, make_params(c, 1));
      ADD_FAILURE() << "expected a usage error from " << e->name;
    } catch (const Error& err) {
      EXPECT_EQ(err.exit_code(), 2);
      EXPECT_NE(std::string(err.what()).find("--engine reference"), std::string::npos) << err.what();
    }
  }
}

}  // namespace
}  // namespace msae

// ---- The table-driven equivalence check (in the spirit of ggml's test-backend-ops): every registered
// engine against the reference, over every arch x every variant of variant_registry() the engine claims
// to support, (a) gradient by gradient for one forward/backward and (b) step by step over whole
// optimizer steps. The checker returns its mismatches as text, so that it can itself be tested on
// deliberately broken engines.
namespace msae {
namespace {

constexpr Arch kArchs[] = {Arch::matryoshka, Arch::batchtopk, Arch::topk, Arch::relu_l1};
constexpr int64_t kTableD = 16, kTableDSae = 128, kTableK = 4, kTableB = 32;
constexpr int kTableSteps = 4;

// One arch x variant combination of the table: the finalized config, or why there is none (the variant
// sets another arch, or the combination is invalid).
struct TableConfig {
  std::string name;
  SaeConfig cfg;
  std::string skip;
};

TableConfig table_config(Arch arch, const VariantEntry& v) {
  TableConfig t;
  t.name = std::string(arch_name(arch)) + " x " + v.name;
  t.cfg.arch = arch;
  t.cfg.d_in = kTableD;
  t.cfg.d_sae = kTableDSae;
  t.cfg.k = kTableK;
  v.apply(t.cfg);
  if (t.cfg.arch != arch) {
    t.skip = std::string("the variant sets --arch ") + arch_name(t.cfg.arch);
    return t;
  }
  t.cfg.dead_after_batches = 2;  // dead latents (and AuxK) within the first steps
  t.cfg.aux_k = 24;
  try {
    t.cfg.finalize();
  } catch (const Error& e) {
    t.skip = std::string("not a valid combination: ") + e.what();
  }
  return t;
}

// Appends "what: detail" to out when a and b differ by more than tol * max|b| (max-norm, relative).
void compare_tensor(std::vector<std::string>& out, const std::string& what, const Tensor& a, const Tensor& b,
                    double tol) {
  if (a.numel() != b.numel()) {
    out.push_back(what + ": " + std::to_string(a.numel()) + " elements, reference " + std::to_string(b.numel()));
    return;
  }
  if (b.numel() == 0) return;
  const double e = rel_err(a.ptr(), b.ptr(), b.numel());
  if (!(e <= tol)) {
    std::ostringstream s;
    s << what << ": relative max-norm error " << e << " > " << tol;
    out.push_back(s.str());
  }
}

void compare_scalar(std::vector<std::string>& out, const std::string& what, double a, double b, double rel,
                    double abs = 0.0) {
  if (!(std::abs(a - b) <= rel * std::abs(b) + abs)) {
    std::ostringstream s;
    s.precision(9);
    s << what << ": " << a << ", reference " << b;
    out.push_back(s.str());
  }
}

template <class T>
void compare_exact(std::vector<std::string>& out, const std::string& what, const T& a, const T& b) {
  if (!(a == b)) out.push_back(what + ": differs from the reference");
}

void compare_stats(std::vector<std::string>& out, const std::string& at, const StepStats& a, const StepStats& b,
                   double tol) {
  compare_scalar(out, at + "loss", a.loss, b.loss, tol);
  compare_scalar(out, at + "l_rec", a.l_rec, b.l_rec, tol);
  compare_scalar(out, at + "l_aux", a.l_aux, b.l_aux, tol, 1e-12);
  compare_scalar(out, at + "l_sparsity", a.l_sparsity, b.l_sparsity, tol, 1e-12);
  compare_scalar(out, at + "mse_bdec", a.mse_bdec, b.mse_bdec, tol);
  compare_exact(out, at + "mse_prefix size", a.mse_prefix.size(), b.mse_prefix.size());
  for (size_t g = 0; g < std::min(a.mse_prefix.size(), b.mse_prefix.size()); ++g)
    compare_scalar(out, at + "mse_prefix[" + std::to_string(g) + "]", a.mse_prefix[g], b.mse_prefix[g], tol);
  compare_scalar(out, at + "var_x", a.var_x, b.var_x, 1e-9);
  compare_exact(out, at + "l0", a.l0, b.l0);
  compare_exact(out, at + "n_dead", a.n_dead, b.n_dead);
  compare_exact(out, at + "aux_active", a.aux_active, b.aux_active);
}

void compare_grads(std::vector<std::string>& out, const std::string& at, const SaeGrads& a, const SaeGrads& b,
                   double tol) {
  compare_tensor(out, at + "W_enc_t", a.W_enc_t, b.W_enc_t, tol);
  compare_tensor(out, at + "b_enc", a.b_enc, b.b_enc, tol);
  compare_tensor(out, at + "W_dec", a.W_dec, b.W_dec, tol);
  compare_tensor(out, at + "b_dec", a.b_dec, b.b_dec, tol);
}

SaeParams table_params(const SaeConfig& cfg, uint64_t seed) {
  return random_params(cfg.d_in, cfg.d_sae, cfg.encoder_bias, seed);
}

// Dead counters with a third of the latents dead (AuxK from the first step) and a few counting.
LatentState table_latents(const SaeConfig& cfg) {
  LatentState s;
  s.n_inactive.assign(cfg.d_sae, 0);
  for (int64_t i = 0; i < cfg.d_sae; ++i) {
    if (i % 3 == 2) s.n_inactive[i] = cfg.dead_after_batches + 1;
    else if (i % 7 == 0) s.n_inactive[i] = 1;
  }
  return s;
}

// The mismatches between `engine` and the reference on cfg (empty: equivalent within the tolerances at the
// top of this file). (a) two forward/backward calls of the engine's kernel (make_step) from the same state;
// (b) kTableSteps whole optimizer steps of the engine (make_training_engine, with the geometric-median
// b_dec init, an lr warm-up and decay), comparing after each step the statistics, grad norm, parameters,
// threshold, dead counters, Adam state and variant state.
std::vector<std::string> check_against_reference(const train::EngineEntry& engine, const SaeConfig& cfg,
                                                 const SparseEngineOptions& sparse) {
  std::vector<std::string> out;
  const train::EngineEntry& reference = train::find_engine("reference");
  // (a) Forward/backward.
  {
    auto ref = reference.make_step({});
    auto fast = engine.make_step(sparse);
    SaeParams p_ref = table_params(cfg, 11), p_fast = p_ref;
    LatentState s_ref = table_latents(cfg), s_fast = s_ref;
    SaeGrads g_ref = SaeGrads::zeros(cfg.d_in, cfg.d_sae), g_fast = g_ref;
    for (float& v : g_fast.W_dec.data) v = 123.0f;  // garbage: the engine must overwrite every element
    for (float& v : g_fast.b_enc.data) v = 5.0f;
    for (int call = 0; call < 2; ++call) {
      const std::string at = "forward_backward call " + std::to_string(call) + ": ";
      const std::vector<float> x = make_batch(kTableB, cfg.d_in, 300 + call);
      const StepStats a = ref->forward_backward(cfg, x.data(), kTableB, p_ref, s_ref, g_ref);
      const StepStats b = fast->forward_backward(cfg, x.data(), kTableB, p_fast, s_fast, g_fast);
      compare_stats(out, at, b, a, 1e-5);
      compare_grads(out, at + "grad ", g_fast, g_ref, 2e-5);
      if (g_fast.sum_squares >= 0.0) compare_scalar(out, at + "sum_squares", g_fast.sum_squares, grad_sum_squares(g_fast), 1e-5);
      if (threshold_tolerance(engine.name) == 0.0)
        compare_exact(out, at + "threshold", p_fast.threshold, p_ref.threshold);
      else
        compare_scalar(out, at + "threshold", p_fast.threshold, p_ref.threshold, threshold_tolerance(engine.name));
      compare_exact(out, at + "n_inactive", s_fast.n_inactive, s_ref.n_inactive);
      compare_exact(out, at + "batch_sq_act size", s_fast.batch_sq_act.size(), s_ref.batch_sq_act.size());
      if (s_fast.batch_sq_act.size() == s_ref.batch_sq_act.size())
        for (size_t i = 0; i < s_ref.batch_sq_act.size(); ++i)
          compare_scalar(out, at + "batch_sq_act[" + std::to_string(i) + "]", s_fast.batch_sq_act[i], s_ref.batch_sq_act[i], 1e-5, 1e-12);
    }
  }
  // (b) Whole optimizer steps.
  {
    train::TrainOptions opt;
    opt.sae = cfg;
    opt.batch = kTableB;
    opt.steps = kTableSteps;
    opt.seed = 5;
    opt.sparse_engine = sparse;
    opt.bdec_geometric_median = true;
    opt.lr_warmup_steps = 2;
    opt.lr_decay_start = 2;
    opt.engine = reference.name;
    auto ref = train::make_training_engine(opt, table_params(cfg, 3));
    opt.engine = engine.name;
    auto fast = train::make_training_engine(opt, table_params(cfg, 3));
    for (train::Engine* e : {ref.get(), fast.get()}) e->restore(table_params(cfg, 3), {}, table_latents(cfg));
    for (int step = 0; step < kTableSteps; ++step) {
      const std::string at = "step " + std::to_string(step + 1) + ": ";
      const std::vector<float> x = make_batch(kTableB, cfg.d_in, 700 + step);
      const StepStats a = ref->step(x.data());
      const StepStats b = fast->step(x.data());
      compare_stats(out, at, b, a, 1e-4);
      compare_scalar(out, at + "grad norm", fast->last_grad_norm(), ref->last_grad_norm(), 1e-4);
      const SaeParams& pa = ref->params();
      const SaeParams& pb = fast->params();
      compare_tensor(out, at + "W_enc_t", pb.W_enc_t, pa.W_enc_t, 1e-4);
      compare_tensor(out, at + "b_enc", pb.b_enc, pa.b_enc, 1e-4);
      compare_tensor(out, at + "W_dec", pb.W_dec, pa.W_dec, 1e-4);
      compare_tensor(out, at + "b_dec", pb.b_dec, pa.b_dec, 1e-4);
      compare_scalar(out, at + "threshold", pb.threshold, pa.threshold, 1e-5);
      compare_exact(out, at + "n_inactive", fast->latent_state().n_inactive, ref->latent_state().n_inactive);
      compare_exact(out, at + "Adam t", fast->optimizer().t, ref->optimizer().t);
      compare_grads(out, at + "Adam m ", fast->optimizer().m, ref->optimizer().m, 1e-4);
      compare_grads(out, at + "Adam v ", fast->optimizer().v, ref->optimizer().v, 1e-4);
      const train::VariantState& va = ref->variant_state();
      const train::VariantState& vb = fast->variant_state();
      compare_exact(out, at + "permutations", vb.permutations(), va.permutations());
      compare_scalar(out, at + "l1_coef", vb.l1_coef(), va.l1_coef(), 1e-12);
      compare_exact(out, at + "sq_act_mean size", vb.sq_act_mean().size(), va.sq_act_mean().size());
      if (vb.sq_act_mean().size() == va.sq_act_mean().size())
        for (size_t i = 0; i < va.sq_act_mean().size(); ++i)
          compare_scalar(out, at + "sq_act_mean[" + std::to_string(i) + "]", vb.sq_act_mean()[i], va.sq_act_mean()[i], 1e-4, 1e-12);
    }
  }
  return out;
}

// Every registered engine, every arch x variant it supports, both AuxK paths of the sparse engine's options.
TEST(EngineTable, EveryEngineArchAndVariantMatchesReference) {
  const std::vector<const train::EngineEntry*> engines = engines_under_test();
  ASSERT_FALSE(engines.empty());
  for (const train::EngineEntry* e : engines) {
    int checked = 0;
    std::vector<std::string> skipped;
    for (Arch arch : kArchs)
      for (const VariantEntry& v : variant_registry()) {
        const TableConfig t = table_config(arch, v);
        if (!t.skip.empty()) continue;  // not a combination of the table (listed once below)
        if (const std::string why = e->unsupported(t.cfg); !why.empty()) {
          skipped.push_back(t.name + " (" + why + ")");
          continue;
        }
        for (const AuxPath& path : kAuxPaths) {
          const std::vector<std::string> mismatches = check_against_reference(*e, t.cfg, {path.min_density});
          std::string all;
          for (const std::string& m : mismatches) all += "\n  " + m;
          EXPECT_TRUE(mismatches.empty()) << e->name << ", " << t.name << ", " << path.name << ":" << all;
        }
        ++checked;
      }
    std::cout << "[ engine " << e->name << " ] " << checked << " arch x variant combinations match the reference; "
              << skipped.size() << " not supported by the engine:";
    for (const std::string& s : skipped) std::cout << "\n    " << s;
    std::cout << "\n";
    // The host engines cover most of the table; an engine of fewer options (cuda: SPEC's default path and
    // the simple switches) at least one combination, unless it has no device here (then none).
    if (e->name != "cuda") {
      EXPECT_GE(checked, 30) << "the table should cover most combinations";
    } else if (const TableConfig t = table_config(Arch::matryoshka, variant_registry().front()); runs_here(*e, t.cfg)) {
      EXPECT_GE(checked, 1);
    }
  }
  for (Arch arch : kArchs)
    for (const VariantEntry& v : variant_registry())
      if (const TableConfig t = table_config(arch, v); !t.skip.empty())
        std::cout << "    (not in the table: " << t.name << ": " << t.skip << ")\n";
}

// A registered engine for the duration of a test.
struct ScopedEngine {
  explicit ScopedEngine(train::EngineEntry e) : name(e.name) { train::register_engine(std::move(e)); }
  ~ScopedEngine() { train::unregister_engine(name); }
  ScopedEngine(const ScopedEngine&) = delete;
  ScopedEngine& operator=(const ScopedEngine&) = delete;
  std::string name;
};

// The sparse kernel with a defect: `perturb_grad` adds 1e-3 of the largest |gradient| to one W_enc^T
// entry; `skip_dead_counters` leaves the dead counters as they were before the step.
class BrokenEngine final : public StepEngine {
 public:
  BrokenEngine(bool perturb_grad, bool skip_dead_counters)
      : inner_(make_sparse_engine()), perturb_grad_(perturb_grad), skip_dead_counters_(skip_dead_counters) {}
  const char* name() const override { return "broken"; }
  std::string unsupported(const SaeConfig& cfg) const override { return inner_->unsupported(cfg); }
  const StepStats& forward_backward(const SaeConfig& cfg, const float* x, int64_t B, SaeParams& p,
                                    LatentState& state, SaeGrads& grads) override {
    const std::vector<int64_t> before = state.n_inactive;
    const StepStats& stats = inner_->forward_backward(cfg, x, B, p, state, grads);
    if (skip_dead_counters_) state.n_inactive = before;
    if (perturb_grad_) {
      float big = 0;
      for (float v : grads.W_enc_t.data) big = std::max(big, std::abs(v));
      grads.W_enc_t.data[grads.W_enc_t.numel() / 2 + 3] += 1e-3f * big;
    }
    return stats;
  }

 private:
  std::unique_ptr<StepEngine> inner_;
  bool perturb_grad_, skip_dead_counters_;
};

train::EngineEntry broken_entry(const std::string& name, bool perturb_grad, bool skip_dead_counters) {
  return {name, "a deliberately broken sparse engine (test only)",
          [=](const SparseEngineOptions&) -> std::unique_ptr<StepEngine> {
            return std::make_unique<BrokenEngine>(perturb_grad, skip_dead_counters);
          },
          nullptr, [](const SaeConfig& cfg) { return make_sparse_engine()->unsupported(cfg); }};
}

bool mentions(const std::vector<std::string>& mismatches, const std::string& what) {
  return std::any_of(mismatches.begin(), mismatches.end(),
                     [&](const std::string& m) { return m.find(what) != std::string::npos; });
}

// The checker catches a one-entry gradient error and a skipped dead-counter update, and the registry
// lists, builds and refuses test engines like the built-in ones.
TEST(EngineTable, CheckerReportsBrokenEngines) {
  const ScopedEngine grad(broken_entry("broken_grad", true, false));
  const ScopedEngine dead(broken_entry("broken_dead_counters", false, true));
  const std::vector<std::string> names = train::engine_names();
  EXPECT_EQ(names.front(), "reference");
  EXPECT_NE(std::find(names.begin(), names.end(), "broken_grad"), names.end());
  const TableConfig t = table_config(Arch::matryoshka, variant_registry().front());
  ASSERT_EQ(t.skip, "");

  const std::vector<std::string> g = check_against_reference(train::find_engine("broken_grad"), t.cfg, {});
  EXPECT_TRUE(mentions(g, "forward_backward call 0: grad W_enc_t")) << "the perturbed gradient";
  EXPECT_TRUE(mentions(g, "step 1: Adam m W_enc_t")) << "the step that used it";
  EXPECT_FALSE(mentions(g, "n_inactive")) << "the counters are right";

  const std::vector<std::string> d = check_against_reference(train::find_engine("broken_dead_counters"), t.cfg, {});
  EXPECT_TRUE(mentions(d, "forward_backward call 0: n_inactive"));
  EXPECT_TRUE(mentions(d, "step 1: n_inactive"));
  EXPECT_FALSE(mentions(d, "forward_backward call 0: grad")) << "the gradients are right on the first call";

  // The same engines with nothing broken pass (the checker does not flag everything).
  const ScopedEngine fine(broken_entry("not_broken", false, false));
  const std::vector<std::string> f = check_against_reference(train::find_engine("not_broken"), t.cfg, {});
  EXPECT_TRUE(f.empty()) << f.front();

  // The trainer takes a registered engine by name; an unknown name is a usage error listing the registry.
  train::TrainOptions opt;
  opt.sae = t.cfg;
  opt.batch = kTableB;
  opt.engine = "not_broken";
  train::Trainer trainer(opt, table_params(t.cfg, 1));
  EXPECT_EQ(std::string(trainer.engine().name()), "broken");
  opt.engine = "no_such_engine";
  try {
    train::Trainer bad(opt, table_params(t.cfg, 1));
    ADD_FAILURE() << "expected a usage error";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), 2);
    for (const char* want : {"no_such_engine", "reference: the dense oracle", "sparse: the fast default", "not_broken"})
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << want << " in " << e.what();
  }
}

}  // namespace
}  // namespace msae
