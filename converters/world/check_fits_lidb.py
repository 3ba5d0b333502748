"""Check that `lidb finetune` fits an identity as well as the PyTorch fits of fits.py.

    python converters/world/check_fits_lidb.py PATH/TO/lidb [--identities N]

For the first N fitted identities: their PHOTOS canonical photos (PNG, temporary folder) go to
`lidb finetune --train lidb` on the converted world pipeline with fits.py's settings (80 steps,
AdamW lr 5e-3, weight decay 1e-2, rank 1, a 100, b 50, alpha 1, basis seed 14601, the canonical
prompt, no gradient clipping). Then the denoising loss of the base, the PyTorch fit and lidb's
fit on the identity's fixed evaluation draws of fits.py (EVAL_PAIRS (photo, latent, t, ε)), in
PyTorch, the lidb subject read by the independent Python reader. The two fits use different random
draws (lidb's are specified in spec/finetune.md, fits.py's are keyed per identity and step), so
their losses are compared, not their factors. Writes samples/world/fits-lidb-check.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import OUT, log, scratch, setup_torch, write_json

torch = setup_torch()

import fits as F  # noqa: E402
import terms  # noqa: E402
from lidb.subject import read_subject  # noqa: E402
from space import FIT_PROMPT, identity_sets  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description="lidb finetune against the PyTorch fits")
    ap.add_argument("lidb")
    ap.add_argument("--identities", type=int, default=4)
    args = ap.parse_args()
    from PIL import Image

    fits = torch.load(scratch() / "fits" / "fits.pt", map_location="cpu", weights_only=False)
    train, _ = identity_sets()
    unet, te, vae, tok, scaling = F.load_models()
    layers = terms.layer_table(unet, te)
    assert terms.fingerprint(layers) == fits["fingerprint"]
    mods = terms.install(unet, te, layers, terms.bases(layers), 1)
    sched = F.noise_scheduler()
    ids_tok = tok(FIT_PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "world.lidb"
        subprocess.run([args.lidb, "convert", str(OUT / "pipeline"), "-o", str(base)], check=True, capture_output=True)
        for row in range(args.identities):
            i = fits["identities"][row]
            photos = F.identity_photos(train[i])
            files = []
            for k, p in enumerate(photos):
                files += ["--image", str(Path(tmp) / f"{i}-{k}.png")]
                Image.fromarray(p).save(files[-1])
            out = Path(tmp) / f"{i}.lidb"
            t0 = time.time()
            subprocess.run([args.lidb, "finetune", "--base", str(base), *files, "--train", "lidb", "--steps", str(F.STEPS),
                            "--lr", str(F.LR), "--adam-weight-decay", str(F.WEIGHT_DECAY), "--rank", str(terms.RANK),
                            "--down-dim", str(terms.DOWN_DIM), "--up-dim", str(terms.UP_DIM), "--alpha", str(terms.ALPHA),
                            "--basis-seed", str(terms.BASIS_SEED), "--seed", str(F.SEED), "--max-grad-norm", "1e30",
                            "--resolution", "64", "--prompt", FIT_PROMPT, "--dtype", "f32", "-o", str(out)], check=True, capture_output=True)
            seconds = time.time() - t0
            subj = read_subject(str(out))
            by_name = {l.name: l for l in subj.layers}
            lidb_f = [(torch.from_numpy(by_name[l["name"]].lidb.down_train.copy())[None],
                       torch.from_numpy(by_name[l["name"]].lidb.up_train.copy())[None]) for l in layers]
            torch_f = [(fits["downs"][k][row][None], fits["ups"][k][row][None]) for k in range(len(layers))]
            enc = F.encode(vae, photos)
            pairs = F.draws((F.SEED + 1, i), *enc, scaling, F.EVAL_PAIRS)
            batch = [(p[1], p[2], p[3]) for p in pairs]

            def loss(factors):
                terms.set_override(mods, None if factors is None else
                                   [(d.expand(len(batch), -1, -1), u.expand(len(batch), -1, -1)) for d, u in factors])
                with torch.no_grad():
                    v = F.denoising_losses(unet, te, mods, ids_tok, sched, batch, None).mean().item()
                terms.set_override(mods, None)
                return v

            rec = {"identity": i, "base": round(loss(None), 6), "pytorch_fit": round(loss(torch_f), 6),
                   "lidb_finetune": round(loss(lidb_f), 6), "lidb_seconds": round(seconds, 1)}
            rows.append(rec)
            log(f"identity {i}: {rec}")
    b = np.mean([r["base"] for r in rows])
    pt = np.mean([r["pytorch_fit"] for r in rows])
    lf = np.mean([r["lidb_finetune"] for r in rows])
    write_json(OUT / "fits-lidb-check.json", {
        "description": "Denoising loss (fits.py's fixed evaluation draws per identity) of the base, the PyTorch fit "
                       "(fits.py) and `lidb finetune --train lidb` with the same settings, for the first fitted identities.",
        "identities": rows,
        "mean": {"base": round(float(b), 6), "pytorch_fit": round(float(pt), 6), "lidb_finetune": round(float(lf), 6),
                 "reduction_pytorch": round(float(1 - pt / b), 4), "reduction_lidb": round(float(1 - lf / b), 4)},
    })
    log(f"mean loss: base {b:.5f}, PyTorch fit {pt:.5f}, lidb finetune {lf:.5f}")


if __name__ == "__main__":
    sys.exit(main())
