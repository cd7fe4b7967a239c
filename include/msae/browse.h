// msae browse: what each latent of an SAE means, from a harvest directory (docs/browser.md).
//
// collect() streams a harvest's activation rows once, in order, through one or more SAEs and keeps, per
// latent and in memory bounded by the number of latents (not of rows): the firing count, the sum and
// maximum of its activations, a log-binned histogram, the top activating rows and reservoir samples from
// the octaves below its maximum, each with the latent's activations over a window of tokens around the
// row. It also keeps the codes' latent ids of the first `cofire_rows` rows, from which it derives, per
// latent, the latents that fire with it and, for a Matryoshka SAE, its parent in an earlier group. Then
// the decoder geometry: nearest latents by decoder cosine (within the SAE and in each other SAE), and with
// a language model the tokens each decoder row promotes and suppresses through the unembedding.
// write_site() turns the result into a static HTML site (index, latent pages, Matryoshka tree) that opens
// from the disk with no server and no network.
// browse depends on lm (tokenizer, unembedding, the SAE's input scale), data (the shards) and saedir.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "msae/lm.h"
#include "msae/sae_dir.h"

namespace msae::browse {

struct Options {
  int64_t top_examples = 20;    // top activating rows per latent
  int64_t bands = 4;            // octaves sampled below the maximum's: [2^(e-b), 2^(e-b+1)), b = 0..bands-1
  int64_t band_examples = 5;    // reservoir samples per octave band
  int64_t before = 16;          // window: tokens before the row ...
  int64_t after = 4;            // ... and after it (clipped to the row's context)
  int64_t neighbours = 10;      // nearest latents by decoder cosine, co-firing latents
  int64_t logit_tokens = 10;    // promoted and suppressed tokens (with a model)
  int64_t cofire_rows = 1 << 20;  // rows whose codes give the co-firing statistics and the tree (0: all)
  int64_t max_rows = 0;         // rows of the harvest read (0: all)
  int64_t chunk = 4096;         // rows encoded at a time (rounded to whole contexts)
  uint64_t seed = 0;            // the reservoir draws
};

// Histogram of a latent's positive activations in log2 bins: kHistPerOctave bins per octave from
// 2^kHistMinOctave to 2^kHistMaxOctave (values outside go to the end bins).
constexpr int kHistPerOctave = 4;
constexpr int kHistMinOctave = -24;
constexpr int kHistMaxOctave = 24;
constexpr int kHistBins = (kHistMaxOctave - kHistMinOctave) * kHistPerOctave;
int hist_bin(float v);              // the bin of v > 0
double hist_bin_lower(int bin);     // its lower edge

// One activating row and the latent's activations on the rows [first, first + window.size()) around it
// (the same context).
struct Example {
  int64_t row = 0;
  float value = 0;
  int64_t first = 0;
  std::vector<float> window;
};

struct Neighbour {
  int64_t id = 0;
  double value = 0;  // cosine, or P(neighbour fires | latent fires)
};

struct LatentStats {
  int64_t fired = 0;               // rows where it is active
  double sum = 0;                  // sum of its activations
  float max = 0;
  std::vector<uint32_t> hist;      // (kHistBins)
  std::vector<Example> top;        // descending value (ties: lower row first)
  int top_octave = 0;              // floor(log2(max)) (valid when fired > 0)
  std::vector<std::vector<Example>> bands;  // bands[b]: samples with floor(log2 v) = top_octave - b
  std::vector<int64_t> band_seen;  // (bands) values seen in each band
  // From the co-firing rows:
  int64_t cofire_fired = 0;        // its firings among them
  std::vector<Neighbour> cofire;   // the latents firing with it most often, P(j | this), descending
  std::vector<std::pair<int32_t, int64_t>> tokens;  // the tokens it fires on most often (id, count)
  // Matryoshka parents, by two rules over the latents of earlier groups (ties: lower id):
  //   cofire: the one that fires with it most often, the largest P(parent | this);
  //   excess: the largest excess over its own density, P(parent | this) - P(parent), when positive
  //           (a dense latent that fires with everything is no one's excess parent).
  struct Parent {
    int64_t id = -1;
    double p = 0;    // P(parent fires | this fires)
    double cos = 0;  // decoder cosine with the parent
  };
  Parent parent, excess_parent;
  // Decoder geometry:
  std::vector<Neighbour> nearest;  // by decoder cosine, descending
  std::vector<std::vector<Neighbour>> nearest_other;  // per SAE (empty for itself): nearest latent there
  std::vector<std::pair<int32_t, float>> promoted, suppressed;  // token logit effects (with a model)
};

struct SaeStats {
  std::string name;                // display name (the directory's base name, made unique)
  std::string path;
  const saedir::SaeDirectory* sae = nullptr;
  std::vector<int64_t> bounds;     // group boundaries m_1 < ... < D
  std::vector<LatentStats> latents;
  std::vector<double> group_active;  // activations per group (sum over rows), for the L0 share
  double l0 = 0;                   // mean active latents per row
};

struct Harvest {
  std::string dir;
  nlohmann::json manifest;         // harvest.json ({} when absent)
  int64_t rows = 0, d = 0;
  std::vector<int32_t> token;      // (rows) token id per row
  std::vector<int64_t> context;    // (rows) context index per row (a context is a run of increasing positions)
};

// Reads DIR's harvest.json (optional), index/tokens.npy (required: (rows, 4) int64) and checks it against
// the shards' row count. Errors name the file.
Harvest open_harvest(const std::string& dir);

struct Collected {
  std::vector<SaeStats> saes;
  int64_t rows = 0, cofire_rows = 0;
  double encode_seconds = 0, cofire_seconds = 0, geometry_seconds = 0;
  int64_t peak_rss = 0;
};

// Progress: called with (rows done, rows in all) during the pass.
using Progress = std::function<void(int64_t, int64_t)>;

// The statistics of every SAE on the harvest's rows. Each SAE's d_in must equal the harvest's. unembed
// (V, d), may be null: no token logit effects.
Collected collect(const Harvest& h, const std::vector<const saedir::SaeDirectory*>& saes,
                  const std::vector<std::string>& paths, const Options& opt, const float* unembed, int64_t V,
                  const Progress& progress = {});

// Writes the static site into `dir` (which must exist and be empty): index.html, latent.html, tree.html,
// assets/, data/. tok decodes the token ids. Returns the number of files written.
int64_t write_site(const std::string& dir, const Collected& c, const Harvest& h, const lm::Tokenizer& tok,
                   const Options& opt, const nlohmann::json& about);

// The whole command (msae browse): reads the harvest, the SAEs and the model, collects, and writes the site
// into `out` under a temporary name, renamed into place when complete (an existing `out` is replaced only
// with overwrite, and survives any failure). Returns a summary: rows, latents, files, seconds, peak RSS.
struct Request {
  std::vector<std::string> saes;  // SAE directories (at least one)
  std::string acts;               // harvest directory
  std::string model;              // GPT-2 directory for the logit effects ("" = none)
  std::string tokenizer;          // tokenizer directory ("" = the model's, harvest.json's model's, or the shipped one)
  std::string out;
  bool overwrite = false;
  Options options;
};
nlohmann::json build(const Request& r, const Progress& progress = {});

// The token's text as valid UTF-8 (bytes that are not are replaced by U+FFFD).
std::string token_text(const lm::Tokenizer& tok, int32_t id);

}  // namespace msae::browse
