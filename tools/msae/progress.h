// Progress display for long loops: a one-line bar redrawn on stderr when it is a terminal, otherwise a
// log line every `log_seconds`; finish() always shows the last state (a final "100%" line when the loop
// ended), so a log never stops at "9%".
#pragma once

#include <cstdint>
#include <string>

#include "msae/core.h"
#include "msae/eval.h"

namespace msae::cli {

class Progress {
 public:
  // `start`: units already done before this process began (a resumed run); the ETA uses only the units
  // this process did in its own time.
  Progress(int64_t total, double log_seconds = 10.0, int64_t start = 0);
  // `fields` is the right-hand text ("loss 0.12 | FVU 0.05 ..."); done = units completed so far.
  void update(int64_t done, const std::string& fields, bool force = false);
  // Draws the last state if it has not been shown (always a final line), then ends the bar's line.
  void finish();
  // Ends the bar's line without drawing (before a log line in the middle of the loop).
  void end_line();
  double elapsed() const { return timer_.seconds(); }

 private:
  void draw(double now);
  int64_t total_;
  double log_seconds_;
  int64_t start_;
  bool tty_;
  Timer timer_;
  double last_draw_ = -1e9;
  bool drawn_ = false;
  int64_t done_ = -1;        // the last update's
  std::string fields_;
  bool shown_ = true;        // the last update has been drawn
};

std::string format_duration(double seconds);  // "1h02m", "3m05s", "12s"

// The ETA of a loop at `done` of `total` units, `elapsed` seconds into this process, which began at unit
// `start` (a resumed run's earlier units took another process's time): this process's rate alone.
// Negative (shown as "?") until this process has done a unit and run a second.
double eta_seconds(double elapsed, int64_t done, int64_t start, int64_t total);

// The dead and dense figures of an evaluation, each with its definition, for the summaries of train and
// eval: "dead latents 1.7% (never fired on the 4096 evaluation rows), dense latents 0.0% (fired on more
// than 10% of them)". The progress line's "dead" is another count (docs/cli.md, "Dead latents").
std::string dead_dense_line(const eval::EvalReport& r);

}  // namespace msae::cli
