// GPT-2 forward pass (float32, row-major, batched over N sequences of T tokens).
#include <cmath>
#include <nlohmann/json.hpp>

#include "msae/io.h"
#include "msae/kernels.h"
#include "msae/lm.h"

namespace msae::lm {

using kernels::Trans;

Site parse_site(const std::string& name) {
  if (name == "resid_pre") return Site::resid_pre;
  if (name == "attn_out") return Site::attn_out;
  if (name == "mlp_out") return Site::mlp_out;
  if (name == "resid_post") return Site::resid_post;
  usage_error("unknown hook site '", name, "'; expected resid_pre, attn_out, mlp_out or resid_post");
}

const char* site_name(Site s) {
  switch (s) {
    case Site::resid_pre: return "resid_pre";
    case Site::attn_out: return "attn_out";
    case Site::mlp_out: return "mlp_out";
    case Site::resid_post: return "resid_post";
  }
  return "?";
}

ModelConfig read_model_config(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(io::read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    runtime_error(path, ": not valid JSON (", e.what(), ")");
  }
  if (!j.is_object()) runtime_error(path, ": expected a JSON object (an HF GPT-2 config.json)");
  if (j.contains("model_type") && j["model_type"].is_string() && j["model_type"] != "gpt2")
    runtime_error(path, ": model_type is '", j["model_type"].get<std::string>(),
                  "'; msae runs the GPT-2 architecture only (model_type \"gpt2\")");
  if (j.contains("activation_function") && j["activation_function"].is_string()) {
    const std::string act = j["activation_function"];
    if (act != "gelu_new" && act != "gelu_pytorch_tanh")
      runtime_error(path, ": activation_function '", act, "' is not supported; msae implements gelu_new "
                    "(the tanh approximation GPT-2 uses)");
  }
  ModelConfig c;
  auto get_int = [&](const char* key, const char* alt, bool required, int64_t def) -> int64_t {
    const char* k = j.contains(key) ? key : (alt && j.contains(alt) ? alt : nullptr);
    if (!k) {
      if (required) runtime_error(path, ": missing field '", key, "' (GPT-2 config.json)");
      return def;
    }
    if (!j[k].is_number_integer() || j[k].get<int64_t>() <= 0)
      runtime_error(path, ": field '", k, "' must be a positive integer, found ", j[k].dump());
    return j[k].get<int64_t>();
  };
  c.vocab_size = get_int("vocab_size", nullptr, true, 0);
  c.n_positions = get_int("n_positions", "n_ctx", true, 0);
  c.n_embd = get_int("n_embd", nullptr, true, 0);
  c.n_layer = get_int("n_layer", nullptr, true, 0);
  c.n_head = get_int("n_head", nullptr, true, 0);
  if (j.contains("layer_norm_epsilon")) {
    if (!j["layer_norm_epsilon"].is_number() || j["layer_norm_epsilon"].get<double>() <= 0)
      runtime_error(path, ": layer_norm_epsilon must be a positive number");
    c.layer_norm_epsilon = j["layer_norm_epsilon"].get<float>();
  }
  if (c.n_embd % c.n_head != 0)
    runtime_error(path, ": n_embd (", c.n_embd, ") is not divisible by n_head (", c.n_head, ")");
  return c;
}

Model Model::from_tensors(const ModelConfig& cfg, std::map<std::string, Tensor> tensors, const std::string& source) {
  // Accept HF names with or without the "transformer." prefix (GPT2LMHeadModel vs GPT2Model).
  std::map<std::string, Tensor> t;
  for (auto& [name, tensor] : tensors) {
    std::string n = name;
    if (n.rfind("transformer.", 0) == 0) n = n.substr(12);
    if (t.count(n)) runtime_error(source, ": tensor '", n, "' appears twice (with and without 'transformer.')");
    t.emplace(n, std::move(tensor));
  }
  const int64_t d = cfg.n_embd, V = cfg.vocab_size;
  auto take = [&](const std::string& name, std::vector<int64_t> shape) {
    auto f = t.find(name);
    if (f == t.end())
      runtime_error(source, ": missing tensor '", name, "' ", shape_str(shape),
                    "; expected an HF GPT-2 checkpoint (names as in `gpt2`'s model.safetensors)");
    if (f->second.shape != shape)
      runtime_error(source, ": tensor '", name, "' has shape ", shape_str(f->second.shape), ", expected ",
                    shape_str(shape), " from config.json (HF Conv1D layout is (in, out))");
    Tensor out = std::move(f->second);
    t.erase(f);
    return out;
  };
  Model m;
  m.cfg_ = cfg;
  m.wte_ = take("wte.weight", {V, d});
  m.wpe_ = take("wpe.weight", {cfg.n_positions, d});
  for (int64_t i = 0; i < cfg.n_layer; ++i) {
    const std::string p = "h." + std::to_string(i) + ".";
    Block b;
    b.ln1_w = take(p + "ln_1.weight", {d});
    b.ln1_b = take(p + "ln_1.bias", {d});
    b.attn_w = take(p + "attn.c_attn.weight", {d, 3 * d});
    b.attn_b = take(p + "attn.c_attn.bias", {3 * d});
    b.proj_w = take(p + "attn.c_proj.weight", {d, d});
    b.proj_b = take(p + "attn.c_proj.bias", {d});
    b.ln2_w = take(p + "ln_2.weight", {d});
    b.ln2_b = take(p + "ln_2.bias", {d});
    b.fc_w = take(p + "mlp.c_fc.weight", {d, 4 * d});
    b.fc_b = take(p + "mlp.c_fc.bias", {4 * d});
    b.mlp_proj_w = take(p + "mlp.c_proj.weight", {4 * d, d});
    b.mlp_proj_b = take(p + "mlp.c_proj.bias", {d});
    m.blocks_.push_back(std::move(b));
  }
  m.lnf_w_ = take("ln_f.weight", {d});
  m.lnf_b_ = take("ln_f.bias", {d});
  if (t.count("lm_head.weight")) m.lm_head_ = take("lm_head.weight", {V, d});
  std::string unknown;
  for (const auto& [name, tensor] : t) {
    const bool mask = name.size() > 10 && (name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias"));
    if (!mask) unknown += (unknown.empty() ? "" : ", ") + name;
  }
  if (!unknown.empty())
    runtime_error(source, ": unexpected tensors: ", unknown, " (more layers than config.json's n_layer = ",
                  cfg.n_layer, "? or not a GPT-2 checkpoint)");
  // A stored lm_head equal to wte is the tied case: drop the copy.
  if (m.lm_head_.numel() && m.lm_head_.data == m.wte_.data) m.lm_head_ = Tensor();
  return m;
}

Model Model::load(const std::string& dir) {
  if (!io::is_directory(dir)) usage_error("--model ", dir, ": not a directory (expected config.json + model.safetensors)");
  const ModelConfig cfg = read_model_config(dir + "/config.json");
  const std::string wpath = dir + "/model.safetensors";
  if (!io::path_exists(wpath)) {
    const bool bin = io::path_exists(dir + "/pytorch_model.bin");
    runtime_error(wpath, ": not found", bin ? " (the directory has pytorch_model.bin: msae reads safetensors only; "
                                              "convert it, or download model.safetensors)" : "");
  }
  io::SafetensorsFile f = io::read_safetensors(wpath);
  return from_tensors(cfg, std::move(f.tensors), wpath);
}

namespace {

// y (R, d) = LayerNorm(x) * w + b, biased variance (PyTorch), statistics in double.
void layer_norm(const float* x, int64_t R, int64_t d, const float* w, const float* b, float eps, float* y) {
  parallel_for(R, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * d;
      float* yr = y + r * d;
      double mean = 0;
      for (int64_t i = 0; i < d; ++i) mean += xr[i];
      mean /= static_cast<double>(d);
      double var = 0;
      for (int64_t i = 0; i < d; ++i) var += (xr[i] - mean) * (xr[i] - mean);
      var /= static_cast<double>(d);
      const float inv = static_cast<float>(1.0 / std::sqrt(var + eps));
      const float mu = static_cast<float>(mean);
      for (int64_t i = 0; i < d; ++i) yr[i] = (xr[i] - mu) * inv * w[i] + b[i];
    }
  }, 16);
}

// C (R, n) = A (R, k) @ W (k, n) + bias (n)
void linear(const float* A, int64_t R, int64_t k, const Tensor& W, const Tensor& bias, float* C) {
  const int64_t n = W.shape[1];
  parallel_for(R, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) std::copy(bias.ptr(), bias.ptr() + n, C + r * n);
  }, 64);
  kernels::sgemm(Trans::no, Trans::no, R, n, k, 1.0f, A, k, W.ptr(), n, 1.0f, C, n);
}

void call_hooks(const std::vector<Hook>& hooks, int64_t layer, Site site, float* x, int64_t R) {
  for (const Hook& h : hooks)
    if (h.layer == layer && h.site == site && h.fn) h.fn(x, R);
}

}  // namespace

Tensor Model::run(const int32_t* ids, int64_t N, int64_t T, const std::vector<Hook>& hooks, int64_t last_layer,
                  bool final_ln) const {
  const int64_t d = cfg_.n_embd, H = cfg_.n_head, hd = d / H, R = N * T;
  if (T <= 0 || N <= 0) usage_error("forward: empty batch (N = ", N, ", T = ", T, ")");
  if (T > cfg_.n_positions)
    usage_error("context of ", T, " tokens exceeds the model's n_positions = ", cfg_.n_positions, "; use a smaller --ctx");
  for (int64_t i = 0; i < R; ++i)
    if (ids[i] < 0 || ids[i] >= cfg_.vocab_size)
      usage_error("token id ", ids[i], " is outside the model's vocabulary [0, ", cfg_.vocab_size,
                  "); was the text tokenized with this model's tokenizer?");
  for (const Hook& h : hooks)
    if (h.layer < 0 || h.layer >= cfg_.n_layer)
      usage_error("hook layer ", h.layer, " is outside [0, ", cfg_.n_layer, ") (n_layer of the model)");
  const int64_t L = last_layer < 0 ? cfg_.n_layer : std::min<int64_t>(cfg_.n_layer, last_layer + 1);

  Tensor x({R, d});
  parallel_for(R, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* te = wte_.ptr() + static_cast<int64_t>(ids[r]) * d;
      const float* pe = wpe_.ptr() + (r % T) * d;
      float* xr = x.ptr() + r * d;
      for (int64_t i = 0; i < d; ++i) xr[i] = te[i] + pe[i];
    }
  }, 64);
  FloatBuffer h(static_cast<size_t>(R * d)), qkv(static_cast<size_t>(R * 3 * d)), att(static_cast<size_t>(R * d)),
      branch(static_cast<size_t>(R * d)), mlp(static_cast<size_t>(R * 4 * d));
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float eps = cfg_.layer_norm_epsilon;
  for (int64_t l = 0; l < L; ++l) {
    const Block& b = blocks_[static_cast<size_t>(l)];
    call_hooks(hooks, l, Site::resid_pre, x.ptr(), R);
    layer_norm(x.ptr(), R, d, b.ln1_w.ptr(), b.ln1_b.ptr(), eps, h.data());
    linear(h.data(), R, d, b.attn_w, b.attn_b, qkv.data());  // (R, 3d) = [q | k | v]
    // Causal attention, one (sequence, head) per task; softmax in float with max subtraction.
    parallel_for(N * H, [&](int64_t j0, int64_t j1, int) {
      std::vector<float> p(static_cast<size_t>(T));
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t n = j / H, hh = j % H;
        const float* base = qkv.data() + n * T * 3 * d;
        for (int64_t t = 0; t < T; ++t) {
          const float* q = base + t * 3 * d + hh * hd;
          float mx = -INFINITY;
          for (int64_t s = 0; s <= t; ++s) {
            const float* k = base + s * 3 * d + d + hh * hd;
            float dot = 0;
            for (int64_t i = 0; i < hd; ++i) dot += q[i] * k[i];
            p[s] = dot * scale;
            mx = std::max(mx, p[s]);
          }
          float sum = 0;
          for (int64_t s = 0; s <= t; ++s) {
            p[s] = std::exp(p[s] - mx);
            sum += p[s];
          }
          const float inv = 1.0f / sum;
          float* o = att.data() + (n * T + t) * d + hh * hd;
          for (int64_t i = 0; i < hd; ++i) o[i] = 0;
          for (int64_t s = 0; s <= t; ++s) {
            const float* v = base + s * 3 * d + 2 * d + hh * hd;
            const float w = p[s] * inv;
            for (int64_t i = 0; i < hd; ++i) o[i] += w * v[i];
          }
        }
      }
    });
    linear(att.data(), R, d, b.proj_w, b.proj_b, branch.data());
    call_hooks(hooks, l, Site::attn_out, branch.data(), R);
    parallel_for(R * d, [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; ++i) x.data[i] += branch[i];
    }, 4096);
    layer_norm(x.ptr(), R, d, b.ln2_w.ptr(), b.ln2_b.ptr(), eps, h.data());
    linear(h.data(), R, d, b.fc_w, b.fc_b, mlp.data());  // (R, 4d)
    const float c = std::sqrt(2.0f / static_cast<float>(M_PI));
    parallel_for(R * 4 * d, [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; ++i) {
        const float v = mlp[i];
        mlp[i] = 0.5f * v * (1.0f + std::tanh(c * (v + 0.044715f * v * v * v)));
      }
    }, 4096);
    linear(mlp.data(), R, 4 * d, b.mlp_proj_w, b.mlp_proj_b, branch.data());
    call_hooks(hooks, l, Site::mlp_out, branch.data(), R);
    parallel_for(R * d, [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; ++i) x.data[i] += branch[i];
    }, 4096);
    call_hooks(hooks, l, Site::resid_post, x.ptr(), R);
  }
  if (L == cfg_.n_layer && final_ln) {
    layer_norm(x.ptr(), R, d, lnf_w_.ptr(), lnf_b_.ptr(), eps, h.data());
    std::copy(h.begin(), h.end(), x.data.begin());
  }
  return x;
}

void Model::logits(const float* hidden, int64_t R, float* out) const {
  const int64_t d = cfg_.n_embd, V = cfg_.vocab_size;
  kernels::sgemm(Trans::no, Trans::yes, R, V, d, 1.0f, hidden, d, unembed().ptr(), d, 0.0f, out, V);
}

Tensor Model::forward_logits(const int32_t* ids, int64_t N, int64_t T, const std::vector<Hook>& hooks) const {
  const Tensor h = run(ids, N, T, hooks);
  Tensor out({N * T, cfg_.vocab_size});
  logits(h.ptr(), N * T, out.ptr());
  return out;
}

std::vector<float> Model::next_token_losses(const int32_t* ids, int64_t N, int64_t T,
                                            const std::vector<Hook>& hooks, bool reference) const {
  const Tensor h = run(ids, N, T, hooks);
  const int64_t V = cfg_.vocab_size, d = cfg_.n_embd;
  std::vector<float> loss(static_cast<size_t>(N * (T - 1 > 0 ? T - 1 : 0)));
  if (T < 2) return loss;
  // Rows predicting a next token: positions 0..T-2 of every sequence, packed (N*(T-1), d).
  const int64_t R = N * (T - 1);
  FloatBuffer rows(static_cast<size_t>(R * d));
  std::vector<int32_t> targets(static_cast<size_t>(R));
  for (int64_t n = 0; n < N; ++n) {
    std::copy(h.ptr() + n * T * d, h.ptr() + (n * T + T - 1) * d, rows.data() + n * (T - 1) * d);
    std::copy(ids + n * T + 1, ids + (n + 1) * T, targets.data() + n * (T - 1));
  }
  (reference ? token_cross_entropy_reference : token_cross_entropy)(rows.data(), R, d, unembed().ptr(), V,
                                                                    targets.data(), loss.data());
  return loss;
}

}  // namespace msae::lm
