// msae model: SAE configuration and validation, parameters and initialization, and the training-step
// engines (forward + loss + backward of SPEC.md). The update (clip, decoder constraint, Adam) lives in
// train; inference encoding lives here.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "msae/comm.h"
#include "msae/core.h"
#include "msae/kernels.h"

namespace msae {

// matryoshka: BatchTopK selection, nested groups (default D/16, D/16, D/8, D/4, D/2).
// batchtopk:  BatchTopK selection, one group.
// topk:       per-row TopK selection, one group unless --group-sizes is given (a Matryoshka TopK).
// relu_l1:    no TopK: z = relu(pre + b_enc) with an L1 penalty whose coefficient adapts so that the mean
//             L0 approaches k (Nabeshima's baseline, docs/variants.md); nested groups like matryoshka.
//             Reference engine only. Inference is the SPEC JumpReLU with threshold 0 (= ReLU).
enum class Arch { matryoshka, batchtopk, topk, relu_l1 };
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

  // ---- Variants and ablation switches (docs/variants.md). The defaults reproduce SPEC.md exactly.
  std::string recipe = "bussmann";    // the --recipe that set the defaults below (metadata only)
  // Loss: L_rec = (t * mse(b_dec) + sum_g w_g mse(r_g)) / (G + t), t = bdec_loss_term ? 1 : 0.
  std::vector<float> prefix_weights;  // (G) w_g, each >= 0; empty = all 1 (SPEC)
  bool bdec_loss_term = true;         // the b_dec-only term of L_rec (SPEC: on)
  // Stop-gradient between groups: r_g = b_dec + sg(z_{<g} W_dec_{<g}) + z_g W_dec_g, so a latent of group g
  // is trained by prefix loss g only (and AuxK when g = G); b_dec still gets every term.
  bool stop_gradient_groups = false;
  // AuxK residual detached (dictionary_learning, SAELens): e = sg(x - r_G), so AuxK trains only the dead
  // latents and does not push on the main reconstruction (SPEC: not detached).
  bool aux_detach = false;
  // Per-group selection: group g keeps k_g * B entries of its own latents (BatchTopK archs) or k_g per
  // row (topk). (G), each in 1..s_g; empty = the global selection of SPEC with k. The threshold EMA
  // follows the smallest kept value over all groups.
  std::vector<int64_t> group_k;
  // Sampled prefixes (Nabeshima): each batch draws sampled_prefixes - 1 distinct prefix lengths in
  // [min_prefix, D-1] plus D, and uses them as that batch's group boundaries (group_sizes is then only
  // the export/eval default). 0 = off. Distribution: "pareto" (P(len <= l) = ((l-min+1)/(D-min))^pareto_power,
  // heavy towards short prefixes) or "uniform".
  int64_t sampled_prefixes = 0;
  std::string prefix_distribution = "pareto";
  float pareto_power = 0.5f;
  int64_t min_prefix = 1;
  // Latent reordering: every reorder_every steps (0 = never), permute latents by descending running mean
  // (EMA with reorder_decay) of the batch mean of z^2, with every per-latent tensor, Adam moment and counter.
  // Threshold EMA schedule: threshold = (1 - rate) threshold + rate * cut, from step threshold_start_step
  // on (dictionary_learning: rate 0.001, start 1000). SPEC: rate 0.01 from the first step.
  float threshold_rate = 0.01f;
  int64_t threshold_start_step = 0;
  int64_t reorder_every = 0;
  float reorder_decay = 0.95f;
  // relu_l1: initial L1 coefficient, multiplicative adaptation rate per step, linear warm-up in steps.
  float l1_coef = 1.2f;
  float l1_adapt_rate = 3e-4f;
  int64_t l1_warmup_steps = 0;

  // Fills group_sizes with the arch's default when empty, then checks everything; throws a usage error
  // that names the flag on any inconsistency.
  void finalize();
  void finalize_variants();  // the variant/switch part of finalize()
  // m_1 < m_2 < ... < m_G = D (cumulative group sizes). Requires finalize().
  std::vector<int64_t> boundaries() const;
  int64_t num_groups() const { return static_cast<int64_t>(group_sizes.size()); }
  // w_g (1 when prefix_weights is empty).
  float prefix_weight(int64_t g) const { return prefix_weights.empty() ? 1.0f : prefix_weights[g]; }
  // True when the config is exactly SPEC's loss and selection (no switch set).
  bool is_spec_loss() const;
};

// The default Matryoshka group sizes for D: [D/16, D/16, D/8, D/4, D/2] with the remainder of integer
// division added to the last group. Requires D >= 16.
std::vector<int64_t> default_group_sizes(int64_t D);

// How inference encoding (encode_inference) turns pre-activations into codes. The default is the msae
// rule of SPEC "Inference" (JumpReLU at the one global SaeParams::threshold, x centred by b_dec). SAEs
// imported from other trainers (saedir::read_sae_dir: SAELens jumprelu/standard/topk, EleutherAI sparsify)
// carry their own trainer's rule; the training engines ignore this struct.
struct EncodeRule {
  enum class Kind { jumprelu, topk };
  Kind kind = Kind::jumprelu;
  // jumprelu: per-latent thresholds (D) (SAELens JumpReLU: relu(pre) * (pre > threshold_i)); empty means
  // SaeParams::threshold for every latent. A SAELens "standard" (ReLU) SAE is jumprelu with all zeros.
  std::vector<float> thresholds;
  int64_t k = 0;              // topk: the k largest positive pre-activations of each row are kept
  bool center_input = true;   // subtract b_dec from x before the encoder (SAELens apply_b_dec_to_input)
  // SAELens TopKSAE rescale_acts_by_decoder_norm (sae_lens/saes/topk_sae.py, 6.18): the pre-activations are
  // multiplied by the decoder row norms n_i before the selection (the codes are those products), and the
  // codes are divided by n_i before decoding. Empty: no rescaling. Otherwise D norms, all > 0.
  std::vector<float> decoder_norm;
  bool is_default() const {
    return kind == Kind::jumprelu && thresholds.empty() && center_input && decoder_norm.empty();
  }
  // The coefficient latent i's code multiplies its decoder row with: v, or v / n_i when rescaling.
  float decode_value(int64_t i, float v) const {
    return decoder_norm.empty() ? v : v / decoder_norm[static_cast<size_t>(i)];
  }
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
  // encoder_norm > 0: then every encoder row rescaled to that norm (its direction, the decoder row's, kept;
  // SAELens initializes W_enc = W_dec^T with rows of norm 0.1).
  static SaeParams init(int64_t d, int64_t D, uint64_t seed, float encoder_norm = 0.0f);
};

// Gradients, same shapes as the trained parameters.
struct SaeGrads {
  Tensor W_enc_t;  // (D, d)
  Tensor b_enc;    // (D), stays zero unless encoder_bias
  Tensor W_dec;    // (D, d)
  Tensor b_dec;    // (d)
  // Sum of the squares of all four gradients when the engine computed it on the fly (the sparse engine
  // does, in its latent pass); negative: not known, train::apply_update computes it (and resets it to -1
  // after use, so a value can never outlive the gradients it was computed from).
  double sum_squares = -1.0;
  static SaeGrads zeros(int64_t d, int64_t D);
};

// Training-only state carried across steps besides the optimizer.
struct LatentState {
  std::vector<int64_t> n_inactive;  // (D) consecutive batches without a positive entry in z
  // Filled by the engines only when cfg.reorder_every > 0: (D) mean over the batch rows of z^2.
  std::vector<double> batch_sq_act;
  double l1_coef = 0.0;             // relu_l1: the coefficient in force for this step (set by the trainer)
  bool update_threshold = true;     // false before cfg.threshold_start_step (set by the trainer)
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
  double l_sparsity = 0;              // relu_l1: the L1 term (included in loss)

  // Back to the defaults, keeping mse_prefix's storage: the engines fill one StepStats per step
  // without allocating.
  void reset() {
    std::vector<double> keep = std::move(mse_prefix);
    *this = StepStats{};
    keep.clear();
    mse_prefix = std::move(keep);
  }
};

// One training step's forward + loss + backward, exactly SPEC.md, in its order:
// encode, select, threshold EMA update (params.threshold), dead-counter update (state), loss, backward.
// `grads` is overwritten. `x` is (B, d). Implementations: the dense reference (plain, follows the
// published PyTorch code's structure) and the sparse fast engine. These are the host building blocks of
// the training engines: train::HostEngine (engine.h) wraps one and takes the whole optimizer step; the
// engines are picked by name from train's registry (train::make_engine builds one of these kernels).
class StepEngine {
 public:
  virtual ~StepEngine() = default;
  virtual const char* name() const = 0;
  // The returned statistics live in the engine until its next call.
  virtual const StepStats& forward_backward(const SaeConfig& cfg, const float* x, int64_t B, SaeParams& params,
                                            LatentState& state, SaeGrads& grads) = 0;
  // Seconds spent in each phase of the last forward_backward, for `msae bench` (empty if not measured).
  virtual std::vector<std::pair<std::string, double>> last_phase_seconds() const { return {}; }
  // Counts of the last forward_backward for `msae bench` (e.g. the screened selection's candidates), and
  // the kernels in use beyond BLAS ("" if none).
  virtual std::vector<std::pair<std::string, double>> last_counters() const { return {}; }
  virtual std::string kernel_info() const { return {}; }
  // Empty when this engine implements every option of cfg; otherwise the options it does not implement
  // (the trainer turns that into a usage error naming the engine).
  virtual std::string unsupported(const SaeConfig& cfg) const {
    (void)cfg;
    return {};
  }
  // The last step's selected codes and AuxK codes (CSR over this engine's latents: a shard's local ids),
  // for tests that compare selections; nullptr when the engine does not keep them as CSR.
  virtual const kernels::SparseCodes* last_codes() const { return nullptr; }
  virtual const kernels::SparseCodes* last_aux_codes() const { return nullptr; }
};
std::unique_ptr<StepEngine> make_reference_engine();
// The fast engine (src/model/step_sparse.cpp): one dense GEMM, everything else sparse; same results as
// the reference to float32 round-off. Reuses its buffers across calls (no allocation after the first step).
struct SparseEngineOptions {
  // AuxK runs as dense GEMMs over the dead latents' columns when its entries fill at least this share of
  // the (B, n_dead) block, and as sparse products otherwise (docs/performance.md, "AuxK"). 0: always
  // dense; above 1: always sparse. Both give the same result to float32 round-off. 0.2 since session 9:
  // with prefetching sparse kernels the sparse path won at the bench's 17% on a Zen 1 EPYC (+16% against
  // +35%), and session 5 had the two level at 17% on Zen 3 with slower sparse kernels; at 31% the dense
  // path won on Zen 3 (session 5), the sparse one still on Zen 1 (+31% against +39%).
  double aux_dense_min_density = 0.2;
  // Screened BatchTopK (kernels::Screener, the "screened" engine): the global batch selection from an int8
  // GEMM with a proven error bound and an exact recompute of the candidates, instead of the fp32 GEMM of
  // every pre-activation. Selected values are kernels::exact_dot's. Per-group selection, TopK and
  // sharded runs use the fp32 path.
  bool screen = false;
};
std::unique_ptr<StepEngine> make_sparse_engine(SparseEngineOptions options = {});

// ---- Latent sharding (distributed training, docs/distributed.md). A process trains a shard of the latents:
// a contiguous share of every Matryoshka group, so that each prefix has local partial sums.
struct LatentShard {
  comm::Comm* comm = nullptr;       // the processes training the other shards
  int64_t d_sae = 0;                // D over all processes
  std::vector<int64_t> global_ids;  // (D_local) the global latent of each local one, ascending
};
// The shard of process `rank` of `ranks` for a finalized config: in each group g of size s_g (starting at
// m_{g-1}), the latents [m_{g-1} + s_g rank / ranks, m_{g-1} + s_g (rank + 1) / ranks). Every process gets
// at least one latent when ranks <= the smallest group. The caller sets comm.
LatentShard shard_latents(const SaeConfig& cfg, int rank, int ranks);
// The sparse engine on one shard: `params` passed to forward_backward hold the shard's latents only
// (D = D_local; b_dec and the threshold are whole and equal on every process), `cfg` is the whole SAE's.
// Every process calls forward_backward on the same batch; the selection, the reconstructions and b_dec's
// gradient are agreed through shard.comm (collectives), so the selected codes are those of one process and
// grads.sum_squares is the global sum. Implements what the sparse engine does except per-group selection
// and latent reordering (unsupported() names them).
std::unique_ptr<StepEngine> make_sparse_shard_engine(SparseEngineOptions options, LatentShard shard);

// Inference encoding (SPEC "Inference"): z = acts * (acts > threshold) for latents < limit (a Matryoshka
// prefix; limit = D for the whole SAE), acts = relu((x - b_dec) @ W_enc (+ b_enc when used)).
// params.rule generalizes this for imported SAEs: per-latent thresholds, per-row TopK over all D latents
// (then restricted to ids < limit), and x used uncentred when !center_input.
// Processes x (B, d) in chunks internally; returns CSR codes.
kernels::SparseCodes encode_inference(const SaeConfig& cfg, const SaeParams& params, const float* x, int64_t B,
                                      int64_t limit);
// r = b_dec + z @ W_dec, r (B, d) (each code through params.rule.decode_value).
void decode(const SaeParams& params, const kernels::SparseCodes& z, float* r);

// ---- Variant building blocks (src/model/variants.cpp), shared by both engines and the trainer.

// Per-group selection (cfg.group_k): for each group [m_{g-1}, m_g) of pre (B, D), keep k_g * B largest
// positive entries over the batch (row_topk = false) or the k_g largest per row (row_topk = true); ties as
// kernels::batch_topk / row_topk. Output CSR with ids ascending per row.
void select_per_group(const float* pre, int64_t B, int64_t D, const std::vector<int64_t>& bounds,
                      const std::vector<int64_t>& group_k, bool row_topk, kernels::SparseCodes& out);

// Sampled prefixes: the group sizes of one batch (cfg.sampled_prefixes > 0), drawn from rng.
std::vector<int64_t> sample_prefix_sizes(const SaeConfig& cfg, Rng& rng);

// The registry of named variants (docs/variants.md): each entry turns a SPEC config (arch matryoshka,
// d_in / d_sae / k set, groups not yet finalized) into the variant. Tests loop over it (construct, train,
// save, load, compare); `sparse` says whether the sparse engine implements it.
struct VariantEntry {
  const char* name;
  const char* description;
  void (*apply)(SaeConfig& cfg);
  bool sparse;
};
const std::vector<VariantEntry>& variant_registry();

// Latent reordering: new latent j is old latent perm[j]. Applies the permutation to the rows of a
// (D, cols) row-major array in place.
void permute_rows(float* a, int64_t D, int64_t cols, const std::vector<int64_t>& perm);
// Geometric median of the rows of x (B, d) by Weiszfeld iterations from the mean (dictionary_learning's
// b_dec init: at most max_iter iterations, stop when the guess moves less than tol).
std::vector<float> geometric_median(const float* x, int64_t B, int64_t d, int max_iter = 100, double tol = 1e-5);
// The permutation that sorts latents by descending score (ties: lower index first).
std::vector<int64_t> descending_order(const std::vector<double>& score);
// Permutes every per-latent tensor of params (W_enc^T rows, b_enc, W_dec rows; threshold and b_dec are
// per-SAE and stay).
void permute_latents(SaeParams& params, const std::vector<int64_t>& perm);

}  // namespace msae
