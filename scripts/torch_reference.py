#!/usr/bin/python3
"""PyTorch oracle for the msae training step (see SPEC.md).

Written from SPEC.md and structured like the published Matryoshka / BatchTopK training code:
dense tensors, torch.topk on the flattened batch, per-group slices of W_dec, autograd for the
backward, torch.nn.utils.clip_grad_norm_, the decoder constraint, then torch.optim.Adam.

Run with Debian's interpreter (python3-torch 1.13, CPU):

    /usr/bin/python3 scripts/torch_reference.py --selftest
    /usr/bin/python3 scripts/torch_reference.py --demo

Only torch, numpy, json, argparse, os, sys and math are imported.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

ARCHS = ("matryoshka", "batchtopk", "topk", "relu_l1")

# Variant switches (docs/variants.md) and their SPEC defaults.
VARIANT_DEFAULTS = {
    "prefix_weights": None,         # (G) loss weight per prefix; None = all 1
    "bdec_loss_term": True,         # the mse(b_dec) term of L_rec
    "stop_gradient_groups": False,  # r_g = b_dec + sg(z_<g W_<g) + z_g W_g
    "aux_detach": False,            # AuxK residual e = sg(x - r_G)
    "group_k": None,                # (G) per-group BatchTopK / TopK; None = global selection
    "threshold_rate": 0.01,         # threshold EMA rate
    "l1_coef": 1.2,                 # relu_l1: initial L1 coefficient
    "l1_adapt_rate": 3e-4,          # relu_l1: coef *= 1 + rate if L0 >= k else 1 - rate, after each step
}


def default_group_sizes(D):
    """[D/16, D/16, D/8, D/4, D/2] (prefixes D/16, D/8, D/4, D/2, D)."""
    if D % 16 != 0:
        raise ValueError("default Matryoshka groups need D divisible by 16, got D=%d" % D)
    return [D // 16, D // 16, D // 8, D // 4, D // 2]


def make_config(d_in, d_sae, arch="matryoshka", k=32, group_sizes=None, batch=4096, steps=1,
                lr=3e-4, beta1=0.9, beta2=0.99, eps=1e-8, dead_after_batches=20, aux_k=512,
                aux_coef=1.0 / 32.0, max_grad_norm=1e5, encoder_bias=False, **variants):
    """Plain dict config (the same keys as fixture.json's "config").

    arch=matryoshka uses group_sizes (default [D/16, D/16, D/8, D/4, D/2]);
    arch=batchtopk and arch=topk are the same model with one group [D].
    """
    if arch not in ARCHS:
        raise ValueError("arch must be one of %s, got %r" % (ARCHS, arch))
    if arch == "relu_l1":
        encoder_bias = True  # the ReLU SAE trains b_enc
    if arch in ("matryoshka", "relu_l1"):
        gs = list(group_sizes) if group_sizes is not None else default_group_sizes(d_sae)
    else:
        if group_sizes is not None and list(group_sizes) != [d_sae]:
            raise ValueError("arch %s has a single group [D]" % arch)
        gs = [d_sae]
    if sum(gs) != d_sae or any(s <= 0 for s in gs):
        raise ValueError("group sizes %s must be positive and sum to D=%d" % (gs, d_sae))
    unknown = set(variants) - set(VARIANT_DEFAULTS)
    if unknown:
        raise ValueError("unknown variant options %s; known: %s" % (sorted(unknown), sorted(VARIANT_DEFAULTS)))
    cfg = {
        "arch": arch, "d_in": int(d_in), "d_sae": int(d_sae), "k": int(k),
        "group_sizes": [int(s) for s in gs], "batch": int(batch), "steps": int(steps),
        "lr": float(lr), "beta1": float(beta1), "beta2": float(beta2), "eps": float(eps),
        "dead_after_batches": int(dead_after_batches), "aux_k": int(aux_k),
        "aux_coef": float(aux_coef), "max_grad_norm": float(max_grad_norm),
        "encoder_bias": bool(encoder_bias),
    }
    # Variant switches (docs/variants.md) are written only when set, so SPEC configs stay as they were.
    for key, value in variants.items():
        if value != VARIANT_DEFAULTS[key]:
            cfg[key] = value
    return cfg


def variant(cfg, key):
    """A variant option of cfg, or its SPEC default."""
    return cfg.get(key, VARIANT_DEFAULTS[key])


def init_params(cfg, generator=None, dtype=torch.float32):
    """SPEC init: W_enc ~ kaiming_uniform_ on (d, D) (= U(-sqrt(6/D), sqrt(6/D))),
    W_dec = W_enc^T with unit-norm rows, b_enc = b_dec = 0."""
    d, D = cfg["d_in"], cfg["d_sae"]
    W_enc = torch.empty(d, D, dtype=dtype)
    if generator is None:
        torch.nn.init.kaiming_uniform_(W_enc)
    else:
        bound = math.sqrt(6.0 / D)  # what kaiming_uniform_ computes (fan_in = size(1), gain sqrt 2)
        W_enc.uniform_(-bound, bound, generator=generator)
    W_dec = W_enc.t().clone()
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
    return {"W_enc": W_enc, "b_enc": torch.zeros(D, dtype=dtype),
            "W_dec": W_dec.contiguous(), "b_dec": torch.zeros(d, dtype=dtype)}


# ----------------------------------------------------------------------------------------------
# Pure forward + loss. Used by the module (float32 training) and by the finite-difference test.
# ----------------------------------------------------------------------------------------------
def select(acts, cfg):
    """BatchTopK (flattened batch, k*B kept) or per-row TopK (k per row). Returns z (B, D) that keeps
    the autograd path through the kept entries of acts only (scatter of the topk values)."""
    B = acts.shape[0]
    k = cfg["k"]
    if cfg["arch"] == "relu_l1":
        return acts  # no selection: every positive entry is kept
    group_k = variant(cfg, "group_k")
    if group_k is not None:
        # per-group selection: each group's slice selected on its own, then concatenated
        parts, start = [], 0
        for s, kg in zip(cfg["group_sizes"], group_k):
            sub = dict(cfg, k=kg)
            sub.pop("group_k")
            parts.append(select(acts[:, start:start + s], sub))
            start += s
        return torch.cat(parts, dim=1)
    if cfg["arch"] == "topk":
        top = torch.topk(acts, k, dim=-1)
        return torch.zeros_like(acts).scatter(-1, top.indices, top.values)
    flat = acts.flatten()
    top = torch.topk(flat, k * B, dim=-1)
    return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)


def forward_loss(params, x, n_inactive, cfg, l1_coef=None):
    """One training forward pass (SPEC "Forward pass" + "Loss").

    params: dict W_enc (d, D), b_enc (D), W_dec (D, d), b_dec (d) (tensors, may require grad).
    x: (B, d). n_inactive: (D,) counters *before* this batch (not modified).
    Returns a dict with the loss terms, z, acts, the updated counters, and diagnostics.
    The threshold EMA is not applied here (it does not enter the loss); see threshold_update().
    """
    W_enc, b_enc, W_dec, b_dec = params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"]
    B = x.shape[0]
    # 1-2. centring, encoder, relu
    x_cent = x - b_dec
    pre = x_cent @ W_enc
    if cfg["encoder_bias"]:
        pre = pre + b_enc
    acts = torch.relu(pre)
    # 3. selection
    z = select(acts, cfg)
    # 5. Matryoshka prefix reconstructions r_g = b_dec + z[:, :m_g] @ W_dec[:m_g]
    recons = []
    r = b_dec
    start = 0
    stop_grad = variant(cfg, "stop_gradient_groups")
    prev = None  # sum of the earlier groups' decodes (no bias)
    for s in cfg["group_sizes"]:
        part = z[:, start:start + s] @ W_dec[start:start + s, :]
        if stop_grad:
            r = b_dec + part if prev is None else b_dec + prev.detach() + part
            prev = part if prev is None else prev + part
        else:
            r = part + r
        recons.append(r)
        start += s
    # 6. dead-latent counters, updated before the loss (AuxK uses the updated counters)
    with torch.no_grad():
        fired = (z > 0).any(dim=0)
        n_inactive_new = torch.where(fired, torch.zeros_like(n_inactive), n_inactive + 1)
        dead = n_inactive_new >= cfg["dead_after_batches"]
        n_dead = int(dead.sum().item())
    # Loss: L_rec = (t mse(b_dec) + sum_g w_g mse(r_g)) / (G + t); SPEC: t = 1, w_g = 1
    mse_bdec = (b_dec - x).pow(2).mean()
    t_bdec = 1 if variant(cfg, "bdec_loss_term") else 0
    weights = variant(cfg, "prefix_weights")
    total = mse_bdec if t_bdec else torch.zeros((), dtype=x.dtype)
    mse_prefix = []
    for g, r_g in enumerate(recons):
        m = (r_g - x).pow(2).mean()
        mse_prefix.append(m)
        total = total + (m if weights is None else weights[g] * m)
    l_rec = total / (len(recons) + t_bdec)
    # AuxK on dead latents; e = x - r_G is NOT detached
    # relu_l1: L_sparsity = coef * (1/B) sum_r sum_i c_i z_ri, c_i = (G - g(i)) / G (the L1 of each
    # prefix averaged over the prefixes, as Nabeshima's cumsum(...).mean())
    l_sparsity = torch.zeros((), dtype=x.dtype)
    if cfg["arch"] == "relu_l1":
        G = len(cfg["group_sizes"])
        c = torch.cat([torch.full((s,), (G - g) / G, dtype=x.dtype) for g, s in enumerate(cfg["group_sizes"])])
        l_sparsity = l1_coef * (z * c).sum() / x.shape[0]
    l_aux = torch.zeros((), dtype=x.dtype)
    aux_active = False
    aux_info = None
    if n_dead > 0 and cfg["arch"] != "relu_l1":
        e = x - recons[-1]
        if variant(cfg, "aux_detach"):
            e = e.detach()
        acts_dead = acts[:, dead]
        k_aux = min(cfg["aux_k"], n_dead)
        top = torch.topk(acts_dead, k_aux, dim=-1)
        acts_aux = torch.zeros_like(acts_dead).scatter(-1, top.indices, top.values)
        a = acts_aux @ W_dec[dead]
        aux_info = {"acts_dead": acts_dead.detach(), "k_aux": k_aux}
        if bool((a != 0).any()):
            l_aux = cfg["aux_coef"] * (a - e).pow(2).mean()
            aux_active = True
    loss = l_rec + l_aux + l_sparsity
    return {
        "loss": loss, "l_rec": l_rec, "l_aux": l_aux, "mse_bdec": mse_bdec, "mse_prefix": mse_prefix,
        "aux_active": aux_active, "n_dead": n_dead, "n_inactive": n_inactive_new,
        "z": z, "acts": acts, "pre": pre, "aux_info": aux_info,
    }


def threshold_update(threshold, z, rate=0.01):
    """threshold = 0.99 * threshold + 0.01 * min(positive entries of z), if any (float32 scalar)."""
    with torch.no_grad():
        pos = z > 0
        if bool(pos.any()):
            min_pos = z[pos].min()
            threshold = (1 - rate) * threshold + rate * min_pos
    return threshold


def selection_margins(acts, cfg, aux_info=None):
    """Relative gaps at the selection cuts (to keep fixtures away from ties).

    Returns (main_gap, aux_gap): main_gap is min over cuts of (v_k - v_{k+1}) / v_k where v_k is the
    last kept and v_{k+1} the first dropped relu value (whole batch for BatchTopK, every row for
    TopK); a cut at a zero value returns -inf (invalid). aux_gap is the same for the AuxK per-row cut
    among dead latents (only where the last kept aux value is positive; inf if no such cut).
    """
    if cfg["arch"] == "relu_l1":
        return math.inf, math.inf  # no cut; the relu kink is checked on pre by the caller
    group_k = variant(cfg, "group_k")
    if group_k is not None:  # the smallest gap over the groups' own cuts
        main, start = math.inf, 0
        for s, kg in zip(cfg["group_sizes"], group_k):
            sub = dict(cfg, k=kg)
            sub.pop("group_k")
            main = min(main, selection_margins(acts[:, start:start + s], sub)[0])
            start += s
        aux = selection_margins(acts, dict(cfg, group_k=None, k=1), aux_info)[1]
        return main, aux
    with torch.no_grad():
        a = acts.detach().double()
        B = a.shape[0]
        k = cfg["k"]
        if cfg["arch"] == "topk":
            if k >= a.shape[1]:
                main = math.inf
            else:
                v = torch.topk(a, k + 1, dim=-1).values
                last, nxt = v[:, k - 1], v[:, k]
                main = -math.inf if bool((last <= 0).any()) else float(((last - nxt) / last).min())
        else:
            flat = a.flatten()
            if k * B >= flat.numel():
                main = math.inf
            else:
                v = torch.topk(flat, k * B + 1).values
                last, nxt = v[k * B - 1], v[k * B]
                main = -math.inf if float(last) <= 0 else float((last - nxt) / last)
        aux = math.inf
        if aux_info is not None:
            ad = aux_info["acts_dead"].double()
            ka = aux_info["k_aux"]
            if ka < ad.shape[1]:
                v = torch.topk(ad, ka + 1, dim=-1).values
                last, nxt = v[:, ka - 1], v[:, ka]
                mask = last > 0
                if bool(mask.any()):
                    aux = float(((last[mask] - nxt[mask]) / last[mask]).min())
        return main, aux


# ----------------------------------------------------------------------------------------------
# The trainable module and one training step
# ----------------------------------------------------------------------------------------------
class MatryoshkaSAE(torch.nn.Module):
    """Dense float32 SAE with the published training semantics."""

    def __init__(self, cfg, params=None, dtype=torch.float32):
        super().__init__()
        self.cfg = cfg
        if params is None:
            params = init_params(cfg, dtype=dtype)
        self.W_enc = torch.nn.Parameter(params["W_enc"].clone().to(dtype))
        # b_enc is a trained parameter only with encoder_bias; otherwise it stays as loaded (zeros).
        self.b_enc = torch.nn.Parameter(params["b_enc"].clone().to(dtype),
                                        requires_grad=cfg["encoder_bias"])
        self.W_dec = torch.nn.Parameter(params["W_dec"].clone().to(dtype))
        self.b_dec = torch.nn.Parameter(params["b_dec"].clone().to(dtype))
        self.register_buffer("threshold", torch.tensor(0.0, dtype=dtype))
        self.register_buffer("num_batches_not_active", torch.zeros(cfg["d_sae"], dtype=dtype))
        self.l1_coef = variant(cfg, "l1_coef")  # relu_l1 (a Python float, adapted after each step)

    def params(self):
        return {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}

    def forward(self, x):
        out = forward_loss(self.params(), x, self.num_batches_not_active, self.cfg, self.l1_coef)
        # SPEC order: selection, threshold EMA, groups, dead counters, loss. Neither state
        # update depends on the loss, so applying them here is the same order.
        if self.cfg["arch"] != "relu_l1":  # a ReLU SAE infers with threshold 0
            self.threshold = threshold_update(self.threshold, out["z"], variant(self.cfg, "threshold_rate"))
        self.num_batches_not_active = out["n_inactive"]
        return out

    @torch.no_grad()
    def make_decoder_weights_and_grad_unit_norm(self):
        W_dec_normed = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        W_dec_grad_proj = (self.W_dec.grad * W_dec_normed).sum(-1, keepdim=True) * W_dec_normed
        self.W_dec.grad -= W_dec_grad_proj
        self.W_dec.data = W_dec_normed

    def state_numpy(self):
        return {n: p.detach().cpu().numpy().astype(np.float32).copy() for n, p in self.params().items()}


def make_optimizer(model):
    cfg = model.cfg
    trained = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(trained, lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
                            eps=cfg["eps"], weight_decay=0.0)


def train_step(model, optimizer, x, check_unit_norm=True):
    """One SPEC training step. Returns (record dict, raw grads dict, forward output)."""
    cfg = model.cfg
    optimizer.zero_grad(set_to_none=True)
    out = model(x)
    out["loss"].backward()
    raw = {}
    for n, p in model.params().items():
        raw[n] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
    trained = [p for p in model.parameters() if p.requires_grad]
    # 1. clip (returns the global norm before clipping)
    grad_norm = torch.nn.utils.clip_grad_norm_(trained, cfg["max_grad_norm"])
    # 2. decoder constraint
    model.make_decoder_weights_and_grad_unit_norm()
    if check_unit_norm:
        norms = model.W_dec.detach().double().norm(dim=-1)
        err = float((norms - 1).abs().max())
        assert err < 1e-5, "decoder rows not unit-norm before Adam (max |norm-1| = %g)" % err
        radial = float((model.W_dec.grad.double() * model.W_dec.detach().double()).sum(-1).abs().max())
        gscale = float(model.W_dec.grad.double().abs().max()) + 1e-30
        assert radial <= 1e-5 * gscale + 1e-12, "radial gradient left in W_dec.grad (%g)" % radial
    # 3. Adam
    optimizer.step()
    z = out["z"].detach()
    if cfg["arch"] == "relu_l1":  # adaptive L1 coefficient toward L0 = k, from this step's L0
        l0 = float((z > 0).float().sum(-1).mean().item())
        rate = variant(cfg, "l1_adapt_rate")
        model.l1_coef *= (1 + rate) if l0 >= cfg["k"] else (1 - rate)
    rec = {
        "loss": float(out["loss"].item()),
        "l_rec": float(out["l_rec"].item()),
        "l_aux": float(out["l_aux"].item()),
        "mse_bdec": float(out["mse_bdec"].item()),
        "mse_prefix": [float(m.item()) for m in out["mse_prefix"]],
        "aux_active": bool(out["aux_active"]),
        "n_dead": int(out["n_dead"]),
        "l0": float((z > 0).float().sum(-1).mean().item()),
        "threshold": float(model.threshold.item()),
        "grad_norm": float(grad_norm.item()),
    }
    return rec, raw, out


# ----------------------------------------------------------------------------------------------
# Self-test
# ----------------------------------------------------------------------------------------------
def _tiny_problem(cfg, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    d, D, B = cfg["d_in"], cfg["d_sae"], cfg["batch"]
    p = init_params(cfg, generator=g, dtype=dtype)
    p["b_dec"] = 0.1 * torch.randn(d, generator=g, dtype=dtype)
    if cfg["encoder_bias"]:
        p["b_enc"] = 0.1 * torch.randn(D, generator=g, dtype=dtype)
    dirs = torch.randn(2 * d, d, generator=g, dtype=dtype)
    coef = torch.rand(B, 2 * d, generator=g, dtype=dtype) * (torch.rand(B, 2 * d, generator=g) < 0.3)
    x = coef @ dirs + 0.5 + 0.05 * torch.randn(B, d, generator=g, dtype=dtype)
    # half the latents have been inactive for a long time -> dead this batch unless they fire
    n_inactive = torch.zeros(D, dtype=dtype)
    n_inactive[D // 2:] = cfg["dead_after_batches"] + 3
    return p, x, n_inactive


def _fd_check(cfg, seed, h=1e-6, tol=1e-6, verbose=True):
    """Autograd vs central finite differences of forward_loss, all in float64."""
    p, x, n_in = _tiny_problem(cfg, seed, torch.float64)
    out0 = forward_loss(p, x, n_in, cfg)
    main_gap, aux_gap = selection_margins(out0["acts"], cfg, out0["aux_info"])
    pre_min = float(out0["pre"].detach().abs().min())
    if main_gap < 1e-3 or aux_gap < 1e-3 or pre_min < 1e-4:
        return None  # too close to a kink for finite differences; caller tries another seed
    names = ["W_enc", "W_dec", "b_dec"] + (["b_enc"] if cfg["encoder_bias"] else [])
    leaves = {n: p[n].clone().requires_grad_(n in names) for n in p}
    out = forward_loss(leaves, x, n_in, cfg)
    out["loss"].backward()
    worst = 0.0
    for n in names:
        g_auto = leaves[n].grad.reshape(-1)
        g_fd = torch.zeros_like(g_auto)
        base = p[n].reshape(-1)
        for i in range(base.numel()):
            vals = []
            for sgn in (1.0, -1.0):
                q = dict(p)
                t = base.clone()
                t[i] += sgn * h
                q[n] = t.reshape(p[n].shape)
                vals.append(float(forward_loss(q, x, n_in, cfg)["loss"]))
            g_fd[i] = (vals[0] - vals[1]) / (2 * h)
        err = float((g_auto - g_fd).abs().max() / (g_fd.abs().max() + 1e-12))
        worst = max(worst, err)
        if verbose:
            print("    %-6s max rel err %.2e  (|grad|max %.3e)" % (n, err, float(g_fd.abs().max())))
    assert worst < tol, "finite-difference mismatch %.3e" % worst
    return out0


def _adam_manual_check():
    """torch.optim.Adam equals SPEC's Adam formula (two steps, float64)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(7, dtype=torch.float64))
    p0 = p.detach().clone()
    opt = torch.optim.Adam([p], lr=3e-4, betas=(0.9, 0.99), eps=1e-8)
    m = torch.zeros_like(p0)
    v = torch.zeros_like(p0)
    q = p0.clone()
    for t in (1, 2):
        g = torch.randn(7, dtype=torch.float64)
        p.grad = g.clone()
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        q = q - 3e-4 / (1 - 0.9 ** t) * m / (v.sqrt() / math.sqrt(1 - 0.99 ** t) + 1e-8)
    err = float((p.detach() - q).abs().max())
    assert err < 1e-15, "Adam formula mismatch %g" % err


def selftest():
    torch.set_num_threads(1)
    base = dict(d_in=4, d_sae=16, k=2, batch=6, dead_after_batches=2, aux_coef=1.0 / 32.0)
    cases = [
        ("matryoshka default groups", make_config(arch="matryoshka", **base)),
        ("matryoshka custom groups + b_enc + aux_k<n_dead",
         make_config(arch="matryoshka", group_sizes=[3, 5, 8], encoder_bias=True, aux_k=2, **base)),
        ("batchtopk", make_config(arch="batchtopk", aux_k=3, **base)),
        ("topk", make_config(arch="topk", **base)),
    ]
    for name, cfg in cases:
        print("finite differences (float64): %s" % name)
        for seed in range(100):
            out = _fd_check(cfg, seed)
            if out is not None:
                print("    seed %d, n_dead %d, aux_active %s, l_aux %.3e"
                      % (seed, out["n_dead"], out["aux_active"], float(out["l_aux"])))
                assert out["aux_active"], "self-test case should exercise AuxK"
                break
        else:
            raise AssertionError("no seed without near-ties for %s" % name)

    # AuxK "a all zero" path: no dead latent fires -> no aux loss, no gradient through e.
    cfg0 = make_config(arch="batchtopk", **base)
    p, x, n_in = _tiny_problem(cfg0, 1, torch.float64)
    p["W_enc"][:, cfg0["d_sae"] // 2:] = -p["W_enc"][:, cfg0["d_sae"] // 2:].abs()
    x = x.abs() + 1.0
    p["b_dec"] = torch.zeros_like(p["b_dec"])
    out = forward_loss(p, x, n_in, cfg0)
    assert out["n_dead"] > 0 and not out["aux_active"] and float(out["l_aux"]) == 0.0
    print("AuxK all-zero path: n_dead %d, aux inactive, l_aux 0: ok" % out["n_dead"])

    _adam_manual_check()
    print("torch.optim.Adam matches SPEC formula: ok")

    # float32 training steps: unit-norm decoder rows before every Adam step (asserted in train_step),
    # clipping reports the pre-clip norm, threshold EMA and counters evolve.
    cfg = make_config(d_in=8, d_sae=32, k=2, batch=16, arch="matryoshka", dead_after_batches=2,
                      max_grad_norm=1e-3, lr=1e-3)
    p, x, _ = _tiny_problem(cfg, 3, torch.float32)
    model = MatryoshkaSAE(cfg, p)
    opt = make_optimizer(model)
    g = torch.Generator().manual_seed(5)
    thr = 0.0
    for t in range(1, 6):
        xb = x[torch.randint(0, x.shape[0], (cfg["batch"],), generator=g)]
        rec, raw, out = train_step(model, opt, xb)
        manual_norm = math.sqrt(sum(float(v.double().pow(2).sum()) for n, v in raw.items()
                                    if n != "b_enc" or cfg["encoder_bias"]))
        assert abs(manual_norm - rec["grad_norm"]) <= 1e-5 * manual_norm
        minpos = float(out["z"][out["z"] > 0].min())
        thr = np.float32(np.float32(0.99) * np.float32(thr) + np.float32(0.01) * np.float32(minpos))
        assert abs(rec["threshold"] - float(thr)) <= 1e-6 * abs(float(thr)) + 1e-12
        assert abs(rec["l0"] - cfg["k"]) < 1e-6
        print("step %d: loss %.6f l_aux %.3e n_dead %d grad_norm %.4f thr %.5f"
              % (t, rec["loss"], rec["l_aux"], rec["n_dead"], rec["grad_norm"], rec["threshold"]))
    assert float(model.b_enc.detach().abs().max()) == 0.0, "b_enc must stay 0 without encoder_bias"
    print("selftest passed")


def demo():
    torch.manual_seed(0)
    cfg = make_config(d_in=16, d_sae=64, k=4, batch=32, dead_after_batches=3)
    model = MatryoshkaSAE(cfg)
    opt = make_optimizer(model)
    for t in range(1, 11):
        x = torch.randn(cfg["batch"], cfg["d_in"]) + 1.0
        rec, _, _ = train_step(model, opt, x)
        print(t, json.dumps(rec))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--selftest", action="store_true", help="finite-difference and semantic checks")
    ap.add_argument("--demo", action="store_true", help="train 10 steps on random data and print")
    args = ap.parse_args(argv)
    if args.selftest:
        selftest()
    elif args.demo:
        demo()
    else:
        ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
