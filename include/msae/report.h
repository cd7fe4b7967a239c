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

// How series i of a LinePlot is drawn (line_svg's second form). err: empty, or one half-length per point of
// a vertical whisker y +- err (class "errorbar"; non-finite or <= 0 draws none); the y axis covers the
// whiskers. color: a palette index (color()), -1 for the series' own position. line / markers: the polyline
// and the circles (each circle has a <title> "NAME: x, y"); width and opacity of both; legend: whether the
// series has a legend entry (series of one colour drawn as a group can share one).
struct SeriesStyle {
  std::vector<double> err;
  int color = -1;
  bool line = true, markers = true, legend = true;
  double width = 1.8, radius = 2.5, opacity = 1.0;
  std::string cls;  // a class attribute on the polyline (e.g. "frontier"); empty: none
};
// A horizontal reference line across the plot at y (class "refline", dashed, in the legend under name),
// e.g. a model without prefixes on a per-prefix plot; band > 0 also shades y +- band (class "refband").
// Its y (and band) are inside the y axis.
struct RefLine {
  std::string name;
  double y = 0, band = 0;
  int color = -1;  // palette index; -1: after the series
};
// styles: empty or one per series; refs: drawn over the series. Markers of plot.markers == false are off
// for every series whatever its style says.
std::string line_svg(const LinePlot& plot, const std::vector<SeriesStyle>& styles, const std::vector<RefLine>& refs = {});

// The tick values line_svg and the charts label on an axis over [lo, hi] (data units, lo <= hi): "nice"
// values (1, 2 or 5 times a power of ten, at least 4 of them on a linear axis; on a log axis decades, then
// 1-2-5 in each decade, then a linear step when the range is too short for 4 of those).
std::vector<double> nice_ticks(double lo, double hi, bool log);

// The L0-vs-FVU (or any two lower-is-better measures) Pareto frontier: result[i] is true when point i is
// not dominated, i.e. no other point is at least as good on both (x[j] <= x[i], y[j] <= y[i]) and strictly
// better on one. Equal points do not dominate each other (both are on the frontier); a point with the same
// x as another and a larger y is dominated. Points with a non-finite coordinate are never on the frontier
// and dominate nothing. x and y have the same length.
std::vector<bool> pareto_frontier(const std::vector<double>& x, const std::vector<double>& y);

// One run's FVU per Matryoshka prefix (prefix widths in latents), for prefix_fvu_svg.
struct PrefixCurve {
  std::string arch;
  std::string seed;  // a label
  std::vector<double> latents, fvu;
};
// synth-bench's FVU-per-prefix plot on log axes: every run of an arch with several prefixes is a thin line
// with markers (one per prefix, titled "ARCH seed S"), in the arch's colour (the arch's position in archs);
// with two or more runs of the arch, their mean per prefix width with +- 1 sample std whiskers over the
// seeds is drawn over them ("ARCH mean ± std"). An arch whose runs have a single prefix (BatchTopK, TopK,
// ReLU) is a reference line at its mean FVU (shaded +- std with several seeds), named "ARCH MEAN" or, with
// several seeds, "ARCH MEAN ± STD" (3 and 2 significant digits).
std::string prefix_fvu_svg(const std::string& title, const std::vector<PrefixCurve>& runs,
                           const std::vector<std::string>& archs);

// sweep's L0-vs-FVU plot: each group (e.g. a configuration's runs, one per seed) a colour of points without
// lines (titled "NAME: x, y"), and the Pareto frontier over all their points (pareto_frontier) a black line
// (class "frontier") through the frontier points in order of x. An axis is logarithmic where its positive
// values span more than a factor of 10.
std::string frontier_svg(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                         const std::vector<Series>& groups);

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
