// The build without MPI: world() is always the local communicator.
#include "comm_mpi.h"

#include "msae/core.h"

namespace msae::comm::detail {

bool mpi_available() { return false; }
std::unique_ptr<Comm> make_mpi_world(int*, char***) {
  MSAE_ASSERT(false, "msae was built without MPI");
  return nullptr;
}
void finalize_mpi() {}

}  // namespace msae::comm::detail
