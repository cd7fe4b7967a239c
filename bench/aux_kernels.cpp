// The AuxK kernels of the sparse engine alone, at the `msae bench --dead-fraction 0.1` shape:
// B = 4096 rows, D = 16384 latents, d = 768, 1638 dead latents, each (row, dead latent) pair an entry with
// probability --density (0.173: the bench's 283 entries per row). Prints each kernel's median time over
// --reps calls and an FNV-1a hash of every output, so a change to a kernel can be timed and checked for
// identical results in one command (compare hashes between builds with the same flags: a sanitizer build
// (-O2) gave another hash than the Release build for the same code):
//   build/msae_aux_kernels_bench [--density 0.173] [--reps 5] [--threads 2]
// Synthetic inputs (fixed seeds); pre-activations N(-0.6, 0.6) for aux_topk (~16% positive).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "msae/core.h"
#include "msae/kernels.h"

using namespace msae;
using namespace msae::kernels;

namespace {

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Hash {
  uint64_t h = kFnv1aOffset;
  template <class T>
  void add(const T* p, size_t n) {
    h = fnv1a64(p, n * sizeof(T), h);
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  double density = 0.173;
  int reps = 5, threads = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--density") density = std::atof(argv[i + 1]);
    else if (a == "--reps") reps = std::atoi(argv[i + 1]);
    else if (a == "--threads") threads = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: %s [--density 0.173] [--reps 5] [--threads 2]\n", argv[0]);
      return 2;
    }
  }
  if (!(density > 0.0 && density <= 1.0) || reps < 1 || threads < 1) {
    std::fprintf(stderr, "need 0 < density <= 1, reps >= 1, threads >= 1\n");
    return 2;
  }
  const int64_t B = 4096, D = 16384, d = 768, n_dead = 1638;
  set_num_threads(threads);
  std::mt19937 rng(1);
  std::vector<int32_t> dead(D);
  for (int32_t i = 0; i < D; ++i) dead[i] = i;
  std::shuffle(dead.begin(), dead.end(), rng);
  dead.resize(n_dead);
  std::sort(dead.begin(), dead.end());

  // AuxK codes: ids ascending per row, values > 0.
  SparseCodes aux;
  aux.rows = B;
  aux.cols = D;
  aux.row_ptr.assign(B + 1, 0);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  for (int64_t r = 0; r < B; ++r) {
    for (int32_t i : dead)
      if (uniform(rng) < density) {
        aux.ids.push_back(i);
        aux.vals.push_back(0.01f + uniform(rng));
      }
    aux.row_ptr[r + 1] = static_cast<int64_t>(aux.ids.size());
  }
  const int64_t nnz = aux.nnz();
  std::vector<float> W(D * d), Q(B * d), X(B * d);
  for (float& v : W) v = uniform(rng) - 0.5f;
  for (float& v : Q) v = uniform(rng) - 0.5f;
  for (float& v : X) v = uniform(rng) - 0.5f;
  FloatBuffer pre(B * D);
  parallel_for(
      B,
      [&](int64_t lo, int64_t hi, int) {
        std::mt19937 g(static_cast<uint32_t>(lo));
        std::normal_distribution<float> normal(-0.6f, 0.6f);
        for (int64_t f = lo * D; f < hi * D; ++f) pre[f] = normal(g);
      },
      64);

  std::printf("AuxK kernels: B=%lld D=%lld d=%lld dead=%lld, %.1f entries per row, %d threads\n",
              static_cast<long long>(B), static_cast<long long>(D), static_cast<long long>(d),
              static_cast<long long>(n_dead), static_cast<double>(nnz) / static_cast<double>(B), threads);
  std::printf("BLAS: %s\n", blas_info().c_str());

  SparseCodes topk;
  SelectScratch scratch;
  CscIndex csc;
  PackedCodesRows packed;
  ChunkedRows packed_q, packed_x;
  std::vector<PairScratch> pair(static_cast<size_t>(threads));
  std::vector<float> decoded(B * d), dots(nnz);
  std::vector<float> G1(D * d), G2(D * d), sum_b(D);
  const char* names[] = {"aux_topk", "csr_to_csc", "pack_for_codes", "csr_times_dense", "csr_row_dots",
                         "pack_pair_operand x2", "csc_accumulate_pair"};
  constexpr int kKernels = 7;
  std::vector<double> ms[kKernels];
  Hash hash;
  for (int rep = 0; rep < reps; ++rep) {
    std::fill(G1.begin(), G1.end(), 0.0f);
    std::fill(G2.begin(), G2.end(), 0.0f);
    std::fill(sum_b.begin(), sum_b.end(), 0.0f);
    double t[kKernels + 1];
    t[0] = now_ms();
    aux_topk(pre.data(), B, D, dead, 512, topk, scratch);
    t[1] = now_ms();
    csr_to_csc(aux, csc);
    t[2] = now_ms();
    pack_for_codes(aux, W.data(), d, packed);
    t[3] = now_ms();
    csr_times_dense(aux, packed, decoded.data());
    t[4] = now_ms();
    csr_row_dots(aux, packed, Q.data(), dots.data());
    t[5] = now_ms();
    pack_pair_operand(Q.data(), B, d, packed_q);
    pack_pair_operand(X.data(), B, d, packed_x);
    t[6] = now_ms();
    // Latent ranges split by entries, as the engine's latent pass does.
    std::vector<int64_t> split(static_cast<size_t>(threads) + 1, D);
    split[0] = 0;
    for (int k = 1; k < threads; ++k)
      split[k] = std::lower_bound(csc.col_ptr.begin(), csc.col_ptr.end(), nnz * k / threads) - csc.col_ptr.begin();
    parallel(
        [&](int tid, int) {
          csc_accumulate_pair(csc, aux.vals.data(), packed_q, G1.data(), dots.data(), packed_x, G2.data(),
                              sum_b.data(), split[tid], split[tid + 1], pair[tid]);
        },
        threads);
    t[7] = now_ms();
    for (int k = 0; k < kKernels; ++k) ms[k].push_back(t[k + 1] - t[k]);
    if (rep == 0) {
      hash.add(topk.ids.data(), topk.ids.size());
      hash.add(topk.vals.data(), topk.vals.size());
      hash.add(decoded.data(), decoded.size());
      hash.add(dots.data(), dots.size());
      hash.add(G1.data(), G1.size());
      hash.add(G2.data(), G2.size());
      hash.add(sum_b.data(), sum_b.size());
    }
  }
  double products = 0.0;
  for (int k = 0; k < kKernels; ++k) {
    std::printf("  %-22s %8.1f ms (median of %d)\n", names[k], median(ms[k]), reps);
    if (k > 0) products += median(ms[k]);
  }
  std::printf("  %-22s %8.1f ms\n", "all but aux_topk", products);
  std::printf("  output hash %016llx\n", static_cast<unsigned long long>(hash.h));
  return 0;
}
