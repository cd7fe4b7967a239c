// Data for timing msae browse at scale (docs/browser.md): a harvest directory of N rows of SynthSAEBench-16k
// activations (d = 768, 16384 ground-truth features; float16 shards + a token index) and an "oracle"
// Matryoshka SAE of 16384 latents whose encoder and decoder rows are the true feature directions (default
// groups), its threshold calibrated so that the mean L0 is the model's expected L0. Every latent is then a
// real, sparse feature, as in a well-trained SAE of that width, so the browser does the work of one.
//   msae_browse_data --rows 1000000 --out DIR     -> DIR/acts (harvest), DIR/sae (SAE directory)
// The token of a row is a fixed function of its first fired feature (id 256 + feature % 50000; 50256 when
// none fired), so latents have "top tokens"; contexts are runs of 128 rows.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "msae/data.h"
#include "msae/eval.h"
#include "msae/io.h"
#include "msae/sae_dir.h"
#include "msae/synth.h"

using namespace msae;

int main(int argc, char** argv) {
  int64_t rows = 1000000;
  std::string out;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--rows") rows = std::atoll(argv[i + 1]);
    else if (a == "--out") out = argv[i + 1];
  }
  if (out.empty() || rows <= 0) {
    std::fprintf(stderr, "usage: msae_browse_data --rows N --out DIR\n");
    return 2;
  }
  try {
    const synth::FeatureModel m = synth::make_preset("synth-16k", 0);
    const int64_t d = m.d, D = m.n_features(), ctx = 128, shard = 65536;
    synth::FeatureSampler sampler(m, synth::synth_bench_train_stream(0));
    io::create_directories(out + "/acts/index");
    io::NpyWriter index(out + "/acts/index/tokens.npy", "<i8", {rows, 4});
    std::vector<float> x;
    std::vector<uint16_t> half;
    std::vector<int64_t> idx;
    synth::FiredFeatures fired;
    Timer t;
    for (int64_t s0 = 0, k = 0; s0 < rows; s0 += shard, ++k) {
      const int64_t n = std::min(shard, rows - s0);
      char name[64];
      std::snprintf(name, sizeof name, "/acts/acts-%05lld.npy", static_cast<long long>(k));
      io::NpyWriter w(out + name, "<f2", {n, d});
      x.resize(static_cast<size_t>(n * d));
      half.resize(x.size());
      sampler.sample(n, x.data(), &fired);
      for (size_t i = 0; i < x.size(); ++i) half[i] = io::float_to_half(x[i]);
      w.write(half.data(), half.size() * 2);
      w.close();
      idx.clear();
      for (int64_t r = 0; r < n; ++r) {
        const int64_t row = s0 + r;
        const int64_t tok = fired.offsets[r + 1] > fired.offsets[r] ? 256 + fired.ids[fired.offsets[r]] % 50000 : 50256;
        idx.insert(idx.end(), {tok, 0, row, row % ctx});
      }
      index.write(idx.data(), idx.size() * sizeof(int64_t));
      std::fprintf(stderr, "\r%lld/%lld rows (%.0f s)", static_cast<long long>(s0 + n), static_cast<long long>(rows), t.seconds());
    }
    index.close();
    std::fprintf(stderr, "\n");
    SaeConfig cfg;
    cfg.d_in = d;
    cfg.d_sae = D;
    cfg.k = static_cast<int64_t>(std::lround(m.expected_l0()));
    cfg.finalize();
    SaeParams p = SaeParams::zeros(d, D);
    std::copy(m.directions.ptr(), m.directions.ptr() + D * d, p.W_enc_t.ptr());
    std::copy(m.directions.ptr(), m.directions.ptr() + D * d, p.W_dec.ptr());
    std::copy(m.bias.ptr(), m.bias.ptr() + d, p.b_dec.ptr());
    data::DataOptions o;
    o.shuffle = false;
    auto src = data::open_data(out + "/acts", o);
    p.threshold = eval::calibrate_threshold(cfg, p, *src, std::min<int64_t>(rows, 65536), 4096);
    io::create_directories(out + "/sae");
    saedir::write_sae_files(out + "/sae", cfg, p, {{"format", "msae-sae"}, {"config", saedir::config_json(cfg)}});
    std::printf("{\"rows\": %lld, \"d\": %lld, \"d_sae\": %lld, \"k\": %lld, \"threshold\": %g, \"seconds\": %.1f}\n",
                static_cast<long long>(rows), static_cast<long long>(d), static_cast<long long>(D),
                static_cast<long long>(cfg.k), p.threshold, t.seconds());
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "msae_browse_data: %s\n", e.what());
    return 1;
  }
}
