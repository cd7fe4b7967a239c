// The training step's hot path allocates nothing once its buffers have grown (issue 4: "no allocation in
// the step's hot path after the first step"). Every global operator new of this test binary counts while
// a flag is set; the sparse engine's forward_backward and the update then run on a repeated step (the same
// batch, parameters and counters, so every buffer needs the size it had the step before), with AuxK on
// both of its paths, and must not call it once.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "msae/model.h"
#include "msae/train.h"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_news{0};

void* counted(std::size_t n, std::size_t align) {
  if (g_counting.load(std::memory_order_relaxed)) g_news.fetch_add(1, std::memory_order_relaxed);
  if (n == 0) n = 1;
  void* p = nullptr;
  if (align <= alignof(std::max_align_t)) {
    p = std::malloc(n);
  } else if (posix_memalign(&p, align, n) != 0) {
    p = nullptr;
  }
  if (!p) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(std::size_t n) { return counted(n, 0); }
void* operator new[](std::size_t n) { return counted(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return counted(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted(n, static_cast<std::size_t>(a)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted(n, 0);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace msae {
namespace {

struct Case {
  const char* name;
  Arch arch;
  double aux_dense_min_density;  // 0: AuxK as GEMMs, 2: sparse products
  bool encoder_bias;
};

TEST(NoAllocation, RepeatedSparseStepAndUpdateAllocateNothing) {
  const Case cases[] = {{"matryoshka, dense AuxK", Arch::matryoshka, 0.0, false},
                        {"matryoshka, sparse AuxK", Arch::matryoshka, 2.0, false},
                        {"batchtopk, dense AuxK, encoder bias", Arch::batchtopk, 0.0, true},
                        {"topk, sparse AuxK", Arch::topk, 2.0, false}};
  const int64_t d = 48, D = 384, B = 128;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    SaeConfig cfg;
    cfg.arch = c.arch;
    cfg.d_in = d;
    cfg.d_sae = D;
    cfg.k = 6;
    cfg.aux_k = 32;
    cfg.encoder_bias = c.encoder_bias;
    cfg.dead_after_batches = 5;
    cfg.finalize();
    auto engine = make_sparse_engine({c.aux_dense_min_density});
    const SaeParams p0 = SaeParams::init(d, D, 3);
    LatentState s0;
    s0.n_inactive.assign(D, 0);
    for (int64_t i = 0; i < D; i += 3) s0.n_inactive[i] = 100;  // a third of the latents dead: AuxK runs
    Rng rng(5);
    std::vector<float> x(B * d);
    for (float& v : x) v = static_cast<float>(rng.normal());
    SaeParams p = p0;
    LatentState s = s0;
    SaeGrads g = SaeGrads::zeros(d, D);
    train::AdamState opt{SaeGrads::zeros(d, D), SaeGrads::zeros(d, D), 0};
    const kernels::AdamHyper adam;
    int64_t aux_steps = 0;
    for (int step = 0; step < 5; ++step) {
      // Copy-assignments into buffers of the same size: no allocation, and outside the counted part.
      p.W_enc_t.data = p0.W_enc_t.data;
      p.W_dec.data = p0.W_dec.data;
      p.b_enc.data = p0.b_enc.data;
      p.b_dec.data = p0.b_dec.data;
      p.threshold = p0.threshold;
      s.n_inactive = s0.n_inactive;
      const bool counted_step = step >= 2;  // the first steps grow the buffers
      g_news = 0;
      g_counting = counted_step;
      const StepStats& st = engine->forward_backward(cfg, x.data(), B, p, s, g);
      train::apply_update(cfg, adam, 1e5f, p, g, opt);
      g_counting = false;
      if (counted_step) {
        EXPECT_EQ(g_news.load(), 0) << "step " << step << " called operator new";
        aux_steps += st.aux_active;
      }
    }
    EXPECT_EQ(aux_steps, 3) << "AuxK must run in the counted steps";
  }
}

// The trainer's step (variant hooks, engine, update) on the default recipe, without dead latents: after
// the first steps, nothing.
TEST(NoAllocation, TrainerStepsAllocateNothing) {
  for (const char* arch : {"matryoshka", "batchtopk"}) {
    SCOPED_TRACE(arch);
    train::TrainOptions opt;
    opt.sae.arch = parse_arch(arch);
    opt.sae.d_in = 48;
    opt.sae.d_sae = 384;
    opt.sae.k = 6;
    opt.sae.finalize();
    opt.batch = 128;
    opt.steps = 8;
    opt.engine = "sparse";
    train::Trainer trainer(opt, SaeParams::init(48, 384, 1));
    Rng rng(2);
    std::vector<float> x(128 * 48);
    for (float& v : x) v = static_cast<float>(rng.normal());
    for (int step = 0; step < 8; ++step) {
      const bool counted_step = step >= 3;
      g_news = 0;
      g_counting = counted_step;
      trainer.step(x.data());
      g_counting = false;
      if (counted_step) {
        EXPECT_EQ(g_news.load(), 0) << "step " << step << " called operator new";
      }
    }
  }
}

}  // namespace
}  // namespace msae
