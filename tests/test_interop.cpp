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

// cfg.json as SAELens 6 writes it (SAELens 6.18.0 sae_lens/saes/sae.py SAEConfig.to_dict(): the dataclass
// fields, "metadata" (SAEMetadata.to_dict(), sae_lens_version first), "architecture").
json saelens_cfg(const std::string& arch, bool apply_b_dec) {
  return {{"d_in", Tiny::d},
          {"d_sae", Tiny::D},
          {"dtype", "float32"},
          {"device", "cpu"},
          {"apply_b_dec_to_input", apply_b_dec},
          {"normalize_activations", "none"},
          {"reshape_activations", "none"},
          {"metadata", {{"sae_lens_version", "6.18.0"}, {"sae_lens_training_version", "6.18.0"}, {"model_name", "gpt2"},
                        {"hook_name", "blocks.0.hook_resid_pre"}}},
          {"architecture", arch}};
}

// cfg.json as SAELens 5 wrote it (a flat config: hook_point, activation_fn_str, no metadata).
json saelens5_cfg(const std::string& activation, int64_t k) {
  json c = {{"architecture", "standard"}, {"d_in", Tiny::d}, {"d_sae", Tiny::D}, {"dtype", "float32"},
            {"device", "cpu"}, {"apply_b_dec_to_input", true}, {"normalize_activations", false},
            {"model_name", "gpt2"}, {"hook_point", "blocks.0.hook_resid_pre"}, {"hook_point_layer", 0},
            {"context_size", 128}, {"prepend_bos", true}, {"sae_lens_training_version", "5.3.0"},
            {"activation_fn_str", activation}};
  if (k > 0) c["activation_fn_kwargs"] = {{"k", k}};
  return c;
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
  const json v5 = saelens5_cfg("topk", 2);
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

// ---------------------------------------------------------------------------------------------
// Issue 27: SAELens 6 metadata, rescale_acts_by_decoder_norm, and msae convert.
// ---------------------------------------------------------------------------------------------
namespace msae {
namespace {

// An SAE msae trained, on Tiny's weights: Matryoshka groups {2, 2}, k 2, one threshold (0.5).
saedir::SaeDirectory tiny_msae(const Tiny& t) {
  saedir::SaeDirectory s;
  s.sae.arch = Arch::matryoshka;
  s.sae.d_in = Tiny::d;
  s.sae.d_sae = Tiny::D;
  s.sae.k = 2;
  s.sae.group_sizes = {2, 2};
  s.sae.encoder_bias = true;
  s.sae.reorder_every = 7;  // a variant, so that the round trips show the variants survive
  s.sae.finalize();
  s.params = SaeParams::zeros(Tiny::d, Tiny::D);
  for (int64_t i = 0; i < Tiny::D; ++i)
    for (int64_t j = 0; j < Tiny::d; ++j) s.params.W_enc_t.data[i * Tiny::d + j] = t.W_enc[j * Tiny::D + i];
  s.params.W_dec.data.assign(t.W_dec.begin(), t.W_dec.end());
  s.params.b_enc.data.assign(t.b_enc.begin(), t.b_enc.end());
  s.params.b_dec.data.assign(t.b_dec.begin(), t.b_dec.end());
  s.params.threshold = 0.5f;
  s.msae_json = {{"format", "msae-sae"}, {"format_version", 1}, {"config", saedir::config_json(s.sae)}};
  return s;
}

// Codes of `s` on rows x (n, d), as (ids, vals) per row.
kernels::SparseCodes codes_of(const saedir::SaeDirectory& s, const std::vector<float>& x) {
  return encode_inference(s.sae, s.params, x.data(), static_cast<int64_t>(x.size()) / s.params.d, s.params.D);
}

void expect_same_codes(const kernels::SparseCodes& a, const kernels::SparseCodes& b, const std::string& what) {
  EXPECT_EQ(a.row_ptr, b.row_ptr) << what;
  EXPECT_EQ(a.ids, b.ids) << what;
  EXPECT_EQ(a.vals, b.vals) << what;  // bitwise: the same float32 weights through the same rule
  EXPECT_GT(a.nnz(), 0) << what << ": nothing fired; the comparison would be vacuous";
}

std::vector<float> random_rows(int64_t n, int64_t d, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(n * d));
  for (float& v : x) v = static_cast<float>(rng.normal() * 1.5);
  return x;
}

// SAELens 6.18.0's SAE.load_from_disk followed by save_model, on cfg.json (the weights are copied as they
// are: JumpReLUSAE / TopKSAE state_dict = W_enc, W_dec, b_enc, b_dec (+ threshold)). Follows
//  - sae_lens/loading/pretrained_sae_loaders.py handle_config_defaulting: sae_lens_version from the top
//    level or "metadata"; missing or < 6.0.0-rc.0 -> handle_pre_6_0_config, which keeps only the
//    dataclass fields and rebuilds "metadata" from the top-level LLM_METADATA_KEYS (model_name, hook_name,
//    context_size, prepend_bos, ..., sae_lens_version): the old metadata object is dropped;
//  - sae_lens/saes/sae.py SAEConfig.from_dict (filter_valid_dataclass_fields; metadata =
//    SAEMetadata(**metadata), which adds sae_lens_version / sae_lens_training_version = __version__ when
//    missing) and SAEConfig.to_dict (fields, metadata, architecture).
json saelens_load_and_save(json cfg) {
  std::string version;
  if (cfg.contains("sae_lens_version")) version = cfg["sae_lens_version"].get<std::string>();
  if (version.empty() && cfg.contains("metadata") && cfg["metadata"].contains("sae_lens_version"))
    version = cfg["metadata"]["sae_lens_version"].get<std::string>();
  const bool v6 = !version.empty() && version[0] >= '6' && version[0] <= '9';
  const std::string arch = cfg.value("architecture", std::string("standard"));
  std::vector<std::string> fields = {"d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
                                     "normalize_activations", "reshape_activations"};
  if (arch == "topk") fields.insert(fields.end(), {"k", "rescale_acts_by_decoder_norm"});
  json meta = json::object();
  if (v6) {
    meta = cfg.value("metadata", json::object());
  } else {
    for (const char* key : {"model_name", "hook_name", "model_class_name", "hook_head_index",
                            "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens", "neuronpedia_id",
                            "context_size", "seqpos_slice", "dataset_path", "sae_lens_version",
                            "sae_lens_training_version", "hook_name_out", "hook_head_index_out"})
      if (cfg.contains(key)) meta[key] = cfg[key];
    if (!meta.contains("sae_lens_training_version")) meta["sae_lens_training_version"] = nullptr;  // setdefault
  }
  if (!meta.contains("sae_lens_version")) meta["sae_lens_version"] = "6.18.0";
  if (!meta.contains("sae_lens_training_version")) meta["sae_lens_training_version"] = "6.18.0";
  json out = json::object();
  for (const std::string& f : fields)
    if (cfg.contains(f)) out[f] = cfg[f];
  out["metadata"] = meta;
  out["architecture"] = arch;
  return out;
}

TEST(Export, CfgJsonIsSaelens6WithTheHookAndMsaeFields) {
  TempDir dir("export_cfg");
  const Tiny t;
  saedir::SaeDirectory s = tiny_msae(t);
  json m = s.msae_json;
  m["hook"] = {{"model_name", "gpt2"}, {"hook_name", "blocks.1.hook_resid_pre"}, {"context_size", 64},
               {"prepend_bos", true}, {"skip_bos", true}};
  saedir::write_sae_files(dir.str(), s.sae, s.params, m);
  const json cfg = json::parse(io::read_text_file(dir.str() + "/cfg.json"));
  const json& meta = cfg["metadata"];
  EXPECT_EQ(meta["sae_lens_version"], "6.18.0");
  EXPECT_TRUE(meta["sae_lens_training_version"].is_null());  // not trained by SAELens
  EXPECT_EQ(meta["model_name"], "gpt2");
  EXPECT_EQ(meta["hook_name"], "blocks.1.hook_resid_pre");
  EXPECT_EQ(meta["context_size"], 64);
  EXPECT_EQ(meta["prepend_bos"], true);
  EXPECT_EQ(meta["seqpos_slice"], json::parse("[1, null]"));  // --skip-bos: positions 1.. of each context
  EXPECT_TRUE(meta.contains("hook_head_index"));
  EXPECT_EQ(meta["matryoshka_group_sizes"], json::parse("[2, 2]"));
  EXPECT_EQ(meta["msae_arch"], "matryoshka");
  // Without a hook the SAELens fields are there, null.
  TempDir plain("export_cfg_plain");
  saedir::write_sae_files(plain.str(), s.sae, s.params, s.msae_json);
  const json meta2 = json::parse(io::read_text_file(plain.str() + "/cfg.json"))["metadata"];
  for (const char* key : {"model_name", "hook_name", "hook_head_index", "context_size", "prepend_bos", "seqpos_slice"})
    EXPECT_TRUE(meta2.contains(key) && meta2[key].is_null()) << key;
}

// Issue 27 item 1: after SAELens's load + save_model msae still sees its groups, arch, k and variants.
// With the cfg.json msae wrote before (no sae_lens_version), the same load + save lost them: the check
// can fail.
TEST(Export, MsaeMetadataSurvivesSaelensLoadAndSave) {
  const Tiny t;
  const saedir::SaeDirectory s = tiny_msae(t);
  for (const bool with_version : {true, false}) {
    TempDir dir(with_version ? "sl_roundtrip" : "sl_roundtrip_old");
    saedir::write_sae_files(dir.str(), s.sae, s.params, s.msae_json);
    fs::remove(dir.path / "msae.json");  // SAELens's save_model writes cfg.json and the weights only
    json cfg = json::parse(io::read_text_file(dir.str() + "/cfg.json"));
    if (!with_version) {  // the layout before issue 27
      cfg["metadata"].erase("sae_lens_version");
      cfg["metadata"].erase("sae_lens_training_version");
    }
    write_text(dir.path / "cfg.json", saelens_load_and_save(cfg).dump());
    const saedir::SaeDirectory back = saedir::read_sae_dir(dir.str());
    if (with_version) {
      EXPECT_EQ(back.format, "msae");
      EXPECT_EQ(back.sae.arch, Arch::matryoshka);
      EXPECT_EQ(back.sae.group_sizes, s.sae.group_sizes);
      EXPECT_EQ(back.sae.k, 2);
      EXPECT_EQ(back.sae.reorder_every, 7);
    } else {
      EXPECT_EQ(back.format, "saelens-jumprelu");  // SAELens's pre-6 path dropped msae's metadata
      EXPECT_EQ(back.sae.group_sizes.size(), 1u);
    }
  }
}

TEST(Import, RescaleActsByDecoderNormIsSaelensTopK) {
  // SAELens 6.18.0 sae_lens/saes/topk_sae.py TopKSAE:
  //   encode: hidden_pre = (sae_in @ W_enc + b_enc) * W_dec.norm(dim=-1); acts = relu(topk(hidden_pre))
  //   decode: (acts / W_dec.norm(dim=-1)) @ W_dec + b_dec
  Tiny t;
  t.W_dec = {2, 0, 0, 0, 0.5f, 0, 0, 0, 4, 0.75f, 1, 0};  // row norms 2, 0.5, 4, 1.25 (exact in float32)
  const std::vector<double> norm = {2, 0.5, 4, 1.25};
  json cfg = saelens_cfg("topk", true);
  cfg["k"] = 2;
  cfg["rescale_acts_by_decoder_norm"] = true;
  TempDir dir("rescale");
  write_saelens(dir, t, cfg, false);
  const saedir::SaeDirectory s = saedir::read_sae_dir(dir.str());
  ASSERT_EQ(s.params.rule.decoder_norm.size(), 4u);
  const std::vector<double> pre = ref_pre(t, true);
  std::vector<float> want(8, 0.0f);
  std::vector<double> rec(6, 0.0);
  for (int r = 0; r < 2; ++r) {
    std::vector<double> h(4);
    for (int i = 0; i < 4; ++i) h[i] = pre[r * 4 + i] * norm[i];
    std::vector<int> order = {0, 1, 2, 3};
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return h[a] > h[b]; });
    for (int q = 0; q < 2; ++q) want[r * 4 + order[q]] = static_cast<float>(std::max(0.0, h[order[q]]));
    for (int j = 0; j < 3; ++j) {
      rec[r * 3 + j] = t.b_dec[j];
      for (int i = 0; i < 4; ++i) rec[r * 3 + j] += want[r * 4 + i] / norm[i] * t.W_dec[i * 3 + j];
    }
  }
  EXPECT_EQ(dense_codes(s, Tiny::D), want);
  const kernels::SparseCodes z = encode_inference(s.sae, s.params, kX.data(), 2, Tiny::D);
  std::vector<float> r(6);
  decode(s.params, z, r.data());
  for (int e = 0; e < 6; ++e) EXPECT_NEAR(r[e], rec[e], 1e-6) << e;
  // Without the rescaling the codes differ (the check can fail).
  cfg["rescale_acts_by_decoder_norm"] = false;
  write_text(dir.path / "cfg.json", cfg.dump());
  EXPECT_NE(dense_codes(saedir::read_sae_dir(dir.str()), Tiny::D), want);
  // SAELens drops the field for other architectures (not a JumpReLUSAEConfig field): so does msae.
  json jr = saelens_cfg("jumprelu", true);
  jr["rescale_acts_by_decoder_norm"] = true;
  write_text(dir.path / "cfg.json", jr.dump());
  write_saelens(dir, t, jr, true);
  EXPECT_TRUE(saedir::read_sae_dir(dir.str()).params.rule.decoder_norm.empty());
}

TEST(Import, Saelens5ConfigAsSaelens6ReadsIt) {
  Tiny t;
  TempDir dir("saelens5");
  write_saelens(dir, t, saelens5_cfg("relu", 0), false);  // normalize_activations false, hook_point
  const saedir::SaeDirectory s = saedir::read_sae_dir(dir.str());
  EXPECT_EQ(s.format, "saelens-standard");
  EXPECT_EQ(s.hook_name, "blocks.0.hook_resid_pre");
  json norm_true = saelens5_cfg("relu", 0);
  norm_true["normalize_activations"] = true;  // expected_average_only_in: the identity at inference
  write_text(dir.path / "cfg.json", norm_true.dump());
  EXPECT_EQ(saedir::read_sae_dir(dir.str()).format, "saelens-standard");
}

TEST(Import, RefusalsOfferARemedy) {
  Tiny t;
  auto message = [&](const json& cfg, const std::vector<float>* scaling) -> std::string {
    TempDir dir("remedy");
    write_saelens(dir, t, cfg, false);
    if (scaling) {
      std::vector<io::TensorRef> ts = {{"W_enc", {Tiny::d, Tiny::D}, t.W_enc.data()},
                                       {"W_dec", {Tiny::D, Tiny::d}, t.W_dec.data()},
                                       {"b_enc", {Tiny::D}, t.b_enc.data()},
                                       {"b_dec", {Tiny::d}, t.b_dec.data()},
                                       {"scaling_factor", {Tiny::D}, scaling->data()}};
      io::write_safetensors(dir.str() + "/sae_weights.safetensors", ts);
    }
    try {
      saedir::read_sae_dir(dir.str());
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  // SAELens 6 ignores activation_fn: "standard" + "topk" is contradictory.
  json c = saelens_cfg("standard", true);
  c["activation_fn"] = "topk";
  c["activation_fn_kwargs"] = {{"k", 2}};
  EXPECT_NE(message(c, nullptr).find("\"architecture\": \"topk\""), std::string::npos) << message(c, nullptr);
  json ln = saelens_cfg("standard", true);
  ln["normalize_activations"] = "constant_norm_rescale";
  EXPECT_NE(message(ln, nullptr).find("normalize the activation rows"), std::string::npos) << message(ln, nullptr);
  const std::vector<float> ones(Tiny::D, 1.0f), half(Tiny::D, 0.5f);
  EXPECT_EQ(message(saelens_cfg("standard", true), &ones), "");  // all ones: dropped, as SAELens does
  EXPECT_NE(message(saelens_cfg("standard", true), &half).find("Multiply each decoder row"), std::string::npos);
}

TEST(Convert, MsaeToSaelensToMsaeKeepsEverything) {
  const Tiny t;
  saedir::SaeDirectory s = tiny_msae(t);
  TempDir root("conv_msae");
  const std::string src = root.str() + "/src", sl = root.str() + "/sl", back = root.str() + "/back";
  fs::create_directories(src);
  json m = s.msae_json;
  m["hook"] = {{"model_name", "gpt2"}, {"hook_name", "blocks.1.hook_resid_pre"}};
  saedir::write_sae_files(src, s.sae, s.params, m);
  saedir::convert_sae_dir(src, saedir::Layout::saelens, sl, false);
  EXPECT_FALSE(fs::exists(sl + "/msae.json"));  // the SAELens layout: cfg.json + sae_weights.safetensors
  // SAELens loads and saves it (emulated as above), then it comes back to msae's layout.
  write_text(sl + "/cfg.json", saelens_load_and_save(json::parse(io::read_text_file(sl + "/cfg.json"))).dump());
  saedir::convert_sae_dir(sl, saedir::Layout::msae, back, false);
  const saedir::SaeDirectory a = saedir::read_sae_dir(src), b = saedir::read_sae_dir(back);
  EXPECT_EQ(b.format, "msae");
  EXPECT_EQ(b.sae.arch, a.sae.arch);
  EXPECT_EQ(b.sae.group_sizes, a.sae.group_sizes);
  EXPECT_EQ(b.sae.k, a.sae.k);
  EXPECT_EQ(b.sae.reorder_every, 7);
  EXPECT_EQ(b.hook_name, "blocks.1.hook_resid_pre");
  EXPECT_EQ(b.model_name, "gpt2");
  EXPECT_TRUE(b.msae_json.contains("config"));  // rebuilt from cfg.json's metadata
  EXPECT_EQ(b.msae_json["converted_from"]["format"], "msae");
  const std::vector<float> x = random_rows(200, Tiny::d, 3);
  expect_same_codes(codes_of(a, x), codes_of(b, x), "msae -> saelens -> msae");
  for (int64_t m_ : {2, 4}) {  // and every Matryoshka prefix
    const auto za = encode_inference(a.sae, a.params, x.data(), 200, m_), zb = encode_inference(b.sae, b.params, x.data(), 200, m_);
    EXPECT_EQ(za.ids, zb.ids);
  }
}

TEST(Convert, PerLatentThresholdsAreWrittenPerLatent) {
  Tiny t;
  TempDir root("conv_thr");
  const std::string src = root.str() + "/src", out = root.str() + "/out";
  fs::create_directories(src);
  saedir::SaeDirectory s = tiny_msae(t);
  s.params.rule.thresholds = t.threshold;  // an msae directory whose threshold entries differ
  saedir::write_sae_files(src, s.sae, s.params, s.msae_json);
  EXPECT_EQ(saedir::read_sae_dir(src).params.rule.thresholds, t.threshold);
  saedir::convert_sae_dir(src, saedir::Layout::saelens, out, false);
  EXPECT_EQ(saedir::read_sae_dir(out).params.rule.thresholds, t.threshold);
}

TEST(Convert, SparsifyToMsaeToSaelensKeepsTheCodes) {
  Tiny t;
  TempDir root("conv_sparsify");
  const std::string sp = root.str() + "/layers.3", ms = root.str() + "/ms", sl = root.str() + "/sl";
  write_sparsify(sp, t, sparsify_cfg(Tiny::d, Tiny::D, 2));
  saedir::convert_sae_dir(sp, saedir::Layout::msae, ms, false);
  saedir::convert_sae_dir(ms, saedir::Layout::saelens, sl, false);
  const saedir::SaeDirectory a = saedir::read_sae_dir(sp), b = saedir::read_sae_dir(ms), c = saedir::read_sae_dir(sl);
  EXPECT_EQ(b.format, "saelens-topk");
  EXPECT_EQ(c.format, "saelens-topk");
  EXPECT_EQ(c.params.rule.k, 2);
  const std::vector<float> x = random_rows(300, Tiny::d, 5);
  expect_same_codes(codes_of(a, x), codes_of(b, x), "sparsify -> msae");
  expect_same_codes(codes_of(a, x), codes_of(c, x), "sparsify -> msae -> saelens");
  // The SAELens layout as TopKSAE reads it: TopKSAEConfig fields and the four tensors in SAELens's shapes.
  const json cfg = json::parse(io::read_text_file(sl + "/cfg.json"));
  EXPECT_EQ(cfg["architecture"], "topk");
  EXPECT_EQ(cfg["k"], 2);
  EXPECT_EQ(cfg["rescale_acts_by_decoder_norm"], false);
  EXPECT_EQ(cfg["apply_b_dec_to_input"], true);
  EXPECT_EQ(cfg["metadata"]["sae_lens_version"], "6.18.0");
  const io::SafetensorsFile f = io::read_safetensors(sl + "/sae_weights.safetensors");
  EXPECT_EQ(f.tensors.at("W_enc").shape, (std::vector<int64_t>{Tiny::d, Tiny::D}));
  EXPECT_EQ(f.tensors.at("W_dec").shape, (std::vector<int64_t>{Tiny::D, Tiny::d}));
  EXPECT_EQ(f.tensors.count("threshold"), 0u);
  // And back to sparsify: sparsify's own field names and shapes.
  const std::string sp2 = root.str() + "/sp2";
  saedir::convert_sae_dir(sl, saedir::Layout::sparsify, sp2, false);
  const io::SafetensorsFile g = io::read_safetensors(sp2 + "/sae.safetensors");
  EXPECT_EQ(g.tensors.at("encoder.weight").shape, (std::vector<int64_t>{Tiny::D, Tiny::d}));
  EXPECT_EQ(g.tensors.at("encoder.bias").shape, (std::vector<int64_t>{Tiny::D}));
  const json scfg = json::parse(io::read_text_file(sp2 + "/cfg.json"));
  EXPECT_EQ(scfg["activation"], "topk");
  EXPECT_EQ(scfg["num_latents"], Tiny::D);
  EXPECT_EQ(scfg["d_in"], Tiny::d);
  expect_same_codes(codes_of(a, x), codes_of(saedir::read_sae_dir(sp2), x), "... -> sparsify");
}

TEST(Convert, RefusesWhatTheLayoutCannotHoldAndNeverClobbers) {
  Tiny t;
  TempDir root("conv_refuse");
  const std::string own = root.str() + "/own", out = root.str() + "/out";
  fs::create_directories(own);
  const saedir::SaeDirectory s = tiny_msae(t);
  saedir::write_sae_files(own, s.sae, s.params, s.msae_json);
  auto refused = [&](const std::string& from, saedir::Layout to, const std::string& needle, ErrorKind kind,
                     bool overwrite = false) {
    try {
      saedir::convert_sae_dir(from, to, out, overwrite);
      ADD_FAILURE() << from << " was converted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), kind) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  refused(own, saedir::Layout::sparsify, "JumpReLU threshold", ErrorKind::runtime);
  EXPECT_FALSE(fs::exists(out));
  auto saelens_dir = [&](const std::string& name, const json& cfg, bool thr) {
    const std::string d = root.str() + "/" + name;
    fs::create_directories(d);
    std::vector<io::TensorRef> ts = {{"W_enc", {Tiny::d, Tiny::D}, t.W_enc.data()},
                                     {"W_dec", {Tiny::D, Tiny::d}, t.W_dec.data()},
                                     {"b_enc", {Tiny::D}, t.b_enc.data()},
                                     {"b_dec", {Tiny::d}, t.b_dec.data()}};
    if (thr) ts.push_back({"threshold", {Tiny::D}, t.threshold.data()});
    io::write_safetensors(d + "/sae_weights.safetensors", ts);
    write_text(fs::path(d) / "cfg.json", cfg.dump());
    return d;
  };
  refused(saelens_dir("std", saelens_cfg("standard", true), false), saedir::Layout::sparsify, "ReLU", ErrorKind::runtime);
  refused(saelens_dir("jr", saelens_cfg("jumprelu", true), true), saedir::Layout::sparsify, "JumpReLU", ErrorKind::runtime);
  json uncentred = saelens_cfg("topk", false);
  uncentred["k"] = 2;
  refused(saelens_dir("unc", uncentred, false), saedir::Layout::sparsify, "apply_b_dec_to_input", ErrorKind::runtime);
  json rescaled = saelens_cfg("topk", true);
  rescaled["k"] = 2;
  rescaled["rescale_acts_by_decoder_norm"] = true;
  const std::string rs = saelens_dir("rs", rescaled, false);
  refused(rs, saedir::Layout::sparsify, "rescale_acts_by_decoder_norm", ErrorKind::runtime);
  EXPECT_FALSE(fs::exists(out));
  // ... while SAELens's layout holds it, flag and all.
  saedir::convert_sae_dir(rs, saedir::Layout::saelens, out, false);
  EXPECT_EQ(json::parse(io::read_text_file(out + "/cfg.json"))["rescale_acts_by_decoder_norm"], true);
  const std::vector<float> x = random_rows(100, Tiny::d, 9);
  expect_same_codes(codes_of(saedir::read_sae_dir(rs), x), codes_of(saedir::read_sae_dir(out), x), "rescaled topk");

  // No clobbering: an existing --out stays as it is without --overwrite, and when the conversion is refused.
  write_text(fs::path(out) / "mine.txt", "keep me");
  refused(own, saedir::Layout::saelens, "--overwrite", ErrorKind::usage);
  refused(own, saedir::Layout::sparsify, "JumpReLU threshold", ErrorKind::runtime, /*overwrite=*/true);
  EXPECT_EQ(io::read_text_file(out + "/mine.txt"), "keep me");
  // With --overwrite a conversion that succeeds replaces it, whole.
  saedir::convert_sae_dir(own, saedir::Layout::saelens, out, true);
  EXPECT_FALSE(fs::exists(out + "/mine.txt"));
  EXPECT_EQ(saedir::read_sae_dir(out).format, "msae");
  // --out = --from is refused before anything is read or written.
  try {
    saedir::convert_sae_dir(own + "/", saedir::Layout::msae, own, true);
    ADD_FAILURE() << "converted onto itself";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    EXPECT_NE(std::string(e.what()).find("is the --from directory"), std::string::npos) << e.what();
  }
  EXPECT_THROW(saedir::parse_layout("safetensors"), Error);
}

}  // namespace
}  // namespace msae
