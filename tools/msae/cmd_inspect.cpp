// msae inspect: what an SAE directory holds.
#include <cmath>
#include <cstdio>

#include "commands.h"
#include "msae/sae_dir.h"

namespace msae::cli {
namespace {

// A float32 the training record holds, as the shortest text that reads back to it (msae.json written
// before json_number held 0.0003f as 0.0003000000142492354).
std::string float_text(const nlohmann::json& v) {
  return v.is_number_float() ? shortest(static_cast<float>(v.get<double>())) : v.dump();
}

struct InspectArgs {
  std::string dir;
  bool json = false;
};

int run_inspect(const InspectArgs& a) {
  // Leniently: an SAE with NaN/Inf values is shown, with them listed per tensor (eval, --init and Python's
  // Sae.load refuse it).
  const saedir::SaeDirectory sae = saedir::read_sae_dir(a.dir, /*allow_nonfinite=*/true);
  const SaeConfig& c = sae.sae;
  const SaeParams& p = sae.params;
  double min_norm = 1e30, max_norm = 0;
  for (int64_t i = 0; i < p.D; ++i) {
    double n2 = 0;
    for (int64_t j = 0; j < p.d; ++j) n2 += static_cast<double>(p.W_dec.data[i * p.d + j]) * p.W_dec.data[i * p.d + j];
    min_norm = std::min(min_norm, std::sqrt(n2));
    max_norm = std::max(max_norm, std::sqrt(n2));
  }
  nlohmann::json info = {{"dir", a.dir},
                         {"arch", arch_name(c.arch)},
                         {"d_in", p.d},
                         {"d_sae", p.D},
                         {"k", c.k},
                         {"group_sizes", c.group_sizes},
                         {"group_boundaries", c.boundaries()},
                         {"encoder_bias", c.encoder_bias},
                         {"threshold", json_number(p.threshold)},
                         {"decoder_row_norm_min", min_norm},
                         {"decoder_row_norm_max", max_norm},
                         {"msae", sae.msae_json.is_object() && !sae.msae_json.empty()},
                         {"format", sae.format},
                         {"rescale_acts_by_decoder_norm", !p.rule.decoder_norm.empty()},
                         {"hook_name", sae.hook_name.empty() ? nlohmann::json() : nlohmann::json(sae.hook_name)},
                         {"model_name", sae.model_name.empty() ? nlohmann::json() : nlohmann::json(sae.model_name)}};
  nlohmann::json nonfinite = nlohmann::json::array();
  for (const saedir::NonFinite& n : sae.nonfinite)
    nonfinite.push_back({{"tensor", n.tensor}, {"shape", n.shape}, {"count", n.count}, {"first_index", n.first}});
  info["nonfinite"] = nonfinite;
  if (sae.msae_json.contains("training")) info["training"] = sae.msae_json["training"];
  if (sae.msae_json.contains("final_metrics")) info["final_metrics"] = sae.msae_json["final_metrics"];
  if (a.json) {
    std::printf("%s\n", info.dump(2).c_str());
    return 0;
  }
  std::printf("%s\n", a.dir.c_str());
  // What the directory is: an msae SAE (written in SAELens' jumprelu layout), or the trainer it came from.
  std::string arch = cat(arch_name(c.arch), " (exported as SAELens jumprelu)");
  if (sae.format.rfind("saelens-", 0) == 0)
    arch = sae.format.substr(8) + " (SAELens" + (p.rule.decoder_norm.empty() ? "" : ", rescale_acts_by_decoder_norm") + ")";
  if (sae.format.rfind("sparsify-", 0) == 0) arch = sae.format.substr(9) + " (EleutherAI sparsify)";
  std::printf("  architecture   %s\n", arch.c_str());
  if (!sae.hook_name.empty())
    std::printf("  hook           %s%s\n", sae.hook_name.c_str(),
                sae.model_name.empty() ? "" : (" of " + sae.model_name).c_str());
  std::printf("  shapes         d_in %lld, d_sae %lld  (W_enc (%lld, %lld), W_dec (%lld, %lld))\n",
              static_cast<long long>(p.d), static_cast<long long>(p.D), static_cast<long long>(p.d),
              static_cast<long long>(p.D), static_cast<long long>(p.D), static_cast<long long>(p.d));
  std::printf("  k              %lld\n", static_cast<long long>(c.k));
  std::printf("  groups         %s  (prefixes %s)\n", nlohmann::json(c.group_sizes).dump().c_str(),
              nlohmann::json(c.boundaries()).dump().c_str());
  std::printf("  encoder bias   %s\n", c.encoder_bias ? "yes" : "no");
  std::printf("  threshold      %s\n", shortest(p.threshold).c_str());
  std::printf("  decoder norms  %.6f .. %.6f\n", min_norm, max_norm);
  if (sae.nonfinite.empty()) std::printf("  values         all finite\n");
  for (const saedir::NonFinite& n : sae.nonfinite)
    std::printf("  NON-FINITE     %s\n", saedir::describe(n).c_str());
  if (!sae.nonfinite.empty())
    std::printf("                 (msae eval, --init and msae.Sae.load refuse this SAE)\n");
  if (sae.msae_json.contains("training")) {
    const auto& t = sae.msae_json["training"];
    std::printf("  training       %s steps, %s tokens, batch %s, lr %s, data %s, %s\n", t.value("steps", nlohmann::json()).dump().c_str(),
                t.value("tokens", nlohmann::json()).dump().c_str(), t.value("batch", nlohmann::json()).dump().c_str(),
                float_text(t.value("lr", nlohmann::json())).c_str(), t.value("data", nlohmann::json()).dump().c_str(),
                t.value("completed", false) ? "completed" : "NOT completed (interrupted)");
  }
  if (sae.msae_json.contains("final_metrics") && sae.msae_json["final_metrics"].contains("whole")) {
    const auto& w = sae.msae_json["final_metrics"]["whole"];
    std::printf("  final metrics  FVU %.4f, L0 %.2f, MSE %.4g\n", w.value("fvu", 0.0), w.value("l0", 0.0),
                w.value("mse", 0.0));
  }
  if (sae.msae_json.contains("git_commit"))
    std::printf("  written by     msae %s (%s)\n", sae.msae_json.value("msae_version", "?").c_str(),
                sae.msae_json.value("git_commit", "?").c_str());
  return 0;
}

}  // namespace

Action add_inspect_command(CLI::App& root) {
  auto a = std::make_shared<InspectArgs>();
  CLI::App* app = root.add_subcommand("inspect", "Show what an SAE directory holds");
  app->add_option("dir", a->dir, "SAE directory")->required();
  app->add_flag("--json", a->json, "Print JSON");
  return [a]() { return run_inspect(*a); };
}

}  // namespace msae::cli
