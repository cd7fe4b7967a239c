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
//
// Variants (docs/variants.md): prefix weights, the b_dec-term switch, per-group selection and the ReLU + L1
// SAE change the loss itself and are differentiated as is. Stop-gradient between groups and the detached
// AuxK residual change the gradient, not the loss: they are the exact gradient of a surrogate in which
// the stopped paths use the unperturbed ("frozen") parameters, so the finite differences perturb the live
// parameters only (loss_double's `frozen` argument).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "msae/model.h"
#include "msae/train.h"

namespace {

using msae::Arch;
constexpr double kMargin = 2e-3;
constexpr double kStep = 1e-5;

struct GradSetup {
  msae::SaeConfig cfg;
  double l1_coef = 0.0;  // relu_l1
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

struct Forward {
  std::vector<double> pre, acts, z;  // (B, D)
};

// Encoder and selection in double. When `margin` is non-null, records the smallest gap at any cut that matters.
Forward encode_select(const GradSetup& s, const DoubleParams& p, double* margin) {
  const auto& c = s.cfg;
  const int64_t B = s.B, d = c.d_in, D = c.d_sae;
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
  if (c.arch == Arch::relu_l1) {
    for (int64_t n = 0; n < B * D; ++n) {
      z[n] = acts[n];
      note(std::abs(pre[n]));  // relu kink
    }
  } else if (!c.group_k.empty()) {
    for (int64_t g = 0; g < c.num_groups(); ++g) {
      const int64_t lo = g ? bounds[g - 1] : 0, hi = bounds[g];
      if (c.arch == Arch::topk) {
        for (int64_t r = 0; r < B; ++r) {
          std::vector<int64_t> idx;
          for (int64_t i = lo; i < hi; ++i) idx.push_back(r * D + i);
          select(idx, c.group_k[g]);
        }
      } else {
        std::vector<int64_t> idx;
        for (int64_t r = 0; r < B; ++r)
          for (int64_t i = lo; i < hi; ++i) idx.push_back(r * D + i);
        select(idx, c.group_k[g] * B);
      }
    }
  } else if (c.arch == Arch::topk) {
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
  return {pre, acts, z};
}

// The training loss in double (SPEC + the variants). `frozen`: the parameters the stopped paths of
// stop-gradient / detached AuxK use (nullptr = the plain loss, everything live).
double loss_double(const GradSetup& s, const DoubleParams& p, double* margin, const DoubleParams* frozen = nullptr) {
  const auto& c = s.cfg;
  const int64_t B = s.B, d = c.d_in, D = c.d_sae, G = c.num_groups();
  const auto bounds = c.boundaries();
  auto note = [&](double gap) {
    if (margin) *margin = std::min(*margin, gap);
  };
  const Forward live = encode_select(s, p, margin);
  const Forward fz = frozen ? encode_select(s, *frozen, nullptr) : live;
  const DoubleParams& pf = frozen ? *frozen : p;
  const std::vector<double>& pre = live.pre;
  const std::vector<double>& acts = live.acts;
  const std::vector<double>& z = live.z;
  // Dead latents after this batch's counter update.
  std::vector<int64_t> dead;
  for (int64_t i = 0; i < D; ++i) {
    bool fired = false;
    for (int64_t r = 0; r < B; ++r) fired |= z[r * D + i] > 0;
    if (!fired && s.n_inactive[i] + 1 >= c.dead_after_batches) dead.push_back(i);
  }
  // Prefix reconstructions and L_rec = (t mse(b_dec) + sum_g w_g mse(r_g)) / (G + t).
  const double N = double(B * d);
  const int t_bdec = c.bdec_loss_term ? 1 : 0;
  // run: live sum of the groups so far (no bias); run_f: the same with frozen parameters; rg: r_g.
  std::vector<double> run(B * d, 0.0), run_f(B * d, 0.0), rg(B * d), r_G(B * d), r_G_frozen(B * d);
  double rec = 0.0;
  if (c.bdec_loss_term)
    for (int64_t row = 0; row < B; ++row)
      for (int64_t j = 0; j < d; ++j) rec += std::pow(p.b_dec[j] - s.x[row * d + j], 2) / N;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t lo = g ? bounds[g - 1] : 0;
    std::vector<double> group(B * d, 0.0), group_f(B * d, 0.0);  // z_g W_g, live and frozen
    for (int64_t row = 0; row < B; ++row)
      for (int64_t i = lo; i < bounds[g]; ++i) {
        if (z[row * D + i] != 0)
          for (int64_t j = 0; j < d; ++j) group[row * d + j] += z[row * D + i] * p.W_dec[i * d + j];
        if (fz.z[row * D + i] != 0)
          for (int64_t j = 0; j < d; ++j) group_f[row * d + j] += fz.z[row * D + i] * pf.W_dec[i * d + j];
      }
    double mse = 0.0;
    for (int64_t n = 0; n < B * d; ++n) {
      // stop-gradient: the earlier groups enter r_g as constants (frozen parameters), this group live
      const double earlier = c.stop_gradient_groups ? run_f[n] : run[n];
      rg[n] = p.b_dec[n % d] + earlier + group[n];
      run[n] += group[n];
      run_f[n] += group_f[n];
      mse += std::pow(rg[n] - s.x[n], 2) / N;
    }
    rec += c.prefix_weight(g) * mse;
    if (g == G - 1) r_G = rg;
  }
  for (int64_t n = 0; n < B * d; ++n) r_G_frozen[n] = pf.b_dec[n % d] + run_f[n];
  double loss = rec / double(G + t_bdec);
  if (c.arch == Arch::relu_l1) {
    double l1 = 0.0;
    for (int64_t g = 0, i = 0; g < G; ++g)
      for (; i < bounds[g]; ++i)
        for (int64_t row = 0; row < B; ++row) l1 += double(G - g) / double(G) * z[row * D + i];
    loss += s.l1_coef * l1 / double(B);
  }
  const std::vector<double>& run_full = c.aux_detach && frozen ? r_G_frozen : r_G;
  // AuxK.
  const int64_t keep = c.arch == Arch::relu_l1 ? 0 : std::min<int64_t>(c.aux_k, int64_t(dead.size()));
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
      aux += std::pow(a[n] - (s.x[n] - run_full[n]), 2) / N;
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

// The engine's analytic gradients against central differences of loss_double (of its surrogate when a
// stop-gradient switch is on).
void check_gradients(msae::SaeConfig cfg, int n_dead_before, const std::string& engine_name, double l1_coef) {
  msae::SaeParams params;
  GradSetup s = make_setup(cfg, 8, n_dead_before, params);
  if (::testing::Test::HasFailure()) return;
  cfg = s.cfg;
  s.l1_coef = l1_coef;

  // Analytic gradients from the engine (on a copy: the step updates the threshold and counters).
  msae::SaeParams p = params;
  msae::LatentState state;
  state.n_inactive = s.n_inactive;
  state.l1_coef = l1_coef;
  msae::SaeGrads grads = msae::SaeGrads::zeros(cfg.d_in, cfg.d_sae);
  std::vector<float> xf(s.x.begin(), s.x.end());
  auto engine = msae::train::make_engine(engine_name);
  const msae::StepStats stats = engine->forward_backward(cfg, xf.data(), s.B, p, state, grads);

  const DoubleParams base = to_double(params);
  EXPECT_NEAR(stats.loss, loss_double(s, base, nullptr), 1e-5 * stats.loss) << "forward loss";
  EXPECT_EQ(stats.aux_active, n_dead_before > 0) << "AuxK runs exactly when latents are dead";

  auto check = [&](std::vector<double> DoubleParams::*member, const msae::Tensor& analytic, const char* what) {
    std::vector<double> fd(analytic.data.size());
    for (size_t e = 0; e < fd.size(); ++e) {
      DoubleParams plus = base, minus = base;
      (plus.*member)[e] += kStep;
      (minus.*member)[e] -= kStep;
      fd[e] = (loss_double(s, plus, nullptr, &base) - loss_double(s, minus, nullptr, &base)) / (2 * kStep);
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
  check_gradients(cfg, gc.n_dead_before, engine_name, 0.0);
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

// ---- Variants and ablation switches (docs/variants.md), on a matryoshka base (d 6, D 32, k 3).
struct VariantCase {
  std::string name;
  std::function<void(msae::SaeConfig&)> tweak;
  int n_dead_before;
  double l1_coef;
};
void PrintTo(const VariantCase& c, std::ostream* os) { *os << c.name; }

std::vector<VariantCase> variant_cases() {
  using C = msae::SaeConfig;
  return {
      {"prefix_weights_aux", [](C& c) { c.prefix_weights = {0.5f, 2.0f, 0.0f, 1.0f, 3.0f}; }, 5, 0.0},
      {"no_bdec_term", [](C& c) { c.bdec_loss_term = false; }, 0, 0.0},
      {"stop_gradient", [](C& c) { c.group_sizes = {4, 12, 16}; c.stop_gradient_groups = true; }, 0, 0.0},
      {"stop_gradient_aux", [](C& c) { c.stop_gradient_groups = true; }, 5, 0.0},
      {"aux_detach", [](C& c) { c.aux_detach = true; }, 6, 0.0},
      {"all_switches",
       [](C& c) {
         c.group_sizes = {4, 12, 16};
         c.stop_gradient_groups = true;
         c.aux_detach = true;
         c.prefix_weights = {1.0f, 0.5f, 2.0f};
         c.bdec_loss_term = false;
         c.encoder_bias = true;
       },
       5, 0.0},
      {"group_k", [](C& c) { c.group_sizes = {4, 12, 16}; c.group_k = {1, 1, 2}; }, 0, 0.0},
      {"group_k_stop_gradient_aux",
       [](C& c) {
         c.group_sizes = {4, 12, 16};
         c.group_k = {2, 1, 1};
         c.stop_gradient_groups = true;
       },
       4, 0.0},
      {"group_k_topk_aux",
       [](C& c) {
         c.arch = Arch::topk;
         c.group_sizes = {8, 8, 16};
         c.group_k = {1, 1, 1};
       },
       4, 0.0},
      // Sampled prefixes reach the engines as one batch's irregular groups.
      {"sampled_like_groups_aux", [](C& c) { c.group_sizes = {1, 3, 5, 23}; }, 4, 0.0},
      {"relu_l1", [](C& c) { c.arch = Arch::relu_l1; c.group_sizes = {4, 12, 16}; }, 0, 0.05},
      {"relu_l1_single_group", [](C& c) { c.arch = Arch::relu_l1; c.group_sizes = {32}; }, 0, 0.2},
      {"relu_l1_stop_gradient_weights",
       [](C& c) {
         c.arch = Arch::relu_l1;
         c.group_sizes = {8, 24};
         c.stop_gradient_groups = true;
         c.prefix_weights = {2.0f, 1.0f};
       },
       0, 0.1},
  };
}

class VariantGradCheck : public ::testing::TestWithParam<std::tuple<VariantCase, std::string>> {};

TEST_P(VariantGradCheck, AnalyticMatchesCentralDifferences) {
  const auto& [vc, engine_name] = GetParam();
  msae::SaeConfig cfg;
  cfg.arch = Arch::matryoshka;
  cfg.d_in = 6;
  cfg.d_sae = 32;
  cfg.k = 3;
  cfg.dead_after_batches = 3;
  vc.tweak(cfg);
  cfg.finalize();
  auto engine = msae::train::make_engine(engine_name);
  if (!engine->unsupported(cfg).empty()) {
    // An engine without this variant must refuse it (usage error), never compute something else.
    msae::SaeParams p = msae::SaeParams::init(cfg.d_in, cfg.d_sae, 1);
    msae::SaeGrads g = msae::SaeGrads::zeros(cfg.d_in, cfg.d_sae);
    msae::LatentState st;
    std::vector<float> x(8 * cfg.d_in, 0.5f);
    EXPECT_THROW(engine->forward_backward(cfg, x.data(), 8, p, st, g), msae::Error);
    return;
  }
  check_gradients(cfg, vc.n_dead_before, engine_name, vc.l1_coef);
}

INSTANTIATE_TEST_SUITE_P(Variants, VariantGradCheck,
                         ::testing::Combine(::testing::ValuesIn(variant_cases()),
                                            ::testing::ValuesIn(msae::train::engine_names())),
                         [](const auto& test) { return std::get<0>(test.param).name + "_" + std::get<1>(test.param); });

}  // namespace
