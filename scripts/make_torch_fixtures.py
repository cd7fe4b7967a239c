#!/usr/bin/python3
"""Write the PyTorch equivalence fixtures into tests/fixtures/<case>/ (format: docs/fixtures.md).

    /usr/bin/python3 scripts/make_torch_fixtures.py [--out tests/fixtures] [--only CASE ...]

Each case trains the oracle in scripts/torch_reference.py for a few float32 steps from a saved
init and records per-step metrics (fixture.json), the parameters after every step, and the raw
step-1 gradients. Seeds are searched until every step keeps a clear margin at the TopK cut and
at the AuxK cut (relative gap > MIN_GAP), and until the case covers what it is meant to cover.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

MIN_GAP = 1e-4       # relative gap required at every selection cut
MIN_PRE = 1e-5       # |pre| of AuxK-selected values must not sit on the relu kink
MAX_SEEDS = 200

# name -> (config kwargs, requirements)
CASES = [
    ("matryoshka_default",
     dict(arch="matryoshka", d_in=16, d_sae=64, k=4, batch=32, steps=10, lr=3e-4,
          dead_after_batches=3, aux_k=512, aux_coef=1.0 / 32.0, max_grad_norm=1e5),
     dict(need_aux_truncated=False)),
    ("batchtopk",
     dict(arch="batchtopk", d_in=16, d_sae=64, k=4, batch=32, steps=10, lr=1e-3,
          dead_after_batches=2, aux_k=4, aux_coef=1.0 / 32.0, max_grad_norm=1e5),
     dict(need_aux_truncated=True)),
    ("topk",
     dict(arch="topk", d_in=16, d_sae=64, k=4, batch=32, steps=10, lr=1e-3,
          dead_after_batches=2, aux_k=512, aux_coef=1.0 / 32.0, max_grad_norm=1e5),
     dict(need_aux_truncated=False)),
    ("matryoshka_custom_groups",
     dict(arch="matryoshka", d_in=16, d_sae=64, k=4, batch=32, steps=10, lr=1e-3,
          group_sizes=[8, 24, 32], encoder_bias=True,
          dead_after_batches=2, aux_k=6, aux_coef=1.0 / 32.0, max_grad_norm=1e5),
     dict(need_aux_truncated=True)),
    ("matryoshka_clipped",
     dict(arch="matryoshka", d_in=16, d_sae=64, k=4, batch=32, steps=10, lr=1e-3,
          dead_after_batches=3, aux_k=512, aux_coef=1.0 / 32.0, max_grad_norm=0.05),
     dict(need_aux_truncated=False, need_clip_every_step=True)),
    # AuxK switches on and off, and one step has dead latents whose relu values are all zero
    # (a == 0: no aux loss, so no gradient through e = x - r_G either).
    ("matryoshka_aux_toggle",
     dict(arch="matryoshka", d_in=16, d_sae=64, k=8, batch=32, steps=10, lr=1e-3,
          dead_after_batches=3, aux_k=512, aux_coef=1.0 / 32.0, max_grad_norm=1e5),
     dict(need_aux_truncated=False, need_aux_off_after_on=True, need_aux_all_zero=True)),
    # Variants (docs/variants.md): the ablation switches together, then per-group selection with a
    # faster threshold EMA.
    ("variant_switches",
     dict(arch="matryoshka", d_in=16, d_sae=64, k=4, batch=32, steps=10, lr=1e-3,
          group_sizes=[8, 24, 32], dead_after_batches=2, aux_k=6, aux_coef=1.0 / 32.0, max_grad_norm=1e5,
          prefix_weights=[2.0, 0.5, 1.0], bdec_loss_term=False, stop_gradient_groups=True, aux_detach=True),
     dict(need_aux_truncated=True)),
    ("variant_group_k",
     dict(arch="matryoshka", d_in=16, d_sae=64, k=4, batch=32, steps=10, lr=1e-3,
          group_sizes=[8, 24, 32], dead_after_batches=2, aux_k=512, aux_coef=1.0 / 32.0, max_grad_norm=1e5,
          group_k=[1, 2, 2], threshold_rate=0.05, encoder_bias=True),
     dict(need_aux_truncated=False)),
    # ReLU + adaptive L1 (Nabeshima's baseline) with nested groups; no AuxK, threshold stays 0.
    ("variant_relu_l1",
     dict(arch="relu_l1", d_in=16, d_sae=64, k=4, batch=32, steps=10, lr=1e-3,
          group_sizes=[8, 24, 32], dead_after_batches=2, aux_k=512, aux_coef=1.0 / 32.0, max_grad_norm=1e5,
          l1_coef=0.05, l1_adapt_rate=0.05),
     dict(need_aux_truncated=False, no_aux=True)),
]


def make_data(cfg, rng):
    """Sparse combination of random unit directions + noise + a constant offset: (steps*B, d)."""
    d, n = cfg["d_in"], cfg["steps"] * cfg["batch"]
    n_feat = 3 * d
    dirs = rng.standard_normal((n_feat, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    active = rng.random((n, n_feat)) < 3.0 / n_feat          # ~3 features per row
    mags = rng.exponential(1.0, (n, n_feat)) * active
    offset = rng.standard_normal(d)
    offset *= 1.5 / np.linalg.norm(offset)
    x = mags @ dirs + offset + 0.05 * rng.standard_normal((n, d))
    return x.astype(np.float32)


def make_init(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    p = ref.init_params(cfg, generator=g)
    p["b_dec"] = (0.05 * torch.randn(cfg["d_in"], generator=g)).float()
    if cfg["encoder_bias"]:
        p["b_enc"] = (0.02 * torch.randn(cfg["d_sae"], generator=g)).float()
    return p


def run_case(cfg, seed):
    """Train; return (records, init, x, after list, grad1, diagnostics) or raise ValueError."""
    rng = np.random.default_rng(seed)
    x = make_data(cfg, rng)
    init = make_init(cfg, seed)
    model = ref.MatryoshkaSAE(cfg, init)
    opt = ref.make_optimizer(model)
    B = cfg["batch"]
    records, after, diag = [], [], []
    grad1 = None
    for t in range(1, cfg["steps"] + 1):
        xb = torch.from_numpy(x[(t - 1) * B:t * B])
        rec, raw, out = ref.train_step(model, opt, xb)
        main_gap, aux_gap = ref.selection_margins(out["acts"], cfg, out["aux_info"])
        if cfg["arch"] == "relu_l1" and float(out["pre"].detach().abs().min()) < MIN_PRE:
            raise ValueError("step %d: a pre-activation is within %g of the relu kink" % (t, MIN_PRE))
        if main_gap < MIN_GAP:
            raise ValueError("step %d: TopK cut gap %.2e" % (t, main_gap))
        if aux_gap < MIN_GAP:
            raise ValueError("step %d: AuxK cut gap %.2e" % (t, aux_gap))
        k_aux = None
        if out["aux_info"] is not None:
            k_aux = out["aux_info"]["k_aux"]
            ad = out["aux_info"]["acts_dead"]
            # the "a is all zero" decision and the selected values must not hinge on a relu kink
            dead = out["n_inactive"] >= cfg["dead_after_batches"]
            pre_dead = out["pre"].detach()[:, dead]
            near = (pre_dead.abs() < MIN_PRE).any()
            if bool(near):
                raise ValueError("step %d: a dead latent's pre-activation is within %g of 0" % (t, MIN_PRE))
            if not rec["aux_active"] and float(ad.max()) > 0:
                raise ValueError("inconsistent aux state")
        if t == 1:
            grad1 = {n: v.numpy().astype(np.float32).copy() for n, v in raw.items()}
        records.append(rec)
        after.append(model.state_numpy())
        diag.append({"main_gap": main_gap, "aux_gap": aux_gap, "k_aux": k_aux})
    return records, {n: v.numpy().astype(np.float32).copy() for n, v in init.items()}, x, after, grad1, diag


def meets(cfg, req, records, diag):
    aux = [r["aux_active"] for r in records]
    if req.get("no_aux"):
        return None if not any(aux) else "AuxK active"
    if not any(aux) or all(aux):
        return "AuxK active in %d/%d steps" % (sum(aux), len(aux))
    if req.get("need_aux_truncated"):
        if not any(r["aux_active"] and cfg["aux_k"] < r["n_dead"] for r in records):
            return "aux_k < n_dead never happens with AuxK active"
    if req.get("need_aux_off_after_on"):
        first = aux.index(True)
        if all(aux[first:]):
            return "AuxK never switches off after switching on"
    if req.get("need_aux_all_zero"):
        if not any(r["n_dead"] > 0 and not r["aux_active"] for r in records):
            return "no step with dead latents but an all-zero AuxK reconstruction"
    if req.get("need_clip_every_step"):
        if not all(r["grad_norm"] > cfg["max_grad_norm"] * 1.01 for r in records):
            return "clipping not active in every step"
    return None


def save(path, name, arr):
    np.save(os.path.join(path, name + ".npy"), np.ascontiguousarray(arr, dtype=np.float32))


def write_case(out_dir, name, cfg, init, x, records, after, grad1):
    path = os.path.join(out_dir, name)
    os.makedirs(path, exist_ok=True)
    for f in os.listdir(path):
        if f.endswith(".npy") or f == "fixture.json":
            os.remove(os.path.join(path, f))
    with open(os.path.join(path, "fixture.json"), "w") as f:
        json.dump({"config": cfg, "steps": records}, f, indent=1)
        f.write("\n")
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        save(path, "init_" + n, init[n])
        save(path, "grad_1_" + n, grad1[n])
        for t, p in enumerate(after, start=1):
            save(path, "after_%d_%s" % (t, n), p[n])
    save(path, "x", x)
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="write PyTorch fixtures for test_torch_fixture")
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures"))
    ap.add_argument("--only", nargs="*", default=None, help="case names to (re)write")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # deterministic reductions
    total = 0
    for name, kw, req in CASES:
        if args.only and name not in args.only:
            continue
        kw = dict(kw)
        steps = kw.pop("steps")
        cfg = ref.make_config(steps=steps, **kw)
        for seed in range(MAX_SEEDS):
            try:
                records, init, x, after, grad1, diag = run_case(cfg, seed)
            except ValueError as e:
                print("  %s seed %d rejected: %s" % (name, seed, e))
                continue
            why = meets(cfg, req, records, diag)
            if why is None:
                break
            print("  %s seed %d rejected: %s" % (name, seed, why))
        else:
            raise SystemExit("%s: no acceptable seed in %d tries" % (name, MAX_SEEDS))
        size = write_case(args.out, name, cfg, init, x, records, after, grad1)
        total += size
        print("%s (seed %d, %s, G=%d, groups %s, k=%d, B=%d, aux_k=%d, dead_after=%d, "
              "max_grad_norm=%g, encoder_bias=%s): %d bytes"
              % (name, seed, cfg["arch"], len(cfg["group_sizes"]), cfg["group_sizes"], cfg["k"],
                 cfg["batch"], cfg["aux_k"], cfg["dead_after_batches"], cfg["max_grad_norm"],
                 cfg["encoder_bias"], size))
        print("   t  loss       l_aux      aux  n_dead k_aux  grad_norm  clip  threshold  gap_topk  gap_aux")
        for t, (r, dg) in enumerate(zip(records, diag), start=1):
            print("  %2d  %.6f  %.3e  %-4s %5d  %5s  %.4e  %-4s  %.6f  %.2e  %s"
                  % (t, r["loss"], r["l_aux"], "yes" if r["aux_active"] else "no", r["n_dead"],
                     "-" if dg["k_aux"] is None else str(dg["k_aux"]), r["grad_norm"],
                     "yes" if r["grad_norm"] > cfg["max_grad_norm"] else "no", r["threshold"],
                     dg["main_gap"], "-" if math.isinf(dg["aux_gap"]) else "%.2e" % dg["aux_gap"]))
        print("  AuxK active in steps: %s"
              % [t for t, r in enumerate(records, start=1) if r["aux_active"]])
        print("  dead latents but all-zero AuxK reconstruction in steps: %s"
              % [t for t, r in enumerate(records, start=1) if r["n_dead"] > 0 and not r["aux_active"]])
        print("  aux_k < n_dead (truncated) in steps: %s"
              % [t for t, r in enumerate(records, start=1) if r["aux_active"] and cfg["aux_k"] < r["n_dead"]])
    print("total fixture bytes: %d" % total)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
