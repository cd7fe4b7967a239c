#!/usr/bin/python3
"""Times the PyTorch implementation of SPEC.md (scripts/torch_reference.py: dense masks, per-group
slices of W_dec, autograd, clip_grad_norm_, decoder constraint, torch.optim.Adam; the structure of the
published Matryoshka code) on random activation-like data. Prints one JSON object.

    /usr/bin/python3 bench/torch_step.py --d-in 768 --d-sae 16384 --k 32 --batch 4096 --threads 2
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import torch_reference as tr  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--arch", default="matryoshka")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = tr.make_config(a.d_in, a.d_sae, arch=a.arch, k=a.k, batch=a.batch)
    model = tr.MatryoshkaSAE(cfg)
    opt = tr.make_optimizer(model)
    basis = torch.randn(4 * a.d_in, a.d_in) / a.d_in ** 0.5 * 4.0
    batches = []
    for _ in range(3):
        idx = torch.randint(0, 4 * a.d_in, (a.batch, 16))
        coef = torch.rand(a.batch, 16)
        x = (coef.unsqueeze(-1) * basis[idx]).sum(1) + 0.2 + 0.05 * torch.randn(a.batch, a.d_in)
        batches.append(x.contiguous())
    times = []
    for it in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        tr.train_step(model, opt, batches[it % 3], check_unit_norm=False)
        dt = time.perf_counter() - t0
        if it >= a.warmup:
            times.append(dt)
    times.sort()
    med = times[len(times) // 2] if len(times) % 2 else 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2])
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "step_s": med, "tokens_per_s": a.batch / med, "steps": a.steps,
                      "blas": torch.__config__.show().split("BLAS_INFO=")[-1].split(",")[0]
                      if "BLAS_INFO=" in torch.__config__.show() else "unknown"}))


if __name__ == "__main__":
    main()
