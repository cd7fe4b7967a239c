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

double eta_seconds(double elapsed, int64_t done, int64_t start, int64_t total) {
  const int64_t mine = done - start;
  // (The first line comes after this process's first unit, so a second is asked for besides.)
  if (mine <= 0 || total <= 0 || elapsed < 1.0) return -1.0;
  return elapsed * static_cast<double>(total - done) / static_cast<double>(mine);
}

Progress::Progress(int64_t total, double log_seconds, int64_t start)
    : total_(total), log_seconds_(log_seconds), start_(start), tty_(isatty(STDERR_FILENO) == 1) {}

void Progress::update(int64_t done, const std::string& fields, bool force) {
  if (log_level() < 1) return;
  done_ = done;
  fields_ = fields;
  shown_ = false;
  const double now = timer_.seconds();
  const double interval = tty_ ? 0.2 : log_seconds_;
  if (!force && now - last_draw_ < interval) return;
  draw(now);
}

void Progress::draw(double now) {
  last_draw_ = now;
  shown_ = true;
  const int64_t done = done_;
  const double frac = total_ > 0 ? std::min(1.0, static_cast<double>(done) / static_cast<double>(total_)) : 0.0;
  const std::string eta_text =
      done >= total_ && total_ > 0 ? "done" : "ETA " + format_duration(eta_seconds(now, done, start_, total_));
  if (tty_) {
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(frac * kWidth);
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r\033[K[%s] %3d%% %s | %s", bar.c_str(), static_cast<int>(frac * 100), fields_.c_str(),
                 eta_text.c_str());
    drawn_ = true;
  } else {
    std::fprintf(stderr, "[msae] %3d%% %s | elapsed %s | %s\n", static_cast<int>(frac * 100), fields_.c_str(),
                 format_duration(now).c_str(), eta_text.c_str());
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (log_level() >= 1 && done_ >= 0 && !shown_) draw(timer_.seconds());
  end_line();
}

void Progress::end_line() {
  if (tty_ && drawn_) {
    std::fprintf(stderr, "\n");
    std::fflush(stderr);
    drawn_ = false;
  }
}

std::string dead_dense_line(const eval::EvalReport& r) {
  return cat("dead latents ", fixed(100 * r.dead_fraction, 1), "% (never fired on the ", r.rows,
             " evaluation rows), dense latents ", fixed(100 * r.dense_fraction, 1), "% (fired on more than 10% of them)");
}

}  // namespace msae::cli
