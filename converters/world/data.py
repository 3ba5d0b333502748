"""Stage `render`: the rendered photo sets of the world, and the committed held-out photos.

Writes (scratch, see common.scratch()):
    data/train.npz     PHOTOS_PER_IDENTITY photos of every training identity with random contexts:
                       images uint8 [N, 64, 64, 3], attrs int8 [N, 10] (ATTRIBUTES order),
                       identity int32 [N]
    data/fresh.npz     photos never used for training, for measuring the reader: FRESH_TRAIN photos
                       of random training identities (new photo seeds) and FRESH_HELDOUT photos of
                       every held-out identity
Commits:
    samples/world/heldout/NNNN.png   one photo per held-out identity ("a photo of", no hat,
                                     the grey background)
    samples/world/heldout/identities.json   their attributes, the attribute space, the captions

Photo seeds and contexts come from numpy PCG64 streams keyed by (stream, identity index, photo
number); the streams of the training set, the fresh set and the held-out photos differ.
"""

from __future__ import annotations

import sys

import numpy as np

from common import OUT, log, scratch, write_json
from render import render
from space import (ATTRIBUTES, CANONICAL_PROMPT, CLASS, CONTEXT, IDENTITY, TRIGGER, caption, identity_sets,
                   random_context)

PHOTOS_PER_IDENTITY = 10
FRESH_TRAIN = 2400
FRESH_HELDOUT = 40
STREAM_TRAIN, STREAM_FRESH, STREAM_HELDOUT_PHOTO = 101, 202, 303
HELDOUT_CONTEXT = {"style": 0, "background": 0, "hat": 0}


def attr_row(identity, context) -> list:
    return [identity.attrs[k] for k in IDENTITY] + [context[k] for k in CONTEXT]


def photo(identity, stream: int, k: int, context: dict | None = None):
    rng = np.random.default_rng([stream, 1 if identity.split == "heldout" else 0, identity.index, k])
    ctx = random_context(rng) if context is None else context
    seed = int(rng.integers(2**62))
    return render(identity, ctx, seed), ctx


def render_set(items, stream: int):
    images, attrs, ids = [], [], []
    for n, (identity, k) in enumerate(items):
        img, ctx = photo(identity, stream, k)
        images.append(img)
        attrs.append(attr_row(identity, ctx))
        ids.append(identity.index if identity.split == "train" else -1 - identity.index)
        if n % 5000 == 4999:
            log(f"rendered {n + 1}/{len(items)}")
    return np.stack(images), np.asarray(attrs, np.int8), np.asarray(ids, np.int32)


def heldout_files():
    _, heldout = identity_sets()
    return [OUT / "heldout" / f"{h.index:04d}.png" for h in heldout] + [OUT / "heldout" / "identities.json"]


def outputs():
    return [scratch() / "data" / "train.npz", scratch() / "data" / "fresh.npz"] + heldout_files()


def write_heldout() -> None:
    from PIL import Image

    _, heldout = identity_sets()
    folder = OUT / "heldout"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for h in heldout:
        img, ctx = photo(h, STREAM_HELDOUT_PHOTO, 0, dict(HELDOUT_CONTEXT))
        name = f"{h.index:04d}.png"
        Image.fromarray(img).save(folder / name, optimize=True)
        rows.append({"file": name, "identity": h.ident(), "seed": h.seed, "attributes": h.names(),
                     "photo_context": {k: ATTRIBUTES[k][v] for k, v in ctx.items()},
                     "caption": caption(h.attrs, ctx)})
    write_json(folder / "identities.json", {
        "description": "Held-out identities of the sample world: attribute combinations no training identity has "
                       "(converters/world/space.py). One photo each, 64×64, rendered by converters/world/render.py.",
        "trigger": TRIGGER, "class": CLASS, "canonical_prompt": CANONICAL_PROMPT,
        "identity_attributes": {k: list(v) for k, v in IDENTITY.items()},
        "context_attributes": {k: list(v) for k, v in CONTEXT.items()},
        "identities": rows})


def main() -> None:
    train, heldout = identity_sets()
    log(f"{len(train)} training identities, {len(heldout)} held-out identities (disjoint combinations, checked)")
    data = scratch() / "data"
    data.mkdir(parents=True, exist_ok=True)
    target = data / "train.npz"
    if not target.exists():
        items = [(t, k) for t in train for k in range(PHOTOS_PER_IDENTITY)]
        images, attrs, ids = render_set(items, STREAM_TRAIN)
        np.savez(data / ".train.tmp.npz", images=images, attrs=attrs, identity=ids)
        (data / ".train.tmp.npz").rename(target)
    target = data / "fresh.npz"
    if not target.exists():
        rng = np.random.default_rng(STREAM_FRESH)
        picks = rng.integers(len(train), size=FRESH_TRAIN)
        items = [(train[int(i)], 1000 + n) for n, i in enumerate(picks)]
        items += [(h, k) for h in heldout for k in range(FRESH_HELDOUT)]
        images, attrs, ids = render_set(items, STREAM_FRESH)
        np.savez(data / ".fresh.tmp.npz", images=images, attrs=attrs, identity=ids)
        (data / ".fresh.tmp.npz").rename(target)
    write_heldout()
    log("render done")


if __name__ == "__main__":
    sys.exit(main())
