#!/usr/bin/env -S /usr/bin/python3
"""Train the tiny GPT-2-architecture model shipped in models/tiny-gpt2 (docs/lm.md).

    /usr/bin/python3 scripts/train_tiny_lm.py --train train.bin --heldout heldout.bin --out models/tiny-gpt2
        [--minutes 30] [--n-layer 4] [--n-embd 64] [--n-head 4] [--ctx 128] [--batch 8] [--seed 0]

train.bin / heldout.bin: uint16 little-endian GPT-2 token ids (scripts/tokenize_corpus.js). The model
is scripts/gpt2_torch.py's (the oracle the C++ forward is tested against), trained with AdamW on random
windows of --ctx tokens for a fixed wall-clock budget (saved every --save-every-minutes too), then saved as
float16 safetensors in the GPT-2
layout + config.json + training.json (steps, tokens, held-out loss). scripts/make_tiny_lm.sh runs the
whole recipe (corpus download with npm, tokenization, training).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_torch as g  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--heldout-windows", type=int, default=200)
    ap.add_argument("--neg-sample", type=int, default=2048)
    ap.add_argument("--min-count", type=int, default=8)
    ap.add_argument("--skip-f32-heldout", action="store_true", help="report the held-out loss of the F16 weights only")
    ap.add_argument("--save-every-minutes", type=float, default=5.0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train = torch.from_numpy(np.fromfile(args.train, dtype="<u2").astype(np.int64))
    held = torch.from_numpy(np.fromfile(args.heldout, dtype="<u2").astype(np.int64))
    cfg = g.Config(vocab_size=50257, n_positions=args.ctx, n_embd=args.n_embd, n_layer=args.n_layer,
                   n_head=args.n_head)
    P = g.init_params(cfg, gen)
    decay = [p for n, p in P.items() if p.dim() == 2]
    no_decay = [p for n, p in P.items() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    T = args.ctx
    # Softmax over the tokens that occur at least --min-count times in the training text plus a fresh
    # sample of --neg-sample others (always including the batch's rarer targets)
    # each step, whose logits get log(n_others / n_sample) added (sampled softmax): the unembedding is
    # the bulk of the cost with the GPT-2 vocabulary, and most of it never occurs in this corpus. The
    # sampled term still pushes the unseen tokens' logits down, so the full-vocabulary loss (reported
    # at the end, and what msae computes) stays close to the training loss.
    counts = torch.bincount(train, minlength=cfg.vocab_size)
    seen = counts >= args.min_count
    active = seen.nonzero().squeeze(1)
    others = (~seen).nonzero().squeeze(1)
    remap = torch.full((cfg.vocab_size,), -1, dtype=torch.int64)
    remap[active] = torch.arange(len(active))
    n_neg = min(args.neg_sample, len(others))
    neg_corr = math.log(len(others) / n_neg) if n_neg > 0 else 0.0
    print(f"{len(active)} distinct training tokens; sampled softmax over {n_neg} of the other {len(others)}",
          file=sys.stderr, flush=True)
    budget = args.minutes * 60.0
    warmup = 20
    t0 = time.time()
    step = 0
    ema = None
    last_save = time.time()
    while True:
        el = time.time() - t0
        if el >= budget:
            break
        # linear warmup, then cosine decay over the wall-clock budget to 10% of lr
        frac = min(1.0, el / budget)
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for grp in opt.param_groups:
            grp["lr"] = lr
        starts = torch.randint(0, len(train) - T - 1, (args.batch,), generator=gen)
        x = torch.stack([train[s:s + T] for s in starts])
        y = torch.stack([train[s + 1:s + T + 1] for s in starts])
        rare = y[remap[y] < 0].unique()
        neg = others[torch.randperm(len(others), generator=gen)[:n_neg]]
        neg = torch.cat([rare, neg[~torch.isin(neg, rare)]])
        logits = g.forward(cfg, P, x, out_rows=torch.cat([active, neg]))
        if len(neg) > 0:
            logits = torch.cat([logits[..., :len(active)], logits[..., len(active):] + neg_corr], dim=-1)
        cols = torch.cat([active, neg])
        pos = torch.full((cfg.vocab_size,), -1, dtype=torch.int64)
        pos[cols] = torch.arange(len(cols))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), pos[y].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(P.values()), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if time.time() - last_save > args.save_every_minutes * 60:
            g.save_model(args.out, cfg, {k: v.detach() for k, v in P.items()}, dtype="F16")
            last_save = time.time()
        if step % 10 == 0:
            print(f"step {step} t={el:.0f}s lr={lr:.2e} loss(ema)={ema:.3f} "
                  f"tok/s={step * args.batch * T / max(el, 1e-9):.0f}", file=sys.stderr, flush=True)

    # Held-out loss on non-overlapping windows (float32 and after the float16 round trip).
    def heldout_loss(Pe):
        n = min(args.heldout_windows, (len(held) - 1) // T)
        tot, cnt = 0.0, 0
        with torch.no_grad():
            for b in range(0, n, 16):
                idx = range(b, min(n, b + 16))
                x = torch.stack([held[i * T:(i + 1) * T] for i in idx])
                y = torch.stack([held[i * T + 1:(i + 1) * T + 1] for i in idx])
                lg = g.forward(cfg, Pe, x)
                tot += torch.nn.functional.cross_entropy(lg.reshape(-1, cfg.vocab_size), y.reshape(-1),
                                                         reduction="sum").item()
                cnt += y.numel()
        return tot / cnt, cnt

    P32 = {k: v.detach() for k, v in P.items()}
    g.save_model(args.out, cfg, P32, dtype="F16")  # before the held-out pass, which is slow on a busy machine
    P16 = {k: v.half().float() for k, v in P32.items()}
    l16, cnt = heldout_loss(P16)
    l32 = l16 if args.skip_f32_heldout else heldout_loss(P32)[0]
    info = {"steps": step, "tokens": step * args.batch * T, "seconds": round(time.time() - t0, 1),
            "batch": args.batch, "ctx": T, "lr": args.lr, "seed": args.seed,
            "train_tokens_available": len(train), "heldout_tokens": cnt,
            "heldout_loss_f32": round(l32, 4), "heldout_loss_f16": round(l16, 4),
            "n_params": sum(v.numel() for v in P32.values()), "torch": torch.__version__}
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    print(json.dumps(info), flush=True)


if __name__ == "__main__":
    main()
