"""The portable LiDB basis generator, version 1 (``lidb-basis-1``), see ``spec/basis.md``.

Everything here is pure Python: integers are masked to 64 bits and the floating-point work uses
Python floats (IEEE-754 binary64, round-to-nearest-even, every ``+ - * / sqrt`` rounded on its
own, no fused multiply-add), in exactly the order of the specification. Only the final packing of
the binary64 results into little-endian binary32 bytes leaves the binary64 domain, and it rounds to
nearest even (``struct.pack('<f', x)``).

The loops are written with ``map``/``functools.reduce`` instead of explicit ``for`` statements
for speed, but each of them performs the same elementary operations in the same order as the
specification's loops (``sum()`` is deliberately avoided: it may use compensated summation).
"""

from __future__ import annotations

import functools
import math
import operator
import struct
from typing import List, Sequence, Tuple

__all__ = [
    "BASIS_VERSION",
    "BasisError",
    "mix64",
    "fnv1a64",
    "key",
    "word",
    "value",
    "dot",
    "orthonormal",
    "layer_bases",
]

BASIS_VERSION = "lidb-basis-1"

MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_TWO_M53 = 2.0 ** -53
_TWO_M20 = 2.0 ** -20


class BasisError(ValueError):
    """Invalid arguments for the basis generator, or a degenerate basis."""


# --- §1 Integers -----------------------------------------------------------------------------


def mix64(z: int) -> int:
    """SplitMix64's output function on an unsigned 64-bit integer."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def fnv1a64(data: bytes) -> int:
    """64-bit FNV-1a of ``data``."""
    h = 0xCBF29CE484222325
    for c in data:
        h = ((h ^ c) * 0x00000100000001B3) & MASK64
    return h


# --- §2 Streams ------------------------------------------------------------------------------


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BasisError(f"seed must be an integer, got {type(seed).__name__}")
    if not 0 <= seed <= MASK64:
        raise BasisError(f"seed must be an unsigned 64-bit integer, got {seed}")
    return seed


def key(seed: int, name: str, role: str) -> int:
    """``key(S, name, role) = mix64(mix64(S) ^ fnv1a64(utf8(name) ++ [0x00] ++ utf8(role)))``."""
    _check_seed(seed)
    if not isinstance(name, str):
        raise BasisError(f"name must be a string, got {type(name).__name__}")
    if role not in ("down", "up"):
        raise BasisError(f"role must be 'down' or 'up', got {role!r}")
    data = name.encode("utf-8") + b"\x00" + role.encode("utf-8")
    return mix64(mix64(seed) ^ fnv1a64(data))


def word(k: int, i: int) -> int:
    """Word ``i`` of the stream with key ``k``: ``mix64(K + (i + 1) * 0x9E3779B97F4A7C15)``."""
    return mix64((k + (i + 1) * _GOLDEN) & MASK64)


def value(k: int, i: int) -> float:
    """Value ``i`` of the stream with key ``k``, in [-1, 1): ``2 * ((word >> 11) * 2^-53) - 1``."""
    return 2.0 * (float(word(k, i) >> 11) * _TWO_M53) - 1.0


def _values(k: int, start: int, n: int) -> List[float]:
    """``[value(k, start + c) for c in range(n)]``, inlined for speed."""
    out = []
    append = out.append
    z = (k + (start + 1) * _GOLDEN) & MASK64
    for _ in range(n):
        w = z
        w = ((w ^ (w >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        w = ((w ^ (w >> 27)) * 0x94D049BB133111EB) & MASK64
        w ^= w >> 31
        append(2.0 * (float(w >> 11) * _TWO_M53) - 1.0)
        z = (z + _GOLDEN) & MASK64
    return out


# --- §3 Orthonormal vectors ------------------------------------------------------------------

_add = operator.add
_mul = operator.mul
_sub = operator.sub
_reduce = functools.reduce


def dot(x: Sequence[float], y: Sequence[float]) -> float:
    """Dot product with four partial sums: ``s_(c mod 4) += x[c] * y[c]``, then
    ``(s0 + s1) + (s2 + s3)``.

    Each partial sum only ever sees its own lane, in increasing ``c``, so it is accumulated
    sequentially (starting from 0.0) over the strided slice of its lane.
    """
    s0 = _reduce(_add, map(_mul, x[0::4], y[0::4]), 0.0)
    s1 = _reduce(_add, map(_mul, x[1::4], y[1::4]), 0.0)
    s2 = _reduce(_add, map(_mul, x[2::4], y[2::4]), 0.0)
    s3 = _reduce(_add, map(_mul, x[3::4], y[3::4]), 0.0)
    return (s0 + s1) + (s2 + s3)


def _check_size(label: str, v: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise BasisError(f"{label} must be an integer, got {type(v).__name__}")
    return v


def orthonormal(k: int, count: int, n: int) -> List[List[float]]:
    """``count`` orthonormal binary64 vectors of length ``n`` from the stream with key ``k``
    (requires ``1 <= count <= n``)."""
    _check_size("count", count)
    _check_size("n", n)
    if not 1 <= count <= n:
        raise BasisError(f"orthonormal needs 1 <= count <= n, got count={count}, n={n}")
    if not 0 <= k <= MASK64:
        raise BasisError(f"key must be an unsigned 64-bit integer, got {k}")
    qs: List[List[float]] = []
    for r in range(count):
        v = _values(k, r * n, n)
        n0 = math.sqrt(dot(v, v))
        for _ in range(2):
            for j in range(r):
                qj = qs[j]
                d = dot(qj, v)
                # v[c] = v[c] - d * q_j[c]: product rounded, then difference.
                v = list(map(_sub, v, map(d.__mul__, qj)))
        nr = math.sqrt(dot(v, v))
        if nr <= n0 * _TWO_M20:
            raise BasisError(
                f"degenerate basis: vector {r} of {count} (length {n}) lost its norm "
                f"({nr!r} <= {n0!r} * 2^-20)"
            )
        qs.append([c / nr for c in v])  # a division, not a reciprocal
    return qs


# --- §4 The bases of a layer -----------------------------------------------------------------


def _pack_f32(values: Sequence[float]) -> bytes:
    """Little-endian binary32 bytes, each value rounded to nearest even."""
    return struct.pack(f"<{len(values)}f", *values)


def layer_bases(
    seed: int, name: str, out: int, in_: int, a: int, b: int
) -> Tuple[bytes, bytes, int, int]:
    """The frozen bases of a layer with weight shape ``[out, in_]`` and requested dims ``a``, ``b``.

    Returns ``(down_aux, up_aux, a', b')`` where ``a' = min(a, in_)``, ``b' = min(b, out)``,
    ``down_aux`` is little-endian binary32, row-major ``[a', in_]`` (rows orthonormal) and
    ``up_aux`` is little-endian binary32, row-major ``[out, b']`` (columns orthonormal).
    """
    _check_seed(seed)
    for label, v in (("out", out), ("in", in_), ("a", a), ("b", b)):
        _check_size(label, v)
        if v < 1:
            raise BasisError(f"{label} must be >= 1, got {v}")
    a2 = min(a, in_)
    b2 = min(b, out)

    d = orthonormal(key(seed, name, "down"), a2, in_)
    down_flat: List[float] = []
    for row in d:
        down_flat.extend(row)

    u = orthonormal(key(seed, name, "up"), b2, out)
    # up_aux[c][r] = U_r[c]: row-major [out, b'] is the transpose of the generated vectors.
    up_flat: List[float] = []
    for col in zip(*u):
        up_flat.extend(col)

    return _pack_f32(down_flat), _pack_f32(up_flat), a2, b2
