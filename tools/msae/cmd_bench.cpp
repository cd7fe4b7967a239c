// msae bench: times the training step (engine forward/backward + update) and its phases on synthetic
// data, next to the encoder GEMM alone (same shapes, same process, same threads), the bound every exact
// BatchTopK step has to pay. docs/performance.md shows how the published tables were produced.
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <map>
#include <memory>
#include <numeric>
#include <sstream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "msae/comm.h"
#if MSAE_HAVE_CUDA
#include "msae/cuda.h"
#endif
#include "msae/kernels.h"
#include "msae/engine.h"
#include "msae/model.h"
#include "msae/synth.h"
#include "msae/train.h"

namespace msae::cli {
namespace {

using nlohmann::json;

// Share of a dead latent's pre-activations that are positive, measured on the dead latents of a real
// msae training run (docs/performance.md "AuxK cost": d=768, D=16384, k=32, B=4096, 30 steps on the
// bench's activation-like data; 51% of the latents were dead by then, and 17% of their pre-activations
// were positive).
constexpr double kMeasuredDeadPositive = 0.17;

struct BenchArgs {
  int64_t d_in = 768, d_sae = 16384, k = 32, batch = 4096;
  std::string arch = "matryoshka";
  std::string group_sizes;
  int64_t steps = 5, warmup = 2;
  int threads = 0;
  std::string engine = "sparse";
  std::string cuda_precision = "fp32";  // --engine cuda only
  double dead_fraction = 0.0;
  double aux_dense_density = SparseEngineOptions{}.aux_dense_min_density;
  double dead_positive = kMeasuredDeadPositive;
  float dead_scale = 0.3f;
  uint64_t seed = 0;
  bool json_out = false;
  std::string preset;        // rows from a synth-bench preset's generator (d from the preset)
  bool d_in_given = false;
  int64_t train_steps = 0;   // steps trained (fresh rows each) before the warm-up
};

// CPU seconds of the whole process (all threads). On a machine shared with other jobs, wall time counts
// the time our threads wait for a core; CPU time does not (it still pays for shared caches and memory
// bandwidth), so ratios of CPU times are the steadier figure under load.
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// The 1-minute load average (/proc/loadavg), or -1 where unavailable.
double load_average() {
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  if (!f) return -1.0;
  double l = -1.0;
  if (std::fscanf(f, "%lf", &l) != 1) l = -1.0;
  std::fclose(f);
  return l;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<int64_t> parse_sizes(const std::string& text) {
  std::vector<int64_t> sizes;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      sizes.push_back(std::stoll(item));
    } catch (const std::exception&) {
      usage_error("--group-sizes: '", item, "' is not an integer");
    }
  }
  return sizes;
}

// Activation-like rows: a sparse mix of random directions plus an offset and noise.
void fill_batch(std::vector<float>& x, int64_t B, int64_t d, Rng& rng, const std::vector<float>& basis, int64_t dirs) {
  std::fill(x.begin(), x.end(), 0.0f);
  for (int64_t r = 0; r < B; ++r) {
    float* row = x.data() + r * d;
    for (int n = 0; n < 16; ++n) {
      const int64_t f = static_cast<int64_t>(rng.below(static_cast<uint64_t>(dirs)));
      const float c = static_cast<float>(rng.uniform());
      const float* b = basis.data() + f * d;
      for (int64_t j = 0; j < d; ++j) row[j] += c * b[j];
    }
    for (int64_t j = 0; j < d; ++j) row[j] += 0.2f + 0.05f * static_cast<float>(rng.normal());
  }
}

// Shifts the encoder rows of `dead` along minus the unit mean direction u of x's first `rows` rows,
// w_i -= beta u, with beta such that a share `target` of the dead latents' pre-activations x.w_i is
// positive on those rows. Returns beta; `got` receives the share reached.
double calibrate_dead(const std::vector<float>& x, int64_t rows, int64_t d, SaeParams& params,
                      const std::vector<int32_t>& dead, double target, double& got) {
  const int64_t n = static_cast<int64_t>(dead.size());
  std::vector<double> mean(d, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < d; ++j) mean[j] += x[r * d + j];
  double norm = 0.0;
  for (double v : mean) norm += v * v;
  norm = std::sqrt(norm);
  std::vector<float> u(d);
  for (int64_t j = 0; j < d; ++j) u[j] = norm > 0 ? static_cast<float>(mean[j] / norm) : 0.0f;
  std::vector<float> w(n * d), a(rows * n), c(rows);
  for (int64_t j = 0; j < n; ++j)
    std::copy_n(params.W_enc_t.ptr() + static_cast<int64_t>(dead[j]) * d, d, w.data() + j * d);
  kernels::sgemm(kernels::Trans::no, kernels::Trans::yes, rows, n, d, 1.0f, x.data(), d, w.data(), d, 0.0f, a.data(),
                 n);
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0.0;
    for (int64_t j = 0; j < d; ++j) s += static_cast<double>(x[r * d + j]) * u[j];
    c[r] = static_cast<float>(s);
  }
  auto share = [&](double beta) {
    int64_t pos = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const float shift = static_cast<float>(beta) * c[r];
      for (int64_t j = 0; j < n; ++j) pos += a[r * n + j] - shift > 0.0f;
    }
    return static_cast<double>(pos) / static_cast<double>(rows * n);
  };
  double lo = 0.0, hi = 1.0;
  while (share(hi) > target && hi < 1e6) hi *= 2.0;
  for (int it = 0; it < 40; ++it) {
    const double mid = 0.5 * (lo + hi);
    (share(mid) > target ? lo : hi) = mid;
  }
  got = share(hi);
  for (int32_t i : dead) {
    float* wi = params.W_enc_t.ptr() + static_cast<int64_t>(i) * d;
    for (int64_t j = 0; j < d; ++j) wi[j] -= static_cast<float>(hi) * u[j];
  }
  return hi;
}

#if MSAE_HAVE_CUDA
// --engine cuda (docs/cuda.md): whole optimizer steps of the cuda engine (state on the device) on the bench's
// batches, and the cuBLAS encoder GEMM alone on the same device buffers (CUDA events).
int run_bench_cuda(const BenchArgs& a, const SaeConfig& cfg, SaeParams params, const std::vector<std::vector<float>>& data) {
  if (a.dead_fraction > 0.0) usage_error("--dead-fraction is not implemented for --engine cuda");
  train::TrainOptions opt;
  opt.sae = cfg;
  opt.batch = a.batch;
  opt.engine = "cuda";
  opt.cuda_precision = a.cuda_precision;
  const train::CudaBenchResult r = train::bench_cuda(opt, std::move(params), data, static_cast<int>(a.warmup),
                                                     static_cast<int>(a.steps));
  const double gflop = 2.0 * static_cast<double>(a.batch) * static_cast<double>(cfg.d_in) * static_cast<double>(cfg.d_sae) * 1e-9;
  json phases = json::object();
  for (const auto& [name, sec] : r.phases) phases[name] = sec;
  const json out = {{"engine", "cuda"}, {"device", r.device}, {"arch", arch_name(cfg.arch)}, {"d_in", cfg.d_in},
                    {"d_sae", cfg.d_sae}, {"k", cfg.k}, {"batch", a.batch}, {"precision", r.precision},
                    {"steps", a.steps}, {"warmup", a.warmup}, {"step_s", r.step_s}, {"step_samples_s", r.step_samples},
                    {"encoder_gemm_s", r.gemm_s}, {"encoder_gemm_gflops", gflop / r.gemm_s},
                    {"step_over_gemm", r.step_s / r.gemm_s}, {"phases_s", phases}, {"loss", r.last.loss},
                    {"l0", r.last.l0}, {"n_dead", r.last.n_dead}};
  if (a.json_out) {
    std::printf("%s\n", out.dump().c_str());
    return 0;
  }
  std::printf("msae bench: cuda engine on %s, %s SAE d=%lld D=%lld k=%lld B=%lld, encoder GEMM %s, %lld steps after "
              "%lld warm-up\n",
              r.device.c_str(), arch_name(cfg.arch), static_cast<long long>(cfg.d_in), static_cast<long long>(cfg.d_sae),
              static_cast<long long>(cfg.k), static_cast<long long>(a.batch), r.precision.c_str(),
              static_cast<long long>(a.steps), static_cast<long long>(a.warmup));
  std::printf("  %-22s %10.3f ms\n", "step (median)", 1e3 * r.step_s);
  std::printf("  %-22s %10.3f ms  (%.1f GFLOP/s)\n", "encoder GEMM alone", 1e3 * r.gemm_s, gflop / r.gemm_s);
  std::printf("  %-22s %10.2f x\n", "step / encoder GEMM", r.step_s / r.gemm_s);
  std::printf("  phases of the last step (ms):");
  for (const auto& [name, sec] : r.phases) std::printf(" %s %.3f |", name.c_str(), 1e3 * sec);
  std::printf("\n  last step: loss %.6g, l0 %.2f, dead %lld\n", r.last.loss, r.last.l0, static_cast<long long>(r.last.n_dead));
  return 0;
}
#endif

int run_bench(const BenchArgs& a) {
  set_num_threads(a.threads);
  kernels::set_blas_threads(num_threads());
  if (a.steps <= 0 || a.warmup < 0) usage_error("--steps must be positive and --warmup >= 0");
  if (!(a.dead_fraction >= 0.0 && a.dead_fraction < 1.0)) usage_error("--dead-fraction must be in [0, 1)");
  if (a.train_steps < 0) usage_error("--train-steps must be >= 0");
  if (a.cuda_precision != "fp32" && a.engine != "cuda")
    usage_error("--cuda-precision ", a.cuda_precision, " applies to --engine cuda only, and this bench uses --engine ",
                a.engine, ": give --engine cuda, or drop --cuda-precision");
  if (a.train_steps > 0 && a.dead_fraction > 0.0)
    usage_error("--train-steps and --dead-fraction are two scenarios: give one (trained latents die on their own)");
  // Rows: a synth-bench preset's generator, or the activation-like default below.
  std::unique_ptr<synth::FeatureSampler> sampler;
  int64_t d_in = a.d_in;
  if (!a.preset.empty()) {
    sampler = std::make_unique<synth::FeatureSampler>(synth::make_preset(a.preset, a.seed), synth::synth_bench_train_stream(a.seed));
    if (a.d_in_given && a.d_in != sampler->model().d)
      usage_error("--d-in ", a.d_in, " differs from preset ", a.preset, "'s width ", sampler->model().d, " (omit --d-in)");
    d_in = sampler->model().d;
  }
  SaeConfig cfg;
  cfg.arch = parse_arch(a.arch);
  cfg.d_in = d_in;
  cfg.d_sae = a.d_sae;
  cfg.k = a.k;
  if (!a.group_sizes.empty()) cfg.group_sizes = parse_sizes(a.group_sizes);
  cfg.finalize();
  const int64_t B = a.batch, d = d_in, D = a.d_sae;
  if (B <= 0) usage_error("--batch must be positive");

  if (!(a.aux_dense_density >= 0.0)) usage_error("--aux-dense-density must be >= 0");
  std::unique_ptr<StepEngine> engine =
      a.engine == "sparse" ? make_sparse_engine({a.aux_dense_density}) : train::make_engine(a.engine);
  SaeParams params = SaeParams::init(d, D, a.seed);
  SaeGrads grads = SaeGrads::zeros(d, D);
  train::AdamState opt;
  LatentState state;
  state.n_inactive.assign(D, 0);
  kernels::AdamHyper hyper;

  Rng rng(a.seed + 1);
  const int64_t dirs = 4 * d;
  std::vector<float> basis(dirs * d);
  for (float& v : basis) v = static_cast<float>(rng.normal() / std::sqrt(static_cast<double>(d)) * 4.0);
  auto next_rows = [&](std::vector<float>& x) {
    if (sampler)
      sampler->sample(B, x.data());
    else
      fill_batch(x, B, d, rng, basis, dirs);
  };
  // --train-steps: the engine trains on fresh rows first (SPEC's Adam, no lr schedule), so that the timed
  // steps see trained parameters; the loss, L0, dead latents and the engine's counters along the way.
  json train_curve = json::array();
  Timer train_timer;
  if (a.train_steps > 0) {
    const train::TrainOptions defaults;
    std::vector<float> x(B * d);
    int64_t next_mark = 1;
    for (int64_t s = 1; s <= a.train_steps; ++s) {
      next_rows(x);
      const StepStats st = engine->forward_backward(cfg, x.data(), B, params, state, grads);
      train::apply_update(cfg, defaults.adam, defaults.max_grad_norm, params, grads, opt);
      if (s == next_mark || s == a.train_steps) {
        json c = json::object();
        for (const auto& [name, v] : engine->last_counters()) c[name] = v;
        train_curve.push_back({{"step", s}, {"loss", st.loss}, {"fvu", st.var_x > 0 ? st.mse_prefix.back() / st.var_x : 0.0},
                               {"l0", st.l0}, {"n_dead", st.n_dead}, {"counters", c}});
        while (next_mark <= s) next_mark = next_mark < 10 ? next_mark * 2 : next_mark * 3 / 2 + 1;
      }
    }
  }
  const double train_seconds = train_timer.seconds();
  constexpr int kBatches = 3;
  std::vector<std::vector<float>> data(kBatches, std::vector<float>(B * d));
  for (auto& x : data) next_rows(x);
#if MSAE_HAVE_CUDA
  if (a.engine == "cuda") return run_bench_cuda(a, cfg, std::move(params), data);
#endif

  // Dead latents: counters far past the limit, every step, and encoder rows that keep them below the
  // BatchTopK cut. Default ("trained"): w_i - beta u, u the unit mean direction of the data, with one
  // beta for all dead latents chosen (bisection on the first batch) so that the share of their positive
  // pre-activations is --dead-positive, the share measured on the dead latents of a real training run.
  // --dead-positive < 0: the older scenario, rows scaled by --dead-scale (acts positive about half the
  // time, so AuxK keeps its full aux_k per row).
  std::vector<int32_t> dead;
  double dead_beta = 0.0, dead_positive_got = 0.0;
  if (a.dead_fraction > 0.0) {
    std::vector<int64_t> order(D);
    std::iota(order.begin(), order.end(), 0);
    shuffle_indices(order, rng);
    const int64_t n_dead = std::max<int64_t>(1, static_cast<int64_t>(a.dead_fraction * static_cast<double>(D)));
    for (int64_t j = 0; j < n_dead; ++j) dead.push_back(static_cast<int32_t>(order[j]));
    if (a.dead_positive < 0.0) {
      for (int32_t i : dead) {
        float* w = params.W_enc_t.ptr() + static_cast<int64_t>(i) * d;
        for (int64_t c = 0; c < d; ++c) w[c] *= a.dead_scale;
      }
    } else {
      dead_beta = calibrate_dead(data[0], std::min<int64_t>(B, 1024), d, params, dead, a.dead_positive,
                                 dead_positive_got);
    }
  }
  // Under mpirun (more than one process): the sharded step of `mpirun msae train` (docs/distributed.md).
  // Every process makes the same data and the same whole parameters, then keeps its shard of the latents
  // (with its dead ones); the timings are the root's, whose steps wait for the others' in the collectives.
  comm::Comm& world = comm::world();
  const int processes = world.size();
  int64_t Dl = D;  // this process's latents
  if (processes > 1) {
    if (a.engine != "sparse") usage_error("--engine ", a.engine, " runs in one process; under mpirun use --engine sparse");
    LatentShard shard = shard_latents(cfg, world.rank(), processes);
    shard.comm = &world;
    const std::vector<int64_t>& ids = shard.global_ids;
    Dl = static_cast<int64_t>(ids.size());
    SaeParams local = SaeParams::zeros(d, Dl);
    for (int64_t j = 0; j < Dl; ++j) {
      std::copy_n(params.W_enc_t.ptr() + ids[j] * d, d, local.W_enc_t.ptr() + j * d);
      std::copy_n(params.W_dec.ptr() + ids[j] * d, d, local.W_dec.ptr() + j * d);
    }
    params = std::move(local);
    std::vector<int32_t> local_dead;
    for (const int32_t i : dead)
      if (const auto it = std::lower_bound(ids.begin(), ids.end(), i); it != ids.end() && *it == i)
        local_dead.push_back(static_cast<int32_t>(it - ids.begin()));
    std::sort(local_dead.begin(), local_dead.end());
    dead = std::move(local_dead);
    engine = make_sparse_shard_engine({a.aux_dense_density}, std::move(shard));
    grads = SaeGrads::zeros(d, Dl);
    state.n_inactive.assign(Dl, 0);
  }
  // The dead latents' encoder rows as set up above, restored before every step (untimed): AuxK's
  // gradient, through Adam, moves them up by ~lr * sum|x| per step and would revive them within ~10
  // steps, so without the restore the scenario drifts during the run.
  std::vector<float> dead_rows(dead.size() * d);
  for (size_t j = 0; j < dead.size(); ++j)
    std::copy_n(params.W_enc_t.ptr() + static_cast<int64_t>(dead[j]) * d, d, dead_rows.data() + j * d);
  auto restore_dead = [&] {
    for (size_t j = 0; j < dead.size(); ++j)
      std::copy_n(dead_rows.data() + j * d, d, params.W_enc_t.ptr() + static_cast<int64_t>(dead[j]) * d);
  };
  std::vector<float> gemm_out(B * Dl);
  std::vector<float> x_cent(B * d);

  std::map<std::string, std::vector<double>> phases, counters;
  std::vector<double> step_s, gemm_s, fb_s, update_s, noaux_s;
  std::vector<double> step_cpu, gemm_cpu, noaux_cpu;  // process CPU seconds of the same intervals
  int64_t step_bytes = 0, step_calls = 0;              // sent by this process in the timed steps (collectives)
  const double load_start = load_average();
  StepStats last;
  int64_t aux_steps = 0;
  for (int64_t it = 0; it < a.warmup + a.steps; ++it) {
    const std::vector<float>& x = data[it % kBatches];
    Timer t;
    if (!dead.empty()) {
      // The same step without AuxK (no latent dead), on the same batch, in the same iteration: the
      // AuxK overhead is the ratio of the two medians, both under the same load.
      for (int32_t i : dead) state.n_inactive[i] = 0;
      restore_dead();
      t.reset();
      const double c0 = process_cpu_seconds();
      engine->forward_backward(cfg, x.data(), B, params, state, grads);
      train::apply_update(cfg, hyper, 1e5f, params, grads, opt);
      if (it >= a.warmup) {
        noaux_s.push_back(t.seconds());
        noaux_cpu.push_back(process_cpu_seconds() - c0);
      }
      t.reset();
    }
    for (int32_t i : dead) state.n_inactive[i] = std::max<int64_t>(state.n_inactive[i], 1000);
    restore_dead();
    t.reset();
    const double cpu_step0 = process_cpu_seconds();
    const int64_t bytes0 = world.bytes_sent(), calls0 = world.calls();
    last = engine->forward_backward(cfg, x.data(), B, params, state, grads);
    const double fb = t.seconds();
    t.reset();
    train::apply_update(cfg, hyper, 1e5f, params, grads, opt);
    const double up = t.seconds();
    const double cpu_step = process_cpu_seconds() - cpu_step0;
    if (it >= a.warmup) {
      step_bytes += world.bytes_sent() - bytes0;
      step_calls += world.calls() - calls0;
    }
    // The bound: the encoder GEMM alone, same shapes and threads, interleaved with the steps (dead rows
    // restored first, so its output also shows the AuxK entries the scenario gives, counted below).
    restore_dead();
    for (int64_t r = 0; r < B; ++r)
      for (int64_t j = 0; j < d; ++j) x_cent[r * d + j] = x[r * d + j] - params.b_dec.data[j];
    t.reset();
    const double cpu_gemm0 = process_cpu_seconds();
    kernels::sgemm(kernels::Trans::no, kernels::Trans::yes, B, Dl, d, 1.0f, x_cent.data(), d, params.W_enc_t.ptr(), d,
                   0.0f, gemm_out.data(), Dl);
    const double gemm = t.seconds();
    const double cpu_gemm = process_cpu_seconds() - cpu_gemm0;
    if (it < a.warmup) continue;
    aux_steps += last.aux_active;
    fb_s.push_back(fb);
    update_s.push_back(up);
    step_s.push_back(fb + up);
    gemm_s.push_back(gemm);
    step_cpu.push_back(cpu_step);
    gemm_cpu.push_back(cpu_gemm);
    for (const auto& [name, sec] : engine->last_phase_seconds()) phases[name].push_back(sec);
    phases["update"].push_back(up);
    for (const auto& [name, n] : engine->last_counters()) counters[name].push_back(n);
  }

  // AuxK entries per row, counted on the last encoder-GEMM output (the parameters after the last update):
  // min(aux_k, positive pre-activations among the dead latents), averaged over rows.
  double last_aux_per_row = 0.0;
  if (a.dead_fraction > 0.0) {
    std::vector<int64_t> pos(static_cast<size_t>(B), 0);  // positive dead pre-activations per row, all processes
    for (int64_t r = 0; r < B; ++r)
      for (int32_t i : dead) pos[r] += gemm_out[r * Dl + i] > 0.0f;
    world.allreduce_sum(pos.data(), B);
    int64_t total = 0;
    for (int64_t r = 0; r < B; ++r) total += std::min<int64_t>(pos[r], cfg.aux_k);
    last_aux_per_row = static_cast<double>(total) / static_cast<double>(B);
  }
  // Peak memory of every process (the largest is the root's: it holds the whole data batch like the others
  // and nothing more in the bench).
  int64_t rss_max = peak_rss_bytes(), rss_now = rss_bytes();
  world.allreduce_max(&rss_max, 1);
  world.allreduce_max(&rss_now, 1);  // after the steps: the state and the step buffers, not the set-up's copies
  const double step = median(step_s), gemm = median(gemm_s);
  const double tokens_per_s = static_cast<double>(B) / step;
  const double gflop = 2.0 * static_cast<double>(B) * static_cast<double>(d) * static_cast<double>(Dl) / 1e9;
  json out = {
      {"engine", engine->name()},
      {"arch", arch_name(cfg.arch)},
      {"d_in", d},
      {"d_sae", D},
      {"k", cfg.k},
      {"batch", B},
      {"groups", cfg.group_sizes},
      {"threads", num_threads()},
      {"blas", kernels::blas_info()},
      {"steps", a.steps},
      {"warmup", a.warmup},
      {"dead_fraction", a.dead_fraction},
      {"aux_dense_density", a.aux_dense_density},
      {"n_dead_last_step", last.n_dead},
      {"dead_positive_target", a.dead_fraction > 0.0 ? a.dead_positive : 0.0},
      {"dead_positive_calibrated", dead_positive_got},
      {"dead_shift_beta", dead_beta},
      {"aux_entries_per_row_last_step", last_aux_per_row},
      {"aux_active_steps", aux_steps},
      {"step_s", step},
      {"step_s_min", *std::min_element(step_s.begin(), step_s.end())},
      {"forward_backward_s", median(fb_s)},
      {"encoder_gemm_s", gemm},
      {"encoder_gemm_gflops", gflop / gemm},
      {"step_over_gemm", step / gemm},
      {"tokens_per_s", tokens_per_s},
      {"peak_rss_bytes", peak_rss_bytes()},
      {"processes", processes},
      {"latents_per_process", Dl},
      {"peak_rss_bytes_max_process", rss_max},
      {"rss_after_steps_bytes_max_process", rss_now},
      {"bytes_sent_per_step", static_cast<double>(step_bytes) / static_cast<double>(a.steps)},
      {"collectives_per_step", static_cast<double>(step_calls) / static_cast<double>(a.steps)},
      {"step_without_auxk_s", noaux_s.empty() ? 0.0 : median(noaux_s)},
      {"auxk_overhead", noaux_s.empty() ? 0.0 : step / median(noaux_s) - 1.0},
      {"step_cpu_s", median(step_cpu)},
      {"encoder_gemm_cpu_s", median(gemm_cpu)},
      {"step_over_gemm_cpu", median(step_cpu) / median(gemm_cpu)},
      {"auxk_overhead_cpu", noaux_cpu.empty() ? 0.0 : median(step_cpu) / median(noaux_cpu) - 1.0},
      {"load_average_start", load_start},
      {"load_average_end", load_average()},
      {"loss_last_step", last.loss},
      {"l0_last_step", last.l0},
      {"rows", a.preset.empty() ? std::string("activation-like (sparse mix of 4d random directions)") : "preset " + a.preset},
      {"train_steps", a.train_steps},
      {"train_seconds", train_seconds},
      {"train_curve", train_curve},
  };
  json ph = json::object();
  for (const auto& [name, v] : phases) ph[name] = median(v);
  out["phases_s"] = ph;
  json cn = json::object();
  for (const auto& [name, v] : counters) cn[name] = median(v);
  out["counters"] = cn;
  out["kernel"] = engine->kernel_info();

  if (a.json_out) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("msae bench: %s engine, %s SAE d=%lld D=%lld k=%lld B=%lld, %d threads, %lld steps after %lld warm-up\n",
              engine->name(), arch_name(cfg.arch), static_cast<long long>(d), static_cast<long long>(D),
              static_cast<long long>(cfg.k), static_cast<long long>(B), num_threads(), static_cast<long long>(a.steps),
              static_cast<long long>(a.warmup));
  std::printf("BLAS: %s\n", kernels::blas_info().c_str());
  if (!engine->kernel_info().empty()) std::printf("kernel: %s\n", engine->kernel_info().c_str());
  if (processes > 1)
    std::printf("processes: %d (%s), %lld latents on the root; per step the root sent %.2f MiB in %.0f collectives\n",
                processes, world.name().c_str(), static_cast<long long>(Dl),
                out["bytes_sent_per_step"].get<double>() / (1 << 20), out["collectives_per_step"].get<double>());
  std::printf("load average (1 min): %.2f at start, %.2f at end\n", load_start, out["load_average_end"].get<double>());
  std::printf("rows: %s\n", out["rows"].get<std::string>().c_str());
  if (a.train_steps > 0) {
    std::printf("trained %lld steps first (%.1f s):\n", static_cast<long long>(a.train_steps), train_seconds);
    for (const json& p : train_curve) {
      std::printf("  step %6lld  loss %.5g  fvu %.4f  l0 %.2f  dead %lld", static_cast<long long>(p["step"].get<int64_t>()),
                  p["loss"].get<double>(), p["fvu"].get<double>(), p["l0"].get<double>(),
                  static_cast<long long>(p["n_dead"].get<int64_t>()));
      for (const auto& [name, v] : p["counters"].items()) std::printf("  %s %.4g", name.c_str(), v.get<double>());
      std::printf("\n");
    }
  }
  if (a.dead_fraction > 0)
    std::printf("dead latents: %lld (%.1f%%), AuxK active in %lld of %lld timed steps, %.1f AuxK entries per row; "
                "scenario: %s\n",
                static_cast<long long>(last.n_dead), 100.0 * a.dead_fraction, static_cast<long long>(aux_steps),
                static_cast<long long>(a.steps), last_aux_per_row,
                a.dead_positive < 0.0
                    ? cat("encoder rows scaled by ", a.dead_scale).c_str()
                    : cat("trained-like, ", 100.0 * dead_positive_got, "% of dead pre-activations positive (target ",
                          100.0 * a.dead_positive, "%)").c_str());
  std::printf("  %-22s %10.1f ms  (median; min %.1f ms)\n", "step", 1e3 * step, 1e3 * out["step_s_min"].get<double>());
  std::printf("  %-22s %10.1f ms  (%.1f GFLOP/s)\n", "encoder GEMM alone", 1e3 * gemm, gflop / gemm);
  std::printf("  %-22s %10.2f x  (process CPU time: %.2f x)\n", "step / encoder GEMM", step / gemm,
              out["step_over_gemm_cpu"].get<double>());
  std::printf("  %-22s %10.0f\n", "tokens/s", tokens_per_s);
  if (!noaux_s.empty())
    std::printf("  %-22s %10.1f ms  (same batch, no latent dead; AuxK overhead %+.1f%%, CPU time %+.1f%%)\n",
                "step without AuxK", 1e3 * median(noaux_s), 100.0 * (step / median(noaux_s) - 1.0),
                100.0 * out["auxk_overhead_cpu"].get<double>());
  std::printf("  phases (median ms):");
  for (const auto& [name, v] : phases) std::printf(" %s %.1f |", name.c_str(), 1e3 * median(v));
  if (!counters.empty()) {
    std::printf("\n  counters (median):");
    for (const auto& [name, v] : counters) std::printf(" %s %.4g |", name.c_str(), median(v));
  }
  std::printf("\n  %-22s %10.1f MiB", "peak RSS", static_cast<double>(peak_rss_bytes()) / (1 << 20));
  if (processes > 1) std::printf("  (largest of the processes: %.1f MiB)", static_cast<double>(rss_max) / (1 << 20));
  std::printf("\n  %-22s %10.1f MiB", "RSS after the steps", static_cast<double>(rss_now) / (1 << 20));
  std::printf("\n");
  return 0;
}

}  // namespace

Action add_bench_command(CLI::App& root) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* app = root.add_subcommand("bench", "Time the training step and its phases against the encoder GEMM");
  CLI::Option* d_in = app->add_option("--d-in", a->d_in, "Input width d (default: the preset's with --preset)")->capture_default_str();
  app->add_option("--d-sae", a->d_sae, "Latents D")->capture_default_str();
  app->add_option("--k", a->k, "Mean active latents per row")->capture_default_str();
  app->add_option("--batch", a->batch, "Rows per batch B")->capture_default_str();
  app->add_option("--arch", a->arch, "matryoshka | batchtopk | topk")->capture_default_str();
  app->add_option("--group-sizes", a->group_sizes, "Matryoshka group sizes (default D/16,D/16,D/8,D/4,D/2)");
  app->add_option("--steps", a->steps, "Timed steps")->capture_default_str();
  app->add_option("--warmup", a->warmup, "Untimed warm-up steps")->capture_default_str();
  app->add_option("--threads", a->threads, "Threads (default: all cores)");
  std::string engines;
  for (const train::EngineEntry& e : train::engine_registry()) engines += (engines.empty() ? "" : " | ") + e.name;
  app->add_option("--engine", a->engine, "Training-step engine: " + engines + " (docs/cli.md)")->capture_default_str();
  app->add_option("--cuda-precision", a->cuda_precision,
                  "--engine cuda only: the encoder GEMM's inputs, fp32 | tf32 | bf16 (fp32 accumulation; the GEMM "
                  "alone is timed in the same precision; docs/cuda.md)")
      ->check(CLI::IsMember({"fp32", "tf32", "bf16"}))
      ->capture_default_str();
  app->add_option("--preset", a->preset,
                  "Rows from a synth-bench preset's generator (" + [] {
                    std::string n;
                    for (const std::string& p : synth::preset_names()) n += (n.empty() ? "" : " | ") + p;
                    return n;
                  }() + "; d from the preset) instead of the activation-like default");
  app->add_option("--train-steps", a->train_steps,
                  "Train this many steps first (the engine's own, fresh rows each, SPEC's Adam): the timed steps "
                  "then see trained parameters; the loss, L0, dead latents and the engine's counters along the way are reported")
      ->capture_default_str();
  app->add_option("--dead-fraction", a->dead_fraction, "Share of latents kept dead so AuxK runs (e.g. 0.1)")
      ->capture_default_str();
  app->add_option("--aux-dense-density", a->aux_dense_density,
                  "Sparse engine: AuxK runs as dense GEMMs over the dead columns when its entries fill at least "
                  "this share of them (0: always; > 1: never)")
      ->capture_default_str();
  app->add_option("--dead-positive", a->dead_positive,
                  "Share of the dead latents' pre-activations made positive (default: measured in training; < 0: "
                  "use --dead-scale instead)")
      ->capture_default_str();
  app->add_option("--dead-scale", a->dead_scale, "Encoder-row scale that keeps the dead latents below the cut")
      ->capture_default_str();
  app->add_option("--seed", a->seed, "Seed")->capture_default_str();
  app->add_flag("--json", a->json_out, "Print one JSON object instead of the table");
  return [a, d_in]() {
    a->d_in_given = d_in->count() > 0;
    return run_bench(*a);
  };
}

}  // namespace msae::cli
