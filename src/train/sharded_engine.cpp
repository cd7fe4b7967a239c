// The sharded engine: the sparse engine's step with the latents divided among the processes of an MPI job
// (docs/distributed.md). Each process keeps its shard's parameters, gradients, Adam moments and dead
// counters; b_dec, the threshold and the variant state are whole on every process and stay equal because
// every process applies the same update to the same (summed) values. Parameters never travel during
// training; the host views (checkpoints, evaluation, export) gather the shards onto the root process.
#include <algorithm>
#include <cstring>

#include "msae/comm.h"
#include "msae/engine.h"

namespace msae::train {
namespace {

class ShardedEngine final : public Engine {
 public:
  ShardedEngine(const TrainOptions& options, SaeParams params, comm::Comm& comm)
      : options_(options), comm_(comm), d_(params.d), D_(params.D) {
    MSAE_ASSERT(params.d == options_.sae.d_in && params.D == options_.sae.d_sae);
    for (int p = 0; p < comm_.size(); ++p) layouts_.push_back(shard_latents(options_.sae, p, comm_.size()));
    const LatentShard& mine = layouts_[comm_.rank()];
    MSAE_ASSERT(!mine.global_ids.empty(), "process ", comm_.rank(), " has no latents");
    local_ = slice(params);
    LatentShard with_comm = mine;
    with_comm.comm = &comm_;
    kernel_ = make_sparse_shard_engine(options_.sparse_engine, std::move(with_comm));
    grads_ = SaeGrads::zeros(d_, local_.D);
    latents_.n_inactive.assign(local_.D, 0);
    variants_ = VariantState(options_.sae, options_.seed);
    host_.d = d_;
    host_.D = D_;
  }

  const char* name() const override { return "sparse"; }

  // The host step on the shard: grads_.sum_squares is the sum over every process (the shard kernel adds
  // it), so the clip is global; the geometric-median b_dec is computed on the root and sent, so that every
  // process starts from the same bits.
  const StepStats& step(const float* x) override {
    // The views gathered for the last checkpoint are stale now (valid until the next step, engine.h): their
    // whole-SAE tensors go, so the root holds them only while a checkpoint or the export needs them.
    host_.W_enc_t = host_.W_dec = host_.b_enc = Tensor{};
    host_opt_ = AdamState{};
    host_latents_ = LatentState{};
    grad_norm_ = host_step(options_, *kernel_, x, local_, grads_, opt_, latents_, variants_, stats_, [&](const float* b) {
      std::vector<float> median(static_cast<size_t>(d_));
      if (comm_.rank() == 0) median = geometric_median(b, options_.batch, d_);
      comm_.broadcast(median.data(), d_ * static_cast<int64_t>(sizeof(float)), 0);
      return median;
    });
    return stats_;
  }

  // Host views: collective (every process calls them in the same order); complete on the root, where the
  // shards are gathered into whole tensors. Elsewhere they hold the shapes and the per-SAE values (b_dec,
  // threshold, Adam step) with empty per-latent tensors.
  const SaeParams& params() const override {
    host_.threshold = local_.threshold;
    host_.rule = local_.rule;
    host_.b_dec = local_.b_dec;
    gather_rows(local_.W_enc_t, d_, host_.W_enc_t, {D_, d_});
    gather_rows(local_.W_dec, d_, host_.W_dec, {D_, d_});
    gather_rows(local_.b_enc, 1, host_.b_enc, {D_});
    return host_;
  }
  SaeParams& mutable_params() override {
    MSAE_ASSERT(false, "the parameters of a sharded run cannot be written through a host view");
    return host_;
  }
  const LatentState& latent_state() const override {
    std::vector<char> bytes;
    std::vector<int64_t> counts;
    comm_.gatherv(latents_.n_inactive.data(), static_cast<int64_t>(latents_.n_inactive.size() * sizeof(int64_t)),
                  bytes, counts, 0);
    host_latents_.n_inactive.clear();
    if (comm_.rank() == 0) {
      host_latents_.n_inactive.assign(static_cast<size_t>(D_), 0);
      const char* at = bytes.data();
      for (const LatentShard& s : layouts_)
        for (const int64_t id : s.global_ids) {
          std::memcpy(&host_latents_.n_inactive[id], at, sizeof(int64_t));
          at += sizeof(int64_t);
        }
    }
    return host_latents_;
  }
  const AdamState& optimizer() const override {
    host_opt_.t = opt_.t;
    if (opt_.m.W_dec.data.empty()) {  // no step yet: no moments anywhere
      host_opt_.m = host_opt_.v = SaeGrads{};
      return host_opt_;
    }
    for (auto [local, host] : {std::pair{&opt_.m, &host_opt_.m}, std::pair{&opt_.v, &host_opt_.v}}) {
      host->b_dec = local->b_dec;
      gather_rows(local->W_enc_t, d_, host->W_enc_t, {D_, d_});
      gather_rows(local->W_dec, d_, host->W_dec, {D_, d_});
      gather_rows(local->b_enc, 1, host->b_enc, {D_});
    }
    return host_opt_;
  }
  const VariantState& variant_state() const override { return variants_; }
  double last_grad_norm() const override { return grad_norm_; }
  float threshold() const override { return local_.threshold; }

  // Every process passes the whole checkpoint (each reads it) and keeps its shard.
  void restore(SaeParams params, AdamState opt, LatentState latents) override {
    MSAE_ASSERT(params.d == d_ && params.D == D_);
    MSAE_ASSERT(static_cast<int64_t>(latents.n_inactive.size()) == D_);
    local_ = slice(params);
    opt_.t = opt.t;
    if (opt.m.W_dec.data.empty()) {
      opt_.m = opt_.v = SaeGrads{};
    } else {
      opt_.m = slice_grads(opt.m);
      opt_.v = slice_grads(opt.v);
    }
    const std::vector<int64_t>& ids = layouts_[comm_.rank()].global_ids;
    latents_.n_inactive.resize(ids.size());
    for (size_t j = 0; j < ids.size(); ++j) latents_.n_inactive[j] = latents.n_inactive[ids[j]];
  }
  void restore_variants(const nlohmann::json& state) override { variants_.restore(state); }
  std::vector<std::pair<std::string, double>> last_phase_seconds() const override {
    return kernel_->last_phase_seconds();
  }
  const StepEngine* step_kernel() const override { return kernel_.get(); }

 private:
  // The shard's rows of a (D, width) tensor.
  Tensor slice_rows(const Tensor& full, int64_t width) const {
    const std::vector<int64_t>& ids = layouts_[comm_.rank()].global_ids;
    const int64_t n = static_cast<int64_t>(ids.size());
    Tensor t = width == 1 ? Tensor({n}) : Tensor({n, width});
    for (int64_t j = 0; j < n; ++j)
      std::memcpy(t.ptr() + j * width, full.ptr() + ids[j] * width, static_cast<size_t>(width) * sizeof(float));
    return t;
  }
  SaeParams slice(const SaeParams& full) const {
    SaeParams p;
    p.d = d_;
    p.D = static_cast<int64_t>(layouts_[comm_.rank()].global_ids.size());
    p.W_enc_t = slice_rows(full.W_enc_t, d_);
    p.W_dec = slice_rows(full.W_dec, d_);
    p.b_enc = slice_rows(full.b_enc, 1);
    p.b_dec = full.b_dec;
    p.threshold = full.threshold;
    p.rule = full.rule;
    return p;
  }
  SaeGrads slice_grads(const SaeGrads& full) const {
    SaeGrads g;
    g.W_enc_t = slice_rows(full.W_enc_t, d_);
    g.W_dec = slice_rows(full.W_dec, d_);
    g.b_enc = slice_rows(full.b_enc, 1);
    g.b_dec = full.b_dec;
    return g;
  }
  // Gathers every process's rows of a (D_local, width) tensor into `full` (shape `shape`) on the root, each
  // row at its global latent; `full` is left empty elsewhere.
  void gather_rows(const Tensor& local, int64_t width, Tensor& full, std::vector<int64_t> shape) const {
    comm_.gatherv(local.ptr(), static_cast<int64_t>(local.numel() * sizeof(float)), gather_bytes_, gather_counts_, 0);
    if (comm_.rank() != 0) {
      full = Tensor{};
      return;
    }
    if (full.shape != shape) full = Tensor(shape);
    const char* at = gather_bytes_.data();
    for (const LatentShard& s : layouts_)
      for (const int64_t id : s.global_ids) {
        std::memcpy(full.ptr() + id * width, at, static_cast<size_t>(width) * sizeof(float));
        at += width * sizeof(float);
      }
  }

  TrainOptions options_;
  comm::Comm& comm_;
  int64_t d_, D_;
  std::vector<LatentShard> layouts_;  // every process's shard
  std::unique_ptr<StepEngine> kernel_;
  SaeParams local_;
  SaeGrads grads_;
  AdamState opt_;
  LatentState latents_;
  StepStats stats_;
  double grad_norm_ = 0;
  VariantState variants_;
  // host views (complete on the root only)
  mutable SaeParams host_;
  mutable AdamState host_opt_;
  mutable LatentState host_latents_;
  mutable std::vector<char> gather_bytes_;
  mutable std::vector<int64_t> gather_counts_;
};

}  // namespace

std::unique_ptr<Engine> make_sharded_engine(const TrainOptions& options, SaeParams params, comm::Comm& comm) {
  return std::make_unique<ShardedEngine>(options, std::move(params), comm);
}

}  // namespace msae::train
