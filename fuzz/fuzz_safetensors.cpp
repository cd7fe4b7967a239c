// libFuzzer target: the .safetensors reader (io::read_safetensors).
// Contract under test (include/msae/io.h): on any bytes the reader either returns tensors whose element
// counts match their shapes, or throws msae::Error; no crash, no out-of-bounds access (ASan), no UB
// (UBSan), no leak, no other exception type (an uncaught exception aborts and is reported as a crash).
#include <cstdint>

#include "fuzz_util.h"
#include "msae/io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace msae;
  const std::string path = fuzz::scratch_dir() + "/input.safetensors";
  fuzz::write_bytes(path, data, size);
  try {
    const io::SafetensorsFile f = io::read_safetensors(path);
    for (const auto& [name, t] : f.tensors) {
      if (t.numel() != numel(t.shape) || static_cast<int64_t>(t.data.size()) != t.numel()) __builtin_trap();
      if (!f.stored_dtypes.count(name)) __builtin_trap();
    }
  } catch (const Error&) {
  }
  return 0;
}
