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
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import zstandard

from .basis import layer_bases
from .container import Container, IntegerText, read, write

__all__ = ["LiDBTerm", "LoRATerm", "SubjectLayer", "Subject", "SubjectError", "read_subject", "write_subject",
           "targets_fingerprint", "check_against_base"]


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
    def delta_fingerprint(self) -> str:
        """SHA-256 (hex) of the delta's content (spec/subject.md, "Delta fingerprint"): what a
        merged base records to recognise the subject when unmerging."""
        h = hashlib.sha256()

        def text(v):
            h.update(str(v).encode("utf-8") + b"\x00")

        def floats(v):
            a = np.ascontiguousarray(np.asarray(v, np.float32).reshape(-1), dtype="<f4")
            text(a.size)
            h.update(a.tobytes())

        text("lidb-delta-1")
        text(self.architecture)
        if self.seed is None:
            text("stored")
        else:
            text("seed")
            text(int(self.seed))
        text(len(self.layers))
        for l in self.layers:
            text(l.name)
            text(l.out)
            text(l.in_)
            if l.lidb:
                t = l.lidb
                for v in ("lidb", t.rank, t.a, t.b):
                    text(v)
                floats([t.alpha])
                floats(t.down_train)
                floats(t.up_train)
                if self.seed is None:
                    d, u = self.stored_bases[l.name]
                    floats(d)
                    floats(u)
            if l.lora:
                t = l.lora
                text("lora")
                text(t.rank)
                floats([t.alpha])
                floats(t.down)
                floats(t.up)
        return h.hexdigest()

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


# Limits of spec/subject.md §4.
MAX_DIMENSION = 65536
MAX_LAYER_ELEMENTS = 1 << 28
MAX_RANK = 1024
MAX_BASIS_DIMENSION = 1024
TARGET_SETS = ("paper", "unet-attn", "text-attn", "text-mlp", "custom")
_TENSOR_DTYPE = {"f16": "F16", "f32": "F32", "bf16": "BF16", "q8": "I8"}
_HEX64 = re.compile(r"[0-9a-f]{64}")


def read_subject(path: str, verify: bool = True) -> Subject:
    """Reads and validates a subject file (spec/subject.md §3–4)."""
    c = read(path, verify=verify)
    try:
        return _parse(c, path)
    finally:
        c.close()


def _is_int(v) -> bool:
    return type(v) is int  # not bool, not IntegerText, not the -0 literal


def _is_number(v) -> bool:
    return type(v) in (int, float)


def _alpha_ok(alpha, rank) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        a = np.float32(alpha)
        return bool(np.isfinite(alpha) and np.isfinite(a) and np.isfinite(a / np.float32(rank)))


def _parse(c: Container, path: str) -> Subject:
    def fail(msg):
        return SubjectError(f"{path}: {msg}")

    if c.kind != "subject":
        raise fail(f"expected a subject file, found kind {c.kind!r}")
    md = c.metadata
    if not _is_int(md.get("lidb_subject")) or md.get("lidb_subject") != 1:
        raise fail(f"subject schema version {md.get('lidb_subject')!r} (this reader knows 1)")
    binding = md.get("binding")
    if not isinstance(binding, dict):
        raise fail("metadata.binding is missing or not an object")
    if not isinstance(binding.get("architecture"), str) or not binding["architecture"]:
        raise fail("metadata.binding.architecture is missing")
    fp = binding.get("targets_fingerprint")
    if not isinstance(fp, str) or not _HEX64.fullmatch(fp):
        raise fail("metadata.binding.targets_fingerprint must be 64 lower-case hex digits")
    base_content = binding.get("base_content")
    if base_content is not None and (not isinstance(base_content, str) or not _HEX64.fullmatch(base_content)):
        raise fail("metadata.binding.base_content must be 64 lower-case hex digits")
    basis = md.get("basis")
    basis = basis if isinstance(basis, dict) else {}
    seed = basis.get("seed")
    if type(seed) is IntegerText and seed.isdigit():
        seed = int(seed)  # seeds in [2^63, 2^64) arrive as their literal text
    if basis.get("generator") == "lidb-basis-1" and _is_int(seed) and 0 <= seed < 1 << 64:
        pass
    elif "generator" not in basis and basis.get("stored") is True:
        seed = None
    else:
        raise fail("unknown basis (expected generator 'lidb-basis-1' with a seed, or stored bases)")
    dtype = md.get("dtype")
    if dtype not in _TENSOR_DTYPE:
        raise fail(f"metadata.dtype must be one of f16, f32, bf16, q8, not {dtype!r}")
    factor_dtype = _TENSOR_DTYPE[dtype]
    targets = md.get("targets")
    if targets not in TARGET_SETS:
        raise fail(f"metadata.targets must be one of {', '.join(TARGET_SETS)}, not {targets!r}")
    if "info" in md and not isinstance(md["info"], dict):
        raise fail("metadata.info must be an object")
    rows = md.get("layers")
    if not isinstance(rows, list):
        raise fail("metadata.layers is missing or not an array")

    layers: List[SubjectLayer] = []
    names = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise fail(f"metadata.layers[{i}] is not an object")
        name, shape = row.get("name"), row.get("shape")
        if not isinstance(name, str) or not name:
            raise fail(f"metadata.layers[{i}].name must be a non-empty string")
        if name in names:
            raise fail(f"layer {name!r} listed twice")
        names.add(name)
        if not isinstance(shape, list) or len(shape) != 2 or not all(_is_int(d) for d in shape):
            raise fail(f"layer {name!r}: shape must be [out, in], two integers")
        out, in_ = shape
        if not (1 <= out <= MAX_DIMENSION and 1 <= in_ <= MAX_DIMENSION):
            raise fail(f"layer {name!r}: shape [{out}, {in_}]: each dimension must be 1 … {MAX_DIMENSION}")
        if out * in_ > MAX_LAYER_ELEMENTS:
            raise fail(f"layer {name!r}: shape [{out}, {in_}] has more than {MAX_LAYER_ELEMENTS} elements")
        layer = SubjectLayer(name, out, in_)
        t = row.get("lidb")
        if t is not None:
            if not isinstance(t, dict):
                raise fail(f"layer {name!r}: lidb must be an object")
            r, a, b, alpha = t.get("rank"), t.get("a"), t.get("b"), t.get("alpha")
            if not (_is_int(r) and _is_int(a) and _is_int(b) and _is_number(alpha)
                    and 1 <= r <= MAX_RANK and 1 <= a <= min(in_, MAX_BASIS_DIMENSION) and 1 <= b <= min(out, MAX_BASIS_DIMENSION)):
                raise fail(f"layer {name!r}: invalid lidb term (1 ≤ rank ≤ {MAX_RANK}, 1 ≤ a ≤ min(in, {MAX_BASIS_DIMENSION}), "
                           f"1 ≤ b ≤ min(out, {MAX_BASIS_DIMENSION}))")
            if not _alpha_ok(alpha, r):
                raise fail(f"layer {name!r}: lidb alpha {alpha!r} is not finite as a 32-bit float")
            layer.lidb = LiDBTerm(r, a, b, float(alpha), np.zeros((r, a), np.float32), np.zeros((b, r), np.float32))
        t = row.get("lora")
        if t is not None:
            if not isinstance(t, dict):
                raise fail(f"layer {name!r}: lora must be an object")
            r, alpha = t.get("rank"), t.get("alpha")
            if not (_is_int(r) and _is_number(alpha) and 1 <= r <= min(out, in_, MAX_RANK)):
                raise fail(f"layer {name!r}: invalid lora term (1 ≤ rank ≤ min(out, in, {MAX_RANK}))")
            if not _alpha_ok(alpha, r):
                raise fail(f"layer {name!r}: lora alpha {alpha!r} is not finite as a 32-bit float")
            layer.lora = LoRATerm(r, float(alpha), np.zeros((r, in_), np.float32), np.zeros((out, r), np.float32))
        if layer.lidb is None and layer.lora is None:
            raise fail(f"layer {name!r} has no term")
        layers.append(layer)
    if fp != targets_fingerprint([(l.name, l.out, l.in_) for l in layers]):
        raise fail("the layer table does not match its recorded targets fingerprint")

    # Exactly the tensors the table and the basis call for, with the metadata's dtype and exact shapes.
    lidb_layers = [l for l in layers if l.lidb]
    expected = {}
    if lidb_layers:
        expected["lidb.down_train"] = (factor_dtype, (sum(l.lidb.rank * l.lidb.a for l in lidb_layers),))
        expected["lidb.up_train"] = (factor_dtype, (sum(l.lidb.b * l.lidb.rank for l in lidb_layers),))
        if dtype == "q8":
            expected["lidb.down_train.scale"] = ("F32", (len(lidb_layers),))
            expected["lidb.up_train.scale"] = ("F32", (len(lidb_layers),))
    for l in layers:
        if l.lora:
            expected[f"lora.{l.name}.down"] = (factor_dtype, (l.lora.rank, l.in_))
            expected[f"lora.{l.name}.up"] = (factor_dtype, (l.out, l.lora.rank))
            if dtype == "q8":
                expected[f"lora.{l.name}.down.scale"] = ("F32", (1,))
                expected[f"lora.{l.name}.up.scale"] = ("F32", (1,))
    if seed is None:
        for l in lidb_layers:
            expected[f"basis.{l.name}.down"] = ("F32", (l.lidb.a, l.in_))
            expected[f"basis.{l.name}.up"] = ("F32", (l.out, l.lidb.b))
    for name in c.names:
        if name not in expected:
            raise fail(f"tensor {name!r}: unexpected tensor (the layer table and basis do not call for it)")
    for name, (want_dtype, want_shape) in expected.items():
        if name not in c:
            raise fail(f"tensor {name!r} is missing")
        e = c.entry(name)
        if e.dtype != want_dtype:
            raise fail(f"tensor {name!r} is {e.dtype}, but " + ("it must be F32" if want_dtype == "F32" and factor_dtype != "F32"
                                                                  else f"the metadata dtype {dtype} calls for {want_dtype}"))
        if tuple(e.shape) != want_shape:
            raise fail(f"tensor {name!r}: sizes do not match the layer table: the shape must be {list(want_shape)}, found {list(e.shape)}")
    tp = md.get("trained_parameters")
    if tp is not None:
        n = sum(l.lidb.rank * (l.lidb.a + l.lidb.b) for l in lidb_layers) + \
            sum(l.lora.rank * (l.in_ + l.out) for l in layers if l.lora)
        if not _is_int(tp) or tp != n:
            raise fail(f"trained_parameters is {tp!r}, the layer table has {n}")

    def tensor(name):
        e = c.entry(name)
        v = _f32(c.tensor(name), e.dtype).reshape(-1)
        if e.dtype != "I8" and not np.all(np.isfinite(v)):
            raise fail(f"tensor {name!r}: factor values must be finite (found NaN or infinity)")
        return v

    def scales(name):
        if dtype != "q8":
            return None
        s = tensor(name + ".scale")
        with np.errstate(over="ignore", invalid="ignore"):
            ok = _q8_scale_ok(s)
        if not ok:
            raise fail(f"tensor {name + '.scale'!r}: q8 scales must be positive with 127 · scale finite")
        return s

    def dequantised(q, s):
        # float32(q) · scale: one binary32 product, rounded once, as every reader must
        return q if s is None else (q * np.float32(s)).astype(np.float32)

    if lidb_layers:
        down, up = tensor("lidb.down_train"), tensor("lidb.up_train")
        ds, us = scales("lidb.down_train"), scales("lidb.up_train")
        di = ui = 0
        for k, layer in enumerate(lidb_layers):
            t = layer.lidb
            nd, nu = t.rank * t.a, t.b * t.rank
            t.down_train = dequantised(down[di:di + nd], None if ds is None else ds[k]).astype(np.float32).reshape(t.rank, t.a)
            t.up_train = dequantised(up[ui:ui + nu], None if us is None else us[k]).astype(np.float32).reshape(t.b, t.rank)
            di += nd
            ui += nu
    for layer in layers:
        t = layer.lora
        if t is None:
            continue
        d, u = tensor(f"lora.{layer.name}.down"), tensor(f"lora.{layer.name}.up")
        sd, su = scales(f"lora.{layer.name}.down"), scales(f"lora.{layer.name}.up")
        t.down = dequantised(d, None if sd is None else sd[0]).astype(np.float32).reshape(t.rank, layer.in_)
        t.up = dequantised(u, None if su is None else su[0]).astype(np.float32).reshape(layer.out, t.rank)
    stored = {}
    if seed is None:
        for layer in lidb_layers:
            t = layer.lidb
            d, u = tensor(f"basis.{layer.name}.down"), tensor(f"basis.{layer.name}.up")
            stored[layer.name] = (d.reshape(t.a, layer.in_).copy(), u.reshape(layer.out, t.b).copy())
    return Subject(layers, binding["architecture"], targets, seed, stored, base_content, md.get("info") or {}, md)


def check_against_base(subject: Subject, tensors: Sequence[Tuple[str, Sequence[int]]]) -> None:
    """Checks that ``subject`` applies to a base whose tensor table (names and shapes, in order) is
    ``tensors``: every layer present with its shape, and listed in the base's order (spec §2)."""
    order = {name: i for i, (name, _) in enumerate(tensors)}
    shapes = dict(tensors)
    prev = -1
    for l in subject.layers:
        w = l.name + ".weight"
        if w not in order:
            raise SubjectError(f"layer {l.name!r} is not in the base")
        if tuple(shapes[w]) != (l.out, l.in_):
            raise SubjectError(f"layer {l.name!r}: subject [{l.out}, {l.in_}], base {list(shapes[w])}")
        if order[w] <= prev:
            raise SubjectError(f"layer {l.name!r}: layers are not in the base's tensor order")
        prev = order[w]


def _q8_scale_ok(s) -> bool:
    """The q8 scale rule of readers (spec §3): positive, and 127 · scale finite in binary32."""
    with np.errstate(over="ignore"):
        return bool(np.all(s > 0) and np.all(np.isfinite(np.asarray(s, np.float32) * np.float32(127))))


def _pack(name: str, blocks: List[np.ndarray], dtype: str, shape=None, block_names=None):
    """Writers refuse what readers would refuse (spec §3): a finite factor that rounds to infinity
    in f16/bf16, a q8 block whose scale fails the readers' rule. Errors name the tensor and, with
    ``block_names``, the layer."""
    blocks = [np.asarray(b, np.float32).reshape(-1) for b in blocks]
    flat = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    starts = np.cumsum([0] + [b.size for b in blocks])

    def where(i=None, block=None):
        if block is None:
            block = int(np.searchsorted(starts, i, side="right") - 1)
        return f"layer {block_names[block]!r}: " if block_names is not None and 0 <= block < len(block_names) else ""

    bad = np.flatnonzero(~np.isfinite(flat))
    if bad.size:
        raise ValueError(f"{name}: {where(int(bad[0]))}factor values must be finite")
    shape = tuple(shape) if shape is not None else (flat.size,)
    if dtype == "f32":
        return [(name, flat.reshape(shape))]
    if dtype == "f16":
        with np.errstate(over="ignore"):
            half = flat.astype(np.float16)
        bad = np.flatnonzero(~np.isfinite(half))
        if bad.size:
            raise ValueError(f"{name}: {where(int(bad[0]))}factor value {flat[bad[0]]} does not fit f16 (use f32)")
        return [(name, half.reshape(shape))]
    if dtype == "bf16":
        bits = flat.view(np.uint32)
        # round to nearest even on the upper 16 bits (finite values only, checked above)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        bad = np.flatnonzero((rounded & 0x7F80) == 0x7F80)
        if bad.size:
            raise ValueError(f"{name}: {where(int(bad[0]))}factor value {flat[bad[0]]} does not fit bf16 (use f32)")
        return [(name, rounded.reshape(shape), "BF16")]
    if dtype == "q8":
        q, scales = [], []
        for k, b in enumerate(blocks):
            m = np.float32(np.max(np.abs(b))) if b.size else np.float32(0)
            # max|x| / 127 in binary32, never 0: the smallest subnormal when the quotient underflows
            s = max(np.float32(m / np.float32(127)), np.float32(2.0 ** -149)) if m > 0 else np.float32(1)
            if not _q8_scale_ok(s):
                raise ValueError(f"{name}: {where(block=k)}max |factor| {m} needs the q8 scale {s}, above the largest a reader "
                                 "accepts (127 · scale must be finite in binary32); use f32")
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
        names = [l.name for l in lidb_layers]
        tensors += _pack("lidb.down_train", [l.lidb.down_train for l in lidb_layers], dtype, block_names=names)
        tensors += _pack("lidb.up_train", [l.lidb.up_train for l in lidb_layers], dtype, block_names=names)
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
    seed = subject.seed
    if seed is not None and seed >= 1 << 63:
        seed = IntegerText(str(seed))  # unsigned 64-bit seeds beyond the signed range keep their literal
    basis = {"generator": "lidb-basis-1", "seed": seed} if subject.seed is not None else {"stored": True}
    metadata = {"lidb_subject": 1, "targets": subject.targets, "binding": binding, "basis": basis, "dtype": dtype,
                "trained_parameters": subject.trained_parameters, "info": subject.info or {}, "layers": rows}
    encoding = {}
    cctx = zstandard.ZstdCompressor(level=19)
    for t in tensors:
        raw = np.ascontiguousarray(t[1]).tobytes()
        if raw and len(cctx.compress(raw)) <= len(raw) - len(raw) // 8:
            encoding[t[0]] = "zstd"
    write(path, "subject", metadata, tensors, encoding=encoding, compress_header=True)
