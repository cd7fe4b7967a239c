// The feature browser's statistics (msae/browse.h) on a planted harvest whose answers are known: a child
// latent that fires only on one token, its parent in the first group that fires on that token and one
// other, a dense first-group latent that fires on every row, a latent of other tokens, and a dead one. Then msae browse end to end: the site's files, and the
// no-clobber rules of --out.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "cli_run.h"
#include "msae/browse.h"
#include "msae/io.h"

namespace fs = std::filesystem;
using namespace msae;

namespace {

constexpr int64_t kD = 4, kLatents = 5, kCtx = 8, kContexts = 60, kRows = kCtx * kContexts;
constexpr int32_t kT = 1000, kU = 2000;  // " T"-like tokens: the planted ones

int32_t token_of(int64_t r) {
  if (r % 5 == 1) return kT;
  if (r % 7 == 3) return kU;
  return 3000 + static_cast<int32_t>(r % 11);
}
float amp_of(int64_t r) { return 1.0f + 0.1f * static_cast<float>((r * 7) % 13); }  // varies, with ties

// x: T rows -> amp * e0, U rows -> 1.5 * e1, others -> 0.5 * e2; every row + 0.25 * e3.
std::vector<float> planted_rows() {
  std::vector<float> x(kRows * kD, 0.0f);
  for (int64_t r = 0; r < kRows; ++r) {
    const int32_t t = token_of(r);
    if (t == kT) x[r * kD + 0] = amp_of(r);
    else if (t == kU) x[r * kD + 1] = 1.5f;
    else x[r * kD + 2] = 0.5f;
    x[r * kD + 3] = 0.25f;
  }
  return x;
}

void write_harvest(const fs::path& dir) {
  fs::create_directories(dir / "index");
  const std::vector<float> x = planted_rows();
  io::write_npy((dir / "acts-00000.npy").string(), x.data(), {kRows, kD});
  std::vector<int64_t> idx;
  for (int64_t r = 0; r < kRows; ++r) idx.insert(idx.end(), {token_of(r), 0, r, r % kCtx});
  io::write_npy_int((dir / "index/tokens.npy").string(), idx.data(), {kRows, 4});
  io::write_text_file_atomic((dir / "harvest.json").string(), R"({"format": "msae-harvest", "hook_name": "blocks.0.hook_resid_pre"})");
}

// Group 1: latent 0 = e3 (dense: every row), latent 1 = e0 + e1 (parent: T and U). Group 2: latent 2 = e0
// (child: T only), latent 3 = e2 (the other tokens), latent 4 = -e3 (never fires).
void write_sae(const fs::path& dir) {
  SaeConfig cfg;
  cfg.d_in = kD;
  cfg.d_sae = kLatents;
  cfg.k = 2;
  cfg.group_sizes = {2, 3};
  cfg.finalize();
  SaeParams p = SaeParams::zeros(kD, kLatents);
  auto enc = [&](int64_t j, int64_t i, float v) { p.W_enc_t.data[j * kD + i] = v; };
  enc(0, 3, 1.0f), enc(1, 0, 1.0f), enc(1, 1, 1.0f), enc(2, 0, 1.0f), enc(3, 2, 1.0f), enc(4, 3, -1.0f);
  const float s = 1.0f / std::sqrt(2.0f);
  p.W_dec.data[0 * kD + 3] = 1.0f;
  p.W_dec.data[1 * kD + 0] = s, p.W_dec.data[1 * kD + 1] = s;
  p.W_dec.data[2 * kD + 0] = 1.0f, p.W_dec.data[3 * kD + 2] = 1.0f, p.W_dec.data[4 * kD + 1] = 1.0f;
  p.threshold = 0.0f;
  fs::create_directories(dir);
  saedir::write_sae_files(dir.string(), cfg, p,
                          nlohmann::json{{"format", "msae-sae"}, {"config", {{"arch", "matryoshka"}, {"d_in", kD}, {"d_sae", kLatents},
                                                                             {"k", 2}, {"group_sizes", {2, 3}}}}});
}

struct Planted : ::testing::Test {
  fs::path root;
  void SetUp() override {
    root = fs::path(::testing::TempDir()) / ("msae_browse_" + std::to_string(::getpid()));
    fs::remove_all(root);
    write_harvest(root / "acts");
    write_sae(root / "sae");
  }
  void TearDown() override { fs::remove_all(root); }
};

// The child latent's value on row r (the planted truth).
float child_value(int64_t r) { return token_of(r) == kT ? amp_of(r) : 0.0f; }

browse::Collected collect(const fs::path& root, const browse::Options& o, const saedir::SaeDirectory& sae, int copies = 1) {
  const browse::Harvest h = browse::open_harvest((root / "acts").string());
  std::vector<const saedir::SaeDirectory*> saes(copies, &sae);
  std::vector<std::string> paths(copies, (root / "sae").string());
  return browse::collect(h, saes, paths, o, nullptr, 0);
}

}  // namespace

TEST_F(Planted, HarvestIndex) {
  const browse::Harvest h = browse::open_harvest((root / "acts").string());
  EXPECT_EQ(h.rows, kRows);
  EXPECT_EQ(h.d, kD);
  for (int64_t r = 0; r < kRows; ++r) {
    EXPECT_EQ(h.token[r], token_of(r));
    EXPECT_EQ(h.context[r], r / kCtx);
  }
  EXPECT_EQ(h.manifest.value("hook_name", ""), "blocks.0.hook_resid_pre");
}

TEST_F(Planted, ExactStatistics) {
  const saedir::SaeDirectory sae = saedir::read_sae_dir((root / "sae").string());
  browse::Options o;
  o.top_examples = 7;
  o.before = 3;
  o.after = 2;
  o.chunk = 20;  // not a multiple of the context length: chunks are rounded to whole contexts
  const browse::Collected c = collect(root, o, sae);
  ASSERT_EQ(c.saes.size(), 1u);
  const browse::SaeStats& st = c.saes[0];
  EXPECT_EQ(c.rows, kRows);

  // The truth, by brute force.
  std::vector<int64_t> t_rows;
  int64_t n_u = 0;
  double sum = 0;
  for (int64_t r = 0; r < kRows; ++r) {
    if (token_of(r) == kT) t_rows.push_back(r), sum += amp_of(r);
    n_u += token_of(r) == kU;
  }
  const browse::LatentStats& child = st.latents[2];
  const browse::LatentStats& parent = st.latents[1];
  const int64_t n_t = static_cast<int64_t>(t_rows.size()), n_other = kRows - n_t - n_u;
  EXPECT_EQ(child.fired, n_t);
  EXPECT_NEAR(child.sum, sum, 1e-4);
  EXPECT_FLOAT_EQ(child.max, 2.2f);
  EXPECT_EQ(st.latents[0].fired, kRows);
  EXPECT_FLOAT_EQ(st.latents[0].max, 0.25f);
  EXPECT_EQ(parent.fired, n_t + n_u);
  EXPECT_EQ(st.latents[3].fired, n_other);
  EXPECT_EQ(st.latents[4].fired, 0);
  EXPECT_NEAR(st.l0, static_cast<double>(kRows + 2 * n_t + n_u + n_other) / kRows, 1e-12);
  EXPECT_EQ(st.group_active[0], static_cast<double>(kRows + n_t + n_u));

  // Top examples: the T rows by descending amplitude, ties by lower row; windows clipped to the context.
  std::vector<int64_t> order = t_rows;
  std::stable_sort(order.begin(), order.end(), [](int64_t a, int64_t b) { return amp_of(a) > amp_of(b); });
  ASSERT_EQ(child.top.size(), 7u);
  for (size_t q = 0; q < 7; ++q) {
    const browse::Example& e = child.top[q];
    EXPECT_EQ(e.row, order[q]) << q;
    EXPECT_FLOAT_EQ(e.value, amp_of(order[q]));
    const int64_t ctx0 = e.row / kCtx * kCtx;
    EXPECT_EQ(e.first, std::max(ctx0, e.row - 3));
    EXPECT_EQ(e.first + static_cast<int64_t>(e.window.size()), std::min(ctx0 + kCtx, e.row + 3));
    for (size_t w = 0; w < e.window.size(); ++w) EXPECT_FLOAT_EQ(e.window[w], child_value(e.first + static_cast<int64_t>(w)));
  }
  // Histogram and octave bands account for every firing; band samples lie in their octave.
  uint64_t hist = 0;
  for (uint32_t n : child.hist) hist += n;
  EXPECT_EQ(hist, t_rows.size());
  EXPECT_EQ(child.hist[browse::hist_bin(2.2f)], static_cast<uint32_t>(std::count_if(t_rows.begin(), t_rows.end(),
                                                                     [](int64_t r) { return browse::hist_bin(amp_of(r)) == browse::hist_bin(2.2f); })));
  EXPECT_EQ(child.top_octave, 1);
  int64_t seen = 0;
  for (size_t b = 0; b < child.bands.size(); ++b) {
    seen += child.band_seen[b];
    for (const browse::Example& e : child.bands[b]) {
      EXPECT_EQ(token_of(e.row), kT);
      EXPECT_GE(e.value, std::ldexp(1.0f, child.top_octave - static_cast<int>(b)));
      EXPECT_LT(e.value, std::ldexp(1.0f, child.top_octave - static_cast<int>(b) + 1));
    }
  }
  EXPECT_EQ(seen, n_t);

  // The tree. Both first-group latents fire every time the child does: the co-firing rule takes the lower
  // id, the dense latent; the excess rule takes the parent (1 - its density > 0 = 1 - 1 for the dense one).
  EXPECT_EQ(child.parent.id, 0);
  EXPECT_DOUBLE_EQ(child.parent.p, 1.0);
  EXPECT_NEAR(child.parent.cos, 0.0, 1e-6);
  EXPECT_EQ(child.excess_parent.id, 1);
  EXPECT_DOUBLE_EQ(child.excess_parent.p, 1.0);
  EXPECT_NEAR(child.excess_parent.cos, 1.0 / std::sqrt(2.0), 1e-6);
  EXPECT_EQ(st.latents[0].parent.id, -1);  // group 1 has no parent
  EXPECT_EQ(parent.parent.id, -1);
  EXPECT_EQ(st.latents[3].parent.id, 0);         // fires with the dense latent only
  EXPECT_EQ(st.latents[3].excess_parent.id, -1);  // which is no more likely with it than without
  ASSERT_EQ(child.cofire.size(), 2u);
  EXPECT_EQ(child.cofire[0].id, 0);
  EXPECT_DOUBLE_EQ(child.cofire[0].value, 1.0);
  EXPECT_EQ(child.cofire[1].id, 1);
  EXPECT_DOUBLE_EQ(child.cofire[1].value, 1.0);
  // The parent fires with the dense latent always and with the child on T rows only.
  ASSERT_EQ(parent.cofire.size(), 2u);
  EXPECT_EQ(parent.cofire[0].id, 0);
  EXPECT_EQ(parent.cofire[1].id, 2);
  EXPECT_NEAR(parent.cofire[1].value, static_cast<double>(n_t) / (n_t + n_u), 1e-12);
  ASSERT_EQ(child.tokens.size(), 1u);
  EXPECT_EQ(child.tokens[0].first, kT);
  EXPECT_EQ(child.tokens[0].second, n_t);
  ASSERT_EQ(parent.tokens.size(), 2u);
  EXPECT_EQ(parent.tokens[0].first, n_t >= n_u ? kT : kU);
  // Decoder geometry: the child's nearest latent is its parent.
  EXPECT_EQ(child.nearest[0].id, 1);
  EXPECT_NEAR(child.nearest[0].value, 1.0 / std::sqrt(2.0), 1e-6);
}

TEST_F(Planted, IndependentOfChunkingAndThreads) {
  const saedir::SaeDirectory sae = saedir::read_sae_dir((root / "sae").string());
  browse::Options a, b;
  a.chunk = 8;
  b.chunk = 4096;
  a.band_examples = b.band_examples = 2;  // small reservoirs: replacements happen
  const int threads = num_threads();
  const browse::Collected ca = collect(root, a, sae);
  set_num_threads(1);
  const browse::Collected cb = collect(root, b, sae);
  set_num_threads(threads);
  for (int64_t j = 0; j < kLatents; ++j) {
    const browse::LatentStats &x = ca.saes[0].latents[j], &y = cb.saes[0].latents[j];
    EXPECT_EQ(x.fired, y.fired);
    ASSERT_EQ(x.top.size(), y.top.size());
    for (size_t q = 0; q < x.top.size(); ++q) {
      EXPECT_EQ(x.top[q].row, y.top[q].row);
      EXPECT_EQ(x.top[q].window, y.top[q].window);
    }
    for (size_t bnd = 0; bnd < x.bands.size(); ++bnd) {
      ASSERT_EQ(x.bands[bnd].size(), y.bands[bnd].size());
      for (size_t q = 0; q < x.bands[bnd].size(); ++q) EXPECT_EQ(x.bands[bnd][q].row, y.bands[bnd][q].row);
    }
  }
}

TEST_F(Planted, SideBySideAndCofireCap) {
  const saedir::SaeDirectory sae = saedir::read_sae_dir((root / "sae").string());
  browse::Options o;
  o.cofire_rows = 40;  // the first 5 contexts
  const browse::Collected c = collect(root, o, sae, 2);
  ASSERT_EQ(c.saes.size(), 2u);
  EXPECT_EQ(c.cofire_rows, 40);
  int64_t t_in_cap = 0;
  for (int64_t r = 0; r < 40; ++r) t_in_cap += token_of(r) == kT;
  EXPECT_EQ(c.saes[0].latents[2].cofire_fired, t_in_cap);
  for (int64_t j = 0; j < 4; ++j) {  // the same SAE twice: each alive latent's nearest twin is itself
    ASSERT_EQ(c.saes[1].latents[j].nearest_other.size(), 2u);
    EXPECT_EQ(c.saes[1].latents[j].nearest_other[0][0].id, j);
    EXPECT_NEAR(c.saes[1].latents[j].nearest_other[0][0].value, 1.0, 1e-6);
  }
}

TEST_F(Planted, Errors) {
  // A harvest without its token index, and an SAE of another width, are refused with the reason.
  fs::create_directories(root / "bare");
  const std::vector<float> x(10 * kD, 0.0f);
  io::write_npy((root / "bare/acts-00000.npy").string(), x.data(), {10, kD});
  try {
    browse::open_harvest((root / "bare").string());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("index/tokens.npy"), std::string::npos) << e.what();
  }
  fs::create_directories(root / "bare/index");
  std::vector<int64_t> idx(9 * 4, 0);
  io::write_npy_int((root / "bare/index/tokens.npy").string(), idx.data(), {9, 4});
  try {
    browse::open_harvest((root / "bare").string());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("9 rows"), std::string::npos) << e.what();
  }
}

// msae browse end to end: the files of the site, the summary, and --out's no-clobber rule.
TEST_F(Planted, Command) {
  using test_util::run;
  const std::string out = (root / "site").string();
  const std::string args = "browse --sae " + (root / "sae").string() + " " + (root / "sae").string() + " --acts " +
                           (root / "acts").string() + " --out " + out + " --top 5 --log-level 0";
  const auto r = run(args, true);
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["rows"], kRows);
  EXPECT_EQ(j["saes"].size(), 2u);
  EXPECT_EQ(j["saes"][0]["dead"], 1);  // latent 4
  EXPECT_NE(j["saes"][0]["name"], j["saes"][1]["name"]);
  for (const char* f : {"index.html", "latent.html", "tree.html", "assets/browse.js", "assets/browse.css", "data/site.js",
                        "data/vocab.js", "data/s0/index.js", "data/s0/c00000.js", "data/s1/c00000.js"})
    EXPECT_TRUE(fs::exists(fs::path(out) / f)) << f;
  const std::string chunk = test_util::slurp(fs::path(out) / "data/s0/c00000.js");
  EXPECT_EQ(chunk.rfind("MSAE.chunk(0, 0, [", 0), 0u);
  const std::string vocab = test_util::slurp(fs::path(out) / "data/vocab.js");
  EXPECT_NE(vocab.find("\"1000\":"), std::string::npos);
  // An existing --out is kept without --overwrite, replaced with it.
  const std::string marker = (fs::path(out) / "mine.txt").string();
  io::write_text_file_atomic(marker, "keep");
  const auto again = run(args);
  EXPECT_EQ(again.code, 2) << again.output;
  EXPECT_NE(again.output.find("--overwrite"), std::string::npos) << again.output;
  EXPECT_TRUE(fs::exists(marker));
  // A failure (an SAE of another width) leaves the existing site untouched.
  const auto bad = run("browse --sae " + (root / "acts").string() + " --acts " + (root / "acts").string() + " --out " + out +
                       " --overwrite --log-level 0");
  EXPECT_NE(bad.code, 0);
  EXPECT_TRUE(fs::exists(marker));
  const auto over = run(args + " --overwrite", true);
  EXPECT_EQ(over.code, 0) << over.output;
  EXPECT_FALSE(fs::exists(marker));
  EXPECT_TRUE(fs::exists(fs::path(out) / "index.html"));
}

// The site in headless Chromium (ctest label "browser"; skipped with a message when chromium is absent):
// the index, a latent page and the tree render their data, and a screenshot of each is kept in
// build/test-artifacts/browser/.
namespace {

std::string find_chromium() {
  for (const char* c : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"})
    if (fs::exists(c)) return c;
  return "";
}

std::string chromium(const std::string& bin, const std::string& url, const std::string& extra) {
  return test_util::run_shell(bin + " --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run "
                              "--user-data-dir=" + fs::temp_directory_path().string() + "/msae-chromium-profile-" +
                              std::to_string(::getpid()) + " --virtual-time-budget=15000 " + extra + " '" + url +
                              "' 2>/dev/null").output;
}

}  // namespace

using Browser = Planted;

TEST_F(Browser, RendersInChromium) {
  const std::string bin = find_chromium();
  if (bin.empty()) GTEST_SKIP() << "chromium not found (apt-get install chromium): the browser test is skipped";
  const std::string out = (root / "site").string();
  const auto r = test_util::run("browse --sae " + (root / "sae").string() + " " + (root / "sae").string() + " --acts " +
                                (root / "acts").string() + " --out " + out + " --top 5 --log-level 0", true);
  ASSERT_EQ(r.code, 0) << r.output;
  const lm::Tokenizer tok = lm::load_tokenizer("", "");
  const fs::path art = fs::path(MSAE_ARTIFACTS) / "browser";
  fs::create_directories(art);
  const std::string base = "file://" + fs::absolute(out).string() + "/";

  // The index: the summary cards and the latent table with a link to every alive latent.
  const std::string index = chromium(bin, base + "index.html", "--dump-dom");
  EXPECT_NE(index.find("data-ready=\"1\""), std::string::npos) << index.substr(0, 2000);
  EXPECT_EQ(index.find("id=\"error\""), std::string::npos) << index.substr(0, 2000);
  EXPECT_NE(index.find("id=\"latent-table\""), std::string::npos);
  EXPECT_NE(index.find("latent.html?sae=0&amp;id=2"), std::string::npos);
  EXPECT_EQ(index.find("latent.html?sae=0&amp;id=4\""), std::string::npos) << "the dead latent is hidden by default";

  // The child latent's page: its five top contexts with the planted token shaded, its parent, the histogram.
  const std::string page = chromium(bin, base + "latent.html?sae=0&id=2&rule=excess", "--dump-dom");
  EXPECT_NE(page.find("data-ready=\"1\""), std::string::npos) << page.substr(0, 2000);
  EXPECT_EQ(page.find("id=\"error\""), std::string::npos) << page.substr(0, 3000);
  size_t contexts = 0;
  for (size_t at = page.find("class=\"ctx\""); at != std::string::npos; at = page.find("class=\"ctx\"", at + 1)) ++contexts;
  EXPECT_GE(contexts, 5u);
  const size_t top = page.find("id=\"top\"");
  ASSERT_NE(top, std::string::npos);
  EXPECT_NE(page.find(">2.2<", top), std::string::npos) << "the largest activation is shown";
  std::string t_text = browse::token_text(tok, kT);
  EXPECT_NE(page.find("class=\"tok peak\"", top), std::string::npos);
  EXPECT_NE(page.find(t_text), std::string::npos) << t_text;
  EXPECT_NE(page.find("id=\"parent\""), std::string::npos);
  const size_t par = page.find("id=\"parent\"");
  EXPECT_NE(page.find("latent.html?sae=0&amp;id=1&amp;rule=excess", par), std::string::npos) << "the excess rule's parent";
  EXPECT_NE(page.find("<svg"), std::string::npos);

  // The parent's page lists its child (the absorption view), the tree shows the child under its root; under
  // the co-firing rule the child hangs under the dense latent instead.
  const std::string parent = chromium(bin, base + "latent.html?sae=0&id=1&rule=excess", "--dump-dom");
  const size_t kids = parent.find("id=\"children\"");
  ASSERT_NE(kids, std::string::npos) << parent.substr(0, 3000);
  EXPECT_NE(parent.find("latent.html?sae=0&amp;id=2&amp;rule=excess", kids), std::string::npos);
  const std::string tree = chromium(bin, base + "tree.html?sae=0&rule=excess", "--dump-dom");
  const size_t root1 = tree.find("data-latent=\"1\"");
  ASSERT_NE(root1, std::string::npos) << tree.substr(0, 3000);
  EXPECT_NE(tree.find("data-latent=\"2\"", root1), std::string::npos) << "the open root shows its child";
  const std::string dense = chromium(bin, base + "latent.html?sae=0&id=0", "--dump-dom");
  const size_t dense_kids = dense.find("id=\"children\"");
  ASSERT_NE(dense_kids, std::string::npos) << dense.substr(0, 3000);
  EXPECT_NE(dense.find("latent.html?sae=0&amp;id=2\"", dense_kids), std::string::npos);
  for (const std::string* dom : {&index, &page, &parent, &tree, &dense})
    EXPECT_EQ(dom->find("[object "), std::string::npos) << "an element printed as text";

  // Screenshots, kept as test artifacts.
  for (const auto& [name, url] : std::vector<std::pair<std::string, std::string>>{
           {"index.png", base + "index.html"}, {"latent.png", base + "latent.html?sae=0&id=2&rule=excess"},
           {"tree.png", base + "tree.html?sae=0&rule=excess"}}) {
    const fs::path png = art / name;
    fs::remove(png);
    chromium(bin, url, "--window-size=1280,900 --screenshot=" + png.string());
    EXPECT_TRUE(fs::exists(png) && fs::file_size(png) > 1000) << png;
  }
}
