// Shared pieces of the language-model commands (harvest, eval --model, absorption): loading the model and
// its tokenizer, reading text files into fixed-length contexts, and splicing an SAE at a hook.
#pragma once

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "msae/lm.h"
#include "msae/model.h"
#include "msae/sae_dir.h"

namespace msae::cli {

// The tokenizer of `model_dir`: its own files (encoder.json + vocab.bpe, or vocab.json + merges.txt) when
// present, else `tokenizer_dir` (default models/gpt2-tokenizer, relative to the working directory, then to
// the source tree msae was built from).
lm::Tokenizer load_tokenizer(const std::string& model_dir, const std::string& tokenizer_dir);

// Token stream of several text files: each file's ids followed by <|endoftext|>, with, per token, the
// file index and the byte offset in that file (-1 for the separators).
struct TokenStream {
  std::vector<int32_t> ids;
  std::vector<int32_t> file;
  std::vector<int64_t> offset;
};
// Stops reading further files once the stream holds at least max_tokens tokens (0 = read all).
TokenStream tokenize_files(const lm::Tokenizer& tok, const std::vector<std::string>& files, int64_t max_tokens = 0);

// Non-overlapping contexts of T tokens: with bos, each is <|endoftext|> followed by T-1 stream tokens
// (as SAELens / TransformerLens prepend BOS); the last partial window is dropped. At most max_contexts
// (0 = all). Rows are sequence-major: row n*T + t.
struct Contexts {
  int64_t N = 0, T = 0;
  bool bos = true;
  std::vector<int32_t> ids;     // (N*T)
  std::vector<int32_t> file;    // (N*T), -1 for BOS and separators
  std::vector<int64_t> offset;  // (N*T), -1 for BOS and separators
};
Contexts make_contexts(const TokenStream& s, int64_t T, bool bos, int64_t max_contexts, int32_t bos_id);

// Parses "L" and a site name, checking L against the model.
lm::Site checked_site(const lm::Model& m, int64_t layer, const std::string& site);

// The input scale an SAE directory declares (msae.json "data_normalization": the SAE sees x * scale);
// 1 when absent.
float sae_input_scale(const saedir::SaeDirectory& sae);

// Replaces x (R, d) by the SAE's reconstruction using latents [0, limit) (a Matryoshka prefix), with
// the SAE's input scale applied on the way in and undone on the way out. Rows with keep_row[r] == 0 are
// left untouched (e.g. BOS positions). If stats is given, accumulates squared error, and L0.
struct SpliceStats {
  double sse = 0, l0 = 0;
  int64_t rows = 0;
};
void splice_sae(const saedir::SaeDirectory& sae, float scale, int64_t limit, float* x, int64_t R,
                const std::vector<uint8_t>* keep_row, SpliceStats* stats);

// Matryoshka prefixes m_1 < ... < m_G = D of an SAE directory (one entry for a plain SAE).
std::vector<int64_t> sae_prefixes(const saedir::SaeDirectory& sae);

}  // namespace msae::cli

namespace msae::cli {
// Streams a C-order .npy (version 1.0) of a known shape: the header first, then raw little-endian rows.
// descr: "<f4", "<f2", "<i4" or "<i8" (header: io::npy_header_bytes). Written to path (the caller writes into a temporary directory).
class NpyWriter {
 public:
  NpyWriter(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape);
  ~NpyWriter();
  void write(const void* data, size_t bytes);
  void close();  // checks that exactly the promised bytes were written
 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  int64_t expected_ = 0, written_ = 0;
};
}  // namespace msae::cli
