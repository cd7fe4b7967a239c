// msae convert: an SAE directory written in another trainer's layout (saedir::convert_sae_dir,
// docs/interop.md). Parses, calls, prints.
#include <cstdio>

#include "commands.h"
#include "msae/sae_dir.h"

namespace msae::cli {
namespace {

struct ConvertArgs {
  std::string from, to, out;
  bool overwrite = false, json = false;
};

int run_convert(const ConvertArgs& a) {
  const nlohmann::json r = saedir::convert_sae_dir(a.from, saedir::parse_layout(a.to), a.out, a.overwrite);
  if (a.json) {
    std::printf("%s\n", r.dump(2).c_str());
    return 0;
  }
  std::string files;
  for (const auto& f : r["files"]) files += (files.empty() ? "" : ", ") + f.get<std::string>();
  std::printf("%s (%s, d_in %lld, d_sae %lld) -> %s in the %s layout: %s\n", r["from"].get<std::string>().c_str(),
              r["from_format"].get<std::string>().c_str(), static_cast<long long>(r["d_in"].get<int64_t>()),
              static_cast<long long>(r["d_sae"].get<int64_t>()), r["out"].get<std::string>().c_str(),
              r["to"].get<std::string>().c_str(), files.c_str());
  return 0;
}

}  // namespace

Action add_convert_command(CLI::App& root) {
  auto a = std::make_shared<ConvertArgs>();
  CLI::App* app = root.add_subcommand(
      "convert", "Write an SAE directory in another trainer's layout (msae, SAELens, sparsify), exactly or not at all");
  app->add_option("--from", a->from, "SAE directory msae can read (msae, SAELens, sparsify)")->required();
  app->add_option("--to", a->to, "Layout to write: msae, saelens or sparsify")
      ->required()
      ->check(CLI::IsMember({"msae", "saelens", "sparsify"}));
  app->add_option("--out", a->out, "Output directory (must not exist unless --overwrite)")->required();
  app->add_flag("--overwrite", a->overwrite, "Replace --out once the new directory is complete");
  app->add_flag("--json", a->json, "Print the summary as JSON");
  return [a]() { return run_convert(*a); };
}

}  // namespace msae::cli
