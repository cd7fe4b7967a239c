// Logistic-regression probes for the first-letter absorption metric (SAEBench's recipe, docs/lm.md).
#include <algorithm>
#include <cmath>

#include "msae/kernels.h"
#include "msae/lm.h"

// GCC 12 reports a false -Wfree-nonheap-object inside std::vector<float>'s destructor once train_multi is
// inlined (the same false positive appears in src/core); it would break -Werror builds.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wfree-nonheap-object"
#endif

namespace msae::lm {

float LogisticProbe::score(const float* x) const {
  double s = b;
  for (size_t j = 0; j < w.size(); ++j) s += static_cast<double>(w[j]) * x[j];
  return static_cast<float>(s);
}

float MultiProbe::score(int64_t c, const float* x) const {
  double s = b[static_cast<size_t>(c)];
  const float* wc = W.data() + c * d;
  for (int64_t j = 0; j < d; ++j) s += static_cast<double>(wc[j]) * x[j];
  return static_cast<float>(s);
}

namespace {
double sigmoid(double z) { return z >= 0 ? 1.0 / (1.0 + std::exp(-z)) : std::exp(z) / (1.0 + std::exp(z)); }

// Solves A x = g for symmetric positive definite A (m, m) by Cholesky; A is overwritten.
bool cholesky_solve(std::vector<double>& A, std::vector<double>& g, int64_t m) {
  for (int64_t j = 0; j < m; ++j) {
    double s = A[j * m + j];
    for (int64_t k = 0; k < j; ++k) s -= A[j * m + k] * A[j * m + k];
    if (!(s > 0)) return false;
    A[j * m + j] = std::sqrt(s);
    for (int64_t i = j + 1; i < m; ++i) {
      double t = A[i * m + j];
      for (int64_t k = 0; k < j; ++k) t -= A[i * m + k] * A[j * m + k];
      A[i * m + j] = t / A[j * m + j];
    }
  }
  for (int64_t i = 0; i < m; ++i) {
    double t = g[i];
    for (int64_t k = 0; k < i; ++k) t -= A[i * m + k] * g[k];
    g[i] = t / A[i * m + i];
  }
  for (int64_t i = m - 1; i >= 0; --i) {
    double t = g[i];
    for (int64_t k = i + 1; k < m; ++k) t -= A[k * m + i] * g[k];
    g[i] = t / A[i * m + i];
  }
  return true;
}
}  // namespace

LogisticProbe train_logistic(const float* X, const uint8_t* y, int64_t n, int64_t d, double C, bool balanced) {
  int64_t npos = 0;
  for (int64_t i = 0; i < n; ++i) npos += y[i] != 0;
  const int64_t nneg = n - npos;
  const double s_pos = balanced && npos ? static_cast<double>(n) / (2.0 * npos) : 1.0;
  const double s_neg = balanced && nneg ? static_cast<double>(n) / (2.0 * nneg) : 1.0;
  const int64_t m = d + 1;  // weights, then the intercept
  std::vector<double> theta(static_cast<size_t>(m), 0.0);
  auto objective = [&](const std::vector<double>& th) {
    double f = 0;
    for (int64_t j = 0; j < d; ++j) f += 0.5 * th[j] * th[j];
    for (int64_t i = 0; i < n; ++i) {
      double z = th[d];
      for (int64_t j = 0; j < d; ++j) z += th[j] * X[i * d + j];
      const double t = y[i] ? z : -z;  // logloss = log(1 + exp(-t))
      f += C * (y[i] ? s_pos : s_neg) * (t > 0 ? std::log1p(std::exp(-t)) : -t + std::log1p(std::exp(t)));
    }
    return f;
  };
  double f = objective(theta);
  for (int it = 0; it < 100; ++it) {
    std::vector<double> g(static_cast<size_t>(m), 0.0), H(static_cast<size_t>(m * m), 0.0);
    for (int64_t j = 0; j < d; ++j) {
      g[j] = theta[j];
      H[j * m + j] = 1.0;
    }
    H[d * m + d] = 1e-10;  // the intercept is unpenalized; keep H positive definite
    for (int64_t i = 0; i < n; ++i) {
      const float* x = X + i * d;
      double z = theta[d];
      for (int64_t j = 0; j < d; ++j) z += theta[j] * x[j];
      const double p = sigmoid(z), s = C * (y[i] ? s_pos : s_neg);
      const double r = s * (p - (y[i] ? 1.0 : 0.0)), h = s * p * (1 - p);
      for (int64_t a = 0; a < m; ++a) {
        const double xa = a < d ? x[a] : 1.0;
        g[a] += r * xa;
        for (int64_t c = 0; c <= a; ++c) H[a * m + c] += h * xa * (c < d ? x[c] : 1.0);
      }
    }
    for (int64_t a = 0; a < m; ++a)
      for (int64_t c = 0; c < a; ++c) H[c * m + a] = H[a * m + c];
    double gnorm = 0;
    for (double v : g) gnorm = std::max(gnorm, std::fabs(v));
    if (gnorm < 1e-6) break;
    std::vector<double> step = g;
    if (!cholesky_solve(H, step, m)) break;
    // Backtracking line search keeps every iteration a descent step.
    double alpha = 1.0;
    std::vector<double> cand(static_cast<size_t>(m));
    double fc = f;
    for (int ls = 0; ls < 30; ++ls, alpha *= 0.5) {
      for (int64_t a = 0; a < m; ++a) cand[a] = theta[a] - alpha * step[a];
      fc = objective(cand);
      if (fc <= f) break;
    }
    if (!(fc <= f)) break;
    const double improvement = f - fc;
    theta = cand;
    f = fc;
    if (improvement < 1e-12 * std::max(1.0, std::fabs(f))) break;
  }
  LogisticProbe p;
  p.w.assign(theta.begin(), theta.begin() + d);
  p.b = static_cast<float>(theta[d]);
  return p;
}

namespace {

// Shared minibatch-Adam loop. Row access through `logits_of` / `grad_of` lambdas so dense and sparse
// inputs share the algorithm.
template <class Forward, class Backward>
MultiProbe train_multi(int64_t n, int64_t d, const int32_t* labels, int64_t C, const MultiProbeOptions& opt,
                       Forward&& forward, Backward&& backward) {
  if (n <= 0 || C <= 0) usage_error("probe training: no rows (n = ", n, ") or no classes");
  std::vector<double> npos(static_cast<size_t>(C), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    MSAE_ASSERT(labels[i] >= 0 && labels[i] < C);
    npos[static_cast<size_t>(labels[i])] += 1;
  }
  std::vector<float> pos_weight(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c)  // SAEBench: n_neg / n_pos (inf when a class has no positive: use 1)
    pos_weight[c] = npos[c] > 0 ? static_cast<float>((n - npos[c]) / npos[c]) : 1.0f;
  MultiProbe p;
  p.C = C;
  p.d = d;
  // PyTorch nn.Linear init: U(-1/sqrt(d), 1/sqrt(d)) for weight and bias.
  Rng rng(opt.seed);
  const float bound = 1.0f / std::sqrt(static_cast<float>(d));
  p.W.resize(static_cast<size_t>(C * d));
  p.b.resize(static_cast<size_t>(C));
  for (auto& v : p.W) v = rng.uniform(-bound, bound);
  for (auto& v : p.b) v = rng.uniform(-bound, bound);
  std::vector<float> mW(p.W.size(), 0), vW(p.W.size(), 0), mb(p.b.size(), 0), vb(p.b.size(), 0);
  std::vector<float> gW(p.W.size()), gb(p.b.size());
  const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  const double gamma = std::exp(std::log(static_cast<double>(opt.end_lr) / opt.lr) / opt.epochs);
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::vector<float> z, gz;
  int64_t t = 0;
  for (int epoch = 0; epoch < opt.epochs; ++epoch) {
    const float lr = static_cast<float>(opt.lr * std::pow(gamma, epoch));
    shuffle_indices(order, rng);
    for (int64_t start = 0; start < n; start += opt.batch) {
      const int64_t B = std::min(opt.batch, n - start);
      const int64_t* rows = order.data() + start;
      z.assign(static_cast<size_t>(B * C), 0.0f);
      forward(p, rows, B, z.data());  // z (B, C) = X_rows @ W^T + b
      gz.resize(z.size());
      const float inv = 1.0f / static_cast<float>(B * C);
      for (int64_t r = 0; r < B; ++r)
        for (int64_t c = 0; c < C; ++c) {
          const float s = static_cast<float>(sigmoid(z[r * C + c]));
          const bool y = labels[rows[r]] == c;
          gz[r * C + c] = (y ? -pos_weight[c] * (1.0f - s) : s) * inv;
        }
      std::fill(gW.begin(), gW.end(), 0.0f);
      std::fill(gb.begin(), gb.end(), 0.0f);
      backward(p, rows, B, gz.data(), gW.data());  // gW (C, d) = gz^T @ X_rows
      for (int64_t r = 0; r < B; ++r)
        for (int64_t c = 0; c < C; ++c) gb[c] += gz[r * C + c];
      if (opt.l1 > 0) {
        const float k = opt.l1 / static_cast<float>(C);
        for (size_t i = 0; i < p.W.size(); ++i) gW[i] += p.W[i] > 0 ? k : (p.W[i] < 0 ? -k : 0.0f);
      }
      ++t;
      const float c1 = 1.0f - std::pow(b1, static_cast<float>(t)), c2 = 1.0f - std::pow(b2, static_cast<float>(t));
      auto adam = [&](std::vector<float>& w, std::vector<float>& g, std::vector<float>& m, std::vector<float>& v) {
        for (size_t i = 0; i < w.size(); ++i) {
          const float gi = g[i] + opt.weight_decay * w[i];
          m[i] = b1 * m[i] + (1 - b1) * gi;
          v[i] = b2 * v[i] + (1 - b2) * gi * gi;
          w[i] -= lr / c1 * m[i] / (std::sqrt(v[i]) / std::sqrt(c2) + eps);
        }
      };
      adam(p.W, gW, mW, vW);
      adam(p.b, gb, mb, vb);
    }
  }
  return p;
}

}  // namespace

MultiProbe train_multi_probe(const float* X, int64_t n, int64_t d, const int32_t* labels, int64_t C,
                             const MultiProbeOptions& opt) {
  std::vector<float> xb;
  auto gather = [&](const int64_t* rows, int64_t B) {
    xb.resize(static_cast<size_t>(B * d));
    for (int64_t r = 0; r < B; ++r) std::copy(X + rows[r] * d, X + (rows[r] + 1) * d, xb.data() + r * d);
  };
  auto forward = [&](const MultiProbe& p, const int64_t* rows, int64_t B, float* z) {
    gather(rows, B);
    for (int64_t r = 0; r < B; ++r) std::copy(p.b.begin(), p.b.end(), z + r * C);
    kernels::sgemm(kernels::Trans::no, kernels::Trans::yes, B, C, d, 1.0f, xb.data(), d, p.W.data(), d, 1.0f, z, C);
  };
  auto backward = [&](const MultiProbe&, const int64_t*, int64_t B, const float* gz, float* gW) {
    kernels::sgemm(kernels::Trans::yes, kernels::Trans::no, C, d, B, 1.0f, gz, C, xb.data(), d, 0.0f, gW, d);
  };
  return train_multi(n, d, labels, C, opt, forward, backward);
}

MultiProbe train_multi_probe(const SparseRows& X, const int32_t* labels, int64_t C, const MultiProbeOptions& opt) {
  const int64_t d = X.cols;
  auto forward = [&](const MultiProbe& p, const int64_t* rows, int64_t B, float* z) {
    for (int64_t r = 0; r < B; ++r) {
      const int64_t i = rows[r];
      for (int64_t c = 0; c < C; ++c) {
        double s = p.b[c];
        for (int64_t e = X.row_ptr[i]; e < X.row_ptr[i + 1]; ++e) s += p.W[c * d + X.ids[e]] * X.vals[e];
        z[r * C + c] = static_cast<float>(s);
      }
    }
  };
  auto backward = [&](const MultiProbe&, const int64_t* rows, int64_t B, const float* gz, float* gW) {
    for (int64_t r = 0; r < B; ++r) {
      const int64_t i = rows[r];
      for (int64_t c = 0; c < C; ++c) {
        const float g = gz[r * C + c];
        for (int64_t e = X.row_ptr[i]; e < X.row_ptr[i + 1]; ++e) gW[c * d + X.ids[e]] += g * X.vals[e];
      }
    }
  };
  return train_multi(X.rows, d, labels, C, opt, forward, backward);
}

}  // namespace msae::lm

namespace msae::lm {

WordAbsorption word_absorption(const int32_t* ids, const float* vals, int64_t nnz, const float* cos, float probe_proj,
                               const std::vector<int32_t>& main_latents, const AbsorptionThresholds& th) {
  auto is_main = [&](int32_t id) {
    return std::find(main_latents.begin(), main_latents.end(), id) != main_latents.end();
  };
  double main_proj = 0;
  bool main_fired = false;
  std::vector<double> absorbers;
  double top_proj = 0;  // inactive latents project 0, so the top is at least 0
  int32_t top_id = -1;
  for (int64_t e = 0; e < nnz; ++e) {
    const double proj = static_cast<double>(vals[e]) * cos[ids[e]];
    if (is_main(ids[e])) {
      main_proj += proj;
      if (vals[e] >= 1e-8f) main_fired = true;
      continue;
    }
    if (cos[ids[e]] >= th.fraction_cos && proj > 0) absorbers.push_back(proj);
    if (proj > top_proj) {
      top_proj = proj;
      top_id = ids[e];
    }
  }
  // A main latent can also hold the largest projection.
  for (int64_t e = 0; e < nnz; ++e) {
    const double proj = static_cast<double>(vals[e]) * cos[ids[e]];
    if (is_main(ids[e]) && proj > top_proj) {
      top_proj = proj;
      top_id = ids[e];
    }
  }
  std::sort(absorbers.begin(), absorbers.end(), std::greater<>());
  double A = 0;
  for (size_t i = 0; i < absorbers.size() && static_cast<int>(i) < th.max_absorbers; ++i) A += absorbers[i];
  WordAbsorption w;
  const double pp = probe_proj;
  if (main_proj >= pp || A / pp < th.proj_proportion) {
    w.fraction = 0.0;
  } else if (main_proj <= 0.0) {
    w.fraction = 1.0;
  } else {
    const double ab = std::min(A, pp - main_proj);
    w.fraction = std::clamp(ab / (ab + main_proj), 0.0, 1.0);
  }
  w.full = !main_fired && top_id >= 0 && cos[top_id] >= th.full_cos && pp >= 0 && top_proj / pp >= th.proj_proportion;
  return w;
}

}  // namespace msae::lm
