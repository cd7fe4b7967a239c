// msae browse: a static HTML feature browser of one or more SAEs on a harvest (docs/browser.md).
#include <cstdio>
#include <memory>

#include "commands.h"
#include "msae/browse.h"
#include "msae/kernels.h"
#include "progress.h"

namespace msae::cli {
namespace {

struct BrowseArgs {
  browse::Request r;
  int threads = 0;
};

int run_browse(const BrowseArgs& a) {
  set_num_threads(a.threads);
  kernels::set_blas_threads(num_threads());
  std::unique_ptr<Progress> bar;
  const nlohmann::json summary = browse::build(a.r, [&](int64_t done, int64_t total) {
    if (!bar) bar = std::make_unique<Progress>(total);
    bar->update(done, cat("rows ", done, "/", total));
  });
  if (bar) bar->finish();
  log_info(cat("browse: wrote ", summary["files"].get<int64_t>(), " files; open ", a.r.out, "/index.html in a browser"));
  std::printf("%s\n", summary.dump(2).c_str());
  return 0;
}

}  // namespace

Action add_browse_command(CLI::App& root) {
  auto a = std::make_shared<BrowseArgs>();
  browse::Request& r = a->r;
  browse::Options& o = r.options;
  CLI::App* app = root.add_subcommand("browse", "Write a static HTML feature browser of SAEs on a harvest (index, latent pages, Matryoshka tree)");
  app->add_option("--sae", r.saes, "SAE directories (several: side by side, e.g. Matryoshka and BatchTopK)")->required();
  app->add_option("--acts", r.acts, "Harvest directory (msae harvest: activation shards + index/tokens.npy)")->required();
  app->add_option("--model", r.model, "GPT-2 directory: promoted and suppressed tokens through its unembedding");
  app->add_option("--tokenizer", r.tokenizer, "Tokenizer directory (default: the model's, else models/gpt2-tokenizer)");
  app->add_option("--out", r.out, "Site directory to write (open OUT/index.html)")->required();
  app->add_flag("--overwrite", r.overwrite, "Replace an existing --out");
  app->add_option("--max-rows", o.max_rows, "Read only the first N rows of the harvest (default: all)");
  app->add_option("--top", o.top_examples, "Top activating contexts per latent (default 20)");
  app->add_option("--bands", o.bands, "Octaves below the maximum to sample contexts from (default 4)");
  app->add_option("--band-examples", o.band_examples, "Contexts sampled per octave (default 5)");
  app->add_option("--before", o.before, "Tokens shown before the activating token (default 16)");
  app->add_option("--after", o.after, "Tokens shown after it (default 4)");
  app->add_option("--neighbours", o.neighbours, "Nearest and co-firing latents listed (default 10)");
  app->add_option("--cofire-rows", o.cofire_rows, "Rows whose codes give co-firing and parents (default 1048576; 0: all)");
  app->add_option("--seed", o.seed, "Seed of the sampled contexts (default 0)");
  app->add_option("--threads", a->threads, "Threads (default: all cores)");
  return [a]() { return run_browse(*a); };
}

}  // namespace msae::cli
