// The SAE output directory: SAELens layout (cfg.json + sae_weights.safetensors, architecture "jumprelu"),
// plus msae.json (full config, training summary) written by the caller's json.
#include <algorithm>

#include "msae/io.h"
#include "msae/train.h"

namespace msae::train {
namespace {

using nlohmann::json;

// (rows, cols) -> (cols, rows)
Tensor transposed(const float* src, int64_t rows, int64_t cols) {
  Tensor out({cols, rows});
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out.data[c * rows + r] = src[r * cols + c];
  return out;
}

json saelens_cfg(const SaeConfig& cfg) {
  json meta = {
      {"model_name", nullptr},
      {"hook_name", nullptr},
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
    runtime_error(path, ": tensor '", name, "' is missing; an SAE needs W_enc (d, D), W_dec (D, d), b_enc (D), b_dec (d)");
  if (it->second.shape != shape)
    runtime_error(path, ": tensor '", name, "' has shape ", shape_str(it->second.shape), ", expected ", shape_str(shape));
  return it->second;
}

// Fills cfg from msae.json when present, else from cfg.json's metadata, else a single-group batchtopk.
SaeConfig config_from_files(const json& msae, const json& saelens, int64_t d, int64_t D, const std::string& dir) {
  SaeConfig cfg;
  cfg.d_in = d;
  cfg.d_sae = D;
  cfg.arch = Arch::batchtopk;
  try {
    if (msae.contains("config")) {
      const json& c = msae["config"];
      cfg.arch = parse_arch(c.at("arch").get<std::string>());
      cfg.k = c.at("k").get<int64_t>();
      cfg.group_sizes = c.at("group_sizes").get<std::vector<int64_t>>();
      cfg.encoder_bias = c.value("encoder_bias", false);
      cfg.dead_after_batches = c.value("dead_after_batches", int64_t{20});
      cfg.aux_k = c.value("aux_k", int64_t{512});
      cfg.aux_coef = c.value("aux_coef", 1.0f / 32.0f);
      if (c.contains("variants")) variant_config_from_json(c["variants"], cfg);
    } else if (saelens.contains("metadata") && saelens["metadata"].is_object() &&
               saelens["metadata"].contains("matryoshka_group_sizes")) {
      const json& m = saelens["metadata"];
      cfg.group_sizes = m["matryoshka_group_sizes"].get<std::vector<int64_t>>();
      if (m.contains("msae_arch")) cfg.arch = parse_arch(m["msae_arch"].get<std::string>());
      if (m.contains("msae_k")) cfg.k = m["msae_k"].get<int64_t>();
    }
    // An SAE from elsewhere: an encoder bias is part of its forward pass.
    if (!msae.contains("config")) cfg.encoder_bias = true;
    cfg.k = std::min(cfg.k, D);
    if (cfg.arch == Arch::batchtopk && cfg.group_sizes.size() > 1) cfg.arch = Arch::matryoshka;
    cfg.finalize();
  } catch (const json::exception& e) {
    runtime_error(dir, ": malformed configuration (msae.json / cfg.json): ", e.what());
  } catch (const Error& e) {
    runtime_error(dir, ": inconsistent configuration: ", e.what());
  }
  return cfg;
}

json read_json_if_present(const std::string& path) {
  if (!io::path_exists(path)) return json::object();
  try {
    json j = json::parse(io::read_text_file(path));
    if (!j.is_object()) runtime_error(path, ": expected a JSON object");
    return j;
  } catch (const json::exception& e) {
    runtime_error(path, ": not valid JSON (", e.what(), ")");
  }
}

}  // namespace

void write_sae_files(const std::string& dir, const SaeConfig& cfg, const SaeParams& p, const json& msae_json) {
  const Tensor W_enc = transposed(p.W_enc_t.ptr(), p.D, p.d);  // (d, D)
  const Tensor threshold({p.D}, p.threshold);
  io::write_safetensors(dir + "/sae_weights.safetensors",
                        {{"W_enc", {p.d, p.D}, W_enc.ptr()},
                         {"W_dec", {p.D, p.d}, p.W_dec.ptr()},
                         {"b_enc", {p.D}, p.b_enc.ptr()},
                         {"b_dec", {p.d}, p.b_dec.ptr()},
                         {"threshold", {p.D}, threshold.ptr()}},
                        {{"format", "pt"}});
  io::write_text_file_atomic(dir + "/cfg.json", saelens_cfg(cfg).dump(2) + "\n");
  io::write_text_file_atomic(dir + "/msae.json", msae_json.dump(2) + "\n");
}

SaeDirectory read_sae_dir(const std::string& dir) {
  if (!io::is_directory(dir)) runtime_error("SAE directory '", dir, "' does not exist or is not a directory");
  const std::string weights = dir + "/sae_weights.safetensors";
  if (!io::path_exists(weights))
    runtime_error(dir, ": no sae_weights.safetensors; expected a SAELens-layout directory (cfg.json + sae_weights.safetensors)");
  const io::SafetensorsFile file = io::read_safetensors(weights);
  auto w_enc = file.tensors.find("W_enc");
  if (w_enc == file.tensors.end() || w_enc->second.shape.size() != 2)
    runtime_error(weights, ": tensor 'W_enc' with shape (d_in, d_sae) is missing");
  const int64_t d = w_enc->second.shape[0], D = w_enc->second.shape[1];
  const json saelens = read_json_if_present(dir + "/cfg.json");
  if (saelens.contains("d_in") && saelens["d_in"].is_number_integer() && saelens["d_in"].get<int64_t>() != d)
    runtime_error(dir, "/cfg.json: d_in is ", saelens["d_in"].get<int64_t>(), " but W_enc has d_in ", d);
  if (saelens.contains("d_sae") && saelens["d_sae"].is_number_integer() && saelens["d_sae"].get<int64_t>() != D)
    runtime_error(dir, "/cfg.json: d_sae is ", saelens["d_sae"].get<int64_t>(), " but W_enc has d_sae ", D);

  SaeDirectory out;
  out.msae_json = read_json_if_present(dir + "/msae.json");
  out.sae = config_from_files(out.msae_json, saelens, d, D, dir);
  out.params = SaeParams::zeros(d, D);
  out.params.W_enc_t = transposed(w_enc->second.ptr(), d, D);
  out.params.W_dec = require_tensor(file, weights, "W_dec", {D, d});
  out.params.b_dec = require_tensor(file, weights, "b_dec", {d});
  if (file.tensors.count("b_enc")) out.params.b_enc = require_tensor(file, weights, "b_enc", {D});
  auto thr = file.tensors.find("threshold");
  if (thr != file.tensors.end()) {
    if (thr->second.numel() != D && thr->second.numel() != 1)
      runtime_error(weights, ": tensor 'threshold' has shape ", shape_str(thr->second.shape), ", expected (", D, ",)");
    const float t0 = thr->second.data[0];
    for (float t : thr->second.data)
      if (t != t0)
        runtime_error(weights, ": per-latent thresholds differ; msae SAEs use one global threshold (",
                      "a JumpReLU SAE from another trainer is not supported yet)");
    out.params.threshold = t0;
  }
  return out;
}

SaeParams load_init_params(const std::string& dir, int64_t d, int64_t D) {
  SaeDirectory sae = read_sae_dir(dir);
  if (sae.params.d != d)
    usage_error("--init ", dir, ": the SAE has d_in ", sae.params.d, " but the data has width ", d);
  if (sae.params.D != D)
    usage_error("--init ", dir, ": the SAE has d_sae ", sae.params.D, " but --d-sae is ", D,
                " (omit --d-sae to take it from --init)");
  return std::move(sae.params);
}

}  // namespace msae::train
