"""Stage `eval`: the attribute accuracy of images the trained pipeline generates from held-out captions.

For every held-out identity, EVAL_CONTEXTS full captions ("a sketch of a round face with tan skin,
red curly hair, …, wearing a blue hat, on a pink background") with contexts drawn from their own
seeded stream; one image per caption from diffusers' StableDiffusionPipeline (the committed
samples/world/pipeline folder, F16 weights run in F32), DDIM, fixed steps, guidance and seeds; every
image read by the attribute reader (reader.py). Writes samples/world/pipeline-accuracy.json: mean
attribute accuracy, per attribute, identity vs context, and the settings.

`eval_prompts()` and `score()` are shared with the lidb check (check_lidb.py) and the training
stage's periodic probe.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from common import OUT, log, setup_torch, write_json
from space import ATTRIBUTES, CONTEXT, IDENTITY, caption, identity_sets, random_context

torch = setup_torch()

EVAL_STREAM = 404
VALIDATION_STREAM = 505
EVAL_CONTEXTS = 4
STEPS = 25
GUIDANCE = 5.0            # chosen with `evaluate.py --validate` (training identities' captions)
VALIDATE_GUIDANCE = (3.0, 5.0, 7.5, 10.0)
PIPELINE = OUT / "pipeline"


def eval_prompts(contexts: int = EVAL_CONTEXTS, validation: bool = False) -> list:
    """[(prompt, truth row in ATTRIBUTES order, seed, identity name)] for the held-out identities;
    with `validation`, for 24 training identities instead (choosing settings without the held-out set)."""
    train, heldout = identity_sets()
    if validation:
        pick = np.random.default_rng(VALIDATION_STREAM).choice(len(train), size=24, replace=False)
        heldout = [train[int(i)] for i in pick]
    rows = []
    for h in heldout:
        for j in range(contexts):
            ctx = random_context(np.random.default_rng([EVAL_STREAM, h.index, j]))
            ctx["style"] = (h.index + j) % 3          # every style equally often
            truth = [h.attrs[k] for k in IDENTITY] + [ctx[k] for k in CONTEXT]
            rows.append((caption(h.attrs, ctx), truth, 1000 * h.index + j, h.ident()))
    return rows


def score(pred: np.ndarray, truth: np.ndarray) -> dict:
    per = {k: round(float((pred[:, i] == truth[:, i]).mean()), 4) for i, k in enumerate(ATTRIBUTES)}
    ni = len(IDENTITY)
    return {
        "mean_attribute_accuracy": round(float((pred == truth).mean()), 4),
        "identity_attribute_accuracy": round(float((pred[:, :ni] == truth[:, :ni]).mean()), 4),
        "context_attribute_accuracy": round(float((pred[:, ni:] == truth[:, ni:]).mean()), 4),
        "per_attribute": per,
    }


def load_pipeline(path=PIPELINE):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    import models

    models.quiet()
    pipe = StableDiffusionPipeline.from_pretrained(path, dtype=torch.float32, safety_checker=None,
                                                   local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts: list, seeds: list, steps: int = STEPS, guidance: float = GUIDANCE, batch: int = 16):
    """uint8 images [N, 64, 64, 3]; image i from torch.Generator().manual_seed(seeds[i])."""
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + batch]]
        imgs = pipe(prompts[i:i + batch], height=64, width=64, num_inference_steps=steps, guidance_scale=guidance,
                    generator=gens, output_type="np").images
        out.append((np.clip(imgs, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def outputs():
    return [OUT / "pipeline-accuracy.json"]


def validate() -> None:
    """Attribute accuracy on training identities' captions (new contexts and seeds) for each guidance scale."""
    from reader import load_reader, read_attributes

    rows = eval_prompts(contexts=2, validation=True)
    pipe, reader = load_pipeline(), load_reader()
    truth = np.asarray([r[1] for r in rows])
    for g in VALIDATE_GUIDANCE:
        images = generate(pipe, [r[0] for r in rows], [r[2] for r in rows], guidance=g)
        s = score(read_attributes(reader, images), truth)
        log(f"validation, guidance {g}: mean {s['mean_attribute_accuracy']}, identity {s['identity_attribute_accuracy']}, "
            f"context {s['context_attribute_accuracy']}")


def main() -> None:
    from reader import load_reader, read_attributes

    if "--validate" in sys.argv[1:]:
        return validate()
    rows = eval_prompts()
    pipe = load_pipeline()
    t0 = time.time()
    images = generate(pipe, [r[0] for r in rows], [r[2] for r in rows])
    seconds = time.time() - t0
    pred = read_attributes(load_reader(), images)
    truth = np.asarray([r[1] for r in rows])
    table = {
        "description": "Attribute accuracy (attribute reader, samples/world/reader.safetensors) of images generated by "
                       "diffusers' StableDiffusionPipeline from samples/world/pipeline on full captions of the held-out "
                       "identities (attribute combinations no training caption has).",
        "settings": {"images": len(rows), "held_out_identities": len({r[3] for r in rows}),
                     "contexts_per_identity": EVAL_CONTEXTS, "scheduler": "DDIM", "steps": STEPS,
                     "guidance_scale": GUIDANCE, "size": "64x64", "seeds": "torch.Generator().manual_seed(1000·i + j)",
                     "generation_seconds": round(seconds, 1)},
        **score(pred, truth),
        "examples": [{"prompt": r[0], "seed": r[2], "read": {k: ATTRIBUTES[k][int(p)] for k, p in zip(ATTRIBUTES, pr)}}
                     for r, pr in list(zip(rows, pred))[:8]],
    }
    write_json(OUT / "pipeline-accuracy.json", table)
    sheet(images, OUT / "pipeline-heldout.png")
    log(f"pipeline accuracy: mean {table['mean_attribute_accuracy']}, identity {table['identity_attribute_accuracy']}, "
        f"context {table['context_attribute_accuracy']}; {table['per_attribute']}")


def sheet(images: np.ndarray, path, cols: int = 16) -> None:
    """A contact sheet of the generated images (row-major, in eval_prompts() order)."""
    from PIL import Image

    rows = (len(images) + cols - 1) // cols
    grid = np.full((rows * 64, cols * 64, 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        grid[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64] = img
    Image.fromarray(grid).save(path, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
