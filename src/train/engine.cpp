// The host engine (the whole optimizer step in host memory around a StepEngine kernel) and the engine
// registry behind --engine, make_engine and engine_names.
#include "msae/engine.h"

#include <algorithm>

#if MSAE_HAVE_CUDA
#include "msae/cuda.h"
#endif

namespace msae::train {

HostEngine::HostEngine(const TrainOptions& options, SaeParams params, std::unique_ptr<StepEngine> kernel)
    : options_(options), kernel_(std::move(kernel)), params_(std::move(params)) {
  MSAE_ASSERT(kernel_ != nullptr);
  MSAE_ASSERT(params_.d == options_.sae.d_in && params_.D == options_.sae.d_sae);
  grads_ = SaeGrads::zeros(params_.d, params_.D);
  latents_.n_inactive.assign(params_.D, 0);
  variants_ = VariantState(options_.sae, options_.seed);
}

double host_step(const TrainOptions& options, StepEngine& kernel, const float* x, SaeParams& params, SaeGrads& grads,
                 AdamState& opt, LatentState& latents, VariantState& variants, StepStats& stats,
                 const std::function<std::vector<float>(const float* x)>& median) {
  if (opt.t == 0 && options.bdec_geometric_median) {
    const std::vector<float> m = median ? median(x) : geometric_median(x, options.batch, params.d);
    std::copy(m.begin(), m.end(), params.b_dec.data.begin());
  }
  const SaeConfig& cfg = variants.before_step(options.sae, latents);
  stats = kernel.forward_backward(cfg, x, options.batch, params, latents, grads);
  kernels::AdamHyper adam = options.adam;
  if (options.lr_warmup_steps > 0 || options.lr_decay_start >= 0)
    adam.lr = static_cast<float>(adam.lr * lr_factor(options, opt.t));
  const double grad_norm = apply_update(cfg, adam, options.max_grad_norm, params, grads, opt);
  variants.after_step(options.sae, stats, params, opt, latents);
  return grad_norm;
}

const StepStats& HostEngine::step(const float* x) {
  grad_norm_ = host_step(options_, *kernel_, x, params_, grads_, opt_, latents_, variants_, stats_);
  return stats_;
}

void HostEngine::restore(SaeParams params, AdamState opt, LatentState latents) {
  MSAE_ASSERT(params.d == params_.d && params.D == params_.D);
  MSAE_ASSERT(static_cast<int64_t>(latents.n_inactive.size()) == params_.D);
  params_ = std::move(params);
  opt_ = std::move(opt);
  latents_ = std::move(latents);
}

namespace {

#if MSAE_HAVE_CUDA
constexpr size_t kBuiltinEngines = 4;
#else
constexpr size_t kBuiltinEngines = 3;
#endif

std::vector<EngineEntry>& registry() {
  static std::vector<EngineEntry> entries = [] {
    std::vector<EngineEntry> e;
    e.push_back({"reference", "the dense oracle: follows the published PyTorch code, every step dense (slow)",
                 [](const SparseEngineOptions&) { return make_reference_engine(); }, nullptr,
                 [](const SaeConfig& cfg) { return make_reference_engine()->unsupported(cfg); }});
    e.push_back({"sparse", "the fast default: one dense GEMM, everything else sparse (no --arch relu_l1)",
                 [](const SparseEngineOptions& o) { return make_sparse_engine(o); }, nullptr,
                 [](const SaeConfig& cfg) { return make_sparse_engine()->unsupported(cfg); }});
    e.push_back({"screened",
                 "the sparse engine with the BatchTopK selection screened by an int8 GEMM with a proven error bound, "
                 "the candidates computed exactly (docs/performance.md)",
                 [](const SparseEngineOptions& o) {
                   SparseEngineOptions s = o;
                   s.screen = true;
                   return make_sparse_engine(s);
                 },
                 nullptr, [](const SaeConfig& cfg) { return make_sparse_engine()->unsupported(cfg); }});
#if MSAE_HAVE_CUDA
    // Built with -DMSAE_CUDA=ON (docs/cuda.md). Without a usable GPU its unsupported() says so for every
    // config: the tests that loop over the registry skip it, and --engine cuda is a usage error naming why.
    e.push_back({"cuda", "the whole step on one NVIDIA GPU (sm_90), state on the device (matryoshka, batchtopk)",
                 [](const SparseEngineOptions&) { return make_cuda_step(); },
                 [](const TrainOptions& o, SaeParams p) { return make_cuda_engine(o, std::move(p)); },
                 [](const SaeConfig& cfg) { return cuda_engine_unsupported(cfg); }});
#endif
    MSAE_ASSERT(e.size() == kBuiltinEngines);
    return e;
  }();
  return entries;
}

}  // namespace

const std::vector<EngineEntry>& engine_registry() { return registry(); }

void register_engine(EngineEntry entry) {
  MSAE_ASSERT(!entry.name.empty() && entry.make_step && entry.unsupported, "engine entry '", entry.name,
              "' lacks a name, make_step or unsupported");
  std::vector<EngineEntry>& r = registry();
  MSAE_ASSERT(std::none_of(r.begin(), r.end(), [&](const EngineEntry& e) { return e.name == entry.name; }),
              "engine '", entry.name, "' registered twice");
  r.push_back(std::move(entry));
}

bool unregister_engine(const std::string& name) {
  std::vector<EngineEntry>& r = registry();
  const auto it = std::find_if(r.begin(), r.end(), [&](const EngineEntry& e) { return e.name == name; });
  if (it == r.end()) return false;
  MSAE_ASSERT(it - r.begin() >= static_cast<std::ptrdiff_t>(kBuiltinEngines), "built-in engine '", name,
              "' cannot be unregistered");
  r.erase(it);
  return true;
}

const EngineEntry& find_engine(const std::string& name) {
  for (const EngineEntry& e : registry())
    if (e.name == name) return e;
  std::string list;
  for (const EngineEntry& e : registry()) list += "\n  " + e.name + ": " + e.description;
  usage_error("--engine: unknown training engine '", name, "'; registered engines:", list);
}

std::unique_ptr<Engine> make_training_engine(const TrainOptions& options, SaeParams params) {
  const EngineEntry& e = find_engine(options.engine);
  comm::Comm& world = comm::world();
  if (world.size() > 1) {
    if (e.name != "sparse")
      usage_error("--engine ", e.name, " trains in one process; across the ", world.size(),
                  " processes of this MPI job only --engine sparse runs (sharded over the latents)");
    LatentShard shard = shard_latents(options.sae, world.rank(), world.size());
    shard.comm = &world;
    if (shard.global_ids.empty())
      usage_error(world.size(), " processes leave process ", world.rank(), " no latents (the smallest group has ",
                  *std::min_element(options.sae.group_sizes.begin(), options.sae.group_sizes.end()),
                  "); start fewer processes");
    if (const std::string why = make_sparse_shard_engine(options.sparse_engine, shard)->unsupported(options.sae);
        !why.empty())
      usage_error("--engine sparse does not implement ", why, " (start one process for it)");
    return make_sharded_engine(options, std::move(params), world);
  }
  if (const std::string why = e.unsupported(options.sae); !why.empty())
    usage_error("--engine ", e.name, " does not implement ", why, "; use --engine reference");
  if (e.make) return e.make(options, std::move(params));
  return std::make_unique<HostEngine>(options, std::move(params), e.make_step(options.sparse_engine));
}

std::vector<std::string> engine_names() {
  std::vector<std::string> names;
  for (const EngineEntry& e : registry()) names.push_back(e.name);
  return names;
}

std::unique_ptr<StepEngine> make_engine(const std::string& name, const SparseEngineOptions& sparse) {
  return find_engine(name).make_step(sparse);
}

}  // namespace msae::train
