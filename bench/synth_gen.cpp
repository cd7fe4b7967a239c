// A synth-bench preset's feature sampler alone, timed, with a hash of the rows, so that a sampler change
// can be timed and checked for identical rows in one command (compare hashes between builds with the same
// flags; the rows, not the model, are hashed after the first call):
//   build/msae_synth_gen_bench [--preset synthsaebench-16k] [--threads 2] [--batches 20] [--rows 1024] [--seed 0]
// Prints the median and mean milliseconds per call of --rows rows over --batches calls (after one untimed
// call) and the FNV-1a hash of every row drawn in the timed calls.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "msae/core.h"
#include "msae/kernels.h"
#include "msae/synth.h"

using namespace msae;

int main(int argc, char** argv) {
  std::string preset = "synthsaebench-16k";
  int threads = 0, batches = 20;
  int64_t rows = 1024;
  uint64_t seed = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--preset") preset = v;
    else if (k == "--threads") threads = std::atoi(v.c_str());
    else if (k == "--batches") batches = std::atoi(v.c_str());
    else if (k == "--rows") rows = std::atoll(v.c_str());
    else if (k == "--seed") seed = std::strtoull(v.c_str(), nullptr, 10);
    else {
      std::fprintf(stderr, "unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  if ((argc - 1) % 2 != 0 || batches < 1 || rows < 1) {
    std::fprintf(stderr, "usage: %s [--preset NAME] [--threads N] [--batches N] [--rows N] [--seed S]\n", argv[0]);
    return 2;
  }
  set_num_threads(threads);
  kernels::set_blas_threads(num_threads());
  synth::FeatureSampler sampler(synth::make_preset(preset, seed), synth::synth_bench_train_stream(seed));
  const int64_t d = sampler.model().d;
  std::vector<float> x(static_cast<size_t>(rows * d));
  sampler.sample(rows, x.data());  // untimed: first-touch of the buffers
  uint64_t h = 1469598103934665603ULL;
  std::vector<double> ms;
  for (int b = 0; b < batches; ++b) {
    const auto t0 = std::chrono::steady_clock::now();
    sampler.sample(rows, x.data());
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    const auto* p = reinterpret_cast<const unsigned char*>(x.data());
    for (size_t i = 0; i < x.size() * sizeof(float); ++i) h = (h ^ p[i]) * 1099511628211ULL;
  }
  double mean = 0.0;
  for (double v : ms) mean += v / static_cast<double>(ms.size());
  std::sort(ms.begin(), ms.end());
  std::printf("%s seed %llu, %d threads, %lld rows a call: median %.2f ms, mean %.2f ms over %d calls; rows hash %016llx\n",
              preset.c_str(), static_cast<unsigned long long>(seed), num_threads(), static_cast<long long>(rows),
              ms[ms.size() / 2], mean, batches, static_cast<unsigned long long>(h));
  return 0;
}
