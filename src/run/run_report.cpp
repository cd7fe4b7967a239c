// report.html of a training run (msae/run.h): the curves of metrics.jsonl and the final evaluation, as one
// self-contained page (inline SVG, no scripts) written beside the SAE.
#include <cmath>
#include <cstdio>
#include <sstream>

#include "msae/io.h"
#include "msae/report.h"
#include "msae/run.h"

namespace msae::run {
namespace {

using nlohmann::json;

std::string num(double v, const char* f = "%.4g") {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// The metrics.jsonl lines (a torn last line of a killed run is skipped).
std::vector<json> read_metrics(const std::string& path) {
  std::vector<json> lines;
  if (!io::path_exists(path)) return lines;
  std::istringstream in(io::read_text_file(path));
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    try {
      json j = json::parse(line);
      if (j.is_object() && j.contains("step")) lines.push_back(std::move(j));
    } catch (const json::exception&) {
    }
  }
  return lines;
}

double field(const json& line, const char* key) {
  return line.contains(key) && line[key].is_number() ? line[key].get<double>() : NAN;
}

report::LinePlot curve(const std::vector<json>& lines, const std::string& title, const std::string& ylabel,
                       const std::vector<std::pair<std::string, std::function<double(const json&)>>>& series,
                       bool log_y = false) {
  report::LinePlot p;
  p.title = title;
  p.xlabel = "step";
  p.ylabel = ylabel;
  p.log_y = log_y;
  p.markers = lines.size() <= 40;
  for (const auto& [name, get] : series) {
    report::Series s;
    s.name = name;
    for (const json& l : lines) {
      s.x.push_back(field(l, "step"));
      s.y.push_back(get(l));
    }
    p.series.push_back(std::move(s));
  }
  return p;
}

}  // namespace

void write_run_report(const std::string& dir, const Result& r) {
  const std::vector<json> lines = read_metrics(dir + "/metrics.jsonl");
  const SaeConfig& cfg = r.cfg;
  report::Page page(cat("msae train: ", arch_name(cfg.arch), " SAE, d=", cfg.d_in, ", D=", cfg.d_sae, ", k=", cfg.k, " (",
                         dir, ")"));
  const json& t = r.msae_json.contains("training") ? r.msae_json["training"] : json::object();
  page.paragraph(cat(r.completed ? "Trained " : "INTERRUPTED after ", r.steps, " steps of ", r.batch, " rows (",
                     r.steps * r.batch, " tokens) on ", t.value("data", std::string("?")), " in ", num(r.seconds, "%.1f"),
                     " s. Groups ", json(cfg.group_sizes).dump(), ", recipe ", cfg.recipe, ", engine ",
                     t.value("engine", std::string("?")), ". The numbers behind every plot are in metrics.jsonl (means over each "
                     "logging interval of the training batches) and msae.json."));
  if (r.evaluated) {
    const json& q = r.final_metrics.at("quality");
    if (!q.at("usable").get<bool>()) {
      std::string items;
      for (const json& p : q.at("problems")) items += "<li>" + report::html_escape(p.get<std::string>()) + "</li>";
      page.raw("<div style=\"border:2px solid #c00;padding:0.5em 1em;margin:1em 0\"><b>This SAE is not usable as it "
               "is:</b><ul>" + items + "</ul></div>");
    }
    page.heading("Final evaluation");
    page.paragraph(cat("On ", r.eval_rows, " ", r.eval_on, ", with inference encoding (JumpReLU at the learned threshold ",
                       num(r.eval.threshold), ")."));
    std::vector<std::vector<std::string>> rows;
    for (size_t g = 0; g < r.eval.prefixes.size(); ++g) {
      const eval::PrefixMetrics& m = r.eval.prefixes[g];
      rows.push_back({std::to_string(g + 1), std::to_string(m.latents), num(m.mse), num(m.fvu, "%.4f"), num(m.l0, "%.2f"),
                      g < r.eval.group_l0_share.size() ? num(100 * r.eval.group_l0_share[g], "%.1f%%") : ""});
    }
    page.raw(report::table_html({"prefix", "latents", "MSE", "FVU", "L0", "share of L0 in group"}, rows));
    page.paragraph(cat("Dead latents (never fired on these rows): ", num(100 * r.eval.dead_fraction, "%.1f"),
                       "%. Dense latents (firing on more than 10% of rows): ", num(100 * r.eval.dense_fraction, "%.1f"), "%."));
    report::Histogram h;
    h.title = "Latent firing frequency (latents that fired at least once)";
    h.xlabel = "share of the evaluation rows on which the latent fired (log scale)";
    h.log_x = true;
    h.bins = 30;
    report::Series s;
    s.name = "latents";
    s.y = r.eval.latent_frequency;
    h.series.push_back(std::move(s));
    page.raw(report::histogram_svg(h));
  } else {
    page.paragraph(r.completed ? "No final evaluation (a stream cannot be read twice)."
                               : "No final evaluation: the run was interrupted (msae eval gives the figures on demand).");
  }
  page.heading("Training curves");
  if (lines.empty()) {
    page.paragraph("metrics.jsonl has no lines.");
  } else {
    page.raw(report::line_svg(curve(lines, "Loss", "loss", {{"loss", [](const json& l) { return field(l, "loss"); }},
                                                            {"AuxK loss", [](const json& l) { return field(l, "l_aux"); }}},
                                    true)));
    std::vector<std::pair<std::string, std::function<double(const json&)>>> fvus;
    const size_t G = lines.back().contains("fvu_prefix") ? lines.back()["fvu_prefix"].size() : 0;
    for (size_t g = 0; g < G; ++g)
      fvus.push_back({cat("prefix ", g + 1, " (", cfg.boundaries().size() == G ? cfg.boundaries()[g] : 0, " latents)"),
                      [g](const json& l) {
                        return l.contains("fvu_prefix") && l["fvu_prefix"].size() > g ? l["fvu_prefix"][g].get<double>() : NAN;
                      }});
    if (G == 0) fvus.push_back({"whole SAE", [](const json& l) { return field(l, "fvu"); }});
    page.raw(report::line_svg(curve(lines, "FVU of every prefix (training batches)", "FVU", fvus, true)));
    page.raw(report::line_svg(curve(lines, "L0 (kept latents per row, training)", "L0",
                                    {{"L0", [](const json& l) { return field(l, "l0"); }}})));
    page.raw(report::line_svg(curve(lines, "Dead latents", "% of latents",
                                    {{"dead", [](const json& l) { return 100 * field(l, "dead_fraction"); }}})));
    page.raw(report::line_svg(curve(lines, "Inference threshold (EMA of the BatchTopK cut)", "threshold",
                                    {{"threshold", [](const json& l) { return field(l, "threshold"); }}})));
  }
  page.write(dir + "/report.html");
}

}  // namespace msae::run
