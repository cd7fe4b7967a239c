// Replays the PyTorch oracle fixtures (scripts/make_torch_fixtures.py, written from SPEC.md) through
// msae's trainer and requires agreement to float32 round-off at every step: losses, per-prefix MSEs,
// AuxK activity, dead counts, L0, the threshold EMA, the gradient norm, the raw step-1 gradients and
// every parameter after every update.
//
// Tolerances. Both sides compute in float32 but sum in different orders (BLAS blocking vs PyTorch's
// kernels), so each value carries a relative round-off of a few float32 ulps (1.2e-7) times the depth
// of its reduction. Scalars: relative 2e-5. Gradients: 2e-5 of the tensor's largest entry. Parameters:
// after t Adam steps each entry has moved by at most t * lr (3e-4); round-off in the moments changes the
// step by a relative ~1e-6, so we allow 5e-6 absolute plus 1e-5 relative, 10x above the differences
// seen and 60x below one Adam step (a real semantic difference, such as a missed AuxK term or the wrong
// clipping coefficient, moves parameters by about lr).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "msae/comm.h"
#include "msae/io.h"
#include "msae/train.h"

namespace {

using nlohmann::json;
const std::string kFixtures = std::string(MSAE_SOURCE_DIR) + "/tests/fixtures/";

msae::Tensor load(const std::string& dir, const std::string& name) { return msae::io::read_npy(dir + "/" + name + ".npy"); }

msae::Tensor transpose(const msae::Tensor& t) {
  const int64_t r = t.shape[0], c = t.shape[1];
  msae::Tensor out({c, r});
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) out.data[j * r + i] = t.data[i * c + j];
  return out;
}

// max |a - b| - (abs_tol + rel_tol * |b|) must be <= 0 everywhere.
void expect_close(const msae::Tensor& got, const msae::Tensor& want, double abs_tol, double rel_tol,
                  const std::string& what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  double worst = 0.0;
  int64_t worst_at = -1;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double excess = std::abs(double(got.data[i]) - want.data[i]) - (abs_tol + rel_tol * std::abs(want.data[i]));
    if (excess > worst) worst = excess, worst_at = i;
  }
  EXPECT_LE(worst, 0.0) << what << ": element " << worst_at << " got " << got.data[worst_at] << " want "
                        << want.data[worst_at];
}

double max_abs(const msae::Tensor& t) {
  double m = 0.0;
  for (float v : t.data) m = std::max(m, double(std::abs(v)));
  return m;
}

void expect_scalar(double got, double want, const std::string& what) {
  EXPECT_NEAR(got, want, 2e-5 * std::abs(want) + 1e-9) << what;
}

struct Case {
  std::string fixture;
  std::string engine;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.fixture << " (" << c.engine << " engine)"; }

class TorchFixture : public ::testing::TestWithParam<Case> {};

TEST_P(TorchFixture, MatchesPyTorchStepByStep) {
  const std::string dir = kFixtures + GetParam().fixture;
  std::ifstream in(dir + "/fixture.json");
  ASSERT_TRUE(in) << "missing fixture " << dir;
  const json fx = json::parse(in);
  const json& c = fx["config"];

  msae::train::TrainOptions opt;
  opt.sae.arch = msae::parse_arch(c["arch"]);
  opt.sae.d_in = c["d_in"];
  opt.sae.d_sae = c["d_sae"];
  opt.sae.k = c["k"];
  opt.sae.group_sizes = c["group_sizes"].get<std::vector<int64_t>>();
  opt.sae.encoder_bias = c["encoder_bias"];
  opt.sae.dead_after_batches = c["dead_after_batches"];
  opt.sae.aux_k = c["aux_k"];
  opt.sae.aux_coef = c["aux_coef"];
  // Variant switches (docs/variants.md), present only in the variant fixtures.
  if (c.contains("prefix_weights")) opt.sae.prefix_weights = c["prefix_weights"].get<std::vector<float>>();
  opt.sae.bdec_loss_term = c.value("bdec_loss_term", true);
  opt.sae.stop_gradient_groups = c.value("stop_gradient_groups", false);
  opt.sae.aux_detach = c.value("aux_detach", false);
  if (c.contains("group_k")) opt.sae.group_k = c["group_k"].get<std::vector<int64_t>>();
  opt.sae.threshold_rate = c.value("threshold_rate", 0.01f);
  opt.sae.l1_coef = c.value("l1_coef", 1.2f);
  opt.sae.l1_adapt_rate = c.value("l1_adapt_rate", 3e-4f);
  opt.sae.finalize();
  opt.batch = c["batch"];
  opt.adam.lr = c["lr"];
  opt.adam.beta1 = c["beta1"];
  opt.adam.beta2 = c["beta2"];
  opt.adam.eps = c["eps"];
  opt.max_grad_norm = c["max_grad_norm"];
  opt.engine = GetParam().engine;
  const int64_t d = opt.sae.d_in, D = opt.sae.d_sae, B = opt.batch;
  // Under mpirun (tests/CMakeLists.txt: test_torch_fixture_npN) the trainer is the sharded engine
  // (docs/distributed.md): the same fixtures, every step, across processes.
  msae::comm::Comm& world = msae::comm::world();
  const bool root = world.rank() == 0;
  if (world.size() > 1 && opt.engine != "sparse") GTEST_SKIP() << opt.engine << " trains in one process";
  std::string why = msae::train::make_engine(opt.engine)->unsupported(opt.sae);
  if (world.size() > 1) {
    msae::LatentShard shard = msae::shard_latents(opt.sae, world.rank(), world.size());
    shard.comm = &world;
    why = msae::make_sparse_shard_engine({}, shard)->unsupported(opt.sae);
  }
  if (!why.empty()) {
    EXPECT_THROW(msae::train::Trainer(opt, msae::SaeParams::init(d, D, 0)), msae::Error) << "must refuse " << why;
    return;  // this engine does not implement the variant and says so
  }

  msae::SaeParams init = msae::SaeParams::zeros(d, D);
  init.W_enc_t = transpose(load(dir, "init_W_enc"));
  init.W_dec = load(dir, "init_W_dec");
  init.b_enc = load(dir, "init_b_enc");
  init.b_dec = load(dir, "init_b_dec");
  const msae::Tensor x = load(dir, "x");
  ASSERT_EQ(x.shape, (std::vector<int64_t>{int64_t(fx["steps"].size()) * B, d}));

  // Raw gradients of step 1 (before clipping and the decoder constraint).
  {
    msae::SaeParams p = init;
    msae::LatentState state;
    state.n_inactive.assign(D, 0);
    state.l1_coef = opt.sae.l1_coef;  // relu_l1: the coefficient of step 1
    msae::SaeGrads g = msae::SaeGrads::zeros(d, D);
    auto engine = msae::train::make_engine(opt.engine);
    engine->forward_backward(opt.sae, x.ptr(), B, p, state, g);
    const msae::Tensor want_W_enc_t = transpose(load(dir, "grad_1_W_enc"));
    const msae::Tensor want_W_dec = load(dir, "grad_1_W_dec"), want_b_dec = load(dir, "grad_1_b_dec"),
                       want_b_enc = load(dir, "grad_1_b_enc");
    expect_close(g.W_enc_t, want_W_enc_t, 2e-5 * max_abs(want_W_enc_t), 0, "grad W_enc");
    expect_close(g.W_dec, want_W_dec, 2e-5 * max_abs(want_W_dec), 0, "grad W_dec");
    expect_close(g.b_dec, want_b_dec, 2e-5 * max_abs(want_b_dec), 0, "grad b_dec");
    expect_close(g.b_enc, want_b_enc, 2e-5 * max_abs(want_b_enc) + 1e-12, 0, "grad b_enc");
  }

  msae::train::Trainer trainer(opt, init);
  int aux_steps = 0;
  for (size_t t = 0; t < fx["steps"].size(); ++t) {
    const json& want = fx["steps"][t];
    const std::string at = "step " + std::to_string(t + 1);
    const msae::StepStats s = trainer.step(x.ptr() + t * B * d);
    expect_scalar(s.loss, want["loss"], at + " loss");
    expect_scalar(s.l_rec, want["l_rec"], at + " l_rec");
    expect_scalar(s.l_aux, want["l_aux"], at + " l_aux");
    expect_scalar(s.mse_bdec, want["mse_bdec"], at + " mse_bdec");
    ASSERT_EQ(s.mse_prefix.size(), want["mse_prefix"].size());
    for (size_t g = 0; g < s.mse_prefix.size(); ++g)
      expect_scalar(s.mse_prefix[g], want["mse_prefix"][g], at + " mse_prefix " + std::to_string(g));
    EXPECT_EQ(s.aux_active, want["aux_active"].get<bool>()) << at;
    EXPECT_EQ(s.n_dead, want["n_dead"].get<int64_t>()) << at;
    expect_scalar(s.l0, want["l0"], at + " l0");
    const msae::SaeParams& p = std::as_const(trainer).params();  // gathered on the root under mpirun
    expect_scalar(p.threshold, want["threshold"], at + " threshold");
    expect_scalar(trainer.last_grad_norm(), want["grad_norm"], at + " grad_norm");
    aux_steps += s.aux_active;

    const std::string prefix = "after_" + std::to_string(t + 1) + "_";
    if (root) {
      expect_close(p.W_enc_t, transpose(load(dir, prefix + "W_enc")), 5e-6, 1e-5, at + " W_enc");
      expect_close(p.W_dec, load(dir, prefix + "W_dec"), 5e-6, 1e-5, at + " W_dec");
      expect_close(p.b_dec, load(dir, prefix + "b_dec"), 5e-6, 1e-5, at + " b_dec");
      expect_close(p.b_enc, load(dir, prefix + "b_enc"), 5e-6, 1e-5, at + " b_enc");
    }
    // One diverged step makes every later comparison noise (decided together: the next step is collective).
    int64_t failed = HasFailure() ? 1 : 0;
    world.allreduce_max(&failed, 1);
    if (failed) break;
  }
  if (opt.sae.arch != msae::Arch::relu_l1) {
    EXPECT_GT(aux_steps, 0) << "the fixture is meant to exercise AuxK";
  }
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const std::string& engine : msae::train::engine_names())
    for (const char* f : {"matryoshka_default", "batchtopk", "topk", "matryoshka_custom_groups", "matryoshka_clipped",
                          "matryoshka_aux_toggle", "variant_switches", "variant_group_k", "variant_relu_l1"})
      cases.push_back({f, engine});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TorchFixture, ::testing::ValuesIn(all_cases()),
                         [](const auto& test) { return test.param.fixture + "_" + test.param.engine; });

}  // namespace
