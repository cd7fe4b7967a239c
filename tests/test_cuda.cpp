// The cuda engine on a GPU (ctest label gpu; built with -DMSAE_CUDA=ON; docs/cuda.md). Without a usable
// device every test but the first skips with the reason. test_engines (also labelled gpu in a CUDA build)
// checks the engine against the reference over the arch x variant table; here:
//   - without a device, --engine cuda is a usage error that says why;
//   - the same selected codes (and AuxK codes) as the CPU sparse engine on one forward/backward;
//   - a whole short training run (dead latents, AuxK, the threshold EMA) against the CPU sparse engine;
//   - bit-identical reruns on the GPU (parameters, moments, counters, statistics);
//   - the host views (checkpoint restore, mutable params) round-trip through the device;
//   - the tf32 and bf16 encoder GEMMs (--cuda-precision): the selection of one step against fp32's, a short
//     run's losses against the fp32 run's, bit-identical reruns in each precision.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <vector>

#include "msae/cuda.h"
#include "msae/engine.h"
#include "msae/model.h"
#include "msae/train.h"

#include "compare.h"

namespace msae {
namespace {

#define MSAE_SKIP_WITHOUT_GPU()                                  \
  do {                                                           \
    if (const std::string why = cuda::unavailable(); !why.empty()) \
      GTEST_SKIP() << "no GPU: " << why;                         \
  } while (0)

using testing_support::rel_err;

// Activation-like rows: a few hundred directions with sparse positive coefficients plus an offset.
std::vector<float> make_batch(int64_t B, int64_t d, uint64_t seed) {
  Rng basis_rng(12345);
  const int64_t dirs = 4 * d;
  std::vector<float> basis(static_cast<size_t>(dirs * d));
  for (float& v : basis) v = static_cast<float>(basis_rng.normal() / std::sqrt(static_cast<double>(d)));
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(B * d), 0.0f);
  for (int64_t r = 0; r < B; ++r) {
    for (int64_t f = 0; f < dirs; ++f)
      if (rng.uniform() < 0.03) {
        const float c = 2.0f * static_cast<float>(rng.uniform());
        for (int64_t j = 0; j < d; ++j) x[r * d + j] += c * basis[f * d + j];
      }
    for (int64_t j = 0; j < d; ++j) x[r * d + j] += 0.2f + 0.02f * static_cast<float>(rng.normal());
  }
  return x;
}

train::TrainOptions make_options(const std::string& engine, int64_t d, int64_t D, int64_t k, int64_t B) {
  train::TrainOptions opt;
  opt.sae.arch = Arch::matryoshka;
  opt.sae.d_in = d;
  opt.sae.d_sae = D;
  opt.sae.k = k;
  opt.sae.dead_after_batches = 3;
  opt.sae.aux_k = 64;
  opt.sae.finalize();
  opt.batch = B;
  opt.engine = engine;
  opt.adam.lr = 1e-3f;
  return opt;
}

TEST(CudaEngine, WithoutAGpuTheEngineSaysWhy) {
  const std::string why = cuda::unavailable();
  if (why.empty()) GTEST_SKIP() << "a GPU is here: " << cuda::device_info();
  const train::TrainOptions opt = make_options("cuda", 16, 64, 4, 8);
  try {
    train::Trainer t(opt, SaeParams::init(16, 64, 1));
    ADD_FAILURE() << "expected a usage error";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_NE(std::string(e.what()).find("--engine cuda"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
  }
}

TEST(CudaEngine, DeviceInfo) {
  MSAE_SKIP_WITHOUT_GPU();
  std::cout << "[ device ] " << cuda::device_info() << "\n";
}

// One forward/backward from the same state: the codes are the CPU sparse engine's (the cut's neighbours are
// further apart than the two GEMMs' round-off on this data; a mismatch would be a near-tie, reported).
TEST(CudaEngine, SameCodesAsTheCpuSparseEngine) {
  MSAE_SKIP_WITHOUT_GPU();
  const int64_t d = 48, D = 768, k = 12, B = 128;
  train::TrainOptions opt = make_options("cuda", d, D, k, B);
  SaeParams p_cpu = SaeParams::init(d, D, 3), p_gpu = p_cpu;
  LatentState s_cpu;
  s_cpu.n_inactive.assign(D, 0);
  for (int64_t i = 0; i < D; i += 3) s_cpu.n_inactive[i] = 10;  // a third dead: AuxK runs
  LatentState s_gpu = s_cpu;
  SaeGrads g_cpu = SaeGrads::zeros(d, D), g_gpu = g_cpu;
  auto cpu = train::make_engine("sparse");
  auto gpu = train::make_engine("cuda");
  const std::vector<float> x = make_batch(B, d, 7);
  const StepStats a = cpu->forward_backward(opt.sae, x.data(), B, p_cpu, s_cpu, g_cpu);
  const StepStats b = gpu->forward_backward(opt.sae, x.data(), B, p_gpu, s_gpu, g_gpu);
  ASSERT_TRUE(a.aux_active);
  EXPECT_EQ(b.aux_active, a.aux_active);
  for (const bool aux : {false, true}) {
    const kernels::SparseCodes& want = aux ? *cpu->last_aux_codes() : *cpu->last_codes();
    const kernels::SparseCodes& got = aux ? *gpu->last_aux_codes() : *gpu->last_codes();
    SCOPED_TRACE(aux ? "AuxK codes" : "codes");
    ASSERT_EQ(got.row_ptr, want.row_ptr);
    ASSERT_EQ(got.ids, want.ids);
    EXPECT_LT(rel_err(got.vals.data(), want.vals.data(), want.nnz()), 1e-5);
  }
  EXPECT_EQ(s_gpu.n_inactive, s_cpu.n_inactive);
  EXPECT_NEAR(b.loss, a.loss, 1e-5 * a.loss);
  EXPECT_LT(rel_err(g_gpu.W_dec.ptr(), g_cpu.W_dec.ptr(), g_cpu.W_dec.numel()), 2e-5);
  EXPECT_LT(rel_err(g_gpu.W_enc_t.ptr(), g_cpu.W_enc_t.ptr(), g_cpu.W_enc_t.numel()), 2e-5);
  EXPECT_LT(rel_err(g_gpu.b_dec.ptr(), g_cpu.b_dec.ptr(), g_cpu.b_dec.numel()), 2e-5);
}

// A whole short run: 40 steps from the same init on the same batches, latents dying along the way.
TEST(CudaEngine, ShortRunTracksTheCpuSparseEngine) {
  MSAE_SKIP_WITHOUT_GPU();
  const int64_t d = 64, D = 1024, k = 16, B = 256;
  train::TrainOptions opt = make_options("sparse", d, D, k, B);
  opt.bdec_geometric_median = true;
  opt.lr_warmup_steps = 5;
  train::Trainer cpu(opt, SaeParams::init(d, D, 5));
  opt.engine = "cuda";
  train::Trainer gpu(opt, SaeParams::init(d, D, 5));
  int aux_steps = 0;
  double worst_loss = 0;
  for (int step = 0; step < 40; ++step) {
    const std::vector<float> x = make_batch(B, d, 100 + step);
    const StepStats a = cpu.step(x.data());
    const StepStats b = gpu.step(x.data());
    SCOPED_TRACE("step " + std::to_string(step + 1));
    worst_loss = std::max(worst_loss, std::abs(b.loss - a.loss) / a.loss);
    EXPECT_NEAR(b.loss, a.loss, 2e-3 * a.loss);
    EXPECT_EQ(b.l0, a.l0);
    EXPECT_NEAR(static_cast<double>(b.n_dead), static_cast<double>(a.n_dead), 0.02 * D);
    aux_steps += a.aux_active;
  }
  std::cout << "[ cuda vs sparse ] 40 steps: worst relative loss difference " << worst_loss << ", AuxK active on "
            << aux_steps << " steps\n";
  EXPECT_GT(aux_steps, 0) << "the run should exercise AuxK";
  const SaeParams& pa = cpu.params();
  const SaeParams& pb = gpu.params();
  EXPECT_LT(rel_err(pb.W_dec.ptr(), pa.W_dec.ptr(), pa.W_dec.numel()), 2e-2);
  EXPECT_LT(rel_err(pb.W_enc_t.ptr(), pa.W_enc_t.ptr(), pa.W_enc_t.numel()), 2e-2);
  EXPECT_LT(rel_err(pb.b_dec.ptr(), pa.b_dec.ptr(), pa.b_dec.numel()), 2e-2);
  EXPECT_NEAR(pb.threshold, pa.threshold, 1e-3 * pa.threshold);
  EXPECT_EQ(gpu.optimizer().t, cpu.optimizer().t);
}

// Two engines, same init and data: the same bits after every step (no float atomics anywhere).
TEST(CudaEngine, RerunsAreBitIdentical) {
  MSAE_SKIP_WITHOUT_GPU();
  const int64_t d = 96, D = 2048, k = 16, B = 512;
  train::TrainOptions opt = make_options("cuda", d, D, k, B);
  opt.sae.dead_after_batches = 1;  // AuxK from the second step
  opt.sae.encoder_bias = true;
  train::Trainer a(opt, SaeParams::init(d, D, 9));
  train::Trainer b(opt, SaeParams::init(d, D, 9));
  bool aux = false;
  for (int step = 0; step < 8; ++step) {
    const std::vector<float> x = make_batch(B, d, 300 + step);
    const StepStats sa = a.step(x.data());
    const StepStats sb = b.step(x.data());
    aux |= sa.aux_active;
    EXPECT_EQ(sa.loss, sb.loss) << "step " << step + 1;
    EXPECT_EQ(sa.l_aux, sb.l_aux);
    EXPECT_EQ(a.last_grad_norm(), b.last_grad_norm());
  }
  EXPECT_TRUE(aux);
  auto same = [](const Tensor& x, const Tensor& y) {
    return x.numel() == y.numel() && std::memcmp(x.ptr(), y.ptr(), static_cast<size_t>(x.numel()) * sizeof(float)) == 0;
  };
  const SaeParams& pa = a.params();
  const SaeParams& pb = b.params();
  EXPECT_TRUE(same(pa.W_enc_t, pb.W_enc_t));
  EXPECT_TRUE(same(pa.W_dec, pb.W_dec));
  EXPECT_TRUE(same(pa.b_enc, pb.b_enc));
  EXPECT_TRUE(same(pa.b_dec, pb.b_dec));
  EXPECT_EQ(pa.threshold, pb.threshold);
  EXPECT_TRUE(same(a.optimizer().m.W_dec, b.optimizer().m.W_dec));
  EXPECT_TRUE(same(a.optimizer().v.W_enc_t, b.optimizer().v.W_enc_t));
  EXPECT_EQ(a.latent_state().n_inactive, b.latent_state().n_inactive);
}

// restore() then the host views give back what was restored; a write through the mutable view reaches the
// device before the next step; a resumed engine continues exactly as the one that saved.
TEST(CudaEngine, HostViewsAndResume) {
  MSAE_SKIP_WITHOUT_GPU();
  const int64_t d = 32, D = 512, k = 8, B = 64;
  const train::TrainOptions opt = make_options("cuda", d, D, k, B);
  train::Trainer a(opt, SaeParams::init(d, D, 2));
  for (int step = 0; step < 4; ++step) a.step(make_batch(B, d, 40 + step).data());
  // a checkpoint of a, restored into a fresh engine
  train::Trainer b(opt, SaeParams::init(d, D, 77));
  b.restore(a.params(), a.optimizer(), a.latent_state());
  EXPECT_EQ(std::memcmp(b.params().W_dec.ptr(), a.params().W_dec.ptr(), static_cast<size_t>(D * d) * sizeof(float)), 0);
  EXPECT_EQ(b.optimizer().t, 4);
  EXPECT_EQ(b.latent_state().n_inactive, a.latent_state().n_inactive);
  for (int step = 4; step < 7; ++step) {
    const std::vector<float> x = make_batch(B, d, 40 + step);
    EXPECT_EQ(a.step(x.data()).loss, b.step(x.data()).loss) << "step " << step + 1;
  }
  EXPECT_EQ(std::memcmp(b.params().W_enc_t.ptr(), a.params().W_enc_t.ptr(), static_cast<size_t>(D * d) * sizeof(float)), 0);
  // the mutable view: b_dec set on the host is the one the next step uses
  SaeParams& pb = b.params();
  std::fill(pb.b_dec.data.begin(), pb.b_dec.data.end(), 0.5f);
  EXPECT_EQ(b.params().b_dec.data[0], 0.5f);
  const StepStats s = b.step(make_batch(B, d, 99).data());
  EXPECT_NEAR(s.mse_bdec, [&] {
    const std::vector<float> x = make_batch(B, d, 99);
    double t = 0;
    for (float v : x) t += (0.5 - v) * (0.5 - v);
    return t / static_cast<double>(B * d);
  }(), 1e-6);
}

// ---- --cuda-precision tf32 | bf16 (docs/cuda.md, "Precision")

// One step from the same state in fp32 and in `p`: the selected (row, latent) pairs. The lower-precision
// pre-activations differ from fp32's by about u |x_cent| |w| (u = 2^-11 for TF32, 2^-9 for bf16: the inputs'
// rounding; fp32 accumulation), a few thousandths of the spread of the pre-activations at most, so only
// entries that close to the BatchTopK cut change sides: expected well under 1% of the kept pairs, asserted
// >= 95% equal; the loss within 1%.
void expect_selection_close(cuda::GemmPrecision p, double min_overlap) {
  const int64_t d = 128, D = 2048, k = 16, B = 256;
  train::TrainOptions opt = make_options("cuda", d, D, k, B);
  const SaeParams params = SaeParams::init(d, D, 11);
  const std::vector<float> x = make_batch(B, d, 17);
  kernels::SparseCodes codes[2], aux[2];
  StepStats stats[2];
  for (int i = 0; i < 2; ++i) {
    cuda::DeviceStep dev(d, D, B, i == 0 ? cuda::GemmPrecision::fp32 : p);
    ASSERT_EQ(dev.precision(), i == 0 ? cuda::GemmPrecision::fp32 : p);
    dev.upload_params(params);
    dev.upload_moments(nullptr, nullptr);
    dev.upload_counters(std::vector<int64_t>(static_cast<size_t>(D), 0));
    stats[i] = dev.forward_backward(opt.sae, x.data(), true);
    dev.download_codes(codes[i], aux[i]);
  }
  const kernels::SparseCodes &a = codes[0], &b = codes[1];
  ASSERT_EQ(a.nnz(), b.nnz());  // BatchTopK keeps k B entries (no ties at the cut on this data)
  int64_t same = 0, same_value = 0;
  for (int64_t r = 0; r < B; ++r) {
    const int* ai = a.ids.data() + a.row_ptr[r];
    const int* bi = b.ids.data() + b.row_ptr[r];
    const int64_t na = a.row_ptr[r + 1] - a.row_ptr[r], nb = b.row_ptr[r + 1] - b.row_ptr[r];
    // both id lists ascend: count the common ones
    for (int64_t i = 0, j = 0; i < na && j < nb;) {
      if (ai[i] < bi[j]) {
        ++i;
      } else if (bi[j] < ai[i]) {
        ++j;
      } else {
        ++same;
        same_value += a.vals[a.row_ptr[r] + i] == b.vals[b.row_ptr[r] + j];
        ++i;
        ++j;
      }
    }
  }
  const double overlap = static_cast<double>(same) / static_cast<double>(a.nnz());
  std::cout << "[ precision " << cuda::precision_name(p) << " ] step 1: " << same << " of " << a.nnz()
            << " selected pairs as fp32 (" << 100.0 * overlap << "%), " << same_value
            << " with the same value; loss " << stats[1].loss << " vs fp32 " << stats[0].loss << "\n";
  EXPECT_GE(overlap, min_overlap);
  // bf16 rounds the inputs itself, so some value must differ; TF32 is cuBLAS's choice of kernel (FAST_TF32
  // allows, not forces, tensor cores), so there it is only reported.
  if (p == cuda::GemmPrecision::bf16)
    EXPECT_LT(same_value, same) << "every selected value equals fp32's: was the precision applied?";
  else if (same_value == same)
    std::cout << "[ precision tf32 ] note: every selected value equals fp32's (cuBLAS chose an fp32 kernel?)\n";
  EXPECT_NEAR(stats[1].loss, stats[0].loss, 1e-2 * stats[0].loss);
}

TEST(CudaPrecision, Tf32SelectionOverlapsFp32) {
  MSAE_SKIP_WITHOUT_GPU();
  expect_selection_close(cuda::GemmPrecision::tf32, 0.95);
}

TEST(CudaPrecision, Bf16SelectionOverlapsFp32) {
  MSAE_SKIP_WITHOUT_GPU();
  expect_selection_close(cuda::GemmPrecision::bf16, 0.95);
}

// A short run (30 steps, dead latents and AuxK, warm-up) in `precision` against the fp32 cuda run from the
// same init on the same batches. The trajectories separate (other selections near the cut, then other
// parameters), but the losses stay close: per step within `tol` relative. Tolerances: TF32 2%, bf16 5%; the
// step-1 differences are ~1e-3 (the inputs' rounding), and 30 steps at lr 1e-3 do not amplify them beyond
// a few times that on this data; a wrong GEMM (layout, leading dimension, stale bf16 weights) gives losses
// off by far more.
void expect_run_close(const char* precision, double tol) {
  const int64_t d = 64, D = 1024, k = 16, B = 256;
  train::TrainOptions opt = make_options("cuda", d, D, k, B);
  opt.lr_warmup_steps = 5;
  train::Trainer ref(opt, SaeParams::init(d, D, 5));
  opt.cuda_precision = precision;
  train::Trainer low(opt, SaeParams::init(d, D, 5));
  double worst = 0;
  int aux_steps = 0;
  for (int step = 0; step < 30; ++step) {
    const std::vector<float> x = make_batch(B, d, 500 + step);
    const StepStats a = ref.step(x.data());
    const StepStats b = low.step(x.data());
    SCOPED_TRACE(std::string(precision) + " step " + std::to_string(step + 1));
    worst = std::max(worst, std::abs(b.loss - a.loss) / a.loss);
    EXPECT_NEAR(b.loss, a.loss, tol * a.loss);
    EXPECT_EQ(b.l0, a.l0);  // BatchTopK keeps k B in both
    aux_steps += b.aux_active;
  }
  std::cout << "[ precision " << precision << " ] 30 steps vs fp32: worst relative loss difference " << worst
            << ", AuxK active on " << aux_steps << " steps\n";
  EXPECT_GT(aux_steps, 0) << "the run should exercise AuxK";
  EXPECT_NEAR(low.params().threshold, ref.params().threshold, 5 * tol * ref.params().threshold);
}

TEST(CudaPrecision, Tf32RunTracksFp32) {
  MSAE_SKIP_WITHOUT_GPU();
  expect_run_close("tf32", 0.02);
}

TEST(CudaPrecision, Bf16RunTracksFp32) {
  MSAE_SKIP_WITHOUT_GPU();
  expect_run_close("bf16", 0.05);
}

// Two engines per precision, same init and data: the same bits after every step (cuBLAS's tensor-core GEMMs
// are deterministic on one GPU too; the bf16 copies are elementwise).
TEST(CudaPrecision, RerunsAreBitIdenticalInEachPrecision) {
  MSAE_SKIP_WITHOUT_GPU();
  const int64_t d = 96, D = 2048, k = 16, B = 512;
  for (const char* precision : {"tf32", "bf16"}) {
    SCOPED_TRACE(precision);
    train::TrainOptions opt = make_options("cuda", d, D, k, B);
    opt.sae.dead_after_batches = 1;
    opt.sae.encoder_bias = true;
    opt.cuda_precision = precision;
    train::Trainer a(opt, SaeParams::init(d, D, 9));
    train::Trainer b(opt, SaeParams::init(d, D, 9));
    for (int step = 0; step < 6; ++step) {
      const std::vector<float> x = make_batch(B, d, 300 + step);
      const StepStats sa = a.step(x.data());
      const StepStats sb = b.step(x.data());
      EXPECT_EQ(sa.loss, sb.loss) << "step " << step + 1;
      EXPECT_EQ(a.last_grad_norm(), b.last_grad_norm());
    }
    const SaeParams& pa = a.params();
    const SaeParams& pb = b.params();
    EXPECT_EQ(std::memcmp(pa.W_enc_t.ptr(), pb.W_enc_t.ptr(), static_cast<size_t>(D * d) * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(pa.W_dec.ptr(), pb.W_dec.ptr(), static_cast<size_t>(D * d) * sizeof(float)), 0);
    EXPECT_EQ(pa.threshold, pb.threshold);
    EXPECT_EQ(a.latent_state().n_inactive, b.latent_state().n_inactive);
  }
}

// An unknown precision is a usage error naming the option (the run layer checks the table's choices first).
TEST(CudaPrecision, UnknownPrecisionIsAUsageError) {
  try {
    cuda::parse_precision("fp16");
    ADD_FAILURE() << "expected a usage error";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_NE(std::string(e.what()).find("--cuda-precision"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cuda::parse_precision("bf16"), cuda::GemmPrecision::bf16);
  EXPECT_STREQ(cuda::precision_name(cuda::GemmPrecision::tf32), "tf32");
}

}  // namespace
}  // namespace msae
