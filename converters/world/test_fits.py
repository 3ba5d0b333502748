"""Checks of the LiDB fits and the hypernetwork's training pieces (need torch and the committed pipeline).

    python -m unittest discover -s converters/world -p "test_*.py"
"""

from __future__ import annotations

import os
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False


@unittest.skipUnless(HAVE_TORCH, "needs torch (the pinned venv)")
class Fits(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import fits
        import terms
        from space import CANONICAL_PROMPT, identity_sets

        cls.fits, cls.terms = fits, terms
        cls.train, _ = identity_sets()
        unet, te, vae, tok, scaling = fits.load_models()
        cls.layers = terms.layer_table(unet, te)
        cls.models = (unet, te, vae, tok, scaling)
        cls.mods = terms.install(unet, te, cls.layers, terms.bases(cls.layers), 2)
        cls.sched = fits.noise_scheduler()
        cls.ids_tok = tok(CANONICAL_PROMPT, padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt").input_ids

    def fit(self, group: int, size: int):
        unet, te, vae, _, scaling = self.models
        saved = (self.fits.GROUP, self.fits.IDENTITIES, self.fits.STEPS, self.fits.EVAL_PAIRS)
        self.fits.GROUP, self.fits.IDENTITIES, self.fits.STEPS, self.fits.EVAL_PAIRS = size, 4, 3, 1
        try:
            return self.fits.fit_group(group, self.train, unet, te, vae, scaling, self.mods, self.sched, self.ids_tok)
        finally:
            self.fits.GROUP, self.fits.IDENTITIES, self.fits.STEPS, self.fits.EVAL_PAIRS = saved

    def test_an_identity_fits_the_same_alone_and_in_a_group(self):
        """Identity 1 trained in group {0, 1} and alone (group 1 of size 1): the same factors — the
        batched terms keep identities apart and the loss sum keeps their gradients apart."""
        pair = self.fit(0, 2)
        alone = self.fit(1, 1)
        self.assertEqual(pair["identities"], [0, 1])
        self.assertEqual(alone["identities"], [1])
        worst = 0.0
        for a, b in zip(pair["ups"] + pair["downs"], alone["ups"] + alone["downs"]):
            scale = float(b[0].abs().max())
            worst = max(worst, float((a[1] - b[0]).abs().max()) / max(scale, 1e-12))
        self.assertLess(worst, 1e-4)
        # Something was learnt: up_train left zero.
        self.assertGreater(max(float(u.abs().max()) for u in pair["ups"]), 0.0)

    def test_layer_table_is_lidbs(self):
        """The `paper` table of the world pipeline: 98 layers whose fingerprint lidb computes for
        samples/world/hypernetwork.json (written from this table by hyper.py)."""
        import json

        from common import OUT

        self.assertEqual(len(self.layers), 98)
        cfg = json.loads((OUT / "hypernetwork.json").read_text())
        self.assertEqual(cfg["targets"]["fingerprint"], self.terms.fingerprint(self.layers))

    def test_fold_keeps_the_prediction(self):
        """hyper.fold: the normalised model times (s_d, s_u) equals the folded model."""
        import hyper
        from hypernetwork import Hypernetwork

        torch.manual_seed(0)
        cfg = hyper.config(self.layers)
        model = Hypernetwork(cfg).eval()
        folded = Hypernetwork(cfg).eval()
        folded.load_state_dict(hyper.fold(model, 0.05, 0.002))
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            a, b = model(x), folded(x)
        for (ad, au), (bd, bu) in zip(a, b):
            # float rounding differs between the two parametrisations: compare to the tensor's scale
            self.assertLess(float((ad * 0.05 - bd).abs().max() / bd.abs().max()), 1e-4)
            self.assertLess(float((au * 0.002 - bu).abs().max() / bu.abs().max()), 1e-4)


if __name__ == "__main__":
    unittest.main()
