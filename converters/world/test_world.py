"""Checks of the world's renderer, identity sets and captions (fast; numpy + PIL only).

    python -m unittest discover -s converters/world -p "test_*.py"
"""

from __future__ import annotations

import hashlib
import json
import sys
import unittest
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402
from render import render  # noqa: E402
from space import (ATTRIBUTES, HELDOUT_COUNT, IDENTITY, TRAIN_COUNT, all_combinations, caption,  # noqa: E402
                   identity_sets, random_context, training_caption)

OUT = Path(__file__).resolve().parents[2] / "samples" / "world"


class IdentitySets(unittest.TestCase):
    def test_sizes_and_disjoint(self):
        train, held = identity_sets()
        self.assertGreaterEqual(len(train), 2000)
        self.assertGreaterEqual(len(held), 16)
        self.assertEqual((len(train), len(held)), (TRAIN_COUNT, HELDOUT_COUNT))
        held_combos = {tuple(h.attrs.values()) for h in held}
        self.assertEqual(len(held_combos), len(held))
        self.assertFalse(held_combos & {tuple(t.attrs.values()) for t in train})
        self.assertFalse({t.seed for t in train} & {h.seed for h in held})
        self.assertGreaterEqual(len(IDENTITY), 6)

    def test_deterministic(self):
        a, b = identity_sets(), identity_sets()
        self.assertEqual([(i.seed, i.attrs) for i in a[0] + a[1]], [(i.seed, i.attrs) for i in b[0] + b[1]])

    def test_every_value_trained(self):
        train, _ = identity_sets()
        for k, values in IDENTITY.items():
            self.assertEqual({t.attrs[k] for t in train}, set(range(len(values))), k)
        self.assertEqual(len({tuple(t.attrs.values()) for t in train}), len(all_combinations()) - HELDOUT_COUNT)


class Captions(unittest.TestCase):
    def test_full_caption_names_everything(self):
        train, _ = identity_sets()
        t = train[0]
        ctx = {"style": 1, "background": 2, "hat": 4}
        text = caption(t.attrs, ctx)
        self.assertTrue(text.startswith("a sketch of a "))
        for k, v in t.names().items():
            if k not in ("glasses", "beard"):
                self.assertIn(v, text)
        self.assertIn("wearing an orange hat", text)
        self.assertTrue(text.endswith("on a cyan background"))

    def test_class_and_trigger_prompts(self):
        ctx = {"style": 0, "background": 0, "hat": 0}
        self.assertEqual(caption(None, ctx, keep={"background": False}), "a photo of a face")
        self.assertEqual(caption(None, ctx, keep={"background": False}, subject="sks face"), "a photo of sks face")

    def test_training_caption_mix(self):
        train, _ = identity_sets()
        rng = np.random.default_rng(0)
        caps = [training_caption(t.attrs, random_context(rng), rng) for t in train[:500]]
        self.assertTrue(0.05 < sum(c == "" for c in caps) / len(caps) < 0.15)
        self.assertTrue(all(len(c.split()) < 60 for c in caps))


class Renderer(unittest.TestCase):
    def test_deterministic_and_shape(self):
        train, held = identity_sets()
        for ident in (train[3], held[5]):
            for style in range(3):
                ctx = {"style": style, "background": 1, "hat": 2}
                a, b = render(ident, ctx, 77), render(ident, ctx, 77)
                self.assertEqual(a.shape, (64, 64, 3))
                self.assertEqual(a.dtype, np.uint8)
                self.assertTrue(np.array_equal(a, b))
                self.assertFalse(np.array_equal(a, render(ident, ctx, 78)))

    def test_styles_differ(self):
        train, _ = identity_sets()
        imgs = [render(train[0], {"style": s, "background": 0, "hat": 0}, 5) for s in range(3)]
        self.assertGreater(np.abs(imgs[0].astype(int) - imgs[1]).mean(), 5)
        self.assertGreater(np.abs(imgs[0].astype(int) - imgs[2]).mean(), 5)

    def test_committed_heldout_photos_match_renderer(self):
        meta = OUT / "heldout" / "identities.json"
        if not meta.exists():
            self.skipTest("samples/world/heldout not built")
        from PIL import Image

        rows = json.loads(meta.read_text())["identities"]
        _, held = identity_sets()
        self.assertEqual(len(rows), len(held))
        for h, row in zip(held, rows):
            self.assertEqual(row["attributes"], h.names())
            img, _ = data.photo(h, data.STREAM_HELDOUT_PHOTO, 0, dict(data.HELDOUT_CONTEXT))
            stored = np.asarray(Image.open(OUT / "heldout" / row["file"]).convert("RGB"))
            self.assertEqual(hashlib.sha256(stored.tobytes()).hexdigest(), hashlib.sha256(img.tobytes()).hexdigest())

    def test_attribute_tables_cover_space(self):
        self.assertEqual(list(ATTRIBUTES)[:len(IDENTITY)], list(IDENTITY))


if __name__ == "__main__":
    unittest.main()
