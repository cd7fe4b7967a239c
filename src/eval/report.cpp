// Self-contained HTML + inline SVG report writer (see include/msae/report.h).
#include <algorithm>
#include <string>
#include <utility>
#include <cmath>
#include <cstdio>
#include <limits>

#include "msae/io.h"
#include "msae/report.h"

namespace msae::report {
namespace {

constexpr double kW = 600, kH = 320, kLeft = 64, kRight = 190, kTop = 30, kBottom = 46;

std::string num(double v, const char* f = "%.1f") {
  char buf[48];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string tick_label(double v) {
  char buf[48];
  const double a = std::fabs(v);
  if (a != 0 && (a >= 1e5 || a < 1e-3))
    std::snprintf(buf, sizeof buf, "%.0e", v);
  else
    std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

struct Axis {
  double lo = 0, hi = 1;
  bool log = false;
  double t(double v) const { return log ? std::log10(v) : v; }
  double frac(double v) const { return hi > lo ? (t(v) - lo) / (hi - lo) : 0.5; }
};

// Range of transformed values with a little padding; (0, 1) when empty.
Axis make_axis(const std::vector<double>& values, bool log, bool include_zero) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (double v : values) {
    if (!std::isfinite(v) || (log && v <= 0)) continue;
    const double t = log ? std::log10(v) : v;
    lo = std::min(lo, t);
    hi = std::max(hi, t);
  }
  Axis a;
  a.log = log;
  if (!std::isfinite(lo)) return a;
  if (include_zero && !log) {
    lo = std::min(lo, 0.0);
    hi = std::max(hi, 0.0);
  }
  if (hi - lo < 1e-12) {
    lo -= 0.5;
    hi += 0.5;
  }
  const double pad = 0.04 * (hi - lo);  // log axes too: no marker on the frame
  a.lo = (include_zero && !log && lo == 0.0) ? 0.0 : lo - pad;
  a.hi = hi + pad;
  return a;
}

std::vector<double> ticks(const Axis& a) {
  return a.log ? nice_ticks(std::pow(10.0, a.lo), std::pow(10.0, a.hi), true) : nice_ticks(a.lo, a.hi, false);
}

std::string svg_open(const std::string& title) {
  return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + num(kW, "%.0f") + "\" height=\"" + num(kH, "%.0f") +
         "\" viewBox=\"0 0 " + num(kW, "%.0f") + " " + num(kH, "%.0f") +
         "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
         "<text x=\"" + num(kW / 2) + "\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">" +
         html_escape(title) + "</text>\n";
}

double px(const Axis& a, double v) { return kLeft + a.frac(v) * (kW - kLeft - kRight); }
double py(const Axis& a, double v) { return kH - kBottom - a.frac(v) * (kH - kTop - kBottom); }

std::string axes(const Axis& ax, const Axis& ay, const std::string& xlabel, const std::string& ylabel, bool xticks) {
  std::string s;
  const double x0 = kLeft, x1 = kW - kRight, y0 = kH - kBottom, y1 = kTop;
  s += "<rect x=\"" + num(x0) + "\" y=\"" + num(y1) + "\" width=\"" + num(x1 - x0) + "\" height=\"" + num(y0 - y1) +
       "\" fill=\"none\" stroke=\"#444\"/>\n";
  double last = std::numeric_limits<double>::infinity();
  for (double v : ticks(ay)) {  // ascending: y decreases; a label closer than 13 px to the last one is left out
    const double y = py(ay, v);
    if (last - y < 13) continue;
    last = y;
    s += "<line x1=\"" + num(x0) + "\" x2=\"" + num(x1) + "\" y1=\"" + num(y) + "\" y2=\"" + num(y) +
         "\" stroke=\"#ddd\"/><text x=\"" + num(x0 - 4) + "\" y=\"" + num(y + 4) + "\" text-anchor=\"end\">" +
         tick_label(v) + "</text>\n";
  }
  last = -std::numeric_limits<double>::infinity();
  if (xticks)
    for (double v : ticks(ax)) {  // a label closer than 30 px to the last one is left out
      const double x = px(ax, v);
      if (x - last < 30) continue;
      last = x;
      s += "<line x1=\"" + num(x) + "\" x2=\"" + num(x) + "\" y1=\"" + num(y0) + "\" y2=\"" + num(y0 + 4) +
           "\" stroke=\"#444\"/><text x=\"" + num(x) + "\" y=\"" + num(y0 + 16) + "\" text-anchor=\"middle\">" +
           tick_label(v) + "</text>\n";
    }
  s += "<text x=\"" + num((x0 + x1) / 2) + "\" y=\"" + num(kH - 8) + "\" text-anchor=\"middle\">" + html_escape(xlabel) +
       "</text>\n";
  s += "<text transform=\"translate(14," + num((y0 + y1) / 2) + ") rotate(-90)\" text-anchor=\"middle\">" +
       html_escape(ylabel) + "</text>\n";
  return s;
}

struct LegendEntry {
  std::string name;
  size_t color = 0;
  bool dashed = false;  // a reference line: a dashed stroke instead of a box
};

std::string legend(const std::vector<LegendEntry>& entries) {
  std::string s;
  const size_t fit = static_cast<size_t>((kH - kTop - 8) / 16);  // rows that fit; the rest are counted
  for (size_t i = 0; i < entries.size(); ++i) {
    const double y = kTop + 8 + 16 * static_cast<double>(i);
    if (i + 1 == fit && entries.size() > fit) {
      s += "<text x=\"" + num(kW - kRight + 10) + "\" y=\"" + num(y + 1) + "\">+" +
           std::to_string(entries.size() - i) + " more</text>\n";
      break;
    }
    const LegendEntry& e = entries[i];
    if (e.dashed)
      s += "<line x1=\"" + num(kW - kRight + 8) + "\" x2=\"" + num(kW - kRight + 22) + "\" y1=\"" + num(y - 3) +
           "\" y2=\"" + num(y - 3) + "\" stroke=\"" + color(e.color) + "\" stroke-width=\"2\" stroke-dasharray=\"4 2\"/>";
    else
      s += "<rect x=\"" + num(kW - kRight + 10) + "\" y=\"" + num(y - 8) + "\" width=\"10\" height=\"10\" fill=\"" +
           color(e.color) + "\"/>";
    s += "<text x=\"" + num(kW - kRight + 24) + "\" y=\"" + num(y + 1) + "\">" + html_escape(e.name) + "</text>\n";
  }
  return s;
}

std::string legend(const std::vector<Series>& series) {
  std::vector<LegendEntry> entries;
  for (size_t i = 0; i < series.size(); ++i) entries.push_back({series[i].name, i, false});
  return legend(entries);
}

// Ticks k * step in [lo, hi] for the largest step of 1, 2 or 5 times a power of ten that gives at least
// min_count of them.
std::vector<double> linear_ticks(double lo, double hi, size_t min_count) {
  const double span = hi - lo;
  if (!(span > 0) || !std::isfinite(span)) return {lo};
  const double eps = 1e-9;
  double step = std::pow(10.0, std::ceil(std::log10(span)));
  static const double down[] = {0.5, 0.4, 0.5};  // 10 -> 5 -> 2 -> 1
  for (int i = 0; i < 60; ++i) {
    const double first = std::ceil(lo / step - eps), end = std::floor(hi / step + eps);
    if (end - first + 1 >= static_cast<double>(min_count)) break;
    step *= down[i % 3];
  }
  std::vector<double> out;
  for (double k = std::ceil(lo / step - eps); k <= std::floor(hi / step + eps); k += 1) {
    const double v = k * step;
    out.push_back(std::fabs(v) < 1e-12 * span ? 0.0 : v);
  }
  return out;
}

// The mean and the sample standard deviation (0 with fewer than 2 values) of the finite values.
std::pair<double, double> mean_std(const std::vector<double>& v) {
  double s = 0, n = 0;
  for (double x : v)
    if (std::isfinite(x)) s += x, n += 1;
  if (n == 0) return {NAN, 0.0};
  const double m = s / n;
  double q = 0;
  for (double x : v)
    if (std::isfinite(x)) q += (x - m) * (x - m);
  return {m, n > 1 ? std::sqrt(q / (n - 1)) : 0.0};
}

}  // namespace

const char* color(size_t i) {
  static const char* palette[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"};
  return palette[i % 8];
}

std::string html_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::vector<double> nice_ticks(double lo, double hi, bool log) {
  if (!log) return linear_ticks(lo, hi, 4);
  if (!(lo > 0) || !(hi >= lo) || !std::isfinite(hi)) return {};
  const double L = std::log10(lo), H = std::log10(hi), eps = 1e-9;
  std::vector<double> out;
  const double e0 = std::ceil(L - eps), e1 = std::floor(H + eps);
  if (e1 - e0 + 1 >= 4) {  // decades, every second (third, ...) one when there are more than 10
    const double stride = std::max(1.0, std::ceil((e1 - e0 + 1) / 10));
    for (double e = e0; e <= e1; e += stride) out.push_back(std::pow(10.0, e));
    return out;
  }
  for (double e = std::floor(L); e <= e1; e += 1)
    for (double m : {1.0, 2.0, 5.0}) {
      const double v = m * std::pow(10.0, e), t = std::log10(v);
      if (t >= L - eps && t <= H + eps) out.push_back(v);
    }
  if (out.size() >= 4) return out;
  return linear_ticks(lo, hi, 4);
}

std::vector<bool> pareto_frontier(const std::vector<double>& x, const std::vector<double>& y) {
  MSAE_ASSERT(x.size() == y.size(), "", x.size(), " x values and ", y.size(), " y values");
  const size_t n = x.size();
  auto ok = [&](size_t i) { return std::isfinite(x[i]) && std::isfinite(y[i]); };
  std::vector<bool> on(n, false);
  for (size_t i = 0; i < n; ++i) {
    if (!ok(i)) continue;
    bool dominated = false;
    for (size_t j = 0; j < n && !dominated; ++j)
      dominated = j != i && ok(j) && x[j] <= x[i] && y[j] <= y[i] && (x[j] < x[i] || y[j] < y[i]);
    on[i] = !dominated;
  }
  return on;
}

std::string line_svg(const LinePlot& p) { return line_svg(p, {}, {}); }

std::string line_svg(const LinePlot& p, const std::vector<SeriesStyle>& styles, const std::vector<RefLine>& refs) {
  MSAE_ASSERT(styles.empty() || styles.size() == p.series.size(), "", styles.size(), " styles for ", p.series.size(),
              " series");
  static const SeriesStyle plain;
  auto style = [&](size_t i) -> const SeriesStyle& { return styles.empty() ? plain : styles[i]; };
  auto ok = [&](double x, double y) {
    return std::isfinite(x) && std::isfinite(y) && !(p.log_x && x <= 0) && !(p.log_y && y <= 0);
  };
  auto err = [&](size_t i, size_t k) -> double {
    const SeriesStyle& st = style(i);
    if (st.err.empty()) return 0.0;
    MSAE_ASSERT(st.err.size() == p.series[i].y.size(), "series ", p.series[i].name, " has ", st.err.size(),
                " errors for ", p.series[i].y.size(), " values");
    const double e = st.err[k];
    return std::isfinite(e) && e > 0 ? e : 0.0;
  };
  std::vector<double> xs, ys;
  for (size_t i = 0; i < p.series.size(); ++i) {
    const Series& se = p.series[i];
    MSAE_ASSERT(se.x.size() == se.y.size(), "series ", se.name);
    xs.insert(xs.end(), se.x.begin(), se.x.end());
    ys.insert(ys.end(), se.y.begin(), se.y.end());
    for (size_t k = 0; k < se.y.size(); ++k)
      if (ok(se.x[k], se.y[k]) && err(i, k) > 0) {
        ys.push_back(se.y[k] + err(i, k));
        ys.push_back(se.y[k] - err(i, k));  // skipped on a log axis when <= 0
      }
  }
  for (const RefLine& r : refs) {
    ys.push_back(r.y);
    if (std::isfinite(r.band) && r.band > 0) {
      ys.push_back(r.y + r.band);
      ys.push_back(r.y - r.band);
    }
  }
  const Axis ax = make_axis(xs, p.log_x, false), ay = make_axis(ys, p.log_y, false);
  const double top = kTop, bottom = kH - kBottom;
  auto clamp_y = [&](double v) {  // a pixel row inside the plot (a whisker below 0 on a log axis ends at the frame)
    if (p.log_y && !(v > 0)) return bottom;
    return std::clamp(py(ay, v), top, bottom);
  };
  std::string s = svg_open(p.title) + axes(ax, ay, p.xlabel, p.ylabel, true);
  std::vector<LegendEntry> entries;
  for (size_t i = 0; i < p.series.size(); ++i) {
    const Series& se = p.series[i];
    const SeriesStyle& st = style(i);
    const size_t ci = st.color >= 0 ? static_cast<size_t>(st.color) : i;
    std::string pts, marks, whiskers;
    for (size_t k = 0; k < se.x.size(); ++k) {
      const double x = se.x[k], y = se.y[k];
      if (!ok(x, y)) continue;
      const double X = px(ax, x), Y = py(ay, y);
      pts += num(X) + "," + num(Y) + " ";
      if (const double e = err(i, k); e > 0) {
        const double ya = clamp_y(y - e), yb = clamp_y(y + e);
        whiskers += "<path class=\"errorbar\" d=\"M" + num(X) + " " + num(ya) + "V" + num(yb) + "M" + num(X - 3) + " " +
                    num(ya) + "H" + num(X + 3) + "M" + num(X - 3) + " " + num(yb) + "H" + num(X + 3) + "\" stroke=\"" +
                    color(ci) + "\" stroke-width=\"1.2\" fill=\"none\"/>\n";
      }
      if (p.markers && st.markers)
        marks += "<circle cx=\"" + num(X) + "\" cy=\"" + num(Y) + "\" r=\"" + num(st.radius) + "\" fill=\"" + color(ci) +
                 (st.opacity < 1 ? "\" fill-opacity=\"" + num(st.opacity, "%.2f") : std::string()) + "\"><title>" +
                 html_escape(se.name) + ": " + tick_label(x) + ", " + tick_label(y) + "</title></circle>";
    }
    if (st.line)
      s += "<polyline" + (st.cls.empty() ? std::string() : " class=\"" + html_escape(st.cls) + "\"") +
           " fill=\"none\" stroke=\"" + color(ci) + "\" stroke-width=\"" + num(st.width) + "\"" +
           (st.opacity < 1 ? " stroke-opacity=\"" + num(st.opacity, "%.2f") + "\"" : std::string()) + " points=\"" + pts +
           "\"/>\n";
    s += whiskers + marks + "\n";
    if (st.legend) entries.push_back({se.name, ci, false});
  }
  const double x0 = kLeft, x1 = kW - kRight;
  for (size_t j = 0; j < refs.size(); ++j) {
    const RefLine& r = refs[j];
    if (!std::isfinite(r.y) || (p.log_y && r.y <= 0)) continue;
    const size_t ci = r.color >= 0 ? static_cast<size_t>(r.color) : p.series.size() + j;
    if (std::isfinite(r.band) && r.band > 0) {
      const double ya = clamp_y(r.y + r.band), yb = clamp_y(r.y - r.band);
      s += "<rect class=\"refband\" x=\"" + num(x0) + "\" y=\"" + num(ya) + "\" width=\"" + num(x1 - x0) +
           "\" height=\"" + num(yb - ya) + "\" fill=\"" + color(ci) + "\" fill-opacity=\"0.15\"/>\n";
    }
    const double y = py(ay, r.y);
    s += "<line class=\"refline\" x1=\"" + num(x0) + "\" x2=\"" + num(x1) + "\" y1=\"" + num(y) + "\" y2=\"" + num(y) +
         "\" stroke=\"" + color(ci) + "\" stroke-width=\"1.8\" stroke-dasharray=\"6 4\"><title>" + html_escape(r.name) +
         "</title></line>\n";
    entries.push_back({r.name, ci, true});
  }
  return s + legend(entries) + "</svg>\n";
}

std::string prefix_fvu_svg(const std::string& title, const std::vector<PrefixCurve>& runs,
                           const std::vector<std::string>& archs) {
  LinePlot plot{title, "prefix width (latents)", "FVU", {}, true, true, true};
  std::vector<SeriesStyle> styles;
  std::vector<RefLine> refs;
  for (size_t a = 0; a < archs.size(); ++a) {
    std::vector<const PrefixCurve*> mine;
    for (const PrefixCurve& r : runs) {
      MSAE_ASSERT(r.latents.size() == r.fvu.size(), "run ", r.arch, " seed ", r.seed);
      if (r.arch == archs[a] && !r.fvu.empty()) mine.push_back(&r);
    }
    if (mine.empty()) continue;
    const int ci = static_cast<int>(a);
    if (std::all_of(mine.begin(), mine.end(), [](const PrefixCurve* r) { return r->fvu.size() == 1; })) {
      std::vector<double> v;
      for (const PrefixCurve* r : mine) v.push_back(r->fvu.back());
      const auto [m, sd] = mean_std(v);
      // short enough for the legend: 3 significant digits
      const std::string name = v.size() > 1 ? archs[a] + " " + num(m, "%.3g") + " ± " + num(sd, "%.2g")
                                            : archs[a] + " " + num(m, "%.3g");
      refs.push_back({name, m, v.size() > 1 ? sd : 0.0, ci});
      continue;
    }
    const bool several = mine.size() > 1;
    for (const PrefixCurve* r : mine) {
      plot.series.push_back({archs[a] + " seed " + r->seed, r->latents, r->fvu});
      SeriesStyle st;
      st.color = ci;
      if (several) {
        st.width = 1.0;
        st.opacity = 0.45;
        st.radius = 2.0;
        st.legend = false;
      }
      styles.push_back(st);
    }
    if (!several) continue;
    std::vector<double> widths;  // every prefix width of the arch's runs, ascending
    for (const PrefixCurve* r : mine) widths.insert(widths.end(), r->latents.begin(), r->latents.end());
    std::sort(widths.begin(), widths.end());
    widths.erase(std::unique(widths.begin(), widths.end()), widths.end());
    Series mean{archs[a] + " mean ± std", {}, {}};
    SeriesStyle st;
    st.color = ci;
    st.width = 2.2;
    st.radius = 3.0;
    for (double w : widths) {
      std::vector<double> v;
      for (const PrefixCurve* r : mine)
        for (size_t k = 0; k < r->latents.size(); ++k)
          if (r->latents[k] == w) v.push_back(r->fvu[k]);
      const auto [m, sd] = mean_std(v);
      mean.x.push_back(w);
      mean.y.push_back(m);
      st.err.push_back(v.size() > 1 ? sd : 0.0);
    }
    plot.series.push_back(mean);
    styles.push_back(st);
  }
  return line_svg(plot, styles, refs);
}

std::string frontier_svg(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                         const std::vector<Series>& groups) {
  std::vector<double> xs, ys;
  for (const Series& g : groups) {
    MSAE_ASSERT(g.x.size() == g.y.size(), "series ", g.name);
    xs.insert(xs.end(), g.x.begin(), g.x.end());
    ys.insert(ys.end(), g.y.begin(), g.y.end());
  }
  auto wide = [](const std::vector<double>& v) {  // positive throughout, and spanning more than a factor of 10
    double lo = std::numeric_limits<double>::infinity(), hi = 0;
    for (double x : v) {
      if (!std::isfinite(x)) continue;
      if (x <= 0) return false;
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
    return hi > 10 * lo;
  };
  LinePlot plot{title, xlabel, ylabel, groups, wide(xs), wide(ys), true};
  std::vector<SeriesStyle> styles(groups.size());
  for (auto& st : styles) {
    st.line = false;
    st.radius = 3.0;
  }
  const std::vector<bool> on = pareto_frontier(xs, ys);
  std::vector<std::pair<double, double>> f;
  for (size_t i = 0; i < on.size(); ++i)
    if (on[i]) f.push_back({xs[i], ys[i]});
  std::sort(f.begin(), f.end());
  Series line{"Pareto frontier", {}, {}};
  for (const auto& [x, y] : f) {
    line.x.push_back(x);
    line.y.push_back(y);
  }
  plot.series.push_back(line);
  SeriesStyle st;
  st.color = 7;  // black
  st.markers = false;
  st.width = 1.5;
  st.cls = "frontier";
  styles.push_back(st);
  return line_svg(plot, styles);
}

std::string bar_svg(const BarChart& c) { return bar_svg(c, {}); }

std::string bar_svg(const BarChart& c, const std::vector<std::vector<double>>& errors) {
  MSAE_ASSERT(errors.empty() || errors.size() == c.series.size(), "", errors.size(), " error lists for ",
              c.series.size(), " series");
  auto err = [&](size_t i, size_t k) -> double {
    if (errors.empty() || errors[i].empty()) return 0.0;
    const double e = errors[i][k];
    return std::isfinite(e) && e > 0 ? e : 0.0;
  };
  std::vector<double> ys;
  for (size_t i = 0; i < c.series.size(); ++i) {
    const Series& s = c.series[i];
    MSAE_ASSERT(s.y.size() == c.categories.size(), "series ", s.name, " has ", s.y.size(), " values for ",
                c.categories.size(), " categories");
    MSAE_ASSERT(errors.empty() || errors[i].empty() || errors[i].size() == s.y.size(), "series ", s.name, " has ",
                errors.empty() ? 0 : errors[i].size(), " errors for ", s.y.size(), " values");
    ys.insert(ys.end(), s.y.begin(), s.y.end());
    for (size_t k = 0; k < s.y.size(); ++k)
      if (err(i, k) > 0 && std::isfinite(s.y[k])) {
        ys.push_back(s.y[k] + err(i, k));
        ys.push_back(s.y[k] - err(i, k));
      }
  }
  const Axis ay = make_axis(ys, false, true);
  Axis ax;
  std::string s = svg_open(c.title) + axes(ax, ay, "", c.ylabel, false);
  const double x0 = kLeft, x1 = kW - kRight;
  const size_t nc = std::max<size_t>(1, c.categories.size()), ns = std::max<size_t>(1, c.series.size());
  const double slot = (x1 - x0) / static_cast<double>(nc), bar = 0.8 * slot / static_cast<double>(ns);
  for (size_t k = 0; k < c.categories.size(); ++k) {
    const double cx = x0 + slot * (static_cast<double>(k) + 0.5);
    s += "<text x=\"" + num(cx) + "\" y=\"" + num(kH - kBottom + 16) + "\" text-anchor=\"middle\">" +
         html_escape(c.categories[k]) + "</text>\n";
    for (size_t i = 0; i < c.series.size(); ++i) {
      const double v = c.series[i].y[k];
      if (!std::isfinite(v)) continue;
      const double y = py(ay, v), yz = py(ay, 0.0);
      const double bx = x0 + slot * static_cast<double>(k) + 0.1 * slot + bar * static_cast<double>(i);
      s += "<rect x=\"" + num(bx) + "\" y=\"" + num(std::min(y, yz)) + "\" width=\"" + num(bar) + "\" height=\"" +
           num(std::fabs(yz - y)) + "\" fill=\"" + color(i) + "\"><title>" + html_escape(c.series[i].name) + " " +
           html_escape(c.categories[k]) + ": " + tick_label(v) +
           (err(i, k) > 0 ? " ± " + tick_label(err(i, k)) : std::string()) + "</title></rect>\n";
      const double e = err(i, k);
      if (e > 0) {  // whisker: a vertical line from v - e to v + e with caps
        const double mx = bx + bar / 2, ya = py(ay, v - e), yb = py(ay, v + e), cap = std::min(4.0, bar / 3);
        s += "<path class=\"errorbar\" d=\"M" + num(mx) + " " + num(ya) + "V" + num(yb) + "M" + num(mx - cap) + " " +
             num(ya) + "H" + num(mx + cap) + "M" + num(mx - cap) + " " + num(yb) + "H" + num(mx + cap) +
             "\" stroke=\"#222\" stroke-width=\"1.2\" fill=\"none\"/>\n";
      }
    }
  }
  return s + legend(c.series) + "</svg>\n";
}

std::string histogram_svg(const Histogram& h) {
  MSAE_ASSERT(h.bins >= 1);
  std::vector<double> all;
  for (const auto& s : h.series) all.insert(all.end(), s.y.begin(), s.y.end());
  Axis ax;
  ax.log = h.log_x;
  if (h.hi > h.lo) {
    ax.lo = h.log_x ? std::log10(h.lo) : h.lo;
    ax.hi = h.log_x ? std::log10(h.hi) : h.hi;
  } else {
    Axis a = make_axis(all, h.log_x, false);
    ax.lo = a.lo;
    ax.hi = a.hi;
  }
  const double width = (ax.hi - ax.lo) / h.bins;
  std::vector<Series> shares;
  std::vector<double> ys;
  for (const auto& s : h.series) {
    Series out;
    out.name = s.name;
    out.y.assign(h.bins, 0.0);
    int64_t n = 0;
    for (double v : s.y) {
      if (!std::isfinite(v) || (h.log_x && v <= 0)) continue;
      const double t = h.log_x ? std::log10(v) : v;
      int b = width > 0 ? static_cast<int>(std::floor((t - ax.lo) / width)) : 0;
      b = std::clamp(b, 0, h.bins - 1);
      out.y[b] += 1;
      ++n;
    }
    for (auto& v : out.y) v = n > 0 ? v / static_cast<double>(n) : 0.0;
    ys.insert(ys.end(), out.y.begin(), out.y.end());
    shares.push_back(std::move(out));
  }
  const Axis ay = make_axis(ys, false, true);
  std::string s = svg_open(h.title) + axes(ax, ay, h.xlabel, "share of samples", true);
  const double ns = static_cast<double>(std::max<size_t>(1, shares.size()));
  for (size_t i = 0; i < shares.size(); ++i)
    for (int b = 0; b < h.bins; ++b) {
      const double l = ax.lo + width * b;
      const double xa = kLeft + (l - ax.lo) / (ax.hi - ax.lo) * (kW - kLeft - kRight);
      const double bw = width / (ax.hi - ax.lo) * (kW - kLeft - kRight);
      const double y = py(ay, shares[i].y[b]), yz = py(ay, 0.0);
      s += "<rect x=\"" + num(xa + bw * static_cast<double>(i) / ns) + "\" y=\"" + num(y) + "\" width=\"" +
           num(bw / ns) + "\" height=\"" + num(yz - y) + "\" fill=\"" + color(i) + "\" fill-opacity=\"0.85\"/>\n";
    }
  return s + legend(shares) + "</svg>\n";
}

std::string table_html(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::string s = "<table>\n<tr>";
  for (const auto& h : header) s += "<th>" + html_escape(h) + "</th>";
  s += "</tr>\n";
  for (const auto& r : rows) {
    s += "<tr>";
    for (const auto& c : r) s += "<td>" + html_escape(c) + "</td>";
    s += "</tr>\n";
  }
  return s + "</table>\n";
}

void Page::heading(const std::string& text, int level) {
  level = std::clamp(level, 1, 4);
  body_ += "<h" + std::to_string(level) + ">" + html_escape(text) + "</h" + std::to_string(level) + ">\n";
}
void Page::paragraph(const std::string& text) { body_ += "<p>" + html_escape(text) + "</p>\n"; }
void Page::raw(const std::string& html) { body_ += html; }

std::string Page::html() const {
  return "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" + html_escape(title_) +
         "</title>\n<style>\nbody{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}\n"
         "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}\n"
         "th{background:#eee}svg{margin:4px;border:1px solid #eee}\n</style>\n</head>\n<body>\n<h1>" +
         html_escape(title_) + "</h1>\n" + body_ + "</body>\n</html>\n";
}

void Page::write(const std::string& path) const { io::write_text_file_atomic(path, html()); }

}  // namespace msae::report
