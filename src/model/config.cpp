#include <numeric>

#include "msae/model.h"

namespace msae {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::matryoshka: return "matryoshka";
    case Arch::batchtopk: return "batchtopk";
    case Arch::topk: return "topk";
  }
  return "?";
}

Arch parse_arch(const std::string& name) {
  if (name == "matryoshka") return Arch::matryoshka;
  if (name == "batchtopk") return Arch::batchtopk;
  if (name == "topk") return Arch::topk;
  usage_error("--arch: unknown architecture '", name, "'; expected one of matryoshka, batchtopk, topk");
}

std::vector<int64_t> default_group_sizes(int64_t D) {
  MSAE_ASSERT(D >= 16, "D = ", D);
  std::vector<int64_t> sizes = {D / 16, D / 16, D / 8, D / 4, D / 2};
  const int64_t used = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  sizes.back() += D - used;  // D not divisible by 16: the remainder goes to the last (most specific) group
  return sizes;
}

void SaeConfig::finalize() {
  if (d_in <= 0) usage_error("d_in must be positive, got ", d_in);
  if (d_sae <= 0) usage_error("--d-sae must be positive, got ", d_sae);
  if (d_sae > (int64_t{1} << 31) - 1) usage_error("--d-sae ", d_sae, " is too large (at most 2^31-1 latents)");
  if (k <= 0) usage_error("--k must be positive, got ", k);
  if (k > d_sae) usage_error("--k ", k, " exceeds --d-sae ", d_sae, "; k is the mean number of active latents per row");
  if (dead_after_batches <= 0) usage_error("--dead-after-batches must be positive, got ", dead_after_batches);
  if (aux_k < 0) usage_error("--aux-k must be >= 0, got ", aux_k);
  if (!(aux_coef >= 0.0f)) usage_error("--aux-coef must be >= 0, got ", aux_coef);

  if (group_sizes.empty()) {
    if (arch == Arch::matryoshka) {
      if (d_sae < 16)
        usage_error("--d-sae ", d_sae, " is too small for the default Matryoshka groups (D/16, D/16, D/8, D/4, D/2): ",
                    "use --d-sae >= 16 or give --group-sizes");
      group_sizes = default_group_sizes(d_sae);
    } else {
      group_sizes = {d_sae};
    }
  }
  int64_t total = 0;
  for (size_t g = 0; g < group_sizes.size(); ++g) {
    if (group_sizes[g] <= 0)
      usage_error("--group-sizes: group ", g + 1, " has size ", group_sizes[g], "; every group size must be positive");
    total += group_sizes[g];
  }
  if (total != d_sae)
    usage_error("--group-sizes sum to ", total, " but --d-sae is ", d_sae, "; the sizes must sum to D");
  if (arch == Arch::batchtopk && group_sizes.size() != 1)
    usage_error("--arch batchtopk has a single group; for several groups use --arch matryoshka");
}

std::vector<int64_t> SaeConfig::boundaries() const {
  std::vector<int64_t> m(group_sizes.size());
  std::partial_sum(group_sizes.begin(), group_sizes.end(), m.begin());
  return m;
}

}  // namespace msae
