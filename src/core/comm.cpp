// The local communicator and the process-wide world() (msae/comm.h). The MPI communicator is in
// comm_mpi.cpp, compiled when CMake found MPI (MSAE_MPI).
#include "msae/comm.h"

#include <cstdlib>
#include <cstring>

#include "comm_mpi.h"
#include "msae/core.h"

namespace msae::comm {
namespace {

// One process: the sums, minima and maxima of one value are that value; gathers return the own part.
class LocalComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "local"; }
  void allreduce_sum(float*, int64_t) override {}
  void allreduce_sum(double*, int64_t) override {}
  void allreduce_sum(int64_t*, int64_t) override {}
  void reduce_scatter_sum(float*, const std::vector<int64_t>&) override {}
  void allgather_parts(float*, const std::vector<int64_t>&) override {}
  void allreduce_max(int64_t*, int64_t) override {}
  void allreduce_min(float*, int64_t) override {}
  void allgatherv(const void* data, int64_t bytes, std::vector<char>& out, std::vector<int64_t>& counts) override {
    own(data, bytes, out, counts);
  }
  void gatherv(const void* data, int64_t bytes, std::vector<char>& out, std::vector<int64_t>& counts,
               int root) override {
    MSAE_ASSERT(root == 0, "root ", root);
    own(data, bytes, out, counts);
  }
  void scatterv(const std::vector<std::vector<char>>& contributions, std::vector<char>& out, int root) override {
    MSAE_ASSERT(root == 0 && contributions.size() == 1);
    out = contributions[0];
  }
  void broadcast(void*, int64_t, int root) override { MSAE_ASSERT(root == 0, "root ", root); }
  void barrier() override {}
  void abort(int) override {}

 private:
  static void own(const void* data, int64_t bytes, std::vector<char>& out, std::vector<int64_t>& counts) {
    out.resize(static_cast<size_t>(bytes));
    if (bytes > 0) std::memcpy(out.data(), data, static_cast<size_t>(bytes));
    counts.assign(1, bytes);
  }
};

std::unique_ptr<Comm>& world_ptr() {
  static std::unique_ptr<Comm> w = make_local();
  return w;
}

bool g_mpi_started = false;

}  // namespace

std::unique_ptr<Comm> make_local() { return std::make_unique<LocalComm>(); }

Comm& world() { return *world_ptr(); }
bool is_root() { return world().rank() == 0; }

void set_world(std::unique_ptr<Comm> c) { world_ptr() = c ? std::move(c) : make_local(); }

bool mpi_built() { return detail::mpi_available(); }

void init(int* argc, char*** argv) {
  if (g_mpi_started) return;
  const bool launched = std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr ||
                        std::getenv("PMIX_RANK") != nullptr;
  if (!launched) return;
  if (!detail::mpi_available()) {
    // Each process would train alone (and the output lock would refuse all but one): say why.
    log_warn("msae was built without MPI (CMake found no MPI, or MSAE_MPI=OFF): this process of the MPI job "
             "runs alone; install libopenmpi-dev and rebuild to train across processes");
    return;
  }
  world_ptr() = detail::make_mpi_world(argc, argv);
  g_mpi_started = true;
}

void finalize() {
  if (!g_mpi_started) return;
  world_ptr() = make_local();
  detail::finalize_mpi();
  g_mpi_started = false;
}

int local_processes() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"})
    if (const char* v = std::getenv(name)) {
      const int n = std::atoi(v);
      if (n > 0) return n;
    }
  return 1;
}

}  // namespace msae::comm
