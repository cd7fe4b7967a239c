// msae options: the one table of training options. Every option is one row: key, type, default, one-line
// doc, validation and group. The CLI flags of `msae train` and their --help, the keyword arguments of
// Python's msae.train and its docstring, the keys of `msae sweep` grids, and the options recorded in
// checkpoints and msae.json are all made from this table (docs/design.md, "How to add an option").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace msae::run {

enum class OptType { flag, integer, real, text, int_list, real_list };
const char* opt_type_name(OptType t);  // "bool", "int", "float", "str", "list of int", "list of float"

// model: the SAE; variant: variants, ablation switches and recipes (docs/variants.md); data: what is read and
// how; run: the length, optimizer, engine, output and checkpoints.
enum class OptGroup { model, variant, data, run };
const char* opt_group_name(OptGroup g);

// Which front ends take an option (a bit set).
enum OptScope : unsigned {
  kCli = 1,      // msae train
  kPython = 2,   // msae.train
  kGrid = 4,     // msae sweep grids
  kAll = kCli | kPython | kGrid,
};

struct OptionDef {
  const char* key;         // snake_case: d_sae (CLI --d-sae, Python d_sae, grid "d-sae" or "d_sae")
  OptType type;
  nlohmann::json def;      // the default; null = worked out by the run (the doc says how)
  const char* doc;         // one line
  OptGroup group;
  unsigned scopes = kAll;
  // Bounds checked on every value (numbers and each list entry); NaN = unbounded. `above` is exclusive,
  // `at_least` inclusive.
  double at_least = NAN, above = NAN;
  std::vector<std::string> choices = {};  // text: the allowed values (empty = any)
  double at_most = NAN;                   // inclusive upper bound; NaN = unbounded
};

// Every option, in --help order.
const std::vector<OptionDef>& option_table();
// The row of `name` in any spelling ("d_sae", "d-sae", "--d-sae"); nullptr when there is none.
const OptionDef* find_option(const std::string& name);
// The row of `key`; throws a usage error listing the keys when there is none (`what` says where it came from).
const OptionDef& option(const std::string& key, const std::string& what = "");

// A set of given options; an option not given has its table default. Every value is checked against its
// row when set (type, bounds, choices), and errors name the option in the front end's spelling (opt()).
class Options {
 public:
  // Sets from a JSON value: bool, integer, number, string; lists as arrays or comma-separated strings
  // (what grid files, checkpoints and Python give).
  void set(const std::string& key, const nlohmann::json& value);
  // Sets from text (what the CLI gives): "12", "0.5", "64,64,128", "true".
  void set_text(const std::string& key, const std::string& text);
  void erase(const std::string& key);
  bool given(const std::string& key) const;
  // The value (given, else the default); the type must match the row's (an MSAE_ASSERT otherwise).
  bool flag(const std::string& key) const;
  int64_t integer(const std::string& key) const;
  double real(const std::string& key) const;
  std::string text(const std::string& key) const;
  std::vector<int64_t> int_list(const std::string& key) const;
  std::vector<double> real_list(const std::string& key) const;
  // True when the value is null: not given, and the default is worked out by the run.
  bool automatic(const std::string& key) const;

  // The given options as {key: value} (canonical keys, typed values), and back.
  nlohmann::json to_json() const;
  static Options from_json(const nlohmann::json& j, const std::string& what);
  const nlohmann::json& given_json() const { return given_; }

 private:
  nlohmann::json value(const std::string& key, OptType want) const;
  nlohmann::json given_ = nlohmann::json::object();
};

// Converts checkpoint "args" written by msae train before the option table (sessions up to 9) into
// Options with the same meaning, so such runs still resume bit-identically.
Options options_from_legacy_args(const nlohmann::json& args, const std::string& where);

// The recipes: other trainers' semantics as defaults (docs/variants.md).
const std::vector<std::string>& recipe_names();

}  // namespace msae::run
