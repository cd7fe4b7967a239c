#!/usr/bin/python3
"""msae vs the PyTorch implementation of SPEC.md, same shapes, same machine, same invocation, 2 threads
each. Run with Debian's interpreter (the python3 on PATH may lack torch):

    /usr/bin/python3 bench/compare_pytorch.py [--msae build/msae] [--native-openblas] [shape options]

--native-openblas unsets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for BOTH sides (this environment sets
them, which makes OpenBLAS pick a slower kernel / blocking here); the script prints what it did and the
kernel msae's OpenBLAS reports. Without the flag both run with the environment as it is.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--msae", default=os.path.join(HERE, "..", "build", "msae"))
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--msae-steps", type=int, default=5)
    ap.add_argument("--torch-steps", type=int, default=3)
    ap.add_argument("--native-openblas", action="store_true")
    a = ap.parse_args()
    env = dict(os.environ)
    if a.native_openblas:
        removed = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if env.pop(v, None) is not None]
        print("environment: unset %s for both sides" % (", ".join(removed) if removed else "(neither was set)"))
    else:
        print("environment: OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s (as inherited)"
              % (env.get("OPENBLAS_CORETYPE", "<unset>"), env.get("OPENBLAS_L2_SIZE", "<unset>")))
    shape = ["--d-in", str(a.d_in), "--d-sae", str(a.d_sae), "--k", str(a.k), "--batch", str(a.batch)]
    ms = json.loads(subprocess.run([a.msae, "bench", "--json", "--threads", str(a.threads), "--steps",
                                    str(a.msae_steps)] + shape, env=env, check=True,
                                   capture_output=True, text=True).stdout)
    pt = json.loads(subprocess.run(["/usr/bin/python3", os.path.join(HERE, "torch_step.py"), "--threads",
                                    str(a.threads), "--steps", str(a.torch_steps)] + shape, env=env, check=True,
                                   capture_output=True, text=True).stdout)
    print("shape: d=%d D=%d k=%d B=%d, default Matryoshka groups, fp32, %d threads each"
          % (a.d_in, a.d_sae, a.k, a.batch, a.threads))
    print("msae BLAS: %s" % ms["blas"])
    print("torch %s BLAS: %s, threads %d" % (pt["torch"], pt["blas"], pt["threads"]))
    print("%-8s %12s %12s" % ("", "step (s)", "tokens/s"))
    print("%-8s %12.3f %12.0f" % ("msae", ms["step_s"], ms["tokens_per_s"]))
    print("%-8s %12.3f %12.0f" % ("pytorch", pt["step_s"], pt["tokens_per_s"]))
    print("msae / pytorch tokens/s: %.1fx   (msae step / its encoder GEMM: %.2fx)"
          % (ms["tokens_per_s"] / pt["tokens_per_s"], ms["step_over_gemm"]))


if __name__ == "__main__":
    sys.exit(main())
