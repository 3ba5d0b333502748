"""CRC-32C (Castagnoli), as used by the .lidb container.

Reflected polynomial 0x82F63B78, initial value 0xFFFFFFFF, final XOR
0xFFFFFFFF.  ``crc32c(b"123456789") == 0xE3069283``.

Small inputs go through a pure-Python slicing-by-8 loop.  Large inputs are
split into many equal chunks whose CRCs are computed side by side with numpy
(one table lookup per byte lane per step), then chained together with the
"append zero bytes" operator of the CRC, which is linear over GF(2).
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["crc32c", "crc32c_update", "POLY"]

POLY = 0x82F63B78
_MASK = 0xFFFFFFFF


def _make_tables():
    t0 = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (POLY if c & 1 else 0)
        t0.append(c)
    tables = [t0]
    for _ in range(7):
        prev = tables[-1]
        tables.append([(prev[i] >> 8) ^ t0[prev[i] & 0xFF] for i in range(256)])
    return tables


_T = _make_tables()
_T0, _T1, _T2, _T3, _T4, _T5, _T6, _T7 = _T
_little_endian = sys.byteorder == "little"
_NT = [np.array(t, dtype=np.uint32) for t in _T[:4]]


def _update_py(state: int, data) -> int:
    """Raw register update (no pre/post inversion), pure Python."""
    mv = memoryview(data).cast("B")
    n = len(mv)
    i = 0
    t0, t1, t2, t3, t4, t5, t6, t7 = _T0, _T1, _T2, _T3, _T4, _T5, _T6, _T7
    end8 = n - (n % 8)
    if end8:
        words = mv[:end8].cast("Q") if _little_endian else None
        if words is not None:
            for w in words:
                lo = (w & _MASK) ^ state
                hi = w >> 32
                state = (
                    t7[lo & 0xFF] ^ t6[(lo >> 8) & 0xFF] ^ t5[(lo >> 16) & 0xFF] ^ t4[lo >> 24]
                    ^ t3[hi & 0xFF] ^ t2[(hi >> 8) & 0xFF] ^ t1[(hi >> 16) & 0xFF] ^ t0[hi >> 24]
                )
            i = end8
    for b in mv[i:]:
        state = t0[(state ^ b) & 0xFF] ^ (state >> 8)
    return state


# --- GF(2) operator "feed n zero bytes into the register" -------------------

def _apply(cols, v: int) -> int:
    r = 0
    i = 0
    while v:
        if v & 1:
            r ^= cols[i]
        v >>= 1
        i += 1
    return r


def _compose(a, b):
    """Operator a∘b (apply b first, then a)."""
    return [_apply(a, c) for c in b]


def _zeros_operator(nbytes: int):
    one = [_update_py(1 << k, b"\x00") for k in range(32)]
    result = [1 << k for k in range(32)]  # identity
    power = one
    n = nbytes
    while n:
        if n & 1:
            result = _compose(power, result)
        n >>= 1
        if n:
            power = _compose(power, power)
    return result


def _byte_tables(cols):
    """Four 256-entry tables so that op(v) = T0[v&255]^T1[v>>8&255]^..."""
    out = []
    for k in range(4):
        c = cols[8 * k: 8 * k + 8]
        t = [0] * 256
        for v in range(1, 256):
            low = v & -v
            t[v] = t[v ^ low] ^ c[low.bit_length() - 1]
        out.append(t)
    return out


_op_cache: dict = {}


def _shift_tables(nbytes: int):
    t = _op_cache.get(nbytes)
    if t is None:
        t = _byte_tables(_zeros_operator(nbytes))
        if len(_op_cache) > 64:
            _op_cache.clear()
        _op_cache[nbytes] = t
    return t


_SMALL = 1 << 15


def _update_np(state: int, data) -> int:
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    n = buf.size
    # chunk length L (multiple of 4) and chunk count N, roughly sqrt(n) each
    lanes = int(np.sqrt(n / 4.0))
    L = max(256, lanes * 4)
    N = n // L
    body = N * L
    words = buf[:body].view("<u4").reshape(N, L // 4)
    t0, t1, t2, t3 = _NT
    s = np.zeros(N, dtype=np.uint32)
    for j in range(L // 4):
        s ^= words[:, j]
        s = t3[s & 0xFF] ^ t2[(s >> 8) & 0xFF] ^ t1[(s >> 16) & 0xFF] ^ t0[s >> 24]
    z0, z1, z2, z3 = _shift_tables(L)
    for c in s.tolist():
        state = (z0[state & 0xFF] ^ z1[(state >> 8) & 0xFF]
                 ^ z2[(state >> 16) & 0xFF] ^ z3[state >> 24]) ^ c
    if body < n:
        state = _update_py(state, buf[body:].tobytes())
    return state


def crc32c_update(crc: int, data) -> int:
    """Continue a CRC-32C: ``crc32c_update(crc32c(a), b) == crc32c(a + b)``."""
    state = (crc ^ _MASK) & _MASK
    n = memoryview(data).nbytes
    if n >= _SMALL:
        state = _update_np(state, data)
    else:
        state = _update_py(state, data)
    return state ^ _MASK


def crc32c(data=b"") -> int:
    """CRC-32C of a bytes-like object (bytes, bytearray, memoryview, mmap, contiguous ndarray)."""
    return crc32c_update(0, data)
