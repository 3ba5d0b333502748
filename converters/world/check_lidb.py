"""Check that lidb runs the trained world pipeline: convert it, generate held-out captions, read them.

    python converters/world/check_lidb.py PATH/TO/lidb [--contexts N]

`lidb convert samples/world/pipeline` → a base (temporary folder), then for every held-out
identity and its first N evaluation captions (evaluate.eval_prompts) `lidb generate` with the
settings of the diffusers evaluation (DDIM, same steps, guidance and seeds, 64×64), and the same
captions through diffusers' pipeline. Both image sets are read by the attribute reader; writes
samples/world/lidb-accuracy.json (both accuracies, the pixel difference between the two
implementations' images) and samples/world/lidb-heldout.png (lidb's images; row pairs: lidb, diffusers).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import OUT, log, write_json

import evaluate  # noqa: E402  (sets up torch)
from reader import load_reader, read_attributes  # noqa: E402
from space import ATTRIBUTES  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description="lidb runs the world pipeline")
    ap.add_argument("lidb")
    ap.add_argument("--contexts", type=int, default=1, help="captions per held-out identity (default 1)")
    args = ap.parse_args()
    from PIL import Image

    rows = evaluate.eval_prompts()
    rows = [r for r in rows if r[2] % 1000 < args.contexts]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "world.lidb"
        subprocess.run([args.lidb, "convert", str(evaluate.PIPELINE), "-o", str(base)], check=True)
        lidb_images, seconds = [], 0.0
        for n, (prompt, _, seed, _) in enumerate(rows):
            out = Path(tmp) / f"{n}.png"
            t0 = time.time()
            subprocess.run([args.lidb, "generate", "--model", str(base), "--prompt", prompt, "--steps",
                            str(evaluate.STEPS), "--cfg", str(evaluate.GUIDANCE), "--seed", str(seed), "--sampler", "ddim",
                            "--width", "64", "--height", "64", "-o", str(out)], check=True, capture_output=True)
            seconds += time.time() - t0
            lidb_images.append(np.asarray(Image.open(out).convert("RGB")))
        lidb_images = np.stack(lidb_images)
    pipe = evaluate.load_pipeline()
    diff_images = evaluate.generate(pipe, [r[0] for r in rows], [r[2] for r in rows])
    reader = load_reader()
    truth = np.asarray([r[1] for r in rows])
    pl, pd = read_attributes(reader, lidb_images), read_attributes(reader, diff_images)
    delta = np.abs(lidb_images.astype(np.int32) - diff_images.astype(np.int32))
    table = {
        "description": "lidb's runtime on the world pipeline (lidb convert samples/world/pipeline; lidb generate, DDIM) "
                       "next to diffusers' StableDiffusionPipeline, same held-out captions, seeds and settings; both "
                       "read by the attribute reader.",
        "settings": {"images": len(rows), "scheduler": "DDIM", "steps": evaluate.STEPS, "guidance_scale": evaluate.GUIDANCE,
                     "size": "64x64", "lidb_seconds_per_image": round(seconds / len(rows), 2)},
        "lidb": evaluate.score(pl, truth),
        "diffusers": evaluate.score(pd, truth),
        "reader_agreement_lidb_vs_diffusers": round(float((pl == pd).mean()), 4),
        "pixel_difference": {"max": int(delta.max()), "mean": round(float(delta.mean()), 3)},
        "captions": [{"prompt": r[0], "seed": r[2],
                      "lidb_read": {k: ATTRIBUTES[k][int(p)] for k, p in zip(ATTRIBUTES, a)}} for r, a in zip(rows, pl)],
    }
    write_json(OUT / "lidb-accuracy.json", table)
    cols = 12
    pairs = []
    for i in range(0, len(rows), cols):
        pairs += list(lidb_images[i:i + cols]) + [np.full((64, 64, 3), 255, np.uint8)] * (cols - len(lidb_images[i:i + cols]))
        pairs += list(diff_images[i:i + cols]) + [np.full((64, 64, 3), 255, np.uint8)] * (cols - len(diff_images[i:i + cols]))
    evaluate.sheet(np.stack(pairs), OUT / "lidb-heldout.png", cols=cols)
    log(f"lidb mean {table['lidb']['mean_attribute_accuracy']} vs diffusers {table['diffusers']['mean_attribute_accuracy']}; "
        f"pixels max {table['pixel_difference']['max']}, mean {table['pixel_difference']['mean']}")


if __name__ == "__main__":
    sys.exit(main())
