// Central finite differences, in double, of the whole training loss (SPEC.md) against the analytic
// gradients of every training engine, for every architecture, with and without AuxK.
//
// The loss is re-implemented here in double precision as a naive, independent oracle (selection,
// prefixes, AuxK on a fixed "dead before this batch" state). The TopK and ReLU kinks are avoided by
// choosing inputs with a margin: each case asserts that the selection cut and every AuxK cut have a
// gap of at least kMargin, and that no entry that can matter is within kMargin of zero, so the
// selection is constant under the +-h perturbations. Tolerance: the engines compute in float32, so
// their gradients carry ~1e-6 relative round-off; FD error in double is O(h^2) ~ 1e-12. We require
// |analytic - fd| <= 1e-4 * max|fd| of the tensor.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "msae/model.h"
#include "msae/train.h"

namespace {

using msae::Arch;
constexpr double kMargin = 2e-3;
constexpr double kStep = 1e-5;

struct GradSetup {
  msae::SaeConfig cfg;
  int64_t B = 0;
  int n_dead_before = 0;  // latents whose counter is at dead_after - 1 before the batch
  std::vector<double> x;  // (B, d)
  std::vector<int64_t> n_inactive;
};

struct DoubleParams {
  std::vector<double> W_enc_t, b_enc, W_dec, b_dec;  // (D, d), (D), (D, d), (d)
};

// Descending by value, ties by lower index (the documented policy).
std::vector<int64_t> order_desc(const std::vector<double>& v) {
  std::vector<int64_t> o(v.size());
  std::iota(o.begin(), o.end(), 0);
  std::stable_sort(o.begin(), o.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  return o;
}

// The SPEC loss in double. When `margin` is non-null, records the smallest gap at any cut that matters.
double loss_double(const GradSetup& s, const DoubleParams& p, double* margin) {
  const auto& c = s.cfg;
  const int64_t B = s.B, d = c.d_in, D = c.d_sae, G = c.num_groups();
  const auto bounds = c.boundaries();
  auto note = [&](double gap) {
    if (margin) *margin = std::min(*margin, gap);
  };
  std::vector<double> xc(B * d), pre(B * D), acts(B * D), z(B * D, 0.0);
  for (int64_t r = 0; r < B; ++r)
    for (int64_t j = 0; j < d; ++j) xc[r * d + j] = s.x[r * d + j] - p.b_dec[j];
  for (int64_t r = 0; r < B; ++r)
    for (int64_t i = 0; i < D; ++i) {
      double v = c.encoder_bias ? p.b_enc[i] : 0.0;
      for (int64_t j = 0; j < d; ++j) v += xc[r * d + j] * p.W_enc_t[i * d + j];
      pre[r * D + i] = v;
      acts[r * D + i] = std::max(v, 0.0);
    }
  // Selection.
  auto select = [&](const std::vector<int64_t>& idx, int64_t keep) {
    std::vector<double> vals(idx.size());
    for (size_t j = 0; j < idx.size(); ++j) vals[j] = acts[idx[j]];
    const auto o = order_desc(vals);
    for (int64_t j = 0; j < keep && j < int64_t(o.size()); ++j) z[idx[o[j]]] = vals[o[j]];
    if (keep < int64_t(o.size())) note(vals[o[keep - 1]] - vals[o[keep]]);  // gap at the cut (kink at 0 included)
  };
  if (c.arch == Arch::topk) {
    for (int64_t r = 0; r < B; ++r) {
      std::vector<int64_t> idx(D);
      std::iota(idx.begin(), idx.end(), r * D);
      select(idx, c.k);
    }
  } else {
    std::vector<int64_t> idx(B * D);
    std::iota(idx.begin(), idx.end(), 0);
    select(idx, c.k * B);
  }
  // Dead latents after this batch's counter update.
  std::vector<int64_t> dead;
  for (int64_t i = 0; i < D; ++i) {
    bool fired = false;
    for (int64_t r = 0; r < B; ++r) fired |= z[r * D + i] > 0;
    if (!fired && s.n_inactive[i] + 1 >= c.dead_after_batches) dead.push_back(i);
  }
  // Prefix reconstructions and L_rec.
  const double N = double(B * d);
  std::vector<double> run(B * d);
  double rec = 0.0;
  for (int64_t r = 0; r < B; ++r)
    for (int64_t j = 0; j < d; ++j) {
      run[r * d + j] = p.b_dec[j];
      rec += std::pow(p.b_dec[j] - s.x[r * d + j], 2) / N;
    }
  for (int64_t g = 0; g < G; ++g) {
    const int64_t lo = g ? bounds[g - 1] : 0;
    for (int64_t r = 0; r < B; ++r)
      for (int64_t i = lo; i < bounds[g]; ++i)
        if (z[r * D + i] != 0)
          for (int64_t j = 0; j < d; ++j) run[r * d + j] += z[r * D + i] * p.W_dec[i * d + j];
    for (int64_t n = 0; n < B * d; ++n) rec += std::pow(run[n] - s.x[n], 2) / N;
  }
  double loss = rec / double(G + 1);
  // AuxK.
  const int64_t keep = std::min<int64_t>(c.aux_k, int64_t(dead.size()));
  if (keep > 0) {
    std::vector<double> a(B * d, 0.0);
    for (int64_t r = 0; r < B; ++r) {
      std::vector<double> vals(dead.size());
      for (size_t j = 0; j < dead.size(); ++j) {
        vals[j] = acts[r * D + dead[j]];
        note(std::abs(pre[r * D + dead[j]]));  // relu kink of a candidate
      }
      const auto o = order_desc(vals);
      if (keep < int64_t(o.size()) && vals[o[keep - 1]] > 0) note(vals[o[keep - 1]] - vals[o[keep]]);
      for (int64_t j = 0; j < keep; ++j)
        for (int64_t q = 0; q < d; ++q) a[r * d + q] += vals[o[j]] * p.W_dec[dead[o[j]] * d + q];
    }
    bool any = false;
    double aux = 0.0;
    for (int64_t n = 0; n < B * d; ++n) {
      any |= a[n] != 0;
      aux += std::pow(a[n] - (s.x[n] - run[n]), 2) / N;
    }
    if (any) loss += c.aux_coef * aux;
  }
  return loss;
}

DoubleParams to_double(const msae::SaeParams& p) {
  auto conv = [](const msae::Tensor& t) { return std::vector<double>(t.data.begin(), t.data.end()); };
  return {conv(p.W_enc_t), conv(p.b_enc), conv(p.W_dec), conv(p.b_dec)};
}

// Builds a case whose selection has a margin; tries seeds in order until one does.
GradSetup make_setup(msae::SaeConfig cfg, int64_t B, int n_dead_before, msae::SaeParams& params_out) {
  cfg.finalize();
  for (uint64_t seed = 1; seed < 200; ++seed) {
    GradSetup s;
    s.cfg = cfg;
    s.B = B;
    s.n_dead_before = n_dead_before;
    msae::Rng rng(seed);
    msae::SaeParams p = msae::SaeParams::init(cfg.d_in, cfg.d_sae, seed);
    for (auto& v : p.b_dec.data) v = float(0.1 * rng.normal());
    if (cfg.encoder_bias)
      for (auto& v : p.b_enc.data) v = float(0.05 * rng.normal());
    // Decoder rows slightly off unit norm, as between an Adam step and the next constraint.
    for (auto& v : p.W_dec.data) v *= float(1.0 + 0.05 * rng.normal());
    s.x.resize(B * cfg.d_in);
    for (auto& v : s.x) v = 0.2 + rng.normal();
    s.n_inactive.assign(cfg.d_sae, 0);
    // The last n_dead_before latents are about to be declared dead (unless they fire this batch).
    for (int i = 0; i < n_dead_before; ++i) s.n_inactive[cfg.d_sae - 1 - i] = cfg.dead_after_batches - 1;
    double margin = 1e30;
    loss_double(s, to_double(p), &margin);
    if (margin >= kMargin) {
      params_out = p;
      return s;
    }
  }
  ADD_FAILURE() << "no seed gives a selection margin of " << kMargin;
  return {};
}

struct GradCase {
  std::string name;
  Arch arch;
  std::vector<int64_t> groups;
  bool encoder_bias;
  int n_dead_before;
  int64_t aux_k;
};

void PrintTo(const GradCase& c, std::ostream* os) { *os << c.name; }

class GradCheck : public ::testing::TestWithParam<std::tuple<GradCase, std::string>> {};

TEST_P(GradCheck, AnalyticMatchesCentralDifferences) {
  const auto& [gc, engine_name] = GetParam();
  msae::SaeConfig cfg;
  cfg.arch = gc.arch;
  cfg.d_in = 6;
  cfg.d_sae = 32;
  cfg.k = 3;
  cfg.group_sizes = gc.groups;
  cfg.encoder_bias = gc.encoder_bias;
  cfg.dead_after_batches = 3;
  cfg.aux_k = gc.aux_k;
  msae::SaeParams params;
  GradSetup s = make_setup(cfg, 8, gc.n_dead_before, params);
  if (HasFailure()) return;
  cfg = s.cfg;

  // Analytic gradients from the engine (on a copy: the step updates the threshold and counters).
  msae::SaeParams p = params;
  msae::LatentState state;
  state.n_inactive = s.n_inactive;
  msae::SaeGrads grads = msae::SaeGrads::zeros(cfg.d_in, cfg.d_sae);
  std::vector<float> xf(s.x.begin(), s.x.end());
  auto engine = msae::train::make_engine(engine_name);
  const msae::StepStats stats = engine->forward_backward(cfg, xf.data(), s.B, p, state, grads);

  const DoubleParams base = to_double(params);
  EXPECT_NEAR(stats.loss, loss_double(s, base, nullptr), 1e-5 * stats.loss) << "forward loss";
  EXPECT_EQ(stats.aux_active, gc.n_dead_before > 0) << "AuxK runs exactly when latents are dead";

  auto check = [&](std::vector<double> DoubleParams::*member, const msae::Tensor& analytic, const char* what) {
    std::vector<double> fd(analytic.data.size());
    for (size_t e = 0; e < fd.size(); ++e) {
      DoubleParams plus = base, minus = base;
      (plus.*member)[e] += kStep;
      (minus.*member)[e] -= kStep;
      fd[e] = (loss_double(s, plus, nullptr) - loss_double(s, minus, nullptr)) / (2 * kStep);
    }
    double scale = 0.0;
    for (double v : fd) scale = std::max(scale, std::abs(v));
    for (size_t e = 0; e < fd.size(); ++e)
      ASSERT_NEAR(analytic.data[e], fd[e], 1e-4 * scale + 1e-10) << what << " element " << e;
  };
  check(&DoubleParams::W_enc_t, grads.W_enc_t, "grad W_enc");
  check(&DoubleParams::W_dec, grads.W_dec, "grad W_dec");
  check(&DoubleParams::b_dec, grads.b_dec, "grad b_dec");
  if (cfg.encoder_bias) check(&DoubleParams::b_enc, grads.b_enc, "grad b_enc");
}

const GradCase kCases[] = {
    {"matryoshka", Arch::matryoshka, {}, false, 0, 512},
    {"matryoshka_aux", Arch::matryoshka, {}, false, 6, 512},
    {"matryoshka_aux_k_below_dead", Arch::matryoshka, {}, false, 8, 3},
    {"matryoshka_custom_bias_aux", Arch::matryoshka, {4, 12, 16}, true, 5, 4},
    {"batchtopk", Arch::batchtopk, {}, false, 0, 512},
    {"batchtopk_aux", Arch::batchtopk, {}, false, 6, 512},
    {"topk", Arch::topk, {}, false, 0, 512},
    {"topk_aux", Arch::topk, {}, false, 6, 2},
    {"topk_groups_bias", Arch::topk, {8, 8, 16}, true, 0, 512},
};

INSTANTIATE_TEST_SUITE_P(AllArchs, GradCheck,
                         ::testing::Combine(::testing::ValuesIn(kCases), ::testing::ValuesIn(msae::train::engine_names())),
                         [](const auto& test) { return std::get<0>(test.param).name + "_" + std::get<1>(test.param); });

}  // namespace
