// msae absorption: first-letter feature absorption (Chanin et al., "A is for Absorption"), following
// SAEBench's implementation (sae_bench/evals/absorption): probes, k-sparse probing for the letter's main
// latents, then the absorption fraction and full-absorption rate per letter, per SAE and per Matryoshka
// prefix. docs/lm.md describes every step and where it departs from SAEBench.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "cmd_lm_eval.h"
#include "commands.h"
#include "msae/kernels.h"
#include "msae/lm.h"
#include "msae/sae_dir.h"
#include "progress.h"

namespace msae::cli {
namespace {

constexpr int kLetters = 26;

struct AbsorptionArgs {
  std::vector<std::string> saes;
  std::string model, tokenizer, site = "resid_pre", template_ = "{word} has the first letter:";
  int64_t layer = -1, max_words = 0, icl = 10, max_k = 10, batch = 32;
  double train_fraction = 0.8, f1_jump = 0.03, min_probe_f1 = 0.6;
  uint64_t seed = 42;
  int threads = 0;
  bool allow_hook_mismatch = false;
};

struct Word {
  int32_t id;
  std::string text;  // the token's bytes (maybe with a leading space)
  int letter;        // 0..25
};

struct F1Stats {
  double f1 = 0, precision = 0, recall = 0, accuracy = 0;
  int64_t positives = 0;
};
F1Stats f1_stats(const std::vector<uint8_t>& y, const std::vector<float>& score) {
  int64_t tp = 0, fp = 0, fn = 0, tn = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const bool p = score[i] > 0;
    if (p && y[i]) ++tp;
    else if (p) ++fp;
    else if (y[i]) ++fn;
    else ++tn;
  }
  F1Stats s;
  s.positives = tp + fn;
  s.precision = tp + fp ? static_cast<double>(tp) / (tp + fp) : 0.0;
  s.recall = tp + fn ? static_cast<double>(tp) / (tp + fn) : 0.0;
  s.f1 = 2.0 * tp + fp + fn > 0 ? 2.0 * tp / (2.0 * tp + fp + fn) : 0.0;
  s.accuracy = y.empty() ? 0.0 : static_cast<double>(tp + tn) / static_cast<double>(y.size());
  return s;
}

std::string format_prompt(const std::string& tmpl, const std::string& word) {
  std::string out = tmpl;
  const size_t p = out.find("{word}");
  MSAE_ASSERT(p != std::string::npos);
  out.replace(p, 6, word);
  return out;
}

int run_absorption(const AbsorptionArgs& a) {
  set_num_threads(a.threads);
  kernels::set_blas_threads(num_threads());
  if (a.saes.empty()) usage_error("--sae: give at least one SAE directory");
  if (a.template_.find("{word}") == std::string::npos) usage_error("--template must contain {word}");
  if (!(a.train_fraction > 0 && a.train_fraction < 1)) usage_error("--train-fraction must be in (0, 1)");
  const lm::Model model = lm::Model::load(a.model);
  if (a.layer < 0) usage_error("--layer is required (the block where the SAEs read activations)");
  const lm::Site site = lm::checked_site(model, a.layer, a.site);
  const lm::Tokenizer tok = lm::load_tokenizer(a.model, a.tokenizer);
  std::vector<saedir::SaeDirectory> saes;
  for (const auto& dir : a.saes) {
    saes.push_back(saedir::read_sae_dir(dir));
    check_sae_hook(saes.back(), dir, a.layer, a.site, a.allow_hook_mismatch);
    if (saes.back().params.d != model.d_model())
      usage_error("the SAE in ", dir, " has d_in ", saes.back().params.d, " but the model's width is ", model.d_model());
  }
  const int64_t d = model.d_model();

  // 1. Vocabulary: tokens that are letters only, optionally after one leading space (SAEBench get_alpha_tokens).
  std::vector<Word> vocab;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    if (id == tok.eot()) continue;
    const std::string& b = tok.token_bytes(id);
    const size_t s = (!b.empty() && b[0] == ' ') ? 1 : 0;
    if (b.size() <= s) continue;
    bool alpha = true;
    for (size_t i = s; i < b.size(); ++i) alpha = alpha && ((b[i] >= 'a' && b[i] <= 'z') || (b[i] >= 'A' && b[i] <= 'Z'));
    if (!alpha) continue;
    vocab.push_back({id, b, std::tolower(static_cast<unsigned char>(b[s])) - 'a'});
  }
  Rng rng(a.seed);
  {
    std::vector<int64_t> perm(vocab.size());
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int64_t>(i);
    shuffle_indices(perm, rng);
    std::vector<Word> v2;
    for (int64_t i : perm) v2.push_back(vocab[i]);
    vocab.swap(v2);
  }
  if (a.max_words > 0 && static_cast<int64_t>(vocab.size()) > a.max_words) vocab.resize(static_cast<size_t>(a.max_words));
  const size_t n_train_words = static_cast<size_t>(static_cast<double>(vocab.size()) * a.train_fraction);

  // 2. ICL prompts "ex has the first letter: E\n... word has the first letter:" with examples from the same
  // split, BOS prepended; the activation is read at the word's position (the token just before the
  // template's tail).
  const std::string tail = a.template_.substr(a.template_.find("{word}") + 6);
  const int64_t tail_tokens = static_cast<int64_t>(tok.encode(tail).size());
  struct Prompt {
    std::vector<int32_t> ids;
    int64_t pos;
    size_t word;
  };
  std::vector<Prompt> prompts;
  int64_t skipped = 0;
  for (size_t w = 0; w < vocab.size(); ++w) {
    const bool tr = w < n_train_words;
    const size_t lo = tr ? 0 : n_train_words, hi = tr ? n_train_words : vocab.size();
    std::string text;
    for (int64_t e = 0; e < a.icl && hi - lo > 1; ++e) {
      size_t j;
      do j = lo + rng.below(hi - lo);
      while (j == w);
      const Word& ex = vocab[j];
      const size_t s = ex.text[0] == ' ' ? 1 : 0;
      text += format_prompt(a.template_, ex.text) + " " + static_cast<char>(std::toupper(static_cast<unsigned char>(ex.text[s]))) + "\n";
    }
    text += format_prompt(a.template_, vocab[w].text);
    Prompt p;
    p.ids.push_back(tok.eot());
    const auto ids = tok.encode(text);
    p.ids.insert(p.ids.end(), ids.begin(), ids.end());
    p.pos = static_cast<int64_t>(p.ids.size()) - 1 - tail_tokens;
    p.word = w;
    if (p.pos < 0 || p.ids[static_cast<size_t>(p.pos)] != vocab[w].id ||
        static_cast<int64_t>(p.ids.size()) > model.config().n_positions) {
      ++skipped;  // the word did not stay one token in context, or the prompt is too long
      continue;
    }
    prompts.push_back(std::move(p));
  }
  log_info(cat("absorption: ", vocab.size(), " single-token alphabetic words (", n_train_words, " train), ",
               prompts.size(), " prompts (", skipped, " skipped), layer ", a.layer, " ", a.site));

  // 3. Activations at the word position, prompts of equal length batched together.
  std::vector<float> acts(prompts.size() * static_cast<size_t>(d));
  {
    std::map<size_t, std::vector<size_t>> by_len;
    for (size_t i = 0; i < prompts.size(); ++i) by_len[prompts[i].ids.size()].push_back(i);
    Progress progress(static_cast<int64_t>(prompts.size()));
    int64_t done = 0;
    for (const auto& [T, idx] : by_len) {
      for (size_t b0 = 0; b0 < idx.size(); b0 += static_cast<size_t>(a.batch)) {
        const size_t nb = std::min(idx.size() - b0, static_cast<size_t>(a.batch));
        std::vector<int32_t> ids;
        for (size_t k = 0; k < nb; ++k) ids.insert(ids.end(), prompts[idx[b0 + k]].ids.begin(), prompts[idx[b0 + k]].ids.end());
        std::vector<lm::Hook> hooks = {{a.layer, site, [&](float* x, int64_t) {
                                          for (size_t k = 0; k < nb; ++k) {
                                            const Prompt& p = prompts[idx[b0 + k]];
                                            const float* src = x + (static_cast<int64_t>(k * T) + p.pos) * d;
                                            std::copy(src, src + d, acts.data() + idx[b0 + k] * d);
                                          }
                                        }}};
        model.run(ids.data(), static_cast<int64_t>(nb), static_cast<int64_t>(T), hooks, a.layer, false);
        done += static_cast<int64_t>(nb);
        progress.update(done, cat("prompts ", done, "/", prompts.size()));
      }
    }
    progress.finish();
  }
  std::vector<size_t> train_rows, test_rows;
  for (size_t i = 0; i < prompts.size(); ++i) (prompts[i].word < n_train_words ? train_rows : test_rows).push_back(i);
  if (train_rows.empty() || test_rows.empty()) usage_error("too few words for a train/test split; raise --max-words");
  auto gather = [&](const std::vector<size_t>& rows, std::vector<float>& X, std::vector<int32_t>& y) {
    X.resize(rows.size() * static_cast<size_t>(d));
    y.resize(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      std::copy(acts.begin() + rows[i] * d, acts.begin() + (rows[i] + 1) * d, X.begin() + i * d);
      y[i] = vocab[prompts[rows[i]].word].letter;
    }
  };
  std::vector<float> Xtr, Xte;
  std::vector<int32_t> ytr, yte;
  gather(train_rows, Xtr, ytr);
  gather(test_rows, Xte, yte);

  // 4. The ground-truth probes: 26 one-vs-rest logistic outputs (SAEBench train_linear_probe_for_task).
  lm::MultiProbeOptions popt;  // batch 64, 50 epochs, lr 1e-2 -> 1e-5, weight decay 1e-4
  popt.seed = a.seed;
  const lm::MultiProbe probe = lm::train_multi_probe(Xtr.data(), static_cast<int64_t>(ytr.size()), d, ytr.data(), kLetters, popt);
  std::vector<std::vector<float>> probe_score(kLetters, std::vector<float>(yte.size()));
  nlohmann::json probe_json = nlohmann::json::array();
  double mean_f1 = 0;
  std::vector<F1Stats> pstats(kLetters);
  for (int c = 0; c < kLetters; ++c) {
    std::vector<uint8_t> y(yte.size());
    for (size_t i = 0; i < yte.size(); ++i) {
      probe_score[c][i] = probe.score(c, Xte.data() + i * d);
      y[i] = yte[i] == c;
    }
    pstats[c] = f1_stats(y, probe_score[c]);
    mean_f1 += pstats[c].f1 / kLetters;
    probe_json.push_back({{"letter", std::string(1, static_cast<char>('a' + c))}, {"f1", pstats[c].f1},
                          {"precision", pstats[c].precision}, {"recall", pstats[c].recall},
                          {"accuracy", pstats[c].accuracy}, {"test_positives", pstats[c].positives}});
  }
  // Top-1 accuracy of the 26-way argmax, the figure that says whether the model knows first letters.
  int64_t top1 = 0;
  for (size_t i = 0; i < yte.size(); ++i) {
    int best = 0;
    for (int c = 1; c < kLetters; ++c)
      if (probe_score[c][i] > probe_score[best][i]) best = c;
    top1 += best == yte[i];
  }
  const double probe_top1 = static_cast<double>(top1) / static_cast<double>(yte.size());
  int64_t most = 0;
  {
    std::vector<int64_t> cnt(kLetters, 0);
    for (int32_t v : yte) ++cnt[v];
    most = *std::max_element(cnt.begin(), cnt.end());
  }
  const double majority = static_cast<double>(most) / static_cast<double>(yte.size());
  log_info(cat("probes: held-out mean F1 ", fixed(mean_f1, 3), ", 26-way accuracy ", fixed(probe_top1, 3), " (majority class ",
               fixed(majority, 3), ")"));
  if (mean_f1 < a.min_probe_f1)
    log_warn(cat("the first-letter probes are weak (held-out mean F1 ", fixed(mean_f1, 3), " < ", a.min_probe_f1,
                 "): this model does not represent first letters linearly at this layer, so the absorption figures "
                 "below measure little"));

  // Probe directions (unit) for the cosines with decoder rows and the projections.
  std::vector<std::vector<float>> dir(kLetters, std::vector<float>(static_cast<size_t>(d)));
  for (int c = 0; c < kLetters; ++c) {
    double nn = 0;
    for (int64_t j = 0; j < d; ++j) nn += static_cast<double>(probe.W[c * d + j]) * probe.W[c * d + j];
    const double inv = nn > 0 ? 1.0 / std::sqrt(nn) : 0.0;
    for (int64_t j = 0; j < d; ++j) dir[c][j] = static_cast<float>(probe.W[c * d + j] * inv);
  }

  nlohmann::json sae_results = nlohmann::json::array();
  for (size_t si = 0; si < saes.size(); ++si) {
    const saedir::SaeDirectory& sae = saes[si];
    const float scale = lm::sae_input_scale(sae);
    const int64_t D = sae.params.D;
    // cos (26, D) of the probe directions with the decoder rows.
    std::vector<std::vector<float>> cos(kLetters, std::vector<float>(static_cast<size_t>(D)));
    for (int64_t i = 0; i < D; ++i) {
      const float* w = sae.params.W_dec.ptr() + i * d;
      double nn = 0;
      for (int64_t j = 0; j < d; ++j) nn += static_cast<double>(w[j]) * w[j];
      const double inv = nn > 0 ? 1.0 / std::sqrt(nn) : 0.0;
      for (int c = 0; c < kLetters; ++c) {
        double s = 0;
        for (int64_t j = 0; j < d; ++j) s += static_cast<double>(w[j]) * dir[c][j];
        cos[c][i] = static_cast<float>(s * inv);
      }
    }
    auto encode = [&](const std::vector<float>& X, int64_t limit) {
      const int64_t n = static_cast<int64_t>(X.size()) / d;
      std::vector<float> xs(X.size());
      for (size_t i = 0; i < X.size(); ++i) xs[i] = X[i] * scale;
      const kernels::SparseCodes z = encode_inference(sae.sae, sae.params, xs.data(), n, limit);
      lm::SparseRows r;
      r.rows = n;
      r.cols = D;
      r.row_ptr = z.row_ptr;
      r.ids = z.ids;
      r.vals.assign(z.vals.begin(), z.vals.end());
      return r;
    };
    nlohmann::json prefixes = nlohmann::json::array();
    for (int64_t m : lm::sae_prefixes(sae)) {
      const lm::SparseRows ztr = encode(Xtr, m), zte = encode(Xte, m);
      // 5. k-sparse probing (SAEBench train_k_sparse_probes): an L1 probe on the codes ranks latents per letter;
      // for k = 1..max_k a logistic regression on the top-k latents; the letter's main latents are the
      // largest k whose F1 still improved by more than --f1-jump over k-1.
      lm::MultiProbeOptions l1opt;
      l1opt.batch = 4096;
      l1opt.l1 = 0.01f;
      l1opt.weight_decay = 1e-6f;
      l1opt.seed = a.seed;
      const lm::MultiProbe l1 = lm::train_multi_probe(ztr, ytr.data(), kLetters, l1opt);
      auto dense_cols = [&](const lm::SparseRows& z, const std::vector<int32_t>& feats) {
        const int64_t k = static_cast<int64_t>(feats.size());
        std::vector<float> X(static_cast<size_t>(z.rows * k), 0.0f);
        for (int64_t r = 0; r < z.rows; ++r)
          for (int64_t e = z.row_ptr[r]; e < z.row_ptr[r + 1]; ++e)
            for (int64_t f = 0; f < k; ++f)
              if (z.ids[e] == feats[f]) X[r * k + f] = z.vals[e];
        return X;
      };
      nlohmann::json letters = nlohmann::json::array();
      double sum_frac = 0, sum_full = 0, sum_split = 0, sum_frac_ok = 0, sum_full_ok = 0;
      int n_letters = 0, n_ok = 0;
      for (int c = 0; c < kLetters; ++c) {
        std::vector<int32_t> order(static_cast<size_t>(m));
        for (int64_t i = 0; i < m; ++i) order[i] = static_cast<int32_t>(i);
        const int64_t kmax = std::min<int64_t>(a.max_k, m);
        std::partial_sort(order.begin(), order.begin() + kmax, order.end(), [&](int32_t x, int32_t y) {
          const float wx = l1.W[c * D + x], wy = l1.W[c * D + y];
          return wx > wy || (wx == wy && x < y);
        });
        std::vector<uint8_t> ytr_c(ytr.size()), yte_c(yte.size());
        for (size_t i = 0; i < ytr.size(); ++i) ytr_c[i] = ytr[i] == c;
        for (size_t i = 0; i < yte.size(); ++i) yte_c[i] = yte[i] == c;
        std::vector<int32_t> split;
        double prev = -100;
        nlohmann::json kf1 = nlohmann::json::array();
        for (int64_t k = 1; k <= kmax; ++k) {
          const std::vector<int32_t> feats(order.begin(), order.begin() + k);
          const std::vector<float> Xk = dense_cols(ztr, feats), Xkt = dense_cols(zte, feats);
          const lm::LogisticProbe lr = lm::train_logistic(Xk.data(), ytr_c.data(), ztr.rows, k);
          std::vector<float> sc(yte.size());
          for (size_t i = 0; i < yte.size(); ++i) sc[i] = lr.score(Xkt.data() + i * k);
          const double f1 = f1_stats(yte_c, sc).f1;
          kf1.push_back(f1);
          if (f1 > prev + a.f1_jump) {
            prev = f1;
            split = feats;
          } else {
            break;
          }
        }
        // 6. Absorption over the probe's true positives among the held-out words of this letter.
        double frac = 0;
        int64_t full = 0, tp = 0;
        for (size_t i = 0; i < yte.size(); ++i) {
          if (yte[i] != c || !(probe_score[c][i] > 0)) continue;
          ++tp;
          double pp = 0;
          for (int64_t j = 0; j < d; ++j) pp += static_cast<double>(Xte[i * d + j]) * dir[c][j];
          const int64_t b = zte.row_ptr[i], e = zte.row_ptr[i + 1];
          // Codes are of x * scale; projections are compared with <x, dir>, so undo the scale.
          std::vector<float> vals(zte.vals.begin() + b, zte.vals.begin() + e);
          for (auto& v : vals) v /= scale;
          const lm::WordAbsorption wa =
              lm::word_absorption(zte.ids.data() + b, vals.data(), e - b, cos[c].data(), static_cast<float>(pp), split);
          frac += wa.fraction;
          full += wa.full;
        }
        nlohmann::json lj = {{"letter", std::string(1, static_cast<char>('a' + c))},
                             {"num_probe_true_positives", tp},
                             {"main_latents", split},
                             {"num_split_features", static_cast<int64_t>(split.size())},
                             {"k_sparse_f1", kf1},
                             {"probe_f1", pstats[c].f1}};
        if (tp > 0) {
          lj["mean_absorption_fraction"] = frac / static_cast<double>(tp);
          lj["full_absorption_rate"] = static_cast<double>(full) / static_cast<double>(tp);
          lj["num_full_absorption"] = full;
          sum_frac += frac / static_cast<double>(tp);
          sum_full += static_cast<double>(full) / static_cast<double>(tp);
          sum_split += static_cast<double>(split.size());
          ++n_letters;
          if (pstats[c].f1 >= a.min_probe_f1) {
            sum_frac_ok += frac / static_cast<double>(tp);
            sum_full_ok += static_cast<double>(full) / static_cast<double>(tp);
            ++n_ok;
          }
        }
        letters.push_back(lj);
      }
      nlohmann::json pj = {{"prefix", m},
                           {"letters_scored", n_letters},
                           {"mean_absorption_fraction", n_letters ? sum_frac / n_letters : 0.0},
                           {"mean_full_absorption_rate", n_letters ? sum_full / n_letters : 0.0},
                           {"mean_num_split_features", n_letters ? sum_split / n_letters : 0.0},
                           {"letters_with_good_probe", n_ok},
                           {"mean_absorption_fraction_good_probe", n_ok ? nlohmann::json(sum_frac_ok / n_ok) : nlohmann::json()},
                           {"mean_full_absorption_rate_good_probe", n_ok ? nlohmann::json(sum_full_ok / n_ok) : nlohmann::json()},
                           {"per_letter", letters}};
      log_info(cat(a.saes[si], " prefix ", m, ": mean absorption fraction ", fixed(pj["mean_absorption_fraction"].get<double>(), 3),
                   ", full absorption rate ", fixed(pj["mean_full_absorption_rate"].get<double>(), 3)));
      prefixes.push_back(pj);
    }
    sae_results.push_back({{"sae", a.saes[si]}, {"arch", arch_name(sae.sae.arch)}, {"d_sae", D}, {"prefixes", prefixes}});
  }
  nlohmann::json out = {
      {"model", a.model}, {"layer", a.layer}, {"site", a.site}, {"template", a.template_}, {"icl_examples", a.icl},
      {"words", vocab.size()}, {"prompts", prompts.size()}, {"skipped_prompts", skipped},
      {"train_words", train_rows.size()}, {"test_words", test_rows.size()}, {"seed", a.seed},
      {"probe", {{"mean_f1", mean_f1}, {"top1_accuracy", probe_top1}, {"majority_class_accuracy", majority},
                 {"weak", mean_f1 < a.min_probe_f1}, {"per_letter", probe_json}}},
      {"thresholds", {{"full_absorption_probe_cos", 0.025}, {"absorption_fraction_probe_cos", 0.1},
                      {"probe_projection_proportion", 0.4}, {"max_absorbing_latents", 3},
                      {"f1_jump", a.f1_jump}, {"max_k", a.max_k}, {"min_probe_f1", a.min_probe_f1}}},
      {"saes", sae_results}};
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

}  // namespace

Action add_absorption_command(CLI::App& root) {
  auto a = std::make_shared<AbsorptionArgs>();
  CLI::App* app = root.add_subcommand("absorption", "First-letter feature absorption of SAEs on a GPT-2 model (SAEBench's metric)");
  app->add_option("--sae", a->saes, "SAE directories (all read the same hook)")->required();
  app->add_option("--model", a->model, "GPT-2 model directory (config.json + model.safetensors)")->required();
  app->add_option("--layer", a->layer, "Block index of the SAEs' hook")->required();
  app->add_option("--site", a->site, "Hook site of the SAEs: resid_pre (default), attn_out, mlp_out, resid_post");
  app->add_option("--max-words", a->max_words, "Use at most this many vocabulary words (default: all)");
  app->add_option("--icl", a->icl, "In-context examples per prompt (default 10)");
  app->add_option("--template", a->template_, "Prompt template (default \"{word} has the first letter:\")");
  app->add_option("--max-k", a->max_k, "Largest k of the k-sparse probes (default 10)");
  app->add_option("--f1-jump", a->f1_jump, "F1 gain that counts as a feature split (default 0.03)");
  app->add_option("--min-probe-f1", a->min_probe_f1, "Probe F1 below which a letter's probe is called weak (default 0.6)");
  app->add_option("--train-fraction", a->train_fraction, "Share of words for training the probes (default 0.8)");
  app->add_option("--seed", a->seed, "Word split, ICL examples and probe initialization (default 42)");
  app->add_option("--batch", a->batch, "Prompts per forward pass (default 32)");
  app->add_option("--tokenizer", a->tokenizer, "Tokenizer directory when the model has none");
  app->add_option("--threads", a->threads, "Threads (default: all cores)");
  app->add_flag("--allow-hook-mismatch", a->allow_hook_mismatch,
                "Use SAEs whose recorded hook (cfg.json hook_name) is another layer or site than --layer/--site");
  return [a]() { return run_absorption(*a); };
}

}  // namespace msae::cli
