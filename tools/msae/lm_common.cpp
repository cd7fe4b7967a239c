#include "lm_common.h"

#include <cerrno>
#include <cmath>
#include <cstring>

#include "msae/io.h"

#ifndef MSAE_SOURCE_DIR_FOR_MODELS
#define MSAE_SOURCE_DIR_FOR_MODELS "."
#endif

namespace msae::cli {

lm::Tokenizer load_tokenizer(const std::string& model_dir, const std::string& tokenizer_dir) {
  auto has = [](const std::string& d) {
    return io::path_exists(d + "/encoder.json") || (io::path_exists(d + "/vocab.json") && io::path_exists(d + "/merges.txt"));
  };
  if (!model_dir.empty() && has(model_dir)) return lm::Tokenizer::load(model_dir);
  if (!tokenizer_dir.empty()) return lm::Tokenizer::load(tokenizer_dir);
  for (const std::string& d : {std::string("models/gpt2-tokenizer"), std::string(MSAE_SOURCE_DIR_FOR_MODELS) + "/models/gpt2-tokenizer"})
    if (has(d)) return lm::Tokenizer::load(d);
  usage_error("no tokenizer: ", model_dir, " has no encoder.json/vocab.bpe and models/gpt2-tokenizer was not found; "
              "pass --tokenizer DIR");
}

TokenStream tokenize_files(const lm::Tokenizer& tok, const std::vector<std::string>& files, int64_t max_tokens) {
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

lm::Site checked_site(const lm::Model& m, int64_t layer, const std::string& site) {
  if (layer < 0 || layer >= m.config().n_layer)
    usage_error("--layer ", layer, " is outside [0, ", m.config().n_layer, ") (the model has ", m.config().n_layer, " blocks)");
  return lm::parse_site(site);
}

float sae_input_scale(const saedir::SaeDirectory& sae) {
  const auto& j = sae.msae_json;
  if (j.is_object() && j.contains("data_normalization") && j["data_normalization"].is_object()) {
    const auto& n = j["data_normalization"];
    if (n.contains("scale") && n["scale"].is_number()) {
      const float s = n["scale"].get<float>();
      if (!(s > 0) || !std::isfinite(s)) runtime_error("msae.json: data_normalization.scale must be positive, found ", s);
      return s;
    }
  }
  return 1.0f;
}

void splice_sae(const saedir::SaeDirectory& sae, float scale, int64_t limit, float* x, int64_t R,
                const std::vector<uint8_t>* keep_row, SpliceStats* stats) {
  const int64_t d = sae.params.d;
  std::vector<int64_t> rows;
  rows.reserve(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r)
    if (!keep_row || (*keep_row)[static_cast<size_t>(r)]) rows.push_back(r);
  const int64_t B = static_cast<int64_t>(rows.size());
  if (B == 0) return;
  Tensor in({B, d}), out({B, d});
  for (int64_t i = 0; i < B; ++i)
    for (int64_t j = 0; j < d; ++j) in.data[i * d + j] = x[rows[i] * d + j] * scale;
  const kernels::SparseCodes z = encode_inference(sae.sae, sae.params, in.ptr(), B, limit);
  decode(sae.params, z, out.ptr());
  for (int64_t i = 0; i < B; ++i) {
    float* xr = x + rows[i] * d;
    for (int64_t j = 0; j < d; ++j) {
      const float rec = out.data[i * d + j] / scale;
      if (stats) stats->sse += static_cast<double>(rec - xr[j]) * (rec - xr[j]);
      xr[j] = rec;
    }
  }
  if (stats) {
    stats->l0 += static_cast<double>(z.nnz());
    stats->rows += B;
  }
}

std::vector<int64_t> sae_prefixes(const saedir::SaeDirectory& sae) { return sae.sae.boundaries(); }

}  // namespace msae::cli

namespace msae::cli {

NpyWriter::NpyWriter(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape)
    : path_(path) {
  const std::string prefix = io::npy_header_bytes(descr, shape);
  f_ = std::fopen(path.c_str(), "wb");
  if (!f_) runtime_error(path, ": cannot create (", std::strerror(errno), ")");
  write(prefix.data(), prefix.size());
  written_ = 0;
  const int64_t item = descr == "<i8" ? 8 : (descr == "<f4" || descr == "<i4" ? 4 : 2);
  expected_ = item;
  for (int64_t s : shape) expected_ *= s;
}

NpyWriter::~NpyWriter() {
  if (f_) std::fclose(f_);
}

void NpyWriter::write(const void* data, size_t bytes) {
  if (bytes && std::fwrite(data, 1, bytes, f_) != bytes) runtime_error(path_, ": write failed (disk full?)");
  written_ += static_cast<int64_t>(bytes);
}

void NpyWriter::close() {
  MSAE_ASSERT(written_ == expected_, "npy writer: wrote ", written_, " bytes, promised ", expected_);
  if (std::fclose(f_) != 0) {
    f_ = nullptr;
    runtime_error(path_, ": write failed on close");
  }
  f_ = nullptr;
}

}  // namespace msae::cli
