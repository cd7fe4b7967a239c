// The variants (docs/variants.md) beyond their gradients (test_gradcheck) and engine equivalence
// (test_engines): the registry round trip (construct, train, save, load, compare), the latent
// permutation's invariance, the sampled-prefix distribution, the adaptive L1 coefficient, and config
// validation. Runs on the embedded synthetic stream (d 64) with small SAEs: a few seconds in all.
//
// Tolerances: a reloaded SAE must give bit-identical codes and reconstructions (same tensors, same
// code path). A permuted SAE goes through a GEMM whose blocking sees its columns in other positions and
// sums its decoder rows in another order, so codes and reconstructions agree to float32 round-off:
// 1e-5 relative (a few ulps times the reduction depth d = 64).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <cstdio>
#include <numeric>

#include "msae/data.h"
#include "msae/io.h"
#include "msae/model.h"
#include "msae/sae_dir.h"
#include "msae/train.h"

namespace msae {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kD = 96, kK = 3, kB = 256;

std::vector<float> synthetic_rows(int64_t n, uint64_t seed) {
  auto source = data::open_synthetic(seed);
  std::vector<float> x(n * source->d());
  source->next_batch(n, x.data());
  return x;
}

train::TrainOptions options_for(const VariantEntry& v, const std::string& engine, int64_t d) {
  train::TrainOptions opt;
  opt.sae.d_in = d;
  opt.sae.d_sae = kD;
  opt.sae.k = kK;
  v.apply(opt.sae);
  opt.sae.l1_coef = 0.05f;
  opt.sae.dead_after_batches = 2;  // so AuxK runs within the few steps
  opt.sae.finalize();
  opt.batch = kB;
  opt.steps = 6;
  opt.engine = engine;
  return opt;
}

double max_abs_diff(const float* a, const float* b, int64_t n, double* scale) {
  double diff = 0;
  *scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    *scale = std::max(*scale, std::abs(static_cast<double>(b[i])));
  }
  return diff;
}

class Registry : public ::testing::TestWithParam<std::tuple<VariantEntry, std::string>> {};

// Every variant: construct, train a few steps, save, load, and the loaded SAE encodes and decodes exactly
// like the trained one, with its variant config recorded. An engine without the variant refuses it.
TEST_P(Registry, TrainSaveLoadCompare) {
  const auto& [v, engine] = GetParam();
  const int64_t d = data::open_synthetic(0)->d();
  train::TrainOptions opt = options_for(v, engine, d);
  if (engine != "reference" && !v.sparse) {  // the sparse engines (sparse, screened)
    EXPECT_THROW(train::Trainer(opt, SaeParams::init(d, kD, 1)), Error) << v.name;
    return;
  }
  train::Trainer trainer(opt, SaeParams::init(d, kD, 1));
  const std::vector<float> data = synthetic_rows(opt.steps * kB, 5);
  for (int64_t s = 0; s < opt.steps; ++s) {
    const StepStats& st = trainer.step(data.data() + s * kB * d);
    ASSERT_TRUE(std::isfinite(st.loss)) << v.name << " step " << s;
  }
  const fs::path dir = fs::temp_directory_path() / (std::string("msae_variant_") + v.name + "_" + engine + "_" +
                                                     std::to_string(::getpid()));
  fs::create_directories(dir);
  const nlohmann::json msae_json = {{"config", saedir::config_json(opt.sae)}};
  saedir::write_sae_files(dir.string(), opt.sae, trainer.params(), msae_json);
  const saedir::SaeDirectory loaded = saedir::read_sae_dir(dir.string());
  fs::remove_all(dir);

  EXPECT_EQ(saedir::config_json(loaded.sae), saedir::config_json(opt.sae)) << "config round trip";
  EXPECT_EQ(loaded.sae.arch, opt.sae.arch);
  EXPECT_EQ(loaded.params.threshold, trainer.params().threshold);
  if (opt.sae.arch == Arch::relu_l1) {
    EXPECT_EQ(loaded.params.threshold, 0.0f) << "a ReLU SAE infers with threshold 0";
    EXPECT_TRUE(loaded.sae.encoder_bias);
  }
  const std::vector<float> x = synthetic_rows(512, 77);
  const kernels::SparseCodes a = encode_inference(opt.sae, trainer.params(), x.data(), 512, kD);
  const kernels::SparseCodes b = encode_inference(loaded.sae, loaded.params, x.data(), 512, kD);
  EXPECT_EQ(a.row_ptr, b.row_ptr);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_TRUE(std::equal(a.vals.begin(), a.vals.end(), b.vals.begin()));
  EXPECT_GT(a.nnz(), 0) << "the trained SAE fires on held-out rows";
  std::vector<float> ra(512 * d), rb(512 * d);
  decode(trainer.params(), a, ra.data());
  decode(loaded.params, b, rb.data());
  EXPECT_EQ(ra, rb);
}

INSTANTIATE_TEST_SUITE_P(AllVariants, Registry,
                         ::testing::Combine(::testing::ValuesIn(variant_registry()),
                                            ::testing::ValuesIn(train::engine_names())),
                         [](const auto& param_info) { return std::string(std::get<0>(param_info.param).name) + "_" + std::get<1>(param_info.param); });

// A permutation of the latents (every per-latent tensor) leaves the whole SAE's outputs unchanged.
TEST(Reordering, PermutationLeavesOutputsUnchanged) {
  const int64_t d = data::open_synthetic(0)->d();
  train::TrainOptions opt = options_for(variant_registry()[0], "sparse", d);
  opt.sae.encoder_bias = true;
  train::Trainer trainer(opt, SaeParams::init(d, kD, 2));
  const std::vector<float> data = synthetic_rows(opt.steps * kB, 6);
  for (int64_t s = 0; s < opt.steps; ++s) trainer.step(data.data() + s * kB * d);
  SaeParams p = trainer.params();
  for (float& v : p.b_enc.data) v = 0.01f * static_cast<float>(&v - p.b_enc.data.data()) / kD;  // distinct biases
  std::vector<int64_t> perm(kD);
  std::iota(perm.begin(), perm.end(), 0);
  Rng rng(3);
  shuffle_indices(perm, rng);
  SaeParams q = p;
  permute_latents(q, perm);
  for (int64_t j = 0; j < kD; ++j) {
    ASSERT_EQ(q.b_enc.data[j], p.b_enc.data[perm[j]]);
    ASSERT_TRUE(std::equal(q.W_dec.ptr() + j * d, q.W_dec.ptr() + (j + 1) * d, p.W_dec.ptr() + perm[j] * d));
  }
  const std::vector<float> x = synthetic_rows(512, 78);
  const kernels::SparseCodes zp = encode_inference(opt.sae, p, x.data(), 512, kD);
  const kernels::SparseCodes zq = encode_inference(opt.sae, q, x.data(), 512, kD);
  ASSERT_EQ(zp.row_ptr, zq.row_ptr) << "same number of active latents per row";
  for (int64_t r = 0; r < 512; ++r)  // same (latent, value) pairs up to the renaming
    for (int64_t e = zq.row_ptr[r]; e < zq.row_ptr[r + 1]; ++e) {
      const int32_t old = static_cast<int32_t>(perm[zq.ids[e]]);
      const auto* begin = zp.ids.data() + zp.row_ptr[r];
      const auto* end = zp.ids.data() + zp.row_ptr[r + 1];
      const auto* it = std::find(begin, end, old);
      ASSERT_NE(it, end);
      const float want = zp.vals[it - zp.ids.data()];
      EXPECT_NEAR(zq.vals[e], want, 1e-5f * std::abs(want) + 1e-6f);
    }
  std::vector<float> rp(512 * d), rq(512 * d);
  decode(p, zp, rp.data());
  decode(q, zq, rq.data());
  double scale = 0;
  {
    const double diff = max_abs_diff(rq.data(), rp.data(), 512 * d, &scale);
    EXPECT_LE(diff, 1e-5 * scale);
  }
}

// permute_training_state moves the Adam moments and counters with the parameters: one more step on the
// permuted state equals the permuted result of that step (one group, so the loss does not see the order).
TEST(Reordering, OptimizerStateMovesWithTheLatents) {
  const int64_t d = data::open_synthetic(0)->d();
  SaeConfig cfg;
  cfg.arch = Arch::batchtopk;
  cfg.d_in = d;
  cfg.d_sae = kD;
  cfg.k = kK;
  cfg.dead_after_batches = 2;
  cfg.finalize();
  const std::vector<float> data = synthetic_rows(4 * kB, 9);
  auto engine = train::make_engine("reference");
  SaeParams p = SaeParams::init(d, kD, 4);
  SaeGrads g = SaeGrads::zeros(d, kD);
  train::AdamState opt;
  LatentState st;
  kernels::AdamHyper adam;
  for (int s = 0; s < 3; ++s) {
    engine->forward_backward(cfg, data.data() + s * kB * d, kB, p, st, g);
    train::apply_update(cfg, adam, 1e5f, p, g, opt);
  }
  std::vector<int64_t> perm(kD);
  std::iota(perm.begin(), perm.end(), 0);
  std::reverse(perm.begin(), perm.end());
  std::rotate(perm.begin(), perm.begin() + 7, perm.end());
  SaeParams pq = p;
  train::AdamState oq = opt;
  LatentState sq = st;
  train::permute_training_state(perm, pq, oq, sq);
  // the same step on both
  engine->forward_backward(cfg, data.data() + 3 * kB * d, kB, p, st, g);
  train::apply_update(cfg, adam, 1e5f, p, g, opt);
  SaeGrads gq = SaeGrads::zeros(d, kD);
  engine->forward_backward(cfg, data.data() + 3 * kB * d, kB, pq, sq, gq);
  train::apply_update(cfg, adam, 1e5f, pq, gq, oq);
  train::AdamState opt_perm = opt;
  SaeParams p_perm = p;
  LatentState st_perm = st;
  train::permute_training_state(perm, p_perm, opt_perm, st_perm);
  double scale = 0;
  {
    const double diff = max_abs_diff(pq.W_dec.ptr(), p_perm.W_dec.ptr(), kD * d, &scale);
    EXPECT_LE(diff, 1e-5 * scale);
  }
  {
    const double diff = max_abs_diff(pq.W_enc_t.ptr(), p_perm.W_enc_t.ptr(), kD * d, &scale);
    EXPECT_LE(diff, 1e-5 * scale);
  }
  {
    const double diff = max_abs_diff(oq.v.W_dec.ptr(), opt_perm.v.W_dec.ptr(), kD * d, &scale);
    EXPECT_LE(diff, 1e-5 * scale);
  }
  EXPECT_EQ(sq.n_inactive, st_perm.n_inactive);
}

// The trainer's reordering sorts latents by their running mean of z^2, descending.
TEST(Reordering, TrainerSortsLatentsByMeanSquaredActivation) {
  const int64_t d = data::open_synthetic(0)->d();
  train::TrainOptions opt = options_for(variant_registry()[0], "sparse", d);
  opt.sae.reorder_every = 3;
  opt.steps = 6;
  train::Trainer trainer(opt, SaeParams::init(d, kD, 2));
  const std::vector<float> data = synthetic_rows(opt.steps * kB, 8);
  for (int64_t s = 0; s < opt.steps; ++s) trainer.step(data.data() + s * kB * d);
  EXPECT_GT(trainer.variant_state().permutations(), 0);
  const std::vector<double>& m = trainer.variant_state().sq_act_mean();
  EXPECT_TRUE(std::is_sorted(m.rbegin(), m.rend())) << "after a reordering step the means are descending";
}

// Sampled prefix lengths: N groups summing to D, first prefix >= min_prefix, deterministic, and the
// Pareto distribution favours short prefixes far more than the uniform one.
TEST(SampledPrefixes, DistributionAndShape) {
  SaeConfig cfg;
  cfg.d_in = 8;
  cfg.d_sae = 1024;
  cfg.k = 4;
  cfg.sampled_prefixes = 10;
  cfg.min_prefix = 4;
  cfg.finalize();
  Rng a(1), b(1);
  double mean_pareto = 0, mean_uniform = 0;
  const int trials = 400;
  for (int t = 0; t < trials; ++t) {
    const std::vector<int64_t> s = sample_prefix_sizes(cfg, a);
    ASSERT_EQ(s, sample_prefix_sizes(cfg, b)) << "same seed, same draws";
    ASSERT_EQ(static_cast<int64_t>(s.size()), cfg.sampled_prefixes);
    ASSERT_EQ(std::accumulate(s.begin(), s.end(), int64_t{0}), cfg.d_sae);
    ASSERT_GE(s[0], cfg.min_prefix);
    for (int64_t v : s) ASSERT_GT(v, 0);
    int64_t m = 0;
    for (size_t g = 0; g + 1 < s.size(); ++g) mean_pareto += static_cast<double>(m += s[g]);
  }
  SaeConfig uni = cfg;
  uni.prefix_distribution = "uniform";
  for (int t = 0; t < trials; ++t) {
    const std::vector<int64_t> s = sample_prefix_sizes(uni, a);
    int64_t m = 0;
    for (size_t g = 0; g + 1 < s.size(); ++g) mean_uniform += static_cast<double>(m += s[g]);
  }
  mean_pareto /= trials * 9.0;
  mean_uniform /= trials * 9.0;
  // uniform on [4, 1023]: mean about 513; Pareto power 0.5 (P(len <= l) = (l/n)^0.5): mean about n/3 = 340
  EXPECT_NEAR(mean_uniform, 513, 40);
  EXPECT_LT(mean_pareto, 0.8 * mean_uniform);
}

// relu_l1: the L1 coefficient grows while L0 is above the target k and the L0 comes down.
TEST(ReluL1, CoefficientDrivesL0TowardTarget) {
  const int64_t d = data::open_synthetic(0)->d();
  train::TrainOptions opt;
  opt.sae.arch = Arch::relu_l1;
  opt.sae.d_in = d;
  opt.sae.d_sae = kD;
  opt.sae.k = 3;
  opt.sae.group_sizes = {kD};
  opt.sae.l1_coef = 1e-3f;
  opt.sae.l1_adapt_rate = 0.05f;  // fast, so a short run shows it
  opt.sae.finalize();
  opt.batch = kB;
  opt.steps = 150;
  opt.adam.lr = 3e-3f;
  opt.engine = "reference";
  train::Trainer trainer(opt, SaeParams::init(d, kD, 3));
  const std::vector<float> data = synthetic_rows(opt.steps * kB, 10);
  double first_l0 = 0, last_l0 = 0;
  for (int64_t s = 0; s < opt.steps; ++s) {
    const StepStats& st = trainer.step(data.data() + s * kB * d);
    if (s == 0) first_l0 = st.l0;
    last_l0 = st.l0;
    EXPECT_GT(st.l_sparsity, 0.0);
  }
  EXPECT_GT(first_l0, 20.0) << "a fresh ReLU SAE is dense";
  const double coef = trainer.variant_state().l1_coef();
  EXPECT_GT(coef, 2e-3) << "the coefficient adapted upward";
  EXPECT_LT(last_l0, 0.5 * first_l0) << "and the L0 came down";
  std::printf("relu_l1: L0 %.2f -> %.2f (target 3), coefficient 0.001 -> %.4g\n", first_l0, last_l0, coef);
  EXPECT_EQ(trainer.params().threshold, 0.0f) << "no BatchTopK threshold for a ReLU SAE";
}

// Validation names the flag.
TEST(VariantConfig, RejectsInconsistentSwitches) {
  auto expect_usage = [](const std::function<void(SaeConfig&)>& tweak, const std::string& flag) {
    SaeConfig c;
    c.d_in = 8;
    c.d_sae = 64;
    c.k = 4;
    tweak(c);
    try {
      c.finalize();
      ADD_FAILURE() << "expected a usage error naming " << flag;
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), 2);
      EXPECT_NE(std::string(e.what()).find(flag), std::string::npos) << e.what();
    }
  };
  expect_usage([](SaeConfig& c) { c.prefix_weights = {1, 1}; }, "--prefix-weights");
  expect_usage([](SaeConfig& c) { c.prefix_weights = {1, 1, -1, 1, 1}; }, "--prefix-weights");
  expect_usage([](SaeConfig& c) { c.group_k = {1, 1, 1}; }, "--group-k");
  expect_usage([](SaeConfig& c) { c.group_k = {5, 1, 1, 1, 1}; }, "--group-k");  // group 1 has 4 latents
  expect_usage([](SaeConfig& c) { c.sampled_prefixes = 80; }, "--sampled-prefixes");
  expect_usage([](SaeConfig& c) { c.sampled_prefixes = 4; c.prefix_weights = {1, 1, 1, 1, 1}; }, "--sampled-prefixes");
  expect_usage([](SaeConfig& c) { c.sampled_prefixes = 4; c.prefix_distribution = "zipf"; }, "--prefix-distribution");
  expect_usage([](SaeConfig& c) { c.reorder_decay = 1.0f; }, "--reorder-decay");
  expect_usage([](SaeConfig& c) { c.threshold_rate = 0.0f; }, "--threshold-rate");
  expect_usage([](SaeConfig& c) { c.arch = Arch::relu_l1; c.group_k = {1, 1, 1, 1, 1}; }, "--group-k");
}

// The defaults are SPEC: no switch is on, and config_json records them.
TEST(VariantConfig, DefaultsAreSpec) {
  SaeConfig c;
  c.d_in = 8;
  c.d_sae = 64;
  c.finalize();
  EXPECT_TRUE(c.is_spec_loss());
  const nlohmann::json j = saedir::config_json(c);
  EXPECT_EQ(j["variants"]["recipe"], "bussmann");
  EXPECT_EQ(j["variants"]["stop_gradient_groups"], false);
  EXPECT_EQ(j["variants"]["sampled_prefixes"], 0);
  SaeConfig back;
  saedir::variant_config_from_json(j["variants"], back);
  EXPECT_TRUE(back.bdec_loss_term);
  EXPECT_EQ(back.threshold_rate, 0.01f);
}

}  // namespace
}  // namespace msae

namespace msae {
namespace {

// The variant state survives a JSON round trip (for checkpoints): a restored state draws the same
// sampled prefixes and keeps its L1 coefficient and reordering means.
TEST(VariantState, JsonRoundTripContinuesTheSameDraws) {
  SaeConfig cfg;
  cfg.d_in = 8;
  cfg.d_sae = 64;
  cfg.k = 4;
  cfg.sampled_prefixes = 5;
  cfg.finalize();
  train::VariantState a(cfg, 42);
  LatentState lat;
  for (int i = 0; i < 3; ++i) a.before_step(cfg, lat);
  train::VariantState b(cfg, 7);
  b.restore(nlohmann::json::parse(a.state_json().dump()));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(a.before_step(cfg, lat).group_sizes, b.before_step(cfg, lat).group_sizes);
  EXPECT_EQ(a.state_json(), b.state_json());
  EXPECT_THROW(b.restore(nlohmann::json{{"step", 1}}), Error);
}

}  // namespace
}  // namespace msae
