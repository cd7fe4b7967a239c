#!/usr/bin/env -S /usr/bin/python3
"""Independent check of msae's SAE directories: numpy only, with its own .safetensors parser.

Loads an SAE directory (msae output, SAELens jumprelu/standard/topk, or EleutherAI sparsify; reading only
cfg.json, the weights file and, when present, msae.json), runs the encoder and decoder in numpy (float64),
and prints the figures `msae eval` prints for the same data (docs/interop.md):

    scripts/numpy_sae.py --sae DIR --data X.npy [--rows N] [--bf16] [--compare EVAL.json]

--compare reads the JSON `msae eval --json --sae DIR --data X.npy` wrote and exits 1 unless every figure agrees
within the tolerances below (the measured agreement is far tighter; see docs/interop.md).

Forward pass (float64 throughout):
  u    = x * s                          s = msae.json data_normalization.scale (1 when absent)
  pre  = (u - b_dec * center) @ W_enc + b_enc * bias
  z    = jumprelu: relu(pre) * (pre > threshold_i)     (msae: one global threshold; SAELens standard: 0)
         topk:     the k largest positive entries of each row of pre
                   (SAELens rescale_acts_by_decoder_norm: of pre * |W_dec[i]|, and z / |W_dec[i]| is decoded)
  r    = (z @ W_dec + b_dec) / s        Matryoshka prefix g uses the latents with id < m_g only
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

# Tolerances of --compare. msae computes in float32 with a BLAS GEMM, this script in float64: the
# relative error of mse/fvu is float32 round-off (~1e-6 at these sizes); l0 and the per-latent
# frequencies can differ only where a pre-activation lies within round-off of its threshold, which
# --compare allows for up to 1 row in 1000 (reported by the agreement figures in docs/interop.md).
REL_TOL = 1e-4
L0_TOL = 1e-3


def fail(msg):
    sys.exit("numpy_sae.py: " + msg)


# ------------------------------------------------------------------------------------------------
# .safetensors: u64 LE header length N, N bytes of JSON {name: {dtype, shape, data_offsets}}, data.
# ------------------------------------------------------------------------------------------------
DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": (None, 2)}


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        fail(f"{path}: too short for a .safetensors file")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        fail(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if e["dtype"] not in DTYPES:
            fail(f"{path}: tensor {name}: unsupported dtype {e['dtype']}")
        np_dtype, size = DTYPES[e["dtype"]]
        begin, end = e["data_offsets"]
        shape = tuple(e["shape"])
        count = int(np.prod(shape)) if shape else 1
        if not 0 <= begin <= end <= len(data) or end - begin != count * size:
            fail(f"{path}: tensor {name}: data_offsets {begin, end} do not fit shape {shape}")
        raw = data[begin:end]
        if np_dtype is None:  # bfloat16: the high 16 bits of a float32
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np_dtype)
        out[name] = arr.astype(np.float64).reshape(shape)
    return out


def read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def default_group_sizes(D):
    sizes = [D // 16, D // 16, D // 8, D // 4, D // 2]
    sizes[-1] += D - sum(sizes)
    return sizes


def load_sae(d):
    """Returns a dict: W_enc (d, D), W_dec (D, d), b_enc (D), b_dec (d), rule, thresholds or k, center,
    bias, boundaries, scale, format."""
    cfg = read_json(os.path.join(d, "cfg.json")) or {}
    msae = read_json(os.path.join(d, "msae.json")) or {}
    sae = {"center": True, "bias": True, "scale": 1.0}
    norm = msae.get("data_normalization")
    if norm and norm.get("method", "none") != "none" and not norm.get("folded_into_weights", False):
        sae["scale"] = float(norm["scale"])
    if os.path.exists(os.path.join(d, "sae_weights.safetensors")):
        t = read_safetensors(os.path.join(d, "sae_weights.safetensors"))
        sae.update(W_enc=t["W_enc"], W_dec=t["W_dec"], b_dec=t["b_dec"])
        D = t["W_enc"].shape[1]
        sae["b_enc"] = t.get("b_enc", np.zeros(D))
        meta = cfg.get("metadata") or {}
        if "config" in msae or not cfg or "msae_arch" in meta or "matryoshka_group_sizes" in meta:
            c = msae.get("config", {})
            sae["format"] = "msae"
            sae["rule"] = "jumprelu"
            thr = t.get("threshold", np.zeros(1))
            sae["thresholds"] = np.broadcast_to(thr.reshape(-1), (D,)) if thr.size in (1, D) else fail("bad threshold")
            sae["bias"] = c.get("encoder_bias", False) if "config" in msae else True
            groups = c.get("group_sizes") or meta.get("matryoshka_group_sizes")
            arch = c.get("arch") or meta.get("msae_arch", "batchtopk")
            if not groups:
                groups = default_group_sizes(D) if arch == "matryoshka" else [D]
        else:
            arch = cfg.get("architecture", "standard")
            act = cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu"
            kw_k = (cfg.get("activation_fn_kwargs") or {}).get("k")
            if cfg.get("normalize_activations", "none") not in ("none", "expected_average_only_in"):
                fail("per-row normalize_activations is not supported")
            sae["center"] = bool(cfg.get("apply_b_dec_to_input", True))
            if arch == "jumprelu":
                sae.update(rule="jumprelu", thresholds=t["threshold"], format="saelens-jumprelu")
            elif arch == "standard" and act == "relu":
                sae.update(rule="jumprelu", thresholds=np.zeros(D), format="saelens-standard")
            elif arch == "topk" or (arch == "standard" and act == "topk"):
                k = cfg.get("k", kw_k) if arch == "topk" else kw_k
                sae.update(rule="topk", k=min(int(k), D), format="saelens-topk")
                if cfg.get("rescale_acts_by_decoder_norm"):  # SAELens TopKSAE (sae_lens/saes/topk_sae.py)
                    sae["dec_norm"] = np.linalg.norm(t["W_dec"].astype(np.float64), axis=1)
            else:
                fail(f"architecture {arch} / activation {act} is not supported")
            groups = [D]
    elif os.path.exists(os.path.join(d, "sae.safetensors")):
        t = read_safetensors(os.path.join(d, "sae.safetensors"))
        D = t["encoder.weight"].shape[0]
        sae.update(W_enc=t["encoder.weight"].T, b_enc=t["encoder.bias"], W_dec=t["W_dec"], b_dec=t["b_dec"],
                   rule="topk", k=min(int(cfg.get("k", 32)), D), format="sparsify-topk")
        if cfg.get("activation", "topk") != "topk" or cfg.get("transcode") or cfg.get("skip_connection"):
            fail("only plain topk sparsify SAEs are supported")
        groups = [D]
    else:
        fail(f"{d}: neither sae_weights.safetensors nor sae.safetensors")
    sae["boundaries"] = np.cumsum(groups)
    return sae


def encode(sae, x):
    u = x * sae["scale"]
    pre = (u - (sae["b_dec"] if sae["center"] else 0.0)) @ sae["W_enc"]
    if sae["bias"]:
        pre = pre + sae["b_enc"]
    if sae["rule"] == "jumprelu":
        return np.where((pre > 0) & (pre > sae["thresholds"][None, :]), pre, 0.0)
    if "dec_norm" in sae:
        pre = pre * sae["dec_norm"][None, :]
    k = sae["k"]
    z = np.zeros_like(pre)
    # Ties at the cut: the lower latent id is kept (msae's documented tie policy; stable sort).
    idx = np.argsort(-pre, axis=1, kind="stable")[:, :k]
    rows = np.arange(pre.shape[0])[:, None]
    z[rows, idx] = np.maximum(pre[rows, idx], 0.0)
    return z


def evaluate(sae, x, chunk=4096):
    N, d = x.shape
    bounds = sae["boundaries"]
    G = len(bounds)
    sq = np.zeros(G)
    active = np.zeros(G)
    fired = np.zeros(sae["W_dec"].shape[0])
    for r0 in range(0, N, chunk):
        xb = x[r0:r0 + chunk]
        z = encode(sae, xb)
        fired += (z > 0).sum(axis=0)
        lo = 0
        for g, m in enumerate(bounds):
            zg = z.copy()
            zg[:, m:] = 0.0
            if "dec_norm" in sae:
                zg = zg / sae["dec_norm"][None, :]
            r = (zg @ sae["W_dec"] + sae["b_dec"]) / sae["scale"]
            sq[g] += ((r - xb) ** 2).sum()
            active[g] += (z[:, lo:m] > 0).sum()
            lo = m
    total_var = ((x - x.mean(axis=0)) ** 2).sum()
    prefixes = []
    cum = 0.0
    for g in range(G):
        cum += active[g]
        fvu = sq[g] / total_var if total_var > 0 else 0.0
        prefixes.append({"group": g + 1, "latents": int(bounds[g]), "mse": sq[g] / (N * d), "fvu": fvu,
                         "explained_variance": 1.0 - fvu, "l0": cum / N})
    freq = fired / N
    return {"rows": N, "format": sae["format"], "whole": {k: v for k, v in prefixes[-1].items() if k != "group"},
            "prefixes": prefixes,
            "group_l0_share": [a / active.sum() if active.sum() > 0 else 0.0 for a in active],
            "dead_fraction": float((freq < 1e-7).mean()), "dense_fraction": float((freq > 0.1).mean())}


def compare(mine, theirs):
    """Returns (ok, worst relative error of mse/fvu, worst abs error of l0 and fractions)."""
    worst_rel, worst_abs, ok = 0.0, 0.0, True
    if len(mine["prefixes"]) != len(theirs["prefixes"]) or mine["rows"] != theirs["rows"]:
        return False, float("inf"), float("inf")
    for a, b in zip(mine["prefixes"], theirs["prefixes"]):
        if a["latents"] != b["latents"]:
            return False, float("inf"), float("inf")
        for key in ("mse", "fvu"):
            rel = abs(a[key] - b[key]) / max(abs(a[key]), 1e-30)
            worst_rel = max(worst_rel, rel)
            ok &= rel <= REL_TOL
        err = abs(a["l0"] - b["l0"])
        worst_abs = max(worst_abs, err)
        ok &= err <= L0_TOL * max(1.0, a["l0"])
    for key in ("dead_fraction", "dense_fraction"):
        err = abs(mine[key] - theirs[key])
        worst_abs = max(worst_abs, err)
        ok &= err <= L0_TOL
    for a, b in zip(mine["group_l0_share"], theirs["group_l0_share"]):
        err = abs(a - b)
        worst_abs = max(worst_abs, err)
        ok &= err <= L0_TOL
    return ok, worst_rel, worst_abs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sae", required=True, help="SAE directory")
    ap.add_argument("--data", required=True, help="(N, d) .npy, float32/float16 (uint16 with --bf16)")
    ap.add_argument("--rows", type=int, default=0, help="evaluate the first N rows (default all)")
    ap.add_argument("--bf16", action="store_true", help="the .npy holds bfloat16 bits as uint16")
    ap.add_argument("--compare", help="msae eval JSON to check against")
    args = ap.parse_args()
    x = np.load(args.data)
    if args.bf16:
        x = (x.astype(np.uint32) << 16).view(np.float32)
    x = x.astype(np.float64)
    if args.rows:
        x = x[:args.rows]
    sae = load_sae(args.sae)
    if x.ndim != 2 or x.shape[1] != sae["W_enc"].shape[0]:
        fail(f"data shape {x.shape} does not match the SAE's d_in {sae['W_enc'].shape[0]}")
    mine = evaluate(sae, x)
    if args.compare:
        with open(args.compare) as f:
            theirs = json.load(f)
        ok, rel, err = compare(mine, theirs)
        mine["agreement"] = {"max_rel_error_mse_fvu": rel, "max_abs_error_l0_fractions": err, "ok": bool(ok)}
    print(json.dumps(mine, indent=2))
    if args.compare and not mine["agreement"]["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
