// Private seam between comm.cpp and the MPI communicator (comm_mpi.cpp, or the stubs in comm.cpp's
// build without MPI).
#pragma once

#include <memory>

#include "msae/comm.h"

namespace msae::comm::detail {

bool mpi_available();  // built with MPI
// MPI_Init_thread (MPI_THREAD_FUNNELED: only the calling thread talks to MPI) and the communicator over
// MPI_COMM_WORLD. Only called when mpi_available().
std::unique_ptr<Comm> make_mpi_world(int* argc, char*** argv);
void finalize_mpi();  // MPI_Finalize

}  // namespace msae::comm::detail
