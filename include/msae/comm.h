// msae comm: the collective operations that training across processes needs (docs/distributed.md), behind
// one small interface. Three implementations:
//   - the local communicator (one process: every collective is the identity), what world() is by default;
//   - MPI (src/core/comm_mpi.cpp, built when CMake finds MPI: MSAE_MPI), which world() becomes when
//     comm::init finds the process started by mpirun;
//   - a GPU engine may bring its own (NCCL) later: the engines see only this interface.
// Every call is collective: all processes of the communicator make the same calls in the same order.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace msae::comm {

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "local" or "mpi (Open MPI v4.1.4, 3 processes)"

  // Element-wise sums over the processes, in place. The float and double sums are deterministic: each
  // element is summed in rank order (rank 0's value first), so every process gets the same bits, and the
  // same inputs give the same result on every run whatever the transport does.
  virtual void allreduce_sum(float* data, int64_t n) = 0;
  virtual void allreduce_sum(double* data, int64_t n) = 0;
  virtual void allreduce_sum(int64_t* data, int64_t n) = 0;
  // allreduce_sum(float) in two halves, for work that each process can do on its part in between:
  // `parts` (size() + 1 ascending offsets from 0 to n) gives process p the elements [parts[p], parts[p+1]).
  // reduce_scatter_sum leaves this process's part summed over the processes (in rank order, as
  // allreduce_sum; the other elements are left as they were); allgather_parts then copies every process's
  // part to every process. Together they send what one allreduce_sum sends.
  virtual void reduce_scatter_sum(float* data, const std::vector<int64_t>& parts) = 0;
  virtual void allgather_parts(float* data, const std::vector<int64_t>& parts) = 0;
  virtual void allreduce_max(int64_t* data, int64_t n) = 0;
  virtual void allreduce_min(float* data, int64_t n) = 0;
  // Every process contributes `bytes` bytes (any number, 0 included); `out` receives all contributions
  // concatenated in rank order and `counts` (size()) the bytes of each.
  virtual void allgatherv(const void* data, int64_t bytes, std::vector<char>& out, std::vector<int64_t>& counts) = 0;
  // The same, received by `root` only (out and counts are left empty elsewhere).
  virtual void gatherv(const void* data, int64_t bytes, std::vector<char>& out, std::vector<int64_t>& counts,
                       int root) = 0;
  // root's contributions[p] (size() of them) go to process p; every process receives its own part in `out`.
  virtual void scatterv(const std::vector<std::vector<char>>& contributions, std::vector<char>& out, int root) = 0;
  // root's `bytes` bytes at data overwrite everyone else's.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Ends every process of the communicator with exit status `code` (after a fatal error on this one, so the
  // others do not wait forever in a collective). Returns only for the local communicator.
  virtual void abort(int code) = 0;

  // Traffic this process has sent through the calls above (bytes, calls), for the benchmark and tests.
  int64_t bytes_sent() const { return bytes_sent_; }
  int64_t calls() const { return calls_; }

 protected:
  void count(int64_t bytes) {
    bytes_sent_ += bytes;
    ++calls_;
  }

 private:
  int64_t bytes_sent_ = 0, calls_ = 0;
};

// The single-process communicator.
std::unique_ptr<Comm> make_local();

// The process-wide communicator: the local one unless init() found an MPI launch.
Comm& world();
bool is_root();  // world().rank() == 0

// Called first by a program's main: when msae was built with MPI and this process was started by an MPI
// launcher (OMPI_COMM_WORLD_SIZE or PMI_SIZE in the environment), initializes MPI and makes world() the
// MPI communicator of all launched processes. Without MPI (or without a launcher) world() stays local.
void init(int* argc, char*** argv);
// Ends MPI (when init started it); world() is local again. Safe to call more than once.
void finalize();
bool mpi_built();  // this build has the MPI communicator
// Processes of this job on this machine (the launcher's local size, 1 without one): the default thread
// count divides the cores among them.
int local_processes();

// Installs `c` as world() (tests; nullptr restores the local communicator). Not thread-safe.
void set_world(std::unique_ptr<Comm> c);

}  // namespace msae::comm
