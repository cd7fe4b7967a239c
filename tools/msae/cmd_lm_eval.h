// msae eval with a language model in the loop (--model/--text): the branch of cmd_eval.cpp that
// cmd_lm_eval.cpp implements (docs/lm.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "msae/sae_dir.h"

namespace msae::cli {

struct LmEvalArgs {
  std::string sae, model, tokenizer, site = "resid_pre", ablation = "zero";
  std::vector<std::string> text;
  int64_t layer = -1, ctx = 128, batch = 8, max_tokens = 0;
  bool splice_bos = false;
  bool ce_reference = false;  // --ce-reference: the naive full-logits log-softmax (timing, cross-checks)
  int threads = 0;
  bool json = false;  // eval's --json: the JSON instead of the table
  bool allow_hook_mismatch = false;
};

// Registers --model, --text, --layer, --site, --ctx, --max-tokens, --ablation, --splice-bos, --lm-batch and
// --tokenizer on the eval subcommand (the SAE is eval's --sae; --threads is eval's).
void add_lm_eval_options(CLI::App* app, LmEvalArgs& a);
int run_lm_eval(const LmEvalArgs& a);

// An SAE that records the hook it was trained at (cfg.json hook_name "blocks.L.hook_SITE", e.g. from a
// harvest directory) must be used at that layer and site: otherwise a usage error naming both, unless
// `allow` (--allow-hook-mismatch), which only warns. SAEs without a recorded hook are accepted.
void check_sae_hook(const saedir::SaeDirectory& sae, const std::string& dir, int64_t layer, const std::string& site,
                    bool allow);

}  // namespace msae::cli
