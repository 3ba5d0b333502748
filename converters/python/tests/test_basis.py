"""Tests for the portable basis generator ``lidb-basis-1`` (``spec/basis.md``).

Run with ``python -m unittest discover -s converters/python/tests``.
"""

from __future__ import annotations

import hashlib
import sys
import unittest
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

import lidb  # noqa: E402
from lidb import basis  # noqa: E402
from lidb.basis import BasisError, key, layer_bases, orthonormal, value, word  # noqa: E402

# (seed, name, out, in, a, b, a', b', sha256(down_aux), sha256(up_aux)) -- the table of
# spec/basis.md §5.
VECTORS = [
    (
        0,
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        320, 320, 100, 50, 100, 50,
        "0d10eb96a0df0754c84b084591d754261a5ce12943a02eabdfb24f9c67624278",
        "355dc929d46e1fb8c43a0b44bcdebbc8da65d2928750038108bb0d736f96a82e",
    ),
    (
        42,
        "text_encoder.text_model.encoder.layers.0.mlp.fc1",
        3072, 768, 100, 50, 100, 50,
        "7b354bac263d337c6e02146e5d9a76bb5900bd79052196d0d5117c80d1d63383",
        "5480a8707e9c892056e0b3a523e621e3a54233d26cef69199ae94531e7c89013",
    ),
    (
        1,
        "x",
        8, 5, 100, 50, 5, 8,
        "d70ea327f30641e3a57b3cbe1f3b21794e5bdcceb6c32820c26dc29aed63a8d9",
        "281675f2be09edf031547e1ef3ef0520323fa351bc5a82bf4ca029ca2bfefcbd",
    ),
    (
        18446744073709551615,
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
        1280, 768, 100, 50, 100, 50,
        "04ed17d12ca7fc9583fd4066b745c0c72286a56682aa248aaad1f38e2ad011cf",
        "b1e9af373ff365c5b47a1dfc2515a31d7b208b8923b5264341fc103030aadb64",
    ),
    (
        7,
        "\u00fcn\u00ef",  # "ünï": non-ASCII name, UTF-8 encoded for the key
        37, 6, 4, 3, 4, 3,
        "b93ed9d59f323f7903a0b34428715d5885156fc93ebede3c778a4e6e4f7fd416",
        "dc9e1ff66448f1f371f094ab420547416164e9442fd792882e4a77ebc5c27ccf",
    ),
]

# Low-level vector: seed 7, name "ünï", role "down".
LOW_KEY = 0x2A0E8DD61A146A14
LOW_WORDS = [0x0FB1DF8594EC425F, 0x725969A400A28257, 0x0D136B825C308425, 0xABF55D796D000786]
LOW_VALUES = [-0.8773842427964649, -0.10664634220186642, -0.8978448499179841, 0.34342544964783883]

# Computed once per run (the larger cases take a few seconds in pure Python).
_CACHE: dict = {}


def bases(case):
    seed, name, out, in_, a, b = case[:6]
    k = (seed, name, out, in_, a, b)
    if k not in _CACHE:
        _CACHE[k] = layer_bases(seed, name, out, in_, a, b)
    return _CACHE[k]


def naive_dot(x, y):
    s = [0.0, 0.0, 0.0, 0.0]
    for c in range(len(x)):
        s[c % 4] = s[c % 4] + x[c] * y[c]
    return (s[0] + s[1]) + (s[2] + s[3])


class IntegerTests(unittest.TestCase):
    def test_mix64_and_fnv(self):
        # SplitMix64 with state 0: first output is mix64(0x9E3779B97F4A7C15).
        self.assertEqual(basis.mix64(0x9E3779B97F4A7C15), 0xE220A8397B1DCDAF)
        self.assertEqual(basis.mix64(0), 0)
        # FNV-1a 64 reference values.
        self.assertEqual(basis.fnv1a64(b""), 0xCBF29CE484222325)
        self.assertEqual(basis.fnv1a64(b"a"), 0xAF63DC4C8601EC8C)
        self.assertEqual(basis.fnv1a64(b"foobar"), 0x85944171F73967E8)

    def test_low_level_vector(self):
        k = key(7, "\u00fcn\u00ef", "down")
        self.assertEqual(k, LOW_KEY)
        self.assertEqual([word(k, i) for i in range(4)], LOW_WORDS)
        vals = [value(k, i) for i in range(4)]
        self.assertEqual(vals, LOW_VALUES)
        self.assertEqual([repr(v) for v in vals], [repr(v) for v in LOW_VALUES])

    def test_values_in_range_and_exact(self):
        k = key(123, "layer", "up")
        for i in range(1000):
            w = word(k, i)
            self.assertTrue(0 <= w < 2**64)
            v = value(k, i)
            self.assertTrue(-1.0 <= v < 1.0)
            # exactly representable: v = (w >> 11) / 2^52 - 1
            self.assertEqual((v + 1.0) * 2.0**52, float(w >> 11))
        self.assertEqual(basis._values(k, 17, 50), [value(k, 17 + c) for c in range(50)])

    def test_dot_order(self):
        k = key(5, "dot", "down")
        for n in (1, 2, 3, 4, 5, 7, 8, 33, 320):
            xs = [value(k, i) for i in range(n)]
            ys = [value(k, 1000 + i) for i in range(n)]
            self.assertEqual(basis.dot(xs, ys).hex(), naive_dot(xs, ys).hex())

    def test_roles_and_names_distinct(self):
        self.assertNotEqual(key(0, "a", "down"), key(0, "a", "up"))
        self.assertNotEqual(key(0, "a", "down"), key(1, "a", "down"))
        self.assertNotEqual(key(0, "a", "down"), key(0, "b", "down"))


class VectorTests(unittest.TestCase):
    def test_vectors(self):
        for case in VECTORS:
            seed, name, out, in_, a, b, a2, b2, sha_down, sha_up = case
            with self.subTest(seed=seed, name=name):
                down, up, ra, rb = bases(case)
                self.assertEqual((ra, rb), (a2, b2))
                self.assertEqual(len(down), 4 * a2 * in_)
                self.assertEqual(len(up), 4 * out * b2)
                self.assertEqual(hashlib.sha256(down).hexdigest(), sha_down)
                self.assertEqual(hashlib.sha256(up).hexdigest(), sha_up)

    def test_orthonormal(self):
        for case in VECTORS:
            seed, name, out, in_ = case[:4]
            a2, b2 = case[6:8]
            with self.subTest(seed=seed, name=name):
                down, up, _, _ = bases(case)
                d = np.frombuffer(down, dtype="<f4").reshape(a2, in_).astype(np.float64)
                u = np.frombuffer(up, dtype="<f4").reshape(out, b2).astype(np.float64)
                self.assertLess(np.abs(d @ d.T - np.eye(a2)).max(), 1e-6)
                self.assertLess(np.abs(u.T @ u - np.eye(b2)).max(), 1e-6)

    def test_f32_rounding_matches_numpy(self):
        # The binary32 bytes are the round-to-nearest-even rounding of the binary64 basis.
        seed, name, out, in_, a, b = 7, "\u00fcn\u00ef", 37, 6, 4, 3
        down, up, a2, b2 = layer_bases(seed, name, out, in_, a, b)
        dq = np.array(orthonormal(key(seed, name, "down"), a2, in_), dtype=np.float64)
        uq = np.array(orthonormal(key(seed, name, "up"), b2, out), dtype=np.float64)
        self.assertEqual(dq.astype("<f4").tobytes(), down)
        self.assertEqual(uq.T.astype("<f4").tobytes(), up)

    def test_orthonormal_binary64(self):
        q = np.array(orthonormal(key(3, "l", "down"), 20, 24))
        self.assertLess(np.abs(q @ q.T - np.eye(20)).max(), 1e-14)

    def test_deterministic(self):
        case = VECTORS[0]
        first = bases(case)
        again = layer_bases(*case[:6])
        self.assertEqual(first, again)
        self.assertEqual(orthonormal(key(9, "n", "up"), 3, 10), orthonormal(key(9, "n", "up"), 3, 10))
        # A different seed or name gives different bases.
        self.assertNotEqual(layer_bases(1, "n", 16, 16, 4, 4)[0], layer_bases(2, "n", 16, 16, 4, 4)[0])
        self.assertNotEqual(layer_bases(1, "n", 16, 16, 4, 4)[0], layer_bases(1, "m", 16, 16, 4, 4)[0])

    def test_prefix_property(self):
        # Vector r depends only on words r*n .. r*n+n-1 and the earlier vectors, so a smaller
        # count gives a prefix of the larger basis.
        k = key(11, "prefix", "down")
        self.assertEqual(orthonormal(k, 3, 9), orthonormal(k, 5, 9)[:3])


class ClampTests(unittest.TestCase):
    def test_clamping(self):
        down, up, a2, b2 = layer_bases(1, "x", 8, 5, 100, 50)
        self.assertEqual((a2, b2), (5, 8))
        self.assertEqual(len(down), 4 * 5 * 5)
        self.assertEqual(len(up), 4 * 8 * 8)
        # Requesting exactly the clamped sizes gives the same bytes.
        self.assertEqual(layer_bases(1, "x", 8, 5, 5, 8), (down, up, 5, 8))
        # Full-size bases are orthogonal matrices.
        d = np.frombuffer(down, dtype="<f4").reshape(5, 5).astype(np.float64)
        u = np.frombuffer(up, dtype="<f4").reshape(8, 8).astype(np.float64)
        self.assertLess(np.abs(d.T @ d - np.eye(5)).max(), 1e-6)
        self.assertLess(np.abs(u @ u.T - np.eye(8)).max(), 1e-6)

    def test_no_clamping_when_small(self):
        _, _, a2, b2 = layer_bases(1, "x", 8, 5, 2, 3)
        self.assertEqual((a2, b2), (2, 3))

    def test_one_by_one(self):
        down, up, a2, b2 = layer_bases(0, "scalar", 1, 1, 4, 4)
        self.assertEqual((a2, b2), (1, 1))
        self.assertIn(np.frombuffer(down, "<f4")[0], (1.0, -1.0))
        self.assertIn(np.frombuffer(up, "<f4")[0], (1.0, -1.0))


class ErrorTests(unittest.TestCase):
    def test_invalid_sizes(self):
        for args in [
            (0, "n", 0, 4, 2, 2),
            (0, "n", 4, 0, 2, 2),
            (0, "n", 4, 4, 0, 2),
            (0, "n", 4, 4, 2, 0),
            (0, "n", 4, 4, -1, 2),
            (0, "n", 4, 4, 2.0, 2),
            (0, "n", 4, True, 2, 2),
        ]:
            with self.subTest(args=args):
                with self.assertRaises(BasisError):
                    layer_bases(*args)

    def test_invalid_seed(self):
        for seed in (-1, 2**64, 1.0, True, "0"):
            with self.subTest(seed=seed):
                with self.assertRaises(BasisError):
                    layer_bases(seed, "n", 4, 4, 2, 2)
        layer_bases(2**64 - 1, "n", 4, 4, 2, 2)  # the largest seed is fine

    def test_invalid_key_arguments(self):
        with self.assertRaises(BasisError):
            key(0, "n", "sideways")
        with self.assertRaises(BasisError):
            key(0, b"n", "down")

    def test_invalid_orthonormal_counts(self):
        k = key(0, "n", "down")
        for count, n in [(0, 4), (5, 4), (-1, 4), (1, 0)]:
            with self.subTest(count=count, n=n):
                with self.assertRaises(BasisError):
                    orthonormal(k, count, n)

    def test_degenerate_basis(self):
        # Force every raw vector to be identical: the second one orthogonalises to ~0.
        with mock.patch.object(basis, "_values", lambda k, start, n: [0.5] * n):
            with self.assertRaisesRegex(BasisError, "degenerate"):
                orthonormal(0, 2, 4)
            with self.assertRaisesRegex(BasisError, "degenerate"):
                layer_bases(0, "n", 4, 4, 2, 2)
        # A zero raw vector (n0 = 0) is degenerate too, not a division by zero.
        with mock.patch.object(basis, "_values", lambda k, start, n: [0.0] * n):
            with self.assertRaisesRegex(BasisError, "degenerate"):
                orthonormal(0, 1, 4)

    def test_error_type(self):
        self.assertTrue(issubclass(BasisError, ValueError))
        self.assertIs(lidb.BasisError, BasisError)
        self.assertIs(lidb.layer_bases, layer_bases)


if __name__ == "__main__":
    unittest.main()
