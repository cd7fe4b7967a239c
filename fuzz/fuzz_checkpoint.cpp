// libFuzzer target: checkpoint reading (train::read_checkpoint, what `msae train --resume DIR` reads first):
// RUN/checkpoints/latest, then RUN/checkpoints/<latest>/state.json and state.safetensors.
// Input format (fuzz/make_seeds.py writes seeds in it):
//   u16 LE n, then n bytes of `latest`;  u16 LE m, then m bytes of state.json;  the rest: state.safetensors
// (lengths are clipped to the bytes available). Contract under test: read_checkpoint returns a checkpoint
// whose shapes agree with each other, or throws msae::Error; no sanitizer finding either way.
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "fuzz_util.h"
#include "msae/train.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace msae;
  const uint8_t* p = data;
  const uint8_t* end = data + size;
  const std::string latest = fuzz::take_chunk(p, end);
  const std::string state = fuzz::take_chunk(p, end);
  // One fixed checkpoint directory; `latest` may name any other (the reader must refuse what escapes).
  const std::string run = fuzz::scratch_dir();
  const std::string step_dir = run + "/checkpoints/step-0000000001";
  ::mkdir((run + "/checkpoints").c_str(), 0700);
  ::mkdir(step_dir.c_str(), 0700);
  fuzz::write_text(run + "/checkpoints/latest", latest);
  fuzz::write_text(step_dir + "/state.json", state);
  fuzz::write_bytes(step_dir + "/state.safetensors", p, static_cast<size_t>(end - p));
  try {
    const train::Checkpoint c = train::read_checkpoint(run);
    const SaeParams& prm = c.params;
    if (prm.d <= 0 || prm.D <= 0 || prm.W_enc_t.numel() != prm.D * prm.d || prm.W_dec.numel() != prm.D * prm.d ||
        prm.b_enc.numel() != prm.D || prm.b_dec.numel() != prm.d ||
        static_cast<int64_t>(c.latents.n_inactive.size()) != prm.D)
      __builtin_trap();
    if (c.opt.t > 0 && (c.opt.m.W_dec.numel() != prm.D * prm.d || c.opt.v.W_enc_t.numel() != prm.D * prm.d))
      __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
