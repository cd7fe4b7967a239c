#!/usr/bin/env python3
"""The published Matryoshka BatchTopK training step in PyTorch on the GPU, timed next to its encoder GEMM
(docs/cuda.md): the baseline of `msae bench --engine cuda` on the same card. Dense, as the published code
(Bussmann et al.'s matryoshka_sae: x_cent @ W_enc, relu, topk over the flattened batch, one dense decode per
prefix, the b_dec term, AuxK when latents are dead, backward, clip, decoder constraint, Adam). fp32 (TF32 off).

Usage (on the device machine, its own torch): python3 bench/torch_gpu_baseline.py [--steps 10]
Prints one JSON line per shape: step_s, encoder_gemm_s, step_over_gemm.
"""
import argparse
import json

import torch


def run(d, D, k, B, steps, warmup, dead_share=0.0):
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    g = torch.Generator(device=dev).manual_seed(0)
    bound = (6.0 / D) ** 0.5
    W_enc = (torch.rand(d, D, device=dev, generator=g) * 2 - 1) * bound
    W_dec = W_enc.t().clone()
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    b_dec = torch.zeros(d, device=dev)
    params = [p.requires_grad_() for p in (W_enc, W_dec, b_dec)]
    opt = torch.optim.Adam(params, lr=3e-4, betas=(0.9, 0.99))
    sizes = [D // 16, D // 16, D // 8, D // 4]
    sizes.append(D - sum(sizes))
    bounds = torch.tensor(sizes).cumsum(0).tolist()
    n_inactive = torch.zeros(D, device=dev)
    n_inactive[: int(dead_share * D)] = 100
    basis = torch.randn(4 * d, d, device=dev, generator=g) / d ** 0.5 * 4
    batches = []
    for _ in range(3):
        idx = torch.randint(0, 4 * d, (B, 16), device=dev, generator=g)
        c = torch.rand(B, 16, 1, device=dev, generator=g)
        batches.append((basis[idx] * c).sum(1) + 0.2 + 0.05 * torch.randn(B, d, device=dev, generator=g))

    def step(x):
        x_cent = x - b_dec
        acts = torch.relu(x_cent @ W_enc)
        flat = acts.flatten()
        top = torch.topk(flat, k * B, sorted=False)
        z = torch.zeros_like(flat).scatter(0, top.indices, top.values).view(B, D)
        rec = b_dec.expand(B, d)
        loss = ((rec - x) ** 2).mean()
        start = 0
        for m in bounds:
            rec = rec + z[:, start:m] @ W_dec[start:m]
            loss = loss + ((rec - x) ** 2).mean()
            start = m
        loss = loss / (len(bounds) + 1)
        with torch.no_grad():
            fired = (z > 0).any(0)
            n_inactive.add_(1).masked_fill_(fired, 0)
        dead = n_inactive >= 20
        n_dead = int(dead.sum())
        if n_dead > 0:
            e = x - rec
            acts_dead = acts[:, dead]
            kk = min(512, n_dead)
            t = torch.topk(acts_dead, kk, dim=1)
            a = torch.zeros_like(acts_dead).scatter(1, t.indices, t.values) @ W_dec[dead]
            loss = loss + ((a - e) ** 2).mean() / 32
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1e5)
        with torch.no_grad():
            u = W_dec / W_dec.norm(dim=1, keepdim=True)
            W_dec.grad -= (W_dec.grad * u).sum(1, keepdim=True) * u
            W_dec.copy_(u)
        opt.step()

    for i in range(warmup):
        step(batches[i % 3])
    times = []
    for i in range(steps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        step(batches[i % 3])
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) * 1e-3)
    x_cent = batches[0] - b_dec.detach()
    gemm = []
    with torch.no_grad():
        for _ in range(steps + 1):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            x_cent @ W_enc
            e.record()
            torch.cuda.synchronize()
            gemm.append(s.elapsed_time(e) * 1e-3)
    times.sort()
    gemm = sorted(gemm[1:])
    return {"impl": "pytorch", "torch": torch.__version__, "device": torch.cuda.get_device_name(), "d_in": d,
            "d_sae": D, "k": k, "batch": B, "dead_share": dead_share, "step_s": times[len(times) // 2],
            "encoder_gemm_s": gemm[len(gemm) // 2], "step_over_gemm": times[len(times) // 2] / gemm[len(gemm) // 2]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    for d, D in ((768, 16384), (2304, 36864)):
        print(json.dumps(run(d, D, 32, 4096, a.steps, a.warmup)), flush=True)
