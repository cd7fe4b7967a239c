// msae harvest / eval --model / absorption end to end on a tiny random GPT-2 with the real GPT-2 vocabulary
// (written by the test: 50257 x 8 embeddings, 2 blocks), so it runs in seconds.
//  - harvest: the rows (shards acts-NNNNN.npy of --shard-rows rows, concatenated in name order) equal the
//    activations a direct forward gives at the hook (float32 round-off only: the same code computes both, so
//    1e-5), index/tokens.npy reads back with io::read_npy_int and holds the tokenizer's ids and byte offsets,
//    `msae train --data DIR` reads exactly the shards (all rows, not the token index), --skip-bos drops the BOS
//    rows, f16 output is the f32 output rounded to half.
//  - eval --model: an SAE that reconstructs exactly (W_enc = [I, -I], W_dec = [I; -I], threshold 0:
//    relu(x) - relu(-x) = x) gives spliced CE = clean CE and CE recovered = 1 (to 1e-5 of float
//    round-off); its first prefix (relu(x) only) does worse; a trained SAE lands between.
//  - absorption: runs, reports probe statistics and per-prefix results with the documented fields.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "msae/io.h"
#include "msae/lm.h"
#include "msae/sae_dir.h"
#include "cli_run.h"
#include "failpoint_walk.h"

using namespace msae;
namespace fs = std::filesystem;

namespace {

using msae::test_util::Result;
// stdout only: eval and absorption print JSON there, progress goes to stderr.
Result run(const std::string& args) { return msae::test_util::run(args, true); }
// stdout and stderr: progress lines and error messages.
Result run_all(const std::string& args) { return msae::test_util::run(args, false); }

class LmCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("msae_lm_cli_" + std::to_string(::getpid()));
    fs::create_directories(dir_ / "model");
    // A random GPT-2 (d 8, 2 heads, 2 blocks, 64 positions) with the GPT-2 vocabulary.
    const int64_t V = 50257, P = 64, d = 8, L = 2;
    Rng rng(11);
    std::map<std::string, Tensor> t;
    auto rnd = [&](std::vector<int64_t> shape, float s, float base = 0.0f) {
      Tensor x(shape);
      for (auto& v : x.data) v = base + s * static_cast<float>(rng.normal());
      return x;
    };
    t["wte.weight"] = rnd({V, d}, 0.5f);
    t["wpe.weight"] = rnd({P, d}, 0.3f);
    for (int64_t l = 0; l < L; ++l) {
      const std::string p = "h." + std::to_string(l) + ".";
      t[p + "ln_1.weight"] = rnd({d}, 0.1f, 1.0f);
      t[p + "ln_1.bias"] = rnd({d}, 0.1f);
      t[p + "attn.c_attn.weight"] = rnd({d, 3 * d}, 0.35f);
      t[p + "attn.c_attn.bias"] = rnd({3 * d}, 0.1f);
      t[p + "attn.c_proj.weight"] = rnd({d, d}, 0.35f);
      t[p + "attn.c_proj.bias"] = rnd({d}, 0.1f);
      t[p + "ln_2.weight"] = rnd({d}, 0.1f, 1.0f);
      t[p + "ln_2.bias"] = rnd({d}, 0.1f);
      t[p + "mlp.c_fc.weight"] = rnd({d, 4 * d}, 0.35f);
      t[p + "mlp.c_fc.bias"] = rnd({4 * d}, 0.1f);
      t[p + "mlp.c_proj.weight"] = rnd({4 * d, d}, 0.2f);
      t[p + "mlp.c_proj.bias"] = rnd({d}, 0.1f);
    }
    t["ln_f.weight"] = rnd({d}, 0.1f, 1.0f);
    t["ln_f.bias"] = rnd({d}, 0.1f);
    std::vector<io::TensorRef> refs;
    for (auto& [name, x] : t) refs.push_back({name, x.shape, x.ptr()});
    io::write_safetensors((dir_ / "model" / "model.safetensors").string(), refs, {{"format", "pt"}});
    io::write_text_file_atomic((dir_ / "model" / "config.json").string(),
                               R"({"model_type": "gpt2", "activation_function": "gelu_new", "vocab_size": 50257,
 "n_positions": 64, "n_embd": 8, "n_layer": 2, "n_head": 2, "layer_norm_epsilon": 1e-5})");
    std::string text;
    for (int i = 0; i < 40; ++i)
      text += "Call me Ishmael. Some years ago\u2014never mind how long precisely\u2014having little or no money in my "
              "purse, and nothing particular to interest me on shore, I thought I would sail about. ";
    io::write_text_file_atomic((dir_ / "a.txt").string(), text);
    io::write_text_file_atomic((dir_ / "b.txt").string(), "It is a way I have of driving off the spleen.\n\n" + text.substr(0, 2000));
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string p(const std::string& rel) { return (dir_ / rel).string(); }
  static fs::path dir_;
};
fs::path LmCli::dir_;

// An exact SAE for width d: latents [0, d) = relu(x), [d, 2d) = relu(-x); two groups of d.
void write_identity_sae(const std::string& dir, int64_t d) {
  SaeConfig cfg;
  cfg.arch = Arch::matryoshka;
  cfg.d_in = d;
  cfg.d_sae = 2 * d;
  cfg.k = d;
  cfg.group_sizes = {d, d};
  cfg.finalize();
  SaeParams p = SaeParams::zeros(d, 2 * d);
  for (int64_t i = 0; i < d; ++i) {
    p.W_enc_t.data[i * d + i] = 1.0f;
    p.W_enc_t.data[(d + i) * d + i] = -1.0f;
    p.W_dec.data[i * d + i] = 1.0f;
    p.W_dec.data[(d + i) * d + i] = -1.0f;
  }
  p.threshold = 0.0f;
  fs::create_directories(dir);
  saedir::write_sae_files(dir, cfg, p, nlohmann::json{{"format", "msae-sae"}, {"config", {{"arch", "matryoshka"}, {"d_in", d}, {"d_sae", 2 * d}, {"k", d}, {"group_sizes", {d, d}}}}});
}

}  // namespace

// The shards of a harvest directory, concatenated in name order; checks each shard's rows against harvest.json.
Tensor read_shards(const std::string& dir, int64_t* shard_count = nullptr) {
  const auto info = nlohmann::json::parse(io::read_text_file(dir + "/harvest.json"));
  const int64_t rows = info["rows"], d = info["d"];
  Tensor all({rows, d});
  int64_t at = 0;
  for (const auto& sh : info["shards"]) {
    const Tensor t = io::read_npy(dir + "/" + sh["file"].get<std::string>());
    EXPECT_EQ(sh["first_row"].get<int64_t>(), at);
    EXPECT_EQ(t.shape, (std::vector<int64_t>{sh["rows"].get<int64_t>(), d}));
    if (at + t.shape[0] > rows) break;
    std::copy(t.data.begin(), t.data.end(), all.data.begin() + at * d);
    at += t.shape[0];
  }
  EXPECT_EQ(at, rows);
  if (shard_count) *shard_count = static_cast<int64_t>(info["shards"].size());
  return all;
}

TEST_F(LmCli, HarvestMatchesDirectForward) {
  const Result r = run("harvest --model " + p("model") + " --text " + p("a.txt") + " " + p("b.txt") +
                       " --layer 1 --site resid_pre --ctx 32 --shard-rows 100 --out " + p("h32") + " --threads 2");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto info = nlohmann::json::parse(io::read_text_file(p("h32/harvest.json")));
  const int64_t rows = info["rows"], d = info["d"];
  int64_t shards = 0;
  const Tensor acts = read_shards(p("h32"), &shards);
  EXPECT_EQ(shards, (rows + 99) / 100);
  ASSERT_TRUE(fs::exists(p("h32/acts-00000.npy")));
  // The token index: (rows, 4) int64 = id, file, offset, position, read back by the project's reader.
  const io::NpyIntArray index = io::read_npy_int(p("h32/index/tokens.npy"));
  ASSERT_EQ(index.shape, (std::vector<int64_t>{rows, 4}));
  EXPECT_EQ(index.itemsize, 8);
  const int64_t* meta = index.values.data();
  // `msae train --data DIR` trains on the shards, and evaluates on their last tenth, which it does not train on.
  const Result tr = run("train --data " + p("h32") + " --d-sae 32 --k 4 --batch 64 --steps 4 --out " + p("sae32") +
                        " --threads 2");
  ASSERT_EQ(tr.code, 0) << tr.output;
  const int64_t held = rows / 10;
  EXPECT_NE(tr.output.find("evaluation on " + std::to_string(held) + " held-out rows [" + std::to_string(rows - held) +
                           ", " + std::to_string(rows) + ")"),
            std::string::npos)
      << tr.output;
  // Direct forward of the same contexts.
  const lm::Model m = lm::Model::load(p("model"));
  const lm::Tokenizer tok = lm::Tokenizer::load(std::string(MSAE_SOURCE_DIR) + "/models/gpt2-tokenizer");
  const std::string text_a = io::read_text_file(p("a.txt"));
  std::vector<int64_t> off;
  const auto ids_a = tok.encode(text_a, &off);
  // Compare the contexts that lie inside a.txt (the rest mixes in the separator and b.txt).
  const int64_t T = 32, N = static_cast<int64_t>(ids_a.size()) / (T - 1);
  ASSERT_GE(N, 2);
  ASSERT_GT(rows, N * T);
  std::vector<int32_t> ctx;
  for (int64_t n = 0; n < N; ++n) {
    ctx.push_back(tok.eot());
    for (int64_t t = 0; t < T - 1; ++t) ctx.push_back(ids_a[static_cast<size_t>(n * (T - 1) + t)]);
  }
  Tensor want;
  std::vector<lm::Hook> hooks = {{1, lm::Site::resid_pre, [&](float* x, int64_t R) {
                                    want = Tensor({R, d});
                                    std::copy(x, x + R * d, want.ptr());
                                  }}};
  m.run(ctx.data(), N, T, hooks);
  for (int64_t i = 0; i < N * T * d; ++i) ASSERT_NEAR(acts.data[i], want.data[i], 1e-5) << "element " << i;
  for (int64_t row = 0; row < N * T; ++row) {
    ASSERT_EQ(meta[row * 4 + 0], ctx[static_cast<size_t>(row)]);
    ASSERT_EQ(meta[row * 4 + 3], row % T);
    if (row % T == 0) {
      EXPECT_EQ(meta[row * 4 + 1], -1);
    } else {
      const size_t k = static_cast<size_t>((row / T) * (T - 1) + row % T - 1);
      ASSERT_EQ(meta[row * 4 + 1], 0);
      ASSERT_EQ(meta[row * 4 + 2], off[k]);
    }
  }
  // --skip-bos drops exactly the BOS rows; f16 is the same data rounded.
  const Result s = run("harvest --model " + p("model") + " --text " + p("a.txt") + " " + p("b.txt") +
                       " --layer 1 --ctx 32 --skip-bos --dtype f16 --out " + p("h32s"));
  ASSERT_EQ(s.code, 0) << s.output;
  const Tensor acts16 = read_shards(p("h32s"));
  EXPECT_EQ(io::read_npy_header(p("h32s/acts-00000.npy")).dtype, io::DType::f16);
  ASSERT_EQ(acts16.shape[0], rows / T * (T - 1));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 1; t < T; ++t)
      for (int64_t j = 0; j < d; ++j)
        ASSERT_EQ(acts16.data[(n * (T - 1) + t - 1) * d + j], io::half_to_float(io::float_to_half(acts.data[(n * T + t) * d + j])));
  // Errors: bad layer, existing output, context longer than the model's.
  EXPECT_EQ(run("harvest --model " + p("model") + " --text " + p("a.txt") + " --layer 2 --out " + p("bad")).code, 2);
  EXPECT_EQ(run("harvest --model " + p("model") + " --text " + p("a.txt") + " --layer 0 --out " + p("h32")).code, 2);
  EXPECT_EQ(run("harvest --model " + p("model") + " --text " + p("a.txt") + " --layer 0 --ctx 65 --out " + p("bad")).code, 2);
  EXPECT_EQ(run("harvest --model " + p("model") + " --text " + p("a.txt") + " --layer 0 --shard-rows 0 --out " + p("bad")).code, 2);
  EXPECT_FALSE(fs::exists(p("bad")));
}

// The harvest's hook travels (issue 22): an SAE trained on a harvest directory records hook_name and
// model_name (cfg.json's SAELens fields, msae.json's "hook"), and eval --model / absorption refuse another
// layer or site unless --allow-hook-mismatch. Progress on a pipe (not a terminal) ends with a 100% line.
TEST_F(LmCli, HarvestHookTravelsAndIsChecked) {
  Result r = run_all("harvest --model " + p("model") + " --text " + p("a.txt") +
                 " --layer 1 --site resid_pre --ctx 32 --max-tokens 640 --out " + p("hook_h") + " --threads 2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("[msae] 100% contexts"), std::string::npos) << r.output;
  r = run_all("train --data " + p("hook_h") + " --d-sae 32 --k 4 --batch 64 --steps 4 --out " + p("hook_sae") + " --threads 2");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto cfg = nlohmann::json::parse(io::read_text_file(p("hook_sae/cfg.json")));
  EXPECT_EQ(cfg["metadata"]["hook_name"], "blocks.1.hook_resid_pre");
  EXPECT_EQ(cfg["metadata"]["model_name"], "model");
  // ... with the SAELens 6 fields SAELens's trainer records (issue 27): the harvest's context and BOS.
  EXPECT_EQ(cfg["metadata"]["context_size"], 32);
  EXPECT_EQ(cfg["metadata"]["prepend_bos"], true);
  EXPECT_EQ(cfg["metadata"]["seqpos_slice"], nlohmann::json::parse("[null]"));
  EXPECT_EQ(cfg["metadata"]["sae_lens_version"], "6.18.0");
  const auto m = nlohmann::json::parse(io::read_text_file(p("hook_sae/msae.json")));
  EXPECT_EQ(m["hook"]["layer"], 1);
  EXPECT_EQ(m["hook"]["site"], "resid_pre");
  EXPECT_EQ(m["hook"]["hook_name"], "blocks.1.hook_resid_pre");
  const std::string eval = "eval --sae " + p("hook_sae") + " --model " + p("model") + " --text " + p("a.txt") +
                           " --ctx 32 --max-tokens 320 --threads 2";
  r = run_all(eval + " --layer 1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("[msae] 100% CE clean"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("CE recovered"), std::string::npos) << "the table:\n" << r.output;
  r = run_all(eval + " --layer 0");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("trained at blocks.1.hook_resid_pre of model"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--allow-hook-mismatch"), std::string::npos) << r.output;
  EXPECT_EQ(run_all(eval + " --layer 1 --site mlp_out").code, 2);
  EXPECT_EQ(run_all(eval + " --layer 0 --allow-hook-mismatch").code, 0);
  const std::string absorb = "absorption --sae " + p("hook_sae") + " --model " + p("model") +
                             " --max-words 200 --icl 2 --max-k 2 --threads 2";
  r = run_all(absorb + " --layer 0");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("blocks.1.hook_resid_pre"), std::string::npos) << r.output;
  // An SAE without a recorded hook is used wherever asked (write_identity_sae records none).
  write_identity_sae(p("nohook"), 8);
  EXPECT_EQ(run_all("eval --sae " + p("nohook") + " --model " + p("model") + " --text " + p("a.txt") +
                " --ctx 32 --max-tokens 320 --layer 0 --threads 2").code, 0);
}

TEST_F(LmCli, EvalSplicedCeAndAbsorption) {
  write_identity_sae(p("ident"), 8);
  const Result r = run("eval --sae " + p("ident") + " --model " + p("model") + " --text " + p("a.txt") +
                       " --layer 1 --site resid_pre --ctx 32 --max-tokens 640 --json");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output);
  const double clean = j["ce_clean"], ablated = j["ce_ablated"];
  EXPECT_GT(ablated, clean);
  ASSERT_EQ(j["prefixes"].size(), 2u);
  EXPECT_NEAR(j["prefixes"][1]["ce_spliced"].get<double>(), clean, 1e-5);
  EXPECT_NEAR(j["prefixes"][1]["ce_recovered"].get<double>(), 1.0, 1e-4);
  EXPECT_NEAR(j["prefixes"][1]["fvu"].get<double>(), 0.0, 1e-9);
  EXPECT_GT(j["prefixes"][0]["fvu"].get<double>(), 0.05);  // relu(x) alone loses the negative half
  EXPECT_NE(j["prefixes"][0]["ce_spliced"].get<double>(), clean);
  // Mean ablation is a different (usually smaller) baseline.
  const Result mres = run("eval --sae " + p("ident") + " --model " + p("model") + " --text " + p("a.txt") +
                          " --layer 1 --ctx 32 --max-tokens 640 --ablation mean --json");
  ASSERT_EQ(mres.code, 0) << mres.output;
  EXPECT_NE(nlohmann::json::parse(mres.output)["ce_ablated"].get<double>(), ablated);
  // Flag errors.
  EXPECT_EQ(run("eval --sae " + p("ident") + " --model " + p("model") + " --layer 1").code, 2);
  EXPECT_EQ(run("eval --sae " + p("ident") + " --model " + p("model") + " --text " + p("a.txt") + " --layer 1 --ablation x").code, 2);

  // Absorption on a small vocabulary sample: the probes are meaningless on a random model, but every field
  // is present and the rates are in [0, 1].
  const Result a = run("absorption --sae " + p("ident") + " --model " + p("model") +
                       " --layer 1 --max-words 400 --icl 2 --max-k 3");
  ASSERT_EQ(a.code, 0) << a.output;
  const auto aj = nlohmann::json::parse(a.output);
  EXPECT_EQ(aj["probe"]["per_letter"].size(), 26u);
  EXPECT_TRUE(aj["probe"]["weak"].get<bool>());
  ASSERT_EQ(aj["saes"].size(), 1u);
  ASSERT_EQ(aj["saes"][0]["prefixes"].size(), 2u);
  for (const auto& pj : aj["saes"][0]["prefixes"]) {
    EXPECT_GE(pj["mean_absorption_fraction"].get<double>(), 0.0);
    EXPECT_LE(pj["mean_absorption_fraction"].get<double>(), 1.0);
    EXPECT_GE(pj["mean_full_absorption_rate"].get<double>(), 0.0);
    EXPECT_LE(pj["mean_full_absorption_rate"].get<double>(), 1.0);
    EXPECT_EQ(pj["per_letter"].size(), 26u);
  }
}

// A harvest directory's content for comparison: every file's bytes, harvest.json without its timing.
std::map<std::string, std::string> harvest_content(const fs::path& dir) {
  std::map<std::string, std::string> files;
  if (!fs::exists(dir)) return files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::string bytes = msae::test_util::slurp(e.path());
    if (e.path().filename() == "harvest.json") {
      nlohmann::json j = nlohmann::json::parse(bytes);
      j.erase("seconds");
      bytes = j.dump();
    }
    files[fs::relative(e.path(), dir).string()] = bytes;
  }
  return files;
}

// Issue 21: the failpoint walk of `harvest --overwrite` (its shards are written by io::NpyWriter): at every
// operation killed or failing, the earlier harvest is intact or the new one complete, nothing is left
// beside it after a rerun, and the rerun gives the new harvest byte for byte.
TEST_F(LmCli, FailpointWalkOfAHarvestKeepsTheEarlierOne) {
  const std::string common = "harvest --model " + p("model") + " --text " + p("a.txt") +
                             " --ctx 32 --shard-rows 100 --max-tokens 250 --threads 1 --log-level 0";
  ASSERT_EQ(run(common + " --layer 0 --out " + p("hw_old")).code, 0);
  ASSERT_EQ(run(common + " --layer 1 --out " + p("hw_new")).code, 0);
  const auto old_h = harvest_content(p("hw_old")), new_h = harvest_content(p("hw_new"));
  ASSERT_GE(old_h.size(), 4u) << "several shards and the index";
  ASSERT_NE(old_h, new_h);
  const std::string args = common + " --layer 1 --overwrite --out " + p("hw");
  auto beside = [&] {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_))
      if (e.path().filename().string().rfind("hw.", 0) == 0) names.push_back(e.path().filename().string());
    return names;
  };
  const int64_t runs = msae::test_util::walk_failpoints(
      args, dir_ / "hw_fp.log",
      [&] {
        fs::remove_all(p("hw"));
        for (const std::string& n : beside()) fs::remove_all(dir_ / n);
        fs::copy(p("hw_old"), p("hw"), fs::copy_options::recursive);
      },
      [&](const msae::test_util::Failpoint& f, const std::string& action, const Result& r) {
        const std::string what = "failpoint " + std::to_string(f.index) + " " + f.op + " " + f.path + " " + action + "\n" + r.output;
        const auto now = harvest_content(p("hw"));
        EXPECT_TRUE(now == old_h || now == new_h) << what;
        const Result again = run_all(args);
        ASSERT_EQ(again.code, 0) << what << "\nrerun:\n" << again.output;
        EXPECT_EQ(harvest_content(p("hw")), new_h) << what;
        EXPECT_TRUE(beside().empty()) << what << "\nleft beside: " << beside().front();
      });
  std::printf("harvest: %lld faulted runs\n", static_cast<long long>(runs));
}
