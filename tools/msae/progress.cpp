#include "progress.h"

#include <unistd.h>

#include <cstdio>

namespace msae::cli {

std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e8) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(t / 3600), static_cast<long long>(t / 60 % 60));
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(t / 60), static_cast<long long>(t % 60));
  else
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(t));
  return buf;
}

Progress::Progress(int64_t total, double log_seconds)
    : total_(total), log_seconds_(log_seconds), tty_(isatty(STDERR_FILENO) == 1) {}

void Progress::update(int64_t done, const std::string& fields, bool force) {
  if (log_level() < 1) return;
  const double now = timer_.seconds();
  const double interval = tty_ ? 0.2 : log_seconds_;
  if (!force && now - last_draw_ < interval) return;
  last_draw_ = now;
  const double frac = total_ > 0 ? static_cast<double>(done) / static_cast<double>(total_) : 0.0;
  const double eta = done > 0 ? now * (1.0 - frac) / frac : -1.0;
  if (tty_) {
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(frac * kWidth);
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r\033[K[%s] %3d%% %s | ETA %s", bar.c_str(), static_cast<int>(frac * 100), fields.c_str(),
                 format_duration(eta).c_str());
    drawn_ = true;
  } else {
    std::fprintf(stderr, "[msae] %3d%% %s | elapsed %s | ETA %s\n", static_cast<int>(frac * 100), fields.c_str(),
                 format_duration(now).c_str(), format_duration(eta).c_str());
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (tty_ && drawn_) {
    std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }
}

}  // namespace msae::cli
