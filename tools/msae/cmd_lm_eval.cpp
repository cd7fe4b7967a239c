// msae eval --sae DIR --model DIR --text FILES: downstream cross-entropy with the SAE spliced in at its hook,
// per Matryoshka prefix (docs/lm.md).
#include "cmd_lm_eval.h"

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "msae/kernels.h"
#include "msae/lm.h"
#include "msae/sae_dir.h"
#include "progress.h"

namespace msae::cli {

int run_lm_eval(const LmEvalArgs& a) {
  set_num_threads(a.threads);
  kernels::set_blas_threads(num_threads());
  if (a.ablation != "zero" && a.ablation != "mean") usage_error("--ablation must be zero or mean, got '", a.ablation, "'");
  if (a.batch <= 0) usage_error("--batch must be positive, got ", a.batch);
  const saedir::SaeDirectory sae = saedir::read_sae_dir(a.sae);
  const lm::Model model = lm::Model::load(a.model);
  if (a.layer < 0) usage_error("--layer is required with --model (the block where the SAE reads activations)");
  check_sae_hook(sae, a.sae, a.layer, a.site, a.allow_hook_mismatch);
  const lm::Site site = lm::checked_site(model, a.layer, a.site);
  if (sae.params.d != model.d_model())
    usage_error("the SAE in ", a.sae, " has d_in ", sae.params.d, " but the model's width is ", model.d_model());
  const lm::Tokenizer tok = lm::load_tokenizer(a.model, a.tokenizer);
  if (a.ctx > model.config().n_positions)
    usage_error("--ctx ", a.ctx, " exceeds the model's n_positions = ", model.config().n_positions);
  const int64_t max_ctx = a.max_tokens > 0 ? (a.max_tokens + a.ctx - 1) / a.ctx : 0;
  const lm::TokenStream stream = lm::tokenize_files(tok, a.text, max_ctx * a.ctx);
  const lm::Contexts c = lm::make_contexts(stream, a.ctx, true, max_ctx, tok.eot());
  const int64_t d = model.d_model(), T = c.T;
  const float scale = lm::sae_input_scale(sae);
  const std::vector<int64_t> prefixes = lm::sae_prefixes(sae);
  const int64_t G = static_cast<int64_t>(prefixes.size());
  log_info(cat("eval: ", c.N, " contexts of ", T, " tokens; SAE ", a.sae, " (", G, " prefixes) spliced at layer ", a.layer,
               " ", a.site, "; ", a.ablation, " ablation"));

  // Mean ablation needs the mean activation at the hook over the evaluated (non-BOS) positions first.
  std::vector<double> mean(static_cast<size_t>(d), 0.0);
  if (a.ablation == "mean") {
    int64_t cnt = 0;
    for (int64_t n0 = 0; n0 < c.N; n0 += a.batch) {
      const int64_t nb = std::min(a.batch, c.N - n0);
      std::vector<lm::Hook> hooks = {{a.layer, site, [&](float* x, int64_t R) {
                                        for (int64_t r = 0; r < R; ++r) {
                                          if (r % T == 0) continue;
                                          for (int64_t j = 0; j < d; ++j) mean[j] += x[r * d + j];
                                          ++cnt;
                                        }
                                      }}};
      model.run(c.ids.data() + n0 * T, nb, T, hooks, a.layer, false);
    }
    for (auto& v : mean) v /= static_cast<double>(std::max<int64_t>(cnt, 1));
  }

  // BOS positions are left as they are (the SAE never saw them when harvested with --skip-bos); with
  // --splice-bos they are replaced too.
  std::vector<uint8_t> keep(static_cast<size_t>(a.batch * T), 1);
  if (!a.splice_bos)
    for (int64_t r = 0; r < a.batch * T; r += T) keep[static_cast<size_t>(r)] = 0;

  double ce_clean = 0, ce_ablate = 0;
  std::vector<double> ce_splice(static_cast<size_t>(G), 0.0);
  std::vector<lm::SpliceStats> st(static_cast<size_t>(G));
  double sum_x = 0, sum_x2 = 0;  // for FVU: total variance of the hook activations (spliced rows)
  std::vector<double> col_sum(static_cast<size_t>(d), 0.0);
  int64_t var_rows = 0;
  int64_t n_loss = 0;
  Progress progress(c.N);
  for (int64_t n0 = 0; n0 < c.N; n0 += a.batch) {
    const int64_t nb = std::min(a.batch, c.N - n0);
    const int32_t* ids = c.ids.data() + n0 * T;
    auto total = [](const std::vector<float>& l) {
      double s = 0;
      for (float v : l) s += v;
      return s;
    };
    std::vector<lm::Hook> stats_hook = {{a.layer, site, [&](float* x, int64_t R) {
                                           for (int64_t r = 0; r < R; ++r) {
                                             if (!keep[static_cast<size_t>(r)]) continue;
                                             for (int64_t j = 0; j < d; ++j) {
                                               sum_x2 += static_cast<double>(x[r * d + j]) * x[r * d + j];
                                               col_sum[j] += x[r * d + j];
                                             }
                                             ++var_rows;
                                           }
                                         }}};
    const std::vector<float> clean = model.next_token_losses(ids, nb, T, stats_hook, a.ce_reference);
    ce_clean += total(clean);
    n_loss += static_cast<int64_t>(clean.size());
    std::vector<lm::Hook> ablate = {{a.layer, site, [&](float* x, int64_t R) {
                                       for (int64_t r = 0; r < R; ++r)
                                         if (keep[static_cast<size_t>(r)])
                                           for (int64_t j = 0; j < d; ++j) x[r * d + j] = static_cast<float>(mean[j]);
                                     }}};
    ce_ablate += total(model.next_token_losses(ids, nb, T, ablate, a.ce_reference));
    for (int64_t g = 0; g < G; ++g) {
      std::vector<lm::Hook> splice = {{a.layer, site, [&](float* x, int64_t R) {
                                         lm::splice_sae(sae, scale, prefixes[g], x, R, &keep, &st[g]);
                                       }}};
      ce_splice[g] += total(model.next_token_losses(ids, nb, T, splice, a.ce_reference));
    }
    progress.update(n0 + nb, cat("CE clean ", ce_clean / n_loss, " | spliced ", ce_splice[G - 1] / n_loss));
  }
  progress.finish();
  (void)sum_x;
  double col2 = 0;
  for (double s : col_sum) col2 += s * s;
  const double total_var = sum_x2 - col2 / static_cast<double>(std::max<int64_t>(var_rows, 1));  // sum of squared deviations
  const double clean = ce_clean / n_loss, ablated = ce_ablate / n_loss;
  nlohmann::json per_prefix = nlohmann::json::array();
  for (int64_t g = 0; g < G; ++g) {
    const double sp = ce_splice[g] / n_loss;
    per_prefix.push_back({{"prefix", prefixes[g]},
                          {"ce_spliced", sp},
                          {"ce_degradation", sp - clean},
                          {"ce_recovered", (ablated - sp) / (ablated - clean)},
                          {"fvu", st[g].sse / total_var},
                          {"mse", st[g].sse / static_cast<double>(std::max<int64_t>(st[g].rows, 1) * d)},
                          {"l0", st[g].l0 / static_cast<double>(std::max<int64_t>(st[g].rows, 1))}});
  }
  nlohmann::json out = {{"sae", a.sae},
                        {"arch", arch_name(sae.sae.arch)},
                        {"model", a.model},
                        {"layer", a.layer},
                        {"site", a.site},
                        {"contexts", c.N},
                        {"ctx", T},
                        {"tokens_scored", n_loss},
                        {"splice_bos", a.splice_bos},
                        {"ablation", a.ablation},
                        {"ce_clean", clean},
                        {"ce_ablated", ablated},
                        // CE recovered divides by this gap: when ablating the hook costs little (a weak model,
                        // a site the model barely uses), the ratio is noisy.
                        {"ce_ablation_gap", ablated - clean},
                        {"prefixes", per_prefix},
                        {"ce_recovered", per_prefix.back()["ce_recovered"]},
                        {"input_scale", scale},
                        {"ce_method", a.ce_reference ? "reference" : "streaming"},
                        {"seconds", progress.elapsed()}};
  if (ablated - clean < 0.05)
    log_warn(cat("ablating the hook raises CE by only ", ablated - clean, " nats: CE recovered is ill-conditioned here"));
  if (a.json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("msae eval: %s (%s) spliced at layer %lld %s of %s: %lld tokens scored in %lld contexts of %lld\n",
              a.sae.c_str(), arch_name(sae.sae.arch), static_cast<long long>(a.layer), a.site.c_str(), a.model.c_str(),
              static_cast<long long>(n_loss), static_cast<long long>(c.N), static_cast<long long>(T));
  std::printf("  CE clean %s, %s-ablated %s (gap %s nats)\n", fixed(clean, 4).c_str(), a.ablation.c_str(),
              fixed(ablated, 4).c_str(), fixed(ablated - clean, 4).c_str());
  std::printf("  %-8s %-11s %-14s %-13s %-8s %-8s\n", "latents", "CE spliced", "CE degradation", "CE recovered", "FVU", "L0");
  for (const auto& m : per_prefix)
    std::printf("  %-8lld %-11s %-14s %-13s %-8s %-8s\n", static_cast<long long>(m["prefix"].get<int64_t>()),
                fixed(m["ce_spliced"].get<double>(), 4).c_str(), fixed(m["ce_degradation"].get<double>(), 4).c_str(),
                (fixed(100 * m["ce_recovered"].get<double>(), 1) + "%").c_str(), fixed(m["fvu"].get<double>(), 4).c_str(),
                fixed(m["l0"].get<double>(), 2).c_str());
  std::printf("(--json prints every figure as JSON)\n");
  return 0;
}

}  // namespace msae::cli

namespace msae::cli {

void check_sae_hook(const saedir::SaeDirectory& sae, const std::string& dir, int64_t layer, const std::string& site,
                    bool allow) {
  if (sae.hook_name.empty()) return;  // not recorded: accepted as before
  const std::string asked = cat("blocks.", layer, ".hook_", site);
  if (sae.hook_name == asked) return;
  const std::string what = cat("the SAE in ", dir, " was trained at ", sae.hook_name,
                               sae.model_name.empty() ? "" : " of " + sae.model_name, " (cfg.json hook_name) but ",
                               "--layer ", layer, " --site ", site, " asks for ", asked);
  if (allow) {
    log_warn(what + "; used there anyway (--allow-hook-mismatch)");
    return;
  }
  usage_error(what, "; pass the SAE's layer and site, or --allow-hook-mismatch to use it there anyway");
}

void add_lm_eval_options(CLI::App* app, LmEvalArgs& a) {
  app->add_option("--model", a.model, "GPT-2 model directory: evaluate downstream CE with the SAE spliced in (docs/lm.md)");
  app->add_option("--text", a.text, "With --model: UTF-8 text files to score");
  app->add_option("--layer", a.layer, "With --model: block index of the SAE's hook");
  app->add_option("--site", a.site, "With --model: resid_pre (default), attn_out, mlp_out or resid_post");
  app->add_option("--ctx", a.ctx, "With --model: tokens per context, BOS included (default 128)");
  app->add_option("--max-tokens", a.max_tokens, "With --model: score about this many tokens (default: all the text)");
  app->add_option("--ablation", a.ablation, "With --model: zero (default) or mean ablation baseline");
  app->add_flag("--splice-bos", a.splice_bos, "With --model: splice at the BOS position too (default: leave it clean)");
  app->add_option("--lm-batch", a.batch, "With --model: contexts per forward pass (default 8)");
  app->add_option("--tokenizer", a.tokenizer, "With --model: tokenizer directory when the model has none");
  app->add_flag("--allow-hook-mismatch", a.allow_hook_mismatch,
                "With --model: use an SAE whose recorded hook (cfg.json hook_name) is another layer or site");
  app->add_flag("--ce-reference", a.ce_reference,
                "With --model: compute CE with the naive full-logits log-softmax instead of the streaming kernel "
                "(slow; for timing and cross-checks)");
}

}  // namespace msae::cli
