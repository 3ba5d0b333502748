"""The face renderer of the sample world (numpy + PIL, deterministic for a given seed).

`render(identity, context, photo_seed)` draws one 64×64 RGB photo (uint8 array [64, 64, 3]):

1. a label map at 128×128: each part (skin, hair, sclera, iris, pupil, glasses, mouth, nose, beard,
   hat, hat band) drawn as a PIL mask at the photo's position, scale and the identity's proportions,
   then rotated by the photo's small angle (nearest neighbour, so labels stay labels);
2. colours from the identity (skin, hair, eyes, with the identity's shade jitter) and the context
   (background, hat);
3. the style: "photo" — soft edges, a random directional lighting ramp and brightness, mild noise;
   "sketch" — paper-light colours, dark outlines (≈ 2 px) at every part boundary, diagonal hatching
   on the figure (eyes keep their colour); "pixel" — a 16×16 grid of 4×4-pixel blocks, each showing
   its main part (eyes, glasses and mouth first), colours posterised to 6 levels per channel;
4. downsampled to 64×64 (Lanczos; pixel art by nearest neighbour).

Every random draw comes from numpy PCG64 generators seeded by the identity seed (proportions) and
the photo seed (position, scale, rotation, lighting), so a (identity, context, photo seed) triple
gives the same pixels on every machine with the pinned numpy and Pillow.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from space import ATTRIBUTES, Identity

SIZE = 64
CANVAS = 128

SKIN = {"light": (250, 214, 184), "tan": (206, 150, 98), "dark": (112, 70, 46)}
HAIR = {"black": (34, 30, 32), "blonde": (236, 200, 86), "red": (192, 44, 26), "white": (240, 240, 240)}
EYES = {"blue": (30, 90, 235), "green": (30, 172, 52), "brown": (104, 56, 20)}
BACKGROUND = {"grey": (140, 140, 146), "pink": (246, 172, 204), "cyan": (112, 214, 216)}
HAT = {"blue": (36, 58, 196), "green": (28, 128, 48), "purple": (138, 38, 172), "orange": (244, 122, 18)}

# Labels of the map (drawing order matters; later parts cover earlier ones).
BG, SKIN_L, HAIR_L, SCLERA, IRIS, PUPIL, GLASSES, MOUTH, NOSE, BEARD, HAT_L, BAND = range(12)
# Pixel art: small parts that take a block when they cover at least this many of its 64 pixels
# (at 128×128), in priority order.
PIXEL_PRIORITY = ((IRIS, 12), (GLASSES, 10), (MOUTH, 10))


def _identity_params(identity: Identity) -> dict:
    r = np.random.default_rng(identity.seed)
    return {
        "w": float(r.uniform(0.95, 1.05)), "h": float(r.uniform(0.95, 1.05)),
        "eye_dx": float(r.uniform(-1.5, 1.5)), "eye_dy": float(r.uniform(-2.0, 2.0)),
        "mouth_w": float(r.uniform(0.85, 1.15)),
        "skin_jitter": r.integers(-7, 8, size=3), "hair_jitter": r.integers(-7, 8, size=3),
        "eye_jitter": r.integers(-10, 11, size=3),
    }


def _photo_params(photo_seed: int) -> dict:
    r = np.random.default_rng(photo_seed)
    angle = float(r.uniform(0, 2 * np.pi))
    return {
        "dx": float(r.uniform(-8, 8)), "dy": float(r.uniform(-6, 6)), "scale": float(r.uniform(0.98, 1.16)),
        "rot": float(r.uniform(-10, 10)), "brightness": float(r.uniform(0.86, 1.12)),
        "ramp": float(r.uniform(0.0, 0.22)), "ramp_dir": (np.cos(angle), np.sin(angle)),
        "noise_seed": int(r.integers(2**31)),
    }


def _mask() -> tuple:
    m = Image.new("L", (CANVAS, CANVAS), 0)
    return m, ImageDraw.Draw(m)


def _face_mask(shape: str, cx: float, cy: float, hw: float, hh: float, u: float) -> Image.Image:
    m, d = _mask()
    box = [cx - hw, cy - hh, cx + hw, cy + hh]
    if shape == "round":
        d.ellipse(box, fill=255)
    elif shape == "square":
        d.rounded_rectangle(box, radius=5 * u, fill=255)
    else:
        d.ellipse(box, fill=255)
    return m


def label_map(identity: Identity, context: dict, photo_seed: int) -> np.ndarray:
    a = identity.names()
    ip = _identity_params(identity)
    pp = _photo_params(photo_seed)
    u = pp["scale"]
    cx, cy = CANVAS / 2 + pp["dx"], 74 + pp["dy"]
    hw, hh = {"round": (31, 31), "square": (29, 32), "long": (24, 38)}[a["shape"]]
    hw, hh = hw * u * ip["w"], hh * u * ip["h"]
    top, bottom = cy - hh, cy + hh
    labels = np.zeros((CANVAS, CANVAS), np.uint8)

    def put(mask: Image.Image, label: int) -> None:
        labels[np.asarray(mask) > 127] = label

    # Hair behind the head.
    style = a["hair_style"]
    m, d = _mask()
    if style == "long":
        d.rounded_rectangle([cx - hw - 7 * u, top - 5 * u, cx + hw + 7 * u, bottom + 9 * u], radius=10 * u, fill=255)
    elif style == "curly":
        for t in np.linspace(np.pi * 0.95, np.pi * 2.05, 13):
            px, py = cx + (hw + 4 * u) * np.cos(t), cy + (hh + 3 * u) * np.sin(t) - 2 * u
            d.ellipse([px - 9 * u, py - 9 * u, px + 9 * u, py + 9 * u], fill=255)
        for side in (-1, 1):
            for k in range(3):
                px, py = cx + side * (hw + 5 * u), cy + (k * 9 - 2) * u
                d.ellipse([px - 8 * u, py - 8 * u, px + 8 * u, py + 8 * u], fill=255)
    cap = [cx - hw - 4 * u, top - 6 * u, cx + hw + 4 * u, top + 2 * (0.62 * hh)]
    d.ellipse(cap, fill=255)
    put(m, HAIR_L)
    # Ears, face.
    m, d = _mask()
    for side in (-1, 1):
        ex = cx + side * (hw + 1 * u)
        d.ellipse([ex - 5 * u, cy - 8 * u, ex + 5 * u, cy + 8 * u], fill=255)
    put(m, SKIN_L)
    face = _face_mask(a["shape"], cx, cy, hw, hh, u)
    put(face, SKIN_L)
    # Beard: the lower face and a little below the chin, following the face's outline.
    if a["beard"] == "yes":
        b = np.asarray(_face_mask(a["shape"], cx, cy + 3 * u, hw + 2 * u, hh + 3 * u, u)) > 127
        b &= np.arange(CANVAS)[:, None] > cy + 5 * u
        labels[b] = BEARD
    # Fringe: the hair cap over the forehead, down to the hairline.
    m, d = _mask()
    d.ellipse(cap, fill=255)
    fr = (np.asarray(m) > 127) & (np.asarray(face) > 127) & (np.arange(CANVAS)[:, None] < top + 0.5 * hh)
    if style == "curly":
        m2, d2 = _mask()
        for x in np.linspace(cx - hw * 0.8, cx + hw * 0.8, 5):
            y = top + 0.5 * hh
            d2.ellipse([x - 6 * u, y - 6 * u, x + 6 * u, y + 5 * u], fill=255)
        fr |= (np.asarray(m2) > 127) & (np.asarray(face) > 127)
    labels[fr] = HAIR_L
    # Eyes.
    ey = cy - 3 * u + ip["eye_dy"] * u
    for side in (-1, 1):
        ex = cx + side * (11 * u + ip["eye_dx"] * u)
        m, d = _mask()
        d.ellipse([ex - 7 * u, ey - 5.5 * u, ex + 7 * u, ey + 5.5 * u], fill=255)
        put(m, SCLERA)
        m, d = _mask()
        d.ellipse([ex - 4.4 * u, ey - 4.4 * u, ex + 4.4 * u, ey + 4.4 * u], fill=255)
        put(m, IRIS)
        m, d = _mask()
        d.ellipse([ex - 1.6 * u, ey - 1.6 * u, ex + 1.6 * u, ey + 1.6 * u], fill=255)
        put(m, PUPIL)
    # Nose, mouth.
    m, d = _mask()
    d.line([(cx, cy + 3 * u), (cx - 3 * u, cy + 10 * u), (cx + 1 * u, cy + 11 * u)], fill=255, width=max(1, round(2 * u)))
    put(m, NOSE)
    m, d = _mask()
    mw = 9 * u * ip["mouth_w"]
    my = cy + 14 * u
    d.arc([cx - mw, my - 6 * u, cx + mw, my + 5 * u], 20, 160, fill=255, width=max(2, round(3 * u)))
    put(m, MOUTH)
    # Glasses: thick round frames, a bridge and temples.
    if a["glasses"] == "yes":
        m, d = _mask()
        w = max(2, round(2.6 * u))
        for side in (-1, 1):
            ex = cx + side * (11 * u + ip["eye_dx"] * u)
            d.ellipse([ex - 9.5 * u, ey - 8.5 * u, ex + 9.5 * u, ey + 8.5 * u], outline=255, width=w)
            d.line([(ex + side * 9.5 * u, ey - 1 * u), (cx + side * (hw + 1 * u), ey - 2 * u)], fill=255, width=w)
        d.line([(cx - 2.5 * u, ey - 1 * u), (cx + 2.5 * u, ey - 1 * u)], fill=255, width=w)
        put(m, GLASSES)
    # Hat: crown with a band, and a brim.
    if context["hat"] != 0:
        m, d = _mask()
        d.rounded_rectangle([cx - hw * 0.92, top - 18 * u, cx + hw * 0.92, top + 5 * u], radius=6 * u, fill=255)
        d.rounded_rectangle([cx - hw - 9 * u, top + 1 * u, cx + hw + 9 * u, top + 8 * u], radius=3 * u, fill=255)
        put(m, HAT_L)
        m, d = _mask()
        d.rectangle([cx - hw * 0.92, top - 5 * u, cx + hw * 0.92, top + 1 * u], fill=255)
        put(m, BAND)
    img = Image.fromarray(labels, "L").rotate(pp["rot"], resample=Image.Resampling.NEAREST, center=(cx, cy), fillcolor=BG)
    return np.asarray(img)


def palette(identity: Identity, context: dict) -> np.ndarray:
    a = identity.names()
    ip = _identity_params(identity)
    c = {k: ATTRIBUTES[k][v] for k, v in context.items()}
    clip = lambda v: np.clip(np.asarray(v, np.int32), 0, 255)  # noqa: E731
    skin = clip(np.array(SKIN[a["skin"]]) + ip["skin_jitter"])
    hair = clip(np.array(HAIR[a["hair_colour"]]) + ip["hair_jitter"])
    hat = np.array(HAT.get(c["hat"], (0, 0, 0)))
    pal = np.zeros((12, 3), np.float32)
    pal[BG] = BACKGROUND[c["background"]]
    pal[SKIN_L] = skin
    pal[HAIR_L] = hair
    pal[SCLERA] = (250, 250, 250)
    pal[IRIS] = clip(np.array(EYES[a["eyes"]]) + ip["eye_jitter"])
    pal[PUPIL] = (12, 12, 14)
    pal[GLASSES] = (22, 22, 26)
    pal[MOUTH] = (150, 36, 48)
    pal[NOSE] = skin * 0.78
    pal[BEARD] = hair * 0.92
    pal[HAT_L] = hat
    pal[BAND] = hat * 0.55
    return pal


def render(identity: Identity, context: dict, photo_seed: int) -> np.ndarray:
    """One 64×64 RGB photo (uint8 [64, 64, 3])."""
    labels = label_map(identity, context, photo_seed)
    pal = palette(identity, context)
    pp = _photo_params(photo_seed)
    style = ATTRIBUTES["style"][context["style"]]
    rgb = pal[labels]                                       # [128, 128, 3] float
    if style == "photo":
        img = Image.fromarray(rgb.astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2))
        x = np.asarray(img, np.float32)
        yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32) / CANVAS - 0.5
        ramp = 1 + pp["ramp"] * 2 * (xx * pp["ramp_dir"][0] + yy * pp["ramp_dir"][1])
        x = x * (pp["brightness"] * ramp)[..., None]
        x += np.random.default_rng(pp["noise_seed"]).normal(0, 2.0, x.shape).astype(np.float32)
        out = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
        return np.asarray(out)
    if style == "sketch":
        paper = np.array((250, 247, 238), np.float32)
        x = rgb * 0.55 + paper * 0.45
        fig = labels != BG
        eye = np.isin(labels, (SCLERA, IRIS, PUPIL))
        thin = np.isin(labels, (IRIS, PUPIL, GLASSES, MOUTH, NOSE))   # small or already dark: no outline
        yy, xx = np.mgrid[0:CANVAS, 0:CANVAS]
        hatch = ((xx + yy) % 10 < 3) & fig & ~eye & ~thin
        x[hatch] *= 0.78
        diff_v = (labels[:-1, :] != labels[1:, :]) & ~thin[:-1, :] & ~thin[1:, :]
        diff_h = (labels[:, :-1] != labels[:, 1:]) & ~thin[:, :-1] & ~thin[:, 1:]
        edge = np.zeros_like(fig)
        edge[:-1, :] |= diff_v
        edge[1:, :] |= diff_v
        edge[:, :-1] |= diff_h
        edge[:, 1:] |= diff_h
        thick = edge.copy()                                  # one more pixel each way: ≈ 2 px at 64×64
        thick[1:, :] |= edge[:-1, :]
        thick[:-1, :] |= edge[1:, :]
        thick[:, 1:] |= edge[:, :-1]
        thick[:, :-1] |= edge[:, 1:]
        thick &= ~eye                                        # eyes keep a thin outline and their colour
        x[thick | edge] = (40, 36, 44)
        x *= 0.95 + 0.05 * pp["brightness"]
        out = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
        return np.asarray(out)
    # pixel art: a 16×16 grid of 4×4-pixel blocks (aligned with the VAE's latent grid). A block shows
    # the first small part that covers enough of it (iris, glasses, mouth: PIXEL_PRIORITY), else the
    # part that covers most of it; colours posterised to 6 levels per channel.
    grid = CANVAS // 16
    blocks = labels.reshape(16, grid, 16, grid).transpose(0, 2, 1, 3).reshape(16, 16, grid * grid)
    counts = np.stack([(blocks == lab).sum(-1) for lab in range(len(pal))], -1)
    counts[..., IRIS] += counts[..., PUPIL]
    counts[..., PUPIL] = 0
    small = counts.argmax(-1)
    for lab, need in reversed(PIXEL_PRIORITY):
        small[counts[..., lab] >= need] = lab
    q = np.round(pal[small] / 51.0) * 51.0
    out = Image.fromarray(np.clip(q, 0, 255).astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.NEAREST)
    return np.asarray(out)
