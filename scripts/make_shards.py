#!/usr/bin/env -S /usr/bin/python3
"""Writes a directory of float16 .npy activation shards for loader/scale measurements (docs/data.md).

    scripts/make_shards.py OUT_DIR --total-gb 20 --d 768 --shard-mb 512 [--seed 0]

Rows are synthetic "activations": a sparse sum of random unit directions plus noise and an offset
(roughly the statistics an SAE sees), generated once as a base block of 64 MiB and written shifted and
sign-flipped per shard, so generating 20 GB is bound by the disk rather than by the random number
generator. Each shard is a valid .npy (numpy.lib.format header, C order, '<f2')."""
import argparse
import os
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--total-gb", type=float, default=20.0)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--shard-mb", type=float, default=512.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    rng = np.random.default_rng(a.seed)
    row_bytes = 2 * a.d
    base_rows = max(1, (64 << 20) // row_bytes)
    n_feat = 4 * a.d
    feats = rng.standard_normal((n_feat, a.d)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    base = 0.3 * rng.standard_normal((base_rows, a.d)).astype(np.float32) + 0.5
    for r0 in range(0, base_rows, 4096):
        r1 = min(base_rows, r0 + 4096)
        ids = rng.integers(0, n_feat, size=(r1 - r0, 16))
        mags = rng.exponential(2.0, size=(r1 - r0, 16)).astype(np.float32)
        base[r0:r1] += np.einsum("rk,rkd->rd", mags, feats[ids])
    base = base.astype(np.float16)

    shard_rows = max(1, int(a.shard_mb * (1 << 20)) // row_bytes)
    total_rows = int(a.total_gb * 1e9) // row_bytes
    os.makedirs(a.out, exist_ok=True)
    written, i = 0, 0
    while written < total_rows:
        rows = min(shard_rows, total_rows - written)
        path = os.path.join(a.out, f"shard{i:05d}.npy")
        arr = np.lib.format.open_memmap(path + ".tmp", mode="w+", dtype="<f2", shape=(rows, a.d))
        done = 0
        while done < rows:
            n = min(base_rows, rows - done)
            shift = (i * 7919 + done) % base_rows
            block = np.roll(base, -shift, axis=0)[:n]
            arr[done:done + n] = block if (i + done // base_rows) % 2 == 0 else -block
            done += n
        arr.flush()
        del arr
        os.replace(path + ".tmp", path)
        written += rows
        i += 1
        print(f"{path}: {rows} rows ({written * row_bytes / 1e9:.1f} / {total_rows * row_bytes / 1e9:.1f} GB)",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
