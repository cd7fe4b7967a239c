// The SAE output directory: SAELens layout (cfg.json + sae_weights.safetensors, architecture "jumprelu"),
// plus msae.json (full config, training summary) written by the caller's json; the config record both
// carry; the reader, which also imports SAELens (jumprelu / standard / topk) and EleutherAI sparsify
// directories (docs/interop.md); --init loading and the input-scale folding.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <initializer_list>
#include <utility>

#include "msae/io.h"
#include "msae/sae_dir.h"

namespace msae::saedir {
namespace {

using nlohmann::json;

// (rows, cols) -> (cols, rows)
Tensor transposed(const float* src, int64_t rows, int64_t cols) {
  Tensor out({cols, rows});
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out.data[c * rows + r] = src[r * cols + c];
  return out;
}

// The SAELens version whose cfg.json layout msae writes (sae_lens/saes/sae.py SAEConfig.to_dict and
// SAEMetadata, sae_lens/loading/pretrained_sae_loaders.py handle_config_defaulting, SAELens 6.18.0). It goes
// into metadata.sae_lens_version so that SAELens reads the config as a 6.x one and keeps the metadata
// (without it handle_pre_6_0_config rebuilds the metadata from top-level keys and drops msae's).
constexpr const char* kSaelensLayoutVersion = "6.18.0";

bool saelens_version_at_least_6(const json& cfg);

// SAELens 6's metadata: `base` (the source directory's metadata, every key kept), sae_lens_version
// (kSaelensLayoutVersion unless base holds a 6.x one), the LLM fields SAELens's trainer records
// (TrainingSAEConfig.from_sae_runner_config: model_name, hook_name, hook_head_index, context_size,
// prepend_bos, seqpos_slice) with the values of `hook` (msae.json's "hook": a run on a harvest directory)
// where it has them and null where nothing is known, and, for an SAE msae trained (`msae_cfg`), msae's fields.
json saelens_metadata(const json& base, const SaeConfig* msae_cfg, const json& hook) {
  json meta = base.is_object() ? base : json::object();
  if (!saelens_version_at_least_6(json{{"metadata", meta}})) meta["sae_lens_version"] = kSaelensLayoutVersion;
  if (!meta.contains("sae_lens_training_version")) meta["sae_lens_training_version"] = nullptr;  // not SAELens-trained
  auto from_hook = [&](const char* key) -> const json* {
    return hook.is_object() && hook.contains(key) && !hook[key].is_null() ? &hook[key] : nullptr;
  };
  for (const char* key : {"model_name", "hook_name", "context_size", "prepend_bos"})
    if (const json* v = from_hook(key)) meta[key] = *v;
  // msae harvest --skip-bos drops each context's position 0: SAELens's seqpos_slice (1, None).
  if (const json* v = from_hook("skip_bos"); v && v->is_boolean())
    meta["seqpos_slice"] = v->get<bool>() ? json::array({1, nullptr}) : json::array({nullptr});
  for (const char* key : {"model_name", "hook_name", "hook_head_index", "context_size", "prepend_bos", "seqpos_slice"})
    if (!meta.contains(key)) meta[key] = nullptr;
  if (msae_cfg) {
    const SaeConfig& cfg = *msae_cfg;
    meta["msae_arch"] = arch_name(cfg.arch);
    meta["msae_k"] = cfg.k;
    meta["matryoshka_group_sizes"] = cfg.group_sizes;
    meta["matryoshka_group_boundaries"] = cfg.boundaries();
    meta["msae_version"] = version_string();
    // Variants and switches (docs/variants.md). With sampled prefixes the groups above are only the
    // evaluation ladder: every prefix length was trained.
    meta["msae_variants"] = variant_config_json(cfg);
  }
  return meta;
}

// cfg.json of an SAE msae trained, SAELens 6 jumprelu. `base_meta`: metadata to keep (a source's).
json saelens_cfg(const SaeConfig& cfg, const json& hook, const json& base_meta = json::object()) {
  return json{{"architecture", "jumprelu"},
              {"d_in", cfg.d_in},
              {"d_sae", cfg.d_sae},
              {"dtype", "float32"},
              {"device", "cpu"},
              {"apply_b_dec_to_input", true},
              {"normalize_activations", "none"},
              {"reshape_activations", "none"},
              {"metadata", saelens_metadata(base_meta, &cfg, hook)}};
}

const Tensor& require_tensor(const io::SafetensorsFile& file, const std::string& path, const std::string& name,
                             const std::vector<int64_t>& shape) {
  auto it = file.tensors.find(name);
  if (it == file.tensors.end())
    runtime_error(path, ": tensor '", name, "' is missing; expected shape ", shape_str(shape));
  if (it->second.shape != shape)
    runtime_error(path, ": tensor '", name, "' has shape ", shape_str(it->second.shape), ", expected ", shape_str(shape));
  return it->second;
}

// Typed access to JSON configuration fields. Every reader checks the JSON type itself (nlohmann's get<>
// converts silently, and a float that does not fit an integer would be undefined behaviour), and names
// the file and the key on a mismatch.
const json* field(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

int64_t as_int(const json& v, const std::string& file, const std::string& key) {
  if (v.is_number_unsigned() && v.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX)) return v.get<int64_t>();
  if (v.is_number_integer() && !v.is_number_unsigned()) return v.get<int64_t>();
  // SAELens writes some counts as floats (e.g. "k": 32.0 since batchtopk allowed fractional k).
  if (v.is_number_float()) {
    const double x = v.get<double>();
    if (x >= -9.0e15 && x <= 9.0e15 && x == static_cast<double>(static_cast<int64_t>(x))) return static_cast<int64_t>(x);
  }
  runtime_error(file, ": \"", key, "\" must be an integer, found ", io::json_excerpt(v));
}

int64_t int_field(const json& obj, const char* key, int64_t fallback, const std::string& file) {
  const json* v = field(obj, key);
  return v ? as_int(*v, file, key) : fallback;
}

bool bool_field(const json& obj, const char* key, bool fallback, const std::string& file) {
  const json* v = field(obj, key);
  if (!v) return fallback;
  if (!v->is_boolean()) runtime_error(file, ": \"", key, "\" must be true or false, found ", io::json_excerpt(*v));
  return v->get<bool>();
}

std::string string_field(const json& obj, const char* key, const std::string& fallback, const std::string& file) {
  const json* v = field(obj, key);
  if (!v) return fallback;
  if (!v->is_string()) runtime_error(file, ": \"", key, "\" must be a string, found ", io::json_excerpt(*v));
  return v->get<std::string>();
}

float float_field(const json& obj, const char* key, float fallback, const std::string& file) {
  const json* v = field(obj, key);
  if (!v) return fallback;
  if (!v->is_number()) runtime_error(file, ": \"", key, "\" must be a number, found ", io::json_excerpt(*v));
  const double x = v->get<double>();
  if (!(x >= -3.0e38 && x <= 3.0e38)) runtime_error(file, ": \"", key, "\" is out of float range: ", io::json_excerpt(*v));
  return static_cast<float>(x);
}

// Group sizes: each in [1, D] (so their sum cannot overflow), at most D of them.
std::vector<int64_t> group_sizes_field(const json& v, int64_t D, const std::string& file, const char* key) {
  if (!v.is_array() || v.empty() || static_cast<int64_t>(v.size()) > D)
    runtime_error(file, ": \"", key, "\" must be a non-empty array of at most d_sae = ", D, " sizes, found ", io::json_excerpt(v));
  std::vector<int64_t> out;
  for (const json& g : v) {
    const int64_t n = as_int(g, file, key);
    if (n < 1 || n > D) runtime_error(file, ": \"", key, "\" entries must lie in [1, ", D, "], found ", n);
    out.push_back(n);
  }
  return out;
}

// A recorded boundary list (m_1 .. m_G) must be the running sums of the group sizes next to it.
void check_boundaries(const json& obj, const char* key, const std::vector<int64_t>& sizes, const std::string& file) {
  const json* b = field(obj, key);
  if (!b || sizes.empty()) return;
  std::vector<int64_t> expected(sizes.size());
  int64_t sum = 0;
  for (size_t g = 0; g < sizes.size(); ++g) expected[g] = sum += sizes[g];
  bool same = b->is_array() && b->size() == expected.size();
  for (size_t g = 0; same && g < expected.size(); ++g) same = as_int((*b)[g], file, key) == expected[g];
  if (!same)
    runtime_error(file, ": \"", key, "\" is ", io::json_excerpt(*b), " but the group sizes give ", json(expected).dump());
}

// The NaN/Inf entries of the named tensors of `file` (those present), in this order.
std::vector<NonFinite> scan_nonfinite(const io::SafetensorsFile& file, std::initializer_list<const char*> names) {
  std::vector<NonFinite> out;
  for (const char* name : names) {
    auto it = file.tensors.find(name);
    if (it == file.tensors.end()) continue;
    NonFinite n{name, it->second.shape, 0, -1};
    const auto& v = it->second.data;
    for (size_t i = 0; i < v.size(); ++i)
      if (!std::isfinite(v[i])) {
        if (n.count++ == 0) n.first = static_cast<int64_t>(i);
      }
    if (n.count > 0) out.push_back(std::move(n));
  }
  return out;
}

// Records the non-finite values of the tensors the SAE uses, or refuses them (strict loading).
void check_finite(SaeDirectory& out, const io::SafetensorsFile& file, const std::string& path,
                  std::initializer_list<const char*> names, bool allow_nonfinite) {
  out.nonfinite = scan_nonfinite(file, names);
  if (out.nonfinite.empty() || allow_nonfinite) return;
  std::string also;
  for (size_t i = 1; i < out.nonfinite.size(); ++i) also += cat("; ", describe(out.nonfinite[i]));
  runtime_error(path, ": tensor ", describe(out.nonfinite[0]), also,
                "; an SAE with NaN or Inf weights gives NaN codes (msae inspect lists them)");
}

// SAELens's metadata.sae_lens_version (or a top-level one), "" when absent: handle_config_defaulting reads
// the config as SAELens 6 only when it is >= 6.0.0-rc.0.
std::string saelens_version(const json& cfg) {
  for (const json* src : {&cfg, field(cfg, "metadata")})
    if (const json* v = src ? field(*src, "sae_lens_version") : nullptr; v && v->is_string()) return v->get<std::string>();
  return "";
}

bool saelens_version_at_least_6(const json& cfg) {
  const std::string v = saelens_version(cfg);
  size_t i = 0;
  int64_t major = 0;
  while (i < v.size() && i < 9 && v[i] >= '0' && v[i] <= '9') major = major * 10 + (v[i++] - '0');
  return i > 0 && major >= 6;
}

// SAELens's W_dec.norm(dim=-1): each decoder row's Euclidean norm (summed in double, rounded to float32).
std::vector<float> decoder_row_norms(const SaeParams& p) {
  std::vector<float> n(static_cast<size_t>(p.D));
  for (int64_t i = 0; i < p.D; ++i) {
    double s = 0;
    for (int64_t j = 0; j < p.d; ++j) s += static_cast<double>(p.W_dec.data[i * p.d + j]) * p.W_dec.data[i * p.d + j];
    n[i] = static_cast<float>(std::sqrt(s));
  }
  return n;
}

// Fills cfg from msae.json when present, else from cfg.json's metadata (both written by msae).
SaeConfig msae_config(const json& msae, const json& saelens, int64_t d, int64_t D, const std::string& dir) {
  SaeConfig cfg;
  cfg.d_in = d;
  cfg.d_sae = D;
  cfg.arch = Arch::batchtopk;
  const std::string msae_file = dir + "/msae.json", cfg_file = dir + "/cfg.json";
  const json* m = field(saelens, "metadata");
  bool k_given = false;
  if (const json* c = field(msae, "config")) {
    if (!c->is_object()) runtime_error(msae_file, ": \"config\" must be an object, found ", io::json_excerpt(*c));
    for (const auto& [key, value] : {std::pair<const char*, int64_t>{"d_in", d}, {"d_sae", D}})
      if (field(*c, key) && int_field(*c, key, 0, msae_file) != value)
        runtime_error(msae_file, ": config.", key, " is ", int_field(*c, key, 0, msae_file), " but the weights (W_enc) have ",
                      key, " ", value);
    cfg.arch = parse_arch(string_field(*c, "arch", "", msae_file));
    k_given = field(*c, "k") != nullptr;
    cfg.k = int_field(*c, "k", cfg.k, msae_file);
    if (const json* g = field(*c, "group_sizes")) cfg.group_sizes = group_sizes_field(*g, D, msae_file, "group_sizes");
    check_boundaries(*c, "group_boundaries", cfg.group_sizes, msae_file);
    // cfg.json's metadata is written from the same config: a disagreement means one of them was changed.
    if (m && field(*m, "msae_arch") && string_field(*m, "msae_arch", "", cfg_file) != arch_name(cfg.arch))
      runtime_error(cfg_file, ": metadata.msae_arch '", string_field(*m, "msae_arch", "", cfg_file), "' disagrees with ",
                    msae_file, "'s config.arch '", arch_name(cfg.arch), "'");
    if (m && field(*m, "msae_k") && k_given && int_field(*m, "msae_k", 0, cfg_file) != cfg.k)
      runtime_error(cfg_file, ": metadata.msae_k ", int_field(*m, "msae_k", 0, cfg_file), " disagrees with ", msae_file,
                    "'s config.k ", cfg.k);
    if (m && field(*m, "matryoshka_group_sizes") && !cfg.group_sizes.empty() &&
        group_sizes_field(*field(*m, "matryoshka_group_sizes"), D, cfg_file, "matryoshka_group_sizes") != cfg.group_sizes)
      runtime_error(cfg_file, ": metadata.matryoshka_group_sizes ", io::json_excerpt(*field(*m, "matryoshka_group_sizes")),
                    " disagree with ", msae_file, "'s config.group_sizes ", json(cfg.group_sizes).dump());
    cfg.encoder_bias = bool_field(*c, "encoder_bias", false, msae_file);
    cfg.dead_after_batches = int_field(*c, "dead_after_batches", cfg.dead_after_batches, msae_file);
    cfg.aux_k = int_field(*c, "aux_k", cfg.aux_k, msae_file);
    cfg.aux_coef = float_field(*c, "aux_coef", cfg.aux_coef, msae_file);
    if (const json* v = field(*c, "variants")) {
      try {
        variant_config_from_json(*v, cfg);
      } catch (const json::exception& e) {
        runtime_error(msae_file, ": malformed \"config.variants\": ", e.what());
      }
    }
  } else {
    if (m && field(*m, "matryoshka_group_sizes"))
      cfg.group_sizes = group_sizes_field(*field(*m, "matryoshka_group_sizes"), D, cfg_file, "matryoshka_group_sizes");
    if (m && field(*m, "msae_arch")) cfg.arch = parse_arch(string_field(*m, "msae_arch", "", cfg_file));
    k_given = m && field(*m, "msae_k");
    if (m) cfg.k = int_field(*m, "msae_k", cfg.k, cfg_file);
    // No msae.json (e.g. after a load and save_model in SAELens): the variants from the metadata.
    if (const json* v = m ? field(*m, "msae_variants") : nullptr) {
      try {
        variant_config_from_json(*v, cfg);
      } catch (const json::exception& e) {
        runtime_error(cfg_file, ": malformed \"metadata.msae_variants\": ", e.what());
      }
    }
    // No msae.json: the encoder bias is part of the forward pass whenever the file has one.
    cfg.encoder_bias = true;
  }
  if (m) check_boundaries(*m, "matryoshka_group_boundaries", cfg.group_sizes, cfg_file);
  // A recorded k must lie in [1, d_sae] (SaeConfig::finalize checks >= 1); only the default k (32) is cut to
  // a smaller d_sae.
  if (k_given && cfg.k > D)
    runtime_error(field(msae, "config") ? msae_file : cfg_file, ": k is ", cfg.k, " but the SAE has only d_sae = ", D,
                  " latents; k must lie in [1, d_sae]");
  cfg.k = std::min(cfg.k, D);
  if (cfg.arch == Arch::batchtopk && cfg.group_sizes.size() > 1) cfg.arch = Arch::matryoshka;
  return cfg;
}

// cfg.json / msae.json (msae and SAELens write at most 3-4 levels of nesting; io caps it at 64).
json read_json_if_present(const std::string& path) {
  if (!io::path_exists(path)) return json::object();
  json j = io::parse_json_file_text(io::read_text_file(path), path);
  if (!j.is_object()) runtime_error(path, ": expected a JSON object");
  return j;
}

// The (rows, cols) of a 2-D tensor with both dimensions positive.
std::pair<int64_t, int64_t> matrix_shape(const io::SafetensorsFile& file, const std::string& path,
                                         const std::string& name, const char* expected) {
  auto it = file.tensors.find(name);
  if (it == file.tensors.end())
    runtime_error(path, ": tensor '", name, "' with shape ", expected, " is missing");
  const std::vector<int64_t>& s = it->second.shape;
  if (s.size() != 2 || s[0] <= 0 || s[1] <= 0)
    runtime_error(path, ": tensor '", name, "' must have shape ", expected, " with both sizes positive, found ", shape_str(s));
  if (s[1] > (int64_t{1} << 31) - 1 || s[0] > (int64_t{1} << 31) - 1)
    runtime_error(path, ": tensor '", name, "' has shape ", shape_str(s), "; at most 2^31-1 latents are supported");
  return {s[0], s[1]};
}

// Per-row TopK config: SaeConfig (arch topk, one group) and the rule.
void set_topk(SaeDirectory& out, int64_t k, const std::string& file) {
  if (k < 1) runtime_error(file, ": k must be a positive integer, found ", k);
  out.params.rule.kind = EncodeRule::Kind::topk;
  out.params.rule.k = std::min(k, out.params.D);
  out.sae.arch = Arch::topk;
  out.sae.k = out.params.rule.k;
}

// A SAELens directory written by another trainer (cfg.json has no msae metadata). The fields are taken as
// SAELens 6.18's SAE.load_from_disk takes them (sae_lens/loading/pretrained_sae_loaders.py
// handle_config_defaulting: a config without metadata.sae_lens_version >= 6 goes through
// handle_pre_6_0_config first; then SAEConfig.from_dict keeps only the architecture's dataclass fields).
void read_saelens_foreign(SaeDirectory& out, const json& cfg, const io::SafetensorsFile& file,
                          const std::string& weights, const std::string& cfg_file) {
  const int64_t D = out.params.D;
  const bool v6 = saelens_version_at_least_6(cfg);
  const std::string arch = string_field(cfg, "architecture", "standard", cfg_file);
  // SAELens <= 5 named the activation "activation_fn_str"; kwargs carried TopK's k. handle_pre_6_0_config
  // turns activation_fn "topk" with activation_fn_kwargs.k into architecture "topk"; SAELens 6 configs
  // have no activation field (StandardSAE is ReLU whatever activation_fn says).
  std::string act = string_field(cfg, "activation_fn", "", cfg_file);
  if (act.empty()) act = string_field(cfg, "activation_fn_str", "relu", cfg_file);
  const json* kwargs = field(cfg, "activation_fn_kwargs");
  const int64_t kwargs_k = kwargs ? int_field(*kwargs, "k", 0, cfg_file) : 0;
  if (v6 && arch == "standard" && act == "topk")
    runtime_error(cfg_file, ": architecture 'standard' with activation_fn 'topk' in a SAELens 6 config (sae_lens_version ",
                  saelens_version(cfg), "): SAELens 6 ignores activation_fn and encodes it with ReLU, so what this SAE ",
                  "is cannot be told; for a TopK SAE set \"architecture\": \"topk\" and \"k\": K, for a ReLU SAE remove ",
                  "activation_fn");

  // normalize_activations: SAELens <= 5 wrote a bool (true = expected_average_only_in). expected_average_only_in
  // is a training-time scale that SAELens folds into the weights on saving; its inference path
  // (SAE._setup_activation_normalization) is the identity, as here. The per-row modes change each row's
  // scale before encoding and undo it after decoding, which msae's decode (codes only) cannot do.
  std::string norm = "none";
  if (const json* n = field(cfg, "normalize_activations"); n && n->is_boolean())
    norm = n->get<bool>() ? "expected_average_only_in" : "none";
  else
    norm = string_field(cfg, "normalize_activations", "none", cfg_file);
  if (norm != "none" && norm != "expected_average_only_in")
    runtime_error(cfg_file, ": normalize_activations '", norm, "' is not supported: it rescales each input row (",
                  norm == "layer_norm" ? "(x - mean) / (std + 1e-5)" : "x * sqrt(d_in) / |x|",
                  ") and undoes that on the reconstruction, which msae cannot apply. To use this SAE with msae, ",
                  "normalize the activation rows that way yourself and set \"normalize_activations\": \"none\" in a ",
                  "copy of the directory: msae then gives SAELens's codes, and its reconstructions in the normalized space");
  out.params.rule.center_input = bool_field(cfg, "apply_b_dec_to_input", true, cfg_file);
  // SAELens <= 5 fine-tuning scale (read_sae_components_from_disk drops an all-ones one; SAELens 6 has no
  // inference class that takes any other).
  if (auto sf = file.tensors.find("scaling_factor"); sf != file.tensors.end())
    for (float v : sf->second.data)
      if (v != 1.0f)
        runtime_error(weights, ": tensor 'scaling_factor' (a SAELens 5 fine-tuning scale) is not all ones; msae and ",
                      "SAELens 6 do not apply it. Multiply each decoder row W_dec[i] by scaling_factor[i] and remove the ",
                      "tensor (that is what it does: decode(z * scaling_factor)), then load again");

  out.sae.arch = Arch::batchtopk;
  out.sae.encoder_bias = true;
  out.params.b_enc = require_tensor(file, weights, "b_enc", {D});
  // TopK (SAELens TopKSAE): k from cfg "k" (SAELens 6, or a pre-6 config's activation_fn_kwargs.k);
  // rescale_acts_by_decoder_norm (a TopKSAEConfig field: other architectures drop it on loading).
  auto topk = [&](int64_t k) {
    if (k < 1)
      runtime_error(cfg_file, ": a topk SAE needs \"k\" (a positive integer; SAELens's TopKSAEConfig default is 100)");
    set_topk(out, k, cfg_file);
    if (bool_field(cfg, "rescale_acts_by_decoder_norm", false, cfg_file)) {
      out.params.rule.decoder_norm = decoder_row_norms(out.params);
      for (int64_t i = 0; i < D; ++i)
        if (!(out.params.rule.decoder_norm[i] > 0.0f) || !std::isfinite(out.params.rule.decoder_norm[i]))
          runtime_error(weights, ": rescale_acts_by_decoder_norm is true but decoder row ", i, " (W_dec[", i,
                        "]) has norm ", out.params.rule.decoder_norm[i], "; SAELens would divide its codes by it");
    }
    out.format = "saelens-topk";
  };
  if (arch == "jumprelu") {
    const Tensor& thr = require_tensor(file, weights, "threshold", {D});
    out.params.rule.thresholds.assign(thr.data.begin(), thr.data.end());
    out.format = "saelens-jumprelu";
  } else if (arch == "standard") {
    if (act == "topk") {  // a pre-6 config (the 6.x case is refused above)
      if (kwargs_k < 1)
        runtime_error(cfg_file, ": a standard SAE with activation_fn 'topk' needs activation_fn_kwargs.k (a positive integer)");
      topk(kwargs_k);
    } else if (act == "relu" || v6) {
      out.params.rule.thresholds.assign(static_cast<size_t>(D), 0.0f);  // ReLU = JumpReLU at 0
      out.format = "saelens-standard";
    } else {
      runtime_error(cfg_file, ": activation_fn '", act, "' is not supported; expected relu or topk");
    }
  } else if (arch == "topk") {
    topk(field(cfg, "k") ? int_field(cfg, "k", 0, cfg_file) : kwargs_k);
  } else {
    runtime_error(cfg_file, ": architecture '", arch, "' is not supported; msae imports SAELens jumprelu, standard and topk ",
                  "SAEs (a batchtopk or matryoshka SAELens SAE is saved as jumprelu); run a ", arch,
                  " SAE with SAELens itself");
  }
}

// An EleutherAI sparsify directory: cfg.json + sae.safetensors (one hookpoint).
void read_sparsify(SaeDirectory& out, const std::string& dir, const std::string& weights, bool allow_nonfinite) {
  const std::string cfg_file = dir + "/cfg.json";
  if (!io::path_exists(cfg_file))
    runtime_error(dir, ": has sae.safetensors but no cfg.json; a sparsify SAE directory holds both");
  const json cfg = read_json_if_present(cfg_file);
  out.source_cfg = cfg;
  const io::SafetensorsFile file = io::read_safetensors(weights);
  const auto [D, d] = matrix_shape(file, weights, "encoder.weight", "(num_latents, d_in)");
  if (!field(cfg, "d_in")) runtime_error(cfg_file, ": \"d_in\" is missing (sparsify writes it next to the SAE config)");
  const int64_t d_in = int_field(cfg, "d_in", 0, cfg_file);
  if (d_in != d) runtime_error(cfg_file, ": d_in is ", d_in, " but encoder.weight has ", d, " columns");
  const int64_t num_latents = int_field(cfg, "num_latents", 0, cfg_file);
  const int64_t expansion = int_field(cfg, "expansion_factor", 32, cfg_file);
  if (num_latents != 0 ? num_latents != D : (expansion < 1 || expansion > D || expansion * d != D))
    runtime_error(cfg_file, ": num_latents ", num_latents, " / expansion_factor ", expansion, " with d_in ", d,
                  " do not give the ", D, " rows of encoder.weight");
  const std::string act = string_field(cfg, "activation", "topk", cfg_file);
  if (act != "topk") runtime_error(cfg_file, ": activation '", act, "' is not supported; msae imports topk sparsify SAEs");
  for (const char* flag : {"transcode", "skip_connection", "embed_skip", "gram_lookup"})
    if (bool_field(cfg, flag, false, cfg_file))
      runtime_error(cfg_file, ": \"", flag, "\" = true is not supported; msae imports plain sparse autoencoders");
  if (file.tensors.count("W_skip")) runtime_error(weights, ": has W_skip (a skip connection), which msae does not support");

  out.params = SaeParams::zeros(d, D);
  out.params.W_enc_t = file.tensors.at("encoder.weight");  // (D, d) is already msae's layout
  out.params.b_enc = require_tensor(file, weights, "encoder.bias", {D});
  out.params.W_dec = require_tensor(file, weights, "W_dec", {D, d});
  out.params.b_dec = require_tensor(file, weights, "b_dec", {d});
  out.sae.d_in = d;
  out.sae.d_sae = D;
  out.sae.encoder_bias = true;
  out.sae.group_sizes = {D};
  set_topk(out, int_field(cfg, "k", 32, cfg_file), cfg_file);  // 32: sparsify's default
  out.format = "sparsify-topk";
  check_finite(out, file, weights, {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}, allow_nonfinite);
}

// When `dir` holds no SAE but its subdirectories do (sparsify saves one per hookpoint), says which.
[[noreturn]] void no_sae_here(const std::string& dir) {
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (!entry.is_directory(ec)) continue;
    const std::string sub = entry.path().string();
    if (io::path_exists(sub + "/sae.safetensors") || io::path_exists(sub + "/sae_weights.safetensors"))
      found.push_back(sub);
  }
  std::sort(found.begin(), found.end());
  if (!found.empty()) {
    std::string list;
    for (size_t i = 0; i < found.size() && i < 8; ++i) list += (i ? ", " : "") + found[i];
    if (found.size() > 8) list += cat(", ... (", found.size(), " in all)");
    runtime_error(dir, ": no sae_weights.safetensors or sae.safetensors here, but it holds ", found.size(),
                  " SAE directories (e.g. one per hookpoint): ", list, "; pass one of them");
  }
  runtime_error(dir, ": no sae_weights.safetensors (SAELens layout: cfg.json + sae_weights.safetensors) and no ",
                "sae.safetensors (EleutherAI sparsify layout: cfg.json + sae.safetensors)");
}

// The tensors of an SAE in SAELens's layout: W_enc (d, D), W_dec (D, d), b_enc (D), b_dec (d), and
// threshold (D) for jumprelu (`thresholds`, empty for none). Returns the file's digest as JSON.
json write_saelens_weights(const std::string& dir, const SaeParams& p, bool use_b_enc, const std::vector<float>& thresholds) {
  const Tensor W_enc = transposed(p.W_enc_t.ptr(), p.D, p.d);  // (d, D)
  const Tensor zeros({p.D});
  std::vector<io::TensorRef> tensors = {{"W_enc", {p.d, p.D}, W_enc.ptr()},
                                        {"W_dec", {p.D, p.d}, p.W_dec.ptr()},
                                        // An SAE without an encoder bias: zeros, which SAELens adds (exactly nothing).
                                        {"b_enc", {p.D}, use_b_enc ? p.b_enc.ptr() : zeros.ptr()},
                                        {"b_dec", {p.d}, p.b_dec.ptr()}};
  if (!thresholds.empty()) tensors.push_back({"threshold", {p.D}, thresholds.data()});
  return io::write_safetensors(dir + "/sae_weights.safetensors", tensors, {{"format", "pt"}}).to_json();
}

// The thresholds an msae SAE exports: the per-latent ones it was read with, else the global one D times.
std::vector<float> msae_thresholds(const SaeParams& p) {
  return p.rule.thresholds.empty() ? std::vector<float>(static_cast<size_t>(p.D), p.threshold) : p.rule.thresholds;
}

// An SAE msae trained: sae_weights.safetensors, cfg.json (SAELens 6 jumprelu with msae's metadata) and,
// with `with_msae_json`, msae.json = msae_json plus "files" last. Returns that "files" object.
json write_msae_files(const std::string& dir, const SaeConfig& cfg, const SaeParams& p, const json& msae_json,
                      const json& base_meta, bool with_msae_json) {
  json files = json::object();
  files["sae_weights.safetensors"] = write_saelens_weights(dir, p, cfg.encoder_bias, msae_thresholds(p));
  const json hook = msae_json.is_object() && msae_json.contains("hook") ? msae_json["hook"] : json(nullptr);
  io::write_text_file_atomic(dir + "/cfg.json", saelens_cfg(cfg, hook, base_meta).dump(2) + "\n");
  if (!with_msae_json) return files;
  // msae.json last, with the weights' digest: a directory caught between two of these renames (new
  // weights beside an older msae.json) is refused when read instead of loading as a different SAE.
  json m = msae_json;
  m["files"] = files;
  io::write_text_file_atomic(dir + "/msae.json", m.dump(2) + "\n");
  return files;
}

// The metadata of a source cfg.json to carry over: SAELens 6 "metadata" (or "meta"), else the top-level
// keys SAELens's handle_pre_6_0_config moves there (LLM_METADATA_KEYS, with hook_point renamed hook_name).
json source_metadata(const json& cfg) {
  if (const json* m = field(cfg, "metadata"); m && m->is_object()) return *m;
  if (const json* m = field(cfg, "meta"); m && m->is_object()) return *m;
  json meta = json::object();
  if (!cfg.is_object()) return meta;
  for (const char* key : {"model_name", "hook_name", "model_class_name", "hook_head_index", "model_from_pretrained_kwargs",
                          "prepend_bos", "exclude_special_tokens", "neuronpedia_id", "context_size", "seqpos_slice",
                          "dataset_path", "sae_lens_version", "sae_lens_training_version", "hook_name_out",
                          "hook_head_index_out"})
    if (cfg.contains(key)) meta[key] = cfg[key];
  if (!meta.contains("hook_name") && cfg.contains("hook_point")) meta["hook_name"] = cfg["hook_point"];
  if (!meta.contains("hook_head_index") && cfg.contains("hook_point_head_index"))
    meta["hook_head_index"] = cfg["hook_point_head_index"];
  return meta;
}

bool is_topk(const SaeDirectory& s) { return s.params.rule.kind == EncodeRule::Kind::topk; }

// cfg.json in SAELens 6's layout for an SAE from another trainer: its architecture's dataclass fields
// (SAEConfig: d_in, d_sae, dtype, device, apply_b_dec_to_input, normalize_activations, reshape_activations;
// TopKSAEConfig adds k and rescale_acts_by_decoder_norm), metadata and architecture.
json foreign_saelens_cfg(const SaeDirectory& s) {
  const std::string arch = is_topk(s) ? "topk" : s.format == "saelens-standard" ? "standard" : "jumprelu";
  std::string reshape = "none";
  if (const json* r = field(s.source_cfg, "reshape_activations"); r && r->is_string()) reshape = r->get<std::string>();
  std::string norm = "none";  // expected_average_only_in is the identity at inference: kept as the source said it
  if (const json* n = field(s.source_cfg, "normalize_activations"); n && n->is_string()) norm = n->get<std::string>();
  if (const json* n = field(s.source_cfg, "normalize_activations"); n && n->is_boolean() && n->get<bool>())
    norm = "expected_average_only_in";
  json cfg = {{"d_in", s.params.d},
              {"d_sae", s.params.D},
              {"dtype", "float32"},
              {"device", "cpu"},
              {"apply_b_dec_to_input", s.params.rule.center_input},
              {"normalize_activations", norm},
              {"reshape_activations", reshape},
              {"metadata", saelens_metadata(s.format.rfind("saelens-", 0) == 0 ? source_metadata(s.source_cfg)
                                                                              : json::object(),
                                            nullptr, nullptr)},
              {"architecture", arch}};
  if (is_topk(s)) {
    cfg["k"] = s.params.rule.k;
    cfg["rescale_acts_by_decoder_norm"] = !s.params.rule.decoder_norm.empty();
  }
  return cfg;
}

// sparsify's layout (sparsify 1.3.0 SparseCoder.save_to_disk): sae.safetensors with encoder.weight (D, d),
// encoder.bias (D), W_dec (D, d), b_dec (d); cfg.json = SparseCoderConfig.to_dict() plus d_in.
void write_sparsify_files(const std::string& dir, const SaeDirectory& s) {
  const SaeParams& p = s.params;
  io::write_safetensors(dir + "/sae.safetensors",
                        {{"encoder.weight", {p.D, p.d}, p.W_enc_t.ptr()},
                         {"encoder.bias", {p.D}, p.b_enc.ptr()},
                         {"W_dec", {p.D, p.d}, p.W_dec.ptr()},
                         {"b_dec", {p.d}, p.b_dec.ptr()}},
                        {{"format", "pt"}});
  const json cfg = {{"activation", "topk"},
                    {"expansion_factor", std::max<int64_t>(1, p.D / p.d)},  // unused: num_latents is set
                    // A training switch (unit-norm decoder rows); inference does not read it, and msae does not
                    // claim the rows have unit norm.
                    {"normalize_decoder", false},
                    {"num_latents", p.D},
                    {"k", p.rule.k},
                    {"multi_topk", false},
                    {"skip_connection", false},
                    {"transcode", false},
                    {"d_in", p.d}};
  io::write_text_file_atomic(dir + "/cfg.json", cfg.dump(2) + "\n");
}

}  // namespace

json config_json(const SaeConfig& c) {
  return {{"arch", arch_name(c.arch)},       {"d_in", c.d_in},
          {"d_sae", c.d_sae},                {"k", c.k},
          {"group_sizes", c.group_sizes},    {"group_boundaries", c.boundaries()},
          {"encoder_bias", c.encoder_bias},  {"dead_after_batches", c.dead_after_batches},
          {"aux_k", c.aux_k},                {"aux_coef", json_number(c.aux_coef)},
          {"variants", variant_config_json(c)}};
}

json variant_config_json(const SaeConfig& c) {
  json j = {{"recipe", c.recipe},
            {"prefix_weights", json_numbers(c.prefix_weights)},
            {"bdec_loss_term", c.bdec_loss_term},
            {"stop_gradient_groups", c.stop_gradient_groups},
            {"aux_detach", c.aux_detach},
            {"group_k", c.group_k},
            {"sampled_prefixes", c.sampled_prefixes},
            {"reorder_every", c.reorder_every},
            {"threshold_rate", json_number(c.threshold_rate)},
            {"threshold_start_step", c.threshold_start_step}};
  if (c.sampled_prefixes > 0) {
    j["prefix_distribution"] = c.prefix_distribution;
    j["pareto_power"] = json_number(c.pareto_power);
    j["min_prefix"] = c.min_prefix;
  }
  if (c.reorder_every > 0) j["reorder_decay"] = json_number(c.reorder_decay);
  if (c.arch == Arch::relu_l1) {
    j["l1_coef"] = json_number(c.l1_coef);
    j["l1_adapt_rate"] = json_number(c.l1_adapt_rate);
    j["l1_warmup_steps"] = c.l1_warmup_steps;
  }
  return j;
}

void variant_config_from_json(const json& v, SaeConfig& c) {
  if (!v.is_object()) runtime_error("msae.json: config.variants must be an object");
  c.recipe = v.value("recipe", std::string("bussmann"));
  c.prefix_weights = v.value("prefix_weights", std::vector<float>{});
  c.bdec_loss_term = v.value("bdec_loss_term", true);
  c.stop_gradient_groups = v.value("stop_gradient_groups", false);
  c.aux_detach = v.value("aux_detach", false);
  c.group_k = v.value("group_k", std::vector<int64_t>{});
  c.sampled_prefixes = v.value("sampled_prefixes", int64_t{0});
  c.prefix_distribution = v.value("prefix_distribution", std::string("pareto"));
  c.pareto_power = v.value("pareto_power", 0.5f);
  c.min_prefix = v.value("min_prefix", int64_t{1});
  c.reorder_every = v.value("reorder_every", int64_t{0});
  c.threshold_rate = v.value("threshold_rate", 0.01f);
  c.threshold_start_step = v.value("threshold_start_step", int64_t{0});
  c.reorder_decay = v.value("reorder_decay", 0.95f);
  c.l1_coef = v.value("l1_coef", 1.2f);
  c.l1_adapt_rate = v.value("l1_adapt_rate", 3e-4f);
  c.l1_warmup_steps = v.value("l1_warmup_steps", int64_t{0});
}

json write_sae_files(const std::string& dir, const SaeConfig& cfg, const SaeParams& p, const json& msae_json) {
  return write_msae_files(dir, cfg, p, msae_json, json::object(), true);
}

std::string describe(const NonFinite& n) {
  std::string at = "[";
  int64_t rest = n.first;
  for (size_t i = 0; i < n.shape.size(); ++i) {
    int64_t below = 1;
    for (size_t j = i + 1; j < n.shape.size(); ++j) below *= n.shape[j];
    at += cat(i ? ", " : "", below > 0 ? rest / below : 0);
    if (below > 0) rest %= below;
  }
  at += "]";
  return cat("'", n.tensor, "' ", shape_str(n.shape), ": ", n.count, " non-finite value", n.count == 1 ? "" : "s",
             " (NaN or Inf), the first at ", at, n.shape.size() > 1 ? cat(" (flat index ", n.first, ")") : "");
}

SaeDirectory read_sae_dir(const std::string& dir, bool allow_nonfinite) {
  if (!io::is_directory(dir)) runtime_error("SAE directory '", dir, "' does not exist or is not a directory");
  SaeDirectory out;
  try {
    const std::string weights = dir + "/sae_weights.safetensors";
    if (!io::path_exists(weights)) {
      if (!io::path_exists(dir + "/sae.safetensors")) no_sae_here(dir);
      read_sparsify(out, dir, dir + "/sae.safetensors", allow_nonfinite);
    } else {
      const io::SafetensorsFile file = io::read_safetensors(weights);
      const auto [d, D] = matrix_shape(file, weights, "W_enc", "(d_in, d_sae)");
      const std::string cfg_file = dir + "/cfg.json";
      const json saelens = read_json_if_present(cfg_file);
      if (field(saelens, "d_in") && int_field(saelens, "d_in", 0, cfg_file) != d)
        runtime_error(cfg_file, ": d_in is ", int_field(saelens, "d_in", 0, cfg_file), " but W_enc has d_in ", d);
      if (field(saelens, "d_sae") && int_field(saelens, "d_sae", 0, cfg_file) != D)
        runtime_error(cfg_file, ": d_sae is ", int_field(saelens, "d_sae", 0, cfg_file), " but W_enc has d_sae ", D);
      out.msae_json = read_json_if_present(dir + "/msae.json");
      if (saelens.empty() && out.msae_json.empty())
        runtime_error(dir, ": sae_weights.safetensors without cfg.json or msae.json, which say what SAE it is ",
                      "(an interrupted write, or files copied without them)");
      if (const json* files = field(out.msae_json, "files"); files && field(*files, "sae_weights.safetensors"))
        io::verify_file(weights, io::FileDigest::from_json(files->at("sae_weights.safetensors"),
                                                           dir + "/msae.json: files.sae_weights.safetensors"),
                        dir + "/msae.json");
      out.source_cfg = saelens;
      const json* meta = field(saelens, "metadata");
      // The hook it was trained at: in "metadata" (msae, SAELens 6) or "meta", or at the top level (SAELens 5,
      // which called it hook_point).
      for (const json* src : {meta, field(saelens, "meta"), &saelens})
        if (src) {
          if (out.hook_name.empty()) out.hook_name = string_field(*src, "hook_name", "", cfg_file);
          if (out.hook_name.empty() && src == &saelens) out.hook_name = string_field(*src, "hook_point", "", cfg_file);
          if (out.model_name.empty()) out.model_name = string_field(*src, "model_name", "", cfg_file);
        }
      const bool written_by_msae = field(out.msae_json, "config") || saelens.empty() ||
                                   (meta && (field(*meta, "msae_arch") || field(*meta, "matryoshka_group_sizes")));
      out.params = SaeParams::zeros(d, D);
      out.params.W_enc_t = transposed(file.tensors.at("W_enc").ptr(), d, D);
      out.params.W_dec = require_tensor(file, weights, "W_dec", {D, d});
      out.params.b_dec = require_tensor(file, weights, "b_dec", {d});
      if (written_by_msae) {
        out.sae = msae_config(out.msae_json, saelens, d, D, dir);
        // b_enc is part of the forward pass when msae.json says so (msae writes it always, zeros without a bias).
        if (file.tensors.count("b_enc") || (field(out.msae_json, "config") && out.sae.encoder_bias))
          out.params.b_enc = require_tensor(file, weights, "b_enc", {D});
        // The inference threshold: without it every latent with a positive pre-activation would fire (an
        // evaluation silently wrong), so it is required.
        auto thr = file.tensors.find("threshold");
        if (thr == file.tensors.end())
          runtime_error(weights, ": tensor 'threshold' (", D, ",) is missing; an SAE directory in msae's layout holds ",
                        "its JumpReLU inference threshold there (SAELens jumprelu), and without it every latent with a ",
                        "positive pre-activation would fire");
        if (thr->second.numel() != D && thr->second.numel() != 1)
          runtime_error(weights, ": tensor 'threshold' has shape ", shape_str(thr->second.shape), ", expected (", D, ",)");
        out.params.threshold = thr->second.data[0];
        // msae writes one global threshold D times; differing values are honoured per latent.
        for (float t : thr->second.data)
          if (!(t == out.params.threshold)) {
            out.params.rule.thresholds.assign(static_cast<size_t>(D), 0.0f);
            for (int64_t i = 0; i < D; ++i) out.params.rule.thresholds[i] = thr->second.data[thr->second.numel() == 1 ? 0 : i];
            break;
          }
      } else {
        out.sae.d_in = d;
        out.sae.d_sae = D;
        out.sae.group_sizes = {D};
        read_saelens_foreign(out, saelens, file, weights, cfg_file);
        out.sae.k = std::min(out.sae.k, D);
      }
      check_finite(out, file, weights, {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}, allow_nonfinite);
    }
    out.sae.finalize();
  } catch (const json::exception& e) {
    runtime_error(dir, ": malformed configuration (msae.json / cfg.json): ", e.what());
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::runtime) throw;
    runtime_error(dir, ": inconsistent configuration: ", e.what());
  }
  return out;
}

SaeParams load_init_params(const std::string& dir, int64_t d, int64_t D) {
  SaeDirectory sae = read_sae_dir(dir);
  if (sae.params.d != d)
    usage_error(opt("init"), " ", dir, ": the SAE has d_in ", sae.params.d, " but the data has width ", d);
  if (sae.params.D != D)
    usage_error(opt("init"), " ", dir, ": the SAE has d_sae ", sae.params.D, " but ", opt("d_sae"), " is ", D,
                " (omit ", opt("d_sae"), " to take it from ", opt("init"), ")");
  // --init takes the weights only: the run trains and exports an msae SAE, encoded by msae's rule.
  sae.params.rule = EncodeRule{};
  return std::move(sae.params);
}

void fold_input_scale(SaeParams& p, float s) {
  MSAE_ASSERT(s > 0.0f);
  for (float& w : p.W_enc_t.data) w *= s;
  for (float& w : p.W_dec.data) w /= s;
  for (float& b : p.b_dec.data) b /= s;
}

void unfold_input_scale(SaeParams& p, float s) {
  MSAE_ASSERT(s > 0.0f);
  for (float& w : p.W_enc_t.data) w /= s;
  for (float& w : p.W_dec.data) w *= s;
  for (float& b : p.b_dec.data) b *= s;
}


// ---------------------------------------------------------------------------------------------
// Writing an SAE in another trainer's layout (msae convert, docs/interop.md)
// ---------------------------------------------------------------------------------------------
Layout parse_layout(const std::string& name) {
  if (name == "msae") return Layout::msae;
  if (name == "saelens") return Layout::saelens;
  if (name == "sparsify") return Layout::sparsify;
  usage_error("unknown layout '", name, "'; expected msae, saelens or sparsify");
}

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::msae: return "msae";
    case Layout::saelens: return "saelens";
    case Layout::sparsify: return "sparsify";
  }
  return "?";
}

std::string why_not_exact(const SaeDirectory& s, Layout to) {
  if (to != Layout::sparsify) return "";  // SAELens's jumprelu / standard / topk hold everything msae reads
  const char* remedy = "; --to saelens holds it exactly";
  if (s.format == "msae")
    return cat("an SAE msae trained encodes with a JumpReLU threshold (SAELens jumprelu)",
               s.sae.group_sizes.size() > 1 ? " and has Matryoshka groups" : "",
               "; sparsify encodes only with per-row TopK or GroupMax (SparseCoder.encode), so its codes would differ",
               remedy);
  if (!is_topk(s))
    return cat("a ", s.format, " SAE encodes with ", s.format == "saelens-standard" ? "ReLU" : "per-latent JumpReLU thresholds",
               "; sparsify encodes only with per-row TopK or GroupMax (SparseCoder.encode)", remedy);
  if (!s.params.rule.center_input)
    return cat("this SAE does not subtract b_dec from its input (apply_b_dec_to_input false); sparsify always does ",
               "(SparseCoder.encode: x - b_dec)", remedy);
  for (float n : s.params.rule.decoder_norm)
    if (n != 1.0f)
      return cat("this SAE rescales its codes by the decoder row norms (rescale_acts_by_decoder_norm, norms not all 1); ",
                 "sparsify has no such rescaling", remedy);
  if (!s.sae.encoder_bias) return cat("internal: a TopK SAE without an encoder bias", remedy);
  return "";
}

void write_sae_as(const std::string& dir, const SaeDirectory& s, Layout to, const json& converted_from) {
  const std::string reason = why_not_exact(s, to);
  if (!reason.empty()) runtime_error("cannot write this SAE in the ", layout_name(to), " layout exactly: ", reason);
  if (to == Layout::sparsify) {
    write_sparsify_files(dir, s);
    return;
  }
  const bool with_msae_json = to == Layout::msae;
  if (s.format == "msae") {
    json m = s.msae_json.is_object() && field(s.msae_json, "config") ? s.msae_json : json::object();
    if (with_msae_json && m.empty()) {  // e.g. after SAELens's save_model, which keeps cfg.json only
      m = {{"format", "msae-sae"}, {"format_version", 1}, {"msae_version", version_string()},
           {"git_commit", git_commit()}, {"config", config_json(s.sae)}};
      // The hook, which cfg.json's metadata carried, back where msae's writers take it.
      json hook = json::object();
      const json meta = source_metadata(s.source_cfg);
      for (const char* key : {"model_name", "hook_name", "context_size", "prepend_bos"})
        if (meta.contains(key) && !meta[key].is_null()) hook[key] = meta[key];
      if (!hook.empty()) m["hook"] = hook;
    }
    if (with_msae_json && !converted_from.is_null()) m["converted_from"] = converted_from;
    write_msae_files(dir, s.sae, s.params, m, source_metadata(s.source_cfg), with_msae_json);
    return;
  }
  json files = json::object();
  files["sae_weights.safetensors"] =
      write_saelens_weights(dir, s.params, true, s.format == "saelens-jumprelu" ? s.params.rule.thresholds : std::vector<float>{});
  io::write_text_file_atomic(dir + "/cfg.json", foreign_saelens_cfg(s).dump(2) + "\n");
  if (!with_msae_json) return;
  // msae.json without "config": the reader takes the SAE by cfg.json's architecture, as SAELens does.
  json m = {{"format", "msae-sae"}, {"format_version", 1}, {"msae_version", version_string()},
            {"git_commit", git_commit()}, {"source_format", s.format}};
  if (!converted_from.is_null()) m["converted_from"] = converted_from;
  m["files"] = files;
  io::write_text_file_atomic(dir + "/msae.json", m.dump(2) + "\n");
}

json convert_sae_dir(const std::string& from_arg, Layout to, const std::string& out_arg, bool overwrite) {
  const std::string from = io::without_trailing_slash(from_arg), out = io::without_trailing_slash(out_arg);
  if (out.empty()) usage_error("convert: --out is empty");
  std::error_code ec1, ec2;
  if (std::filesystem::weakly_canonical(from, ec1) == std::filesystem::weakly_canonical(out, ec2) && !ec1 && !ec2)
    usage_error("convert: --out ", out, " is the --from directory; write the converted SAE to another directory");
  if (io::path_exists(out) && !overwrite)
    usage_error("output directory ", out, " exists; pass --overwrite to replace it");
  const SaeDirectory s = read_sae_dir(from);
  const std::string reason = why_not_exact(s, to);
  if (!reason.empty())
    runtime_error(from, " (", s.format, ") cannot be written in the ", layout_name(to), " layout exactly: ", reason);
  const io::OutputLock lock = io::lock_output(out, "msae convert");
  io::report_leftovers(io::clean_leftovers(out));
  io::PendingOutput pending(out);
  write_sae_as(pending.dir(), s, to, json{{"dir", from}, {"format", s.format}});
  pending.commit(overwrite);
  json files = json::array();
  for (const char* f : {"cfg.json", "sae_weights.safetensors", "sae.safetensors", "msae.json"})
    if (io::path_exists(out + "/" + f)) files.push_back(f);
  return {{"from", from}, {"from_format", s.format}, {"to", layout_name(to)}, {"out", out}, {"files", files},
          {"d_in", s.params.d}, {"d_sae", s.params.D}, {"arch", arch_name(s.sae.arch)}};
}

}  // namespace msae::saedir
