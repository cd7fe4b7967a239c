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
void set_max_call_bytes(int64_t) {}
int64_t max_call_bytes() { return 0; }

}  // namespace msae::comm::detail
