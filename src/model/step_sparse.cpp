// The sparse training step ("sparse" engine): SPEC.md with one dense GEMM (the encoder forward) and
// everything else O(B*k*d) (DESIGN.md "Performance design"):
//   encode    x_cent = x - b_dec; pre = x_cent @ W_enc (+ b_enc)               dense GEMM, (B, D)
//   select    BatchTopK / TopK -> CSR codes (ids ascending), threshold EMA, CSC transpose, dead counters,
//             AuxK selection among the dead latents
//   rows      per row: prefix reconstructions as snapshots of one running sum, losses, AuxK residual,
//             suffix sums S_g of the prefix-loss gradients, grad z = <W_dec[i], S_g(i)>
//   latents   per latent (from the CSC, so threads never write the same row): grad W_dec[i], grad
//             W_enc^T[i], grad b_enc[i] and its share of grad b_dec; untouched rows are written as zeros
// Threads: msae's pool (msae::parallel); the GEMM is split over the same pool (kernels::sgemm).
// Allocation: buffers live in the engine and only grow, so after the first step at a given shape the
// step allocates nothing.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "msae/kernels.h"
#include "msae/model.h"

namespace msae {
namespace {

using kernels::Trans;

inline void axpy(float* __restrict y, float a, const float* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] += a * x[j];
}

inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += a[j] * b[j];
  return s;
}

inline float sq_diff(const float* __restrict a, const float* __restrict b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) {
    const float t = a[j] - b[j];
    s += t * t;
  }
  return s;
}

// Hints the cache to fetch the n floats at x (one prefetch per 64-byte line).
inline void prefetch_row(const float* x, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) __builtin_prefetch(x + j);
}
constexpr int64_t kPrefetchAhead = 2;  // entries

template <class T>
void grow(T& buffer, size_t n) {
  if (buffer.size() < n) buffer.resize(n);
}

constexpr int kMaxThreads = 256;

// Per-thread partial results, padded against false sharing.
struct alignas(64) ThreadPart {
  double mse_bdec = 0, l_aux = 0;
  double mse_prefix[64] = {};
};

class SparseEngine final : public StepEngine {
 public:
  explicit SparseEngine(SparseEngineOptions options, LatentShard shard = {})
      : options_(options), shard_(std::move(shard)) {}
  const char* name() const override { return options_.screen ? "screened" : "sparse"; }
  std::vector<std::pair<std::string, double>> last_counters() const override {
    if (!screened_) return {};
    const kernels::ScreenStats& st = screener_.stats();
    return {{"screen_candidates", static_cast<double>(st.candidates)},
            {"screen_candidates_per_kept", st.keep > 0 ? static_cast<double>(st.candidates) / st.keep : 0.0},
            {"screen_exact_per_kept", st.keep > 0 ? static_cast<double>(st.exact) / st.keep : 0.0},
            {"screen_path", static_cast<double>(st.path)},
            {"screen_fp32_fallback", st.fp32_fallback ? 1.0 : 0.0}};
  }
  std::string kernel_info() const override { return options_.screen ? screener_.kernel() : std::string(); }

  std::vector<std::pair<std::string, double>> last_phase_seconds() const override {
    std::vector<std::pair<std::string, double>> p = {{"encode", t_encode_}, {"select", t_select_},
                                                     {"auxk_select", t_aux_}, {"rows", t_rows_},
                                                     {"latents", t_latents_}};
    // A shard: the time inside the cross-process selections and sums (part of the phases above).
    if (sharded()) p.emplace_back("exchange", t_exchange_);
    if (screened_) {  // parts of encode (quantize, gemm) and select (the rest)
      const kernels::ScreenStats& st = screener_.stats();
      p.insert(p.end(), {{"screen_quantize", st.seconds_quantize}, {"screen_gemm", st.seconds_gemm},
                         {"screen_bound", st.seconds_bound}, {"screen_candidates", st.seconds_candidates},
                         {"screen_select", st.seconds_select}});
    }
    return p;
  }

  // Variants: per-prefix loss weights, the b_dec term switch, stop-gradient between groups (S_g = e_g),
  // per-group selection and sampled prefixes (plain per-batch boundaries) are implemented here; the
  // ReLU + L1 SAE is not (it has no sparse selection to exploit).
  std::string unsupported(const SaeConfig& cfg) const override {
    if (cfg.arch == Arch::relu_l1) return opt("arch") + " relu_l1 (dense ReLU codes with an L1 penalty)";
    if (sharded() && !cfg.group_k.empty()) return opt("group_k") + " (per-group selection) across processes";
    if (sharded() && cfg.reorder_every > 0)
      return opt("reorder_every") + " (latent reordering moves latents between processes)";
    return {};
  }

  const kernels::SparseCodes* last_codes() const override { return &codes_; }
  const kernels::SparseCodes* last_aux_codes() const override { return &aux_; }

  const StepStats& forward_backward(const SaeConfig& cfg, const float* x, int64_t B, SaeParams& p,
                                    LatentState& state, SaeGrads& grads) override {
    if (const std::string why = unsupported(cfg); !why.empty())
      usage_error(opt("engine"), " sparse does not implement ", why, "; use ", opt("engine"), " reference");
    const int64_t d = p.d, D = p.D, G = cfg.num_groups();
    MSAE_ASSERT(G >= 1 && G <= 64, "groups: ", G);
    comm::Comm* const comm = shard_.comm;
    MSAE_ASSERT(!comm || (static_cast<int64_t>(shard_.global_ids.size()) == D && cfg.d_sae == shard_.d_sae),
                "shard of ", shard_.global_ids.size(), " latents for params of ", D);
    MSAE_ASSERT(grads.W_dec.numel() == D * d && grads.W_enc_t.numel() == D * d && grads.b_dec.numel() == d &&
                grads.b_enc.numel() == D);
    const int64_t N = B * d;
    const int nt = std::min(num_threads(), kMaxThreads);
    StepStats& stats = stats_;
    stats.reset();
    t_exchange_ = 0;
    bounds_.resize(static_cast<size_t>(G));  // cfg.boundaries(), into a buffer that is kept
    std::partial_sum(cfg.group_sizes.begin(), cfg.group_sizes.end(), bounds_.begin());
    if (comm)  // a shard: the local latents below each boundary (its ids ascend)
      for (int64_t& m : bounds_)
        m = std::lower_bound(shard_.global_ids.begin(), shard_.global_ids.end(), m) - shard_.global_ids.begin();
    Timer timer;

    // ---- encode
    grow(x_cent_, static_cast<size_t>(N));
    grow(pre_, static_cast<size_t>(B * D));
    float* x_cent = x_cent_.data();
    float* pre = pre_.data();
    const float* b_dec = p.b_dec.ptr();
    parallel_for(
        B,
        [&](int64_t lo, int64_t hi, int) {
          for (int64_t r = lo; r < hi; ++r)
#pragma omp simd
            for (int64_t j = 0; j < d; ++j) x_cent[r * d + j] = x[r * d + j] - b_dec[j];
        },
        64);
    // pre = x_cent @ W_enc (+ b_enc). With the bias, pre is first filled with b_enc rows and the GEMM
    // accumulates onto it (beta = 1): that fill replaces the zeroing OpenBLAS does for beta = 0, so the
    // bias costs no extra pass over the (B, D) matrix (a read and a write of 256 MiB at the bench shape).
    screened_ = options_.screen && !comm && cfg.group_k.empty() && cfg.arch != Arch::topk;
    if (screened_) {
      // The whole selection happens here (kernels::Screener); pre_ is its scratch, not pre-activations.
      last_cut_ = screener_.batch_topk(x_cent, B, d, p.W_enc_t.ptr(), cfg.encoder_bias ? p.b_enc.ptr() : nullptr, D,
                                       std::min(cfg.k * B, B * D), pre, codes_);
    } else if (cfg.encoder_bias) {
      const float* b_enc = p.b_enc.ptr();
      parallel_for(
          B, [&](int64_t lo, int64_t hi, int) { for (int64_t r = lo; r < hi; ++r) std::memcpy(pre + r * D, b_enc, D * sizeof(float)); },
          16);
    }
    if (!screened_)
      kernels::sgemm(Trans::no, Trans::yes, B, D, d, 1.0f, x_cent, d, p.W_enc_t.ptr(), d, cfg.encoder_bias ? 1.0f : 0.0f,
                     pre, D);
    t_encode_ = timer.seconds();
    timer.reset();

    // ---- select, threshold EMA, CSC, dead counters
    float smallest = 0.0f;
    if (screened_) {
      smallest = last_cut_;
    } else if (!cfg.group_k.empty()) {
      select_per_group(pre, B, D, bounds_, cfg.group_k, cfg.arch == Arch::topk, codes_);
      smallest = min_value(codes_);
    } else if (cfg.arch == Arch::topk) {
      kernels::row_topk(pre, B, D, cfg.k, codes_, select_);
      if (comm) {
        const Exchange timed(t_exchange_);
        smallest = kernels::dist_row_cut(codes_, cfg.k, shard_.global_ids, *comm, dist_);
      } else {
        smallest = min_value(codes_);
      }
    } else if (comm) {
      // The shard's own top k*B (its hint: the smallest of its last candidates), then the global cut.
      kernels::batch_topk(pre, B, D, std::min(cfg.k * B, B * D), codes_, select_, last_local_cut_);
      last_local_cut_ = min_value(codes_);
      const Exchange timed(t_exchange_);
      smallest = kernels::dist_batch_cut(codes_, cfg.k * B, shard_.global_ids, shard_.d_sae, *comm, dist_);
    } else {
      const float hint = last_cut_;  // the cut drifts slowly from step to step
      smallest = kernels::batch_topk(pre, B, D, cfg.k * B, codes_, select_, hint);
      last_cut_ = smallest;
    }
    const int64_t nnz = codes_.nnz();
    // Counted over every process: the kept entries (then the dead latents, below).
    int64_t totals[2] = {nnz, 0};
    kernels::csr_to_csc(codes_, csc_);
    state.n_inactive.resize(D, 0);
    dead_.reserve(D);
    dead_.clear();
    for (int64_t i = 0; i < D; ++i) {
      int64_t& n = state.n_inactive[i];
      n = csc_.col_ptr[i + 1] > csc_.col_ptr[i] ? 0 : n + 1;
      if (n >= cfg.dead_after_batches) dead_.push_back(static_cast<int32_t>(i));
    }
    totals[1] = static_cast<int64_t>(dead_.size());
    if (comm) {
      const Exchange timed(t_exchange_);
      comm->allreduce_sum(totals, 2);
    }
    stats.l0 = static_cast<double>(totals[0]) / static_cast<double>(B);
    stats.n_dead = totals[1];
    // (1 - 0.01f) == 0.99f exactly, so the default is SPEC's 0.99f * t + 0.01f * cut
    if (totals[0] > 0 && state.update_threshold)
      p.threshold = (1.0f - cfg.threshold_rate) * p.threshold + cfg.threshold_rate * smallest;
    if (cfg.reorder_every > 0) {  // latent reordering statistic: batch mean of z^2 per latent
      state.batch_sq_act.assign(D, 0.0);
      for (int64_t e = 0; e < nnz; ++e)
        state.batch_sq_act[codes_.ids[e]] += static_cast<double>(codes_.vals[e]) * codes_.vals[e] / B;
    }
    t_select_ = timer.seconds();
    timer.reset();

    // ---- AuxK selection
    const int64_t aux_keep = std::min<int64_t>(cfg.aux_k, stats.n_dead);
    aux_.row_ptr.assign(B + 1, 0);
    aux_.ids.clear();
    aux_.vals.clear();
    aux_.rows = B;
    aux_.cols = D;
    if (aux_keep > 0 && screened_) {
      // No pre-activations were formed: the dead latents' columns by one GEMM over their encoder rows
      // (the fp32 engine's values of those columns, to round-off), then the ids mapped back.
      const int64_t n = static_cast<int64_t>(dead_.size());
      grow(aux_W_, static_cast<size_t>(n * d));
      aux_ident_.resize(static_cast<size_t>(n));
      for (int64_t s = 0; s < n; ++s) {
        std::memcpy(aux_W_.data() + s * d, p.W_enc_t.ptr() + static_cast<int64_t>(dead_[s]) * d, d * sizeof(float));
        aux_ident_[s] = static_cast<int32_t>(s);
      }
      if (cfg.encoder_bias)
        for (int64_t r = 0; r < B; ++r)
          for (int64_t s = 0; s < n; ++s) pre[r * n + s] = p.b_enc.ptr()[dead_[s]];
      kernels::sgemm(Trans::no, Trans::yes, B, n, d, 1.0f, x_cent, d, aux_W_.data(), d, cfg.encoder_bias ? 1.0f : 0.0f,
                     pre, n);
      kernels::aux_topk(pre, B, n, aux_ident_, aux_keep, aux_, aux_select_);
      aux_.cols = D;
      for (int32_t& id : aux_.ids) id = dead_[id];
    } else if (aux_keep > 0) {
      kernels::aux_topk(pre, B, D, dead_, aux_keep, aux_, aux_select_);
    }
    if (aux_keep > 0 && comm) {
      const Exchange timed(t_exchange_);
      kernels::dist_row_cut(aux_, aux_keep, shard_.global_ids, *comm, dist_);
    }
    // A shard takes part in the AuxK collectives below whenever some process has AuxK entries.
    const bool aux_local = aux_.nnz() > 0;
    const bool aux_candidate = comm ? aux_keep > 0 : aux_local;
    // Dense AuxK (GEMMs over the dead columns) when its entries fill enough of the (B, n_dead) block;
    // only the sparse products need the entries per latent (CSC).
    aux_dense_ = aux_local && static_cast<double>(aux_.nnz()) >=
                                  options_.aux_dense_min_density * static_cast<double>(B * std::max<int64_t>(1, dead_.size()));
    if (aux_local && !aux_dense_) kernels::csr_to_csc(aux_, aux_csc_);
    t_aux_ = timer.seconds();
    timer.reset();

    // ---- rows: reconstructions, losses, suffix sums, grad z
    grow(S_, static_cast<size_t>(N * G));
    grow(gz_, static_cast<size_t>(nnz));
    if (aux_candidate) {
      grow(q_, static_cast<size_t>(N));
      grow(ga_, static_cast<size_t>(aux_.nnz()));
    }
    grow(row_scratch_, static_cast<size_t>(nt) * static_cast<size_t>((G + 1) * d + 16));
    grow(gb_dec_part_, static_cast<size_t>(nt) * static_cast<size_t>(d));
    const int64_t t_bdec = cfg.bdec_loss_term ? 1 : 0;  // L_rec = (t mse(b_dec) + sum_g w_g mse_g) / (G + t)
    const double rec_scale_d = 2.0 / (static_cast<double>(N) * static_cast<double>(G + t_bdec));
    const float rec_scale = static_cast<float>(rec_scale_d);
    gscale_.resize(G);
    for (int64_t g = 0; g < G; ++g) gscale_[g] = rec_scale * cfg.prefix_weight(g);
    const float aux_scale = static_cast<float>(2.0 * cfg.aux_coef / static_cast<double>(N));
    // AuxK decode a = sum of the AuxK entries' decoder rows (into q_, which row_pass turns into q in place);
    // a == 0 everywhere: SPEC says no AuxK loss and no gradient through it.
    bool use_aux = false;
    if (aux_dense_) {
      aux_dense_decode(B, p);
    } else if (aux_local) {
      kernels::pack_for_codes(aux_, p.W_dec.ptr(), d, aux_W_dec_);
      kernels::csr_times_dense(aux_, aux_W_dec_, q_.data());
    } else if (aux_candidate) {
      std::fill(q_.data(), q_.data() + N, 0.0f);  // a shard without AuxK entries adds nothing
    }
    // The rows this process works on: all of them alone; across processes, its share [r0, r1). Every
    // process's partial prefix sums (and AuxK decode) are summed onto the owner of each row
    // (reduce-scatter); the owners do the per-row work; an all-gather then gives every process every
    // row's suffix sums (and q) for its latents' gradients. The same traffic as one allreduce, and the
    // per-row work divided among the processes.
    int64_t r0 = 0, r1 = B;
    if (comm) {
      shard_partial_sums(cfg, B, p, nt);
      const int P = comm->size();
      r0 = B * comm->rank() / P;
      r1 = B * (comm->rank() + 1) / P;
      row_parts_.resize(static_cast<size_t>(P) + 1);
      q_parts_.resize(static_cast<size_t>(P) + 1);
      for (int j = 0; j <= P; ++j) {
        row_parts_[j] = B * j / P * G * d;
        q_parts_[j] = B * j / P * d;
      }
      const Exchange timed(t_exchange_);
      comm->reduce_scatter_sum(S_.data(), row_parts_);
      if (aux_candidate) {
        comm->reduce_scatter_sum(q_.data(), q_parts_);
        int64_t any = std::any_of(q_.data() + r0 * d, q_.data() + r1 * d, [](float v) { return v != 0.0f; }) ? 1 : 0;
        comm->allreduce_max(&any, 1);
        use_aux = any != 0;
      }
    } else if (aux_candidate) {
      use_aux = std::any_of(q_.data(), q_.data() + N, [](float v) { return v != 0.0f; });
    }
    row_pass(cfg, x, r0, r1, p, use_aux, rec_scale, aux_scale, nt);
    if (comm) {
      {
        const Exchange timed(t_exchange_);
        comm->allgather_parts(S_.data(), row_parts_);
        if (use_aux) comm->allgather_parts(q_.data(), q_parts_);
      }
      shard_grad_z(cfg, B, p, nt);
    }
    if (use_aux && aux_dense_)
      aux_dense_backward(B, d, nt);
    else if (use_aux && aux_local)
      kernels::csr_row_dots(aux_, aux_W_dec_, q_.data(), ga_.data());  // grad a_i = <W_dec[i], q>
    stats.aux_active = use_aux;
    double mse_bdec = 0, l_aux = 0;
    stats.mse_prefix.assign(G, 0.0);
    for (int t = 0; t < nt; ++t) {
      mse_bdec += parts_[t].mse_bdec;
      l_aux += parts_[t].l_aux;
      for (int64_t g = 0; g < G; ++g) stats.mse_prefix[g] += parts_[t].mse_prefix[g];
    }
    const double var_x = column_variance(x, r0, r1, B, d, nt);
    if (comm) {  // the sums over this process's rows, then over every process's (with x's column sums)
      row_sums_.assign(static_cast<size_t>(2 + G + 2 * d), 0.0);
      row_sums_[0] = mse_bdec;
      row_sums_[1] = l_aux;
      std::copy(stats.mse_prefix.begin(), stats.mse_prefix.end(), row_sums_.begin() + 2);
      std::copy(col_sums_.begin(), col_sums_.end(), row_sums_.begin() + 2 + G);
      {
        const Exchange timed(t_exchange_);
        comm->allreduce_sum(row_sums_.data(), static_cast<int64_t>(row_sums_.size()));
      }
      mse_bdec = row_sums_[0];
      l_aux = row_sums_[1];
      std::copy(row_sums_.begin() + 2, row_sums_.begin() + 2 + G, stats.mse_prefix.begin());
      std::copy(row_sums_.begin() + 2 + G, row_sums_.end(), col_sums_.begin());
    }
    stats.mse_bdec = mse_bdec / static_cast<double>(N);
    double rec_sum = cfg.bdec_loss_term ? stats.mse_bdec : 0.0;
    for (int64_t g = 0; g < G; ++g) rec_sum += cfg.prefix_weight(g) * (stats.mse_prefix[g] /= static_cast<double>(N));
    stats.l_rec = rec_sum / static_cast<double>(G + t_bdec);
    stats.l_aux = use_aux ? cfg.aux_coef * l_aux / static_cast<double>(N) : 0.0;
    stats.loss = stats.l_rec + stats.l_aux;
    stats.var_x = comm ? variance_from_sums(B, d) : var_x;
    t_rows_ = timer.seconds();
    timer.reset();

    // ---- latents: grad W_dec, grad W_enc^T, grad b_enc, grad b_dec
    latent_pass(cfg, B, p, grads, use_aux && aux_local, nt);  // a shard without AuxK entries has no AuxK work
    t_latents_ = timer.seconds();
    return stats;
  }

 private:
  bool sharded() const { return shard_.comm != nullptr; }

  // A shard's part of every prefix reconstruction without b_dec: S[r, g] = sum of z[r, i] W_dec[i] over the
  // local latents i of groups <= g (snapshots of one running sum, as row_pass takes them on one process).
  void shard_partial_sums(const SaeConfig& cfg, int64_t B, const SaeParams& p, int nt) {
    const int64_t d = p.d, G = cfg.num_groups();
    const float* W_dec = p.W_dec.ptr();
    const int64_t* bounds = bounds_.data();
    float* S = S_.data();
    parallel(
        [&](int tid, int n) {
          for (int64_t r = B * tid / n; r < B * (tid + 1) / n; ++r) {
            float* Sr = S + r * G * d;
            std::memset(Sr, 0, static_cast<size_t>(d) * sizeof(float));
            float* run = Sr;  // the running sum lives in the current group's slot
            int64_t g = 0;
            for (int64_t e = codes_.row_ptr[r]; e < codes_.row_ptr[r + 1]; ++e) {
              const int64_t id = codes_.ids[e];
              while (id >= bounds[g]) {
                std::memcpy(Sr + (g + 1) * d, run, d * sizeof(float));
                run = Sr + (++g) * d;
              }
              axpy(run, codes_.vals[e], W_dec + id * d, d);
            }
            while (g + 1 < G) {
              std::memcpy(Sr + (g + 1) * d, run, d * sizeof(float));
              run = Sr + (++g) * d;
            }
          }
        },
        nt);
  }

  static float min_value(const kernels::SparseCodes& c) {
    float m = 0.0f;
    if (c.nnz() > 0) m = *std::min_element(c.vals.begin(), c.vals.end());
    return m;
  }

  // Mean over columns of the batch variance of x, from rows [r0, r1) of the B; also leaves the column sums
  // and sums of squares of those rows in col_sums_ (d each), which a shard sums over processes.
  double column_variance(const float* x, int64_t r0, int64_t r1, int64_t B, int64_t d, int nt) {
    grow(colstat_, static_cast<size_t>(2 * nt * d));
    std::fill(colstat_.begin(), colstat_.begin() + 2 * nt * d, 0.0);
    parallel(
        [&](int tid, int n) {
          double* mean = colstat_.data() + 2 * tid * d;
          double* sq = mean + d;
          for (int64_t r = r0 + (r1 - r0) * tid / n; r < r0 + (r1 - r0) * (tid + 1) / n; ++r)
            for (int64_t j = 0; j < d; ++j) {
              const double v = x[r * d + j];
              mean[j] += v;
              sq[j] += v * v;
            }
        },
        nt);
    col_sums_.assign(static_cast<size_t>(2 * d), 0.0);
    for (int64_t j = 0; j < d; ++j)
      for (int t = 0; t < nt; ++t) {
        col_sums_[j] += colstat_[2 * t * d + j];
        col_sums_[d + j] += colstat_[2 * t * d + d + j];
      }
    return variance_from_sums(B, d);
  }
  double variance_from_sums(int64_t B, int64_t d) const {
    double total = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      const double m = col_sums_[j] / static_cast<double>(B);
      total += col_sums_[d + j] / static_cast<double>(B) - m * m;
    }
    return total / static_cast<double>(d);
  }

  // grad z of row r's kept entries: <W_dec[i], S_g(i)> with Sr the row's suffix sums (B, G, d).
  void grad_z_of_row(int64_t r, const float* Sr, const float* W_dec, int64_t d) {
    int64_t g = 0;
    for (int64_t e = codes_.row_ptr[r]; e < codes_.row_ptr[r + 1]; ++e) {
      const int64_t id = codes_.ids[e];
      while (id >= bounds_[g]) ++g;
      gz_[e] = dot(W_dec + id * d, Sr + g * d, d);
    }
  }

  // A shard's grad z for its kept entries of every row, from the gathered suffix sums (row_pass does it for
  // its rows on one process).
  void shard_grad_z(const SaeConfig& cfg, int64_t B, const SaeParams& p, int nt) {
    const int64_t d = p.d, G = cfg.num_groups();
    parallel(
        [&](int tid, int n) {
          for (int64_t r = B * tid / n; r < B * (tid + 1) / n; ++r) grad_z_of_row(r, S_.data() + r * G * d, p.W_dec.ptr(), d);
        },
        nt);
  }

  // ---- AuxK as dense GEMMs over the dead latents' columns, used when the AuxK entries are dense enough in
  // that block: with k_aux = 512 over a few thousand dead latents they fill a quarter of it, and GEMMs at
  // that density beat the sparse products (docs/performance.md, "AuxK"). n = n_dead; a dead latent's
  // column in the block is its slot.
  //   A    (B, n)  the AuxK codes, zeros elsewhere;   Wd (n, d) = W_dec[dead]
  //   a  = A @ Wd  (B, d)  into q_, which row_pass turns into q = aux_scale (a - e)
  //   GA = q @ Wd^T (B, n), masked to A's entries: the gradient of the AuxK codes (straight through)
  //   grad W_dec[dead] += A^T @ q (n, d);  grad W_enc^T[dead] += GA^T @ x_cent (n, d);  grad b_enc += sum_r GA
  void aux_dense_decode(int64_t B, const SaeParams& p) {
    const int64_t d = p.d, D = p.D, n = static_cast<int64_t>(dead_.size());
    aux_slot_.assign(static_cast<size_t>(D), -1);
    for (int64_t s = 0; s < n; ++s) aux_slot_[dead_[s]] = static_cast<int32_t>(s);
    grow(aux_A_, static_cast<size_t>(B * n));
    grow(aux_Wd_, static_cast<size_t>(n * d));
    float* A = aux_A_.data();
    float* Wd = aux_Wd_.data();
    const float* W_dec = p.W_dec.ptr();
    parallel_for(
        B,
        [&](int64_t lo, int64_t hi, int) {
          for (int64_t r = lo; r < hi; ++r) {
            float* Ar = A + r * n;
            std::memset(Ar, 0, static_cast<size_t>(n) * sizeof(float));
            for (int64_t e = aux_.row_ptr[r]; e < aux_.row_ptr[r + 1]; ++e) Ar[aux_slot_[aux_.ids[e]]] = aux_.vals[e];
          }
        },
        16);
    parallel_for(
        n,
        [&](int64_t lo, int64_t hi, int) {
          for (int64_t s = lo; s < hi; ++s) std::memcpy(Wd + s * d, W_dec + dead_[s] * d, d * sizeof(float));
        },
        64);
    kernels::sgemm(Trans::no, Trans::no, B, d, n, 1.0f, A, n, Wd, d, 0.0f, q_.data(), d);
  }

  void aux_dense_backward(int64_t B, int64_t d, int nt) {
    const int64_t n = static_cast<int64_t>(dead_.size());
    grow(aux_gWd_, static_cast<size_t>(n * d));
    grow(aux_gWe_, static_cast<size_t>(n * d));
    grow(aux_sum_ga_, static_cast<size_t>(nt) * static_cast<size_t>(n));
    float* A = aux_A_.data();
    float* GA = pre_.data();  // pre is not read after the selections, and (B, n) fits in its (B, D)
    const float* q = q_.data();
    kernels::sgemm(Trans::no, Trans::yes, B, n, d, 1.0f, q, d, aux_Wd_.data(), d, 0.0f, GA, n);
    kernels::sgemm(Trans::yes, Trans::no, n, d, B, 1.0f, A, n, q, d, 0.0f, aux_gWd_.data(), d);
    // A becomes GA masked to the AuxK entries (A > 0 exactly there: aux_topk keeps positive values only);
    // each thread also sums its rows of it per column, for grad b_enc.
    parallel(
        [&](int tid, int nthreads) {
          float* colsum = aux_sum_ga_.data() + static_cast<size_t>(tid) * static_cast<size_t>(n);
          std::fill(colsum, colsum + n, 0.0f);
          for (int64_t r = B * tid / nthreads; r < B * (tid + 1) / nthreads; ++r) {
            float* Ar = A + r * n;
            const float* Gr = GA + r * n;
#pragma omp simd
            for (int64_t s = 0; s < n; ++s) {
              const float g = Ar[s] > 0.0f ? Gr[s] : 0.0f;
              Ar[s] = g;
              colsum[s] += g;
            }
          }
        },
        nt);
    for (int t = 1; t < nt; ++t)
      for (int64_t s = 0; s < n; ++s) aux_sum_ga_[s] += aux_sum_ga_[static_cast<size_t>(t) * n + s];
    kernels::sgemm(Trans::yes, Trans::no, n, d, B, 1.0f, A, n, x_cent_.data(), d, 0.0f, aux_gWe_.data(), d);
  }

  // Rows [r0, r1): on one process all B; a shard's own rows, whose S holds the summed prefix sums.
  void row_pass(const SaeConfig& cfg, const float* x, int64_t r0, int64_t r1, const SaeParams& p, bool use_aux,
                float rec_scale, float aux_scale, int nt) {
    const int64_t d = p.d, G = cfg.num_groups();
    const float* W_dec = p.W_dec.ptr();
    const float* b_dec = p.b_dec.ptr();
    const int64_t* bounds = bounds_.data();
    float* S = S_.data();
    const bool stop_grad = cfg.stop_gradient_groups, bdec_term = cfg.bdec_loss_term, aux_detach = cfg.aux_detach;
    parallel(
        [&](int tid, int n) {
          ThreadPart& part = parts_[tid];
          part = ThreadPart{};
          float* snaps = row_scratch_.data() + static_cast<size_t>(tid) * static_cast<size_t>((G + 1) * d + 16);
          float* run = snaps + G * d;
          double* gb = gb_dec_part_.data() + static_cast<size_t>(tid) * static_cast<size_t>(d);
          std::fill(gb, gb + d, 0.0);
          double mse_bdec = 0, l_aux = 0;
          for (int64_t r = r0 + (r1 - r0) * tid / n; r < r0 + (r1 - r0) * (tid + 1) / n; ++r) {
            const float* xr = x + r * d;
            const int64_t e0 = codes_.row_ptr[r], e1 = codes_.row_ptr[r + 1];
            float* Sr = S + r * G * d;
            int64_t g = 0;
            if (shard_.comm) {  // S holds the summed prefix sums of every process (shard_partial_sums)
              for (int64_t h = 0; h < G; ++h)
#pragma omp simd
                for (int64_t j = 0; j < d; ++j) snaps[h * d + j] = b_dec[j] + Sr[h * d + j];
            } else {
              // prefix reconstructions: snapshots of one running sum (ids ascending)
              std::memcpy(run, b_dec, d * sizeof(float));
              for (int64_t e = e0; e < e1; ++e) {
                const int64_t id = codes_.ids[e];
                while (id >= bounds[g]) std::memcpy(snaps + (g++) * d, run, d * sizeof(float));
                axpy(run, codes_.vals[e], W_dec + id * d, d);
              }
              while (g < G) std::memcpy(snaps + (g++) * d, run, d * sizeof(float));
            }
            mse_bdec += sq_diff(b_dec, xr, d);
            for (int64_t h = 0; h < G; ++h) part.mse_prefix[h] += sq_diff(snaps + h * d, xr, d);
            // e_G (+ AuxK's q), then suffix sums from the last group down: S_g = S_{g+1} + e_g
            const float* rG = snaps + (G - 1) * d;
            float* SG = Sr + (G - 1) * d;
            const float scale_G = gscale_[G - 1];
#pragma omp simd
            for (int64_t j = 0; j < d; ++j) SG[j] = scale_G * (rG[j] - xr[j]);
            if (use_aux) {  // q_ holds this row's AuxK decode a; it becomes q = aux_scale (a - e)
              float* qr = q_.data() + r * d;
              float total = 0.0f;
#pragma omp simd reduction(+ : total)
              for (int64_t j = 0; j < d; ++j) {
                const float diff = qr[j] - (xr[j] - rG[j]);
                total += diff * diff;
                qr[j] = aux_scale * diff;
                SG[j] += qr[j];
              }
              l_aux += total;
            }
            if (use_aux && aux_detach) {  // detached AuxK residual: q reaches the dead latents only
#pragma omp simd
              for (int64_t j = 0; j < d; ++j) SG[j] = scale_G * (rG[j] - xr[j]);
            }
            for (int64_t h = G - 2; h >= 0; --h) {
              float* Sh = Sr + h * d;
              const float* S_next = Sh + d;
              const float* rh = snaps + h * d;
              const float scale_h = gscale_[h];
              if (stop_grad) {  // S_h = e_h: later prefixes do not reach group h's latents
#pragma omp simd
                for (int64_t j = 0; j < d; ++j) Sh[j] = scale_h * (rh[j] - xr[j]);
              } else {
#pragma omp simd
                for (int64_t j = 0; j < d; ++j) Sh[j] = S_next[j] + scale_h * (rh[j] - xr[j]);
              }
            }
            // grad b_dec: every r_g and the b_dec-only term contain b_dec once
            if (!stop_grad && bdec_term) {
              for (int64_t j = 0; j < d; ++j) gb[j] += static_cast<double>(Sr[j]) + rec_scale * (b_dec[j] - xr[j]);
            } else {
              for (int64_t j = 0; j < d; ++j) {
                double e_sum = 0.0;  // sum_g e_g (+ q): S_1 without stop-gradient, else the sum of the S_g = e_g
                if (stop_grad)
                  for (int64_t h = 0; h < G; ++h) e_sum += Sr[h * d + j];
                else
                  e_sum = Sr[j];
                gb[j] += e_sum + (bdec_term ? rec_scale * (b_dec[j] - xr[j]) : 0.0f);
              }
            }
            // grad z for the kept entries (a shard: shard_grad_z, once every row's S is gathered)
            if (!shard_.comm) grad_z_of_row(r, Sr, W_dec, d);
          }
          part.mse_bdec = mse_bdec;
          part.l_aux = l_aux;
        },
        nt);
  }

  void latent_pass(const SaeConfig& cfg, int64_t B, const SaeParams& p, SaeGrads& grads, bool use_aux, int nt) {
    const int64_t d = p.d, D = p.D, G = cfg.num_groups();
    const float* x_cent = x_cent_.data();
    const float* W_enc_t = p.W_enc_t.ptr();
    const float* S = S_.data();
    const float* q = use_aux ? q_.data() : nullptr;
    // Balance threads by work: entries (main + aux) plus one unit per row written.
    grow(split_, static_cast<size_t>(nt + 1));
    const bool aux_sparse_work = use_aux && !aux_dense_;  // (the dense AuxK's GEMMs are not in this pass)
    const int64_t aux_nnz = aux_sparse_work ? aux_.nnz() : 0;
    auto work_before = [&](int64_t i) {
      return csc_.col_ptr[i] + (aux_sparse_work ? aux_csc_.col_ptr[i] : 0) + i / 4;
    };
    const int64_t total = codes_.nnz() + aux_nnz + D / 4;
    split_[0] = 0;
    for (int t = 1; t < nt; ++t) {
      const int64_t target = total * t / nt;
      int64_t lo = split_[t - 1], hi = D;
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (work_before(mid) < target) lo = mid + 1;
        else hi = mid;
      }
      split_[t] = lo;
    }
    split_[nt] = D;
    float* gW_dec = grads.W_dec.ptr();
    float* gW_enc = grads.W_enc_t.ptr();
    float* gb_enc = grads.b_enc.ptr();
    grow(gb_dec_part2_, static_cast<size_t>(nt) * static_cast<size_t>(d));
    grow(sum_gz_, static_cast<size_t>(D));
    const bool aux_sparse = use_aux && !aux_dense_;
    if (aux_sparse) {
      kernels::pack_pair_operand(q, B, d, aux_q_);
      kernels::pack_pair_operand(x_cent, B, d, aux_x_cent_);
      if (pair_scratch_.size() < static_cast<size_t>(nt)) pair_scratch_.resize(static_cast<size_t>(nt));
    }
    double grad_sq_part[kMaxThreads] = {};
    const int64_t nnz = codes_.nnz();
    parallel(
        [&](int tid, int) {
          double* gb = gb_dec_part2_.data() + static_cast<size_t>(tid) * static_cast<size_t>(d);
          std::fill(gb, gb + d, 0.0);
          // Sum of squares of the W_dec and W_enc gradient rows, for the update's clipping norm, taken while
          // a row is still in L1 (after its AuxK entries, when there are any), so the update does not read
          // the 2 D d gradient floats an extra time.
          double grad_sq = 0.0;
          auto add_sq = [&](const float* a, const float* b) {
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int64_t j = 0; j < d; ++j) s += a[j] * a[j] + b[j] * b[j];
            grad_sq += s;
          };
          int64_t g = 0;
          for (int64_t i = split_[tid]; i < split_[tid + 1]; ++i) {
            while (i >= bounds_[g]) ++g;
            float* wd = gW_dec + i * d;
            float* we = gW_enc + i * d;
            std::memset(wd, 0, d * sizeof(float));
            std::memset(we, 0, d * sizeof(float));
            float sum_gz = 0.0f;
            for (int64_t e = csc_.col_ptr[i]; e < csc_.col_ptr[i + 1]; ++e) {
              // The two rows this entry reads are random in (B, G, d) and (B, d), mostly out of cache:
              // fetch those of the entry kPrefetchAhead places on (the next latent's, near the end of
              // this one's; its group is g but at a group boundary) while this one is summed.
              if (e + kPrefetchAhead < nnz) {
                const int64_t rp = csc_.row[e + kPrefetchAhead];
                prefetch_row(S + (rp * G + g) * d, d);
                prefetch_row(x_cent + rp * d, d);
              }
              const int64_t r = csc_.row[e], s = csc_.src[e];
              const float gzv = gz_[s];
              axpy(wd, codes_.vals[s], S + (r * G + g) * d, d);
              axpy(we, gzv, x_cent + r * d, d);
              sum_gz += gzv;
            }
            if (use_aux && aux_dense_) {  // the AuxK gradients from the GEMMs, when i is dead
              if (const int32_t slot = aux_slot_[i]; slot >= 0) {
                const float* ad = aux_gWd_.data() + static_cast<int64_t>(slot) * d;
                const float* ae = aux_gWe_.data() + static_cast<int64_t>(slot) * d;
#pragma omp simd
                for (int64_t j = 0; j < d; ++j) {
                  wd[j] += ad[j];
                  we[j] += ae[j];
                }
                sum_gz += aux_sum_ga_[slot];
              }
            }
            sum_gz_[i] = sum_gz;
            if (!aux_sparse) add_sq(wd, we);
          }
          // AuxK entries, after each latent's main entries, blocked over rows and column chunks
          // on packed copies of q and x_cent (kernels::csc_accumulate_pair): unblocked, each entry streamed
          // two rows from memory.
          if (aux_sparse)
            kernels::csc_accumulate_pair(aux_csc_, aux_.vals.data(), aux_q_, gW_dec, ga_.data(), aux_x_cent_, gW_enc,
                                         sum_gz_.data(), split_[tid], split_[tid + 1], pair_scratch_[tid]);
          for (int64_t i = split_[tid]; i < split_[tid + 1]; ++i) {
            const float sum_gz = sum_gz_[i];
            gb_enc[i] = cfg.encoder_bias ? sum_gz : 0.0f;
            grad_sq += static_cast<double>(gb_enc[i]) * gb_enc[i];
            if (aux_sparse) add_sq(gW_dec + i * d, gW_enc + i * d);
            // grad x_cent = grad_pre @ W_enc^T and x_cent = x - b_dec: grad b_dec -= sum_i (sum_r grad_pre) W_enc^T[i]
            if (sum_gz != 0.0f) {
              const float* w = W_enc_t + i * d;
              for (int64_t j = 0; j < d; ++j) gb[j] -= static_cast<double>(sum_gz) * w[j];
            }
          }
          grad_sq_part[tid] = grad_sq;
        },
        nt);
    float* gb_dec = grads.b_dec.ptr();
    double grad_sq = 0.0;
    for (int t = 0; t < nt; ++t) grad_sq += grad_sq_part[t];
    if (shard_.comm) {
      // b_dec's gradient has a part from each process's rows and a part from each shard's latents, summed
      // over processes in rank order (so every copy of b_dec gets the same bits); so is the sum of squares
      // of the shard's own gradients.
      shard_sum_.assign(static_cast<size_t>(d + 1), 0.0);
      for (int64_t j = 0; j < d; ++j)
        for (int t = 0; t < nt; ++t)
          shard_sum_[j] += gb_dec_part_[static_cast<size_t>(t) * d + j] + gb_dec_part2_[static_cast<size_t>(t) * d + j];
      shard_sum_[d] = grad_sq;
      {
        const Exchange timed(t_exchange_);
        shard_.comm->allreduce_sum(shard_sum_.data(), d + 1);
      }
      grad_sq = shard_sum_[d];
      for (int64_t j = 0; j < d; ++j) {
        gb_dec[j] = static_cast<float>(shard_sum_[j]);
        grad_sq += static_cast<double>(gb_dec[j]) * gb_dec[j];
      }
      grads.sum_squares = grad_sq;
      return;
    }
    for (int64_t j = 0; j < d; ++j) {
      double s = 0.0;
      for (int t = 0; t < nt; ++t)
        s += gb_dec_part_[static_cast<size_t>(t) * d + j] + gb_dec_part2_[static_cast<size_t>(t) * d + j];
      gb_dec[j] = static_cast<float>(s);
      grad_sq += static_cast<double>(gb_dec[j]) * gb_dec[j];
    }
    grads.sum_squares = grad_sq;
  }

  std::vector<int64_t> bounds_;
  std::vector<float> gscale_;  // (G) rec_scale * w_g
  FloatBuffer x_cent_, pre_, S_, q_, gz_, ga_, row_scratch_;
  std::vector<double> gb_dec_part_, gb_dec_part2_, colstat_;
  std::vector<int64_t> split_;
  std::vector<float> sum_gz_;
  kernels::SparseCodes codes_, aux_;
  kernels::SelectScratch select_, aux_select_;
  kernels::CscIndex csc_, aux_csc_;
  kernels::PackedCodesRows aux_W_dec_;              // the AuxK entries' decoder rows, packed
  kernels::ChunkedRows aux_q_, aux_x_cent_;         // q and x_cent packed for the AuxK latent pass
  std::vector<kernels::PairScratch> pair_scratch_;  // per thread
  std::vector<int32_t> dead_;
  // dense AuxK (aux_dense_decode / aux_dense_backward)
  SparseEngineOptions options_;
  // A shard of a distributed run (shard_.comm set), else the whole SAE.
  LatentShard shard_;
  kernels::DistScratch dist_;
  std::vector<double> shard_sum_;  // (d + 1) b_dec gradient and sum of squares, summed over processes
  std::vector<double> row_sums_;   // the rows' loss sums and x's column sums, summed over processes
  std::vector<double> col_sums_;   // (2 d) column sums and sums of squares of x over this process's rows
  std::vector<int64_t> row_parts_, q_parts_;  // (P + 1) where each process's rows start in S and q
  float last_local_cut_ = 0.0f;    // the smallest of the shard's last BatchTopK candidates (its hint)
  bool aux_dense_ = false;
  std::vector<int32_t> aux_slot_;                   // (D) a dead latent's column in A, -1 otherwise
  FloatBuffer aux_A_, aux_Wd_, aux_gWd_, aux_gWe_;  // (B, n), (n, d), (n, d), (n, d)
  std::vector<float> aux_sum_ga_;                   // (threads, n)
  ThreadPart parts_[kMaxThreads];
  StepStats stats_;
  float last_cut_ = 0.0f;
  // The screened selection (options_.screen): its kernel, and the AuxK columns' encoder rows and ids.
  kernels::Screener screener_;
  bool screened_ = false;
  FloatBuffer aux_W_;
  std::vector<int32_t> aux_ident_;
  double t_encode_ = 0, t_select_ = 0, t_aux_ = 0, t_rows_ = 0, t_latents_ = 0, t_exchange_ = 0;
  // Adds the seconds of its scope to a phase total.
  struct Exchange {
    explicit Exchange(double& total) : total_(total) {}
    ~Exchange() { total_ += timer_.seconds(); }
    double& total_;
    Timer timer_;
  };
};

}  // namespace

std::unique_ptr<StepEngine> make_sparse_engine(SparseEngineOptions options) {
  return std::make_unique<SparseEngine>(options);
}

std::unique_ptr<StepEngine> make_sparse_shard_engine(SparseEngineOptions options, LatentShard shard) {
  MSAE_ASSERT(shard.comm != nullptr && !shard.global_ids.empty() && shard.d_sae > 0);
  return std::make_unique<SparseEngine>(options, std::move(shard));
}

LatentShard shard_latents(const SaeConfig& cfg, int rank, int ranks) {
  MSAE_ASSERT(ranks >= 1 && rank >= 0 && rank < ranks && !cfg.group_sizes.empty());
  LatentShard s;
  s.d_sae = cfg.d_sae;
  int64_t start = 0;
  for (const int64_t size : cfg.group_sizes) {
    for (int64_t i = start + size * rank / ranks; i < start + size * (rank + 1) / ranks; ++i) s.global_ids.push_back(i);
    start += size;
  }
  return s;
}

}  // namespace msae
