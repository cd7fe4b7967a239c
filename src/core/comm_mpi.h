// Private seam between comm.cpp and the MPI communicator (comm_mpi.cpp, or the stubs in comm_nompi.cpp for
// the build without MPI).
#pragma once

#include <cstdint>
#include <memory>

#include "msae/comm.h"

namespace msae::comm::detail {

bool mpi_available();  // built with MPI
// MPI_Init_thread (MPI_THREAD_FUNNELED: only the calling thread talks to MPI) and the communicator over
// MPI_COMM_WORLD. Only called when mpi_available().
std::unique_ptr<Comm> make_mpi_world(int* argc, char*** argv);
void finalize_mpi();  // MPI_Finalize
// The most bytes one MPI call of the communicator moves (MPI's counts are int; default 2^30). Tests lower
// it to walk the loops that cut larger transfers into several calls; 0 restores the default. Set it to the
// same value on every process.
void set_max_call_bytes(int64_t bytes);
int64_t max_call_bytes();

}  // namespace msae::comm::detail
