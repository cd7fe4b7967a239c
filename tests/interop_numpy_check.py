#!/usr/bin/env -S /usr/bin/python3
"""ctest `interop_numpy`: scripts/numpy_sae.py (numpy only, its own safetensors parser) agrees with
`msae eval` on the same data, for an SAE msae trained and for SAELens jumprelu/standard/topk and
sparsify directories written here to their documented layouts (float32 and bfloat16 files).

usage: interop_numpy_check.py MSAE_BINARY SOURCE_DIR
Agreement tolerances are numpy_sae.py's (--compare): 1e-4 relative on mse/fvu, 1e-3 on l0 and fractions.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

MSAE, SRC = sys.argv[1], sys.argv[2]
SCRIPT = os.path.join(SRC, "scripts", "numpy_sae.py")


def run(cmd, out=None):
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"FAILED ({res.returncode}): {' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    if out:
        with open(out, "w") as f:
            f.write(res.stdout)
    return res.stdout


def write_safetensors(path, tensors, dtype="F32"):
    """tensors: dict name -> float array; written in name order like safetensors' serializer."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float32)
        raw = a.astype("<f4").tobytes() if dtype == "F32" else (a.view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def bf16_round(a):
    return ((a.astype(np.float32).view(np.uint32) + 0x8000) & 0xFFFF0000).view(np.float32)


def check(name, sae_dir, data):
    ev = os.path.join(os.path.dirname(data), name + "_eval.json")
    run([MSAE, "eval", "--json", "--sae", sae_dir, "--data", data, "--threads", "2"], out=ev)
    mine = json.loads(run(["/usr/bin/python3", SCRIPT, "--sae", sae_dir, "--data", data, "--compare", ev]))
    theirs = json.load(open(ev))
    a = mine["agreement"]
    print(f"{name:18s} format {theirs.get('format', '?'):17s} fvu msae {theirs['whole']['fvu']:.6f} numpy "
          f"{mine['whole']['fvu']:.6f}  l0 {theirs['whole']['l0']:.4f} / {mine['whole']['l0']:.4f}  "
          f"max rel err mse/fvu {a['max_rel_error_mse_fvu']:.2e}  max abs err l0/fractions {a['max_abs_error_l0_fractions']:.2e}")
    assert theirs["whole"]["l0"] > 0, name + ": nothing fired; the check would be vacuous"


def main():
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="msae_interop_") as tmp:
        # 1. An SAE msae trains (Matryoshka, 5 groups) on its synthetic data.
        own = os.path.join(tmp, "own")
        run([MSAE, "train", "--synthetic", "--steps", "150", "--batch", "512", "--d-sae", "128", "--k", "4",
             "--out", own, "--threads", "2", "--log-every", "50"])
        d = json.load(open(os.path.join(own, "cfg.json")))["d_in"]
        x = rng.standard_normal((3000, d)).astype(np.float32) * 0.5
        data = os.path.join(tmp, "x.npy")
        np.save(data, x)
        check("msae-matryoshka", own, data)

        # 2. Other trainers' layouts, random weights (d = 24, D = 96), data with an offset so b_dec matters.
        d, D = 24, 96
        x = (rng.standard_normal((2500, d)) + 0.3).astype(np.float32)
        data = os.path.join(tmp, "y.npy")
        np.save(data, x)
        W_enc = rng.standard_normal((d, D)).astype(np.float32) / np.sqrt(d)
        W_dec = rng.standard_normal((D, d)).astype(np.float32) / np.sqrt(D) * 2
        b_enc = (rng.standard_normal(D) * 0.1).astype(np.float32)
        b_dec = (rng.standard_normal(d) * 0.2).astype(np.float32)
        thr = np.abs(rng.standard_normal(D) * 0.5).astype(np.float32)
        base = {"d_in": d, "d_sae": D, "dtype": "float32", "device": "cpu", "normalize_activations": "none",
                "reshape_activations": "none", "meta": {"model_name": "gpt2", "hook_name": "blocks.6.hook_resid_post"}}
        cases = {
            "saelens-jumprelu": ({**base, "architecture": "jumprelu", "apply_b_dec_to_input": False},
                                 {"threshold": thr}, "F32"),
            "saelens-standard": ({**base, "architecture": "standard", "apply_b_dec_to_input": True}, {}, "F32"),
            "saelens-topk": ({**base, "architecture": "topk", "apply_b_dec_to_input": True, "k": 8}, {}, "BF16"),
            # SAELens 6 TopKSAE with rescale_acts_by_decoder_norm (W_dec rows of random norms around 1).
            "saelens-topk-rescale": ({**base, "architecture": "topk", "apply_b_dec_to_input": True, "k": 8,
                                      "rescale_acts_by_decoder_norm": True}, {}, "F32"),
            "saelens5-topk": ({**base, "architecture": "standard", "apply_b_dec_to_input": True,
                               "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 6}}, {}, "F32"),
        }
        for name, (cfg, extra, dtype) in cases.items():
            sd = os.path.join(tmp, name)
            os.makedirs(sd)
            write_safetensors(os.path.join(sd, "sae_weights.safetensors"),
                              {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec, **extra}, dtype)
            json.dump(cfg, open(os.path.join(sd, "cfg.json"), "w"))
            check(name, sd, data)
        # sparsify: layers.6/ of a multi-hookpoint save, bfloat16 like sparsify's bf16 runs.
        sd = os.path.join(tmp, "sparsify", "layers.6")
        os.makedirs(sd)
        write_safetensors(os.path.join(sd, "sae.safetensors"),
                          {"encoder.weight": W_enc.T, "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec}, "BF16")
        json.dump({"activation": "topk", "expansion_factor": 4, "normalize_decoder": True, "num_latents": 0, "k": 8,
                   "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": d},
                  open(os.path.join(sd, "cfg.json"), "w"))
        check("sparsify-topk", sd, data)
    print("interop_numpy: all agree")


if __name__ == "__main__":
    main()
