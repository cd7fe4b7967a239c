// msae harvest: text -> GPT-2 -> activation shards at one hook (docs/lm.md).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "commands.h"
#include "msae/io.h"
#include "msae/kernels.h"
#include "msae/lm.h"
#include "progress.h"

namespace msae::cli {
namespace {

struct HarvestArgs {
  std::string model, tokenizer, out, site = "resid_pre", dtype = "f32";
  std::vector<std::string> text;
  int64_t layer = -1, ctx = 128, batch = 8, max_tokens = 0, shard_rows = 65536;
  bool skip_bos = false, no_bos = false, overwrite = false;
  int threads = 0;
};

// Activation rows streamed into shards acts-00000.npy, acts-00001.npy, ... of shard_rows rows each (the last
// holds the rest); the numbering is zero-padded to at least 5 digits so name order is row order.
class ShardWriter {
 public:
  ShardWriter(std::string dir, std::string descr, int64_t rows, int64_t d, int64_t shard_rows, int64_t item)
      : dir_(std::move(dir)), descr_(std::move(descr)), rows_(rows), d_(d), shard_rows_(shard_rows), item_(item) {
    const int64_t count = (rows + shard_rows - 1) / shard_rows;
    width_ = std::max<int>(5, static_cast<int>(std::to_string(std::max<int64_t>(count - 1, 0)).size()));
  }
  // nrows rows of d elements of item bytes each.
  void write(const void* data, int64_t nrows) {
    const auto* p = static_cast<const unsigned char*>(data);
    while (nrows > 0) {
      if (!cur_ || in_cur_ == cur_rows_) open_next();
      const int64_t m = std::min(nrows, cur_rows_ - in_cur_);
      cur_->write(p, static_cast<size_t>(m * d_ * item_));
      p += m * d_ * item_;
      in_cur_ += m;
      done_ += m;
      nrows -= m;
    }
  }
  void close() {
    MSAE_ASSERT(done_ == rows_, "harvest: wrote ", done_, " rows, promised ", rows_);
    if (cur_) cur_->close();
  }
  const nlohmann::json& shards() const { return shards_; }

 private:
  void open_next() {
    if (cur_) cur_->close();
    char name[32];
    std::snprintf(name, sizeof name, "acts-%0*lld.npy", width_, static_cast<long long>(shards_.size()));
    cur_rows_ = std::min(shard_rows_, rows_ - done_);
    cur_ = std::make_unique<io::NpyWriter>(dir_ + "/" + name, descr_, std::vector<int64_t>{cur_rows_, d_});
    shards_.push_back({{"file", name}, {"first_row", done_}, {"rows", cur_rows_}});
    in_cur_ = 0;
  }
  std::string dir_, descr_;
  int64_t rows_, d_, shard_rows_, item_;
  int width_ = 5;
  std::unique_ptr<io::NpyWriter> cur_;
  int64_t cur_rows_ = 0, in_cur_ = 0, done_ = 0;
  nlohmann::json shards_ = nlohmann::json::array();
};

int run_harvest(const HarvestArgs& a) {
  set_num_threads(a.threads);
  kernels::set_blas_threads(num_threads());
  if (a.dtype != "f32" && a.dtype != "f16") usage_error("--dtype must be f32 or f16, got '", a.dtype, "'");
  if (a.batch <= 0) usage_error("--batch must be positive, got ", a.batch);
  if (a.shard_rows <= 0) usage_error("--shard-rows must be positive, got ", a.shard_rows);
  if (a.skip_bos && a.no_bos) usage_error("--skip-bos needs BOS positions; it cannot be combined with --no-bos");
  const io::OutputLock lock = io::lock_output(a.out, "msae harvest");
  io::report_leftovers(io::clean_leftovers(a.out));
  if (io::path_exists(a.out) && !a.overwrite)
    usage_error("--out ", a.out, " exists; pass --overwrite to replace it");
  const lm::Model model = lm::Model::load(a.model);
  const lm::Site site = lm::checked_site(model, a.layer, a.site);
  const lm::Tokenizer tok = lm::load_tokenizer(a.model, a.tokenizer);
  if (tok.vocab_size() > model.config().vocab_size)
    usage_error("the tokenizer has ", tok.vocab_size(), " tokens but the model's vocab_size is ", model.config().vocab_size);
  if (a.ctx > model.config().n_positions)
    usage_error("--ctx ", a.ctx, " exceeds the model's n_positions = ", model.config().n_positions);
  const bool bos = !a.no_bos;
  const int64_t per_ctx_rows = a.skip_bos ? a.ctx - 1 : a.ctx;
  const int64_t max_ctx = a.max_tokens > 0 ? (a.max_tokens + per_ctx_rows - 1) / per_ctx_rows : 0;
  const lm::TokenStream stream = lm::tokenize_files(tok, a.text, max_ctx * a.ctx);
  const lm::Contexts c = lm::make_contexts(stream, a.ctx, bos, max_ctx, tok.eot());
  const int64_t d = model.d_model(), T = c.T;
  const int64_t rows = c.N * per_ctx_rows;
  log_info(cat("harvest: ", stream.ids.size(), " tokens in ", a.text.size(), " file(s) -> ", c.N, " contexts of ", T,
               " -> ", rows, " rows of width ", d, " at layer ", a.layer, " ", a.site));

  if (rows == 0) runtime_error("--text: the files hold too few tokens for one context of --ctx ", a.ctx, " tokens");

  // Written beside the output and renamed into place when complete; removed on any error.
  io::PendingOutput pending(a.out);
  const std::string& tmp = pending.dir();
  const bool f16 = a.dtype == "f16";
  ShardWriter acts(tmp, f16 ? "<f2" : "<f4", rows, d, a.shard_rows, f16 ? 2 : 4);
  // The token index lives in a subdirectory so that `msae train --data DIR` sees only the shards.
  io::create_directories(tmp + "/index");
  io::NpyWriter meta(tmp + "/index/tokens.npy", "<i8", {rows, 4});
  Progress progress(c.N);
  std::vector<uint16_t> half;
  std::vector<int64_t> index_rows;  // one batch's token index rows, written at once
  for (int64_t n0 = 0; n0 < c.N; n0 += a.batch) {
    const int64_t nb = std::min(a.batch, c.N - n0);
    Tensor captured;
    std::vector<lm::Hook> hooks = {{a.layer, site, [&](float* x, int64_t R) {
                                      captured = Tensor({R, d});
                                      std::copy(x, x + R * d, captured.ptr());
                                    }}};
    // Blocks after the hook's are not needed.
    model.run(c.ids.data() + n0 * T, nb, T, hooks, a.layer, false);
    index_rows.clear();
    for (int64_t n = 0; n < nb; ++n) {
      const int64_t t0 = a.skip_bos ? 1 : 0;
      const float* src = captured.ptr() + (n * T + t0) * d;
      const int64_t cnt = (T - t0) * d;
      if (f16) {
        half.resize(static_cast<size_t>(cnt));
        for (int64_t i = 0; i < cnt; ++i) half[i] = io::float_to_half(src[i]);
        acts.write(half.data(), T - t0);
      } else {
        acts.write(src, T - t0);
      }
      for (int64_t t = t0; t < T; ++t) {
        const size_t i = static_cast<size_t>((n0 + n) * T + t);
        index_rows.insert(index_rows.end(), {c.ids[i], c.file[i], c.offset[i], t});
      }
    }
    meta.write(index_rows.data(), index_rows.size() * sizeof(int64_t));
    progress.update(n0 + nb, cat("contexts ", n0 + nb, "/", c.N));
  }
  progress.finish();
  acts.close();
  meta.close();
  nlohmann::json info = {
      {"format", "msae-harvest"}, {"format_version", 1}, {"msae_version", version_string()},
      {"git_commit", git_commit()}, {"model", a.model}, {"model_config", {
          {"vocab_size", model.config().vocab_size}, {"n_positions", model.config().n_positions},
          {"n_embd", d}, {"n_layer", model.config().n_layer}, {"n_head", model.config().n_head}}},
      {"layer", a.layer}, {"site", a.site}, {"hook_name", cat("blocks.", a.layer, ".hook_", a.site)},
      {"ctx", T}, {"prepend_bos", bos}, {"skip_bos", a.skip_bos}, {"contexts", c.N}, {"rows", rows},
      {"d", d}, {"dtype", a.dtype == "f16" ? "float16" : "float32"}, {"text_files", a.text},
      {"shard_rows", a.shard_rows}, {"shards", acts.shards()}, {"token_index", "index/tokens.npy"},
      {"files", {{"acts-NNNNN.npy", "(rows_i, d) activations; the shards in name order are the rows in order "
                                    "(context-major, position-minor); msae train --data DIR reads them"},
                 {"index/tokens.npy", "(rows, 4) int64 ('<i8'): token id, text file index (-1 for BOS/separator), "
                                      "byte offset in that file (-1 likewise), position in the context"}}},
      {"seconds", progress.elapsed()}};
  io::write_text_file_atomic(tmp + "/harvest.json", info.dump(2) + "\n");
  pending.commit(a.overwrite);
  std::printf("%s\n", info.dump(2).c_str());
  return 0;
}

}  // namespace

Action add_harvest_command(CLI::App& root) {
  auto a = std::make_shared<HarvestArgs>();
  CLI::App* app = root.add_subcommand("harvest", "Run a GPT-2 model over text files and save activations at one hook");
  app->add_option("--model", a->model, "Model directory: config.json + model.safetensors (HF GPT-2 layout)")->required();
  app->add_option("--text", a->text, "UTF-8 text files")->required();
  app->add_option("--layer", a->layer, "Block index of the hook")->required();
  app->add_option("--site", a->site, "resid_pre (default), attn_out, mlp_out or resid_post");
  app->add_option("--ctx", a->ctx, "Tokens per context, BOS included (default 128)");
  app->add_option("--out", a->out, "Output directory (acts-NNNNN.npy shards, index/tokens.npy, harvest.json)")->required();
  app->add_option("--shard-rows", a->shard_rows, "Rows per activation shard (default 65536)");
  app->add_option("--dtype", a->dtype, "f32 (default) or f16");
  app->add_flag("--skip-bos", a->skip_bos, "Do not write the BOS position of each context");
  app->add_flag("--no-bos", a->no_bos, "Do not prepend <|endoftext|> to each context");
  app->add_option("--max-tokens", a->max_tokens, "Stop after about this many rows (default: all the text)");
  app->add_option("--batch", a->batch, "Contexts per forward pass (default 8)");
  app->add_option("--tokenizer", a->tokenizer, "Tokenizer directory when the model directory has none (default models/gpt2-tokenizer)");
  app->add_flag("--overwrite", a->overwrite, "Replace an existing --out");
  app->add_option("--threads", a->threads, "Threads (default: all cores)");
  return [a]() { return run_harvest(*a); };
}

}  // namespace msae::cli
