// msae lm: a language model in the loop (docs/lm.md). The GPT-2 byte-level BPE tokenizer, text files cut
// into fixed-length contexts, a GPT-2 forward pass with read/write hooks, next-token losses, splicing an
// SAE directory's reconstruction into a hook, and the pieces of the first-letter absorption metric
// (logistic-regression probes, the SAEBench absorption rules).
// lm depends on kernels, io, model and saedir (the SAE it splices is a saedir::SaeDirectory).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "msae/core.h"
#include "msae/sae_dir.h"

namespace msae::lm {

// ---------------------------------------------------------------------------------------------
// Tokenizer: GPT-2's byte-level BPE (encoder.json + vocab.bpe, as in openai/gpt-2's encoder.py).
// Pre-tokenization follows GPT-2's regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// with \p{L}/\p{N} from the Unicode tables in src/lm/unicode_tables.inc and \s = the Unicode
// White_Space property. Text is UTF-8; a byte that is not part of valid UTF-8 is its own "symbol"
// character, so every input encodes and decode(encode(s)) == s for every byte string s.
// "<|endoftext|>" in text is ordinary text (as in encoder.py); use eot() to insert the special token.
// Thread-safe: encode/decode are const and keep no shared cache.
// ---------------------------------------------------------------------------------------------
class Tokenizer {
 public:
  // Reads DIR/encoder.json and DIR/vocab.bpe (or HF's names for the same files, vocab.json and
  // merges.txt). Throws msae::Error naming the file.
  static Tokenizer load(const std::string& dir);
  static Tokenizer load(const std::string& encoder_json, const std::string& vocab_bpe);

  // Token ids of `text`. If byte_offsets is given, it receives, per token, the byte offset in `text`
  // of the token's first byte (tokens may begin inside a multi-byte character).
  std::vector<int32_t> encode(std::string_view text, std::vector<int64_t>* byte_offsets = nullptr) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  // The raw bytes of one token (throws usage error if out of range).
  const std::string& token_bytes(int32_t id) const;
  int32_t vocab_size() const { return static_cast<int32_t>(bytes_.size()); }
  int32_t eot() const { return eot_; }  // "<|endoftext|>" (50256 in GPT-2)

 private:
  std::vector<std::string> bytes_;                        // (V) raw bytes of each token
  std::unordered_map<std::string, int32_t> ids_;          // byte-encoded token string -> id
  std::unordered_map<std::string, int32_t> merge_rank_;   // "a b" (byte-encoded symbols) -> rank
  int32_t eot_ = -1;
  void bpe(const std::string& piece, std::vector<int32_t>& out, std::vector<int64_t>* offsets,
           int64_t base) const;
};

// ---------------------------------------------------------------------------------------------
// GPT-2 model (HF transformers' GPT2LMHeadModel, modeling_gpt2.py): learned token + position
// embeddings; n_layer pre-LayerNorm blocks x += attn(ln_1(x)); x += mlp(ln_2(x)); causal multi-head
// attention scaled by 1/sqrt(head_dim); MLP width 4*n_embd with the tanh GELU ("gelu_new"); ln_f;
// logits = h @ wte^T (tied) unless the file has its own lm_head.weight. Linear weights are HF Conv1D
// layout (in, out): y = x @ W + b; c_attn's columns are [q | k | v].
// ---------------------------------------------------------------------------------------------
struct ModelConfig {
  int64_t vocab_size = 50257;
  int64_t n_positions = 1024;
  int64_t n_embd = 768;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  float layer_norm_epsilon = 1e-5f;
};

// The hook sites of block L: resid_pre = the block's input, attn_out = the attention branch's output
// (after c_proj), mlp_out = the MLP branch's output, resid_post = the block's output (= resid_pre of L+1).
enum class Site { resid_pre, attn_out, mlp_out, resid_post };
Site parse_site(const std::string& name);  // usage error listing the names if unknown
const char* site_name(Site s);

// A hook sees the activations of every token at (layer, site) as a (R, d) row-major matrix, R = N*T
// (sequence-major: row n*T + t), and may modify them in place (write = splice). Called once per forward.
struct Hook {
  int64_t layer = 0;
  Site site = Site::resid_pre;
  std::function<void(float* x /*(R, d)*/, int64_t R)> fn;
};

class Model {
 public:
  // Loads DIR/config.json and DIR/model.safetensors (F32, F16 or BF16; converted to float32). Tensor
  // names as in an HF `gpt2` checkpoint, with or without a "transformer." prefix; the causal-mask
  // buffers (attn.bias, attn.masked_bias) are ignored. Throws msae::Error naming the file and tensor.
  static Model load(const std::string& dir);
  // From named tensors (the same names and shapes), for tests.
  static Model from_tensors(const ModelConfig& cfg, std::map<std::string, Tensor> tensors,
                            const std::string& source = "tensors");

  const ModelConfig& config() const { return cfg_; }
  int64_t d_model() const { return cfg_.n_embd; }

  // Runs ids (N, T) (T <= n_positions, every id < vocab_size, else usage error) through blocks
  // 0..last_layer (last_layer < 0: all), calling the hooks of those blocks in order. Returns the
  // residual stream after the last block run; when all blocks ran and final_ln, after ln_f: (N*T, d).
  // Multithreaded on msae's pool (GEMMs via kernels::sgemm).
  Tensor run(const int32_t* ids, int64_t N, int64_t T, const std::vector<Hook>& hooks = {},
             int64_t last_layer = -1, bool final_ln = true) const;
  // logits (R, V) = hidden (R, d) @ unembed^T.
  void logits(const float* hidden /*(R, d)*/, int64_t R, float* out /*(R, V)*/) const;
  // Next-token cross-entropy (natural log) of every position but the last: (N, T-1), row n holds
  // -log p(ids[n, t+1] | ids[n, :t+1]). Computed by token_cross_entropy (below) without forming the
  // logits; reference = true uses token_cross_entropy_reference (tests, timing).
  std::vector<float> next_token_losses(const int32_t* ids, int64_t N, int64_t T,
                                       const std::vector<Hook>& hooks = {}, bool reference = false) const;
  // The unembedding (V, d): lm_head.weight if the file has one, else wte.
  const Tensor& unembedding() const { return unembed(); }
  // Logits (N*T, V) of the whole model (tests).
  Tensor forward_logits(const int32_t* ids, int64_t N, int64_t T, const std::vector<Hook>& hooks = {}) const;

 private:
  struct Block {
    Tensor ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, mlp_proj_w, mlp_proj_b;
  };
  ModelConfig cfg_;
  Tensor wte_, wpe_, lnf_w_, lnf_b_, lm_head_;  // lm_head_ empty when tied to wte_
  std::vector<Block> blocks_;
  const Tensor& unembed() const { return lm_head_.numel() ? lm_head_ : wte_; }
};

// Cross-entropy of targets under logits = hidden @ unembed^T, per row (natural log):
//   loss[r] = logsumexp_v(<hidden[r], unembed[v]>) - <hidden[r], unembed[targets[r]]>.
// Fast path: the vocabulary is walked in blocks of 256 columns; each (256 rows, 256) tile of logits comes
// from kernels::sgemm and is folded into an online max and sum of exp per row (rescaled when the max
// grows), so the (R, V) logits are never stored (memory O(threads * 256 KiB)). Work is split over row
// blocks, and over vocabulary ranges as well when there are fewer row blocks than threads, on msae's
// pool. exp is a vectorized float polynomial (Cephes expf), tiles are summed in float and tiles combined
// in double: the result equals the reference to float round-off (test_lm: 2e-5 on V = 50257).
// targets outside [0, V) are a usage error.
void token_cross_entropy(const float* hidden /*(R, d)*/, int64_t R, int64_t d, const float* unembed /*(V, d)*/,
                         int64_t V, const int32_t* targets /*(R)*/, float* loss /*(R)*/);
// Reference (the implementation before the fast path): the full logits of blocks of 256 rows, then a
// log-softmax per row with std::exp and sums in double.
void token_cross_entropy_reference(const float* hidden /*(R, d)*/, int64_t R, int64_t d,
                                   const float* unembed /*(V, d)*/, int64_t V, const int32_t* targets /*(R)*/,
                                   float* loss /*(R)*/);

// Reads DIR/config.json (GPT-2 fields; n_ctx accepted for n_positions). Errors name the file and field.
ModelConfig read_model_config(const std::string& path);

// ---------------------------------------------------------------------------------------------
// Probes (the first-letter absorption metric, docs/lm.md).
// ---------------------------------------------------------------------------------------------
// Binary logistic regression as scikit-learn's LogisticRegression(C, class_weight="balanced"): minimizes
// 0.5*|w|^2 + C * sum_i s_i * logloss_i (intercept not penalized; s_i = n / (2 * n_class(y_i)) when
// balanced, else 1), solved by Newton's method to convergence. For small d (the k-sparse probes, d <= 64).
struct LogisticProbe {
  std::vector<float> w;  // (d)
  float b = 0.0f;
  float score(const float* x) const;  // w.x + b
};
LogisticProbe train_logistic(const float* X /*(n, d)*/, const uint8_t* y /*(n)*/, int64_t n, int64_t d,
                             double C = 1.0, bool balanced = true);

// One-vs-rest multi-probe as SAEBench's train_multi_probe: C independent logistic outputs trained together
// with minibatch Adam on the mean BCE-with-logits over (batch, C), pos_weight_c = n_neg_c / n_pos_c,
// Adam weight_decay (L2 added to the gradient), an optional L1 term l1 * mean_c |W_c|_1, and the learning
// rate decayed exponentially per epoch from lr to end_lr. Deterministic for a given seed.
struct MultiProbeOptions {
  int epochs = 50;
  int64_t batch = 64;
  float lr = 1e-2f, end_lr = 1e-5f;
  float weight_decay = 1e-4f;
  float l1 = 0.0f;
  uint64_t seed = 42;
};
struct MultiProbe {
  int64_t C = 0, d = 0;
  std::vector<float> W;  // (C, d)
  std::vector<float> b;  // (C)
  float score(int64_t c, const float* x) const;
};
// labels (n) in [0, C): row i is a positive for class labels[i] and a negative for every other class.
MultiProbe train_multi_probe(const float* X /*(n, d)*/, int64_t n, int64_t d, const int32_t* labels, int64_t C,
                             const MultiProbeOptions& opt);
// The same on sparse rows (CSR with cols = d), e.g. SAE codes.
struct SparseRows {
  int64_t rows = 0, cols = 0;
  std::vector<int64_t> row_ptr;  // (rows + 1)
  std::vector<int32_t> ids;      // (nnz)
  std::vector<float> vals;       // (nnz)
};
MultiProbe train_multi_probe(const SparseRows& X, const int32_t* labels, int64_t C, const MultiProbeOptions& opt);

// ---------------------------------------------------------------------------------------------
// First-letter absorption for one word (SAEBench's FeatureAbsorptionCalculator, docs/lm.md). Inputs: the
// word's SAE codes (latent ids and positive values), cos (D) = cosine of each decoder row with the letter's
// probe direction, probe_proj = <x, unit probe direction> of the word's activation, and the letter's main
// latents (the k-sparse probe's feature split).
//  - absorption fraction: 0 if the main latents' projection sum_i z_i cos_i >= probe_proj, or if the top
//    `max_absorbers` other latents with cos >= fraction_cos and positive projection carry less than
//    `proj_proportion` of probe_proj; else 1 if the main latents' projection <= 0; else
//    min(A, probe_proj - main) / (min(A, probe_proj - main) + main), clipped to [0, 1], A = those latents' sum.
//  - full absorption: every main latent is 0 (< 1e-8), the latent with the largest projection has
//    cos >= full_cos, probe_proj >= 0, and that latent's projection is >= proj_proportion * probe_proj.
// ---------------------------------------------------------------------------------------------
struct AbsorptionThresholds {
  float full_cos = 0.025f;       // full_absorption_probe_cos_sim_threshold
  float fraction_cos = 0.1f;     // absorption_fraction_probe_cos_sim_threshold
  float proj_proportion = 0.4f;  // probe_projection_proportion_threshold
  int max_absorbers = 3;         // absorption_fraction_max_absorbing_latents
};
struct WordAbsorption {
  double fraction = 0.0;
  bool full = false;
};
WordAbsorption word_absorption(const int32_t* ids, const float* vals, int64_t nnz, const float* cos, float probe_proj,
                               const std::vector<int32_t>& main_latents, const AbsorptionThresholds& th = {});

// ---------------------------------------------------------------------------------------------
// Text into model inputs (msae harvest, eval --model, absorption). Errors are msae::usage_error naming the
// CLI flag the value comes from (--text, --ctx, --layer, --tokenizer).
// ---------------------------------------------------------------------------------------------
// The tokenizer of `model_dir`: its own files (encoder.json + vocab.bpe, or vocab.json + merges.txt) when
// present, else `tokenizer_dir` when not empty, else models/gpt2-tokenizer relative to the working
// directory, then to the source tree msae was built from.
Tokenizer load_tokenizer(const std::string& model_dir, const std::string& tokenizer_dir);

// Token stream of several text files: each file's ids followed by <|endoftext|>, with, per token, the
// file index and the byte offset in that file (-1 for the separators).
struct TokenStream {
  std::vector<int32_t> ids;     // (S)
  std::vector<int32_t> file;    // (S)
  std::vector<int64_t> offset;  // (S)
};
// Reads the files in order (at least one) and stops reading further files once the stream holds at least
// max_tokens tokens (0 = read all); the last file read is taken whole.
TokenStream tokenize_files(const Tokenizer& tok, const std::vector<std::string>& files, int64_t max_tokens = 0);

// Non-overlapping contexts of T tokens (T >= 2): with bos, each is bos_id followed by the next T-1 stream
// tokens (as SAELens / TransformerLens prepend BOS), without, T stream tokens; the last partial window is
// dropped. At most max_contexts (0 = all); a stream too short for one context is a usage error. Rows are
// sequence-major: row n*T + t.
struct Contexts {
  int64_t N = 0, T = 0;
  bool bos = true;
  std::vector<int32_t> ids;     // (N*T)
  std::vector<int32_t> file;    // (N*T), -1 for BOS and separators
  std::vector<int64_t> offset;  // (N*T), -1 for BOS and separators
};
Contexts make_contexts(const TokenStream& s, int64_t T, bool bos, int64_t max_contexts, int32_t bos_id);

// The site `site` of block `layer`, checked against the model (usage errors for an unknown name or a
// layer outside [0, n_layer)).
Site checked_site(const Model& m, int64_t layer, const std::string& site);

// ---------------------------------------------------------------------------------------------
// An SAE spliced into a hook.
// ---------------------------------------------------------------------------------------------
// The input scale an SAE directory declares (msae.json "data_normalization.scale": the SAE sees x * scale);
// 1 when absent. A scale that is not a positive number within float range is a runtime error.
float sae_input_scale(const saedir::SaeDirectory& sae);

// Replaces x (R, d) by the SAE's reconstruction using latents [0, limit) (a Matryoshka prefix), with
// the SAE's input scale applied on the way in and undone on the way out. Rows with keep_row[r] == 0 are
// left untouched (e.g. BOS positions); keep_row == nullptr splices every row. If stats is given, adds the
// squared error of the spliced rows (in x's units), their active latents and their number to it.
// Multithreaded on msae's pool (encode_inference); allocates (2 R d floats and the codes).
struct SpliceStats {
  double sse = 0, l0 = 0;
  int64_t rows = 0;
};
void splice_sae(const saedir::SaeDirectory& sae, float scale, int64_t limit, float* x /*(R, d)*/, int64_t R,
                const std::vector<uint8_t>* keep_row /*(>= R) or nullptr*/, SpliceStats* stats);

// Matryoshka prefixes m_1 < ... < m_G = D of an SAE directory (one entry for a plain SAE).
std::vector<int64_t> sae_prefixes(const saedir::SaeDirectory& sae);

}  // namespace msae::lm
