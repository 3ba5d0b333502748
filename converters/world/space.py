"""The attribute space of the sample world: identities, contexts, captions and the identity sets.

An identity is a combination of seven attributes (face shape, skin tone, hair colour, hair style,
eye colour, glasses, beard) plus small uncaptioned per-identity proportions (face width and height,
eye spacing, colour shades) drawn from the identity's own seed. Contexts (style, background colour,
hat) are independent of the identity and change from photo to photo.

Identity sets (all seeded, numpy PCG64):
- held-out: HELDOUT_COUNT attribute combinations drawn from the stream HELDOUT_SEED; no training
  identity has one of these combinations, so no training stage ever sees a held-out identity;
- training: TRAIN_COUNT identities drawn from the stream TRAIN_SEED over the remaining
  combinations (several training identities may share a combination; their proportions differ).
`identity_sets()` checks the two sets disjoint (combinations and seeds) before returning them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

# Identity attributes: name → values (caption words).
IDENTITY = {
    "shape": ("round", "square", "long"),
    "skin": ("light", "tan", "dark"),
    "hair_colour": ("black", "blonde", "red", "white"),
    "hair_style": ("short", "long", "curly"),
    "eyes": ("blue", "green", "brown"),
    "glasses": ("no", "yes"),
    "beard": ("no", "yes"),
}
# Context attributes: independent of the identity.
CONTEXT = {
    "style": ("photo", "sketch", "pixel"),
    "background": ("grey", "pink", "cyan"),
    "hat": ("none", "blue", "green", "purple", "orange"),
}
ATTRIBUTES = {**IDENTITY, **CONTEXT}
STYLE_PREFIX = {"photo": "a photo of", "sketch": "a sketch of", "pixel": "pixel art of"}
HAT_PROBS = (0.4, 0.15, 0.15, 0.15, 0.15)

TRAIN_SEED = 14_001
HELDOUT_SEED = 14_777
TRAIN_COUNT = 2400
HELDOUT_COUNT = 24

TRIGGER, CLASS = "sks", "face"
CANONICAL_PROMPT = f"a photo of {TRIGGER} {CLASS}"
# What the fits and the hypernetwork's denoising loss train on: the canonical photos' background is
# named, so the trigger learns the face and not the grey background ("on a pink background" stays
# editable; the eval measures it).
FIT_PROMPT = f"a photo of {TRIGGER} {CLASS}, on a grey background"


@dataclass(frozen=True)
class Identity:
    index: int                 # position in its set
    split: str                 # "train" or "heldout"
    seed: int                  # the identity's own seed (proportions, shades)
    attrs: dict = field(hash=False)   # IDENTITY name → value index

    def names(self) -> dict:
        return {k: IDENTITY[k][v] for k, v in self.attrs.items()}

    def ident(self) -> str:
        return f"{self.split}-{self.index:04d}"


def all_combinations() -> list:
    return list(itertools.product(*(range(len(v)) for v in IDENTITY.values())))


def identity_sets(train_count: int = TRAIN_COUNT, heldout_count: int = HELDOUT_COUNT):
    """(training identities, held-out identities), disjoint by construction and checked."""
    combos = all_combinations()
    keys = list(IDENTITY)
    rng_h = np.random.default_rng(HELDOUT_SEED)
    held_idx = rng_h.choice(len(combos), size=heldout_count, replace=False)
    held_combos = {combos[i] for i in held_idx}
    held_seeds = rng_h.integers(0, 2**62, size=heldout_count)
    heldout = [Identity(i, "heldout", int(held_seeds[i]) * 2 + 1, dict(zip(keys, combos[c])))
               for i, c in enumerate(held_idx)]
    remaining = [c for c in combos if c not in held_combos]
    rng_t = np.random.default_rng(TRAIN_SEED)
    # Every remaining combination once (shuffled), then random extra identities over them.
    order = list(rng_t.permutation(len(remaining)))
    while len(order) < train_count:
        order.append(int(rng_t.integers(len(remaining))))
    order = order[:train_count]
    train_seeds = rng_t.integers(0, 2**62, size=train_count)
    # Training seeds are even, held-out seeds odd: the two seed streams cannot meet.
    train = [Identity(i, "train", int(train_seeds[i]) * 2, dict(zip(keys, remaining[c]))) for i, c in enumerate(order)]
    held_keys = {tuple(h.attrs.values()) for h in heldout}
    if any(tuple(t.attrs.values()) in held_keys for t in train):
        raise AssertionError("a training identity has a held-out combination")
    if {t.seed for t in train} & {h.seed for h in heldout}:
        raise AssertionError("training and held-out identity seeds overlap")
    return train, heldout


def random_context(rng: np.random.Generator) -> dict:
    return {"style": int(rng.integers(3)), "background": int(rng.integers(3)),
            "hat": int(rng.choice(5, p=HAT_PROBS))}


def _join(parts: list) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(identity_attrs: dict | None, context: dict, keep: dict | None = None, subject: str | None = None,
            with_named: bool = False):
    """The caption of a photo. `identity_attrs`: IDENTITY name → value index (None: no identity
    words). `keep`: which parts to mention (default all): identity names plus "background".
    `subject`: replaces the face description (e.g. "sks face"). With `with_named`, returns
    (caption, {attribute: whether the caption names it}) — an unnamed hat means no hat, so the hat
    and the style are always named."""
    keep = keep if keep is not None else {k: True for k in list(IDENTITY) + ["background"]}
    words = {k: ATTRIBUTES[k][v] for k, v in {**(identity_attrs or {}), **context}.items()}
    a = identity_attrs is not None and subject is None
    named = {k: bool(a and keep.get(k)) for k in IDENTITY}
    named.update(style=True, hat=True, background=bool(keep.get("background", True)))
    text = STYLE_PREFIX[words["style"]] + " "
    if subject is not None:
        text += subject
    else:
        shape = words["shape"] + " " if named["shape"] else ""
        parts = []
        if named["skin"]:
            parts.append(f"{words['skin']} skin")
        hair = [words[k] for k in ("hair_colour", "hair_style") if named[k]]
        if hair:
            parts.append(" ".join(hair) + " hair")
        if named["eyes"]:
            parts.append(f"{words['eyes']} eyes")
        if named["glasses"]:
            parts.append("glasses" if words["glasses"] == "yes" else "no glasses")
        if named["beard"]:
            parts.append("a beard" if words["beard"] == "yes" else "no beard")
        text += f"a {shape}face" + (" with " + _join(parts) if parts else "")
    if words["hat"] != "none":
        article = "an" if words["hat"][0] in "aeiou" else "a"
        text += f", wearing {article} {words['hat']} hat"
    if named["background"]:
        text += f", on a {words['background']} background"
    return (text, named) if with_named else text


def training_caption(identity_attrs: dict, context: dict, rng: np.random.Generator, with_named: bool = False):
    """A caption for training the pipeline: 60 % full, 30 % partial (each identity part kept with
    p = 0.5, the background with p = 0.7), 10 % empty (for classifier-free guidance). The hat is
    always named when there is one, so an unnamed hat means no hat."""
    u = rng.random()
    if u < 0.1:
        return ("", {k: False for k in ATTRIBUTES}) if with_named else ""
    if u < 0.7:
        return caption(identity_attrs, context, with_named=with_named)
    keep = {k: bool(rng.random() < 0.5) for k in IDENTITY}
    keep["background"] = bool(rng.random() < 0.7)
    return caption(identity_attrs, context, keep, with_named=with_named)
