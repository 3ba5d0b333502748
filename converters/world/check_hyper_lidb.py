"""Check that lidb runs the world's hypernetwork as PyTorch does.

    python converters/world/check_hyper_lidb.py PATH/TO/lidb

For every held-out photo: `lidb personalize --dtype f32` with the converted
samples/world/hypernetwork.safetensors, and the PyTorch reference architecture
(converters/python/reference/hypernetwork.py) with the same F16 weights in float32, its input made
by transformers' CLIPImageProcessor from the config's preprocessing. The predicted factors of every
layer are compared (max |lidb − torch| / max |torch| per tensor); writes
samples/world/hyper-lidb-check.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import OUT, ROOT, log, setup_torch, write_json

torch = setup_torch()

import terms  # noqa: E402,F401  (puts the Python reader on the path)
from lidb.subject import read_subject  # noqa: E402
from space import identity_sets  # noqa: E402

sys.path.insert(0, str(ROOT / "converters" / "python" / "reference"))
from hypernetwork import Hypernetwork  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description="lidb personalize against the PyTorch hypernetwork")
    ap.add_argument("lidb")
    args = ap.parse_args()
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor

    cfg = json.loads((OUT / "hypernetwork.json").read_text())
    model = Hypernetwork(cfg).eval()
    model.load_state_dict({k: v.float() for k, v in load_file(str(OUT / "hypernetwork.safetensors")).items()})
    pre = cfg["preprocessing"]
    proc = CLIPImageProcessor(size=pre["size"], crop_size=pre["crop_size"], resample=Image.Resampling.BICUBIC,
                              rescale_factor=pre["rescale_factor"], image_mean=pre["image_mean"], image_std=pre["image_std"],
                              do_convert_rgb=True)
    _, heldout = identity_sets()
    worst, rows = 0.0, []
    with tempfile.TemporaryDirectory() as tmp:
        base, hyper = Path(tmp) / "world.lidb", Path(tmp) / "hyper.lidb"
        subprocess.run([args.lidb, "convert", str(OUT / "pipeline"), "-o", str(base)], check=True, capture_output=True)
        subprocess.run([args.lidb, "convert", str(OUT / "hypernetwork.safetensors"), "--kind", "hypernetwork", "--config",
                        str(OUT / "hypernetwork.json"), "-o", str(hyper)], check=True, capture_output=True)
        for h in heldout:
            photo = OUT / "heldout" / f"{h.index:04d}.png"
            out = Path(tmp) / f"{h.index}.lidb"
            subprocess.run([args.lidb, "personalize", "--hypernet", str(hyper), "--base", str(base), "--image", str(photo),
                            "--dtype", "f32", "-o", str(out)], check=True, capture_output=True)
            subj = {l.name: l.lidb for l in read_subject(str(out)).layers}
            x = proc(images=Image.open(photo).convert("RGB"), return_tensors="pt").pixel_values
            with torch.no_grad():
                pred = model(x)
            rel = 0.0
            for l, (d, u) in zip(cfg["targets"]["layers"], pred):
                for ours, ref in ((subj[l["name"]].down_train, d[0].numpy()), (subj[l["name"]].up_train, u[0].numpy())):
                    rel = max(rel, float(np.abs(ours - ref).max() / np.abs(ref).max()))
            rows.append({"photo": photo.name, "max_relative_difference": rel})
            worst = max(worst, rel)
    write_json(OUT / "hyper-lidb-check.json", {
        "description": "lidb personalize (f32 output) vs the PyTorch reference hypernetwork with the same F16 weights and "
                       "transformers' CLIPImageProcessor, on the held-out photos: max |lidb - torch| / max |torch| over "
                       "every predicted factor tensor.",
        "max_relative_difference": worst, "photos": rows})
    log(f"lidb personalize vs PyTorch: max relative difference {worst:.3g} over {len(rows)} photos")
    if worst > 1e-4:
        raise SystemExit(f"lidb's prediction differs from PyTorch's by {worst}")


if __name__ == "__main__":
    sys.exit(main())
