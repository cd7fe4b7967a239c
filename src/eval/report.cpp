// Self-contained HTML + inline SVG report writer (see include/msae/report.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "msae/io.h"
#include "msae/report.h"

namespace msae::report {
namespace {

constexpr double kW = 560, kH = 320, kLeft = 64, kRight = 150, kTop = 30, kBottom = 46;

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
  const double pad = log ? 0.0 : 0.04 * (hi - lo);
  a.lo = (include_zero && lo == 0.0) ? 0.0 : lo - pad;
  a.hi = hi + pad;
  return a;
}

std::vector<double> ticks(const Axis& a) {
  std::vector<double> out;
  if (a.log) {
    // Decades, plus 2x and 5x when the range spans fewer than three decades.
    const bool fine = a.hi - a.lo < 3.0;
    for (double e = std::floor(a.lo); e <= a.hi + 1e-9; e += 1)
      for (double m : {1.0, 2.0, 5.0}) {
        if (m != 1.0 && !fine) continue;
        const double v = m * std::pow(10.0, e), t = std::log10(v);
        if (t >= a.lo - 1e-9 && t <= a.hi + 1e-9) out.push_back(v);
      }
    if (out.size() < 2) out = {std::pow(10.0, a.lo), std::pow(10.0, a.hi)};
    return out;
  }
  const double span = a.hi - a.lo;
  const double raw = span / 5;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  for (double v = std::ceil(a.lo / step) * step; v <= a.hi + 1e-9 * span; v += step) out.push_back(std::fabs(v) < 1e-12 * span ? 0.0 : v);
  return out;
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
  for (double v : ticks(ay)) {
    const double y = py(ay, v);
    s += "<line x1=\"" + num(x0) + "\" x2=\"" + num(x1) + "\" y1=\"" + num(y) + "\" y2=\"" + num(y) +
         "\" stroke=\"#ddd\"/><text x=\"" + num(x0 - 4) + "\" y=\"" + num(y + 4) + "\" text-anchor=\"end\">" +
         tick_label(v) + "</text>\n";
  }
  if (xticks)
    for (double v : ticks(ax)) {
      const double x = px(ax, v);
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

std::string legend(const std::vector<Series>& series) {
  std::string s;
  for (size_t i = 0; i < series.size(); ++i) {
    const double y = kTop + 8 + 16 * static_cast<double>(i);
    s += "<rect x=\"" + num(kW - kRight + 10) + "\" y=\"" + num(y - 8) + "\" width=\"10\" height=\"10\" fill=\"" +
         color(i) + "\"/><text x=\"" + num(kW - kRight + 24) + "\" y=\"" + num(y + 1) + "\">" +
         html_escape(series[i].name) + "</text>\n";
  }
  return s;
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

std::string line_svg(const LinePlot& p) {
  std::vector<double> xs, ys;
  for (const auto& s : p.series) {
    MSAE_ASSERT(s.x.size() == s.y.size(), "series ", s.name);
    xs.insert(xs.end(), s.x.begin(), s.x.end());
    ys.insert(ys.end(), s.y.begin(), s.y.end());
  }
  const Axis ax = make_axis(xs, p.log_x, false), ay = make_axis(ys, p.log_y, false);
  std::string s = svg_open(p.title) + axes(ax, ay, p.xlabel, p.ylabel, true);
  for (size_t i = 0; i < p.series.size(); ++i) {
    const Series& se = p.series[i];
    std::string pts;
    std::string marks;
    for (size_t k = 0; k < se.x.size(); ++k) {
      const double x = se.x[k], y = se.y[k];
      if (!std::isfinite(x) || !std::isfinite(y) || (p.log_x && x <= 0) || (p.log_y && y <= 0)) continue;
      pts += num(px(ax, x)) + "," + num(py(ay, y)) + " ";
      if (p.markers)
        marks += "<circle cx=\"" + num(px(ax, x)) + "\" cy=\"" + num(py(ay, y)) + "\" r=\"2.5\" fill=\"" + color(i) + "\"/>";
    }
    s += "<polyline fill=\"none\" stroke=\"" + std::string(color(i)) + "\" stroke-width=\"1.8\" points=\"" + pts + "\"/>\n" +
         marks + "\n";
  }
  return s + legend(p.series) + "</svg>\n";
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
