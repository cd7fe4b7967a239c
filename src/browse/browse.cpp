// msae browse as a library call (msae/browse.h): the CLI parses its flags into a Request and prints the
// summary.
#include <memory>

#include "msae/browse.h"
#include "msae/io.h"

namespace msae::browse {

nlohmann::json build(const Request& r, const Progress& progress) {
  if (r.saes.empty()) usage_error("--sae: give at least one SAE directory");
  const Options& o = r.options;
  if (o.top_examples < 1 || o.top_examples > 1000) usage_error("--top must be in [1, 1000], got ", o.top_examples);
  if (o.bands < 0 || o.bands > 16) usage_error("--bands must be in [0, 16], got ", o.bands);
  if (o.band_examples < 0 || o.band_examples > 100) usage_error("--band-examples must be in [0, 100], got ", o.band_examples);
  if (o.before < 0 || o.before > 512 || o.after < 0 || o.after > 512)
    usage_error("--before and --after must be in [0, 512], got ", o.before, " and ", o.after);
  if (o.neighbours < 1 || o.neighbours > 100) usage_error("--neighbours must be in [1, 100], got ", o.neighbours);
  if (o.cofire_rows < 0) usage_error("--cofire-rows must be >= 0 (0: all rows), got ", o.cofire_rows);
  if (o.max_rows < 0) usage_error("--max-rows must be >= 0 (0: all rows), got ", o.max_rows);
  const io::OutputLock lock = io::lock_output(r.out, "msae browse");
  io::report_leftovers(io::clean_leftovers(r.out));
  if (io::path_exists(r.out) && !r.overwrite) usage_error("--out ", r.out, " exists; pass --overwrite to replace it");
  Timer timer;
  const Harvest h = open_harvest(r.acts);
  std::vector<std::unique_ptr<saedir::SaeDirectory>> dirs;
  std::vector<const saedir::SaeDirectory*> ptrs;
  for (const std::string& p : r.saes) {
    dirs.push_back(std::make_unique<saedir::SaeDirectory>(saedir::read_sae_dir(p)));
    ptrs.push_back(dirs.back().get());
  }
  // The tokenizer: --tokenizer, else the model's (--model, or the harvest's when it still exists).
  std::string model_for_tok = r.model;
  if (model_for_tok.empty() && h.manifest.is_object() && h.manifest.contains("model") && h.manifest["model"].is_string() &&
      io::is_directory(h.manifest["model"].get<std::string>()))
    model_for_tok = h.manifest["model"].get<std::string>();
  const lm::Tokenizer tok = lm::load_tokenizer(model_for_tok, r.tokenizer);
  for (int32_t t : h.token)
    if (t >= tok.vocab_size())
      runtime_error(r.acts, "/index/tokens.npy holds token id ", t, " but the tokenizer has ", tok.vocab_size(),
                    " tokens; pass the harvest's --model or --tokenizer");
  std::unique_ptr<lm::Model> model;
  if (!r.model.empty()) {
    model = std::make_unique<lm::Model>(lm::Model::load(r.model));
    if (model->d_model() != h.d)
      usage_error("--model ", r.model, " has n_embd = ", model->d_model(), " but the activations have d = ", h.d);
  }
  const Tensor* U = model ? &model->unembedding() : nullptr;
  Collected c = collect(h, ptrs, r.saes, o, U ? U->ptr() : nullptr, U ? U->shape[0] : 0, progress);
  // Display names: the directories' base names, made unique.
  for (size_t s = 0; s < c.saes.size(); ++s) {
    std::string base = io::without_trailing_slash(r.saes[s]);
    base = base.substr(base.find_last_of('/') + 1);
    std::string name = base;
    for (size_t t = 0; t < s; ++t)
      if (c.saes[t].name == name) name = cat(base, "-", s + 1);
    c.saes[s].name = name;
  }
  nlohmann::json about = {{"acts", r.acts}, {"model", r.model}, {"msae_version", version_string()},
                          {"git_commit", git_commit()}};
  if (h.manifest.is_object() && h.manifest.contains("hook_name")) about["hook_name"] = h.manifest["hook_name"];
  if (about["model"] == "" && !model_for_tok.empty()) about["model"] = model_for_tok;
  io::PendingOutput pending(r.out);
  Timer wt;
  const int64_t files = write_site(pending.dir(), c, h, tok, o, about);
  const double write_seconds = wt.seconds();
  io::sync_tree(pending.dir());
  pending.commit(r.overwrite);
  nlohmann::json saes = nlohmann::json::array();
  for (const SaeStats& st : c.saes) {
    int64_t dead = 0;
    for (const LatentStats& L : st.latents) dead += L.fired == 0;
    saes.push_back({{"name", st.name}, {"path", st.path}, {"d_sae", st.latents.size()}, {"l0", st.l0}, {"dead", dead}});
  }
  return {{"out", r.out}, {"index", r.out + "/index.html"}, {"rows", c.rows}, {"cofire_rows", c.cofire_rows},
          {"saes", saes}, {"files", files},
          {"seconds", {{"encode_pass", c.encode_seconds}, {"cofire", c.cofire_seconds}, {"geometry", c.geometry_seconds},
                       {"write", write_seconds}, {"total", timer.seconds()}}},
          {"peak_rss_bytes", peak_rss_bytes()}};
}

}  // namespace msae::browse
