// CLI flags from the option table (table_flags.h).
#include "table_flags.h"

#include "msae/core.h"


namespace msae::cli {

namespace {
std::string group_title(run::OptGroup g) {
  switch (g) {
    case run::OptGroup::model: return "Model";
    case run::OptGroup::variant: return "Variants";
    case run::OptGroup::data: return "Data";
    case run::OptGroup::run: return "Run";
  }
  return "";
}
const char* type_name(run::OptType t) {
  switch (t) {
    case run::OptType::integer: return "INT";
    case run::OptType::real: return "FLOAT";
    case run::OptType::int_list: return "INT,...";
    case run::OptType::real_list: return "FLOAT,...";
    default: return "TEXT";
  }
}
}  // namespace

void TableFlags::add_to(CLI::App* app, unsigned scope, const std::function<bool(const run::OptionDef&)>& keep) {
  for (const run::OptionDef& row : run::option_table()) {
    if (!(row.scopes & scope) || (keep && !keep(row))) continue;
    auto slot = std::make_unique<Slot>();
    slot->row = &row;
    std::string doc = row.doc;
    if (row.type != run::OptType::flag && !row.def.is_null() && !(row.def.is_string() && row.def.get<std::string>().empty()))
      doc += cat(" [default: ", row.def.is_string() ? row.def.get<std::string>() : row.def.dump(), "]");
    const std::string name = opt(row.key);
    if (row.type == run::OptType::flag)
      slot->option = app->add_flag(name, slot->flag, doc);
    else
      slot->option = app->add_option(name, slot->text, doc)->type_name(type_name(row.type));
    slot->option->group(group_title(row.group));
    slots_.push_back(std::move(slot));
  }
}

run::Options TableFlags::options() const {
  run::Options o;
  for (const auto& s : slots_) {
    if (s->option->count() == 0) continue;
    if (s->row->type == run::OptType::flag)
      o.set(s->row->key, s->flag);
    else
      o.set_text(s->row->key, s->text);
  }
  return o;
}

}  // namespace msae::cli
