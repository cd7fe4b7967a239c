// Feature models and their sampler (see include/msae/synth.h for the contract).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <numeric>

#include "msae/synth.h"
#include "core/fast_exp.h"
#include "synth/row_rng.h"

namespace msae::synth {
namespace {

using namespace detail;

constexpr float kMinMagnitude = 0.05f;
constexpr double kMaxSiblingMass = 0.9;

// Gram-Schmidt on Gaussian vectors: n <= d orthonormal rows.
void orthonormal_rows(Rng& rng, float* out, int64_t n, int64_t d) {
  MSAE_ASSERT(n <= d);
  std::vector<double> v(static_cast<size_t>(d));
  for (int64_t i = 0; i < n; ++i) {
    for (;;) {
      for (auto& x : v) x = rng.normal();
      for (int pass = 0; pass < 2; ++pass) {  // twice is enough for float-accurate orthogonality
        for (int64_t k = 0; k < i; ++k) {
          double dot = 0.0;
          for (int64_t j = 0; j < d; ++j) dot += v[j] * out[k * d + j];
          for (int64_t j = 0; j < d; ++j) v[j] -= dot * out[k * d + j];
        }
      }
      double n2 = 0.0;
      for (double x : v) n2 += x * x;
      if (n2 > 1e-6) {
        const double inv = 1.0 / std::sqrt(n2);
        for (int64_t j = 0; j < d; ++j) out[i * d + j] = static_cast<float>(v[j] * inv);
        break;
      }
    }
  }
}

// Fills the derived tree fields (depth, children ranges, marginal) from parent and cond_prob, and checks
// the layout (children contiguous, after their parent; sibling mass <= 1).
void finish_model(FeatureModel& m) {
  const int64_t N = m.n_features();
  m.depth.assign(N, 0);
  m.first_child.assign(N, 0);
  m.n_children.assign(N, 0);
  m.marginal.assign(N, 0.0);
  for (int64_t f = 0; f < N; ++f) {
    const int32_t p = m.parent[f];
    MSAE_ASSERT(p < f, "parent after child: feature ", f, " parent ", p);
    if (p < 0) {
      m.marginal[f] = m.cond_prob[f];
      continue;
    }
    m.depth[f] = m.depth[p] + 1;
    m.marginal[f] = m.marginal[p] * m.cond_prob[f];
    if (m.n_children[p] == 0) m.first_child[p] = static_cast<int32_t>(f);
    MSAE_ASSERT(m.first_child[p] + m.n_children[p] == f, "children of ", p, " are not contiguous");
    m.n_children[p] += 1;
  }
  for (int64_t f = 0; f < N; ++f) {
    double mass = 0.0;
    for (int32_t c = 0; c < m.n_children[f]; ++c) mass += m.cond_prob[m.first_child[f] + c];
    MSAE_ASSERT(mass <= 1.0 + 1e-12, "children of ", f, " have probability mass ", mass);
  }
}

void make_loadings(FeatureModel& m, Rng& rng, int64_t rank, double scale) {
  if (rank <= 0) return;
  const int64_t N = m.n_features();
  m.loadings = Tensor({N, rank});
  for (int64_t f = 0; f < N; ++f)
    if (m.parent[f] < 0) random_unit(rng, m.loadings.ptr() + f * rank, rank);
  m.corr_scale = scale;
}

bool is_prob(double p) { return p > 0.0 && p <= 1.0; }

}  // namespace

double FeatureModel::expected_l0() const { return std::accumulate(marginal.begin(), marginal.end(), 0.0); }

int32_t FeatureModel::max_depth() const { return depth.empty() ? 0 : *std::max_element(depth.begin(), depth.end()); }

FeatureModel make_hierarchical(const HierarchicalConfig& c) {
  if (c.d < 1 || c.d > (1 << 16)) usage_error("hierarchical model: d must be in [1, 65536], got ", c.d);
  if (c.n_features < 1 || c.n_features > (1 << 22))
    usage_error("hierarchical model: n_features must be in [1, 4194304], got ", c.n_features);
  if (!(c.zipf_exponent > 0.0 && c.zipf_exponent <= 4.0))
    usage_error("hierarchical model: zipf_exponent must be in (0, 4], got ", c.zipf_exponent);
  if (!is_prob(c.p_max) || !is_prob(c.p_min) || c.p_min > c.p_max)
    usage_error("hierarchical model: need 0 < p_min <= p_max <= 1, got p_min = ", c.p_min, ", p_max = ", c.p_max);
  if (c.n_roots < 0 || c.branching < 0 || c.depth < 0 || c.depth > 8)
    usage_error("hierarchical model: n_roots, branching must be >= 0 and depth in [0, 8], got ", c.n_roots, ", ",
                c.branching, ", ", c.depth);
  int64_t tree_nodes = 0, level = c.n_roots;
  for (int64_t l = 0; l <= c.depth && level > 0; ++l) {
    tree_nodes += level;
    level *= c.branching;
  }
  if (tree_nodes > c.n_features)
    usage_error("hierarchical model: the forest has ", tree_nodes, " nodes but n_features is ", c.n_features,
                "; hint: fewer roots, a smaller branching or depth");
  if (c.corr_rank < 0 || c.corr_rank > 1024) usage_error("hierarchical model: corr_rank must be in [0, 1024]");
  if (!(c.corr_scale >= 0.0 && c.corr_scale <= 3.0)) usage_error("hierarchical model: corr_scale must be in [0, 3]");
  if (!(c.mag_first > 0.0f && c.mag_last > 0.0f && c.mag_std_mean >= 0.0f && c.mag_std_std >= 0.0f))
    usage_error("hierarchical model: magnitudes must be positive and their std non-negative");
  if (!(c.bias_norm >= 0.0f && c.noise_std >= 0.0f)) usage_error("hierarchical model: bias_norm, noise_std >= 0");

  const int64_t N = c.n_features, d = c.d;
  FeatureModel m;
  m.name = "custom";
  m.d = d;
  m.seed = c.seed;
  m.noise_std = c.noise_std;
  Rng base(c.seed);
  Rng dir_rng = base.split(1), mag_rng = base.split(2), bias_rng = base.split(3), corr_rng = base.split(4);

  // Zipfian marginals by id: r_i = (i + 1)^-a rescaled linearly onto [p_min, p_max].
  std::vector<double> zipf(N);
  const double r_last = std::pow(static_cast<double>(N), -c.zipf_exponent);
  for (int64_t i = 0; i < N; ++i) {
    const double r = std::pow(1.0 + static_cast<double>(i), -c.zipf_exponent);
    zipf[i] = N > 1 ? c.p_min + (c.p_max - c.p_min) * (r - r_last) / (1.0 - r_last) : c.p_max;
  }
  zipf[N - 1] = N > 1 ? c.p_min : c.p_max;

  // Forest in breadth-first order: level 0 = roots [0, R), level l+1 = children of level l, in order.
  m.parent.assign(N, -1);
  m.cond_prob.assign(N, 0.0);
  int64_t level_begin = 0, level_end = std::min<int64_t>(c.n_roots, N), next = level_end;
  for (int64_t l = 0; l < c.depth && c.branching > 0; ++l) {
    for (int64_t p = level_begin; p < level_end; ++p)
      for (int64_t j = 0; j < c.branching; ++j) m.parent[next++] = static_cast<int32_t>(p);
    level_begin = level_end;
    level_end = next;
  }
  // Conditional probabilities: child marginal / parent marginal, sibling mass capped.
  std::vector<double> marg(N);
  for (int64_t f = 0; f < N; ++f) {
    const int32_t p = m.parent[f];
    m.cond_prob[f] = p < 0 ? zipf[f] : std::min(1.0, zipf[f] / marg[p]);
    marg[f] = zipf[f];
    const bool last_sibling = p >= 0 && (f + 1 == N || m.parent[f + 1] != p);
    if (last_sibling) {
      int64_t first = f;
      while (first > 0 && m.parent[first - 1] == p) --first;
      double mass = 0.0;
      for (int64_t s = first; s <= f; ++s) mass += m.cond_prob[s];
      if (mass > kMaxSiblingMass)
        for (int64_t s = first; s <= f; ++s) m.cond_prob[s] *= kMaxSiblingMass / mass;
      for (int64_t s = first; s <= f; ++s) marg[s] = marg[p] * m.cond_prob[s];
    }
  }

  m.directions = Tensor({N, d});
  for (int64_t f = 0; f < N; ++f) random_unit(dir_rng, m.directions.ptr() + f * d, d);
  m.bias = Tensor({d});
  if (c.bias_norm > 0.0f) {
    random_unit(bias_rng, m.bias.ptr(), d);
    for (int64_t j = 0; j < d; ++j) m.bias.ptr()[j] *= c.bias_norm;
  }
  m.mag_mean.resize(N);
  m.mag_std.resize(N);
  for (int64_t f = 0; f < N; ++f) {
    const double t = N > 1 ? static_cast<double>(f) / static_cast<double>(N - 1) : 0.0;
    m.mag_mean[f] = static_cast<float>(c.mag_first + (c.mag_last - c.mag_first) * t);
    m.mag_std[f] = static_cast<float>(std::fabs(c.mag_std_mean + c.mag_std_std * mag_rng.normal()));
  }
  make_loadings(m, corr_rng, c.corr_rank, c.corr_scale);
  finish_model(m);
  return m;
}

namespace {

// Explicit small toys: orthonormal directions in d >= N, given parents and probabilities.
FeatureModel make_toy(const std::string& name, int64_t d, const std::vector<int32_t>& parent,
                      const std::vector<double>& cond_prob, uint64_t seed) {
  const int64_t N = static_cast<int64_t>(parent.size());
  FeatureModel m;
  m.name = name;
  m.d = d;
  m.seed = seed;
  Rng base(seed);
  Rng dir_rng = base.split(1);
  m.directions = Tensor({N, d});
  orthonormal_rows(dir_rng, m.directions.ptr(), N, d);
  m.bias = Tensor({d});
  m.parent = parent;
  m.cond_prob = cond_prob;
  m.mag_mean.assign(N, 1.0f);
  m.mag_std.assign(N, 0.1f);
  m.noise_std = 0.0f;
  finish_model(m);
  return m;
}

}  // namespace

std::vector<std::string> preset_names() { return {"synth-lite", "synth-16k", "tree", "absorption"}; }

FeatureModel make_preset(const std::string& name, uint64_t seed) {
  if (name == "synth-16k") {
    HierarchicalConfig c;  // the defaults are the SynthSAEBench-16k parameters
    c.seed = seed;
    FeatureModel m = make_hierarchical(c);
    m.name = name;
    return m;
  }
  if (name == "synth-lite") {
    HierarchicalConfig c;
    c.d = 256;
    c.n_features = 512;
    c.p_max = 0.4;
    c.p_min = 2e-3;
    c.n_roots = 32;
    c.branching = 3;
    c.depth = 2;
    c.corr_rank = 8;
    c.seed = seed;
    FeatureModel m = make_hierarchical(c);
    m.name = name;
    return m;
  }
  if (name == "tree") {
    // Nabeshima's nested toy: parents 0..2, children 3..11 (three per parent), independents 12..19.
    std::vector<int32_t> parent(20, -1);
    std::vector<double> p(20, 0.05);
    for (int i = 0; i < 3; ++i) p[i] = 0.15;
    for (int c = 0; c < 9; ++c) {
      parent[3 + c] = c / 3;
      p[3 + c] = 0.2;
    }
    return make_toy(name, 20, parent, p, seed);
  }
  if (name == "absorption") {
    // Chanin et al.'s parent/child toy: parent 0, children 1..4, independents 5..15.
    std::vector<int32_t> parent(16, -1);
    std::vector<double> p(16, 0.05);
    p[0] = 0.25;
    for (int c = 1; c <= 4; ++c) {
      parent[c] = 0;
      p[c] = 0.2;
    }
    return make_toy(name, 16, parent, p, seed);
  }
  std::string names;
  for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
  usage_error("unknown preset '", name, "'; expected one of: ", names);
}

namespace {

// 24-bit uniform in [0, 1) from the top of a 32-bit draw.
inline float uniform24(uint32_t bits) { return static_cast<float>(bits >> 8) * 0x1.0p-24f; }

// a . b over r entries in a fixed order (eight partial sums, then pairwise), so that the result does not
// depend on how the compiler vectorizes it.
inline float dot_fixed(const float* a, const float* b, int64_t r) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= r; k += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[k + l] * b[k + l];
  for (int l = 0; k < r; ++k, ++l) acc[l] += a[k] * b[k];
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

// Eight floats as one value (GCC/Clang vector extension: AVX with -march=native, pairs of SSE registers
// without). Written out because GCC turned the plain loop over a 64-float block into gathers.
using Float8 = float __attribute__((vector_size(32)));
inline Float8 load8(const float* p) {
  Float8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, Float8 v) { std::memcpy(p, &v, sizeof v); }

inline Float8 splat8(float a) { return Float8{a, a, a, a, a, a, a, a}; }

// x[j] = x0[j] + sum over t < n of a[t] * v[t][j], for j < d (x0 may be x), with v[t] = the fired
// directions and as = a[t] broadcast: 64 coordinates at a time in eight vector registers, so that x is
// written once and each block costs eight FMAs per direction. Per coordinate the order of the additions
// is x0, then t = 0, 1, ..., the same in the blocks and in the tail.
inline void add_directions(const float* const* v, const Float8* as, int64_t n, int64_t d, const float* x0, float* x) {
  constexpr int64_t kBlock = 64;
  int64_t j0 = 0;
  for (; j0 + kBlock <= d; j0 += kBlock) {
    Float8 s0 = load8(x0 + j0), s1 = load8(x0 + j0 + 8), s2 = load8(x0 + j0 + 16), s3 = load8(x0 + j0 + 24);
    Float8 s4 = load8(x0 + j0 + 32), s5 = load8(x0 + j0 + 40), s6 = load8(x0 + j0 + 48), s7 = load8(x0 + j0 + 56);
    for (int64_t t = 0; t < n; ++t) {
      const float* vt = v[t] + j0;
      const Float8 at = as[t];
      s0 += at * load8(vt);
      s1 += at * load8(vt + 8);
      s2 += at * load8(vt + 16);
      s3 += at * load8(vt + 24);
      s4 += at * load8(vt + 32);
      s5 += at * load8(vt + 40);
      s6 += at * load8(vt + 48);
      s7 += at * load8(vt + 56);
    }
    store8(x + j0, s0);
    store8(x + j0 + 8, s1);
    store8(x + j0 + 16, s2);
    store8(x + j0 + 24, s3);
    store8(x + j0 + 32, s4);
    store8(x + j0 + 40, s5);
    store8(x + j0 + 48, s6);
    store8(x + j0 + 56, s7);
  }
  for (; j0 + 8 <= d; j0 += 8) {
    Float8 s0 = load8(x0 + j0);
    for (int64_t t = 0; t < n; ++t) s0 += as[t] * load8(v[t] + j0);
    store8(x + j0, s0);
  }
  for (; j0 < d; ++j0) {
    float acc = x0[j0];
    for (int64_t t = 0; t < n; ++t) acc += as[t][0] * v[t][j0];
    x[j0] = acc;
  }
}

}  // namespace

FeatureSampler::FeatureSampler(const FeatureModel& model, uint64_t seed, const SamplerOptions& options)
    : m_(model) {
  const int64_t N = m_.n_features(), r = m_.corr_rank();
  MSAE_ASSERT(N > 0 && m_.directions.numel() == N * m_.d && m_.bias.numel() == m_.d);
  if (!(options.dense_min_prob >= 0.0)) usage_error("sampler: dense_min_prob must be >= 0");
  for (int64_t f = 0; f < N; ++f) {
    if (m_.parent[f] >= 0 || !(m_.cond_prob[f] > 0.0)) continue;
    const double p = std::min(1.0, m_.cond_prob[f]);
    if (p >= options.dense_min_prob) {
      dense_ids_.push_back(static_cast<int32_t>(f));
    } else {
      sparse_ids_.push_back(static_cast<int32_t>(f));
      sparse_p_.push_back(p);
    }
  }
  // Dense features: padded to a multiple of 8 so that the vectorized loops need no tail.
  const int64_t nd = static_cast<int64_t>(dense_ids_.size());
  dense_padded_ = (nd + 7) / 8 * 8;
  dense_logp_.assign(dense_padded_, -87.0f);
  dense_p_.assign(dense_padded_, 0.0f);
  dense_load_t_.assign(static_cast<size_t>(r * dense_padded_), 0.0f);
  const double s = m_.corr_scale;
  for (int64_t i = 0; i < nd; ++i) {
    const int32_t f = dense_ids_[i];
    const double p = std::min(1.0, m_.cond_prob[f]);
    dense_p_[i] = static_cast<float>(p);
    dense_logp_[i] = static_cast<float>(std::max(-87.0, std::log(p) - 0.5 * s * s));
    for (int64_t k = 0; k < r; ++k) dense_load_t_[k * dense_padded_ + i] = m_.loadings.ptr()[f * r + k];
  }
  // Sparse features: segments whose probabilities lie within a factor 2 of the segment maximum q.
  const int64_t ns = static_cast<int64_t>(sparse_ids_.size());
  for (int64_t b = 0; b < ns;) {
    Segment seg;
    seg.begin = b;
    seg.q = sparse_p_[b];
    int64_t e = b + 1;
    while (e < ns && sparse_p_[e] <= seg.q && sparse_p_[e] > 0.5 * seg.q) ++e;
    seg.end = e;
    segments_.push_back(seg);
    b = e;
  }
  seg_rate_.resize(segments_.size() * kBoundLevels);
  seg_inv_log1m_.resize(segments_.size() * kBoundLevels);
  for (size_t g = 0; g < segments_.size(); ++g)
    for (int l = 0; l < kBoundLevels; ++l) {
      const double rate = std::min(1.0, segments_[g].q * std::exp2(0.25 * l));
      seg_rate_[g * kBoundLevels + l] = rate;
      seg_inv_log1m_[g * kBoundLevels + l] = rate < 1.0 ? 1.0 / std::log1p(-rate) : 0.0;
    }
  // Children's cumulative probabilities (float, like the 24-bit uniform they are compared with).
  cum4_.assign(static_cast<size_t>(N) * 4, 2.0f);
  child_cum_.assign(N, 0.0f);
  for (int64_t f = 0; f < N; ++f) {
    double cum = 0.0;
    for (int32_t c = 0; c < m_.n_children[f]; ++c) {
      cum += m_.cond_prob[m_.first_child[f] + c];
      child_cum_[m_.first_child[f] + c] = static_cast<float>(cum);
      if (m_.n_children[f] <= 4) cum4_[f * 4 + c] = static_cast<float>(cum);
    }
  }
  key_ = mix64(mix64(m_.seed ^ 0xfea7fea7fea7fea7ULL) + seed * kGamma);
}

void FeatureSampler::sample(int64_t n, float* out, FiredFeatures* fired) {
  MSAE_ASSERT(n >= 0);
  if (n == 0) {
    if (fired) *fired = FiredFeatures{};
    return;
  }
  const ZigTables& zt = zig_tables();
  const int64_t d = m_.d, r = m_.corr_rank();
  const double s = m_.corr_scale;
  const float sf = static_cast<float>(s), half_s2 = static_cast<float>(0.5 * s * s);
  const float* dirs = m_.directions.ptr();
  const float* bias = m_.bias.ptr();
  const float* load = r > 0 ? m_.loadings.ptr() : nullptr;
  const int64_t n_dense = static_cast<int64_t>(dense_ids_.size()), nd = dense_padded_;
  const uint64_t key = key_;
  const int64_t row0 = next_row_;
  std::vector<std::vector<int32_t>> ids(fired ? n : 0);

  const int32_t* n_children = m_.n_children.data();
  const int32_t* first_child = m_.first_child.data();
  const float* child_cum = child_cum_.data();
  const float* cum4 = cum4_.data();
  const double levels_per_nat = 4.0 / std::log(2.0);  // bound levels (quarter octaves) per unit of log(bound)
  const float* mag_mean = m_.mag_mean.data();
  const float* mag_std = m_.mag_std.data();

  parallel_for(
      n,
      [&](int64_t begin, int64_t end, int) {
        // Fired features of the row, list[0, len): base ones, then children. Kept at least len + 1 long
        // (entries past len are scratch), so that appends need no branch on the outcome.
        std::vector<int32_t> list(static_cast<size_t>(n_dense + 16));
        // The row's sum runs one row late: its output row is prefetched for writing when the row's features
        // are known, and written after the next row is drawn. Slot i % 2 holds row i. (Prefetching the
        // directions too cost 15% more instructions and showed no gain next to training.)
        struct Pending {
          std::vector<Float8> mags;              // (list) magnitudes, broadcast
          std::vector<const float*> vptr;        // (list) directions
          int64_t n = 0;                         // entries in use
          float* x = nullptr;
          const float* x0 = nullptr;
        } slots[2];
        std::vector<Float8> szk(static_cast<size_t>(r));  // s z_k, broadcast
        std::vector<float> z(static_cast<size_t>(r));
        std::vector<float> prob(static_cast<size_t>(nd));
        std::vector<uint32_t> ubits(static_cast<size_t>(nd));
        alignas(64) float normals[kNormalBlock];
        for (int64_t i = begin; i < end; ++i) {
          RowRng rng(key, static_cast<uint64_t>(row0 + i));
          // Correlation factor of this row and its bound over unit loadings: exp(s |z| - s^2/2).
          // For skipping it is rounded up to the next 2^(l/4) (level l, rates precomputed).
          double log_bound = 0.0;
          if (r > 0) {
            double n2 = 0.0;
            for (int64_t k0 = 0; k0 < r; k0 += kNormalBlock) {
              const int64_t mb = std::min(kNormalBlock, r - k0);
              normals_block(rng, zt, z.data() + k0, mb);
              for (int64_t k = k0; k < k0 + mb; ++k) n2 += static_cast<double>(z[k]) * z[k];
            }
            log_bound = s * std::sqrt(n2) - 0.5 * s * s;
          }
          const double level_real = std::ceil(log_bound * levels_per_nat);
          const int level = level_real <= 0.0 ? 0 : static_cast<int>(std::min<double>(level_real, kBoundLevels));
          // Dense base features: p_f(z) for all of them and one 24-bit uniform each; the hits are appended
          // in id order.
          int64_t len = 0;
          if (n_dense > 0) {
            float* pr = prob.data();
            if (r > 0) {
              // logp_f + s L_f . z, eight features at a time in a register, then exp.
              const float* lt = dense_load_t_.data();
              for (int64_t k = 0; k < r; ++k) szk[k] = splat8(sf * z[k]);
              for (int64_t f0 = 0; f0 < nd; f0 += 8) {
                Float8 acc = load8(dense_logp_.data() + f0);
                const float* l = lt + f0;
                for (int64_t k = 0; k < r; ++k, l += nd) acc += load8(l) * szk[k];
                store8(pr + f0, acc);
              }
              for (int64_t f = 0; f < nd; ++f) pr[f] = msae::detail::exp_fast(pr[f]);
            } else {
              std::copy(dense_p_.begin(), dense_p_.end(), pr);
            }
            for (int64_t f = 0; f < nd; f += 2) {
              const uint64_t b = rng.next();
              ubits[f] = static_cast<uint32_t>(b);
              ubits[f + 1] = static_cast<uint32_t>(b >> 32);
            }
            // Hits as a bit mask per 32 features, then only the set bits are visited (padding masked off).
            const int32_t* ids_dense = dense_ids_.data();
            for (int64_t f0 = 0; f0 < n_dense; f0 += 32) {
              const int64_t m = std::min<int64_t>(32, nd - f0);
              uint32_t mask = 0;
              for (int64_t j = 0; j < m; ++j) mask |= static_cast<uint32_t>(uniform24(ubits[f0 + j]) < pr[f0 + j]) << j;
              if (n_dense - f0 < 32) mask &= (uint32_t{1} << (n_dense - f0)) - 1;
              for (; mask != 0; mask &= mask - 1) list[len++] = ids_dense[f0 + std::countr_zero(mask)];
            }
          }
          // Sparse base features: geometric skipping per segment, then thinning to p_f(z).
          for (size_t g = 0; g < segments_.size(); ++g) {
            const Segment& seg = segments_[g];
            double q, inv_log1m_q;
            if (level < kBoundLevels) {
              q = seg_rate_[g * kBoundLevels + level];
              inv_log1m_q = seg_inv_log1m_[g * kBoundLevels + level];
            } else {  // bound >= 2^16: computed here
              q = std::min(1.0, seg.q * std::exp(log_bound));
              inv_log1m_q = q < 1.0 ? 1.0 / std::log1p(-q) : 0.0;
            }
            for (int64_t b = seg.begin;; ++b) {
              if (inv_log1m_q != 0.0) {
                const double skip = std::floor(std::log(1.0 - rng.uniform()) * inv_log1m_q);
                if (skip >= static_cast<double>(seg.end - b)) break;
                b += static_cast<int64_t>(skip);
              } else if (b >= seg.end) {
                break;
              }
              const int32_t f = sparse_ids_[b];
              double p = sparse_p_[b];
              if (r > 0) p *= msae::detail::exp_fast(sf * dot_fixed(load + static_cast<int64_t>(f) * r, z.data(), r) - half_s2);
              if (rng.uniform() * q < p) {
                list[len++] = f;
                if (len == static_cast<int64_t>(list.size())) list.resize(2 * list.size());
              }
            }
          }
          // Children, breadth-first (the list grows while it is read): at most one per fired parent,
          // one 24-bit uniform per listed feature, no branch on the outcome.
          for (int64_t t = 0; t < len; ++t) {
            const int32_t f = list[t], nc = n_children[f];
            const float u = uniform24(static_cast<uint32_t>(rng.next() >> 32));
            int32_t c;
            if (nc <= 4) {
              const float* cm = cum4 + 4 * static_cast<int64_t>(f);
              c = (u >= cm[0]) + (u >= cm[1]) + (u >= cm[2]) + (u >= cm[3]);
            } else {
              const float* cm = child_cum + first_child[f];
              c = 0;
              while (c < nc && u >= cm[c]) ++c;
            }
            list[len] = first_child[f] + c;
            len += c < nc;
            if (len == static_cast<int64_t>(list.size())) list.resize(2 * list.size());
          }
          // Magnitudes: N(mean_f, std_f^2) clipped to >= kMinMagnitude.
          const int64_t nl = len;
          Pending& row = slots[i & 1];
          std::vector<Float8>& mags = row.mags;
          std::vector<const float*>& vptr = row.vptr;
          if (static_cast<int64_t>(mags.size()) < nl) {
            mags.resize(static_cast<size_t>(nl));
            vptr.resize(static_cast<size_t>(nl));
          }
          row.n = nl;
          for (int64_t t0 = 0; t0 < nl; t0 += kNormalBlock) {
            const int64_t mb = std::min(kNormalBlock, nl - t0);
            normals_block(rng, zt, normals, mb);
            for (int64_t t = 0; t < mb; ++t) {
              const int32_t f = list[t0 + t];
              mags[t0 + t] = splat8(std::max(mag_mean[f] + mag_std[f] * normals[t], kMinMagnitude));
              vptr[t0 + t] = dirs + static_cast<int64_t>(f) * d;
            }
          }
          // x = bias (+ noise) + sum of the fired directions times their magnitudes: the noise now, the
          // sum after the next row is drawn (or at the end).
          row.x = out + i * d;
          row.x0 = bias;
          if (m_.noise_std > 0.0f) {
            add_gaussian(rng, zt, bias, m_.noise_std, row.x, d);
            row.x0 = row.x;
          }
          for (int64_t j = 0; j < d; j += 16) __builtin_prefetch(row.x + j, 1);  // the row it will write
          if (i > begin) {
            const Pending& prev = slots[(i - 1) & 1];
            add_directions(prev.vptr.data(), prev.mags.data(), prev.n, d, prev.x0, prev.x);
          }
          if (fired) {
            std::vector<int32_t>& row_ids = ids[i];
            row_ids.assign(list.begin(), list.begin() + len);
            std::sort(row_ids.begin(), row_ids.end());
          }
        }
        const Pending& last = slots[(end - 1) & 1];
        add_directions(last.vptr.data(), last.mags.data(), last.n, d, last.x0, last.x);
      },
      64);

  if (fired) {
    fired->offsets.assign(1, 0);
    fired->ids.clear();
    for (auto& v : ids) {
      fired->ids.insert(fired->ids.end(), v.begin(), v.end());
      fired->offsets.push_back(static_cast<int64_t>(fired->ids.size()));
    }
  }
  next_row_ += n;
}

}  // namespace msae::synth
