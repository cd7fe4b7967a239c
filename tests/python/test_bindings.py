"""Tests of the Python module `msae` (python/msae_py.cpp, docs/python.md).

ctest runs this file with Debian's /usr/bin/python3 and sets PYTHONPATH to build/python, MSAE_BINARY to
the msae CLI and MSAE_SOURCE_DIR to the source tree. By hand:

    PYTHONPATH=build/python MSAE_BINARY=build/msae MSAE_SOURCE_DIR=. \\
        /usr/bin/python3 -m unittest discover -s tests/python -v

Tolerances: the numpy references compute in float64; msae computes in float32 with OpenBLAS, so
values agree to about 1e-6 relative. The one discontinuity, the JumpReLU threshold, is handled by
leaving out the entries of h within 1e-4 of the threshold (there are few; the test counts them) rather
than by loosening the tolerance.
"""

import json
import contextlib
import io
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import msae

BINARY = os.environ.get("MSAE_BINARY")
SOURCE_DIR = os.environ.get("MSAE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))

D_IN, D_SAE, K, BATCH, STEPS, SEED = 32, 128, 8, 256, 40, 3
TOL = dict(rtol=1e-5, atol=1e-5)
THRESHOLD_MARGIN = 1e-4


def make_data(rows, d, seed):
    """Sparse non-negative combinations of 256 random unit directions plus a little noise."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((256, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    codes = rng.exponential(1.0, (rows, 256)) * (rng.random((rows, 256)) < 0.03)
    x = codes @ dirs + 0.01 * rng.standard_normal((rows, d))
    return np.ascontiguousarray(x, dtype=np.float32)


def read_safetensors(path):
    """A minimal safetensors reader (F32 only), independent of msae's."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", t
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype="<f4").reshape(t["shape"])
    return out


def ref_encode(sae, x, m=None):
    """SAELens JumpReLU (docs/formats.md) in float64; also the mask of entries near the threshold."""
    h = (x.astype(np.float64) - sae.b_dec) @ sae.W_enc.astype(np.float64) + sae.b_enc
    z = np.maximum(h, 0) * (h > sae.threshold)
    ambiguous = np.abs(h - sae.threshold) < THRESHOLD_MARGIN
    if m is not None:
        z[:, m:] = 0
        ambiguous[:, m:] = False
    return z, ambiguous


def ref_decode(sae, z, m=None):
    m = sae.d_sae if m is None else m
    return z[:, :m].astype(np.float64) @ sae.W_dec[:m].astype(np.float64) + sae.b_dec


def weights(sae):
    return {name: getattr(sae, name) for name in ("W_enc", "W_dec", "b_enc", "b_dec")}


class Fixture:
    """Data and an SAE trained by the CLI, made once for all tests."""

    tmp = None

    @classmethod
    def setup(cls):
        cls.tmp = tempfile.mkdtemp(prefix="msae-py-")
        cls.x = make_data(4096, D_IN, 0)
        cls.npy = os.path.join(cls.tmp, "acts.npy")
        np.save(cls.npy, cls.x)
        cls.cli_dir = None
        if BINARY:
            cls.cli_dir = os.path.join(cls.tmp, "cli_sae")
            subprocess.run(
                [BINARY, "train", "--data", cls.npy, "--d-sae", str(D_SAE), "--k", str(K), "--batch", str(BATCH),
                 "--steps", str(STEPS), "--seed", str(SEED), "--threads", "2", "--out", cls.cli_dir],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @classmethod
    def teardown(cls):
        if cls.tmp:
            shutil.rmtree(cls.tmp, ignore_errors=True)


def setUpModule():
    Fixture.setup()


def tearDownModule():
    Fixture.teardown()


def train_small(data, **kw):
    options = dict(d_sae=D_SAE, k=K, batch=BATCH, steps=STEPS, seed=SEED, threads=2, progress=False)
    options.update(kw)
    return msae.train(data, **options)


class CliDirectory(unittest.TestCase):
    def setUp(self):
        if not Fixture.cli_dir:
            self.skipTest("MSAE_BINARY is not set")
        self.sae = msae.Sae.load(Fixture.cli_dir)

    def test_properties(self):
        s = self.sae
        self.assertEqual((s.d_in, s.d_sae, s.arch, s.k), (D_IN, D_SAE, "matryoshka", K))
        self.assertEqual(s.group_sizes, [8, 8, 16, 32, 64])
        self.assertEqual(s.group_boundaries, [8, 16, 32, 64, 128])
        self.assertFalse(s.encoder_bias)
        self.assertIsInstance(s.threshold, float)
        self.assertGreater(s.threshold, 0)
        self.assertEqual(s.info["training"]["steps"], STEPS)
        self.assertIn("d_sae=128", repr(s))

    def test_weights_are_the_files_tensors(self):
        files = read_safetensors(os.path.join(Fixture.cli_dir, "sae_weights.safetensors"))
        for name, value in weights(self.sae).items():
            self.assertEqual(value.dtype, np.float32)
            np.testing.assert_array_equal(value, files[name], err_msg=name)
        np.testing.assert_array_equal(files["threshold"], np.full(D_SAE, self.sae.threshold, np.float32))
        # the properties are copies
        w = self.sae.W_dec
        w[:] = 0
        self.assertGreater(np.abs(self.sae.W_dec).sum(), 0)

    def test_encode_matches_numpy(self):
        x = Fixture.x[:500]
        for m in [None, 0, 8, 16, 37, 64, D_SAE]:
            z = self.sae.encode(x, prefix=m)
            self.assertEqual((z.dtype, z.shape), (np.float32, (500, D_SAE)))
            ref, ambiguous = ref_encode(self.sae, x, m)
            self.assertLess(ambiguous.mean(), 1e-3)
            np.testing.assert_allclose(z[~ambiguous], ref[~ambiguous], **TOL, err_msg=f"prefix {m}")
            if m is not None:
                self.assertFalse(z[:, m:].any())
        self.assertGreater((self.sae.encode(x) > 0).sum(1).mean(), 1)

    def test_decode_matches_numpy(self):
        rng = np.random.default_rng(1)
        z = (rng.random((300, D_SAE)) * (rng.random((300, D_SAE)) < 0.1)).astype(np.float32)
        z[0] = -1.5  # decode is linear: negative codes are decoded too
        for m in [None, 0, 16, 50, D_SAE]:
            np.testing.assert_allclose(self.sae.decode(z, prefix=m), ref_decode(self.sae, z, m), **TOL,
                                       err_msg=f"prefix {m}")

    def test_forward_matches_numpy(self):
        x = Fixture.x[1000:1400]
        for m in [None, 16, 64]:
            ref_z, ambiguous = ref_encode(self.sae, x, m)
            ok = ~ambiguous.any(axis=1)  # rows with no entry near the threshold
            self.assertGreater(ok.mean(), 0.9)
            x_hat = self.sae.forward(x, prefix=m)
            self.assertEqual((x_hat.dtype, x_hat.shape), (np.float32, x.shape))
            np.testing.assert_allclose(x_hat[ok], ref_decode(self.sae, ref_z, m)[ok], **TOL, err_msg=f"prefix {m}")
            np.testing.assert_allclose(x_hat, self.sae.decode(self.sae.encode(x, prefix=m), prefix=m), **TOL)
        # a prefix of the whole width is the whole SAE
        np.testing.assert_array_equal(self.sae.forward(x, prefix=D_SAE), self.sae.forward(x))

    def test_empty_input(self):
        self.assertEqual(self.sae.encode(np.zeros((0, D_IN), np.float32)).shape, (0, D_SAE))
        self.assertEqual(self.sae.decode(np.zeros((0, D_SAE), np.float32)).shape, (0, D_IN))
        self.assertEqual(self.sae.forward(np.zeros((0, D_IN), np.float32)).shape, (0, D_IN))

    def test_memmap_input(self):
        x = np.load(Fixture.npy, mmap_mode="r")
        np.testing.assert_array_equal(self.sae.encode(x[:100]), self.sae.encode(Fixture.x[:100]))

    def test_inputs_are_never_converted(self):
        x = Fixture.x[:10]
        for bad in [x.astype(np.float64), x.astype(np.float16), x.astype(">f4"), x.tolist(), "x"]:
            with self.assertRaisesRegex(TypeError, "float32") as ctx:
                self.sae.encode(bad)
            if isinstance(bad, np.ndarray):
                self.assertIn("ascontiguousarray", str(ctx.exception))
        with self.assertRaisesRegex(ValueError, "C-contiguous"):
            self.sae.encode(Fixture.x[:20:2])
        with self.assertRaisesRegex(ValueError, "C-contiguous"):
            self.sae.forward(np.asfortranarray(x))
        with self.assertRaisesRegex(ValueError, "C-contiguous"):
            self.sae.decode(np.zeros((D_SAE, 4), np.float32).T)
        with self.assertRaisesRegex(ValueError, r"reshape\(1, -1\)"):
            self.sae.encode(x[0])
        with self.assertRaisesRegex(ValueError, "expected 32 columns"):
            self.sae.encode(np.zeros((3, 31), np.float32))
        with self.assertRaisesRegex(ValueError, "expected 128 columns"):
            self.sae.decode(np.zeros((3, D_IN), np.float32))
        for m in [-1, D_SAE + 1]:
            with self.assertRaisesRegex(ValueError, r"prefix .*\[8,16,32,64,128\]"):
                self.sae.encode(x, prefix=m)

    def test_save_load_round_trip(self):
        out = os.path.join(Fixture.tmp, "round_trip")
        self.sae.save(out)
        again = msae.Sae.load(out)
        for name, value in weights(self.sae).items():
            np.testing.assert_array_equal(getattr(again, name), value, err_msg=name)
        self.assertEqual(again.threshold, self.sae.threshold)
        self.assertEqual((again.arch, again.k, again.group_sizes), (self.sae.arch, self.sae.k, self.sae.group_sizes))
        self.assertEqual(again.info["training"], self.sae.info["training"])
        with self.assertRaisesRegex(FileExistsError, "overwrite=True"):
            self.sae.save(out)
        self.sae.save(out + "/", overwrite=True)  # a trailing slash names the same directory
        self.assertEqual(sorted(os.listdir(Fixture.tmp)).count("round_trip"), 1)
        self.assertFalse([n for n in os.listdir(Fixture.tmp) if ".tmp-" in n])

    def test_concurrent_calls(self):
        x = Fixture.x[:2000]
        expected = self.sae.forward(x)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: self.sae.forward(x), range(8)))
        for r in results:
            np.testing.assert_array_equal(r, expected)

    def test_encode_sparse_is_encode_as_csr(self):
        x = Fixture.x[:700]
        for m in [None, 0, 8, 37, 64, D_SAE]:
            indptr, indices, values = self.sae.encode_sparse(x, prefix=m)
            self.assertEqual((indptr.dtype, indptr.shape), (np.int64, (701,)))
            self.assertEqual((indices.dtype, values.dtype), (np.int32, np.float32))
            self.assertEqual((indptr[0], indptr[-1], len(values)), (0, len(indices), len(indices)))
            self.assertTrue((np.diff(indptr) >= 0).all())
            rows = np.repeat(np.arange(700), np.diff(indptr))
            same_row = rows[1:] == rows[:-1]
            self.assertTrue((np.diff(indices)[same_row] > 0).all(), "latents ascend within a row")
            self.assertTrue((values > 0).all())
            self.assertTrue((indices < (D_SAE if m is None else m)).all())
            dense = np.zeros((700, D_SAE), np.float32)
            dense[rows, indices] = values
            np.testing.assert_array_equal(dense, self.sae.encode(x, prefix=m), err_msg=f"prefix {m}")
            if m == 0:
                self.assertEqual(len(indices), 0)
        self.assertGreater(len(self.sae.encode_sparse(x)[1]), 700)
        indptr, indices, values = self.sae.encode_sparse(np.zeros((0, D_IN), np.float32))
        self.assertEqual((indptr.tolist(), indices.shape, values.shape), ([0], (0,), (0,)))
        with self.assertRaisesRegex(TypeError, "float32"):
            self.sae.encode_sparse(x.astype(np.float64))
        with self.assertRaisesRegex(ValueError, r"prefix .*\[8,16,32,64,128\]"):
            self.sae.encode_sparse(x, prefix=D_SAE + 1)

    def test_evaluate_matches_the_cli_and_numpy(self):
        x = Fixture.x
        got = msae.evaluate(self.sae, x)
        # `msae eval` on the same rows (the same thread count: the codes do not depend on it, but this
        # test should not rely on that).
        cli = json.loads(subprocess.run(
            [BINARY, "eval", "--json", "--sae", Fixture.cli_dir, "--data", Fixture.npy, "--threads", str(msae.num_threads())],
            check=True, capture_output=True, text=True).stdout)
        for key in ("sae", "data", "arch", "format"):
            del cli[key]
        self.assertEqual(got, cli)
        # numpy: the same metrics from encode and forward, in float64
        self.assertEqual((got["rows"], len(got["prefixes"])), (len(x), len(self.sae.group_boundaries)))
        x64 = x.astype(np.float64)
        var = ((x64 - x64.mean(0)) ** 2).sum()
        counts = []
        for g, m in enumerate(self.sae.group_boundaries):
            p = got["prefixes"][g]
            self.assertEqual((p["group"], p["latents"]), (g + 1, m))
            z = self.sae.encode(x, prefix=m)
            counts.append((z > 0).sum())
            self.assertAlmostEqual(p["l0"], counts[-1] / len(x), places=12)
            err = ((self.sae.forward(x, prefix=m).astype(np.float64) - x64) ** 2).sum()
            np.testing.assert_allclose([p["mse"], p["fvu"]], [err / x.size, err / var], rtol=1e-4, err_msg=f"prefix {m}")
            self.assertAlmostEqual(p["explained_variance"], 1 - p["fvu"], places=12)
        self.assertEqual(got["whole"], {k: v for k, v in got["prefixes"][-1].items() if k != "group"})
        shares = np.diff([0] + counts) / counts[-1]
        np.testing.assert_allclose(got["group_l0_share"], shares, rtol=1e-12)
        fired = (self.sae.encode(x) > 0).mean(0)
        self.assertAlmostEqual(got["dead_fraction"], (fired < 1e-7).mean(), places=12)
        self.assertAlmostEqual(got["dense_fraction"], (fired > 0.1).mean(), places=12)
        # The JSON holds the float32 threshold as its shortest decimal (json_number, core.h): the same float32.
        self.assertEqual(np.float32(got["threshold"]), np.float32(self.sae.threshold))
        # rows: the leading rows only
        head = msae.evaluate(self.sae, x, rows=1000)
        self.assertEqual(head["rows"], 1000)
        self.assertEqual(head, msae.evaluate(self.sae, np.ascontiguousarray(x[:1000])))
        self.assertNotEqual(head["prefixes"], got["prefixes"])
        for bad in [0, -1, len(x) + 1]:
            with self.assertRaisesRegex(ValueError, "rows must be in"):
                msae.evaluate(self.sae, x, rows=bad)
        with self.assertRaisesRegex(ValueError, "0 rows"):
            msae.evaluate(self.sae, np.zeros((0, D_IN), np.float32))
        with self.assertRaisesRegex(TypeError, "float32"):
            msae.evaluate(self.sae, x.astype(np.float64))
        with self.assertRaisesRegex(ValueError, "expected 32 columns"):
            msae.evaluate(self.sae, np.zeros((4, D_IN + 1), np.float32))
        nan = x[:100].copy()
        nan[37, 5] = np.nan
        with self.assertRaisesRegex(RuntimeError, "row 37 column 5"):
            msae.evaluate(self.sae, nan)

class Training(unittest.TestCase):
    def test_array_training_matches_the_cli(self):
        if not Fixture.cli_dir:
            self.skipTest("MSAE_BINARY is not set")
        cli = msae.Sae.load(Fixture.cli_dir)
        from_array = train_small(Fixture.x)
        from_path = train_small(Fixture.npy)
        for name, value in weights(cli).items():
            np.testing.assert_array_equal(getattr(from_array, name), value, err_msg=name)
            np.testing.assert_array_equal(getattr(from_path, name), value, err_msg=name)
        self.assertEqual(from_array.threshold, cli.threshold)
        # the same evaluation (on the same held-out rows: the data's last tenth), named by its source
        a, c = dict(from_array.info["final_metrics"]), dict(cli.info["final_metrics"])
        self.assertIn("held-out rows [3687, 4096) of numpy array", a.pop("evaluated_on"))
        self.assertIn("held-out rows [3687, 4096) of " + Fixture.npy, c.pop("evaluated_on"))
        self.assertEqual(a, c)

    def test_normalized_buffered_training_matches_the_cli_and_takes_raw_data(self):
        # normalize="expected-norm" and a shuffle buffer (docs/data.md): the same weights as msae train with
        # --normalize expected-norm --shuffle-buffer, folded so that the Sae takes raw activations.
        if not BINARY:
            self.skipTest("MSAE_BINARY is not set")
        x = (Fixture.x * 37.0).astype(np.float32)
        npy = os.path.join(Fixture.tmp, "acts_x37.npy")
        np.save(npy, x)
        out = os.path.join(Fixture.tmp, "cli_norm")
        subprocess.run(
            [BINARY, "train", "--data", npy, "--d-sae", str(D_SAE), "--k", str(K), "--batch", str(BATCH),
             "--steps", str(STEPS), "--seed", str(SEED), "--threads", "2", "--normalize", "expected-norm",
             "--shuffle-buffer", "1000", "--out", out],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cli = msae.Sae.load(out)
        py = train_small(x, normalize="expected-norm", shuffle_buffer=1000)
        for name, value in weights(cli).items():
            np.testing.assert_array_equal(getattr(py, name), value, err_msg=name)
        norm = py.info["data_normalization"]
        self.assertEqual(norm["method"], "expected-norm")
        self.assertTrue(norm["folded_into_weights"])
        self.assertLess(norm["scale"], 1.0)
        # On raw data the folded SAE reconstructs its held-out rows (the data's last tenth, which training
        # did not read) as well as the run's own final evaluation says.
        held = x[-py.info["final_metrics"]["evaluated_rows"]:]
        self.assertEqual(len(held), len(x) // 10)
        r = py.forward(held)
        fvu = float(((r - held) ** 2).sum() / ((held - held.mean(0)) ** 2).sum())
        self.assertAlmostEqual(fvu, py.info["final_metrics"]["whole"]["fvu"], delta=1e-3 * fvu)
        self.assertLess(fvu, 0.9)

    def test_recipes_variants_and_checkpoints_match_the_cli(self):
        # The option table is one schema: the same options given to msae train and to msae.train write the
        # same bits, with a recipe, a variant and checkpoints.
        if not BINARY:
            self.skipTest("MSAE_BINARY is not set")
        out_cli = os.path.join(Fixture.tmp, "cli_recipe")
        out_py = os.path.join(Fixture.tmp, "py_recipe")
        subprocess.run(
            [BINARY, "train", "--data", Fixture.npy, "--d-sae", str(D_SAE), "--k", str(K), "--batch", str(BATCH),
             "--steps", "40", "--seed", str(SEED), "--threads", "2", "--recipe", "saelens",
             "--stop-gradient-groups", "--checkpoint-every", "15", "--out", out_cli],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        py = train_small(Fixture.npy, steps=40, recipe="saelens", stop_gradient_groups=True, checkpoint_every=15,
                         out=out_py)
        with open(os.path.join(out_py, "sae_weights.safetensors"), "rb") as a, \
                open(os.path.join(out_cli, "sae_weights.safetensors"), "rb") as b:
            self.assertEqual(a.read(), b.read())
        self.assertEqual(py.info["config"]["variants"]["recipe"], "saelens")
        self.assertTrue(py.info["config"]["variants"]["stop_gradient_groups"])
        self.assertEqual(sorted(os.listdir(os.path.join(out_py, "checkpoints"))),
                         sorted(os.listdir(os.path.join(out_cli, "checkpoints"))))
        self.assertEqual(py.info["training"]["options"]["recipe"], "saelens")

    def test_interrupted_run_resumes_exactly(self):
        x = Fixture.x
        whole_dir = os.path.join(Fixture.tmp, "py_whole")
        part_dir = os.path.join(Fixture.tmp, "py_part")
        opts = dict(steps=40, checkpoint_every=10, log_every=5, sampled_prefixes=3, reorder_every=7)
        whole = train_small(x, out=whole_dir, **opts)

        def interrupt(step, stats):
            if step == 25:
                raise KeyboardInterrupt
        with self.assertRaises(KeyboardInterrupt):
            train_small(x, out=part_dir, progress=interrupt, **opts)
        self.assertEqual(sorted(os.listdir(os.path.join(part_dir, "checkpoints"))),
                         ["latest", "step-0000000010", "step-0000000020"])
        with self.assertRaisesRegex(ValueError, "drop k"):
            msae.train(x, resume=part_dir, k=3)
        resumed = msae.train(x, resume=part_dir, progress=False)
        for name, value in weights(whole).items():
            np.testing.assert_array_equal(getattr(resumed, name), value, err_msg=name)
        self.assertEqual(resumed.threshold, whole.threshold)
        self.assertEqual(resumed.info["training"]["resumed_at_steps"], [20])
        with open(os.path.join(part_dir, "metrics.jsonl")) as f, open(os.path.join(whole_dir, "metrics.jsonl")) as g:
            steps = lambda lines: [json.loads(l)["step"] for l in lines]
            self.assertEqual(steps(f), steps(g))

    def test_progress_bar_and_keywords(self):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            train_small(Fixture.x, steps=5, progress=True)
        self.assertIn("msae: 100% step 5/5", err.getvalue())
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            train_small(Fixture.x, steps=5, progress=False)
        self.assertEqual(err.getvalue(), "")
        with self.assertRaisesRegex(TypeError, "unexpected keyword argument 'dsae'"):
            train_small(Fixture.x, dsae=3)
        with self.assertRaisesRegex(TypeError, "unexpected keyword argument 'meta_steps'"):
            train_small(Fixture.x, meta_steps=3)  # a grid option, not msae.train's
        doc = msae.train.__doc__
        for key in ["d_sae (int, default automatic)", "recipe (str, default 'bussmann')", "stop_gradient_groups (bool",
                    "checkpoint_every (int", "holdout_rows (int"]:
            self.assertIn(key, doc)

    def test_deterministic(self):
        a, b = train_small(Fixture.x), train_small(Fixture.x)
        c = train_small(Fixture.x, seed=SEED + 1)
        for name in ("W_enc", "W_dec", "b_dec"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
            self.assertFalse(np.array_equal(getattr(a, name), getattr(c, name)), name)
        self.assertEqual(a.threshold, b.threshold)

    def test_iterator_equals_array_in_file_order(self):
        x = Fixture.x
        steps = len(x) // BATCH
        ref = train_small(x, no_shuffle=True, steps=steps, holdout_rows=0)

        def chunks():  # uneven sizes, batches straddle them
            i, sizes = 0, [1, 300, 77, 1000, 5]
            while i < len(x):
                n = sizes[i % len(sizes)]
                yield x[i : i + n]
                i += n

        def reused_buffer():  # refills and yields the same array each time
            buf = np.empty((100, D_IN), np.float32)
            for i in range(0, len(x), 100):
                part = x[i : i + 100]
                buf[: len(part)] = part
                yield buf[: len(part)]

        for source in [chunks(), reused_buffer(), [x[:2000], x[2000:]]]:
            sae = train_small(source, steps=None)  # until the iterator ends
            self.assertEqual(sae.info["training"]["steps"], steps)
            for name, value in weights(ref).items():
                np.testing.assert_array_equal(getattr(sae, name), value, err_msg=name)

        # steps stops early; an incomplete last batch is not used
        self.assertEqual(train_small(chunks(), steps=3).info["training"]["steps"], 3)
        sae = train_small(iter([x[: BATCH * 2 + 10]]), steps=None)
        self.assertEqual(sae.info["training"]["steps"], 2)
        self.assertIn("10 rows of an incomplete last batch", sae.info["training"]["data"])

    def test_progress_callback(self):
        calls = []
        train_small(Fixture.x, steps=25, log_every=10, progress=lambda step, stats: calls.append((step, stats)))
        self.assertEqual([s for s, _ in calls], [10, 20, 25])
        stats = calls[-1][1]
        # each call gets that point's metrics.jsonl line: means over the steps since the previous point
        for key in ["step", "loss", "l_aux", "mse_prefix", "l0", "n_dead", "dead_fraction", "fvu", "threshold",
                    "grad_norm", "tokens", "seconds", "tokens_per_s", "steps"]:
            self.assertIn(key, stats)
        self.assertEqual(len(stats["mse_prefix"]), 5)
        self.assertEqual((stats["step"], stats["tokens"], stats["steps"]), (25, 25 * BATCH, 25))
        # an iterator that ends between two logging points: the last step is reported
        calls.clear()
        train_small([Fixture.x[: BATCH * 13]], steps=None, log_every=5, progress=lambda s, st: calls.append(s))
        self.assertEqual(calls, [5, 10, 13])
        # the default: about 100 calls
        calls.clear()
        train_small(Fixture.x, steps=200, batch=64, progress=lambda s, st: calls.append(s))
        self.assertEqual(len(calls), 100)

    def test_exception_in_callback_stops_training(self):
        out = os.path.join(Fixture.tmp, "stopped")
        calls = []

        def progress(step, stats):
            calls.append(step)
            if step == 3:
                raise KeyError("stop here")

        with self.assertRaisesRegex(KeyError, "stop here"):
            train_small(Fixture.x, out=out, steps=1000, log_every=1, progress=progress)
        self.assertEqual(calls, [1, 2, 3])
        self.assertFalse(os.path.exists(out))
        self.assertFalse([n for n in os.listdir(Fixture.tmp) if n.startswith("stopped")])

    def test_ctrl_c_stops_training(self):
        timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        start = time.monotonic()
        try:
            with self.assertRaises(KeyboardInterrupt):
                train_small(Fixture.x, steps=10**7)
        finally:
            timer.cancel()
        self.assertLess(time.monotonic() - start, 30)

    def test_output_directory(self):
        out = os.path.join(Fixture.tmp, "py_out")
        sae = train_small(Fixture.x, out=out, log_every=10)
        self.assertEqual(sorted(os.listdir(out)), ["cfg.json", "metrics.jsonl", "msae.json", "report.html", "sae_weights.safetensors"])
        loaded = msae.Sae.load(out)
        for name, value in weights(sae).items():
            np.testing.assert_array_equal(getattr(loaded, name), value, err_msg=name)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual([l["step"] for l in lines], [10, 20, 30, 40])
        for key in ["loss", "l_aux", "fvu", "l0", "mse_prefix", "tokens", "n_dead", "threshold", "grad_norm"]:
            self.assertIn(key, lines[-1])
        with open(os.path.join(out, "cfg.json")) as f:
            cfg = json.load(f)
        self.assertEqual(cfg["metadata"]["matryoshka_group_boundaries"], [8, 16, 32, 64, 128])
        with self.assertRaisesRegex(FileExistsError, "overwrite=True"):
            train_small(Fixture.x, out=out)
        train_small(Fixture.x, out=out, overwrite=True, steps=2)
        self.assertEqual(msae.Sae.load(out).info["training"]["steps"], 2)
        if BINARY:
            quiet = dict(check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run([BINARY, "inspect", out], **quiet)
            subprocess.run([BINARY, "eval", "--sae", out, "--data", Fixture.npy], **quiet)

    def test_options(self):
        x = Fixture.x
        topk = train_small(x, arch="topk", d_sae=64, steps=5)
        self.assertEqual((topk.arch, topk.d_sae, topk.group_sizes), ("topk", 64, [64]))
        groups = train_small(x, group_sizes=[32, 96], steps=5, encoder_bias=True)
        self.assertEqual((groups.group_boundaries, groups.encoder_bias), ([32, 128], True))
        self.assertEqual(train_small(x, steps=None, tokens=1000).info["training"]["steps"], 4)
        # one epoch of the rows training reads (the last tenth is held out for the final evaluation), but at
        # least the 299 steps the threshold EMA needs at rate 0.01 to settle
        epoch = -(-(len(x) - len(x) // 10) // BATCH)
        self.assertEqual(train_small(x, steps=None).info["training"]["steps"], max(epoch, 299))
        self.assertEqual(train_small(x, steps=None, batch=8).info["training"]["steps"], -(-(len(x) - len(x) // 10) // 8))
        self.assertEqual(train_small(x, steps=None, d_sae=None, k=4, batch=4096).d_sae, 8 * D_IN)
        reference = train_small(x, steps=3, engine="reference")
        sparse = train_small(x, steps=3)
        np.testing.assert_allclose(reference.W_dec, sparse.W_dec, rtol=0, atol=1e-5)
        # init from an Sae or a directory continues from its weights (and takes its width)
        base = train_small(x, steps=5)
        path = os.path.join(Fixture.tmp, "init_base")
        base.save(path, overwrite=True)
        for init in [base, path]:
            cont = msae.train(x, init=init, k=K, batch=BATCH, steps=1, seed=SEED, threads=2, lr=1e-12)
            self.assertEqual(cont.d_sae, D_SAE)
            np.testing.assert_allclose(cont.W_enc, base.W_enc, atol=1e-6)
            # the update renormalizes decoder rows before its Adam step (Adam leaves them slightly off unit norm)
            unit = base.W_dec / np.linalg.norm(base.W_dec, axis=1, keepdims=True)
            np.testing.assert_allclose(cont.W_dec, unit, atol=1e-6)

    def test_threads(self):
        before = msae.num_threads()
        train_small(Fixture.x, steps=2, threads=1)
        self.assertEqual(msae.num_threads(), before)
        msae.set_num_threads(1)
        try:
            self.assertEqual(msae.num_threads(), 1)
            with self.assertRaisesRegex(ValueError, "progress callback"):
                train_small(Fixture.x, steps=1, progress=lambda s, st: msae.set_num_threads(2))
        finally:
            msae.set_num_threads(before)
        self.assertEqual(msae.num_threads(), before)

    def test_errors(self):
        x = Fixture.x
        usage = [
            (dict(k=200), "k 200 exceeds d_sae 128"),
            (dict(group_sizes=[8, 8]), "group_sizes sum to 16"),
            (dict(arch="nope"), "arch: unknown value 'nope'"),
            (dict(engine="nope"), "engine: unknown"),
            (dict(steps=5, tokens=5), "steps or tokens"),
            (dict(steps=0), "steps must be positive"),
            (dict(batch=0), "batch must be positive"),
            (dict(lr=0.0), "lr must be positive"),
            (dict(d_sae=-3), "d_sae must be positive"),
            (dict(log_every=0), "log_every must be positive"),
        ]
        for kw, message in usage:
            with self.assertRaisesRegex(ValueError, re.escape(message)):
                train_small(x, **kw)
        with self.assertRaisesRegex(RuntimeError, "sae_weights.safetensors"):
            train_small(x, init=Fixture.tmp)
        with self.assertRaisesRegex(ValueError, "ended before one batch"):
            train_small([x[:10]], steps=None)
        with self.assertRaisesRegex(ValueError, "yielded no arrays"):
            train_small(iter([]), steps=None)
        with self.assertRaisesRegex(TypeError, "item 1 of the iterator"):
            train_small([x[:300], x[:300].astype(np.float64)], steps=None)
        with self.assertRaisesRegex(ValueError, "item 1 .*width of item 0"):
            train_small([x[:300], x[:300, :16].copy()], steps=None)
        with self.assertRaisesRegex(TypeError, "expected a float32 numpy array"):
            train_small(42)
        with self.assertRaisesRegex(TypeError, "dtype float32"):
            train_small(x.astype(np.float64))
        with self.assertRaisesRegex(TypeError, "progress"):
            train_small(x, progress=3)
        bad = x.copy()
        bad[700, 5] = np.nan
        with self.assertRaisesRegex(RuntimeError, "row 700 column 5"):
            train_small(bad, steps=None, no_shuffle=True)
        with self.assertRaisesRegex(RuntimeError, "no such file"):
            train_small(os.path.join(Fixture.tmp, "missing.npy"))
        with self.assertRaisesRegex(RuntimeError, "does not exist"):
            msae.Sae.load(os.path.join(Fixture.tmp, "missing_dir"))
        broken = os.path.join(Fixture.tmp, "broken")
        os.makedirs(broken, exist_ok=True)
        with open(os.path.join(broken, "sae_weights.safetensors"), "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
        with self.assertRaises(RuntimeError):
            msae.Sae.load(broken)


class FeatureStreams(unittest.TestCase):
    """msae.FeatureStream: the ground-truth streams of msae synth-bench (src/synth, docs/synth-bench.md)."""

    def test_rows_depend_only_on_their_index(self):
        whole = msae.FeatureStream("synth-lite", 1).sample(300)
        parts = msae.FeatureStream("synth-lite", 1)
        a = parts.sample(120)
        b = parts.sample(180)
        np.testing.assert_array_equal(np.vstack([a, b]), whole)
        self.assertEqual(parts.position, 300)
        parts.seek(50)
        np.testing.assert_array_equal(parts.sample(10), whole[50:60])
        # The default stream seed is synth-bench's training stream (2 * seed + 1); another one differs.
        np.testing.assert_array_equal(msae.FeatureStream("synth-lite", 1, stream_seed=3).sample(300), whole)
        self.assertFalse(np.array_equal(msae.FeatureStream("synth-lite", 1, stream_seed=4).sample(300), whole))

    def test_features_and_truth(self):
        s = msae.FeatureStream("tree", 2)
        truth = s.truth
        self.assertEqual(truth["directions"].shape, (20, 20))
        np.testing.assert_allclose(np.linalg.norm(truth["directions"], axis=1), 1.0, rtol=1e-5)
        rows = 40000
        x, offsets, ids = s.sample(rows, with_features=True)
        self.assertEqual((x.shape, x.dtype, offsets.dtype, ids.dtype), ((rows, 20), np.float32, np.int64, np.int32))
        self.assertEqual(offsets[0], 0)
        self.assertEqual(offsets[-1], len(ids))
        counts = np.zeros(20)
        for r in range(0, rows, 97):  # the hierarchy, on a sample of rows
            fired = ids[offsets[r]:offsets[r + 1]]
            self.assertTrue(np.all(np.diff(fired) > 0))
            for f in fired:
                p = truth["parent"][f]
                self.assertTrue(p < 0 or p in fired, f"row {r}: feature {f} without its parent {p}")
        np.add.at(counts, ids, 1)
        # Frequencies against the marginals: 5 binomial standard deviations.
        p = truth["marginal"]
        np.testing.assert_array_less(np.abs(counts / rows - p), 5 * np.sqrt(p * (1 - p) / rows))
        # The tree's directions are orthonormal and its bias is 0: x projects onto exactly the fired ones,
        # with magnitudes >= 0.05.
        proj = x @ truth["directions"].T
        mask = np.zeros((rows, 20), bool)
        mask[np.repeat(np.arange(rows), np.diff(offsets)), ids] = True
        self.assertLess(np.abs(proj[~mask]).max(), 1e-4)
        self.assertGreaterEqual(proj[mask].min(), 0.05 - 1e-4)
        # The same rows without the features.
        np.testing.assert_array_equal(msae.FeatureStream("tree", 2).sample(rows), x)

    def test_errors(self):
        with self.assertRaises(ValueError):
            msae.FeatureStream("no-such-preset")
        s = msae.FeatureStream("absorption")
        with self.assertRaises(ValueError):
            s.sample(-1)
        with self.assertRaises(ValueError):
            s.seek(-5)
        self.assertEqual(s.sample(0).shape, (0, 16))


class Documentation(unittest.TestCase):
    def test_docs_example_runs(self):
        """Every ```python block of docs/python.md, run in order in a fresh directory."""
        with open(os.path.join(SOURCE_DIR, "docs", "python.md")) as f:
            blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
        self.assertGreaterEqual(len(blocks), 2)
        cwd = os.getcwd()
        work = tempfile.mkdtemp(prefix="msae-doc-")
        try:
            os.chdir(work)
            scope = {"__name__": "__main__"}
            for block in blocks:
                exec(compile(block, "docs/python.md", "exec"), scope)
        finally:
            os.chdir(cwd)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
