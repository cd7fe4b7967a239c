// msae saedir: the SAE directory format (docs/formats.md, docs/interop.md), on its own so that loading
// or writing an SAE does not depend on the trainer. An SAE directory is the SAELens layout (cfg.json +
// sae_weights.safetensors) plus msae.json (config, training record, final metrics) and, from a training
// run, metrics.jsonl. The reader also imports SAELens (jumprelu / standard / topk) and EleutherAI
// sparsify directories.
// saedir depends on model and io only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "msae/model.h"

namespace msae::saedir {

// The SAE config as recorded in msae.json ("config"): arch, d_in, d_sae, k, group sizes and boundaries,
// encoder_bias, dead_after_batches, aux_k, aux_coef and "variants" (below). read_sae_dir reads it back.
nlohmann::json config_json(const SaeConfig& cfg);
// The variant/switch part of it (config_json's "variants" object) and its inverse (absent keys keep
// the SPEC defaults; unknown values are runtime errors naming the key).
nlohmann::json variant_config_json(const SaeConfig& cfg);
void variant_config_from_json(const nlohmann::json& variants, SaeConfig& cfg);

// The NaN/Inf entries of one tensor of the weights file (named as in the file: W_enc, encoder.weight, ...).
struct NonFinite {
  std::string tensor;
  std::vector<int64_t> shape;
  int64_t count = 0;  // NaN and +-Inf entries
  int64_t first = 0;  // flat (row-major, as stored) index of the first one
};

struct SaeDirectory {
  SaeConfig sae;
  SaeParams params;
  nlohmann::json msae_json;  // {} when the directory has no msae.json (e.g. a plain SAELens SAE)
  // Where it came from (docs/interop.md): "msae", "saelens-jumprelu", "saelens-standard", "saelens-topk"
  // or "sparsify-topk". Imported SAEs carry their trainer's inference rule in params.rule.
  std::string format = "msae";
  // The activations it was trained on, when recorded (SAELens cfg.json fields, top level or "metadata"):
  // hook_name in TransformerLens spelling ("blocks.6.hook_resid_pre") and model_name; "" when not recorded.
  std::string hook_name;
  std::string model_name;
  // The tensors the SAE uses that hold NaN/Inf, in file order (empty unless read with allow_nonfinite).
  std::vector<NonFinite> nonfinite;
  // cfg.json as read ({} when absent): a conversion carries its metadata over (docs/interop.md).
  nlohmann::json source_cfg = nlohmann::json::object();
};

// "W_dec (32, 8): 3 non-finite values, the first at [4, 1] (flat index 33)"
std::string describe(const NonFinite& n);

// Writes the SAE directory files into `dir`, which must exist, each atomically: sae_weights.safetensors,
// cfg.json, then msae.json = msae_json plus "files" (the weights' size and CRC-32C, verified by
// read_sae_dir). Returns that "files" object. Atomic at the directory level is the caller's job (write to
// a temporary directory, then io::commit_directory); in place, a crash between the files leaves a
// directory that read_sae_dir refuses rather than one that loads as another SAE.
nlohmann::json write_sae_files(const std::string& dir, const SaeConfig& cfg, const SaeParams& params,
                               const nlohmann::json& msae_json);
// cfg.json's metadata takes model_name and hook_name from msae_json["hook"] when the run recorded one
// (an SAE trained on a harvest directory: run::train copies the harvest manifest's hook there).

// Reads an SAE directory (docs/interop.md), validating every shape and configuration field it uses:
//  - msae's own output (SAELens layout + msae.json, or cfg.json metadata written by msae): the msae rule;
//  - a SAELens directory from another trainer: cfg.json "architecture" jumprelu (tensor threshold (D)),
//    standard (ReLU; activation_fn "topk" with activation_fn_kwargs.k = a SAELens 5 TopK SAE) or topk
//    (cfg "k"), with apply_b_dec_to_input honoured; sae_weights.safetensors W_enc (d, D), W_dec (D, d),
//    b_enc (D), b_dec (d); F32/F16/BF16;
//  - an EleutherAI sparsify directory: cfg.json (d_in, k, num_latents or expansion_factor, activation
//    "topk") + sae.safetensors encoder.weight (D, d), encoder.bias (D), W_dec (D, d), b_dec (d).
// A directory holding such directories (sparsify's layers.N/, one per hookpoint) is refused with a list
// of them. Features the eval path cannot reproduce exactly (gated, per-row normalization, skip
// connections, transcoders, groupmax) are refused with msae::Error naming the field.
// Strict: every tensor the inference rule needs must be there (an msae directory's `threshold`, and `b_enc`
// when msae.json says the SAE has an encoder bias), the metadata must agree with itself and with the tensors
// (d_in, d_sae, k in [1, d_sae], group sizes summing to d_sae, cfg.json's metadata against msae.json), and
// every value of the tensors used must be finite: otherwise msae::Error (exit 1) naming the file and the
// tensor or key (for non-finite values: the tensor, how many, and the first index). allow_nonfinite = true
// (msae inspect) loads non-finite values and lists them in SaeDirectory::nonfinite instead.
SaeDirectory read_sae_dir(const std::string& dir, bool allow_nonfinite = false);

// The layouts msae writes (msae convert, docs/interop.md): msae's own (SAELens layout + msae.json), SAELens
// 6 (cfg.json + sae_weights.safetensors), EleutherAI sparsify (cfg.json + sae.safetensors).
enum class Layout { msae, saelens, sparsify };
Layout parse_layout(const std::string& name);  // "msae" / "saelens" / "sparsify"; usage error otherwise
const char* layout_name(Layout layout);
// "" when `sae` can be written in `to` so that that trainer's inference code computes the same codes (the
// same function, float32 values copied exactly); otherwise why not, with the layout that can hold it.
// SAELens's layout holds everything msae reads; sparsify's only centred per-row TopK without rescaling.
std::string why_not_exact(const SaeDirectory& sae, Layout to);
// Writes `sae` in `to` into the existing directory `dir`, each file atomically (F32 tensors). An SAE msae
// trained keeps its metadata and msae.json (rebuilt from cfg.json's metadata when it has none); an imported
// one is written in its own SAELens architecture (jumprelu, standard, topk with k and
// rescale_acts_by_decoder_norm), its source metadata kept, and for Layout::msae an msae.json without
// "config" (format, versions, source_format, `converted_from` when not null, files). Runtime error when
// why_not_exact says it cannot.
void write_sae_as(const std::string& dir, const SaeDirectory& sae, Layout to,
                  const nlohmann::json& converted_from = nullptr);
// msae convert: reads `from` (strictly, as read_sae_dir), refuses what `to` cannot hold exactly (runtime
// error naming the reason), and writes `out` through io::PendingOutput under its output lock: `out` is
// either untouched or the complete conversion. An existing `out` without `overwrite`, or `out` = `from`, is
// a usage error, raised before anything is read. Returns a summary (from, from_format, to, out, files, ...).
nlohmann::json convert_sae_dir(const std::string& from, Layout to, const std::string& out, bool overwrite);

// Loads initial parameters for --init: the tensors of `dir`, checked against d and D (usage errors); an
// imported SAE's encoding rule is dropped (the run trains an msae SAE).
SaeParams load_init_params(const std::string& dir, int64_t d, int64_t D);

// Activation normalization folded into the weights (SAELens fold_activation_norm_scaling_factor): an SAE
// trained on x * s becomes one that takes raw x and returns raw reconstructions: W_enc *= s, W_dec /= s,
// b_dec /= s (b_enc and the threshold, which act on the pre-activations, are unchanged). unfold is the
// inverse (for --init of a normalized run from a raw-space SAE). s > 0.
void fold_input_scale(SaeParams& params, float s);
void unfold_input_scale(SaeParams& params, float s);

}  // namespace msae::saedir
