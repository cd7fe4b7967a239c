#include <atomic>
#include <cstdio>
#include <mutex>

#include "msae/core.h"

namespace msae {
namespace {
std::atomic<int> g_level{1};
std::mutex g_mutex;

void emit(const char* tag, const std::string& message) {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(stderr, "[msae%s] %s\n", tag, message.c_str());
  std::fflush(stderr);
}
}  // namespace

void set_log_level(int level) { g_level = level; }
int log_level() { return g_level; }
void log_info(const std::string& message) {
  if (g_level >= 1) emit("", message);
}
void log_debug(const std::string& message) {
  if (g_level >= 2) emit(" debug", message);
}
void log_warn(const std::string& message) {
  if (g_level >= 0) emit(" warning", message);
}

}  // namespace msae
