// msae cuda: the training step on one NVIDIA GPU (docs/cuda.md). Built only with -DMSAE_CUDA=ON.
//
// Two layers:
// - cuda::DeviceStep (module msae_cuda, src/cuda/device_step.cu): the device state of one SAE (parameters,
//   gradients, Adam moments, dead counters, threshold) and the kernels of SPEC.md's default path: the encoder
//   GEMM (cuBLAS, fp32), BatchTopK by radix select over the float bits (src/cuda/radix_select.h; ties as the
//   CPU: the lower flat index is kept), the dead counters, AuxK, the Matryoshka prefix sums and losses, the
//   sparse backward accumulated per latent, and the update (clip, decoder constraint, Adam). Deterministic:
//   no float atomics; every float sum has a fixed order, so a rerun on the same GPU gives the same bits.
//   It knows the model types only (model.h), not the trainer.
// - the `cuda` training engine (src/train/cuda_engine.cpp, in msae_train): train::Engine over a DeviceStep,
//   registered in the engine registry (engine.h) when msae is built with CUDA.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "msae/kernels.h"
#include "msae/model.h"

namespace msae::cuda {

// Empty when a CUDA device this build can run on is visible; otherwise why not (no device, no driver, a
// device older than sm_90).
std::string unavailable();
// One line about device 0: name, multiprocessors, memory, driver and runtime versions, cuBLAS version.
std::string device_info();

// What the device step implements of a finalized config: empty when everything, else the options it does
// not implement (arch topk and relu_l1, per-group selection, stop-gradient, detached AuxK, sampled
// prefixes, latent reordering).
std::string unsupported(const SaeConfig& cfg);

// The encoder GEMM's input precision (--cuda-precision; docs/cuda.md). Accumulation and everything after the
// GEMM are fp32 in all three.
//   fp32  cublasSgemm without tensor cores (CUBLAS_DEFAULT_MATH): SPEC's step
//   tf32  the same fp32 buffers, CUBLAS_COMPUTE_32F_FAST_TF32: the tensor cores round the inputs to TF32
//   bf16  x - b_dec and W_enc converted to bfloat16 copies on the device (W_enc once after each change),
//         cublasGemmEx with CUDA_R_16BF inputs, a CUDA_R_32F output and CUBLAS_COMPUTE_32F
enum class GemmPrecision { fp32, tf32, bf16 };
// "fp32" | "tf32" | "bf16"; anything else is a usage error naming --cuda-precision.
GemmPrecision parse_precision(const std::string& name);
const char* precision_name(GemmPrecision p);

// The device state and step of one SAE of width (d, D) trained on batches of B rows, its encoder GEMM in
// `precision`. Allocates all device memory in the constructor (the (B, G, d) prefix sums grow with the
// number of groups). Not thread-safe.
class DeviceStep {
 public:
  DeviceStep(int64_t d, int64_t D, int64_t B, GemmPrecision precision = GemmPrecision::fp32);
  ~DeviceStep();
  DeviceStep(const DeviceStep&) = delete;
  DeviceStep& operator=(const DeviceStep&) = delete;

  int64_t d() const;
  int64_t D() const;
  int64_t B() const;
  GemmPrecision precision() const;

  // Parameters (W_enc_t, b_enc, W_dec, b_dec, threshold) to and from the device.
  void upload_params(const SaeParams& p);
  void download_params(SaeParams& p) const;  // p's tensors are resized as needed; p.rule is left alone
  void set_b_dec(const float* b_dec /*(d)*/);
  // Adam moments: nullptr uploads zeros.
  void upload_moments(const SaeGrads* m, const SaeGrads* v);
  void download_moments(SaeGrads& m, SaeGrads& v) const;
  void upload_counters(const std::vector<int64_t>& n_inactive /*(D)*/);
  void download_counters(std::vector<int64_t>& n_inactive) const;
  // The gradients of the last forward_backward (sum_squares set to the device's sum of squares).
  void download_grads(SaeGrads& g) const;
  // The last step's selected codes and AuxK codes as CSR (ids ascending per row).
  void download_codes(kernels::SparseCodes& codes, kernels::SparseCodes& aux) const;

  // Forward, loss and backward of SPEC.md on x (B, d) in host memory (copied through a pinned buffer): the
  // threshold EMA (when update_threshold) and the dead counters on the device, the gradients into the
  // device's gradient buffers. Synchronizes once mid-step (the kept count and dead count) and at the end (the
  // statistics). The statistics live in the object until the next call.
  const StepStats& forward_backward(const SaeConfig& cfg, const float* x, bool update_threshold);
  // The sum of squares of all four gradients of the last forward_backward (double, fixed order).
  double grad_sum_squares() const;
  // SPEC "Update" on the device: clip (coefficient from grad_sum_squares, as train::apply_update), decoder
  // constraint, Adam at step t (>= 1) with the given hyperparameters (lr already scheduled). b_enc is trained
  // only with cfg.encoder_bias. Returns the gradient norm before clipping.
  double update(const SaeConfig& cfg, const kernels::AdamHyper& adam, float max_grad_norm, int64_t t);
  float threshold() const;

  // The encoder GEMM alone (the same cuBLAS call the step makes, in the same precision, on the step's
  // buffers; bf16: on the bf16 copies, the conversions not included), timed with CUDA events: the median
  // seconds of `reps` calls after one warm-up.
  double time_encoder_gemm(int reps);
  // Seconds of the last forward_backward + update per phase (CUDA events): encode, select, auxk_select,
  // rows, latents, update.
  std::vector<std::pair<std::string, double>> last_phase_seconds() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace msae::cuda

namespace msae::train {

struct TrainOptions;
class Engine;

// The registry's `cuda` entry (src/train/cuda_engine.cpp): the whole training engine (state on the device,
// host mirrors synchronized only when a host view is asked for), the forward/backward as a host StepEngine
// (uploads the parameters and counters, downloads gradients, counters and threshold: for the gradient checks
// and the engine-equivalence tests), and what it does not implement (cuda::unsupported, or the absence of a
// usable device).
std::unique_ptr<Engine> make_cuda_engine(const TrainOptions& options, SaeParams params);
std::unique_ptr<StepEngine> make_cuda_step();
std::string cuda_engine_unsupported(const SaeConfig& cfg);

// `msae bench --engine cuda`: whole optimizer steps of the cuda engine on the given batches (cycled), and
// the cuBLAS encoder GEMM alone on the same device buffers, both in options.cuda_precision.
struct CudaBenchResult {
  std::string device;
  std::string precision;  // "fp32" | "tf32" | "bf16"
  double step_s = 0, gemm_s = 0;  // medians
  std::vector<double> step_samples;
  std::vector<std::pair<std::string, double>> phases;  // the last timed step's
  StepStats last;
};
CudaBenchResult bench_cuda(const TrainOptions& options, SaeParams params, const std::vector<std::vector<float>>& batches,
                           int warmup, int steps);

}  // namespace msae::train
