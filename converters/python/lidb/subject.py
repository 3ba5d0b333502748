"""``subject`` files (``spec/subject.md``): a subject's LiDB (and LoRA) weight deltas.

Reading::

    s = read_subject("alice.lidb")   # container checks, then every check of spec/subject.md §4
    s.layers[0].name, s.layers[0].lidb.down_train, s.layers[0].lora
    s.delta(s.layers[0])             # ΔW [out, in] as float64 (weight 1)
    s.peft_state_dict()              # {"<layer>.lora_A.weight": [R, in], "<layer>.lora_B.weight": [out, R]}

Writing: :func:`write_subject` (f32, f16, bf16 or q8, spec §3), e.g. from a hypernetwork's output.
The bases come from :mod:`lidb.basis` (``lidb-basis-1``, pure Python, bit-exact) or from the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import zstandard

from .basis import layer_bases
from .container import Container, read, write

__all__ = ["LiDBTerm", "LoRATerm", "SubjectLayer", "Subject", "SubjectError", "read_subject", "write_subject",
           "targets_fingerprint"]


class SubjectError(ValueError):
    """A valid container that is not a valid subject; the message names the file and the problem."""


@dataclass
class LiDBTerm:
    rank: int
    a: int
    b: int
    alpha: float
    down_train: np.ndarray  # [rank, a] float32
    up_train: np.ndarray    # [b, rank] float32


@dataclass
class LoRATerm:
    rank: int
    alpha: float
    down: np.ndarray  # [rank, in] float32
    up: np.ndarray    # [out, rank] float32


@dataclass
class SubjectLayer:
    name: str
    out: int
    in_: int
    lidb: Optional[LiDBTerm] = None
    lora: Optional[LoRATerm] = None


def targets_fingerprint(layers: Sequence[Tuple[str, int, int]]) -> str:
    """SHA-256 (hex) of ``name \\t out,in \\n`` over the layer table, in order."""
    h = hashlib.sha256()
    for name, out, in_ in layers:
        h.update(f"{name}\t{out},{in_}\n".encode("utf-8"))
    return h.hexdigest()


@dataclass
class Subject:
    layers: List[SubjectLayer]
    architecture: str
    targets: str = "custom"
    seed: Optional[int] = None                       # lidb-basis-1 seed, or None with stored bases
    stored_bases: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    base_content: Optional[str] = None
    info: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    _cache: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def targets_fingerprint(self) -> str:
        return targets_fingerprint([(l.name, l.out, l.in_) for l in self.layers])

    @property
    def trained_parameters(self) -> int:
        n = 0
        for l in self.layers:
            if l.lidb:
                n += l.lidb.rank * (l.lidb.a + l.lidb.b)
            if l.lora:
                n += l.lora.rank * (l.in_ + l.out)
        return n

    def bases(self, layer: SubjectLayer) -> Tuple[np.ndarray, np.ndarray]:
        """``(down_aux [a, in], up_aux [out, b])`` as float32."""
        t = layer.lidb
        if self.seed is None:
            return self.stored_bases[layer.name]
        key = layer.name
        if key not in self._cache:
            d, u, a2, b2 = layer_bases(self.seed, layer.name, layer.out, layer.in_, t.a, t.b)
            self._cache[key] = (np.frombuffer(d, "<f4").reshape(a2, layer.in_),
                                np.frombuffer(u, "<f4").reshape(layer.out, b2))
        return self._cache[key]

    def factors(self, layer: SubjectLayer, weight: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
        """All terms of a layer as one low-rank pair ``(up [out, R], down [R, in])`` (float32) with
        ``w · ΔW = up · down``: the scales ``weight · alpha / rank`` folded into ``up``."""
        ups, downs = [], []
        if layer.lidb:
            t = layer.lidb
            d_aux, u_aux = self.bases(layer)
            downs.append((t.down_train.astype(np.float64) @ d_aux.astype(np.float64)).astype(np.float32))
            ups.append(((u_aux.astype(np.float64) @ t.up_train.astype(np.float64)) * (t.alpha / t.rank) * weight).astype(np.float32))
        if layer.lora:
            t = layer.lora
            downs.append(t.down.astype(np.float32))
            ups.append((t.up.astype(np.float64) * (t.alpha / t.rank) * weight).astype(np.float32))
        return np.concatenate(ups, axis=1), np.concatenate(downs, axis=0)

    def delta(self, layer: SubjectLayer, weight: float = 1.0) -> np.ndarray:
        """``weight · ΔW`` of one layer, ``[out, in]`` in float64 (exact products of the stored factors)."""
        total = np.zeros((layer.out, layer.in_), np.float64)
        if layer.lidb:
            t = layer.lidb
            d_aux, u_aux = self.bases(layer)
            down = t.down_train.astype(np.float64) @ d_aux.astype(np.float64)
            up = u_aux.astype(np.float64) @ t.up_train.astype(np.float64)
            total += (t.alpha / t.rank) * weight * (up @ down)
        if layer.lora:
            t = layer.lora
            total += (t.alpha / t.rank) * weight * (t.up.astype(np.float64) @ t.down.astype(np.float64))
        return total

    def peft_state_dict(self, weight: float = 1.0) -> Dict[str, np.ndarray]:
        """The subject as a PEFT LoRA state dict under diffusers' names (``unet.…``,
        ``text_encoder.…``), one LoRA of rank R per layer with scale 1 (alpha = R)."""
        out = {}
        for l in self.layers:
            up, down = self.factors(l, weight)
            name = l.name
            if name.startswith("text_encoder.text_model."):
                name = "text_encoder." + name[len("text_encoder.text_model."):]
            out[name + ".lora_A.weight"] = down
            out[name + ".lora_B.weight"] = up
        return out


def _f32(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if dtype in ("F16", "F32"):
        return arr.astype(np.float32)
    if dtype == "I8":
        return arr.astype(np.float32)
    raise SubjectError(f"factors must be F32, F16, BF16 or I8, not {dtype}")


def read_subject(path: str, verify: bool = True) -> Subject:
    """Reads and validates a subject file (spec/subject.md §4)."""
    c = read(path, verify=verify)
    try:
        return _parse(c, path)
    finally:
        c.close()


def _parse(c: Container, path: str) -> Subject:
    def fail(msg):
        return SubjectError(f"{path}: {msg}")

    if c.kind != "subject":
        raise fail(f"expected a subject file, found kind {c.kind!r}")
    md = c.metadata
    if md.get("lidb_subject") != 1:
        raise fail(f"subject schema version {md.get('lidb_subject')!r} (this reader knows 1)")
    rows = md.get("layers")
    binding = md.get("binding")
    if not isinstance(rows, list):
        raise fail("metadata.layers is missing")
    if not isinstance(binding, dict) or not isinstance(binding.get("architecture"), str):
        raise fail("metadata.binding.architecture is missing")
    basis = md.get("basis") or {}
    seed = None
    if basis.get("generator") == "lidb-basis-1" and isinstance(basis.get("seed"), int) and 0 <= int(basis["seed"]) < 1 << 64:
        seed = int(basis["seed"])
    elif basis.get("stored") is not True:
        raise fail("unknown basis (expected generator 'lidb-basis-1' with a seed, or stored bases)")

    def tensor(name):
        if name not in c:
            raise fail(f"tensor {name!r} is missing")
        e = c.entry(name)
        return _f32(c.tensor(name), e.dtype).reshape(-1), e.dtype

    def scales(name, blocks):
        if c.entry(name).dtype != "I8":
            return None
        s, _ = tensor(name + ".scale")
        if s.size != blocks or not np.all(np.isfinite(s)) or not np.all(s > 0):
            raise fail(f"{name}.scale: {blocks} positive finite scales expected")
        return s

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    layers: List[SubjectLayer] = []
    names = set()
    lidb_sizes = []
    for i, row in enumerate(rows):
        name, shape = (row.get("name"), row.get("shape")) if isinstance(row, dict) else (None, None)
        if not isinstance(name, str) or not isinstance(shape, list) or len(shape) != 2 \
                or not all(is_int(d) and d > 0 for d in shape):
            raise fail(f"layers[{i}] needs a name and a shape [out, in]")
        if name in names:
            raise fail(f"layer {name!r} listed twice")
        names.add(name)
        out, in_ = shape
        layer = SubjectLayer(name, out, in_)
        t = row.get("lidb")
        if t is not None:
            r, a, b, alpha = t.get("rank"), t.get("a"), t.get("b"), t.get("alpha")
            if not (is_int(r) and is_int(a) and is_int(b) and isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
                    and 1 <= r <= 1024 and 1 <= a <= in_ and 1 <= b <= out and np.isfinite(alpha)):
                raise fail(f"layer {name!r}: invalid lidb term (rank ≥ 1, 1 ≤ a ≤ in, 1 ≤ b ≤ out, finite alpha)")
            layer.lidb = LiDBTerm(r, a, b, float(alpha), np.zeros((r, a), np.float32), np.zeros((b, r), np.float32))
            lidb_sizes.append((r * a, b * r))
        t = row.get("lora")
        if t is not None:
            r, alpha = t.get("rank"), t.get("alpha")
            if not (is_int(r) and isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
                    and 1 <= r <= min(out, in_) and np.isfinite(alpha)):
                raise fail(f"layer {name!r}: invalid lora term (1 ≤ rank ≤ min(out, in), finite alpha)")
            down, _ = tensor(f"lora.{name}.down")
            up, _ = tensor(f"lora.{name}.up")
            if down.size != r * in_ or up.size != out * r:
                raise fail(f"layer {name!r}: lora factors do not match [rank, in] / [out, rank]")
            s = scales(f"lora.{name}.down", 1)
            if s is not None:
                down = down * s[0]
            s = scales(f"lora.{name}.up", 1)
            if s is not None:
                up = up * s[0]
            layer.lora = LoRATerm(r, float(alpha), down.reshape(r, in_), up.reshape(out, r))
        if layer.lidb is None and layer.lora is None:
            raise fail(f"layer {name!r} has no term")
        layers.append(layer)
    if lidb_sizes:
        down, _ = tensor("lidb.down_train")
        up, _ = tensor("lidb.up_train")
        if down.size != sum(s[0] for s in lidb_sizes) or up.size != sum(s[1] for s in lidb_sizes):
            raise fail("lidb.down_train / lidb.up_train sizes do not match the layer table")
        ds, us = scales("lidb.down_train", len(lidb_sizes)), scales("lidb.up_train", len(lidb_sizes))
        di = ui = k = 0
        for layer in layers:
            t = layer.lidb
            if t is None:
                continue
            nd, nu = lidb_sizes[k]
            d, u = down[di:di + nd], up[ui:ui + nu]
            if ds is not None:
                d = d * ds[k]  # float32 × float32, rounded once, as every reader must
            if us is not None:
                u = u * us[k]
            t.down_train = d.astype(np.float32).reshape(t.rank, t.a)
            t.up_train = u.astype(np.float32).reshape(t.b, t.rank)
            di += nd
            ui += nu
            k += 1
    stored = {}
    if seed is None:
        for layer in layers:
            t = layer.lidb
            if t is None:
                continue
            d, _ = tensor(f"basis.{layer.name}.down")
            u, _ = tensor(f"basis.{layer.name}.up")
            if d.size != t.a * layer.in_ or u.size != layer.out * t.b:
                raise fail(f"layer {layer.name!r}: stored basis has the wrong size")
            stored[layer.name] = (d.reshape(t.a, layer.in_).copy(), u.reshape(layer.out, t.b).copy())
    s = Subject(layers, binding["architecture"], md.get("targets", "custom"), seed, stored,
                binding.get("base_content"), md.get("info") or {}, md)
    fp = binding.get("targets_fingerprint")
    if fp is not None and fp != s.targets_fingerprint:
        raise fail("the layer table does not match its recorded fingerprint")
    return s


def _pack(name: str, blocks: List[np.ndarray], dtype: str, shape=None):
    flat = np.concatenate([np.asarray(b, np.float32).reshape(-1) for b in blocks]) if blocks else np.zeros(0, np.float32)
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"{name}: factor values must be finite")
    shape = tuple(shape) if shape is not None else (flat.size,)
    if dtype == "f32":
        return [(name, flat.reshape(shape))]
    if dtype == "f16":
        return [(name, flat.astype(np.float16).reshape(shape))]
    if dtype == "bf16":
        bits = flat.view(np.uint32)
        # round to nearest even on the upper 16 bits (finite values only, checked above)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        return [(name, rounded.reshape(shape), "BF16")]
    if dtype == "q8":
        q, scales = [], []
        for b in blocks:
            b = np.asarray(b, np.float32).reshape(-1)
            m = np.float32(np.max(np.abs(b))) if b.size else np.float32(0)
            s = np.float32(m / np.float32(127)) if m > 0 else np.float32(1)
            scales.append(s)
            q.append(np.clip(np.rint(b / s), -127, 127).astype(np.int8))
        return [(name, np.concatenate(q).reshape(shape)), (name + ".scale", np.array(scales, np.float32))]
    raise ValueError(f"dtype {dtype!r}: f32, f16, bf16 or q8")


def write_subject(path: str, subject: Subject, dtype: str = "f16") -> None:
    """Writes ``subject`` as spec/subject.md §3–4 describe: factors in ``dtype``, zstd where it
    saves at least an eighth, compressed header."""
    tensors = []
    lidb_layers = [l for l in subject.layers if l.lidb]
    if lidb_layers:
        tensors += _pack("lidb.down_train", [l.lidb.down_train for l in lidb_layers], dtype)
        tensors += _pack("lidb.up_train", [l.lidb.up_train for l in lidb_layers], dtype)
    for l in subject.layers:
        if l.lora:
            tensors += _pack(f"lora.{l.name}.down", [l.lora.down], dtype, (l.lora.rank, l.in_))
            tensors += _pack(f"lora.{l.name}.up", [l.lora.up], dtype, (l.out, l.lora.rank))
    if subject.seed is None:
        for l in lidb_layers:
            d, u = subject.stored_bases[l.name]
            tensors += [(f"basis.{l.name}.down", np.asarray(d, np.float32)), (f"basis.{l.name}.up", np.asarray(u, np.float32))]
    rows = []
    for l in subject.layers:
        row = {"name": l.name, "shape": [l.out, l.in_]}
        if l.lidb:
            row["lidb"] = {"rank": l.lidb.rank, "a": l.lidb.a, "b": l.lidb.b, "alpha": float(l.lidb.alpha)}
        if l.lora:
            row["lora"] = {"rank": l.lora.rank, "alpha": float(l.lora.alpha)}
        rows.append(row)
    binding = {"architecture": subject.architecture, "targets_fingerprint": subject.targets_fingerprint}
    if subject.base_content:
        binding["base_content"] = subject.base_content
    basis = {"generator": "lidb-basis-1", "seed": subject.seed} if subject.seed is not None else {"stored": True}
    metadata = {"lidb_subject": 1, "targets": subject.targets, "binding": binding, "basis": basis, "dtype": dtype,
                "trained_parameters": subject.trained_parameters, "info": subject.info or {}, "layers": rows}
    encoding = {}
    cctx = zstandard.ZstdCompressor(level=19)
    for t in tensors:
        raw = np.ascontiguousarray(t[1]).tobytes()
        if raw and len(cctx.compress(raw)) <= len(raw) - len(raw) // 8:
            encoding[t[0]] = "zstd"
    write(path, "subject", metadata, tensors, encoding=encoding, compress_header=True)
