#include <cstdio>

#include "msae/core.h"

namespace msae {

void assert_fail(const char* expr, const char* file, int line, const std::string& msg) {
  std::fprintf(stderr, "msae: internal error (a bug in msae): %s:%d: assertion `%s` failed%s%s\n", file, line,
               expr, msg.empty() ? "" : ": ", msg.c_str());
  std::fflush(stderr);
  std::abort();
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  if (shape.size() == 1) out += ",";
  return out + ")";
}

Tensor::Tensor(std::vector<int64_t> s, float fill) : shape(std::move(s)) {
  data.assign(static_cast<size_t>(msae::numel(shape)), fill);
}

namespace {
OptionSpelling g_spelling = OptionSpelling::cli;
}
void set_option_spelling(OptionSpelling s) { g_spelling = s; }
OptionSpelling option_spelling() { return g_spelling; }
std::string opt(const std::string& key) {
  if (g_spelling == OptionSpelling::python) return key;
  std::string flag = "--" + key;
  std::replace(flag.begin(), flag.end(), '_', '-');
  return flag;
}

const char* version_string() { return MSAE_VERSION; }
// git_commit(): build/generated/git_commit.cpp (cmake/git_commit.cmake).

}  // namespace msae
