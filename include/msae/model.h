// msae model: SAE configuration and validation, parameters and initialization, and the training-step
// engines (forward + loss + backward of SPEC.md). The update (clip, decoder constraint, Adam) lives in
// train; inference encoding lives here.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "msae/core.h"
#include "msae/kernels.h"

namespace msae {

// matryoshka: BatchTopK selection, nested groups (default D/16, D/16, D/8, D/4, D/2).
// batchtopk:  BatchTopK selection, one group.
// topk:       per-row TopK selection, one group unless --group-sizes is given (a Matryoshka TopK).
enum class Arch { matryoshka, batchtopk, topk };
const char* arch_name(Arch a);
Arch parse_arch(const std::string& name);  // throws usage error listing the valid names

struct SaeConfig {
  Arch arch = Arch::matryoshka;
  int64_t d_in = 0;                  // d
  int64_t d_sae = 0;                 // D
  int64_t k = 32;                    // mean active latents per row
  std::vector<int64_t> group_sizes;  // (G), each > 0, sum = D; empty = the arch's default
  bool encoder_bias = false;         // add and train b_enc (SPEC: off by default)
  int64_t dead_after_batches = 20;   // a latent is dead when n_inactive >= this
  int64_t aux_k = 512;               // AuxK: top min(aux_k, n_dead) dead latents per row
  float aux_coef = 1.0f / 32.0f;     // AuxK loss coefficient

  // Fills group_sizes with the arch's default when empty, then checks everything; throws a usage error
  // that names the flag on any inconsistency.
  void finalize();
  // m_1 < m_2 < ... < m_G = D (cumulative group sizes). Requires finalize().
  std::vector<int64_t> boundaries() const;
  int64_t num_groups() const { return static_cast<int64_t>(group_sizes.size()); }
};

// The default Matryoshka group sizes for D: [D/16, D/16, D/8, D/4, D/2] with the remainder of integer
// division added to the last group. Requires D >= 16.
std::vector<int64_t> default_group_sizes(int64_t D);

// How inference encoding (encode_inference) turns pre-activations into codes. The default is the msae
// rule of SPEC "Inference" (JumpReLU at the one global SaeParams::threshold, x centred by b_dec). SAEs
// imported from other trainers (train::read_sae_dir: SAELens jumprelu/standard/topk, EleutherAI sparsify)
// carry their own trainer's rule; the training engines ignore this struct.
struct EncodeRule {
  enum class Kind { jumprelu, topk };
  Kind kind = Kind::jumprelu;
  // jumprelu: per-latent thresholds (D) (SAELens JumpReLU: relu(pre) * (pre > threshold_i)); empty means
  // SaeParams::threshold for every latent. A SAELens "standard" (ReLU) SAE is jumprelu with all zeros.
  std::vector<float> thresholds;
  int64_t k = 0;              // topk: the k largest positive pre-activations of each row are kept
  bool center_input = true;   // subtract b_dec from x before the encoder (SAELens apply_b_dec_to_input)
  bool is_default() const { return kind == Kind::jumprelu && thresholds.empty() && center_input; }
};

// All parameters, float32. W_enc is stored transposed, (D, d), so every per-latent quantity (encoder
// row, decoder row, their gradients and Adam moments) is one contiguous row. Exported as W_enc (d, D).
struct SaeParams {
  int64_t d = 0, D = 0;
  Tensor W_enc_t;  // (D, d) = W_enc^T
  Tensor b_enc;    // (D)
  Tensor W_dec;    // (D, d), rows unit-norm after each update's decoder constraint
  Tensor b_dec;    // (d)
  float threshold = 0.0f;  // inference JumpReLU threshold (EMA of the BatchTopK cut); not a gradient parameter
  EncodeRule rule;         // inference rule; the default unless imported from another trainer

  static SaeParams zeros(int64_t d, int64_t D);
  // SPEC init: W_enc ~ U(-sqrt(6/D), sqrt(6/D)), W_dec = W_enc^T with unit-norm rows, biases 0, threshold 0.
  static SaeParams init(int64_t d, int64_t D, uint64_t seed);
};

// Gradients, same shapes as the trained parameters.
struct SaeGrads {
  Tensor W_enc_t;  // (D, d)
  Tensor b_enc;    // (D), stays zero unless encoder_bias
  Tensor W_dec;    // (D, d)
  Tensor b_dec;    // (d)
  static SaeGrads zeros(int64_t d, int64_t D);
};

// Training-only state carried across steps besides the optimizer.
struct LatentState {
  std::vector<int64_t> n_inactive;  // (D) consecutive batches without a positive entry in z
};

// What one step computed (all means over the B*d elements of the batch, as in SPEC.md).
struct StepStats {
  double loss = 0;                    // L = L_rec + L_aux
  double l_rec = 0;                   // (mse(b_dec) + sum_g mse(r_g)) / (G + 1)
  double l_aux = 0;
  double mse_bdec = 0;                // mse of b_dec alone
  std::vector<double> mse_prefix;     // (G) mse(r_g)
  double var_x = 0;                   // mean over columns of the batch variance of x (for FVU)
  double l0 = 0;                      // mean kept latents per row
  int64_t n_dead = 0;                 // latents with n_inactive >= dead_after_batches (after this batch's update)
  bool aux_active = false;
};

// One training step's forward + loss + backward, exactly SPEC.md, in its order:
// encode, select, threshold EMA update (params.threshold), dead-counter update (state), loss, backward.
// `grads` is overwritten. `x` is (B, d). Implementations: the dense reference (plain, follows the
// published PyTorch code's structure) and the sparse fast engine.
class StepEngine {
 public:
  virtual ~StepEngine() = default;
  virtual const char* name() const = 0;
  virtual StepStats forward_backward(const SaeConfig& cfg, const float* x, int64_t B, SaeParams& params,
                                     LatentState& state, SaeGrads& grads) = 0;
  // Seconds spent in each phase of the last forward_backward, for `msae bench` (empty if not measured).
  virtual std::vector<std::pair<std::string, double>> last_phase_seconds() const { return {}; }
};
std::unique_ptr<StepEngine> make_reference_engine();
// The fast engine (src/model/step_sparse.cpp): one dense GEMM, everything else sparse; same results as
// the reference to float32 round-off. Reuses its buffers across calls (no allocation after the first step).
std::unique_ptr<StepEngine> make_sparse_engine();

// Inference encoding (SPEC "Inference"): z = acts * (acts > threshold) for latents < limit (a Matryoshka
// prefix; limit = D for the whole SAE), acts = relu((x - b_dec) @ W_enc (+ b_enc when used)).
// params.rule generalizes this for imported SAEs: per-latent thresholds, per-row TopK over all D latents
// (then restricted to ids < limit), and x used uncentred when !center_input.
// Processes x (B, d) in chunks internally; returns CSR codes.
kernels::SparseCodes encode_inference(const SaeConfig& cfg, const SaeParams& params, const float* x, int64_t B,
                                      int64_t limit);
// r = b_dec + z @ W_dec, r (B, d).
void decode(const SaeParams& params, const kernels::SparseCodes& z, float* r);

}  // namespace msae
