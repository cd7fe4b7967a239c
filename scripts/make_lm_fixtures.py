#!/usr/bin/env -S /usr/bin/python3
"""Write the GPT-2 forward fixtures of tests/test_lm.cpp into tests/fixtures/lm/ (docs/lm.md).

    /usr/bin/python3 scripts/make_lm_fixtures.py [--out tests/fixtures/lm]

A random-weight small GPT-2 (scripts/gpt2_torch.py; vocab 97, 24 positions, d 32, 3 layers, 4 heads,
layer_norm_epsilon 1e-5), with biases and LayerNorm parameters randomized too so that a mix-up of any
two tensors changes the logits. Files:
  model/            model.safetensors (F32) + config.json, the GPT-2 layout
  model_f16/        the same weights stored as F16 (loader's dtype conversion)
  ids.npy           (2, 20) token ids as float32 (two sequences)
  logits.npy        (2, 20, 97) logits of `model`
  logits_f16.npy    (2, 20, 97) logits of `model_f16` (its weights rounded to half)
  hook_<L>_<site>.npy  (2, 20, 32) activations at every hook of layer 1 (read)
  splice_logits.npy (2, 20, 97) logits when layer 1's resid_pre is replaced by 0.5 * x + 0.1 (write)
  zero_mlp_logits.npy (2, 20, 97) logits when layer 2's mlp_out is zeroed
Everything is computed in float64 and stored as float32, so the C++ float32 forward differs from it by
its own round-off only.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_torch as g  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "lm"))
    args = ap.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)
    cfg = g.Config(vocab_size=97, n_positions=24, n_embd=32, n_layer=3, n_head=4, layer_norm_epsilon=1e-5)
    gen = torch.Generator().manual_seed(1234)
    P = {}
    for name, shape in g.param_shapes(cfg).items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            t = 1.0 + 0.2 * torch.randn(shape, generator=gen)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=gen)
        elif name == "wpe.weight":
            t = 0.3 * torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / np.sqrt(shape[0])
        P[name] = t.float()
    g.save_model(os.path.join(out, "model"), cfg, P, dtype="F32")
    g.save_model(os.path.join(out, "model_f16"), cfg, P, dtype="F16")
    ids = torch.randint(0, cfg.vocab_size, (2, 20), generator=gen)
    np.save(os.path.join(out, "ids.npy"), ids.numpy().astype(np.float32))

    P64 = {k: v.double() for k, v in P.items()}
    P16 = {k: v.half().double() for k, v in P.items()}
    with torch.no_grad():
        hooks = {}
        logits = g.forward(cfg, P64, ids, hooks=hooks)
        np.save(os.path.join(out, "logits.npy"), logits.float().numpy())
        np.save(os.path.join(out, "logits_f16.npy"), g.forward(cfg, P16, ids).float().numpy())
        for site in ("resid_pre", "attn_out", "mlp_out", "resid_post"):
            np.save(os.path.join(out, f"hook_1_{site}.npy"), hooks[f"1.{site}"].float().numpy())
        sp = g.forward(cfg, P64, ids, splice={"1.resid_pre": lambda x: 0.5 * x + 0.1})
        np.save(os.path.join(out, "splice_logits.npy"), sp.float().numpy())
        z = g.forward(cfg, P64, ids, splice={"2.mlp_out": lambda x: torch.zeros_like(x)})
        np.save(os.path.join(out, "zero_mlp_logits.npy"), z.float().numpy())
    print(f"wrote {out}: logits max |.| {logits.abs().max().item():.3f}")


if __name__ == "__main__":
    main()
