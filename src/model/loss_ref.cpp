// The dense reference training step: SPEC.md written out with dense (B, D) tensors and one GEMM per
// Matryoshka group slice, the way the published PyTorch code computes it. It is the oracle the sparse
// engine is tested against, so it favours the obvious formulation over speed.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "msae/kernels.h"
#include "msae/model.h"

namespace msae {
namespace {

using kernels::Trans;

double mean_sq_diff(const float* a, const float* b, int64_t n) {
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double diff = static_cast<double>(a[i]) - b[i];
    total += diff * diff;
  }
  return total / static_cast<double>(n);
}

// Mean over columns of the batch variance of x (B, d): the denominator of the fraction of variance unexplained.
double column_variance(const float* x, int64_t B, int64_t d) {
  std::vector<double> mean(d, 0.0), sq(d, 0.0);
  for (int64_t r = 0; r < B; ++r)
    for (int64_t j = 0; j < d; ++j) {
      mean[j] += x[r * d + j];
      sq[j] += static_cast<double>(x[r * d + j]) * x[r * d + j];
    }
  double total = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const double m = mean[j] / B;
    total += sq[j] / B - m * m;
  }
  return total / static_cast<double>(d);
}

class ReferenceEngine final : public StepEngine {
 public:
  const char* name() const override { return "reference"; }

  const StepStats& forward_backward(const SaeConfig& cfg, const float* x, int64_t B, SaeParams& p,
                                    LatentState& state, SaeGrads& grads) override {
    const int64_t d = p.d, D = p.D, G = cfg.num_groups();
    const int64_t N = B * d;
    const std::vector<int64_t> bounds = cfg.boundaries();
    StepStats& stats = stats_;
    stats.reset();

    // 1. x_cent = x - b_dec  (B, d)
    std::vector<float> x_cent(N);
    for (int64_t r = 0; r < B; ++r)
      for (int64_t j = 0; j < d; ++j) x_cent[r * d + j] = x[r * d + j] - p.b_dec.data[j];

    // 2. pre = x_cent @ W_enc (+ b_enc)  (B, D); acts = relu(pre)
    std::vector<float> pre(B * D);
    kernels::sgemm(Trans::no, Trans::yes, B, D, d, 1.0f, x_cent.data(), d, p.W_enc_t.ptr(), d, 0.0f, pre.data(), D);
    if (cfg.encoder_bias)
      for (int64_t r = 0; r < B; ++r)
        for (int64_t i = 0; i < D; ++i) pre[r * D + i] += p.b_enc.data[i];
    std::vector<float> acts(B * D);
    for (int64_t n = 0; n < B * D; ++n) acts[n] = std::max(pre[n], 0.0f);

    // 3. selection -> z (B, D)
    // (relu_l1: every positive entry; per-group selection with cfg.group_k)
    kernels::SparseCodes codes;
    if (cfg.arch == Arch::relu_l1)
      kernels::threshold_select(pre.data(), B, D, 0.0f, D, codes);
    else if (!cfg.group_k.empty())
      select_per_group(pre.data(), B, D, bounds, cfg.group_k, cfg.arch == Arch::topk, codes);
    else if (cfg.arch == Arch::topk)
      kernels::row_topk(pre.data(), B, D, cfg.k, codes);
    else
      kernels::batch_topk(pre.data(), B, D, cfg.k * B, codes);
    std::vector<float> z(B * D);
    kernels::codes_to_dense(codes, z.data());
    stats.l0 = static_cast<double>(codes.nnz()) / static_cast<double>(B);

    // 4. threshold EMA (float32 arithmetic, as the published code does it on a float32 buffer)
    if (codes.nnz() > 0 && cfg.arch != Arch::relu_l1 && state.update_threshold) {  // relu_l1: threshold 0 (ReLU)
      const float min_positive = *std::min_element(codes.vals.begin(), codes.vals.end());
      p.threshold = (1.0f - cfg.threshold_rate) * p.threshold + cfg.threshold_rate * min_positive;
    }

    // 6. dead-latent counter, before the loss
    state.n_inactive.resize(D, 0);
    for (int64_t i = 0; i < D; ++i) {
      bool fired = false;
      for (int64_t r = 0; r < B && !fired; ++r) fired = z[r * D + i] > 0.0f;
      state.n_inactive[i] = fired ? 0 : state.n_inactive[i] + 1;
    }
    std::vector<int64_t> dead;
    for (int64_t i = 0; i < D; ++i)
      if (state.n_inactive[i] >= cfg.dead_after_batches) dead.push_back(i);
    stats.n_dead = static_cast<int64_t>(dead.size());
    if (cfg.reorder_every > 0) {  // latent reordering statistic: batch mean of z^2 per latent
      state.batch_sq_act.assign(D, 0.0);
      for (int64_t r = 0; r < B; ++r)
        for (int64_t i = 0; i < D; ++i) state.batch_sq_act[i] += static_cast<double>(z[r * D + i]) * z[r * D + i] / B;
    }

    // 5. prefix reconstructions r_g = b_dec + z[:, :m_g] @ W_dec[:m_g]  (G, B, d)
    std::vector<float> recon(G * N);
    std::vector<float> running(N);
    for (int64_t r = 0; r < B; ++r) std::copy(p.b_dec.ptr(), p.b_dec.ptr() + d, running.begin() + r * d);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t lo = g == 0 ? 0 : bounds[g - 1], hi = bounds[g];
      kernels::sgemm(Trans::no, Trans::no, B, d, hi - lo, 1.0f, z.data() + lo, D, p.W_dec.ptr() + lo * d, d, 1.0f,
                     running.data(), d);
      std::copy(running.begin(), running.end(), recon.begin() + g * N);
    }

    // Loss
    std::vector<float> b_dec_rows(N);
    for (int64_t r = 0; r < B; ++r) std::copy(p.b_dec.ptr(), p.b_dec.ptr() + d, b_dec_rows.begin() + r * d);
    stats.mse_bdec = mean_sq_diff(b_dec_rows.data(), x, N);
    stats.mse_prefix.resize(G);
    // L_rec = (t mse(b_dec) + sum_g w_g mse(r_g)) / (G + t); SPEC: t = 1, w_g = 1.
    const int64_t t_bdec = cfg.bdec_loss_term ? 1 : 0;
    double rec_sum = cfg.bdec_loss_term ? stats.mse_bdec : 0.0;
    for (int64_t g = 0; g < G; ++g)
      rec_sum += cfg.prefix_weight(g) * (stats.mse_prefix[g] = mean_sq_diff(recon.data() + g * N, x, N));
    stats.l_rec = rec_sum / static_cast<double>(G + t_bdec);
    // relu_l1: L_sp = coef * (1/B) sum_r sum_i c_i z_ri with c_i = (G - g(i)) / G: the L1 of each prefix,
    // averaged over the G prefixes (a latent of group g is in G - g of them).
    std::vector<float> l1_weight;  // (D) c_i
    if (cfg.arch == Arch::relu_l1) {
      l1_weight.resize(D);
      for (int64_t g = 0, i = 0; g < G; ++g)
        for (; i < bounds[g]; ++i) l1_weight[i] = static_cast<float>(G - g) / static_cast<float>(G);
      double total = 0.0;
      for (int64_t r = 0; r < B; ++r)
        for (int64_t i = 0; i < D; ++i) total += static_cast<double>(l1_weight[i]) * z[r * D + i];
      stats.l_sparsity = state.l1_coef * total / static_cast<double>(B);
    }
    stats.var_x = column_variance(x, B, d);

    // AuxK: per row, the top min(aux_k, n_dead) of acts restricted to dead latents (zeros included, as
    // torch.topk would pick them; they add nothing).
    const float* r_full = recon.data() + (G - 1) * N;
    std::vector<float> aux_acts;  // (B, D) dense, nonzero only at the selected dead entries
    std::vector<float> q;         // (B, d) dL/d(aux reconstruction)
    const int64_t aux_keep = cfg.arch == Arch::relu_l1 ? 0 : std::min<int64_t>(cfg.aux_k, stats.n_dead);
    if (aux_keep > 0) {
      aux_acts.assign(B * D, 0.0f);
      std::vector<int64_t> order(dead.size());
      for (int64_t r = 0; r < B; ++r) {
        std::iota(order.begin(), order.end(), 0);
        const float* row = acts.data() + r * D;
        std::partial_sort(order.begin(), order.begin() + aux_keep, order.end(), [&](int64_t a, int64_t b) {
          const float va = row[dead[a]], vb = row[dead[b]];
          return va != vb ? va > vb : a < b;
        });
        for (int64_t j = 0; j < aux_keep; ++j) aux_acts[r * D + dead[order[j]]] = row[dead[order[j]]];
      }
      std::vector<float> aux_recon(N, 0.0f);  // a = aux_acts @ W_dec (no bias)
      kernels::sgemm(Trans::no, Trans::no, B, d, D, 1.0f, aux_acts.data(), D, p.W_dec.ptr(), d, 0.0f,
                     aux_recon.data(), d);
      const bool any_nonzero = std::any_of(aux_recon.begin(), aux_recon.end(), [](float v) { return v != 0.0f; });
      if (any_nonzero) {
        stats.aux_active = true;
        // e = x - r_G (not detached); L_aux = coef * mean((a - e)^2)
        q.resize(N);
        double total = 0.0;
        const float scale = static_cast<float>(2.0 * cfg.aux_coef / static_cast<double>(N));
        for (int64_t n = 0; n < N; ++n) {
          const float diff = aux_recon[n] - (x[n] - r_full[n]);
          total += static_cast<double>(diff) * diff;
          q[n] = scale * diff;
        }
        stats.l_aux = cfg.aux_coef * total / static_cast<double>(N);
      }
    }
    stats.loss = stats.l_rec + stats.l_aux + stats.l_sparsity;

    // Backward. e_g = dL/dr_g = 2 w_g (r_g - x) / (N (G+t)); AuxK adds q to e_G (through e = x - r_G).
    const float rec_scale = static_cast<float>(2.0 / (static_cast<double>(N) * static_cast<double>(G + t_bdec)));
    // S_g = sum_{h >= g} e_h, built from the last group down; with stop-gradient between groups, S_g = e_g
    // (the earlier groups' part of r_h is a constant for h > g).
    std::vector<float> suffix(N, 0.0f);
    std::vector<float> grad_pre(B * D, 0.0f);
    std::fill(grads.W_dec.data.begin(), grads.W_dec.data.end(), 0.0f);
    std::fill(grads.b_dec.data.begin(), grads.b_dec.data.end(), 0.0f);
    for (int64_t g = G - 1; g >= 0; --g) {
      const float* r_g = recon.data() + g * N;
      const float scale_g = rec_scale * cfg.prefix_weight(g);
      if (cfg.stop_gradient_groups) std::fill(suffix.begin(), suffix.end(), 0.0f);
      for (int64_t n = 0; n < N; ++n) {
        float e = scale_g * (r_g[n] - x[n]);
        if (g == G - 1 && !q.empty() && !cfg.aux_detach) e += q[n];
        suffix[n] += e;
        grads.b_dec.data[n % d] += e;  // r_g contains b_dec once
      }
      const int64_t lo = g == 0 ? 0 : bounds[g - 1], hi = bounds[g];
      // grad z[:, lo:hi] = S_g @ W_dec[lo:hi]^T ; grad W_dec[lo:hi] = z[:, lo:hi]^T @ S_g
      kernels::sgemm(Trans::no, Trans::yes, B, hi - lo, d, 1.0f, suffix.data(), d, p.W_dec.ptr() + lo * d, d, 0.0f,
                     grad_pre.data() + lo, D);
      kernels::sgemm(Trans::yes, Trans::no, hi - lo, d, B, 1.0f, z.data() + lo, D, suffix.data(), d, 0.0f,
                     grads.W_dec.ptr() + lo * d, d);
    }
    // Straight-through the selection: only kept entries (z > 0) pass gradient.
    for (int64_t n = 0; n < B * D; ++n)
      if (!(z[n] > 0.0f)) grad_pre[n] = 0.0f;
    if (!l1_weight.empty()) {  // d L_sp / d z_ri = coef c_i / B on the active entries
      const float l1_scale = static_cast<float>(state.l1_coef / static_cast<double>(B));
      for (int64_t r = 0; r < B; ++r)
        for (int64_t i = 0; i < D; ++i)
          if (z[r * D + i] > 0.0f) grad_pre[r * D + i] += l1_scale * l1_weight[i];
    }
    // The b_dec-only term: d/d b_dec of mean((b_dec - x)^2) / (G+1).
    if (cfg.bdec_loss_term)
      for (int64_t n = 0; n < N; ++n) grads.b_dec.data[n % d] += rec_scale * (p.b_dec.data[n % d] - x[n]);

    if (!q.empty()) {
      // a = aux_acts @ W_dec: grad aux_acts = q @ W_dec^T (only at the selected, positive entries);
      // grad W_dec += aux_acts^T @ q.
      std::vector<float> grad_aux(B * D);
      kernels::sgemm(Trans::no, Trans::yes, B, D, d, 1.0f, q.data(), d, p.W_dec.ptr(), d, 0.0f, grad_aux.data(), D);
      for (int64_t n = 0; n < B * D; ++n)
        if (aux_acts[n] > 0.0f) grad_pre[n] += grad_aux[n];
      kernels::sgemm(Trans::yes, Trans::no, D, d, B, 1.0f, aux_acts.data(), D, q.data(), d, 1.0f, grads.W_dec.ptr(), d);
    }

    // pre = x_cent @ W_enc (+ b_enc): grad W_enc^T = grad_pre^T @ x_cent; grad x_cent = grad_pre @ W_enc^T.
    kernels::sgemm(Trans::yes, Trans::no, D, d, B, 1.0f, grad_pre.data(), D, x_cent.data(), d, 0.0f,
                   grads.W_enc_t.ptr(), d);
    std::fill(grads.b_enc.data.begin(), grads.b_enc.data.end(), 0.0f);
    if (cfg.encoder_bias)
      for (int64_t r = 0; r < B; ++r)
        for (int64_t i = 0; i < D; ++i) grads.b_enc.data[i] += grad_pre[r * D + i];
    std::vector<float> grad_x_cent(N);
    kernels::sgemm(Trans::no, Trans::no, B, d, D, 1.0f, grad_pre.data(), D, p.W_enc_t.ptr(), d, 0.0f,
                   grad_x_cent.data(), d);
    for (int64_t n = 0; n < N; ++n) grads.b_dec.data[n % d] -= grad_x_cent[n];  // x_cent = x - b_dec
    return stats;
  }

 private:
  StepStats stats_;
};

}  // namespace

std::unique_ptr<StepEngine> make_reference_engine() { return std::make_unique<ReferenceEngine>(); }

namespace {

// The selection step of encode_inference for p.rule, on pre (rows, D) -> out (CSR, ascending ids < limit).
void select_inference(const SaeParams& p, const float* pre, int64_t rows, int64_t limit, kernels::SparseCodes& out) {
  const int64_t D = p.D;
  const EncodeRule& rule = p.rule;
  if (rule.kind == EncodeRule::Kind::topk) {
    kernels::row_topk(pre, rows, D, std::min(rule.k, D), out);
    if (limit >= D) return;
    int64_t kept = 0, begin = 0;  // drop ids >= limit in place (ids ascend within a row)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t end = out.row_ptr[r + 1];
      for (int64_t e = begin; e < end; ++e)
        if (out.ids[e] < limit) {
          out.ids[kept] = out.ids[e];
          out.vals[kept++] = out.vals[e];
        }
      begin = end;
      out.row_ptr[r + 1] = kept;
    }
    out.ids.resize(kept);
    out.vals.resize(kept);
    return;
  }
  if (rule.thresholds.empty()) {
    kernels::threshold_select(pre, rows, D, p.threshold, limit, out);
    return;
  }
  MSAE_ASSERT(static_cast<int64_t>(rule.thresholds.size()) == D, "EncodeRule: thresholds must have D entries");
  out.rows = rows;
  out.cols = D;
  out.row_ptr.assign(1, 0);
  out.ids.clear();
  out.vals.clear();
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = pre + r * D;
    for (int64_t i = 0; i < std::min(limit, D); ++i)
      if (row[i] > 0.0f && row[i] > rule.thresholds[i]) {  // relu(pre) * (pre > threshold_i), zeros not stored
        out.ids.push_back(static_cast<int32_t>(i));
        out.vals.push_back(row[i]);
      }
    out.row_ptr.push_back(static_cast<int64_t>(out.ids.size()));
  }
}

}  // namespace

kernels::SparseCodes encode_inference(const SaeConfig& cfg, const SaeParams& p, const float* x, int64_t B,
                                      int64_t limit) {
  const int64_t d = p.d, D = p.D;
  constexpr int64_t kChunk = 1024;  // rows per GEMM: bounds the (chunk, D) pre-activation buffer
  kernels::SparseCodes out;
  out.rows = B;
  out.cols = D;
  out.row_ptr.assign(1, 0);
  std::vector<float> x_cent(kChunk * d), pre(kChunk * D);
  kernels::SparseCodes part;
  MSAE_ASSERT(p.rule.decoder_norm.empty() || static_cast<int64_t>(p.rule.decoder_norm.size()) == D,
              "EncodeRule: decoder_norm must have D entries");
  for (int64_t r0 = 0; r0 < B; r0 += kChunk) {
    const int64_t rows = std::min(kChunk, B - r0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < d; ++j)
        x_cent[r * d + j] = x[(r0 + r) * d + j] - (p.rule.center_input ? p.b_dec.data[j] : 0.0f);
    kernels::sgemm(Trans::no, Trans::yes, rows, D, d, 1.0f, x_cent.data(), d, p.W_enc_t.ptr(), d, 0.0f, pre.data(), D);
    if (cfg.encoder_bias)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < D; ++i) pre[r * D + i] += p.b_enc.data[i];
    if (!p.rule.decoder_norm.empty())  // SAELens: hidden_pre = (sae_in @ W_enc + b_enc) * W_dec.norm(dim=-1)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < D; ++i) pre[r * D + i] *= p.rule.decoder_norm[i];
    select_inference(p, pre.data(), rows, limit, part);
    const int64_t base = out.row_ptr.back();
    for (int64_t r = 1; r <= rows; ++r) out.row_ptr.push_back(base + part.row_ptr[r]);
    out.ids.insert(out.ids.end(), part.ids.begin(), part.ids.end());
    out.vals.insert(out.vals.end(), part.vals.begin(), part.vals.end());
  }
  return out;
}

void decode(const SaeParams& p, const kernels::SparseCodes& z, float* r) {
  const int64_t d = p.d;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < z.rows; ++row) {
    float* out = r + row * d;
    std::copy(p.b_dec.ptr(), p.b_dec.ptr() + d, out);
    for (int64_t j = z.row_ptr[row]; j < z.row_ptr[row + 1]; ++j) {
      const float v = p.rule.decode_value(z.ids[j], z.vals[j]);
      const float* w = p.W_dec.ptr() + static_cast<int64_t>(z.ids[j]) * d;
      for (int64_t c = 0; c < d; ++c) out[c] += v * w[c];
    }
  }
}

}  // namespace msae
