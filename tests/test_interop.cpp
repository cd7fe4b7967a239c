// Import of SAE directories written by other trainers (saedir::read_sae_dir, docs/interop.md), on files
// built here to the documented layouts: SAELens cfg.json (keys as SAELens 5/6 write them) +
// sae_weights.safetensors; EleutherAI sparsify cfg.json (SparseCoderConfig.to_dict() + "d_in") +
// sae.safetensors, written byte by byte as bfloat16 the way torch's safetensors writer lays it out.
// Each import is checked against a hand computation of its trainer's forward pass:
//   SAELens standard:  z = relu((x - b_dec*apply) @ W_enc + b_enc)
//   SAELens jumprelu:  z = relu(pre) * (pre > threshold_i)
//   SAELens topk:      z = relu(topk_k(pre)) scattered; sparsify: topk_k(relu(pre)) (same nonzeros)
//   decode:            r = z @ W_dec + b_dec
// Tolerances: the small cases use exactly representable inputs and weights (multiples of 1/4, 1/8), so
// pre-activations are exact in float32 and codes are compared for equality; the random case compares
// against a double-precision loop with 1e-5 relative slack (float32 GEMM round-off over d = 6 terms).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "msae/eval.h"
#include "msae/io.h"
#include "msae/sae_dir.h"

namespace msae {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("msae_interop_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string str() const { return path.string(); }
};

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
}

// A small SAE with exactly representable weights: d = 3, D = 4.
//   W_enc (d, D) columns: latent 0 reads x0, latent 1 reads x1, latent 2 reads x0 - x1, latent 3 reads -x2.
struct Tiny {
  static constexpr int64_t d = 3, D = 4;
  std::vector<float> W_enc = {1, 0, 1, 0,    // row j = 0 (d, D) row-major
                              0, 1, -1, 0,   // j = 1
                              0, 0, 0, -1};  // j = 2
  std::vector<float> W_dec = {0.5f, 0, 0,  0, 0.5f, 0,  0.25f, -0.25f, 0,  0, 0, -1};  // (D, d)
  std::vector<float> b_enc = {0, -0.25f, 0.125f, 0};
  std::vector<float> b_dec = {0.25f, 0, -0.5f};
  std::vector<float> threshold = {0.5f, 0, 2, 0.25f};
};

// x rows (B = 2, d = 3)
const std::vector<float> kX = {2, 1, 0.5f, -1, 3, -2};

// Dense reference forward of a SAELens-style SAE, in double.
std::vector<double> ref_pre(const Tiny& t, bool center) {
  std::vector<double> pre(2 * Tiny::D);
  for (int r = 0; r < 2; ++r)
    for (int i = 0; i < Tiny::D; ++i) {
      double s = t.b_enc[i];
      for (int j = 0; j < Tiny::d; ++j) s += (kX[r * 3 + j] - (center ? t.b_dec[j] : 0.0)) * t.W_enc[j * Tiny::D + i];
      pre[r * Tiny::D + i] = s;
    }
  return pre;
}

std::vector<float> dense_codes(const saedir::SaeDirectory& s, int64_t limit) {
  const kernels::SparseCodes z = encode_inference(s.sae, s.params, kX.data(), 2, limit);
  std::vector<float> dense(2 * s.params.D);
  kernels::codes_to_dense(z, dense.data());
  return dense;
}

void write_saelens(const TempDir& dir, const Tiny& t, const json& cfg, bool with_threshold) {
  std::vector<io::TensorRef> tensors = {{"W_enc", {Tiny::d, Tiny::D}, t.W_enc.data()},
                                        {"W_dec", {Tiny::D, Tiny::d}, t.W_dec.data()},
                                        {"b_enc", {Tiny::D}, t.b_enc.data()},
                                        {"b_dec", {Tiny::d}, t.b_dec.data()}};
  if (with_threshold) tensors.push_back({"threshold", {Tiny::D}, t.threshold.data()});
  io::write_safetensors(dir.str() + "/sae_weights.safetensors", tensors);
  write_text(dir.path / "cfg.json", cfg.dump());
}

// cfg.json as SAELens 6 writes it (SAEConfig.to_dict(): fields, "meta", "architecture").
json saelens_cfg(const std::string& arch, bool apply_b_dec) {
  return {{"d_in", Tiny::d},
          {"d_sae", Tiny::D},
          {"dtype", "float32"},
          {"device", "cpu"},
          {"apply_b_dec_to_input", apply_b_dec},
          {"normalize_activations", "none"},
          {"reshape_activations", "none"},
          {"meta", {{"model_name", "gpt2"}, {"hook_name", "blocks.0.hook_resid_pre"}, {"sae_lens_version", "6.5.1"}}},
          {"architecture", arch}};
}

TEST(Import, SaelensStandardIsReluWithCentering) {
  TempDir dir("standard");
  Tiny t;
  write_saelens(dir, t, saelens_cfg("standard", true), false);
  const saedir::SaeDirectory s = saedir::read_sae_dir(dir.str());
  EXPECT_EQ(s.format, "saelens-standard");
  EXPECT_EQ(s.params.rule.kind, EncodeRule::Kind::jumprelu);
  EXPECT_TRUE(s.params.rule.center_input);
  // Hand computation, row 0: x - b_dec = (1.75, 1, 1); pre = (1.75, 1 - 0.25, 0.75 + 0.125, -1)
  const std::vector<float> want = {1.75f, 0.75f, 0.875f, 0.0f,
                                   // row 1: x - b_dec = (-1.25, 3, -1.5); pre = (-1.25, 2.75, -4.125, 1.5)
                                   0.0f, 2.75f, 0.0f, 1.5f};
  EXPECT_EQ(dense_codes(s, Tiny::D), want);
  const std::vector<double> pre = ref_pre(t, true);
  for (int e = 0; e < 8; ++e) EXPECT_EQ(want[e], static_cast<float>(std::max(0.0, pre[e]))) << e;
  // decode: row 0 = b_dec + 1.75*W_dec0 + 0.75*W_dec1 + 0.875*W_dec2
  const kernels::SparseCodes z = encode_inference(s.sae, s.params, kX.data(), 2, Tiny::D);
  std::vector<float> r(6);
  decode(s.params, z, r.data());
  EXPECT_FLOAT_EQ(r[0], 0.25f + 0.875f + 0.21875f);
  EXPECT_FLOAT_EQ(r[1], 0.375f - 0.21875f);
  EXPECT_FLOAT_EQ(r[2], -0.5f);
  EXPECT_FLOAT_EQ(r[5], -0.5f - 1.5f);
}

TEST(Import, SaelensJumpReluPerLatentThresholdsWithoutCentering) {
  TempDir dir("jumprelu");
  Tiny t;
  write_saelens(dir, t, saelens_cfg("jumprelu", false), true);
  const saedir::SaeDirectory s = saedir::read_sae_dir(dir.str());
  EXPECT_EQ(s.format, "saelens-jumprelu");
  EXPECT_FALSE(s.params.rule.center_input);
  EXPECT_EQ(s.params.rule.thresholds, t.threshold);
  // Uncentred pre, row 0: (2, 0.75, 1.125, -0.5); thresholds (0.5, 0, 2, 0.25) keep latents 0 and 1.
  // Row 1: (-1, 2.75, -3.875, 2): keeps 1 and 3.
  const std::vector<float> want = {2, 0.75f, 0, 0, 0, 2.75f, 0, 2};
  EXPECT_EQ(dense_codes(s, Tiny::D), want);
  // A Matryoshka-style prefix limit restricts to ids < limit.
  const std::vector<float> want2 = {2, 0.75f, 0, 0, 0, 2.75f, 0, 0};
  EXPECT_EQ(dense_codes(s, 2), want2);
}

TEST(Import, SaelensTopKBothConfigGenerations) {
  Tiny t;
  // SAELens 6: architecture "topk" with a top-level k.
  json v6 = saelens_cfg("topk", true);
  v6["k"] = 2;
  // SAELens 5: architecture "standard", activation_fn_str "topk", activation_fn_kwargs {"k": 2}.
  json v5 = saelens_cfg("standard", true);
  v5["activation_fn_str"] = "topk";
  v5["activation_fn_kwargs"] = {{"k", 2}};
  for (const json& cfg : {v6, v5}) {
    TempDir dir("topk");
    write_saelens(dir, t, cfg, false);
    const saedir::SaeDirectory s = saedir::read_sae_dir(dir.str());
    EXPECT_EQ(s.format, "saelens-topk");
    EXPECT_EQ(s.params.rule.kind, EncodeRule::Kind::topk);
    EXPECT_EQ(s.params.rule.k, 2);
    EXPECT_EQ(s.sae.arch, Arch::topk);
    // Centred pre row 0: (1.75, 0.75, 0.875, -1) -> top 2: latents 0, 2. Row 1: (-1.25, 2.75, -4.125, 1.5) -> 1, 3.
    const std::vector<float> want = {1.75f, 0, 0.875f, 0, 0, 2.75f, 0, 1.5f};
    EXPECT_EQ(dense_codes(s, Tiny::D), want) << cfg.dump();
  }
}

// bfloat16 bits of a float that bfloat16 represents exactly.
uint16_t bf16_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  EXPECT_EQ(u & 0xffffu, 0u) << v << " is not exact in bfloat16";
  return static_cast<uint16_t>(u >> 16);
}

// A .safetensors file as safetensors' Rust writer lays it out: u64 LE header length, JSON header with the
// tensors in name order (no padding needed here), little-endian data.
void write_bf16_safetensors(const fs::path& path,
                            const std::vector<std::pair<std::string, std::pair<std::vector<int64_t>, std::vector<float>>>>& ts) {
  json header = json::object();
  std::string data;
  for (const auto& [name, sv] : ts) {
    const size_t begin = data.size();
    for (float v : sv.second) {
      const uint16_t b = bf16_bits(v);
      data.push_back(static_cast<char>(b & 0xff));
      data.push_back(static_cast<char>(b >> 8));
    }
    header[name] = {{"dtype", "BF16"}, {"shape", sv.first}, {"data_offsets", {begin, data.size()}}};
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  write_text(path, out + text + data);
}

// sparsify's cfg.json: SparseCoderConfig.to_dict() plus d_in.
json sparsify_cfg(int64_t d_in, int64_t num_latents, int64_t k) {
  return {{"activation", "topk"}, {"expansion_factor", 32}, {"normalize_decoder", true}, {"num_latents", num_latents},
          {"k", k}, {"multi_topk", false}, {"skip_connection", false}, {"transcode", false}, {"d_in", d_in}};
}

void write_sparsify(const fs::path& dir, const Tiny& t, const json& cfg) {
  fs::create_directories(dir);
  std::vector<float> enc_w(Tiny::D * Tiny::d);  // encoder.weight (D, d) = W_enc^T
  for (int i = 0; i < Tiny::D; ++i)
    for (int j = 0; j < Tiny::d; ++j) enc_w[i * Tiny::d + j] = t.W_enc[j * Tiny::D + i];
  write_bf16_safetensors(dir / "sae.safetensors", {{"W_dec", {{Tiny::D, Tiny::d}, t.W_dec}},
                                                   {"b_dec", {{Tiny::d}, t.b_dec}},
                                                   {"encoder.bias", {{Tiny::D}, t.b_enc}},
                                                   {"encoder.weight", {{Tiny::D, Tiny::d}, enc_w}}});
  write_text(dir / "cfg.json", cfg.dump());
}

TEST(Import, SparsifyTopKFromBf16) {
  TempDir dir("sparsify");
  Tiny t;
  write_sparsify(dir.path, t, sparsify_cfg(Tiny::d, Tiny::D, 1));
  const saedir::SaeDirectory s = saedir::read_sae_dir(dir.str());
  EXPECT_EQ(s.format, "sparsify-topk");
  EXPECT_EQ(s.params.rule.k, 1);
  EXPECT_TRUE(s.params.rule.center_input);  // sparsify encodes x - b_dec
  // Centred pre (same as SAELens standard): row 0 top-1 = latent 0 (1.75); row 1 = latent 1 (2.75).
  const std::vector<float> want = {1.75f, 0, 0, 0, 0, 2.75f, 0, 0};
  EXPECT_EQ(dense_codes(s, Tiny::D), want);
  // num_latents 0: D = d_in * expansion_factor must match encoder.weight.
  json by_factor = sparsify_cfg(Tiny::d, 0, 1);
  by_factor["expansion_factor"] = 1;
  write_text(dir.path / "cfg.json", by_factor.dump());
  EXPECT_THROW(saedir::read_sae_dir(dir.str()), Error);  // 3 * 1 != 4 rows
}

TEST(Import, InitFromAnImportedSaeTakesTheWeightsOnly) {
  TempDir dir("init");
  Tiny t;
  write_sparsify(dir.path, t, sparsify_cfg(Tiny::d, Tiny::D, 1));
  const SaeParams p = saedir::load_init_params(dir.str(), Tiny::d, Tiny::D);
  EXPECT_TRUE(p.rule.is_default());
  EXPECT_EQ(p.b_dec.data[0], 0.25f);
}

TEST(Import, SparsifyMultiLayerRootNamesTheLayers) {
  TempDir dir("sparsify_root");
  Tiny t;
  write_sparsify(dir.path / "layers.0", t, sparsify_cfg(Tiny::d, Tiny::D, 2));
  write_sparsify(dir.path / "layers.1", t, sparsify_cfg(Tiny::d, Tiny::D, 2));
  try {
    saedir::read_sae_dir(dir.str());
    FAIL() << "a root of per-layer directories must be refused";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("layers.0"), std::string::npos) << msg;
    EXPECT_NE(msg.find("layers.1"), std::string::npos) << msg;
  }
  EXPECT_EQ(saedir::read_sae_dir((dir.path / "layers.1").string()).format, "sparsify-topk");
}

TEST(Import, RefusesWhatEvalCannotReproduce) {
  Tiny t;
  auto expect_refused = [&](const json& cfg, bool thr, const std::string& needle) {
    TempDir dir("refuse");
    write_saelens(dir, t, cfg, thr);
    try {
      saedir::read_sae_dir(dir.str());
      ADD_FAILURE() << "accepted " << cfg.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_refused(saelens_cfg("gated", true), false, "gated");
  json ln = saelens_cfg("standard", true);
  ln["normalize_activations"] = "layer_norm";
  expect_refused(ln, false, "layer_norm");
  expect_refused(saelens_cfg("jumprelu", true), false, "threshold");  // jumprelu without its thresholds
  expect_refused(saelens_cfg("topk", true), false, "\"k\"");          // topk without k
  json bad_type = saelens_cfg("standard", true);
  bad_type["apply_b_dec_to_input"] = "yes";
  expect_refused(bad_type, false, "apply_b_dec_to_input");
  json wrong_d = saelens_cfg("standard", true);
  wrong_d["d_in"] = 5;
  expect_refused(wrong_d, false, "d_in");

  TempDir dir("refuse_sparsify");
  json tc = sparsify_cfg(Tiny::d, Tiny::D, 2);
  tc["transcode"] = true;
  write_sparsify(dir.path, t, tc);
  EXPECT_THROW(saedir::read_sae_dir(dir.str()), Error);
}

// An imported SAE flows through eval::evaluate: its figures equal a direct double-precision computation.
TEST(Import, EvaluateMatchesDirectComputation) {
  constexpr int64_t d = 6, D = 10, N = 64;
  Rng rng(7);
  std::vector<float> W_enc(d * D), W_dec(D * d), b_enc(D), b_dec(d), thr(D), x(N * d);
  for (float& v : W_enc) v = float(rng.normal());
  for (float& v : W_dec) v = float(rng.normal() * 0.5);
  for (float& v : b_enc) v = float(rng.normal() * 0.1);
  for (float& v : b_dec) v = float(rng.normal() * 0.1);
  for (float& v : thr) v = float(std::abs(rng.normal()));
  for (float& v : x) v = float(rng.normal());
  for (const std::string arch : {"jumprelu", "standard", "topk"}) {
    TempDir dir("eval_" + arch);
    json cfg = {{"architecture", arch}, {"d_in", d}, {"d_sae", D}, {"apply_b_dec_to_input", arch != "standard"},
                {"normalize_activations", "none"}, {"k", 3}};
    std::vector<io::TensorRef> ts = {{"W_enc", {d, D}, W_enc.data()}, {"W_dec", {D, d}, W_dec.data()},
                                     {"b_enc", {D}, b_enc.data()}, {"b_dec", {d}, b_dec.data()}};
    if (arch == "jumprelu") ts.push_back({"threshold", {D}, thr.data()});
    io::write_safetensors(dir.str() + "/sae_weights.safetensors", ts);
    write_text(dir.path / "cfg.json", cfg.dump());
    io::write_npy(dir.str() + "/x.npy", x.data(), {N, d});
    const saedir::SaeDirectory s = saedir::read_sae_dir(dir.str());
    auto src = data::open_npy(dir.str() + "/x.npy", false, 0);
    const eval::EvalReport rep = eval::evaluate(s.sae, s.params, *src, N, 16);

    double sq = 0, l0 = 0;
    std::vector<double> mean(d, 0.0);
    for (int64_t r = 0; r < N; ++r)
      for (int64_t j = 0; j < d; ++j) mean[j] += x[r * d + j] / double(N);
    double var = 0;
    for (int64_t r = 0; r < N; ++r) {
      const float* xr = x.data() + r * d;
      std::vector<double> pre(D);
      for (int64_t i = 0; i < D; ++i) {
        double p = b_enc[i];
        for (int64_t j = 0; j < d; ++j) p += (xr[j] - (arch != "standard" ? b_dec[j] : 0.0)) * W_enc[j * D + i];
        pre[i] = p;
      }
      std::vector<double> z(D, 0.0);
      if (arch == "topk") {
        std::vector<int64_t> order(D);
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return pre[a] > pre[b]; });
        for (int q = 0; q < 3; ++q) z[order[q]] = std::max(0.0, pre[order[q]]);
      } else {
        for (int64_t i = 0; i < D; ++i)
          z[i] = pre[i] > 0 && pre[i] > (arch == "jumprelu" ? thr[i] : 0.0f) ? pre[i] : 0.0;
      }
      for (int64_t i = 0; i < D; ++i) l0 += z[i] > 0;
      for (int64_t j = 0; j < d; ++j) {
        double rec = b_dec[j];
        for (int64_t i = 0; i < D; ++i) rec += z[i] * W_dec[i * d + j];
        sq += (rec - xr[j]) * (rec - xr[j]);
        var += (xr[j] - mean[j]) * (xr[j] - mean[j]);
      }
    }
    ASSERT_EQ(rep.prefixes.size(), 1u) << arch;
    EXPECT_NEAR(rep.prefixes[0].mse, sq / double(N * d), 1e-5 * sq / double(N * d)) << arch;
    EXPECT_NEAR(rep.prefixes[0].fvu, sq / var, 1e-5 * sq / var) << arch;
    EXPECT_DOUBLE_EQ(rep.prefixes[0].l0, l0 / double(N)) << arch;
    EXPECT_GT(l0, 0) << arch << ": the case must activate latents to test anything";
  }
}

}  // namespace
}  // namespace msae

namespace msae {
namespace {

// Regression: error messages used to print the offending JSON value with json::dump(), which recurses;
// a value nested a million levels deep (2 MB of brackets) overflowed the stack (SIGSEGV) instead of
// giving an error. Found by reviewing what the fuzz targets reach; json_excerpt never recurses.
std::string deep_array(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

TEST(FuzzRegression, DeeplyNestedSafetensorsHeaderValueIsAnError) {
  TempDir dir("deep_st");
  const std::string header = "{\"W_enc\":{\"dtype\":" + deep_array(1'000'000) + ",\"shape\":[1,1],\"data_offsets\":[0,4]}}";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  write_text(dir.path / "sae_weights.safetensors", bytes + header + std::string(4, '\0'));
  try {
    io::read_safetensors(dir.str() + "/sae_weights.safetensors");
    FAIL() << "accepted a nested dtype";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nested"), std::string::npos) << e.what();
  }
}

TEST(FuzzRegression, DeeplyNestedCfgJsonValueIsAnError) {
  TempDir dir("deep_cfg");
  Tiny t;
  write_saelens(dir, t, saelens_cfg("standard", true), false);
  write_text(dir.path / "cfg.json", "{\"architecture\": \"standard\", \"apply_b_dec_to_input\": " +
                                        deep_array(1'000'000) + "}");
  EXPECT_THROW(saedir::read_sae_dir(dir.str()), Error);
}

// Regression: msae.json is kept in SaeDirectory and copied/printed by `msae inspect` (recursive operations);
// a deeply nested one crashed there. The parser now refuses nesting beyond 64 levels.
TEST(FuzzRegression, DeeplyNestedMsaeJsonIsRefusedAtParse) {
  TempDir dir("deep_msae");
  Tiny t;
  write_saelens(dir, t, saelens_cfg("standard", true), false);
  write_text(dir.path / "msae.json", "{\"training\": " + deep_array(100'000) + "}");
  try {
    saedir::read_sae_dir(dir.str());
    FAIL() << "accepted a 100000-deep msae.json";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nested deeper"), std::string::npos) << e.what();
  }
  write_text(dir.path / "msae.json", "{\"training\": " + deep_array(60) + "}");  // deep but sane: accepted
  EXPECT_EQ(saedir::read_sae_dir(dir.str()).format, "saelens-standard");
}

TEST(FuzzRegression, JsonExcerptIsShortAndFlat) {
  EXPECT_EQ(io::json_excerpt(json::parse("[1, 2]")), "[1,2]");
  EXPECT_EQ(io::json_excerpt(json::parse("[[1], 2]")), "an array of 2 elements (nested)");
  EXPECT_EQ(io::json_excerpt(json(std::string(500, 'a'))).size(), 203u);
}

}  // namespace
}  // namespace msae
