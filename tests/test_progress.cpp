// The msae command's progress line (tools/msae/progress.h): its ETA and durations.
#include <gtest/gtest.h>

#include "progress.h"

using msae::cli::eta_seconds;
using msae::cli::format_duration;

// A resumed run's ETA comes from this process's own rate. Before the fix (session 15) it divided this
// process's time by every step done, so a run resumed at 2695 of 20000 showed minutes for hours.
TEST(Progress, EtaAfterResumeUsesThisProcesssRate) {
  // Resumed at 2695; 100 steps in this process's first 10 s: 17205 left at 10 steps a second.
  EXPECT_DOUBLE_EQ(eta_seconds(10.0, 2795, 2695, 20000), 1720.5);
  // A fresh run: the same rate, the same formula with start 0.
  EXPECT_DOUBLE_EQ(eta_seconds(10.0, 100, 0, 20000), 1990.0);
  // synth-bench starts its bar after its first step (start = done - 1): one step in 2 s.
  EXPECT_DOUBLE_EQ(eta_seconds(2.0, 2696, 2695, 2700), 8.0);
  EXPECT_EQ(format_duration(eta_seconds(10.0, 2795, 2695, 20000)), "28m41s");
}

TEST(Progress, EtaUnknownUntilThisProcessHasRun) {
  EXPECT_LT(eta_seconds(5.0, 2695, 2695, 20000), 0.0);  // no step of its own yet
  EXPECT_LT(eta_seconds(0.5, 2700, 2695, 20000), 0.0);  // under a second: too early to tell
  EXPECT_LT(eta_seconds(5.0, 10, 0, 0), 0.0);           // no total
  EXPECT_EQ(format_duration(-1.0), "?");
}

TEST(Progress, Durations) {
  EXPECT_EQ(format_duration(0.4), "0s");
  EXPECT_EQ(format_duration(59.6), "1m00s");
  EXPECT_EQ(format_duration(3725.0), "1h02m");
  EXPECT_EQ(format_duration(1e9), "?");
}
