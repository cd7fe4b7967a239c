// The communicator's collectives timed across processes (docs/distributed.md): the deterministic
// allreduce_sum of a training step's gradients and a broadcast of parameters.
//   mpirun -np 2 --oversubscribe --bind-to none build/msae_comm_bench [--reps N]
// Every call is preceded by a barrier so that each measurement starts with all processes ready, and a
// call's time is the longest any process spent in it. Rank 0 prints the median and the fastest of the
// repetitions, and the bytes it sent per call (bytes_sent()). MPI_Allreduce itself (whose order of additions
// is the library's choice, so not what msae uses for floats) is timed beside it for comparison.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "msae/comm.h"
#include "msae/core.h"

namespace {

using Clock = std::chrono::steady_clock;

void run(const char* what, int64_t elements, int reps, const std::function<void()>& op) {
  auto& w = msae::comm::world();
  op();  // warm-up: buffers grown, connections made
  std::vector<double> ms;
  int64_t bytes = 0;
  for (int r = 0; r < reps; ++r) {
    w.barrier();
    const int64_t before = w.bytes_sent();
    const auto t0 = Clock::now();
    op();
    int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
    bytes += w.bytes_sent() - before;
    w.allreduce_max(&ns, 1);
    ms.push_back(static_cast<double>(ns) * 1e-6);
  }
  bytes /= reps;
  std::sort(ms.begin(), ms.end());
  if (w.rank() != 0) return;
  std::printf("%-28s %10lld elements  median %8.3f ms  min %8.3f ms", what, static_cast<long long>(elements),
              ms[ms.size() / 2], ms.front());
  if (bytes > 0)
    std::printf("  bytes_sent/call %lld (%.2f x payload)", static_cast<long long>(bytes),
                static_cast<double>(bytes) / (4.0 * static_cast<double>(elements)));
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  msae::comm::init(&argc, &argv);
  int reps = 20;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--reps") == 0) reps = std::max(1, std::atoi(argv[i + 1]));
  auto& w = msae::comm::world();
  if (w.rank() == 0) std::printf("%s, %d repetitions\n", w.name().c_str(), reps);
  const int64_t d_model = 768, d_sae = 4096;
  for (const int64_t n : {d_sae * d_model, 5 * d_sae * d_model}) {
    std::vector<float> grad(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      grad[static_cast<size_t>(i)] = static_cast<float>((i * 7 + w.rank()) % 1000) * 1e-3f;
    // Summed again at each repetition (the values grow by a factor of size() per call, far from overflow).
    run("allreduce_sum(float)", n, reps, [&] { w.allreduce_sum(grad.data(), n); });
    if (msae::comm::mpi_built() && w.size() > 1)
      run("MPI_Allreduce(float, sum)", n, reps,
          [&] { MPI_Allreduce(MPI_IN_PLACE, grad.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); });
  }
  std::vector<float> params(static_cast<size_t>(d_sae * d_model), 1.0f);
  run("broadcast (MPI_Bcast, root 0)", d_sae * d_model, reps,
      [&] { w.broadcast(params.data(), static_cast<int64_t>(params.size() * sizeof(float)), 0); });
  msae::comm::finalize();
  return 0;
}
