// Text into model inputs: the tokenizer's files, text files into one token stream, the stream cut into
// fixed-length contexts, and the hook site of a block (lm.h).
#include <algorithm>

#include "msae/io.h"
#include "msae/lm.h"

#ifndef MSAE_SOURCE_DIR_FOR_MODELS
#define MSAE_SOURCE_DIR_FOR_MODELS "."
#endif

namespace msae::lm {

Tokenizer load_tokenizer(const std::string& model_dir, const std::string& tokenizer_dir) {
  auto has = [](const std::string& d) {
    return io::path_exists(d + "/encoder.json") || (io::path_exists(d + "/vocab.json") && io::path_exists(d + "/merges.txt"));
  };
  if (!model_dir.empty() && has(model_dir)) return Tokenizer::load(model_dir);
  if (!tokenizer_dir.empty()) return Tokenizer::load(tokenizer_dir);
  for (const std::string& d : {std::string("models/gpt2-tokenizer"), std::string(MSAE_SOURCE_DIR_FOR_MODELS) + "/models/gpt2-tokenizer"})
    if (has(d)) return Tokenizer::load(d);
  usage_error("no tokenizer: ", model_dir, " has no encoder.json/vocab.bpe and models/gpt2-tokenizer was not found; "
              "pass --tokenizer DIR");
}

TokenStream tokenize_files(const Tokenizer& tok, const std::vector<std::string>& files, int64_t max_tokens) {
  if (files.empty()) usage_error("--text: give at least one text file");
  TokenStream s;
  std::vector<int64_t> off;
  for (size_t f = 0; f < files.size(); ++f) {
    if (max_tokens > 0 && static_cast<int64_t>(s.ids.size()) >= max_tokens) break;
    const std::string text = io::read_text_file(files[f]);
    const std::vector<int32_t> ids = tok.encode(text, &off);
    s.ids.insert(s.ids.end(), ids.begin(), ids.end());
    s.file.insert(s.file.end(), ids.size(), static_cast<int32_t>(f));
    s.offset.insert(s.offset.end(), off.begin(), off.end());
    s.ids.push_back(tok.eot());
    s.file.push_back(-1);
    s.offset.push_back(-1);
  }
  return s;
}

Contexts make_contexts(const TokenStream& s, int64_t T, bool bos, int64_t max_contexts, int32_t bos_id) {
  if (T < 2) usage_error("--ctx must be at least 2, got ", T);
  MSAE_ASSERT(s.file.size() == s.ids.size() && s.offset.size() == s.ids.size());
  Contexts c;
  c.T = T;
  c.bos = bos;
  const int64_t body = bos ? T - 1 : T;
  int64_t N = static_cast<int64_t>(s.ids.size()) / body;
  if (max_contexts > 0) N = std::min(N, max_contexts);
  if (N == 0)
    usage_error("the text holds ", s.ids.size(), " tokens, fewer than one context of ", body, " (lower --ctx or give more text)");
  c.N = N;
  c.ids.reserve(static_cast<size_t>(N * T));
  c.file.reserve(static_cast<size_t>(N * T));
  c.offset.reserve(static_cast<size_t>(N * T));
  for (int64_t n = 0; n < N; ++n) {
    if (bos) {
      c.ids.push_back(bos_id);
      c.file.push_back(-1);
      c.offset.push_back(-1);
    }
    const size_t b = static_cast<size_t>(n * body);
    c.ids.insert(c.ids.end(), s.ids.begin() + b, s.ids.begin() + b + body);
    c.file.insert(c.file.end(), s.file.begin() + b, s.file.begin() + b + body);
    c.offset.insert(c.offset.end(), s.offset.begin() + b, s.offset.begin() + b + body);
  }
  return c;
}

Site checked_site(const Model& m, int64_t layer, const std::string& site) {
  if (layer < 0 || layer >= m.config().n_layer)
    usage_error("--layer ", layer, " is outside [0, ", m.config().n_layer, ") (the model has ", m.config().n_layer, " blocks)");
  return parse_site(site);
}

}  // namespace msae::lm
