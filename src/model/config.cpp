#include <cmath>
#include <numeric>

#include "msae/model.h"

namespace msae {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::matryoshka: return "matryoshka";
    case Arch::batchtopk: return "batchtopk";
    case Arch::topk: return "topk";
    case Arch::relu_l1: return "relu_l1";
  }
  return "?";
}

Arch parse_arch(const std::string& name) {
  if (name == "matryoshka") return Arch::matryoshka;
  if (name == "batchtopk") return Arch::batchtopk;
  if (name == "topk") return Arch::topk;
  if (name == "relu_l1") return Arch::relu_l1;
  usage_error(opt("arch"), ": unknown architecture '", name, "'; expected one of matryoshka, batchtopk, topk, relu_l1");
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
  if (d_sae <= 0) usage_error(opt("d_sae"), " must be positive, got ", d_sae);
  if (d_sae > (int64_t{1} << 31) - 1) usage_error(opt("d_sae"), " ", d_sae, " is too large (at most 2^31-1 latents)");
  if (k <= 0) usage_error(opt("k"), " must be positive, got ", k);
  if (k > d_sae) usage_error(opt("k"), " ", k, " exceeds ", opt("d_sae"), " ", d_sae, "; k is the mean number of active latents per row");
  if (dead_after_batches <= 0) usage_error(opt("dead_after_batches"), " must be positive, got ", dead_after_batches);
  if (aux_k < 0) usage_error(opt("aux_k"), " must be >= 0, got ", aux_k);
  if (!(aux_coef >= 0.0f)) usage_error(opt("aux_coef"), " must be >= 0, got ", aux_coef);

  if (group_sizes.empty()) {
    if (arch == Arch::matryoshka || (arch == Arch::relu_l1 && d_sae >= 16)) {
      if (d_sae < 16)
        usage_error(opt("d_sae"), " ", d_sae, " is too small for the default Matryoshka groups (D/16, D/16, D/8, D/4, D/2): ",
                    "use ", opt("d_sae"), " >= 16 or give ", opt("group_sizes"));
      group_sizes = default_group_sizes(d_sae);
    } else {
      group_sizes = {d_sae};
    }
  }
  int64_t total = 0;
  for (size_t g = 0; g < group_sizes.size(); ++g) {
    if (group_sizes[g] <= 0)
      usage_error(opt("group_sizes"), ": group ", g + 1, " has size ", group_sizes[g], "; every group size must be positive");
    total += group_sizes[g];
  }
  if (total != d_sae)
    usage_error(opt("group_sizes"), " sum to ", total, " but ", opt("d_sae"), " is ", d_sae, "; the sizes must sum to D");
  if (arch == Arch::batchtopk && group_sizes.size() != 1)
    usage_error(opt("arch"), " batchtopk has a single group; for several groups use ", opt("arch"), " matryoshka");
  finalize_variants();
}

void SaeConfig::finalize_variants() {
  const int64_t G = num_groups();
  if (arch == Arch::relu_l1) encoder_bias = true;  // the ReLU SAE trains b_enc (it has no TopK to set sparsity)
  if (!prefix_weights.empty()) {
    if (static_cast<int64_t>(prefix_weights.size()) != G)
      usage_error(opt("prefix_weights"), " has ", prefix_weights.size(), " entries but there are ", G,
                  " groups; give one weight per Matryoshka prefix");
    for (float w : prefix_weights)
      if (!(w >= 0.0f) || !std::isfinite(w)) usage_error(opt("prefix_weights"), ": every weight must be finite and >= 0, got ", w);
  }
  if (!group_k.empty()) {
    if (arch == Arch::relu_l1) usage_error(opt("group_k"), ": ", opt("arch"), " relu_l1 has no TopK selection");
    if (static_cast<int64_t>(group_k.size()) != G)
      usage_error(opt("group_k"), " has ", group_k.size(), " entries but there are ", G, " groups; give one k per group");
    for (int64_t g = 0; g < G; ++g)
      if (group_k[g] <= 0 || group_k[g] > group_sizes[g])
        usage_error(opt("group_k"), ": group ", g + 1, " has k ", group_k[g], " but ", group_sizes[g],
                    " latents; each k_g must be in 1..group size");
  }
  if (G > 64) usage_error("at most 64 Matryoshka groups are supported, got ", G);
  if (sampled_prefixes < 0) usage_error(opt("sampled_prefixes"), " must be >= 0, got ", sampled_prefixes);
  if (sampled_prefixes > 0) {
    if (sampled_prefixes > 64) usage_error(opt("sampled_prefixes"), ": at most 64 prefixes per batch, got ", sampled_prefixes);
    if (prefix_distribution != "pareto" && prefix_distribution != "uniform")
      usage_error(opt("prefix_distribution"), ": unknown '", prefix_distribution, "'; expected pareto or uniform");
    if (!(pareto_power > 0.0f)) usage_error(opt("pareto_power"), " must be positive, got ", pareto_power);
    if (min_prefix < 1) usage_error(opt("min_prefix"), " must be >= 1, got ", min_prefix);
    if (d_sae - min_prefix < sampled_prefixes - 1)
      usage_error(opt("sampled_prefixes"), " ", sampled_prefixes, " needs ", sampled_prefixes - 1,
                  " distinct lengths in [", opt("min_prefix"), " ", min_prefix, ", D-1 = ", d_sae - 1, "]");
    if (!prefix_weights.empty() || !group_k.empty())
      usage_error(opt("sampled_prefixes"), " changes the groups every batch; it cannot be combined with ", opt("prefix_weights"), " or ", opt("group_k"));
  }
  if (!(threshold_rate > 0.0f && threshold_rate <= 1.0f)) usage_error(opt("threshold_rate"), " must be in (0, 1], got ", threshold_rate);
  if (threshold_start_step < 0) usage_error(opt("threshold_start_step"), " must be >= 0, got ", threshold_start_step);
  if (reorder_every < 0) usage_error(opt("reorder_every"), " must be >= 0, got ", reorder_every);
  if (!(reorder_decay >= 0.0f && reorder_decay < 1.0f)) usage_error(opt("reorder_decay"), " must be in [0, 1), got ", reorder_decay);
  if (arch == Arch::relu_l1) {
    if (!(l1_coef > 0.0f)) usage_error(opt("l1_coef"), " must be positive, got ", l1_coef);
    if (!(l1_adapt_rate >= 0.0f && l1_adapt_rate < 1.0f)) usage_error(opt("l1_adapt_rate"), " must be in [0, 1), got ", l1_adapt_rate);
    if (l1_warmup_steps < 0) usage_error(opt("l1_warmup_steps"), " must be >= 0, got ", l1_warmup_steps);
  }
}

bool SaeConfig::is_spec_loss() const {
  return arch != Arch::relu_l1 && prefix_weights.empty() && bdec_loss_term && !stop_gradient_groups && group_k.empty() && !aux_detach;
}

std::vector<int64_t> SaeConfig::boundaries() const {
  std::vector<int64_t> m(group_sizes.size());
  std::partial_sum(group_sizes.begin(), group_sizes.end(), m.begin());
  return m;
}

}  // namespace msae
