"""Issue 27: SAELens / sparsify directories in msae's Python module and `msae convert` (docs/interop.md).

Directories are written here from the upstream field names and shapes:
  - SAELens 6.18.0: cfg.json = SAEConfig.to_dict() (sae_lens/saes/sae.py: dataclass fields, "metadata",
    "architecture"; TopKSAEConfig adds k and rescale_acts_by_decoder_norm, sae_lens/saes/topk_sae.py),
    sae_weights.safetensors W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc (d_sae), b_dec (d_in),
    threshold (d_sae) for jumprelu;
  - sparsify 1.3.0: SparseCoder.save_to_disk (sparsify/sparse_coder.py): cfg.json =
    SparseCoderConfig.to_dict() + d_in, sae.safetensors encoder.weight (num_latents, d_in), encoder.bias,
    W_dec (num_latents, d_in), b_dec.
The reference computations are numpy transcriptions of SAELens's TopKSAE.encode / decode (6.18.0).
"""
import json
import os
import struct
import subprocess
import tempfile
import unittest

import numpy as np

import msae

BINARY = os.environ.get("MSAE_BINARY")


def write_safetensors(path, tensors):
    """F32 safetensors, tensors in name order (as safetensors' serializer writes them)."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        raw = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(np.shape(tensors[name])), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def saelens_cfg(arch, d, D, **extra):
    cfg = {"d_in": d, "d_sae": D, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.18.0", "sae_lens_training_version": "6.18.0", "model_name": "gpt2",
                        "hook_name": "blocks.4.hook_resid_post", "context_size": 128, "prepend_bos": True},
           "architecture": arch}
    cfg.update(extra)
    return cfg


def write_saelens(path, cfg, W_enc, W_dec, b_enc, b_dec, threshold=None):
    os.makedirs(path)
    t = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}
    if threshold is not None:
        t["threshold"] = threshold
    write_safetensors(os.path.join(path, "sae_weights.safetensors"), t)
    with open(os.path.join(path, "cfg.json"), "w") as f:
        json.dump(cfg, f)


def saelens_topk_encode(x, W_enc, W_dec, b_enc, b_dec, k, rescale):
    """SAELens 6.18.0 TopKSAE.encode, in float64: hidden_pre = (x - b_dec) @ W_enc + b_enc, times
    W_dec.norm(dim=-1) when rescale_acts_by_decoder_norm; TopK keeps the k largest and applies ReLU."""
    h = (x.astype(np.float64) - b_dec) @ W_enc.astype(np.float64) + b_enc
    if rescale:
        h = h * np.linalg.norm(W_dec.astype(np.float64), axis=-1)
    z = np.zeros_like(h)
    idx = np.argsort(-h, axis=1, kind="stable")[:, :k]
    rows = np.arange(h.shape[0])[:, None]
    z[rows, idx] = np.maximum(h[rows, idx], 0.0)
    return z, h


def saelens_topk_decode(z, W_dec, b_dec, rescale):
    """SAELens 6.18.0 TopKSAE.decode: feature_acts / W_dec.norm(dim=-1) when rescaling, @ W_dec + b_dec."""
    if rescale:
        z = z / np.linalg.norm(W_dec.astype(np.float64), axis=-1)
    return z @ W_dec.astype(np.float64) + b_dec


class RescaleActsByDecoderNorm(unittest.TestCase):
    def test_codes_and_reconstructions_follow_saelens(self):
        rng = np.random.default_rng(11)
        d, D, k, N = 16, 64, 5, 400
        W_enc = (rng.standard_normal((d, D)) / 4).astype(np.float32)
        W_dec = rng.standard_normal((D, d))
        W_dec = (W_dec / np.linalg.norm(W_dec, axis=1, keepdims=True) * rng.uniform(0.3, 3.0, (D, 1))).astype(np.float32)
        b_enc = (rng.standard_normal(D) * 0.1).astype(np.float32)
        b_dec = (rng.standard_normal(d) * 0.2).astype(np.float32)
        x = rng.standard_normal((N, d)).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            sd = os.path.join(tmp, "topk")
            write_saelens(sd, saelens_cfg("topk", d, D, k=k, rescale_acts_by_decoder_norm=True), W_enc, W_dec, b_enc, b_dec)
            sae = msae.Sae.load(sd)
            self.assertEqual((sae.arch, sae.format), ("topk", "saelens-topk"))
            z = sae.encode(x)
            ref, h = saelens_topk_encode(x, W_enc, W_dec, b_enc, b_dec, k, True)
            # The k-th and (k+1)-th largest of a row within float32 round-off could swap: none here.
            srt = -np.sort(-h, axis=1)
            self.assertGreater(np.min(srt[:, k - 1] - srt[:, k]), 1e-4)
            np.testing.assert_array_equal(z > 0, ref > 0)
            np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(sae.decode(z), saelens_topk_decode(ref, W_dec, b_dec, True), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(sae.forward(x), saelens_topk_decode(ref, W_dec, b_dec, True), rtol=1e-5, atol=1e-5)
            # Ignoring the flag gives other codes: the check can fail.
            plain, _ = saelens_topk_encode(x, W_enc, W_dec, b_enc, b_dec, k, False)
            self.assertFalse(np.array_equal(plain > 0, ref > 0))
            # Sae.save keeps the rule: the copy is still a rescaling TopK SAE with the same codes.
            sae.save(os.path.join(tmp, "saved"))
            again = msae.Sae.load(os.path.join(tmp, "saved"))
            self.assertEqual(again.arch, "topk")
            np.testing.assert_array_equal(again.encode(x), z)
            with open(os.path.join(tmp, "saved", "cfg.json")) as f:
                self.assertTrue(json.load(f)["rescale_acts_by_decoder_norm"])


class ImportedArch(unittest.TestCase):
    def test_arch_and_format_of_imported_saes(self):
        rng = np.random.default_rng(2)
        d, D = 8, 32
        W_enc = rng.standard_normal((d, D)).astype(np.float32)
        W_dec = rng.standard_normal((D, d)).astype(np.float32)
        b_enc = np.zeros(D, np.float32)
        b_dec = np.zeros(d, np.float32)
        thr = np.abs(rng.standard_normal(D)).astype(np.float32)
        x = rng.standard_normal((50, d)).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            for arch in ("jumprelu", "standard", "topk"):
                sd = os.path.join(tmp, arch)
                extra = {"k": 4} if arch == "topk" else {}
                write_saelens(sd, saelens_cfg(arch, d, D, **extra), W_enc, W_dec, b_enc, b_dec,
                              thr if arch == "jumprelu" else None)
                sae = msae.Sae.load(sd)
                self.assertEqual(sae.arch, arch)
                self.assertEqual(sae.format, "saelens-" + arch)
                self.assertIn(f"arch='{arch}'", repr(sae))
            # Per-latent thresholds load and are applied exactly: z = h * (h > threshold_i).
            sae = msae.Sae.load(os.path.join(tmp, "jumprelu"))
            h = x.astype(np.float64) @ W_enc.astype(np.float64)
            ref = np.where((h > 0) & (h > thr), h, 0.0)
            near = np.abs(h - thr) < 1e-4
            z = sae.encode(x)
            np.testing.assert_array_equal((z > 0)[~near], (ref > 0)[~near])
            np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-4)
            sp = os.path.join(tmp, "sparsify")
            os.makedirs(sp)
            write_safetensors(os.path.join(sp, "sae.safetensors"),
                              {"encoder.weight": W_enc.T, "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec})
            with open(os.path.join(sp, "cfg.json"), "w") as f:
                json.dump({"activation": "topk", "expansion_factor": 4, "normalize_decoder": True, "num_latents": 0,
                           "k": 4, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": d}, f)
            sae = msae.Sae.load(sp)
            self.assertEqual((sae.arch, sae.format), ("topk", "sparsify-topk"))


@unittest.skipUnless(BINARY, "MSAE_BINARY is not set")
class ConvertCommand(unittest.TestCase):
    def run_msae(self, *args):
        return subprocess.run([BINARY, *args], capture_output=True, text=True)

    def test_round_trips_and_refusals(self):
        rng = np.random.default_rng(4)
        x = np.ascontiguousarray(rng.standard_normal((2048, 16)), dtype=np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            own = os.path.join(tmp, "own")
            trained = msae.train(x, out=own, progress=False, d_sae=64, k=4, batch=256, steps=20, seed=1, threads=2)
            sl, back = os.path.join(tmp, "sl"), os.path.join(tmp, "back")
            for src, to, out in ((own, "saelens", sl), (sl, "msae", back)):
                r = self.run_msae("convert", "--from", src, "--to", to, "--out", out)
                self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(sorted(os.listdir(sl)), ["cfg.json", "sae_weights.safetensors"])
            a, b, c = msae.Sae.load(own), msae.Sae.load(sl), msae.Sae.load(back)
            self.assertEqual(a.arch, trained.arch)
            for s in (b, c):
                self.assertEqual((s.arch, s.k, s.group_boundaries), (a.arch, a.k, a.group_boundaries))
                np.testing.assert_array_equal(s.encode(x), a.encode(x))
                for m in a.group_boundaries:
                    np.testing.assert_array_equal(s.encode(x, prefix=m), a.encode(x, prefix=m))
            self.assertGreater((a.encode(x) > 0).sum(), 0)
            # sparsify cannot hold msae's JumpReLU encoding: refused with the reason, nothing written.
            r = self.run_msae("convert", "--from", own, "--to", "sparsify", "--out", os.path.join(tmp, "sp"))
            self.assertEqual(r.returncode, 1)
            self.assertIn("JumpReLU", r.stderr)
            self.assertFalse(os.path.exists(os.path.join(tmp, "sp")))
            # An existing output is not replaced without --overwrite (exit 2), and stays as it was.
            def cfg_text():
                with open(os.path.join(sl, "cfg.json")) as f:
                    return f.read()

            before = cfg_text()
            r = self.run_msae("convert", "--from", own, "--to", "saelens", "--out", sl)
            self.assertEqual(r.returncode, 2)
            self.assertIn("--overwrite", r.stderr)
            self.assertEqual(cfg_text(), before)
            self.assertEqual(self.run_msae("convert", "--from", own, "--to", "torch", "--out", sl).returncode, 2)
            r = self.run_msae("convert", "--from", own, "--to", "saelens", "--out", sl, "--overwrite", "--json")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout)["from_format"], "msae")


if __name__ == "__main__":
    unittest.main()
