// The option table (msae/options.h) and the checked option values.
#include "msae/options.h"

#include <cmath>
#include <limits>
#include <sstream>

#include "msae/core.h"
#include "msae/io.h"

namespace msae::run {

using nlohmann::json;

const char* opt_type_name(OptType t) {
  switch (t) {
    case OptType::flag: return "bool";
    case OptType::integer: return "int";
    case OptType::real: return "float";
    case OptType::text: return "str";
    case OptType::int_list: return "list of int";
    case OptType::real_list: return "list of float";
  }
  return "";
}

const char* opt_group_name(OptGroup g) {
  switch (g) {
    case OptGroup::model: return "model";
    case OptGroup::variant: return "variant";
    case OptGroup::data: return "data";
    case OptGroup::run: return "run";
  }
  return "";
}

const std::vector<std::string>& recipe_names() {
  static const std::vector<std::string> names = {"bussmann", "dictionary-learning", "saelens"};
  return names;
}

const std::vector<OptionDef>& option_table() {
  using T = OptType;
  using G = OptGroup;
  const json null = nullptr;
  static const std::vector<OptionDef> table = {
      // ---- model
      {"arch", T::text, "matryoshka", "Architecture: matryoshka | batchtopk | topk | relu_l1", G::model, kAll, NAN, NAN,
       {"matryoshka", "batchtopk", "topk", "relu_l1"}},
      {"d_sae", T::integer, null, "Number of latents D (default: 8*d; 512 on the synthetic data; from init)", G::model,
       kAll, NAN, 0},
      {"group_sizes", T::int_list, null, "Matryoshka group sizes summing to D (default D/16,D/16,D/8,D/4,D/2)", G::model,
       kAll, NAN, 0},
      {"k", T::integer, null, "Mean active latents per row (default 32; 3 on the synthetic data)", G::model, kAll, NAN, 0},
      {"encoder_bias", T::flag, false, "Add and train the encoder bias b_enc (off in the published recipe)", G::model},
      {"dead_after_batches", T::integer, 20, "A latent is dead after this many batches without firing", G::model, kAll,
       NAN, 0},
      {"aux_k", T::integer, 512, "AuxK: dead latents used per row", G::model, kAll, 0},
      {"aux_coef", T::real, 1.0 / 32.0, "AuxK loss coefficient", G::model, kAll, 0},
      {"init", T::text, "", "Start from the tensors of an SAE directory (SAELens layout; Python: also an msae.Sae)",
       G::model},
      // ---- variants, switches, recipes (docs/variants.md)
      {"recipe", T::text, "bussmann",
       "Another trainer's semantics as defaults: bussmann (= SPEC) | dictionary-learning | saelens", G::variant, kAll,
       NAN, NAN, recipe_names()},
      {"prefix_weights", T::real_list, null, "Loss weight of each Matryoshka prefix, one per group (default all 1)",
       G::variant, kAll, 0},
      {"no_bdec_term", T::flag, false, "Drop the b_dec-only term of the reconstruction loss (SPEC keeps it)", G::variant},
      {"stop_gradient_groups", T::flag, false, "Later groups' losses do not update earlier groups' latents", G::variant},
      {"aux_detach", T::flag, false, "Detach the AuxK residual (AuxK trains only the dead latents)", G::variant},
      {"group_k", T::int_list, null, "Per-group selection: k_g per group instead of the global BatchTopK k", G::variant,
       kAll, NAN, 0},
      {"sampled_prefixes", T::integer, 0, "Sample this many prefix lengths per batch (Nabeshima); 0 = the fixed groups",
       G::variant, kAll, 0},
      {"prefix_distribution", T::text, "pareto", "Sampled prefix lengths: pareto | uniform", G::variant, kAll, NAN, NAN,
       {"pareto", "uniform"}},
      {"pareto_power", T::real, 0.5, "Pareto power of the prefix-length distribution", G::variant, kAll, NAN, 0},
      {"min_prefix", T::integer, 1, "Shortest sampled prefix", G::variant, kAll, 1},
      {"reorder_every", T::integer, 0, "Permute latents by running mean squared activation every N steps (0 = never)",
       G::variant, kAll, 0},
      {"reorder_decay", T::real, 0.95, "EMA decay of the reordering statistic", G::variant, kAll, 0},
      {"l1_coef", T::real, null, "relu_l1: initial L1 coefficient (default 1.2/d: Nabeshima's 1.2 on msae's per-element MSE)",
       G::variant, kAll, NAN, 0},
      {"l1_adapt_rate", T::real, 3e-4, "relu_l1: per-step multiplicative adaptation toward L0 = k", G::variant, kAll, 0},
      {"l1_warmup_steps", T::integer, null, "relu_l1: linear warm-up of the L1 coefficient (default 20% of steps)",
       G::variant, kAll, 0},
      {"threshold_rate", T::real, 0.01, "Threshold EMA rate (threshold += rate * (cut - threshold))", G::variant, kAll,
       NAN, 0},
      {"threshold_start_step", T::integer, 0, "First step that updates the threshold", G::variant, kAll, 0},
      {"beta2", T::real, 0.99, "Adam beta2", G::variant, kAll, NAN, 0},
      {"lr_warmup_steps", T::integer, 0, "Linear learning-rate warm-up", G::variant, kAll, 0},
      {"lr_decay_start", T::integer, -1, "Step from which lr decays linearly to 0 (-1 = never)", G::variant, kAll, -1},
      {"bdec_median", T::flag, false, "Initialize b_dec to the geometric median of the first batch", G::variant},
      {"init_encoder_norm", T::real, null,
       "Encoder rows at this norm at initialization, along their decoder rows (default: SPEC's kaiming-uniform, "
       "about sqrt(2 d / D); SAELens: 0.1)",
       G::variant, kAll, NAN, 0},
      // ---- data (docs/data.md)
      {"data", T::text, "",
       "Activations: a .npy / .safetensors / raw file, a directory of shards, or a glob ('dir/*.npy'); empty = the "
       "embedded synthetic data (grids: also \"synthetic\" or \"preset:NAME\")",
       G::data, kCli | kGrid},
      {"synthetic", T::flag, false, "Train on the embedded synthetic dataset (the default when data is absent)", G::data,
       kCli},
      {"dtype", T::text, "", "Element type: f32 | f16 | bf16 (raw files; bf16 reads a '<u2' .npy as bfloat16)", G::data,
       kAll, NAN, NAN, {"", "f32", "f16", "bf16", "float32", "float16", "bfloat16"}},
      {"bf16", T::flag, false, "Same as dtype bf16", G::data, kCli | kGrid},
      {"tensor", T::text, "", "The .safetensors tensor to read (default: the file's only 2-D tensor)", G::data},
      {"d_in", T::integer, 0, "Row width of raw files", G::data, kAll, 0},
      {"shuffle_buffer", T::integer, null,
       "Streaming shuffle buffer in rows; 0 = full permutation per epoch (default: permutation up to 4 GiB of data, "
       "else 262144)",
       G::data, kAll, 0},
      {"no_shuffle", T::flag, false, "Read rows in file order: batch i is rows [i*B, (i+1)*B), wrapping", G::data},
      {"on_nonfinite", T::text, "error", "Rows with NaN/Inf: error (stop, naming file and row) | skip (drop and count)",
       G::data, kAll, NAN, NAN, {"error", "skip"}},
      {"no_reader_thread", T::flag, false, "Read batches on the training thread (no prefetch)", G::data},
      {"normalize", T::text, "none",
       "none | expected-norm (scale rows so the mean norm is sqrt(d), as SAELens' expected_average_only_in; folded "
       "into the exported weights)",
       G::data, kAll, NAN, NAN, {"none", "expected-norm"}},
      {"eval_data", T::text, "", "Held-out activations for the final evaluation (same forms as data; Python: also an array)",
       G::data},
      {"eval_rows", T::integer, 16384, "Rows of the final evaluation (at most)", G::data, kAll, NAN, 0},
      {"calibrate_threshold", T::flag, false,
       "Export the threshold at which inference keeps k latents per row on the evaluation rows, instead of the "
       "training EMA (a departure from the published recipe; msae.json records both)",
       G::run, kAll},
      {"holdout_rows", T::integer, null,
       "Rows at the end of the data that training never reads, for the final evaluation (default: min(eval_rows, "
       "rows/10) without eval_data, else 0; 0 = evaluate on training rows)",
       G::data, kAll, 0},
      // ---- run
      {"batch", T::integer, null, "Rows per batch B (default 4096; 1024 on the synthetic data)", G::run, kAll, NAN, 0},
      {"steps", T::integer, null, "Optimizer steps (default: one epoch of the data; 2400 on the synthetic data)", G::run,
       kAll, NAN, 0},
      {"tokens", T::integer, null, "Training tokens (rows); steps = ceil(tokens / batch)", G::run, kAll, NAN, 0},
      {"lr", T::real, 3e-4, "Adam learning rate", G::run, kAll, NAN, 0},
      {"max_grad_norm", T::real, 1e5, "Global gradient-norm clip", G::run, kAll, NAN, 0},
      {"seed", T::integer, 0, "Seed for initialization and shuffling", G::run, kAll, 0},
      {"engine", T::text, "auto", "Training-step engine: sparse (fast) | screened (sparse, BatchTopK screened by an int8 GEMM with a proven bound: faster at large shapes) | reference (dense oracle) | cuda (one NVIDIA GPU; only in builds configured with -DMSAE_CUDA=ON, docs/cuda.md) | auto (screened for batch-wide BatchTopK in one process on an AVX2 build with d >= 768 and batch x d_sae >= 2^24, or d >= 512 and >= 2^22 where oneDNN's int8 GEMM has VNNI; reference for relu_l1, else sparse; never cuda)", G::run},
      {"cuda_precision", T::text, "fp32",
       "--engine cuda only: the encoder GEMM's inputs: fp32 | tf32 (tensor cores, inputs rounded to a 10-bit "
       "mantissa) | bf16 (x - b_dec and W_enc rounded to bfloat16); fp32 accumulation, everything after the GEMM "
       "in fp32 (docs/cuda.md)",
       G::run, kAll, NAN, NAN, {"fp32", "tf32", "bf16"}},
      {"aux_dense_density", T::real, 0.2,
       "Sparse engine: AuxK runs as dense GEMMs over the dead latents when its entries fill at least this share of "
       "them, as sparse products below (0: always dense; > 1: never)",
       G::run, kAll, 0},
      {"threads", T::integer, 0, "Threads (default: all cores; at most 1024)", G::run, kCli | kPython, 0, NAN, {},
       1024},  // set_num_threads's bound (src/core/threads.cpp)
      {"no_memory_check", T::flag, false,
       "Train even when the memory estimate exceeds the memory available (it is refused by default, before any "
       "allocation)",
       G::run, kCli | kPython},
      {"log_every", T::integer, null, "metrics.jsonl interval in steps (default: steps/100)", G::run, kAll, NAN, 0},
      {"checkpoint_every", T::integer, 0, "Write a checkpoint to OUT/checkpoints/ every N steps (0: only when stopped)",
       G::run, kCli | kPython, 0},
      {"keep_checkpoints", T::integer, 2, "Checkpoints kept (the newest)", G::run, kCli | kPython, 1},
      {"out", T::text, "", "Output SAE directory (SAELens layout); required unless resume", G::run, kCli | kPython},
      {"overwrite", T::flag, false, "Replace an existing output directory", G::run, kCli | kPython},
      {"resume", T::text, "",
       "Continue the interrupted run in this output directory from its latest checkpoint (no other options)", G::run,
       kCli | kPython},
      {"meta_steps", T::integer, 0, "Ground-truth runs (data \"preset:NAME\"): meta-SAE steps (0 = skip)", G::run,
       kGrid, 0},
  };
  return table;
}

namespace {

std::string canonical(const std::string& name) {
  std::string k = name;
  if (k.rfind("--", 0) == 0) k = k.substr(2);
  std::replace(k.begin(), k.end(), '-', '_');
  return k;
}

// Checks one number against the row's bounds.
void check_bounds(const OptionDef& o, double v) {
  if (!std::isnan(o.at_least) && !(v >= o.at_least)) usage_error(opt(o.key), " must be >= ", o.at_least, ", got ", v);
  if (!std::isnan(o.above) && !(v > o.above)) {
    if (o.above == 0) usage_error(opt(o.key), " must be positive, got ", v);
    usage_error(opt(o.key), " must be > ", o.above, ", got ", v);
  }
  if (!std::isnan(o.at_most) && !(v <= o.at_most)) usage_error(opt(o.key), " must be <= ", o.at_most, ", got ", v);
}

int64_t parse_int_text(const OptionDef& o, const std::string& item) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(item, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != item.size())
    usage_error(opt(o.key), ": '", item, "' is not an integer in [-2^63, 2^63)");
  return v;
}

double parse_real_text(const OptionDef& o, const std::string& item) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(item, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != item.size()) usage_error(opt(o.key), ": '", item, "' is not a number");
  return v;
}

std::vector<std::string> split_commas(const OptionDef& o, const std::string& text) {
  std::vector<std::string> items;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) items.push_back(item);
  if (items.empty()) usage_error(opt(o.key), ": empty list; expected a comma-separated list such as 64,64,128");
  return items;
}

// A JSON value checked and converted to the row's type.
json typed(const OptionDef& o, const json& v) {
  const std::string what = opt(o.key);
  try {
    switch (o.type) {
      case OptType::flag:
        if (!v.is_boolean()) usage_error(what, " takes true or false, got ", io::json_excerpt(v));
        return v;
      case OptType::integer: {
        const int64_t x = io::json_int(v, what);
        check_bounds(o, static_cast<double>(x));
        return x;
      }
      case OptType::real: {
        if (!v.is_number()) usage_error(what, " takes a number, got ", io::json_excerpt(v));
        const double x = v.get<double>();
        // (every real option is used as a float, except aux_dense_density, which is compared with a share)
        if (!std::isfinite(x) || std::abs(x) > std::numeric_limits<float>::max())
          usage_error(what, " must be a finite number in float range, got ", x);
        check_bounds(o, x);
        return x;
      }
      case OptType::text: {
        if (!v.is_string()) usage_error(what, " takes a string, got ", io::json_excerpt(v));
        const std::string s = v.get<std::string>();
        if (!o.choices.empty() && std::find(o.choices.begin(), o.choices.end(), s) == o.choices.end()) {
          std::string list;
          for (const std::string& c : o.choices)
            if (!c.empty()) list += cat(list.empty() ? "" : ", ", c);
          usage_error(what, ": unknown value '", s, "'; expected one of ", list);
        }
        return s;
      }
      case OptType::int_list:
      case OptType::real_list: {
        json out = json::array();
        const bool ints = o.type == OptType::int_list;
        if (v.is_string()) {
          for (const std::string& item : split_commas(o, v.get<std::string>())) {
            if (ints)
              out.push_back(parse_int_text(o, item));
            else
              out.push_back(parse_real_text(o, item));
          }
        } else if (v.is_array()) {
          if (v.empty()) usage_error(what, ": empty list");
          for (const json& e : v) {
            if (ints)
              out.push_back(io::json_int(e, what));
            else if (e.is_number())
              out.push_back(e.get<double>());
            else
              usage_error(what, ": '", io::json_excerpt(e), "' is not a number");
          }
        } else {
          usage_error(what, " takes a list (or a comma-separated string), got ", io::json_excerpt(v));
        }
        for (const json& e : out) check_bounds(o, e.get<double>());
        return out;
      }
    }
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::usage) throw;
    usage_error(e.what());  // io::json_* report data faults as runtime errors; a bad option value is a usage error
  }
  return v;
}

}  // namespace

const OptionDef* find_option(const std::string& name) {
  const std::string k = canonical(name);
  for (const OptionDef& o : option_table())
    if (k == o.key) return &o;
  return nullptr;
}

const OptionDef& option(const std::string& key, const std::string& what) {
  if (const OptionDef* o = find_option(key)) return *o;
  std::string keys;
  for (const OptionDef& o : option_table()) keys += cat(keys.empty() ? "" : ", ", opt(o.key));
  usage_error(what.empty() ? "" : what + ": ", "unknown option '", key, "'; the options are ", keys);
}

void Options::set(const std::string& key, const json& value) {
  const OptionDef& o = option(key);
  if (value.is_null()) {
    given_.erase(o.key);
    return;
  }
  given_[o.key] = typed(o, value);
}

void Options::set_text(const std::string& key, const std::string& text) {
  const OptionDef& o = option(key);
  switch (o.type) {
    case OptType::flag:
      if (text == "true" || text == "1" || text.empty()) return set(key, true);
      if (text == "false" || text == "0") return set(key, false);
      usage_error(opt(o.key), " takes true or false, got '", text, "'");
    case OptType::integer: return set(key, parse_int_text(o, text));
    case OptType::real: return set(key, parse_real_text(o, text));
    case OptType::text:
    case OptType::int_list:
    case OptType::real_list: return set(key, text);
  }
}

void Options::erase(const std::string& key) { given_.erase(option(key).key); }

bool Options::given(const std::string& key) const { return given_.contains(option(key).key); }

json Options::value(const std::string& key, OptType want) const {
  const OptionDef& o = option(key);
  MSAE_ASSERT(o.type == want, "option ", key, " is a ", opt_type_name(o.type), ", read as ", opt_type_name(want));
  auto it = given_.find(o.key);
  return it != given_.end() ? *it : o.def;
}

bool Options::automatic(const std::string& key) const {
  const OptionDef& o = option(key);
  return !given_.contains(o.key) && o.def.is_null();
}

bool Options::flag(const std::string& key) const { return value(key, OptType::flag).get<bool>(); }

int64_t Options::integer(const std::string& key) const {
  const json v = value(key, OptType::integer);
  MSAE_ASSERT(!v.is_null(), "option ", key, " is automatic; the run works it out");
  return v.get<int64_t>();
}

double Options::real(const std::string& key) const {
  const json v = value(key, OptType::real);
  MSAE_ASSERT(!v.is_null(), "option ", key, " is automatic; the run works it out");
  return v.get<double>();
}

std::string Options::text(const std::string& key) const { return value(key, OptType::text).get<std::string>(); }

std::vector<int64_t> Options::int_list(const std::string& key) const {
  const json v = value(key, OptType::int_list);
  return v.is_null() ? std::vector<int64_t>{} : v.get<std::vector<int64_t>>();
}

std::vector<double> Options::real_list(const std::string& key) const {
  const json v = value(key, OptType::real_list);
  return v.is_null() ? std::vector<double>{} : v.get<std::vector<double>>();
}

json Options::to_json() const { return given_; }

Options Options::from_json(const json& j, const std::string& what) {
  if (!j.is_object()) runtime_error(what, ": the recorded options are not a JSON object");
  Options o;
  for (const auto& [key, value] : j.items()) {
    if (!find_option(key)) runtime_error(what, ": unknown recorded option '", key, "' (written by a newer msae?)");
    o.set(key, value);
  }
  return o;
}

Options options_from_legacy_args(const json& a, const std::string& where) {
  Options o;
  try {
    const auto given_flags = a.at("given_flags").get<std::vector<std::string>>();
    auto given = [&](const std::string& flag) {
      return std::find(given_flags.begin(), given_flags.end(), flag) != given_flags.end();
    };
    // The keys that were always recorded resolved (the run worked them out), and the data description.
    const json& da = a.at("data_args");
    if (!da.at("data").get<std::string>().empty()) o.set("data", da.at("data"));
    if (!da.at("dtype").get<std::string>().empty()) o.set("dtype", da.at("dtype"));
    if (!da.at("tensor").get<std::string>().empty()) o.set("tensor", da.at("tensor"));
    if (io::json_int(da.at("d_in"), where) != 0) o.set("d_in", da.at("d_in"));
    if (io::json_int(da.at("shuffle_buffer"), where) >= 0) o.set("shuffle_buffer", da.at("shuffle_buffer"));
    o.set("on_nonfinite", da.at("on_nonfinite"));
    o.set("no_reader_thread", da.at("no_reader_thread"));
    o.set("normalize", a.at("normalize"));
    o.set("checkpoint_every", a.at("checkpoint_every"));
    o.set("keep_checkpoints", a.at("keep_checkpoints"));
    o.set("arch", a.at("arch"));
    o.set("d_sae", a.at("d_sae"));
    if (!a.at("group_sizes").get<std::string>().empty()) o.set("group_sizes", a.at("group_sizes"));
    o.set("k", a.at("k"));
    o.set("batch", a.at("batch"));
    o.set("steps", a.at("steps"));
    o.set("seed", a.at("seed"));
    if (!a.at("init").get<std::string>().empty()) o.set("init", a.at("init"));
    o.set("no_shuffle", a.at("no_shuffle"));
    o.set("threads", a.at("threads"));
    o.set("log_every", a.at("log_every"));
    // Runs of that time evaluated on their first rows: keep training on all of them.
    o.set("holdout_rows", 0);
    if (a.contains("aux_dense_density")) o.set("aux_dense_density", a.at("aux_dense_density"));
    // What a recipe may change was applied only where the flag was not given: set exactly the given ones.
    const std::pair<const char*, const char*> plain[] = {
        {"--lr", "lr"},           {"--dead-after-batches", "dead_after"}, {"--aux-k", "aux_k"},
        {"--aux-coef", "aux_coef"}, {"--max-grad-norm", "max_grad_norm"}, {"--encoder-bias", "encoder_bias"},
        {"--engine", "engine"}};
    for (const auto& [flag, field] : plain)
      if (given(flag)) o.set(canonical(flag), a.at(field));
    const json& v = a.at("variants");
    for (const auto& [key, value] : v.items()) {
      const std::string flag = "--" + key;
      if (!given(flag)) continue;
      if ((key == "recipe" || key == "prefix-weights" || key == "group-k") && value.get<std::string>().empty()) continue;
      o.set(key, value);
    }
    // Options not given that a run still worked out from defaults the table also has: recipe-independent.
    if (!given("--recipe") && v.contains("recipe") && !v.at("recipe").get<std::string>().empty())
      o.set("recipe", v.at("recipe"));
  } catch (const json::exception& e) {
    runtime_error(where, ": the run's recorded flags are malformed: ", e.what());
  }
  return o;
}

}  // namespace msae::run
