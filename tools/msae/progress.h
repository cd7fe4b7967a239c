// Progress display for long loops: a one-line bar redrawn on stderr when it is a terminal, otherwise a
// log line every `log_seconds`.
#pragma once

#include <cstdint>
#include <string>

#include "msae/core.h"

namespace msae::cli {

class Progress {
 public:
  Progress(int64_t total, double log_seconds = 10.0);
  // `fields` is the right-hand text ("loss 0.12 | FVU 0.05 ..."); done = units completed so far.
  void update(int64_t done, const std::string& fields, bool force = false);
  void finish();
  double elapsed() const { return timer_.seconds(); }

 private:
  int64_t total_;
  double log_seconds_;
  bool tty_;
  Timer timer_;
  double last_draw_ = -1e9;
  bool drawn_ = false;
};

std::string format_duration(double seconds);  // "1h02m", "3m05s", "12s"

}  // namespace msae::cli
