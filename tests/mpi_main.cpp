// main() of the tests that run under mpirun (msae_add_mpi_test in tests/CMakeLists.txt), and alone.
// Every process runs the same tests in the same order, so their collectives pair up. Rank 0 prints
// googletest's usual output; the others print only their failures, marked with their rank. The exit code is
// the same on every process: failure if any process had a failed test (an allreduce of the verdicts), so
// mpirun, and ctest, report a failure on any rank.
//
// A fatal failure (an ASSERT_*, an exception) leaves the rest of that test unrun on that process, whose
// next collective would then pair with a different call on the others and could wait forever: with more
// than one process it ends the whole job at once (Comm::abort, exit status 1) after printing the failure.
// Tests assert collectively where they can (compute the verdict everywhere, agree on it, then EXPECT), so a
// wrong result reads as a normal failure on every process.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "msae/comm.h"
#include "msae/core.h"

namespace {

class RankFailurePrinter : public testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  // The test's name is kept here: UnitTest::current_test_info() inside OnTestPartResult would wait for the
  // lock that googletest holds while it reports the result.
  void OnTestStart(const testing::TestInfo& test) override {
    test_ = msae::cat(test.test_suite_name(), ".", test.name());
  }
  void OnTestPartResult(const testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s: %s:%d: Failure\n%s\n", rank_, test_.c_str(),
                 result.file_name() ? result.file_name() : "?", result.line_number(), result.message());
    std::fflush(stderr);
  }

 private:
  int rank_;
  std::string test_;
};

class AbortOnFatalFailure : public testing::EmptyTestEventListener {
 public:
  void OnTestPartResult(const testing::TestPartResult& result) override {
    auto& world = msae::comm::world();
    if (!result.fatally_failed() || world.size() < 2) return;
    std::fprintf(stderr, "[rank %d] fatal test failure: ending all %d processes (MPI_Abort)\n", world.rank(),
                 world.size());
    std::fflush(stdout);
    std::fflush(stderr);
    world.abort(1);
  }
};

}  // namespace

int main(int argc, char** argv) {
  msae::comm::init(&argc, &argv);
  testing::InitGoogleTest(&argc, argv);
  auto& world = msae::comm::world();
  testing::TestEventListeners& listeners = testing::UnitTest::GetInstance()->listeners();
  if (world.rank() != 0) {
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(world.rank()));
  }
  // After the printers: googletest hands a failure to its listeners in the order they were added.
  listeners.Append(new AbortOnFatalFailure);
  int64_t failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  msae::comm::world().allreduce_max(&failed, 1);
  if (failed && world.rank() == 0 && world.size() > 1)
    std::printf("[rank 0] a test failed on at least one of the %d processes\n", world.size());
  msae::comm::finalize();
  return failed ? 1 : 0;
}
