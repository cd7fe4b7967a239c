#!/usr/bin/env -S /usr/bin/python3
"""A GPT-2 written from the architecture, in plain PyTorch: the oracle for src/lm (docs/lm.md).

It follows HF transformers' GPT2LMHeadModel (modeling_gpt2.py): learned token and position embeddings,
pre-LayerNorm blocks `x += attn(ln_1(x)); x += mlp(ln_2(x))`, causal multi-head attention with
scores scaled by 1/sqrt(head_dim), a GELU MLP of width 4*n_embd using the tanh approximation
("gelu_new"), a final LayerNorm ln_f and an unembedding tied to wte. Linear layers use HF's Conv1D
layout: weight (in, out), y = x @ W + b. c_attn's output columns are [q | k | v], each split into heads
of head_dim consecutive columns.

Hooks (the names msae uses): for block L, resid_pre = the block's input, attn_out = the attention
branch's output (after c_proj), mlp_out = the MLP branch's output, resid_post = the block's output.

Also: a safetensors reader/writer (F32/F16; the `safetensors` package is not in Debian) and a
config.json writer, both in the layout of an HF `gpt2` checkpoint.

Used by scripts/make_lm_fixtures.py and scripts/train_tiny_lm.py.
"""
import json
import math
import struct

import numpy as np
import torch
import torch.nn.functional as F


class Config:
    def __init__(self, vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                 layer_norm_epsilon=1e-5):
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.layer_norm_epsilon = layer_norm_epsilon

    def to_hf(self):
        """The fields of an HF GPT2Config.json that msae reads, plus the ones HF needs to load it."""
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "activation_function": "gelu_new", "vocab_size": self.vocab_size,
            "n_positions": self.n_positions, "n_ctx": self.n_positions, "n_embd": self.n_embd,
            "n_layer": self.n_layer, "n_head": self.n_head,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": True,
            "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
        }


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def param_shapes(cfg):
    d, V = cfg.n_embd, cfg.vocab_size
    shapes = {"wte.weight": (V, d), "wpe.weight": (cfg.n_positions, d)}
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
            p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (d, 4 * d), p + "mlp.c_fc.bias": (4 * d,),
            p + "mlp.c_proj.weight": (4 * d, d), p + "mlp.c_proj.bias": (d,),
        })
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return shapes


def init_params(cfg, gen, std=0.02):
    """GPT-2's initialization (normal(0, 0.02), residual projections scaled by 1/sqrt(2*n_layer),
    LayerNorm weight 1 and bias 0, biases 0). Returns a dict name -> float32 tensor (requires_grad)."""
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            t = torch.ones(shape)
        elif name.endswith(".bias"):
            t = torch.zeros(shape)
        else:
            s = std / math.sqrt(2 * cfg.n_layer) if name.endswith("c_proj.weight") else std
            t = torch.randn(shape, generator=gen) * s
        params[name] = t.float().requires_grad_(True)
    return params


def forward(cfg, P, ids, hooks=None, splice=None, out_rows=None):
    """ids (T,) or (N, T) int64 -> logits (N, T, V) float32 (or (N, T, len(out_rows)) when out_rows, a
    1-D index tensor, restricts the unembedding to those vocabulary rows: used by the training script).

    hooks: dict to fill with name -> (N, T, d) tensors, names "L.resid_pre", "L.attn_out", "L.mlp_out",
    "L.resid_post". splice: dict name -> function(tensor) -> tensor applied at that hook (write)."""
    if ids.dim() == 1:
        ids = ids[None]
    N, T = ids.shape
    d, H = cfg.n_embd, cfg.n_head
    hd = d // H
    eps = cfg.layer_norm_epsilon

    def hook(name, x):
        if splice is not None and name in splice:
            x = splice[name](x)
        if hooks is not None:
            hooks[name] = x
        return x

    x = P["wte.weight"][ids] + P["wpe.weight"][:T][None]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        x = hook(f"{i}.resid_pre", x)
        h = F.layer_norm(x, (d,), P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps)
        qkv = h @ P[p + "attn.c_attn.weight"] + P[p + "attn.c_attn.bias"]       # (N, T, 3d)
        q, k, v = qkv.split(d, dim=2)
        q = q.view(N, T, H, hd).transpose(1, 2)                                   # (N, H, T, hd)
        k = k.view(N, T, H, hd).transpose(1, 2)
        v = v.view(N, T, H, hd).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)                          # (N, H, T, T)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        a = (att @ v).transpose(1, 2).reshape(N, T, d)
        a = a @ P[p + "attn.c_proj.weight"] + P[p + "attn.c_proj.bias"]
        a = hook(f"{i}.attn_out", a)
        x = x + a
        h = F.layer_norm(x, (d,), P[p + "ln_2.weight"], P[p + "ln_2.bias"], eps)
        m = gelu_new(h @ P[p + "mlp.c_fc.weight"] + P[p + "mlp.c_fc.bias"])
        m = m @ P[p + "mlp.c_proj.weight"] + P[p + "mlp.c_proj.bias"]
        m = hook(f"{i}.mlp_out", m)
        x = x + m
        x = hook(f"{i}.resid_post", x)
    x = F.layer_norm(x, (d,), P["ln_f.weight"], P["ln_f.bias"], eps)
    W = P["wte.weight"] if out_rows is None else P["wte.weight"][out_rows]
    return x @ W.t()


# ---- safetensors (no Debian package): the format is an 8-byte LE header length, a JSON header, data ----

_DT = {"F32": (np.float32, 4), "F16": (np.float16, 2)}


def save_safetensors(path, tensors, dtype="F32", metadata=None):
    """tensors: dict name -> array-like. Written in sorted name order, C order, little-endian."""
    np_dt = _DT[dtype][0]
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        a = (t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)).astype(np_dt)
        a = np.ascontiguousarray(a)
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = {"F32": np.float32, "F16": np.float16}[info["dtype"]]
        a, b = info["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype=dt).reshape(info["shape"]).astype(np.float32))
    return out


def save_model(dirpath, cfg, P, dtype="F32"):
    import os
    os.makedirs(dirpath, exist_ok=True)
    save_safetensors(os.path.join(dirpath, "model.safetensors"), P, dtype=dtype, metadata={"format": "pt"})
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(cfg.to_hf(), f, indent=2)
        f.write("\n")
