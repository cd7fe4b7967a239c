#!/usr/bin/env -S /usr/bin/python3
"""Writes the committed seed corpora under fuzz/corpus/ (standard library only; run from anywhere).

fuzz/corpus/npy/          valid .npy files: float32/float16/uint16(bf16), versions 1.0/2.0/3.0, 1-D, 0 rows
fuzz/corpus/safetensors/  valid .safetensors: F32/F16/BF16, metadata, an empty tensor
fuzz/corpus/sae_dir/      inputs in fuzz_sae_dir.cpp's format: msae/SAELens jumprelu, standard, topk and
                          sparsify directories
"""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def npy(descr, shape, payload, version=(1, 0)):
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (
        descr, "(" + "".join("%d, " % s for s in shape).rstrip(" ") + ")" if shape else "()")
    lenfmt = "<H" if version[0] == 1 else "<I"
    prefix = 6 + 2 + struct.calcsize(lenfmt)
    pad = (64 - (prefix + len(header) + 1) % 64) % 64
    header = header + " " * pad + "\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(lenfmt, len(header)) + header.encode("latin1") + payload


def st(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    head, off, data = {}, 0, b""
    if metadata:
        head["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        head[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        data += raw
        off += len(raw)
    text = json.dumps(head, separators=(",", ":"))
    text += " " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text.encode() + data


def f32(vals):
    return struct.pack("<%df" % len(vals), *vals)


def f16(vals):
    return struct.pack("<%de" % len(vals), *vals)


def bf16(vals):
    return b"".join(struct.pack("<f", v)[2:] for v in vals)


def sae_input(flags, cfg, msae, weights):
    c = json.dumps(cfg).encode() if cfg is not None else b""
    m = json.dumps(msae).encode() if msae is not None else b""
    return bytes([flags]) + struct.pack("<H", len(c)) + c + struct.pack("<H", len(m)) + m + weights


def saelens_weights(d, D, threshold=None, extra_bias=True):
    w_enc = [((i * 7) % 5 - 2) * 0.25 for i in range(d * D)]
    w_dec = [((i * 3) % 7 - 3) * 0.2 for i in range(D * d)]
    t = [("W_enc", "F32", [d, D], f32(w_enc)), ("W_dec", "F32", [D, d], f32(w_dec)),
         ("b_dec", "F32", [d], f32([0.1] * d))]
    if extra_bias:
        t.append(("b_enc", "F32", [D], f32([-0.05] * D)))
    if threshold is not None:
        t.append(("threshold", "F32", [D], f32(threshold)))
    return st(t, {"format": "pt"})


def main():
    corpora = {"npy": {}, "safetensors": {}, "sae_dir": {}}
    n = corpora["npy"]
    n["f32_2x3"] = npy("<f4", [2, 3], f32([1, 2, 3, 4, 5, 6]))
    n["f16_3x2"] = npy("<f2", [3, 2], f16([1, -2, 0.5, 65504, 0, -0.0]))
    n["u2_bf16_2x2"] = npy("<u2", [2, 2], bf16([1, 2, 3, 4])) + b""  # last byte odd/even picks the bf16 mode
    n["f32_v2"] = npy("<f4", [1, 4], f32([0, 1, 2, 3]), version=(2, 0))
    n["f32_v3"] = npy("<f4", [2, 1], f32([7, 8]), version=(3, 0))
    n["f32_1d"] = npy("<f4", [3], f32([1, 2, 3]))
    n["f32_0rows"] = npy("<f4", [0, 5], b"")
    s = corpora["safetensors"]
    s["f32"] = st([("a", "F32", [2, 2], f32([1, 2, 3, 4])), ("b", "F32", [3], f32([5, 6, 7]))])
    s["f16_bf16_meta"] = st([("h", "F16", [2], f16([1, 2])), ("g", "BF16", [1, 2], bf16([3, 4]))],
                            {"format": "pt", "note": "seed"})
    s["empty"] = st([("e", "F32", [0, 4], b""), ("s", "F32", [], f32([1.5]))])
    a = corpora["sae_dir"]
    d, D = 4, 16
    msae_cfg = {"architecture": "jumprelu", "d_in": d, "d_sae": D, "apply_b_dec_to_input": True,
                "normalize_activations": "none",
                "metadata": {"msae_arch": "matryoshka", "msae_k": 2, "matryoshka_group_sizes": [4, 12]}}
    a["msae"] = sae_input(6, msae_cfg, {"config": {"arch": "matryoshka", "k": 2, "group_sizes": [4, 12]},
                                        "data_normalization": {"method": "expected-norm", "scale": 0.5}},
                          saelens_weights(d, D, [0.3] * D, extra_bias=True))
    a["saelens_jumprelu"] = sae_input(2, {"architecture": "jumprelu", "d_in": d, "d_sae": D,
                                          "apply_b_dec_to_input": False, "normalize_activations": "none"},
                                      None, saelens_weights(d, D, [0.1 * (i % 4) for i in range(D)]))
    a["saelens_standard"] = sae_input(2, {"architecture": "standard", "d_in": d, "d_sae": D,
                                          "apply_b_dec_to_input": True, "normalize_activations": "none"},
                                      None, saelens_weights(d, D))
    a["saelens_topk"] = sae_input(2, {"architecture": "topk", "d_in": d, "d_sae": D, "k": 3,
                                      "apply_b_dec_to_input": True, "normalize_activations": "none",
                                      "activation_fn_kwargs": {"k": 3}}, None, saelens_weights(d, D))
    a["sparsify"] = sae_input(3, {"expansion_factor": 4, "normalize_decoder": True, "num_latents": 0, "k": 3,
                                  "d_in": d},
                              None, st([("encoder.weight", "F32", [D, d], f32([(i % 5 - 2) * 0.3 for i in range(D * d)])),
                                        ("encoder.bias", "F32", [D], f32([0.01] * D)),
                                        ("W_dec", "F32", [D, d], f32([(i % 3 - 1) * 0.5 for i in range(D * d)])),
                                        ("b_dec", "F32", [d], f32([0.2] * d))]))
    for target, files in corpora.items():
        out = os.path.join(ROOT, target)
        os.makedirs(out, exist_ok=True)
        for name, blob in files.items():
            with open(os.path.join(out, name), "wb") as f:
                f.write(blob)


if __name__ == "__main__":
    main()
