// Numbers as text (core.h): the shortest round-trip decimal for files, fixed digits for people.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "msae/core.h"

namespace msae {

namespace {
// The shortest digits that round-trip (to_chars), written in plain decimal for exponents in [-5, 16]
// ("0.0003", not to_chars' shorter "3e-04"), in scientific notation outside ("1e-08", "1.5e+20").
template <typename T>
std::string shortest_text(T v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  const std::string sci(buf, res.ptr);  // "-1.2345e-04"
  const size_t e = sci.find('e');
  const int exp10 = std::atoi(sci.c_str() + e + 1);
  if (exp10 < -5 || exp10 > 16) return sci;
  const bool neg = sci[0] == '-';
  std::string digits;
  for (size_t i = neg ? 1 : 0; i < e; ++i)
    if (sci[i] != '.') digits += sci[i];
  std::string out;
  if (exp10 < 0) {
    out = "0." + std::string(static_cast<size_t>(-exp10 - 1), '0') + digits;
  } else if (static_cast<size_t>(exp10) + 1 >= digits.size()) {
    out = digits + std::string(static_cast<size_t>(exp10) + 1 - digits.size(), '0');
  } else {
    out = digits.substr(0, static_cast<size_t>(exp10) + 1) + "." + digits.substr(static_cast<size_t>(exp10) + 1);
  }
  return neg ? "-" + out : out;
}
}  // namespace

std::string shortest(float v) { return shortest_text(v); }
std::string shortest(double v) { return shortest_text(v); }

double json_number(float v) {
  if (!std::isfinite(v)) return static_cast<double>(v);
  return std::strtod(shortest(v).c_str(), nullptr);
}

std::vector<double> json_numbers(const std::vector<float>& v) {
  std::vector<double> out;
  out.reserve(v.size());
  for (float f : v) out.push_back(json_number(f));
  return out;
}

std::string sig_digits(double v, int digits) {
  if (!std::isfinite(v)) return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
  digits = std::clamp(digits, 1, 17);
  char buf[512];  // %f of the largest double with 17 digits fits
  if (v == 0) {
    std::snprintf(buf, sizeof buf, "%.*f", digits - 1, 0.0);
    return buf;
  }
  // The exponent after rounding to `digits` significant digits (9.9996 at 4 digits is 10.00).
  std::snprintf(buf, sizeof buf, "%.*e", digits - 1, v);
  const int exp10 = std::atoi(std::strchr(buf, 'e') + 1);
  if (exp10 < -4 || exp10 >= 6) return buf;
  std::snprintf(buf, sizeof buf, "%.*f", std::max(0, digits - 1 - exp10), v);
  return buf;
}

std::string fixed(double v, int decimals) {
  if (!std::isfinite(v)) return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
  char buf[512];
  std::snprintf(buf, sizeof buf, "%.*f", std::clamp(decimals, 0, 17), v);
  return buf;
}

}  // namespace msae
