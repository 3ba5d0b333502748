"""``hypernetwork`` files (``spec/hypernetwork.md``): a photo → subject predictor.

Reading::

    h = read_hypernetwork("hyper.lidb")   # container checks, then spec/hypernetwork.md §5
    h.config["encoder"], h.config["decoder"], h.config["targets"]["layers"]
    h.tensor("image_proj.weight")         # float32 numpy array
    h.fingerprint                         # SHA-256 of the stored header bytes (spec §6)

Writing: :func:`write_hypernetwork` checks a configuration and a state dict against §4–5 and
writes them (raw tensors, so they can be mapped).
"""

from __future__ import annotations

import hashlib
import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from .container import Container, read, write
from .subject import targets_fingerprint

__all__ = ["Hypernetwork", "HypernetworkError", "read_hypernetwork", "write_hypernetwork", "expected_tensors",
           "check_config"]

_FLOAT = ("F16", "F32", "F64", "BF16")
_ACTS = ("gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh")


class HypernetworkError(ValueError):
    """A valid container that is not a valid hypernetwork; the message names the file and the field or tensor."""


def _int(v, lo=1, hi=1 << 31):
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def check_config(md: dict, where: str = "hypernetwork") -> None:
    """Checks a configuration (the file's metadata) as spec §5 steps 1–3 say."""
    def fail(field, msg):
        raise HypernetworkError(f"{where}: {field}: {msg}")

    if md.get("lidb_hypernetwork") != 1:
        fail("lidb_hypernetwork", f"schema version {md.get('lidb_hypernetwork')!r} (this reader knows 1)")
    enc, dec = md.get("encoder"), md.get("decoder")
    if not isinstance(enc, dict):
        fail("encoder", "missing")
    if not isinstance(dec, dict):
        fail("decoder", "missing")
    if enc.get("type") not in ("clip-vision", "vit"):
        fail("encoder.type", f"{enc.get('type')!r} is not clip-vision or vit")
    for k in ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if not _int(enc.get(k)):
            fail(f"encoder.{k}", f"{enc.get(k)!r} is not a positive integer")
    if enc["image_size"] % enc["patch_size"]:
        fail("encoder.patch_size", "does not divide image_size")
    if enc["hidden_size"] % enc["num_attention_heads"]:
        fail("encoder.num_attention_heads", "does not divide hidden_size")
    if enc.get("hidden_act") not in _ACTS:
        fail("encoder.hidden_act", f"{enc.get('hidden_act')!r} is not one of {', '.join(_ACTS)}")
    if enc.get("tokens") not in ("all", "class", "patch"):
        fail("encoder.tokens", f"{enc.get('tokens')!r} is not all, class or patch")
    for sect, d in (("encoder", enc), ("decoder", dec)):
        eps = d.get("layer_norm_eps")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps <= 0:
            fail(f"{sect}.layer_norm_eps", f"{eps!r} is not a positive number")
    for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "iterations", "weight_tokens"):
        if not _int(dec.get(k)):
            fail(f"decoder.{k}", f"{dec.get(k)!r} is not a positive integer")
    if dec["hidden_size"] % dec["num_heads"]:
        fail("decoder.num_heads", "does not divide hidden_size")
    sub = md.get("subject")
    if not isinstance(sub, dict):
        fail("subject", "missing")
    for k in ("rank", "a", "b"):
        if not _int(sub.get(k)):
            fail(f"subject.{k}", f"{sub.get(k)!r} is not a positive integer")
    alpha = sub.get("alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        fail("subject.alpha", f"{alpha!r} is not a finite number")
    basis = sub.get("basis") or {}
    if basis.get("generator") != "lidb-basis-1" or not (_int(basis.get("seed"), 0, (1 << 64) - 1)):
        fail("subject.basis", "expected {\"generator\": \"lidb-basis-1\", \"seed\": unsigned 64-bit integer}")
    tg = md.get("targets")
    if not isinstance(tg, dict) or not isinstance(tg.get("layers"), list) or not tg["layers"]:
        fail("targets.layers", "missing or empty")
    if tg.get("architecture") not in ("sd1", "sd2"):
        fail("targets.architecture", f"{tg.get('architecture')!r} is not sd1 or sd2")
    if not isinstance(tg.get("set"), str):
        fail("targets.set", "missing")
    seen = set()
    rows = []
    for i, l in enumerate(tg["layers"]):
        name, shape = (l.get("name"), l.get("shape")) if isinstance(l, dict) else (None, None)
        if not isinstance(name, str) or not isinstance(shape, list) or len(shape) != 2 or not all(_int(d) for d in shape):
            fail(f"targets.layers[{i}]", "needs a name and a shape [out, in] of positive integers")
        if name in seen:
            fail(f"targets.layers[{i}]", f"{name!r} listed twice")
        seen.add(name)
        rows.append((name, shape[0], shape[1]))
    if tg.get("fingerprint") != targets_fingerprint(rows):
        fail("targets.fingerprint", "does not match the layer table")
    if dec["weight_tokens"] != len(rows):
        fail("decoder.weight_tokens", f"{dec['weight_tokens']} but the table has {len(rows)} layers")
    pre = md.get("preprocessing")
    keys = {"size", "crop_size", "resample", "rescale_factor", "image_mean", "image_std"}
    if not isinstance(pre, dict) or set(pre) != keys:
        fail("preprocessing", f"an object with exactly the keys {sorted(keys)}")
    size, crop = pre["size"], pre["crop_size"]
    if isinstance(size, dict) and set(size) == {"shortest_edge"} and _int(size["shortest_edge"]):
        out_hw = (size["shortest_edge"], size["shortest_edge"])
    elif isinstance(size, dict) and set(size) == {"height", "width"} and _int(size["height"]) and _int(size["width"]):
        out_hw = (size["height"], size["width"])
    else:
        fail("preprocessing.size", "{\"shortest_edge\": N} or {\"height\": H, \"width\": W}")
    if crop is not None:
        if not (isinstance(crop, dict) and set(crop) == {"height", "width"} and _int(crop["height"]) and _int(crop["width"])):
            fail("preprocessing.crop_size", "null or {\"height\": H, \"width\": W}")
        out_hw = (crop["height"], crop["width"])
    if pre["resample"] not in ("bicubic", "bilinear"):
        fail("preprocessing.resample", f"{pre['resample']!r} is not bicubic or bilinear")
    for k in ("image_mean", "image_std"):
        v = pre[k]
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                             and math.isfinite(x) for x in v)):
            fail(f"preprocessing.{k}", "three finite numbers")
    if any(x <= 0 for x in pre["image_std"]):
        fail("preprocessing.image_std", "must be positive")
    rf = pre["rescale_factor"]
    if not isinstance(rf, (int, float)) or isinstance(rf, bool) or not math.isfinite(rf) or rf <= 0:
        fail("preprocessing.rescale_factor", "a positive number")
    if out_hw != (enc["image_size"], enc["image_size"]):
        fail("preprocessing", f"produces {out_hw[0]}×{out_hw[1]}, the encoder takes {enc['image_size']}×{enc['image_size']}")


def expected_tensors(md: dict) -> Dict[str, Tuple[int, ...]]:
    """Every tensor's name and shape for a configuration (spec §4), in no particular order."""
    enc, dec, sub = md["encoder"], md["decoder"], md["subject"]
    W, p, S = enc["hidden_size"], enc["patch_size"], enc["image_size"]
    F, N = enc["intermediate_size"], (S // p) ** 2 + 1
    D, FF = dec["hidden_size"], dec["intermediate_size"]
    r, a, b = sub["rank"], sub["a"], sub["b"]
    t: Dict[str, Tuple[int, ...]] = {}

    def lin(name, out, in_):
        t[name + ".weight"] = (out, in_)
        t[name + ".bias"] = (out,)

    def norm(name, n):
        t[name + ".weight"] = (n,)
        t[name + ".bias"] = (n,)

    e = "image_encoder."
    if enc["type"] == "clip-vision":
        t[e + "embeddings.patch_embedding.weight"] = (W, 3, p, p)
        t[e + "embeddings.class_embedding"] = (W,)
        t[e + "embeddings.position_embedding.weight"] = (N, W)
        norm(e + "pre_layrnorm", W)
        for i in range(enc["num_hidden_layers"]):
            L = f"{e}encoder.layers.{i}."
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                lin(L + "self_attn." + proj, W, W)
            norm(L + "layer_norm1", W)
            norm(L + "layer_norm2", W)
            lin(L + "mlp.fc1", F, W)
            lin(L + "mlp.fc2", W, F)
        norm(e + "post_layernorm", W)
    else:
        t[e + "embeddings.cls_token"] = (1, 1, W)
        t[e + "embeddings.position_embeddings"] = (1, N, W)
        t[e + "embeddings.patch_embeddings.projection.weight"] = (W, 3, p, p)
        t[e + "embeddings.patch_embeddings.projection.bias"] = (W,)
        for i in range(enc["num_hidden_layers"]):
            L = f"{e}layers.{i}."
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                lin(L + "attention." + proj, W, W)
            norm(L + "layernorm_before", W)
            norm(L + "layernorm_after", W)
            lin(L + "mlp.fc1", F, W)
            lin(L + "mlp.fc2", W, F)
        norm(e + "layernorm", W)
    lin("image_proj", D, W)
    lin("weight_in", D, r * a + b * r)
    t["weight_pos"] = (len(md["targets"]["layers"]), D)
    for j in range(dec["num_layers"]):
        L = f"decoder.layers.{j}."
        for att in ("self_attn", "multihead_attn"):
            t[L + att + ".in_proj_weight"] = (3 * D, D)
            t[L + att + ".in_proj_bias"] = (3 * D,)
            lin(L + att + ".out_proj", D, D)
        lin(L + "linear1", FF, D)
        lin(L + "linear2", D, FF)
        for n in ("norm1", "norm2", "norm3"):
            norm(L + n, D)
    norm("decoder.norm", D)
    for l, row in enumerate(md["targets"]["layers"]):
        out, in_ = row["shape"]
        n = r * min(a, in_) + min(b, out) * r
        lin(f"heads.{l}", n, D)
    return t


class Hypernetwork:
    def __init__(self, container: Container, path: str):
        self.container = container
        self.path = path
        if container.kind != "hypernetwork":
            raise HypernetworkError(f"{path}: expected a hypernetwork file, found kind {container.kind!r}")
        self.config = container.metadata
        check_config(self.config, path)
        want = expected_tensors(self.config)
        have = {t.name: t for t in container.tensors}
        for name in sorted(set(want) - set(have)):
            raise HypernetworkError(f"{path}: tensor {name!r} is missing")
        for name in sorted(set(have) - set(want)):
            raise HypernetworkError(f"{path}: tensor {name!r} is not part of this configuration")
        for name, shape in want.items():
            t = have[name]
            if tuple(t.shape) != shape:
                raise HypernetworkError(f"{path}: tensor {name!r} has shape {list(t.shape)}, the configuration says {list(shape)}")
            if t.dtype not in _FLOAT:
                raise HypernetworkError(f"{path}: tensor {name!r} is {t.dtype}, not a floating-point type")

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the stored header bytes (spec §6)."""
        buf = self.container._buf
        return hashlib.sha256(bytes(buf[64:64 + self.container.stored_length])).hexdigest()

    @property
    def layers(self) -> List[Tuple[str, int, int]]:
        return [(l["name"], l["shape"][0], l["shape"][1]) for l in self.config["targets"]["layers"]]

    def tensor(self, name: str) -> np.ndarray:
        t = self.container.entry(name)
        arr = self.container.tensor(name)
        if t.dtype == "BF16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.astype(np.float32)

    def state_dict(self) -> Dict[str, np.ndarray]:
        return {t.name: self.tensor(t.name) for t in self.container.tensors}

    def close(self):
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_hypernetwork(path: str, verify: bool = True) -> Hypernetwork:
    c = read(path, verify=verify)
    try:
        return Hypernetwork(c, path)
    except BaseException:
        c.close()
        raise


def write_hypernetwork(path: str, config: dict, tensors: Dict[str, np.ndarray], dtype: Optional[str] = None) -> None:
    """Checks ``config`` and ``tensors`` against spec §4–5 and writes a hypernetwork file (raw
    tensors in the order of ``tensors``; ``dtype`` ``"f16"`` or ``"f32"`` casts them)."""
    check_config(config, path)
    want = expected_tensors(config)
    if set(want) != set(tensors):
        missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
        raise HypernetworkError(f"{path}: tensors do not match the configuration (missing {missing[:3]}, extra {extra[:3]})")
    rows = []
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        if tuple(arr.shape) != want[name]:
            raise HypernetworkError(f"{path}: tensor {name!r} has shape {list(arr.shape)}, the configuration says {list(want[name])}")
        if dtype == "f16":
            arr = arr.astype(np.float16)
        elif dtype == "f32" or arr.dtype not in (np.float16, np.float32, np.float64):
            arr = arr.astype(np.float32)
        rows.append((name, arr))
    write(path, "hypernetwork", config, rows)
