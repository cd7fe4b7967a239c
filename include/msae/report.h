// msae eval: a small writer for self-contained HTML reports with inline SVG plots (no scripts, no
// external files). Generic: series in, SVG/HTML out. Used by `msae synth-bench` and `msae sweep`.
#pragma once

#include <string>
#include <vector>

namespace msae::report {

struct Series {
  std::string name;
  std::vector<double> x, y;  // same length; non-finite points are skipped
};

struct LinePlot {
  std::string title, xlabel, ylabel;
  std::vector<Series> series;
  bool log_x = false, log_y = false;  // log axes skip points <= 0
  bool markers = true;
};
std::string line_svg(const LinePlot& plot);

// Grouped bars: categories along x, one bar per series in each category (series[i].y[c]).
struct BarChart {
  std::string title, ylabel;
  std::vector<std::string> categories;
  std::vector<Series> series;  // x unused; y has one value per category
};
std::string bar_svg(const BarChart& chart);
// The same with error bars: errors[i][c] is the half-length (e.g. one standard deviation) of the whisker
// drawn on the bar of series i in category c; errors is empty or has one entry per series, each empty
// (no whiskers for that series) or one value per category; non-finite or <= 0 values draw none. The y
// axis covers every bar's value +- its error.
std::string bar_svg(const BarChart& chart, const std::vector<std::vector<double>>& errors);

// Overlaid histograms of raw values (each Series' y holds the samples) on shared bins over [lo, hi]
// (lo == hi: the range of the data). Bars show the share of each series' samples in the bin.
struct Histogram {
  std::string title, xlabel;
  std::vector<Series> series;
  int bins = 20;
  double lo = 0, hi = 0;
  bool log_x = false;  // bins in log10 space; samples <= 0 are dropped
};
std::string histogram_svg(const Histogram& hist);

std::string html_escape(const std::string& s);
// An HTML table; cells are escaped.
std::string table_html(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows);

// A page assembled from sections, written as one self-contained HTML file.
class Page {
 public:
  explicit Page(std::string title) : title_(std::move(title)) {}
  void heading(const std::string& text, int level = 2);
  void paragraph(const std::string& text);  // escaped
  void raw(const std::string& html);        // an SVG or table from the functions above
  std::string html() const;
  void write(const std::string& path) const;  // atomic (tmp + rename); throws msae::Error (runtime)

 private:
  std::string title_, body_;
};

// The colour of series i (a fixed colour-blind-safe palette, cycling).
const char* color(size_t i);

}  // namespace msae::report
