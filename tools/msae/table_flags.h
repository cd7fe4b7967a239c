// CLI flags made from the option table (msae/options.h): one flag per row, its help from the row's doc
// and default, grouped by the row's group. Front ends parse into run::Options and call the run layer.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "msae/options.h"

namespace msae::cli {

class TableFlags {
 public:
  // Registers a flag for every row whose scopes include `scope` (run::kCli) and that `keep` accepts (all
  // when null).
  void add_to(CLI::App* app, unsigned scope, const std::function<bool(const run::OptionDef&)>& keep = nullptr);
  // The options given on the command line (after parsing), each checked against its row.
  run::Options options() const;

 private:
  struct Slot {
    const run::OptionDef* row = nullptr;
    CLI::Option* option = nullptr;
    std::string text;
    bool flag = false;
  };
  std::vector<std::unique_ptr<Slot>> slots_;
};

}  // namespace msae::cli
