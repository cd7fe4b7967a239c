// Latent-sharded training across the processes of an MPI job (docs/distributed.md), run by ctest under
// mpirun with 2, 3 and 4 processes (label mpi):
//   - the selection kernels across shards equal the one-process kernels on the assembled matrix, ties
//     at the cut included (dist_batch_cut, dist_row_cut);
//   - the sharded engine selects, at every step, the codes the one-process kernels select from its own
//     (gathered) parameters, for every arch and every variant it implements, AuxK active;
//   - over 10 steps its losses and parameters stay within the engine tolerances of one process
//     (tests/test_engines.cpp explains them);
//   - two runs with the same number of processes are bit-identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <compare>
#include <ostream>
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "msae/comm.h"
#include "msae/engine.h"
#include "msae/kernels.h"
#include "msae/model.h"
#include "msae/train.h"

#include "compare.h"

namespace msae {
namespace {

comm::Comm& world() { return comm::world(); }
bool root() { return world().rank() == 0; }

// One selected entry: row, global latent, the value's bits (plain data: gathered as bytes).
struct Entry {
  int64_t row, id;
  uint32_t bits, pad;
  auto operator<=>(const Entry&) const = default;
};
void PrintTo(const Entry& e, std::ostream* os) { *os << "(" << e.row << ", " << e.id << ", " << e.bits << ")"; }

// The entries of codes, ids mapped through gids (none: the ids themselves), sorted.
std::vector<Entry> entries(const kernels::SparseCodes& c, const std::vector<int64_t>& gids = {}) {
  std::vector<Entry> out;
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t e = c.row_ptr[r]; e < c.row_ptr[r + 1]; ++e) {
      uint32_t bits;
      std::memcpy(&bits, &c.vals[e], 4);
      out.push_back({r, gids.empty() ? c.ids[e] : gids[c.ids[e]], bits, 0});
    }
  std::sort(out.begin(), out.end());
  return out;
}

// Every process's entries with global ids, gathered on the root (sorted); empty elsewhere.
std::vector<Entry> gather_codes(const kernels::SparseCodes& c, const std::vector<int64_t>& gids) {
  const std::vector<Entry> mine = entries(c, gids);
  std::vector<char> bytes;
  std::vector<int64_t> counts;
  world().gatherv(mine.data(), static_cast<int64_t>(mine.size() * sizeof(Entry)), bytes, counts, 0);
  std::vector<Entry> all(bytes.size() / sizeof(Entry));
  if (!bytes.empty()) std::memcpy(all.data(), bytes.data(), bytes.size());
  std::sort(all.begin(), all.end());
  return all;
}

// This process's columns (global ids) of a (B, D) matrix.
std::vector<float> columns(const std::vector<float>& full, int64_t B, int64_t D, const std::vector<int64_t>& gids) {
  const int64_t n = static_cast<int64_t>(gids.size());
  std::vector<float> out(static_cast<size_t>(B * n));
  for (int64_t r = 0; r < B; ++r)
    for (int64_t j = 0; j < n; ++j) out[r * n + j] = full[r * D + gids[j]];
  return out;
}

// A (B, D) matrix with many exact ties: values drawn from a few levels, some negative.
std::vector<float> tied_matrix(int64_t B, int64_t D, uint64_t seed, int levels) {
  Rng rng(seed);
  std::vector<float> m(static_cast<size_t>(B * D));
  for (float& v : m) v = static_cast<float>(static_cast<int>(rng.uniform() * levels) - levels / 4) * 0.25f;
  return m;
}

TEST(DistSelect, BatchCutEqualsOneProcess) {
  const int P = world().size();
  for (const auto& [B, D, k, levels] : std::vector<std::tuple<int64_t, int64_t, int64_t, int>>{
           {16, 40, 3, 9}, {33, 64, 5, 1000000}, {8, 24, 30, 5}, {20, 48, 4, 2}}) {
    SaeConfig cfg;
    cfg.d_in = 4;
    cfg.d_sae = D;
    cfg.group_sizes = {D / 4, D / 4, D / 2};
    const LatentShard shard = shard_latents(cfg, world().rank(), P);
    const std::vector<float> pre = tied_matrix(B, D, 7 + B + levels, levels);
    const std::vector<float> local = columns(pre, B, D, shard.global_ids);
    const int64_t Dl = static_cast<int64_t>(shard.global_ids.size());
    const int64_t keep = k * B;
    kernels::SparseCodes mine, one;
    kernels::batch_topk(local.data(), B, Dl, std::min(keep, B * Dl), mine);
    kernels::DistScratch s;
    const float cut = kernels::dist_batch_cut(mine, keep, shard.global_ids, D, world(), s);
    kernels::batch_topk(pre.data(), B, D, keep, one);
    const std::vector<Entry> got = gather_codes(mine, shard.global_ids);
    if (root()) {
      EXPECT_EQ(got, entries(one)) << "B " << B << " D " << D << " levels " << levels;
      const float smallest = one.nnz() ? *std::min_element(one.vals.begin(), one.vals.end()) : 0.0f;
      EXPECT_EQ(cut, smallest);
    }
  }
}

TEST(DistSelect, RowCutEqualsOneProcess) {
  const int P = world().size();
  for (const auto& [B, D, k, levels] : std::vector<std::tuple<int64_t, int64_t, int64_t, int>>{
           {16, 40, 3, 9}, {9, 64, 7, 1000000}, {8, 24, 30, 5}, {12, 48, 2, 2}}) {
    SaeConfig cfg;
    cfg.d_in = 4;
    cfg.d_sae = D;
    cfg.group_sizes = {D / 4, D / 4, D / 2};
    const LatentShard shard = shard_latents(cfg, world().rank(), P);
    const std::vector<float> pre = tied_matrix(B, D, 11 + B + levels, levels);
    const std::vector<float> local = columns(pre, B, D, shard.global_ids);
    const int64_t Dl = static_cast<int64_t>(shard.global_ids.size());
    kernels::SparseCodes one;
    kernels::row_topk(pre.data(), B, D, k, one);
    const float smallest = one.nnz() ? *std::min_element(one.vals.begin(), one.vals.end()) : 0.0f;
    for (const kernels::RowCutMethod method : {kernels::RowCutMethod::candidates, kernels::RowCutMethod::histograms}) {
      kernels::SparseCodes mine;
      kernels::row_topk(local.data(), B, Dl, k, mine);
      kernels::DistScratch s;
      const float cut = kernels::dist_row_cut(mine, k, shard.global_ids, world(), s, method);
      const std::vector<Entry> got = gather_codes(mine, shard.global_ids);
      if (root()) {
        EXPECT_EQ(got, entries(one)) << "B " << B << " D " << D << " levels " << levels << " method "
                                     << static_cast<int>(method);
        EXPECT_EQ(cut, smallest);
      }
    }
  }
}

// ---- The sharded engine against one process.

struct EngineCase {
  std::string name;
  SaeConfig cfg;
  bool recipe_options = false;  // the geometric-median b_dec init and an lr warm-up and decay
};

SaeConfig base_config(Arch arch) {
  SaeConfig c;
  c.arch = arch;
  c.d_in = 16;
  c.d_sae = 64;
  c.k = 4;
  c.aux_k = 8;
  c.dead_after_batches = 2;  // AuxK from the third step on
  return c;
}

// Every arch and every registered variant the sharded engine implements.
std::vector<EngineCase> engine_cases() {
  std::vector<EngineCase> cases = {{"matryoshka", base_config(Arch::matryoshka)},
                                   {"batchtopk", base_config(Arch::batchtopk)},
                                   {"topk", base_config(Arch::topk)}};
  EngineCase bias{"matryoshka+encoder_bias", base_config(Arch::matryoshka)};
  bias.cfg.encoder_bias = true;
  cases.push_back(bias);
  cases.push_back({"matryoshka+median+schedule", base_config(Arch::matryoshka), true});
  for (const VariantEntry& v : variant_registry()) {
    if (!v.sparse) continue;
    EngineCase c{std::string("variant ") + v.name, base_config(Arch::matryoshka)};
    v.apply(c.cfg);
    SaeConfig fin = c.cfg;
    fin.finalize();
    LatentShard shard = shard_latents(fin, world().rank(), world().size());
    shard.comm = &world();
    if (!make_sparse_shard_engine({}, shard)->unsupported(fin).empty()) continue;  // refused (tested below)
    cases.push_back(c);
  }
  for (EngineCase& c : cases) c.cfg.finalize();
  return cases;
}

train::TrainOptions options_for(const SaeConfig& cfg, bool recipe_options = false) {
  train::TrainOptions o;
  o.bdec_geometric_median = recipe_options;
  o.lr_warmup_steps = recipe_options ? 3 : 0;
  o.lr_decay_start = recipe_options ? 6 : -1;
  o.sae = cfg;
  o.batch = 32;
  o.steps = 10;
  o.engine = "sparse";
  o.seed = 5;
  o.adam.lr = 1e-2f;  // large steps: the codes change from step to step
  return o;
}

std::vector<float> batch_at(int64_t step, int64_t B, int64_t d) {
  Rng rng(1000 + static_cast<uint64_t>(step));
  std::vector<float> x(static_cast<size_t>(B * d));
  for (int64_t r = 0; r < B; ++r) {
    const double scale = 0.5 + rng.uniform();
    for (int64_t j = 0; j < d; ++j) x[r * d + j] = static_cast<float>(scale * rng.normal() + (j % 3 == 0 ? 0.4 : 0.0));
  }
  return x;
}

// The one-process pre-activations of p on x (the engines' GEMM).
std::vector<float> pre_of(const SaeConfig& cfg, const SaeParams& p, const std::vector<float>& x, int64_t B) {
  const int64_t d = p.d, D = p.D;
  std::vector<float> xc(x), pre(static_cast<size_t>(B * D), 0.0f);
  for (int64_t r = 0; r < B; ++r)
    for (int64_t j = 0; j < d; ++j) xc[r * d + j] -= p.b_dec.data[j];
  if (cfg.encoder_bias)
    for (int64_t r = 0; r < B; ++r) std::copy(p.b_enc.data.begin(), p.b_enc.data.end(), pre.begin() + r * D);
  kernels::sgemm(kernels::Trans::no, kernels::Trans::yes, B, D, d, 1.0f, xc.data(), d, p.W_enc_t.ptr(), d,
                 cfg.encoder_bias ? 1.0f : 0.0f, pre.data(), D);
  return pre;
}

// The same entries selected; their values (pre-activations) from GEMMs over a shard's columns and over all
// of them, which may round differently in the last bit.
void expect_same_selection(const std::vector<Entry>& got, const std::vector<Entry>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].row, want[i].row) << what << ", entry " << i;
    ASSERT_EQ(got[i].id, want[i].id) << what << ", entry " << i;
    float a, b;
    std::memcpy(&a, &got[i].bits, 4);
    std::memcpy(&b, &want[i].bits, 4);
    EXPECT_NEAR(a, b, 1e-5f * std::abs(b) + 1e-6f) << what << ", entry " << i;  // cancellation near 0
  }
}

double rel_err(const Tensor& a, const Tensor& b) { return testing_support::rel_err(a.ptr(), b.ptr(), b.numel()); }

TEST(ShardedEngine, SelectsTheOneProcessCodesAtEveryStep) {
  for (const EngineCase& c : engine_cases()) {
    SCOPED_TRACE(c.name);
    const train::TrainOptions o = options_for(c.cfg, c.recipe_options);
    const int64_t B = o.batch, d = c.cfg.d_in, D = c.cfg.d_sae;
    train::Trainer sharded(o, SaeParams::init(d, D, o.seed));
    const std::vector<int64_t> gids = shard_latents(c.cfg, world().rank(), world().size()).global_ids;
    int aux_steps = 0;
    for (int64_t t = 0; t < o.steps; ++t) {
      const std::vector<float> x = batch_at(t, B, d);
      SaeParams before = std::as_const(sharded).params();  // gathered on the root
      if (t == 0 && o.bdec_geometric_median && root()) {   // the step starts by setting b_dec
        const std::vector<float> m = geometric_median(x.data(), B, d);
        std::copy(m.begin(), m.end(), before.b_dec.data.begin());
      }
      sharded.step(x.data());
      const StepEngine* k = sharded.engine().step_kernel();
      const std::vector<Entry> got = gather_codes(*k->last_codes(), gids);
      const std::vector<Entry> got_aux = gather_codes(*k->last_aux_codes(), gids);
      const std::vector<int64_t> n_inactive = sharded.latent_state().n_inactive;
      if (!root()) continue;
      const std::vector<float> pre = pre_of(c.cfg, before, x, B);
      kernels::SparseCodes one, one_aux;
      if (c.cfg.arch == Arch::topk)
        kernels::row_topk(pre.data(), B, D, c.cfg.k, one);
      else
        kernels::batch_topk(pre.data(), B, D, c.cfg.k * B, one);
      expect_same_selection(got, entries(one), "step " + std::to_string(t + 1));
      std::vector<int32_t> dead;
      for (int64_t i = 0; i < D; ++i)
        if (n_inactive[i] >= c.cfg.dead_after_batches) dead.push_back(static_cast<int32_t>(i));
      const int64_t aux_keep = std::min<int64_t>(c.cfg.aux_k, static_cast<int64_t>(dead.size()));
      kernels::SelectScratch scratch;
      if (aux_keep > 0) kernels::aux_topk(pre.data(), B, D, dead, aux_keep, one_aux, scratch);
      expect_same_selection(got_aux, entries(one_aux), "AuxK, step " + std::to_string(t + 1));
      aux_steps += one_aux.nnz() > 0;
    }
    if (root()) {
      EXPECT_GT(aux_steps, 0) << "AuxK never selected anything: the test does not cover it";
    }
  }
}

TEST(ShardedEngine, TracksOneProcessOverTenSteps) {
  for (const EngineCase& c : engine_cases()) {
    SCOPED_TRACE(c.name);
    const train::TrainOptions o = options_for(c.cfg, c.recipe_options);
    const int64_t B = o.batch, d = c.cfg.d_in, D = c.cfg.d_sae;
    train::Trainer sharded(o, SaeParams::init(d, D, o.seed));
    // One process: the host engine around the sparse kernel, as `msae train` without mpirun builds it.
    train::HostEngine one(o, SaeParams::init(d, D, o.seed), make_sparse_engine());
    bool aux = false;
    for (int64_t t = 0; t < o.steps; ++t) {
      const std::vector<float> x = batch_at(t, B, d);
      const StepStats s = sharded.step(x.data());
      const StepStats r = one.step(x.data());
      aux = aux || r.aux_active;
      EXPECT_NEAR(s.loss, r.loss, 1e-4 * std::abs(r.loss)) << "step " << t + 1;
      EXPECT_NEAR(s.l_aux, r.l_aux, 1e-4 * std::abs(r.l_aux) + 1e-9) << "step " << t + 1;
      EXPECT_EQ(s.l0, r.l0) << "step " << t + 1;
      EXPECT_EQ(s.n_dead, r.n_dead) << "step " << t + 1;
      EXPECT_EQ(s.aux_active, r.aux_active) << "step " << t + 1;
    }
    EXPECT_TRUE(aux) << "AuxK never ran: dead_after_batches too high for the test";
    const SaeParams& p = std::as_const(sharded).params();
    const train::AdamState& m = sharded.optimizer();
    if (!root()) continue;
    const SaeParams& q = one.params();
    EXPECT_LT(rel_err(p.W_enc_t, q.W_enc_t), 1e-4);
    EXPECT_LT(rel_err(p.W_dec, q.W_dec), 1e-4);
    EXPECT_LT(rel_err(p.b_dec, q.b_dec), 1e-4);
    EXPECT_LT(rel_err(p.b_enc, q.b_enc), 1e-4);
    EXPECT_LT(rel_err(m.v.W_dec, one.optimizer().v.W_dec), 1e-3);
    EXPECT_NEAR(p.threshold, q.threshold, 1e-5 * std::abs(q.threshold) + 1e-7);
    EXPECT_EQ(m.t, one.optimizer().t);
  }
}

TEST(ShardedEngine, SameProcessesTwiceIsBitIdentical) {
  const SaeConfig cfg = engine_cases().front().cfg;
  const train::TrainOptions o = options_for(cfg);
  std::vector<SaeParams> runs;
  for (int run = 0; run < 2; ++run) {
    train::Trainer t(o, SaeParams::init(cfg.d_in, cfg.d_sae, o.seed));
    for (int64_t s = 0; s < o.steps; ++s) t.step(batch_at(s, o.batch, cfg.d_in).data());
    runs.push_back(std::as_const(t).params());
  }
  if (!root()) return;
  EXPECT_EQ(runs[0].W_enc_t.data, runs[1].W_enc_t.data);
  EXPECT_EQ(runs[0].W_dec.data, runs[1].W_dec.data);
  EXPECT_EQ(runs[0].b_dec.data, runs[1].b_dec.data);
  EXPECT_EQ(std::memcmp(&runs[0].threshold, &runs[1].threshold, 4), 0);
}

TEST(ShardedEngine, RefusesWhatItDoesNotImplement) {
  if (world().size() == 1) GTEST_SKIP() << "one process trains unsharded";
  SaeConfig cfg = base_config(Arch::matryoshka);
  cfg.reorder_every = 5;
  cfg.finalize();
  EXPECT_THROW(train::Trainer(options_for(cfg), SaeParams::init(cfg.d_in, cfg.d_sae, 5)), Error);
  train::TrainOptions ref = options_for(base_config(Arch::matryoshka));
  ref.engine = "reference";
  try {
    train::Trainer t(ref, SaeParams::init(16, 64, 5));
    ADD_FAILURE() << "--engine reference ran across processes";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("only --engine sparse"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace msae
