// Checked number reads from JSON files (see include/msae/io.h): the type and range are tested before
// any conversion, so no input can reach a truncating or undefined float -> integer conversion.
#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "msae/io.h"

namespace msae::io {

using nlohmann::json;

int64_t json_int(const json& v, const std::string& what, int64_t lo, int64_t hi) {
  bool ok = false;
  int64_t x = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    ok = u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    if (ok) x = static_cast<int64_t>(u);
  } else if (v.is_number_integer()) {
    ok = true;
    x = v.get<int64_t>();
  }
  if (!ok || x < lo || x > hi) {
    constexpr int64_t kMin = std::numeric_limits<int64_t>::min(), kMax = std::numeric_limits<int64_t>::max();
    const std::string range = lo == kMin && hi == kMax ? std::string()
                              : hi == kMax             ? cat(" >= ", lo)
                              : lo == kMin             ? cat(" <= ", hi)
                                                       : cat(" in [", lo, ", ", hi, "]");
    runtime_error(what, " must be an integer", range, ", found ", json_excerpt(v));
  }
  return x;
}

uint64_t json_uint64(const json& v, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  runtime_error(what, " must be an unsigned 64-bit integer, found ", json_excerpt(v));
}

std::vector<int64_t> json_int_vector(const json& v, const std::string& what, int64_t lo, int64_t hi) {
  if (!v.is_array()) runtime_error(what, " must be an array of integers, found ", json_excerpt(v));
  std::vector<int64_t> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) out.push_back(json_int(v[i], cat(what, "[", i, "]"), lo, hi));
  return out;
}

std::vector<uint64_t> json_uint64_vector(const json& v, const std::string& what) {
  if (!v.is_array()) runtime_error(what, " must be an array of unsigned integers, found ", json_excerpt(v));
  std::vector<uint64_t> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) out.push_back(json_uint64(v[i], cat(what, "[", i, "]")));
  return out;
}

double json_double(const json& v, const std::string& what) {
  if (!v.is_number() || !std::isfinite(v.get<double>()))
    runtime_error(what, " must be a finite number, found ", json_excerpt(v));
  return v.get<double>();
}

std::vector<double> json_double_vector(const json& v, const std::string& what) {
  if (!v.is_array()) runtime_error(what, " must be an array of numbers, found ", json_excerpt(v));
  std::vector<double> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) out.push_back(json_double(v[i], cat(what, "[", i, "]")));
  return out;
}

float json_float(const json& v, const std::string& what) {
  const double x = v.is_number() ? v.get<double>() : std::nan("");
  if (!std::isfinite(x) || std::fabs(x) > static_cast<double>(std::numeric_limits<float>::max()))
    runtime_error(what, " must be a finite number within float range, found ", json_excerpt(v));
  return static_cast<float>(x);
}

}  // namespace msae::io
