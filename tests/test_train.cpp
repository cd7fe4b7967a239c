// Trainer-level tests: configuration rules, the update rule's pieces, the SAE directory round trip,
// determinism, and recovery of the planted dictionary of the embedded synthetic dataset.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>

#include "msae/data.h"
#include "msae/eval.h"
#include "msae/io.h"
#include "msae/kernels_ref.h"
#include "msae/recovery.h"
#include "msae/sae_dir.h"
#include "msae/synth.h"
#include "msae/train.h"
#include "synthetic_training.h"

namespace fs = std::filesystem;
using namespace msae;
using testing_support::train_synthetic;

namespace {

TEST(Config, DefaultGroupsFollowTheSpec) {
  EXPECT_EQ(default_group_sizes(36864), (std::vector<int64_t>{2304, 2304, 4608, 9216, 18432}));
  EXPECT_EQ(default_group_sizes(16384), (std::vector<int64_t>{1024, 1024, 2048, 4096, 8192}));
  // Not divisible by 16: the remainder goes to the last group and the sizes still sum to D.
  EXPECT_EQ(default_group_sizes(100), (std::vector<int64_t>{6, 6, 12, 25, 51}));
  SaeConfig c;
  c.d_in = 8;
  c.d_sae = 64;
  c.k = 4;
  c.finalize();
  EXPECT_EQ(c.boundaries(), (std::vector<int64_t>{4, 8, 16, 32, 64}));
  SaeConfig b = c;
  b.arch = Arch::batchtopk;
  b.group_sizes.clear();
  b.finalize();
  EXPECT_EQ(b.group_sizes, (std::vector<int64_t>{64}));
}

TEST(Config, RejectsInconsistentSettings) {
  auto expect_usage = [](SaeConfig c, const std::string& needle) {
    try {
      c.finalize();
      ADD_FAILURE() << "accepted a bad config (" << needle << ")";
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), 2);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  SaeConfig c;
  c.d_in = 8;
  c.d_sae = 64;
  c.k = 4;
  SaeConfig bad = c;
  bad.group_sizes = {32, 16};
  expect_usage(bad, "sum to 48");
  bad.group_sizes = {32, 0, 32};
  expect_usage(bad, "positive");
  bad = c;
  bad.k = 0;
  expect_usage(bad, "--k");
  bad.k = 65;
  expect_usage(bad, "--k 65");
  bad = c;
  bad.d_sae = 8;
  expect_usage(bad, "--d-sae 8");
  bad = c;
  bad.arch = Arch::batchtopk;
  bad.group_sizes = {32, 32};
  expect_usage(bad, "single group");
}

TEST(Init, MatchesTheSpecDistribution) {
  const int64_t d = 32, D = 256;
  const SaeParams p = SaeParams::init(d, D, 7);
  const float bound = std::sqrt(6.0f / D);
  double sum = 0, sum2 = 0;
  for (float v : p.W_enc_t.data) {
    ASSERT_LT(std::abs(v), bound);
    sum += v;
    sum2 += double(v) * v;
  }
  const double n = double(p.W_enc_t.numel());
  EXPECT_NEAR(sum / n, 0.0, 4 * bound / std::sqrt(3 * n));
  EXPECT_NEAR(sum2 / n, bound * bound / 3.0, 0.05 * bound * bound / 3.0);  // variance of U(-b, b)
  for (int64_t i = 0; i < D; ++i) {
    double norm2 = 0, dot = 0, enc2 = 0;
    for (int64_t j = 0; j < d; ++j) {
      norm2 += double(p.W_dec.data[i * d + j]) * p.W_dec.data[i * d + j];
      dot += double(p.W_dec.data[i * d + j]) * p.W_enc_t.data[i * d + j];
      enc2 += double(p.W_enc_t.data[i * d + j]) * p.W_enc_t.data[i * d + j];
    }
    ASSERT_NEAR(norm2, 1.0, 1e-6);
    ASSERT_NEAR(dot, std::sqrt(enc2), 1e-5) << "W_dec rows are the normalized W_enc columns";
  }
  for (float v : p.b_dec.data) EXPECT_EQ(v, 0.0f);
  for (float v : p.b_enc.data) EXPECT_EQ(v, 0.0f);
  EXPECT_EQ(p.threshold, 0.0f);
}

// apply_update against a naive statement of SPEC "Update": clip, radial removal + renormalize, Adam.
TEST(Update, MatchesANaiveClipConstrainAdam) {
  SaeConfig c;
  c.d_in = 4;
  c.d_sae = 16;
  c.k = 2;
  c.finalize();
  SaeParams p = SaeParams::init(4, 16, 3);
  for (float& v : p.W_dec.data) v *= 1.5f;  // rows of norm 1.5: the constraint must renormalize
  SaeGrads g = SaeGrads::zeros(4, 16);
  Rng rng(5);
  for (float& v : g.W_dec.data) v = float(rng.normal());
  for (float& v : g.W_enc_t.data) v = float(rng.normal());
  for (float& v : g.b_dec.data) v = float(rng.normal());
  for (float& v : g.b_enc.data) v = 100.0f;  // b_enc is not trained without --encoder-bias

  // The naive expectation.
  SaeParams want = p;
  SaeGrads wg = g;
  double norm2 = 0;
  for (const Tensor* t : {&wg.W_dec, &wg.W_enc_t, &wg.b_dec})
    for (float v : t->data) norm2 += double(v) * v;
  const double coef = std::min(1.0, 1.0 / (std::sqrt(norm2) + 1e-6));  // max_grad_norm = 1
  ASSERT_LT(coef, 0.5) << "the case must exercise clipping";
  for (Tensor* t : {&wg.W_dec, &wg.W_enc_t, &wg.b_dec})
    for (float& v : t->data) v = float(v * coef);
  for (int64_t i = 0; i < 16; ++i) {
    float* w = want.W_dec.ptr() + i * 4;
    float* gr = wg.W_dec.ptr() + i * 4;
    double n = 0, dot = 0;
    for (int j = 0; j < 4; ++j) n += double(w[j]) * w[j];
    for (int j = 0; j < 4; ++j) w[j] = float(w[j] / std::sqrt(n));
    for (int j = 0; j < 4; ++j) dot += double(gr[j]) * w[j];
    for (int j = 0; j < 4; ++j) gr[j] = float(gr[j] - dot * w[j]);
  }
  const kernels::AdamHyper h;
  for (auto [param, grad] : {std::pair{&want.W_dec, &wg.W_dec}, {&want.W_enc_t, &wg.W_enc_t}, {&want.b_dec, &wg.b_dec}}) {
    Tensor m(param->shape), v(param->shape);
    kernels::ref::adam_update(param->ptr(), grad->ptr(), m.ptr(), v.ptr(), param->numel(), h, 1);
  }

  train::AdamState opt;
  const double norm = train::apply_update(c, h, 1.0f, p, g, opt);
  EXPECT_NEAR(norm, std::sqrt(norm2), 1e-4);
  EXPECT_EQ(opt.t, 1);
  for (auto [got, exp, name] : {std::tuple{&p.W_dec, &want.W_dec, "W_dec"}, {&p.W_enc_t, &want.W_enc_t, "W_enc"},
                                {&p.b_dec, &want.b_dec, "b_dec"}})
    for (int64_t e = 0; e < got->numel(); ++e) ASSERT_NEAR(got->data[e], exp->data[e], 2e-6) << name << " " << e;
  for (float v : p.b_enc.data) EXPECT_EQ(v, 0.0f) << "b_enc must stay zero without --encoder-bias";
}

// A sum of squares supplied by the engine (SaeGrads::sum_squares >= 0) is what the clipping uses, and it
// is consumed: the next update without one computes the norm from the gradients again.
TEST(Update, UsesAndConsumesTheEnginesSumOfSquares) {
  SaeConfig c;
  c.d_in = 4;
  c.d_sae = 16;
  c.k = 2;
  c.finalize();
  SaeGrads g = SaeGrads::zeros(4, 16);
  for (int e = 0; e < 8; ++e) g.W_enc_t.data[e] = 0.5f;  // sum of squares 2: norm 1.41
  const kernels::AdamHyper h;
  SaeParams p = SaeParams::init(4, 16, 3);
  train::AdamState opt;
  g.sum_squares = 100.0;  // as if the engine had measured norm 10
  EXPECT_NEAR(train::apply_update(c, h, 1.0f, p, g, opt), 10.0, 1e-12);
  EXPECT_LT(g.sum_squares, 0.0);
  EXPECT_NEAR(train::apply_update(c, h, 1.0f, p, g, opt), std::sqrt(2.0), 1e-6);
}

TEST(SaeDirectory, RoundTripsExactly) {
  SaeConfig c;
  c.d_in = 8;
  c.d_sae = 48;
  c.k = 3;
  c.group_sizes = {8, 16, 24};
  c.encoder_bias = true;
  c.finalize();
  SaeParams p = SaeParams::init(8, 48, 11);
  Rng rng(1);
  for (float& v : p.b_enc.data) v = float(rng.normal());
  for (float& v : p.b_dec.data) v = float(rng.normal());
  p.threshold = 0.375f;
  const fs::path dir = fs::temp_directory_path() / ("msae_sae_dir_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  saedir::write_sae_files(dir.string(), c, p, {{"config", {{"arch", "matryoshka"}, {"k", 3}, {"group_sizes", c.group_sizes},
                                                          {"encoder_bias", true}}}});
  const saedir::SaeDirectory back = saedir::read_sae_dir(dir.string());
  fs::remove_all(dir);
  EXPECT_EQ(back.sae.arch, Arch::matryoshka);
  EXPECT_EQ(back.sae.group_sizes, c.group_sizes);
  EXPECT_EQ(back.sae.k, 3);
  EXPECT_TRUE(back.sae.encoder_bias);
  EXPECT_EQ(back.params.W_enc_t.data, p.W_enc_t.data);
  EXPECT_EQ(back.params.W_dec.data, p.W_dec.data);
  EXPECT_EQ(back.params.b_enc.data, p.b_enc.data);
  EXPECT_EQ(back.params.b_dec.data, p.b_dec.data);
  EXPECT_EQ(back.params.threshold, 0.375f);
}


// Strict loading (issue 21 case 11): an msae directory that lost a tensor, holds NaN/Inf, or whose metadata
// disagrees with itself or the tensors is refused with the file and the tensor or key named; inspect's
// lenient read lists the non-finite values instead. Before: a directory without 'threshold' loaded with
// threshold 0 (L0 = every positive latent), NaN weights loaded silently, and k > d_sae was cut to d_sae.
class StrictLoad : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("msae_strict_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
                                        "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    cfg_.d_in = 8;
    cfg_.d_sae = 32;
    cfg_.k = 3;
    cfg_.group_sizes = {8, 8, 16};
    cfg_.arch = Arch::matryoshka;
    cfg_.finalize();
    params_ = SaeParams::init(8, 32, 5);
    params_.threshold = 0.25f;
    saedir::write_sae_files(dir_.string(), cfg_, params_, {{"config", saedir::config_json(cfg_)}});
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string weights() const { return (dir_ / "sae_weights.safetensors").string(); }
  // Rewrites the weights file through `edit` (name -> tensor; erase to drop one).
  template <class F>
  void edit_weights(F edit) {
    io::SafetensorsFile f = io::read_safetensors(weights());
    edit(f.tensors);
    std::vector<io::TensorRef> refs;
    for (const auto& [name, t] : f.tensors) refs.push_back({name, t.shape, t.ptr()});
    const io::FileDigest digest = io::write_safetensors(weights(), refs, {{"format", "pt"}});
    // As if msae had written these weights: msae.json's digest of them follows (else that check refuses first).
    if (fs::exists(dir_ / "msae.json"))
      edit_json("msae.json", [&](nlohmann::json& j) { j["files"]["sae_weights.safetensors"] = digest.to_json(); });
  }
  void edit_json(const std::string& file, const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = nlohmann::json::parse(io::read_text_file((dir_ / file).string()));
    edit(j);
    io::write_text_file_atomic((dir_ / file).string(), j.dump());
  }
  // read_sae_dir must refuse, with every needle in the message.
  void expect_refused(std::initializer_list<std::string> needles) {
    try {
      saedir::read_sae_dir(dir_.string());
      ADD_FAILURE() << "loaded";
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), 1) << e.what();
      for (const std::string& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << n << " in: " << e.what();
    }
  }
  fs::path dir_;
  SaeConfig cfg_;
  SaeParams params_;
};

TEST_F(StrictLoad, TheWrittenDirectoryLoads) {
  const saedir::SaeDirectory s = saedir::read_sae_dir(dir_.string());
  EXPECT_EQ(s.params.threshold, 0.25f);
  EXPECT_TRUE(s.nonfinite.empty());
}

TEST_F(StrictLoad, AMissingThresholdOrEncoderBiasIsRefused) {
  edit_weights([](auto& t) { t.erase("threshold"); });
  expect_refused({"sae_weights.safetensors", "'threshold'", "missing"});
  SetUp();
  edit_json("msae.json", [](nlohmann::json& j) { j["config"]["encoder_bias"] = true; });
  edit_weights([](auto& t) { t.erase("b_enc"); });
  expect_refused({"sae_weights.safetensors", "'b_enc'", "missing"});
}

TEST_F(StrictLoad, NonFiniteValuesAreRefusedAndListedWhenAllowed) {
  edit_weights([](auto& t) {
    t.at("W_dec").data[3 * 8 + 1] = std::numeric_limits<float>::quiet_NaN();  // W_dec (32, 8) [3, 1]
    t.at("W_dec").data[9 * 8 + 0] = std::numeric_limits<float>::infinity();
    t.at("threshold").data[7] = -std::numeric_limits<float>::infinity();
  });
  expect_refused({"sae_weights.safetensors", "'W_dec' (32, 8): 2 non-finite values", "first at [3, 1] (flat index 25)",
                  "'threshold' (32,): 1 non-finite value", "first at [7]"});
  const saedir::SaeDirectory s = saedir::read_sae_dir(dir_.string(), /*allow_nonfinite=*/true);
  ASSERT_EQ(s.nonfinite.size(), 2u);
  EXPECT_EQ(s.nonfinite[0].tensor, "W_dec");
  EXPECT_EQ(s.nonfinite[0].count, 2);
  EXPECT_EQ(s.nonfinite[0].first, 25);
  EXPECT_EQ(s.nonfinite[1].tensor, "threshold");
  EXPECT_EQ(s.nonfinite[1].first, 7);
  // W_enc is stored (d, D): the index is the file's.
  SetUp();
  edit_weights([](auto& t) { t.at("W_enc").data[1 * 32 + 30] = std::numeric_limits<float>::quiet_NaN(); });
  expect_refused({"'W_enc' (8, 32): 1 non-finite value", "first at [1, 30]"});
}

TEST_F(StrictLoad, InconsistentMetadataIsRefused) {
  // (each record on its own: cfg.json's copy of the field is dropped, so the cross-check does not fire first)
  edit_json("msae.json", [](nlohmann::json& j) {
    j["config"]["group_sizes"] = {8, 8, 8};
    j["config"].erase("group_boundaries");
  });
  edit_json("cfg.json", [](nlohmann::json& j) { j.erase("metadata"); });
  expect_refused({"sum to 24", "32"});
  SetUp();
  edit_json("cfg.json", [](nlohmann::json& j) { j["metadata"].erase("msae_k"); });
  edit_json("msae.json", [](nlohmann::json& j) { j["config"]["k"] = 33; });
  expect_refused({"msae.json", "k is 33", "[1, d_sae]"});
  SetUp();
  edit_json("msae.json", [](nlohmann::json& j) { j["config"]["d_sae"] = 64; });
  expect_refused({"msae.json", "config.d_sae is 64", "32"});
  SetUp();
  edit_json("msae.json", [](nlohmann::json& j) { j["config"]["group_boundaries"] = {8, 16, 30}; });
  expect_refused({"msae.json", "group_boundaries", "[8,16,32]"});
  SetUp();
  edit_json("cfg.json", [](nlohmann::json& j) { j["metadata"]["msae_k"] = 4; });
  expect_refused({"cfg.json", "msae_k 4", "config.k 3"});
  SetUp();
  edit_json("cfg.json", [](nlohmann::json& j) { j["metadata"]["matryoshka_group_sizes"] = {16, 16}; });
  expect_refused({"cfg.json", "matryoshka_group_sizes", "disagree"});
  SetUp();
  edit_json("cfg.json", [](nlohmann::json& j) { j["metadata"]["msae_arch"] = "batchtopk"; });
  expect_refused({"cfg.json", "msae_arch 'batchtopk'", "matryoshka"});
  // Without msae.json, cfg.json's metadata is the record and is held to the same rules.
  SetUp();
  fs::remove(dir_ / "msae.json");
  edit_json("cfg.json", [](nlohmann::json& j) { j["metadata"]["msae_k"] = 40; });
  expect_refused({"cfg.json", "k is 40"});
}

TEST(Trainer, SameSeedSameBits) {
  for (const std::string& engine : train::engine_names()) {
    const auto a = train_synthetic(engine, 5, 3);
    const auto b = train_synthetic(engine, 5, 3);
    EXPECT_EQ(a.params().W_enc_t.data, b.params().W_enc_t.data) << engine;
    EXPECT_EQ(a.params().W_dec.data, b.params().W_dec.data) << engine;
    EXPECT_EQ(a.params().threshold, b.params().threshold) << engine;
  }
}

}  // namespace
