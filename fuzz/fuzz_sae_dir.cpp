// libFuzzer target: SAE directory import (saedir::read_sae_dir) — cfg.json, msae.json and the weights
// file, in the SAELens layout (sae_weights.safetensors) or the EleutherAI sparsify layout (sae.safetensors),
// followed, when the directory loads, by inference encoding and decoding of a few rows.
// Input format (fuzz/make_seeds.py writes seeds in it):
//   byte 0: flags; bit 0 = weights file is sae.safetensors (sparsify) instead of sae_weights.safetensors,
//           bit 1 = write cfg.json, bit 2 = write msae.json
//   u16 LE n, then n bytes of cfg.json;  u16 LE m, then m bytes of msae.json;  the rest: the weights file.
// (lengths are clipped to the bytes available). Contract under test: read_sae_dir returns a consistent
// SAE or throws msae::Error; the loaded SAE encodes and decodes without any sanitizer finding.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "msae/model.h"
#include "msae/sae_dir.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace msae;
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  const uint8_t* p = data + 1;
  const uint8_t* end = data + size;
  const std::string cfg = fuzz::take_chunk(p, end);
  const std::string msae_json = fuzz::take_chunk(p, end);

  const std::string& dir = fuzz::scratch_dir();
  // Only the files this input names exist in the directory.
  for (const char* f : {"cfg.json", "msae.json", "sae.safetensors", "sae_weights.safetensors"})
    std::remove((dir + "/" + f).c_str());
  if (flags & 2u) fuzz::write_text(dir + "/cfg.json", cfg);
  if (flags & 4u) fuzz::write_text(dir + "/msae.json", msae_json);
  fuzz::write_bytes(dir + ((flags & 1u) ? "/sae.safetensors" : "/sae_weights.safetensors"), p,
                    static_cast<size_t>(end - p));
  try {
    const saedir::SaeDirectory sae = saedir::read_sae_dir(dir);
    const SaeParams& prm = sae.params;
    // The loader's promises: shapes agree with d and D, the config is finalized for that D.
    if (prm.d <= 0 || prm.D <= 0 || sae.sae.d_in != prm.d || sae.sae.d_sae != prm.D) __builtin_trap();
    if (prm.W_enc_t.numel() != prm.D * prm.d || prm.W_dec.numel() != prm.D * prm.d) __builtin_trap();
    if (prm.b_enc.numel() != prm.D || prm.b_dec.numel() != prm.d) __builtin_trap();
    if (sae.sae.boundaries().back() != prm.D) __builtin_trap();
    constexpr int64_t B = 3;
    std::vector<float> x(static_cast<size_t>(B * prm.d)), r(x.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>(i % 7) - 3);
    const kernels::SparseCodes z = encode_inference(sae.sae, prm, x.data(), B, prm.D);
    decode(prm, z, r.data());
  } catch (const Error&) {
  }
  return 0;
}
