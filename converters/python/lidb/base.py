"""``base`` files (``spec/base.md``): a whole Stable Diffusion checkpoint in one container.

Reading::

    b = read_base("sd15.lidb")      # container checks, then the base checks of spec/base.md
    b.architecture, b.variant, b.prediction_type
    b.config("unet")                # the diffusers configuration, as a dict
    b.state_dict("unet")            # {diffusers name: numpy array}
    b.tokenizer_files()             # {"vocab.json": bytes, ...}
    b.fingerprints()                # recomputed {"layer_table", "content"} (spec/base.md §5)
    b.save_diffusers("folder")      # a diffusers folder StableDiffusionPipeline.from_pretrained reads

Writing: :func:`write_base` lays a base out in the order of §1 and computes its fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from .container import Container, read, write
from .safetensors_io import write_safetensors

__all__ = ["Base", "BaseError", "read_base", "write_base", "fingerprints", "COMPONENTS"]

COMPONENTS = ("unet", "text_encoder", "vae")
_FLOAT = ("F16", "F32", "F64", "BF16")


class BaseError(ValueError):
    """A file that is a valid container but not a valid base; the message names the file."""


def _as_float32(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)


def _digest(arr: np.ndarray, dtype: str) -> str:
    """SHA-256 of the values as little-endian F16 (through F32) for floating types, else raw bytes."""
    if dtype == "F16":
        data = np.ascontiguousarray(arr).astype("<f2", copy=False).tobytes()
    elif dtype in _FLOAT:
        data = _as_float32(arr, dtype).astype("<f2").tobytes()
    else:
        data = np.ascontiguousarray(arr).tobytes()
    return hashlib.sha256(data).hexdigest()


def fingerprints(entries: Iterable[Tuple[str, str, Tuple[int, ...], np.ndarray]]) -> Dict[str, str]:
    """``layer_table`` and ``content`` over ``(name, dtype, shape, array)`` rows (spec/base.md §5):
    the ``unet.*`` and ``text_encoder.*`` tensors, sorted by the UTF-8 bytes of their names."""
    rows = sorted((r for r in entries if r[0].startswith(("unet.", "text_encoder."))), key=lambda r: r[0].encode("utf-8"))
    table, content = hashlib.sha256(), hashlib.sha256()
    for name, dtype, shape, arr in rows:
        dims = ",".join(str(d) for d in shape)
        table.update(f"{name}\t{dims}\n".encode("utf-8"))
        content.update(f"{name}\t{dims}\t{_digest(arr, dtype)}\n".encode("utf-8"))
    return {"layer_table": table.hexdigest(), "content": content.hexdigest()}


class Base:
    """A validated base file. Arrays are read-only views of the mapped file unless copied."""

    def __init__(self, container: Container, path: str):
        self.container = container
        self.path = path
        md = container.metadata
        self.metadata = md

        def need(cond, msg):
            if not cond:
                raise BaseError(f"{path}: {msg}")

        need(container.kind == "base", f"expected a base file, found kind {container.kind!r}")
        need(md.get("lidb_base") == 1, f"base schema version {md.get('lidb_base')!r} (this reader knows 1)")
        self.architecture = md.get("architecture")
        need(self.architecture in ("sd1", "sd2"), f"architecture {self.architecture!r} is not sd1 or sd2")
        self.variant = md.get("variant")
        need(self.variant in ("txt2img", "inpainting"), f"variant {self.variant!r} is not txt2img or inpainting")
        self.prediction_type = md.get("prediction_type")
        need(self.prediction_type in ("epsilon", "v_prediction"), f"prediction_type {self.prediction_type!r}")
        comps = md.get("components")
        need(isinstance(comps, dict), "metadata.components is missing")
        for c in COMPONENTS + ("scheduler",):
            need(isinstance(comps.get(c), dict) and isinstance(comps[c].get("config"), dict),
                 f"metadata.components.{c}.config is missing")
        fp = md.get("fingerprints")
        need(isinstance(fp, dict) and isinstance(fp.get("layer_table"), str) and isinstance(fp.get("content"), str),
             "metadata.fingerprints is missing")
        # Tensor order of §1: unet.*, text_encoder.*, vae.* (each sorted), tokenizer.*, extra.*.
        groups = ("unet.", "text_encoder.", "vae.", "tokenizer.", "extra.")
        last_group, last_name = 0, b""
        for t in container.tensors:
            g = next((i for i, p in enumerate(groups) if t.name.startswith(p)), None)
            need(g is not None, f"tensor {t.name!r} has no known component prefix")
            need(g >= last_group, f"tensor {t.name!r} is out of the order of spec/base.md §1")
            key = t.name.encode("utf-8")
            if g == last_group and g < 3:
                need(key > last_name, f"tensor {t.name!r} is not sorted within its component")
            last_group, last_name = g, key
            if g < 3:
                need(t.encoding == "raw", f"weight {t.name!r} must be stored raw")
        for c in COMPONENTS:
            need(any(t.name.startswith(c + ".") for t in container.tensors), f"no {c}.* tensors")

    # -- contents
    def config(self, component: str) -> dict:
        return self.metadata["components"][component]["config"]

    def names(self, component: str) -> List[str]:
        p = component + "."
        return [t.name[len(p):] for t in self.container.tensors if t.name.startswith(p)]

    def state_dict(self, component: str, float32: bool = False) -> Dict[str, np.ndarray]:
        """``{name without the component prefix: array}``. ``BF16`` comes back as ``uint16``
        bit patterns unless ``float32`` converts every floating tensor to ``float32``."""
        p = component + "."
        out = {}
        for t in self.container.tensors:
            if t.name.startswith(p):
                arr = self.container.tensor(t.name)
                if float32 and t.dtype in _FLOAT:
                    arr = _as_float32(arr, t.dtype)
                out[t.name[len(p):]] = arr
        return out

    def tokenizer_files(self) -> Dict[str, bytes]:
        return {t.name[len("tokenizer."):]: bytes(self.container.tensor_bytes(t.name))
                for t in self.container.tensors if t.name.startswith("tokenizer.")}

    def fingerprints(self) -> Dict[str, str]:
        c = self.container
        return fingerprints((t.name, t.dtype, t.shape, c.tensor(t.name)) for t in c.tensors
                            if t.name.startswith(("unet.", "text_encoder.")))

    def check_fingerprints(self) -> None:
        got = self.fingerprints()
        for k in ("layer_table", "content"):
            if got[k] != self.metadata["fingerprints"][k]:
                raise BaseError(f"{self.path}: the recomputed {k} fingerprint differs from the recorded one")

    # -- diffusers
    def save_diffusers(self, folder: str) -> None:
        """A diffusers folder (``StableDiffusionPipeline.from_pretrained`` reads it): configs,
        safetensors weights, tokenizer files and scheduler configuration. ``folder`` must not exist."""
        if os.path.exists(folder):
            raise FileExistsError(f"{folder} exists")
        parent = os.path.dirname(os.path.abspath(folder))
        tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-diffusers-")
        try:
            comps = self.metadata["components"]
            files = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
                     "text_encoder": "model.safetensors"}
            for c in COMPONENTS:
                os.makedirs(os.path.join(tmp, c))
                dtypes = {}
                tensors = {}
                for t in self.container.tensors:
                    if t.name.startswith(c + "."):
                        tensors[t.name[len(c) + 1:]] = self.container.tensor(t.name)
                        if t.dtype == "BF16":
                            dtypes[t.name[len(c) + 1:]] = "BF16"
                write_safetensors(os.path.join(tmp, c, files[c]), tensors, {"format": "pt"}, dtypes)
                with open(os.path.join(tmp, c, "config.json"), "w") as f:
                    json.dump(comps[c]["config"], f, indent=2)
            os.makedirs(os.path.join(tmp, "scheduler"))
            with open(os.path.join(tmp, "scheduler", "scheduler_config.json"), "w") as f:
                json.dump(comps["scheduler"]["config"], f, indent=2)
            os.makedirs(os.path.join(tmp, "tokenizer"))
            for name, data in self.tokenizer_files().items():
                with open(os.path.join(tmp, "tokenizer", name), "wb") as f:
                    f.write(data)
            index = self.metadata.get("model_index")
            if not isinstance(index, dict):
                pipe = "StableDiffusionInpaintPipeline" if self.variant == "inpainting" else "StableDiffusionPipeline"
                index = {"_class_name": pipe, "unet": ["diffusers", "UNet2DConditionModel"],
                         "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
                         "tokenizer": ["transformers", "CLIPTokenizer"],
                         "scheduler": ["diffusers", comps["scheduler"].get("class", "PNDMScheduler")],
                         "safety_checker": [None, None], "feature_extractor": [None, None],
                         "requires_safety_checker": False}
            with open(os.path.join(tmp, "model_index.json"), "w") as f:
                json.dump(index, f, indent=2)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def close(self):
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_base(path: str, verify: bool = True) -> Base:
    """Reads and validates a base file; ``verify`` also checks every tensor's CRC-32C."""
    c = read(path, verify=verify)
    try:
        return Base(c, path)
    except BaseException:
        c.close()
        raise


def write_base(path: str, components: Dict[str, Dict[str, np.ndarray]], configs: Dict[str, dict],
               architecture: str, variant: str = "txt2img", prediction_type: str = "epsilon",
               tokenizer: Optional[Dict[str, bytes]] = None, classes: Optional[Dict[str, str]] = None,
               source: Optional[dict] = None, extra: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, str]:
    """Writes a base file. ``components`` maps ``unet``/``text_encoder``/``vae`` to state dicts
    (diffusers/transformers names; text-encoder names get the ``text_model.`` prefix when they lack
    it), ``configs`` the same keys plus ``scheduler`` to their configuration dicts. Returns the
    fingerprints written."""
    default_classes = {"unet": "UNet2DConditionModel", "text_encoder": "CLIPTextModel", "vae": "AutoencoderKL",
                       "scheduler": "PNDMScheduler"}
    default_classes.update(classes or {})
    rows: List[Tuple[str, np.ndarray]] = []
    for c in COMPONENTS:
        sd = components[c]
        named = {}
        for k, v in sd.items():
            if c == "text_encoder" and not k.startswith("text_model."):
                k = "text_model." + k
            named[f"{c}.{k}"] = np.asarray(v)
        for name in sorted(named, key=lambda n: n.encode("utf-8")):
            rows.append((name, named[name]))
    tok = tokenizer or {}
    for fname in sorted(tok, key=lambda n: n.encode("utf-8")):
        rows.append((f"tokenizer.{fname}", np.frombuffer(tok[fname], dtype=np.uint8)))
    for name in sorted(extra or {}, key=lambda n: n.encode("utf-8")):
        rows.append((f"extra.{name}", np.asarray(extra[name])))
    fp = fingerprints((n, {np.dtype("float16"): "F16", np.dtype("float32"): "F32", np.dtype("float64"): "F64"}.get(a.dtype, "raw"),
                       a.shape, a) for n, a in rows)
    sched = dict(configs["scheduler"])
    sched["prediction_type"] = prediction_type
    comps = {c: {"class": default_classes[c], "config": configs[c]} for c in COMPONENTS}
    comps["scheduler"] = {"class": default_classes["scheduler"], "config": sched}
    if tok:
        comps["tokenizer"] = {"class": "CLIPTokenizer", "files": sorted(tok)}
    metadata = {
        "lidb_base": 1,
        "architecture": architecture,
        "variant": variant,
        "prediction_type": prediction_type,
        "components": comps,
        "source": source or {"format": "python"},
        "converted_by": "lidb-python",
        "fingerprints": fp,
    }
    encoding = {n: "zstd" for n, _ in rows if n.startswith("tokenizer.")}
    write(path, "base", metadata, rows, encoding=encoding)
    return fp
