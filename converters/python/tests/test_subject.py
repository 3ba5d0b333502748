"""Tests for the Python subject reader (spec/subject.md §3–4): it refuses what the spec forbids,
like the Swift reader (Tests/SubjectTests/HardeningTests.swift). Hostile files are made here: a
valid subject written by ``write_subject``, then written again through the container writer with
altered metadata or tensors (the targets fingerprint recomputed, so one defect remains).

Run from the repository root:

    python -m unittest discover -s converters/python/tests -v
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

import lidb  # noqa: E402
from lidb.container import IntegerText, read, write  # noqa: E402
from lidb.subject import (LiDBTerm, LoRATerm, Subject, SubjectError, SubjectLayer, check_against_base,  # noqa: E402
                          read_subject, targets_fingerprint, write_subject)


def sample_subject(seed=3) -> Subject:
    rng = np.random.default_rng(seed)
    l0 = SubjectLayer("unet.a.attn1.to_q", 6, 5,
                      lidb=LiDBTerm(1, 3, 2, 1.0, rng.standard_normal((1, 3)).astype(np.float32), rng.standard_normal((2, 1)).astype(np.float32)))
    l1 = SubjectLayer("unet.b.attn1.to_k", 4, 7,
                      lidb=LiDBTerm(1, 3, 2, 1.0, rng.standard_normal((1, 3)).astype(np.float32), rng.standard_normal((2, 1)).astype(np.float32)),
                      lora=LoRATerm(2, 2.0, rng.standard_normal((2, 7)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)))
    return Subject([l0, l1], "sd1", "custom", seed=5)


class Hostile:
    """A subject's metadata and tensors, to alter and write again."""

    def __init__(self, path):
        c = read(path)
        self.metadata = copy.deepcopy(c.metadata)
        self.tensors = {t.name: (c.tensor(t.name, copy=True), t.dtype) for t in c.tensors}
        c.close()

    def set_rows(self, rows):
        self.metadata["layers"] = rows
        self.metadata["binding"]["targets_fingerprint"] = targets_fingerprint([(r["name"], r["shape"][0], r["shape"][1]) for r in rows])

    def write(self, path):
        write(path, "subject", self.metadata, [(n, a, d) for n, (a, d) in self.tensors.items()])
        return path


class SubjectReaderTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def valid(self, dtype="f32"):
        p = os.path.join(self.dir, f"valid-{dtype}.lidb")
        write_subject(p, sample_subject(), dtype)
        read_subject(p)
        return Hostile(p)

    def refused(self, h, label, *words):
        p = h.write(os.path.join(self.dir, label + ".lidb"))
        with self.assertRaises(SubjectError) as cm:
            read_subject(p)
        msg = str(cm.exception)
        self.assertTrue(msg.startswith(p), msg)
        for w in words:
            self.assertIn(w, msg)
        return msg

    def test_structural_defects(self):
        h = self.valid()
        a, d = h.tensors["lidb.down_train"]
        h.tensors["lidb.down_train"] = (a.reshape(1, -1), d)
        self.refused(h, "2d", "lidb.down_train", "shape must be [6]")

        h = self.valid()
        h.metadata["dtype"] = "f16"
        self.refused(h, "dtype", "is F32", "calls for F16")

        h = self.valid()
        h.tensors["extra.notes"] = (np.array([1, 2, 3], np.uint8), "U8")
        self.refused(h, "extra", "extra.notes", "unexpected tensor")

        h = self.valid()
        h.metadata["binding"]["targets_fingerprint"] = "ab" * 32
        self.refused(h, "fp", "targets fingerprint")

        h = self.valid()
        del h.metadata["binding"]["targets_fingerprint"]
        self.refused(h, "nofp", "targets_fingerprint")

        h = self.valid()
        h.metadata["trained_parameters"] = 1
        self.refused(h, "tp", "trained_parameters is 1")

        h = self.valid()
        h.metadata["targets"] = "everything"
        self.refused(h, "targets", "metadata.targets")

        h = self.valid()
        a, d = h.tensors["lora.unet.b.attn1.to_k.up"]
        h.tensors["lora.unet.b.attn1.to_k.up"] = (a.reshape(2, 4), d)
        self.refused(h, "lora", "lora.unet.b.attn1.to_k.up", "[4, 2]")

    def test_limits(self):
        cases = [
            ([1 << 62, 1 << 62], {"rank": 1024, "a": 1 << 60, "b": 1, "alpha": 1.0}, "each dimension must be 1"),
            ([65536, 65536], {"rank": 1, "a": 2, "b": 2, "alpha": 1.0}, "more than 268435456 elements"),
            ([8, 8], {"rank": 2048, "a": 2, "b": 2, "alpha": 1.0}, "invalid lidb term"),
            ([4096, 4096], {"rank": 1, "a": 2000, "b": 2, "alpha": 1.0}, "invalid lidb term"),
            ([8, 8], {"rank": 1, "a": 2, "b": 2, "alpha": 1e308}, "not finite as a 32-bit float"),
        ]
        for shape, term, words in cases:
            with self.subTest(shape=shape, term=term):
                h = self.valid()
                rows = h.metadata["layers"]
                rows[0] = {"name": rows[0]["name"], "shape": shape, "lidb": term}
                h.set_rows(rows)
                self.refused(h, "limits", words)

    def test_non_finite_values(self):
        for bad in (np.nan, np.inf):
            h = self.valid()
            a, d = h.tensors["lidb.down_train"]
            a = a.copy()
            a[1] = bad
            h.tensors["lidb.down_train"] = (a, d)
            self.refused(h, "nan", "lidb.down_train", "finite")
        h = self.valid("f16")
        a, d = h.tensors["lidb.up_train"]
        a = a.copy()
        a[0] = np.float16(np.inf)
        h.tensors["lidb.up_train"] = (a, d)
        self.refused(h, "inf16", "lidb.up_train", "finite")
        h = self.valid("q8")
        h.tensors["lidb.down_train.scale"] = (np.array([3e38, 0.01], np.float32), "F32")
        self.refused(h, "scale", "lidb.down_train.scale", "q8 scales")
        for bad in (0.0, -1.0, np.nan):
            h = self.valid("q8")
            h.tensors["lora.unet.b.attn1.to_k.up.scale"] = (np.array([bad], np.float32), "F32")
            self.refused(h, "scale2", "lora.unet.b.attn1.to_k.up.scale")

    def test_writer_refuses_what_readers_refuse(self):
        """A factor of 3.4028235e38 made the q8 scale max/127, whose 127 · scale overflows: the
        writer wrote a file its reader refused. The writer now applies the readers' rule (and
        refuses f16/bf16 overflow); nothing is written. The largest maximum the rule allows, and a
        block of subnormals (whose scale underflowed to 0), round-trip."""
        big = np.float32(np.finfo(np.float32).max)
        for dtype, value, words in (("q8", big, ("lidb.down_train", "unet.b.attn1.to_k", "q8 scale")),
                                    ("f16", np.float32(70000), ("lidb.down_train", "unet.b.attn1.to_k", "f16")),
                                    ("bf16", big, ("lidb.down_train", "unet.b.attn1.to_k", "bf16"))):
            s = sample_subject()
            s.layers[1].lidb.down_train[0, 2] = value
            p = os.path.join(self.dir, f"big-{dtype}.lidb")
            with self.assertRaises(ValueError) as cm:
                write_subject(p, s, dtype)
            for w in words:
                self.assertIn(w, str(cm.exception))
            self.assertEqual(os.listdir(self.dir), [], "no output or temp file")
        # The largest block maximum the rule accepts, found from the rule itself.
        m = big
        with np.errstate(over="ignore"):
            while not np.isfinite(np.float32(m / np.float32(127)) * np.float32(127)):
                m = np.nextafter(m, np.float32(0), dtype=np.float32)
        s = sample_subject()
        s.layers[1].lidb.down_train[0, 2] = m
        tiny = np.float32(2.0 ** -149)
        s.layers[0].lidb.down_train[0, :] = np.array([0, tiny, -3 * tiny], np.float32)
        p = os.path.join(self.dir, "edge-q8.lidb")
        write_subject(p, s, "q8")
        back = read_subject(p)
        got = back.layers[1].lidb.down_train.reshape(-1)[2]
        self.assertTrue(np.isfinite(got) and abs(float(got) - float(m)) <= float(m) / 254, got)
        np.testing.assert_array_equal(back.layers[0].lidb.down_train.reshape(-1), s.layers[0].lidb.down_train.reshape(-1))

    def test_round_trip_and_large_seed(self):
        for dtype in ("f32", "f16", "bf16", "q8"):
            p = os.path.join(self.dir, f"rt-{dtype}.lidb")
            write_subject(p, sample_subject(), dtype)
            s = read_subject(p)
            self.assertEqual(len(s.layers), 2)
        s = sample_subject()
        s.seed = (1 << 64) - 1  # arrives as IntegerText
        p = os.path.join(self.dir, "seed.lidb")
        write_subject(p, s, "f32")
        self.assertEqual(read_subject(p).seed, (1 << 64) - 1)

    def test_verify_command_checks_subjects(self):
        import contextlib
        import io
        from lidb.__main__ import main
        h = self.valid()
        good = h.write(os.path.join(self.dir, "good.lidb"))
        h.metadata["binding"]["targets_fingerprint"] = "0" * 64
        bad = h.write(os.path.join(self.dir, "bad.lidb"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(main(["verify", good]), 0)
            self.assertEqual(main(["verify", bad]), 1)
        self.assertIn("targets fingerprint", out.getvalue())

    def test_base_order(self):
        s = sample_subject()
        table = [("unet.a.attn1.to_q.weight", (6, 5)), ("unet.b.attn1.to_k.weight", (4, 7))]
        check_against_base(s, table)
        with self.assertRaises(SubjectError) as cm:
            check_against_base(s, list(reversed(table)))
        self.assertIn("not in the base's tensor order", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
