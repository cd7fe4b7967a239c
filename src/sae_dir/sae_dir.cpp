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

// `hook`: msae.json's "hook" (model_name, hook_name, ...) of a run on a harvest directory; null otherwise.
json saelens_cfg(const SaeConfig& cfg, const json& hook) {
  auto hook_field = [&](const char* key) -> json {
    return hook.is_object() && hook.contains(key) && hook[key].is_string() ? hook[key] : json(nullptr);
  };
  json meta = {
      {"model_name", hook_field("model_name")},
      {"hook_name", hook_field("hook_name")},
      {"msae_arch", arch_name(cfg.arch)},
      {"msae_k", cfg.k},
      {"matryoshka_group_sizes", cfg.group_sizes},
      {"matryoshka_group_boundaries", cfg.boundaries()},
      {"msae_version", version_string()},
      // Variants and switches (docs/variants.md). With sampled prefixes the groups above are only the
      // evaluation ladder: every prefix length was trained.
      {"msae_variants", variant_config_json(cfg)},
  };
  return json{{"architecture", "jumprelu"},
              {"d_in", cfg.d_in},
              {"d_sae", cfg.d_sae},
              {"dtype", "float32"},
              {"device", "cpu"},
              {"apply_b_dec_to_input", true},
              {"normalize_activations", "none"},
              {"reshape_activations", "none"},
              {"metadata", meta}};
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

// A SAELens directory written by another trainer (cfg.json has no msae metadata).
void read_saelens_foreign(SaeDirectory& out, const json& cfg, const io::SafetensorsFile& file,
                          const std::string& weights, const std::string& cfg_file) {
  const int64_t d = out.params.d, D = out.params.D;
  const std::string arch = string_field(cfg, "architecture", "standard", cfg_file);
  // SAELens <= 5 named the activation "activation_fn_str"; kwargs carried TopK's k.
  std::string act = string_field(cfg, "activation_fn", "", cfg_file);
  if (act.empty()) act = string_field(cfg, "activation_fn_str", "relu", cfg_file);
  const json* kwargs = field(cfg, "activation_fn_kwargs");
  const int64_t kwargs_k = kwargs ? int_field(*kwargs, "k", 0, cfg_file) : 0;

  const std::string norm = string_field(cfg, "normalize_activations", "none", cfg_file);
  // expected_average_only_in is a training-time scale that SAELens folds into the weights on saving; its
  // inference path is the identity, as here. The per-row normalizations change every reconstruction.
  if (norm != "none" && norm != "expected_average_only_in")
    runtime_error(cfg_file, ": normalize_activations '", norm, "' is not supported (per-row input normalization); ",
                  "msae imports 'none' and 'expected_average_only_in'");
  out.params.rule.center_input = bool_field(cfg, "apply_b_dec_to_input", true, cfg_file);
  if (bool_field(cfg, "rescale_acts_by_decoder_norm", false, cfg_file))
    runtime_error(cfg_file, ": rescale_acts_by_decoder_norm = true is not supported; fold the decoder norms into the ",
                  "encoder first (SAELens fold_W_dec_norm) and save again");

  out.sae.arch = Arch::batchtopk;
  out.sae.encoder_bias = true;
  out.params.b_enc = require_tensor(file, weights, "b_enc", {D});
  if (arch == "jumprelu") {
    const Tensor& thr = require_tensor(file, weights, "threshold", {D});
    out.params.rule.thresholds.assign(thr.data.begin(), thr.data.end());
    out.format = "saelens-jumprelu";
  } else if (arch == "standard") {
    if (act == "topk") {
      if (kwargs_k < 1)
        runtime_error(cfg_file, ": a standard SAE with activation_fn 'topk' needs activation_fn_kwargs.k (a positive integer)");
      set_topk(out, kwargs_k, cfg_file);
      out.format = "saelens-topk";
    } else if (act == "relu") {
      out.params.rule.thresholds.assign(static_cast<size_t>(D), 0.0f);  // ReLU = JumpReLU at 0
      out.format = "saelens-standard";
    } else {
      runtime_error(cfg_file, ": activation_fn '", act, "' is not supported; expected relu or topk");
    }
  } else if (arch == "topk") {
    const int64_t k = field(cfg, "k") ? int_field(cfg, "k", 0, cfg_file) : kwargs_k;
    if (k < 1) runtime_error(cfg_file, ": a topk SAE needs \"k\" (a positive integer)");
    set_topk(out, k, cfg_file);
    out.format = "saelens-topk";
  } else {
    runtime_error(cfg_file, ": architecture '", arch, "' is not supported; msae imports SAELens jumprelu, standard and topk ",
                  "SAEs (a batchtopk or matryoshka SAELens SAE is saved as jumprelu)");
  }
  (void)d;
}

// An EleutherAI sparsify directory: cfg.json + sae.safetensors (one hookpoint).
void read_sparsify(SaeDirectory& out, const std::string& dir, const std::string& weights, bool allow_nonfinite) {
  const std::string cfg_file = dir + "/cfg.json";
  if (!io::path_exists(cfg_file))
    runtime_error(dir, ": has sae.safetensors but no cfg.json; a sparsify SAE directory holds both");
  const json cfg = read_json_if_present(cfg_file);
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
  const Tensor W_enc = transposed(p.W_enc_t.ptr(), p.D, p.d);  // (d, D)
  const Tensor threshold({p.D}, p.threshold);
  json files = json::object();
  files["sae_weights.safetensors"] = io::write_safetensors(dir + "/sae_weights.safetensors",
                                                           {{"W_enc", {p.d, p.D}, W_enc.ptr()},
                                                            {"W_dec", {p.D, p.d}, p.W_dec.ptr()},
                                                            {"b_enc", {p.D}, p.b_enc.ptr()},
                                                            {"b_dec", {p.d}, p.b_dec.ptr()},
                                                            {"threshold", {p.D}, threshold.ptr()}},
                                                           {{"format", "pt"}})
                                         .to_json();
  const json hook = msae_json.is_object() && msae_json.contains("hook") ? msae_json["hook"] : json(nullptr);
  io::write_text_file_atomic(dir + "/cfg.json", saelens_cfg(cfg, hook).dump(2) + "\n");
  // msae.json last, with the weights' digest: a directory caught between two of these renames (new
  // weights beside an older msae.json) is refused when read instead of loading as a different SAE.
  json m = msae_json;
  m["files"] = files;
  io::write_text_file_atomic(dir + "/msae.json", m.dump(2) + "\n");
  return files;
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
      const json* meta = field(saelens, "metadata");
      // The hook it was trained at: in "metadata" (msae, SAELens 6) or "meta", or at the top level (SAELens 5).
      for (const json* src : {meta, field(saelens, "meta"), &saelens})
        if (src) {
          if (out.hook_name.empty()) out.hook_name = string_field(*src, "hook_name", "", cfg_file);
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

}  // namespace msae::saedir
