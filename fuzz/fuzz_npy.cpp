// libFuzzer target: the .npy reader (io::read_npy_header, io::read_npy, io::NpyRows).
// Contract under test (include/msae/io.h): on any bytes the readers either succeed or throw msae::Error;
// no crash, no out-of-bounds access (ASan), no UB (UBSan), no leak, no other exception type (an uncaught
// exception aborts and is reported as a crash). Both dtype modes are exercised: the first input byte's
// low bit selects bf16_as_u2.
#include <cstdint>
#include <vector>

#include "fuzz_util.h"
#include "msae/io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace msae;
  const std::string path = fuzz::scratch_dir() + "/input.npy";
  fuzz::write_bytes(path, data, size);
  const bool bf16 = size > 0 && (data[size - 1] & 1u);
  try {
    const io::NpyHeader h = io::read_npy_header(path, bf16);
    // A successful header promises the data is all there: reading it must succeed, and yield numel values.
    const Tensor t = io::read_npy(path, bf16);
    if (t.numel() != numel(h.shape)) __builtin_trap();
  } catch (const Error&) {
  }
  try {
    io::NpyRows rows(path, bf16);
    const int64_t n = rows.rows(), d = rows.cols();
    if (n > 0 && d > 0 && d <= (int64_t{1} << 16)) {
      std::vector<float> buf(static_cast<size_t>(2 * d));
      rows.read_rows(0, 1, buf.data());
      rows.read_rows(n - 1, 1, buf.data());
      const int64_t idx[2] = {n - 1, 0};
      rows.gather_rows(idx, 2, buf.data());
    }
  } catch (const Error&) {
  }
  return 0;
}
