"""Reader, verifier and canonical writer for the ``.lidb`` container, version 1.0.

Written from ``spec/format.md`` alone.  Section numbers (§) refer to that
document.

Reading::

    c = read("model.lidb")          # performs every check of §5, in order
    c.kind, c.metadata, c.tensors   # header contents
    arr = c.tensor("alpha")         # numpy array (read-only view for raw data)

Every failure raises :class:`LidbError`; its ``code`` is the error name used in
§5 (``badMagic``, ``headerChecksumMismatch``, ``hole``, ...).

Element types without a numpy equivalent are returned as their raw bit
patterns: ``uint16`` for ``BF16``; ``uint8`` for the 8-bit float types
(``F8_E4M3``, ``F8_E5M2``, ``F8_E4M3FNUZ``, ``F8_E5M2FNUZ``, ``F8_E8M0``).
Convert them yourself (e.g. ``(bits.astype(np.uint32) << 16).view(np.float32)``
for ``BF16``).  The packed sub-byte types (``F4``, ``F6_E2M3``, ``F6_E3M2``) are
returned as a flat ``uint8`` array of the packed bytes, since their elements
are not byte-addressable.  ``C64`` becomes ``complex64``.

Integers in the JSON header are returned as Python ``int`` when they fit in a
signed 64-bit integer; integer literals that do not fit are kept exactly, as
text, in an :class:`IntegerText` (a ``str`` subclass).  Floating-point literals
become ``float`` and must be finite as binary64 (``1e400`` is ``invalidJSON``).
``\\u`` escapes that encode lone surrogates are ``invalidJSON`` (§1.2).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from json.decoder import scanstring as _scanstring
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import zstandard

from .crc32c import crc32c, crc32c_update

__all__ = [
    "LidbError",
    "IntegerText",
    "NegativeZero",
    "TensorEntry",
    "Container",
    "Problem",
    "read",
    "verify",
    "write",
    "dumps",
    "parse_json",
    "encode_json",
    "DTYPES",
    "MAGIC",
]

# --------------------------------------------------------------------------
# Constants (§1, §2, §5 "Limits in one place")

MAGIC = b"\x89LIDB\r\n\x1a"
PREAMBLE_SIZE = 64
MAJOR = 1
MINOR = 0
MAX_HEADER_BYTES = 100_000_000
MAX_NESTING = 64
MAX_RANK = 32
MAX_NAME_BYTES = 1024
MAX_I63 = (1 << 63) - 1
MAX_U64 = (1 << 64) - 1
MAX_ZSTD_TENSOR = 1 << 30  # decoded bytes of one zstd tensor (§3)
FLAG_HEADER_ZSTD = 0x1
REQUIRED_FLAGS = 0x0000FFFF
KNOWN_REQUIRED_FLAGS = FLAG_HEADER_ZSTD
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_PREAMBLE = struct.Struct("<8sHHIQQQQI12s")
assert _PREAMBLE.size == PREAMBLE_SIZE

# dtype name -> (bits per element, numpy dtype used by Container.tensor; None
# for packed sub-byte types, returned as flat uint8 bytes)
DTYPES: Dict[str, Tuple[int, Optional[str]]] = {
    "BOOL": (8, "|b1"),
    "U8": (8, "|u1"),
    "I8": (8, "|i1"),
    "U16": (16, "<u2"),
    "I16": (16, "<i2"),
    "U32": (32, "<u4"),
    "I32": (32, "<i4"),
    "U64": (64, "<u8"),
    "I64": (64, "<i8"),
    "F16": (16, "<f2"),
    "BF16": (16, "<u2"),  # raw bit patterns
    "F32": (32, "<f4"),
    "F64": (64, "<f8"),
    "F8_E4M3": (8, "|u1"),  # raw bit patterns from here on
    "F8_E5M2": (8, "|u1"),
    "F8_E4M3FNUZ": (8, "|u1"),
    "F8_E5M2FNUZ": (8, "|u1"),
    "F8_E8M0": (8, "|u1"),
    "C64": (64, "<c8"),
    "F4": (4, None),  # packed, two per byte
    "F6_E2M3": (6, None),  # packed, four per three bytes
    "F6_E3M2": (6, None),
}
ENCODINGS = ("raw", "zstd")

_CRC_RE = re.compile(r"[0-9a-f]{8}")
_KIND_RE = re.compile(r"[a-z0-9-]{1,64}")  # §1.2: 1-64 characters
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
_INT_LITERAL_RE = re.compile(r"-?(?:0|[1-9][0-9]*)")


def align64(x: int) -> int:
    return (x + 63) & ~63


# --------------------------------------------------------------------------
# Errors and small types


class LidbError(Exception):
    """A file that does not conform; ``code`` is the error name of §5."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class IntegerText(str):
    """An integer literal from the header that does not fit in a signed 64-bit
    integer, kept exactly as its decimal text (§1.2: integers outside the 64-bit
    range are kept as their literal text)."""

    def __repr__(self) -> str:
        return f"IntegerText({str.__repr__(self)})"


class NegativeZero(int):
    """The integer literal ``-0``: equal to 0 wherever a number is used (metadata), but refused
    in the tensor table, where ``shape``, ``offset`` and ``length`` are written without a sign
    (§1.2, §5 step 10)."""

    def __new__(cls):
        return super().__new__(cls, 0)

    def __repr__(self) -> str:
        return "NegativeZero()"


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: Tuple[int, ...]
    offset: int  # relative to data_offset
    length: int  # stored bytes
    encoding: str
    crc32c: str  # 8 lower-case hex digits

    @property
    def bits(self) -> int:
        """Bits per element (4 and 6 for the packed types)."""
        return DTYPES[self.dtype][0]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def decoded_size(self) -> int:
        return self.numel * self.bits // 8

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "offset": self.offset,
            "length": self.length,
            "encoding": self.encoding,
            "crc32c": self.crc32c,
        }


@dataclass(frozen=True)
class Problem:
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# --------------------------------------------------------------------------
# JSON (§1.2, §5 step 8)

_WS_RE = re.compile(r"[ \t\n\r]*")
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def _string(text: str, pos: int) -> Tuple[str, int]:
    """Scan the string whose opening quote is at ``pos``; return it and the
    position after the closing quote.  Rejects what RFC 8259 rejects, and
    ``\\u`` escapes encoding lone surrogates (§1.2; a valid pair is joined into
    one code point by the scanner, so any surrogate left over is a lone one)."""
    try:
        s, end = _scanstring(text, pos + 1, True)
    except ValueError as e:
        raise LidbError("invalidJSON", f"bad string at character {pos} ({e})")
    if _SURROGATE_RE.search(s) is not None:
        raise LidbError("invalidJSON", f"string at character {pos} holds a lone surrogate")
    return s, end


def _number(lit: str, is_float: bool, pos: int):
    if is_float:
        v = float(lit)
        if v in (float("inf"), float("-inf")):
            raise LidbError("invalidJSON", f"number {lit[:40]} at character {pos} is out of range")
        return v
    if lit == "-0":
        return NegativeZero()
    digits = len(lit) - (1 if lit[0] == "-" else 0)
    if digits <= 19:
        v = int(lit)
        if -(1 << 63) <= v <= MAX_I63:
            return v
    return IntegerText(lit)


def parse_json(text: str, max_nesting: int = MAX_NESTING):
    """Parse JSON text (RFC 8259) with the rules of §5 step 8.

    The whole text is checked for syntax first (``invalidJSON``), then for
    nesting deeper than ``max_nesting`` arrays/objects (``nestingTooDeep``),
    then for duplicate keys (``duplicateKey``, compared after unescaping).  The
    top-level value counts as depth 1.  Restrictions of §1.2: NaN/Infinity
    literals are not JSON; floating-point literals that overflow binary64
    (``1e400``), ``\\u`` escapes encoding lone surrogates and a byte-order mark
    are ``invalidJSON``.  The parser is
    iterative, so deep input cannot exhaust the Python stack.
    """
    n = len(text)
    ws = _WS_RE.match
    num = _NUMBER_RE.match
    # Frames: [container, pending_key, is_object]; container is None beyond the
    # nesting limit (then values are only checked for syntax, not built).
    stack: List[list] = []
    too_deep = False
    duplicate: Optional[Tuple[str, int]] = None

    def fail(msg: str, at: int):
        raise LidbError("invalidJSON", f"{msg} at character {at}")

    def read_key(pos: int) -> Tuple[str, int]:
        if pos >= n or text[pos] != '"':
            fail("expected a string key", pos)
        key, pos = _string(text, pos)
        pos = ws(text, pos).end()
        if pos >= n or text[pos] != ":":
            fail("expected ':'", pos)
        return key, ws(text, pos + 1).end()

    pos = ws(text, 0).end()
    while True:
        # ---- parse one value starting at pos
        if pos >= n:
            fail("unexpected end of text", pos)
        c = text[pos]
        complete = True
        if c == "{" or c == "[":
            is_obj = c == "{"
            depth = len(stack) + 1
            if depth > max_nesting:
                too_deep = True
            container = ({} if is_obj else []) if depth <= max_nesting else None
            pos = ws(text, pos + 1).end()
            close = "}" if is_obj else "]"
            if pos < n and text[pos] == close:
                value = container
                pos += 1
            else:
                frame = [container, None, is_obj]
                if is_obj:
                    key, pos = read_key(pos)
                    frame[1] = key
                stack.append(frame)
                complete = False
        elif c == '"':
            value, pos = _string(text, pos)
        elif c == "t" and text.startswith("true", pos):
            value, pos = True, pos + 4
        elif c == "f" and text.startswith("false", pos):
            value, pos = False, pos + 5
        elif c == "n" and text.startswith("null", pos):
            value, pos = None, pos + 4
        else:
            m = num(text, pos)
            if m is None:
                fail(f"unexpected character {c!r}", pos)
            value = _number(m.group(0), m.group(1) is not None or m.group(2) is not None, pos)
            pos = m.end()
        if not complete:
            continue
        # ---- attach the finished value, close containers as far as possible
        while True:
            if not stack:
                pos = ws(text, pos).end()
                if pos != n:
                    fail("extra data after the top-level value", pos)
                if too_deep:
                    raise LidbError("nestingTooDeep", f"arrays/objects nested more than {max_nesting} deep")
                if duplicate is not None:
                    raise LidbError("duplicateKey", f"duplicate key {duplicate[0]!r} in an object")
                return value
            frame = stack[-1]
            container, key, is_obj = frame
            if container is not None:
                if is_obj:
                    if key in container and duplicate is None:
                        duplicate = (key, pos)
                    container[key] = value
                else:
                    container.append(value)
            pos = ws(text, pos).end()
            if pos >= n:
                fail("unexpected end of text", pos)
            c = text[pos]
            if c == ",":
                pos = ws(text, pos + 1).end()
                if is_obj:
                    frame[1], pos = read_key(pos)
                break  # parse the next member value
            if c == ("}" if is_obj else "]"):
                stack.pop()
                value = container
                pos += 1
                continue
            fail("expected ',' or a closing bracket", pos)


def _escape_string(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x20:
            out.append(_CONTROL_ESCAPES.get(o) or "\\u%04x" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_CONTROL_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def _quote(s: str) -> str:
    if _NEEDS_ESCAPE.search(s) is None:
        return '"' + s + '"'
    return _escape_string(s)


def encode_json(value, indent: Optional[int] = None, max_nesting: int = MAX_NESTING,
                _depth: int = 0) -> str:
    """Serialise a value the way §6 asks: compact, object keys in insertion
    order, strings escaped minimally (see ``_escape_string``), integers in
    plain decimal, floats as Python's shortest round-trip ``repr`` (which
    always has a fraction or an exponent, so they stay floats when read back).

    Accepts dict (str keys), list, tuple, str, int, float, bool, None,
    :class:`IntegerText` and numpy scalars.  ``indent`` gives a pretty form
    (not canonical) for display.  Raises ValueError for values that cannot be
    represented (NaN, infinities, non-str keys, too deep nesting).
    """
    parts: List[str] = []
    _encode(value, parts, indent, max_nesting, _depth)
    return "".join(parts)


def _encode(v, out: List[str], indent, max_nesting, depth):
    if isinstance(v, IntegerText):
        if not _INT_LITERAL_RE.fullmatch(v):
            raise ValueError(f"not an integer literal: {v!r}")
        out.append(str.__str__(v))
    elif isinstance(v, str):
        out.append(_quote(v))
    elif v is None:
        out.append("null")
    elif isinstance(v, (bool, np.bool_)):
        out.append("true" if v else "false")
    elif isinstance(v, (int, np.integer)):
        i = int(v)
        if not -(1 << 63) <= i <= MAX_I63:
            raise ValueError(f"integer {i} does not fit in 64 bits; pass IntegerText to write it as is")
        out.append(str(i))
    elif isinstance(v, (float, np.floating)):
        f = float(v)
        if f != f or f in (float("inf"), float("-inf")):
            raise ValueError("NaN and infinities cannot be written")
        out.append(repr(f))
    elif isinstance(v, dict):
        depth += 1
        if depth > max_nesting:
            raise ValueError(f"nesting deeper than {max_nesting}")
        if not v:
            out.append("{}")
            return
        out.append("{")
        first = True
        for k, x in v.items():
            if not isinstance(k, str):
                raise ValueError(f"object keys must be strings, not {type(k).__name__}")
            if not first:
                out.append(",")
            first = False
            if indent is not None:
                out.append("\n" + " " * (indent * depth))
            out.append(_quote(k))
            out.append(": " if indent is not None else ":")
            _encode(x, out, indent, max_nesting, depth)
        if indent is not None:
            out.append("\n" + " " * (indent * (depth - 1)))
        out.append("}")
    elif isinstance(v, (list, tuple)):
        depth += 1
        if depth > max_nesting:
            raise ValueError(f"nesting deeper than {max_nesting}")
        if not v:
            out.append("[]")
            return
        out.append("[")
        for i, x in enumerate(v):
            if i:
                out.append(",")
            if indent is not None:
                out.append("\n" + " " * (indent * depth))
            _encode(x, out, indent, max_nesting, depth)
        if indent is not None:
            out.append("\n" + " " * (indent * (depth - 1)))
        out.append("]")
    else:
        raise ValueError(f"cannot store a {type(v).__name__} in the header")


# --------------------------------------------------------------------------
# zstd frames (§3)


def _zstd_decode_exact(data, expected: int, what: str) -> bytes:
    """Decode ``data`` as exactly one zstd frame that declares ``expected``
    content bytes; raise ``decompressionFailed`` otherwise.  Never allocates
    more than ``expected`` bytes of output."""
    data = bytes(data)
    if len(data) < 4 or data[:4] != ZSTD_MAGIC:
        raise LidbError("decompressionFailed", f"{what}: not a zstd frame")
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as e:
        raise LidbError("decompressionFailed", f"{what}: bad zstd frame header ({e})")
    if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
        raise LidbError("decompressionFailed", f"{what}: zstd frame does not declare its content size")
    if params.content_size != expected:
        raise LidbError(
            "decompressionFailed",
            f"{what}: zstd frame declares {params.content_size} bytes, expected {expected}",
        )
    if params.dict_id != 0:
        raise LidbError("decompressionFailed", f"{what}: zstd frame needs a dictionary")
    try:
        out = zstandard.ZstdDecompressor().decompress(data, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise LidbError("decompressionFailed", f"{what}: {e}")
    if len(out) != expected:
        raise LidbError("decompressionFailed", f"{what}: decoded {len(out)} bytes, expected {expected}")
    return out


# --------------------------------------------------------------------------
# Reading (§5)


class Container:
    """A parsed ``.lidb`` file.  Construct with :func:`read`."""

    def __init__(self):
        self.major = 0
        self.minor = 0
        self.flags = 0
        self.stored_length = 0
        self.header_length = 0
        self.data_offset = 0
        self.data_length = 0
        self.header_crc32c = 0
        self.kind = ""
        self.metadata: Dict[str, Any] = {}
        self.header: Dict[str, Any] = {}
        self.tensors: List[TensorEntry] = []
        self._by_name: Dict[str, TensorEntry] = {}
        self._buf: Optional[memoryview] = None
        self._mmap = None

    # -- access
    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def names(self) -> List[str]:
        return [t.name for t in self.tensors]

    def entry(self, name: str) -> TensorEntry:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r}") from None

    def stored_bytes(self, name: str) -> memoryview:
        """The tensor's bytes as stored (compressed for ``zstd``), unchecked."""
        t = self.entry(name)
        if self._buf is None:
            raise ValueError("the container is closed")
        start = self.data_offset + t.offset
        return self._buf[start:start + t.length]

    def tensor_bytes(self, name: str) -> bytes:
        """The decoded bytes of a tensor.  A ``zstd`` tensor's checksum is
        checked each time, before decoding; a raw tensor is handed out as a
        view without a check (§5)."""
        t = self.entry(name)
        stored = self.stored_bytes(name)
        if t.encoding == "zstd":
            _check_crc(t, stored)
            return _zstd_decode_exact(stored, t.decoded_size, f"tensor {t.name!r}")
        return stored

    def tensor(self, name: str, copy: bool = False) -> np.ndarray:
        """The tensor as a numpy array of its shape.

        Raw tensors are returned as read-only views of the file's bytes
        unless ``copy`` is true.  BF16 comes back as uint16 bit patterns, the
        8-bit float types as uint8 bit patterns, and the packed types (F4,
        F6_*) as a flat uint8 array of their packed bytes.
        """
        t = self.entry(name)
        data = self.tensor_bytes(name)
        np_dtype = DTYPES[t.dtype][1]
        if np_dtype is None:
            arr = np.frombuffer(data, dtype=np.uint8, count=t.decoded_size)
        else:
            arr = np.frombuffer(data, dtype=np.dtype(np_dtype), count=t.numel).reshape(t.shape)
        return arr.copy() if copy else arr

    # -- lifetime
    def close(self):
        self._buf = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # arrays still view it; the map goes away with them
            self._mmap = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_crc(t: TensorEntry, stored) -> None:
    got = crc32c(stored)
    if got != int(t.crc32c, 16):
        raise LidbError(
            "tensorChecksumMismatch",
            f"tensor {t.name!r}: CRC-32C of stored bytes is {got:08x}, header says {t.crc32c}",
        )


def _open_source(source) -> Tuple[memoryview, Any]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return memoryview(source).cast("B"), None
    with open(os.fspath(source), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return memoryview(b""), None
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return memoryview(m), m


def read(source, verify: bool = True) -> Container:
    """Open a ``.lidb`` file (a path, or the file's bytes) and perform every
    check of §5 in order, raising :class:`LidbError` at the first failure.

    With ``verify`` (the default) every tensor's CRC-32C is also checked once
    now (``tensorChecksumMismatch``), as the Swift reader does for small files;
    this goes beyond §5.  On access raw tensors are handed out unchecked and
    zstd tensors are checked before each decoding.  Padding and zstd payloads
    are checked by :func:`verify`.
    """
    buf, mm = _open_source(source)
    try:
        c = _parse(buf)
        c._buf = buf
        c._mmap = mm
        if verify:
            for t in c.tensors:
                _check_crc(t, c.stored_bytes(t.name))
        return c
    except BaseException:
        if mm is not None:
            try:
                buf.release()
                mm.close()
            except BufferError:
                pass  # views still alive (e.g. in the traceback); closed when collected
        raise


def _parse(buf: memoryview) -> Container:
    size = len(buf)
    c = Container()

    # 1. magic, then preamble size
    if size < 8 or bytes(buf[:8]) != MAGIC:
        raise LidbError("badMagic", "the file does not start with the .lidb magic")
    if size < PREAMBLE_SIZE:
        raise LidbError("truncated", f"the file has {size} bytes, less than the 64-byte preamble")
    (_, major, minor, flags, stored_length, header_length, data_offset, data_length,
     header_crc, reserved) = _PREAMBLE.unpack_from(buf, 0)

    # 2. major version
    if major != MAJOR:
        raise LidbError("unsupportedVersion", f"major version {major}, this reader knows {MAJOR}")

    # 3. header sizes
    if stored_length > MAX_HEADER_BYTES or header_length > MAX_HEADER_BYTES:
        raise LidbError(
            "headerTooLarge",
            f"stored_length {stored_length} / header_length {header_length} (limit {MAX_HEADER_BYTES})",
        )
    if PREAMBLE_SIZE + stored_length > size:
        raise LidbError("headerPastEnd", f"header of {stored_length} bytes runs past the end of the {size}-byte file")

    # 4. header checksum
    stored_header = buf[PREAMBLE_SIZE:PREAMBLE_SIZE + stored_length]
    got = crc32c_update(crc32c(buf[:48]), stored_header)
    if got != header_crc:
        raise LidbError("headerChecksumMismatch", f"computed {got:08x}, preamble says {header_crc:08x}")

    # 5. reserved bytes, flags, plain header size
    if minor == 0 and any(reserved):
        raise LidbError("nonZeroReserved", "reserved bytes 52-63 are not zero")
    unknown = flags & REQUIRED_FLAGS & ~KNOWN_REQUIRED_FLAGS
    if unknown:
        raise LidbError("unknownRequiredFlags", f"unknown required flag bits {unknown:#06x}")
    compressed = bool(flags & FLAG_HEADER_ZSTD)
    if not compressed and header_length != stored_length:
        raise LidbError("sizeMismatch", f"header_length {header_length} != stored_length {stored_length} for an uncompressed header")

    # 6. data section placement
    if data_offset % 64:
        raise LidbError("misalignedDataSection", f"data_offset {data_offset} is not a multiple of 64")
    expected_offset = align64(PREAMBLE_SIZE + stored_length)
    if data_offset > expected_offset:
        raise LidbError("hole", f"data_offset {data_offset}, expected {expected_offset}")
    if data_offset < expected_offset:
        raise LidbError("overlap", f"data_offset {data_offset}, expected {expected_offset}")
    end = data_offset + data_length
    if end > MAX_U64:
        raise LidbError("dataSectionMismatch", f"data_offset + data_length = {end} overflows 64 bits")
    if end > size:
        raise LidbError("truncated", f"data section ends at {end}, the file has {size} bytes")
    if end != size:
        raise LidbError("dataSectionMismatch", f"data section ends at {end}, the file has {size} bytes")

    # 7. compressed header
    if compressed:
        header_bytes = _zstd_decode_exact(stored_header, header_length, "header")
    else:
        header_bytes = bytes(stored_header)

    # 8. UTF-8, JSON, nesting, duplicate keys, top-level object
    try:
        text = header_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LidbError("headerNotUTF8", f"byte {e.start} of the header is not valid UTF-8")
    header = parse_json(text)
    if not isinstance(header, dict):
        raise LidbError("headerNotObject", "the header's top-level JSON value is not an object")

    # 9. top-level fields
    if "kind" not in header:
        raise LidbError("missingField", "header has no 'kind'")
    kind = header["kind"]
    if type(kind) is not str or not _KIND_RE.fullmatch(kind):
        raise LidbError("wrongType", f"'kind' is not 1-64 characters of a-z, 0-9 and '-': {kind!r:.80}")
    metadata = header.get("metadata", {})
    if "metadata" in header and not isinstance(metadata, dict):
        raise LidbError("wrongType", "'metadata' is not an object")
    if "tensors" not in header:
        raise LidbError("missingField", "header has no 'tensors'")
    rows = header["tensors"]
    if not isinstance(rows, list):
        raise LidbError("wrongType", "'tensors' is not an array")

    # 10. tensor table rows
    entries: List[TensorEntry] = []
    by_name: Dict[str, TensorEntry] = {}
    prev_end = 0
    for i, row in enumerate(rows):
        entry = _check_row(i, row)
        where = f"tensor {entry.name!r}"
        if entry.name in by_name:
            raise LidbError("duplicateTensor", f"{where}: name used by an earlier row")
        if entry.offset % 64:
            raise LidbError("misalignedTensor", f"{where}: offset {entry.offset} is not a multiple of 64")
        expected = align64(prev_end)
        if entry.offset > expected:
            raise LidbError("hole", f"{where}: offset {entry.offset}, expected {expected}")
        if entry.offset < expected:
            raise LidbError("overlap", f"{where}: offset {entry.offset}, expected {expected}")
        tend = entry.offset + entry.length
        if tend > MAX_U64 or tend > data_length:
            raise LidbError("outOfRange", f"{where}: ends at {tend}, data section has {data_length} bytes")
        prev_end = tend
        entries.append(entry)
        by_name[entry.name] = entry

    # 11. coverage
    if prev_end != data_length:
        raise LidbError("bufferNotCovered", f"tensors end at {prev_end}, data_length is {data_length}")

    c.major, c.minor, c.flags = major, minor, flags
    c.stored_length, c.header_length = stored_length, header_length
    c.data_offset, c.data_length, c.header_crc32c = data_offset, data_length, header_crc
    c.kind = header["kind"]
    c.metadata = metadata
    c.header = header
    c.tensors = entries
    c._by_name = by_name
    return c


def _is_int(v) -> bool:
    return type(v) is int  # excludes bool, IntegerText and NegativeZero (-0)


def _u64(v) -> Optional[int]:
    """``v`` as an integer in [0, 2^64), or None.  Literals in [2^63, 2^64)
    arrive as IntegerText and are accepted here (§5 step 10: "below 2^64");
    ``-0`` (NegativeZero) is not."""
    if type(v) is IntegerText:
        if v.startswith("-") or len(v) > 20:
            return None
        v = int(v)
    elif type(v) is not int:
        return None
    return v if 0 <= v <= MAX_U64 else None


def _check_row(i: int, row) -> TensorEntry:
    where = f"tensor row {i}"
    if not isinstance(row, dict):
        raise LidbError("wrongType", f"{where} is not an object")
    # name
    if "name" not in row:
        raise LidbError("missingField", f"{where} has no 'name'")
    name = row["name"]
    if type(name) is not str:
        raise LidbError("wrongType", f"{where}: 'name' is not a string")
    try:
        nbytes = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise LidbError("invalidName", f"{where}: name is not valid Unicode (lone surrogate)")
    if not 1 <= nbytes <= MAX_NAME_BYTES:
        raise LidbError("invalidName", f"{where}: name is {nbytes} bytes long (1-{MAX_NAME_BYTES} allowed)")
    if "\x00" in name:
        raise LidbError("invalidName", f"{where}: name contains NUL")
    where = f"tensor {name!r}"
    # dtype
    if "dtype" not in row:
        raise LidbError("missingField", f"{where} has no 'dtype'")
    dtype = row["dtype"]
    if type(dtype) is not str:
        raise LidbError("wrongType", f"{where}: 'dtype' is not a string")
    if dtype not in DTYPES:
        raise LidbError("unknownDType", f"{where}: unknown dtype {dtype!r:.80}")
    # shape
    if "shape" not in row:
        raise LidbError("missingField", f"{where} has no 'shape'")
    shape = row["shape"]
    if not isinstance(shape, list):
        raise LidbError("wrongType", f"{where}: 'shape' is not an array")
    if len(shape) > MAX_RANK:
        raise LidbError("invalidShape", f"{where}: {len(shape)} dimensions (at most {MAX_RANK})")
    for d in shape:
        if not _is_int(d) or d < 0 or d > MAX_I63:
            raise LidbError("invalidShape", f"{where}: dimension {'-0' if type(d) is NegativeZero else repr(d)} "
                                            "is not a non-negative 63-bit integer written without a sign")
    # §2: dimensions multiplied left to right, every intermediate <= 2^64 - 1,
    # then times the element size in bits (checked again); whole bytes
    numel = 1
    for d in shape:
        numel *= d
        if numel > MAX_U64:
            raise LidbError("sizeOverflow", f"{where}: element count overflows 64 bits")
    nbits = numel * DTYPES[dtype][0]
    if nbits > MAX_U64:
        raise LidbError("sizeOverflow", f"{where}: size in bits overflows 64 bits")
    if nbits % 8:
        raise LidbError("invalidShape", f"{where}: {numel} {dtype} elements are not a whole number of bytes")
    decoded = nbits // 8  # below 2^61, since nbits < 2^64
    # offset, length
    vals = {}
    for field in ("offset", "length"):
        if field not in row:
            raise LidbError("missingField", f"{where} has no '{field}'")
        v = _u64(row[field])
        if v is None:
            raise LidbError("wrongType", f"{where}: '{field}' is not a non-negative integer below 2^64")
        vals[field] = v
    offset, length = vals["offset"], vals["length"]
    # encoding
    encoding = row.get("encoding", "raw")
    if type(encoding) is not str:
        raise LidbError("wrongType", f"{where}: 'encoding' is not a string")
    if encoding not in ENCODINGS:
        raise LidbError("unknownEncoding", f"{where}: unknown encoding {encoding!r:.80}")
    if encoding == "raw" and length != decoded:
        raise LidbError("sizeMismatch", f"{where}: raw length {length} != decoded size {decoded}")
    if encoding == "zstd" and decoded == 0:
        raise LidbError("wrongType", f"{where}: a tensor of decoded size 0 must be stored raw")
    if encoding == "zstd" and decoded > MAX_ZSTD_TENSOR:
        raise LidbError("limitExceeded", f"{where}: zstd tensor of {decoded} decoded bytes (at most 2^30)")
    # crc32c
    if "crc32c" not in row:
        raise LidbError("missingField", f"{where} has no 'crc32c'")
    crc = row["crc32c"]
    if type(crc) is not str or not _CRC_RE.fullmatch(crc):
        raise LidbError("wrongType", f"{where}: 'crc32c' is not 8 lower-case hex digits")
    return TensorEntry(name, dtype, tuple(shape), offset, length, encoding, crc)


# --------------------------------------------------------------------------
# Full verification (§4, §5)


def verify(source) -> List[Problem]:
    """Check a file completely: everything :func:`read` checks, plus every
    tensor checksum, that every ``zstd`` tensor is one frame decoding to its
    declared size, and that all padding is zero.  Returns the problems found
    (empty when the file is good).  A failure of §5 stops the check, since
    nothing after it can be trusted."""
    try:
        c = read(source, verify=False)
    except LidbError as e:
        return [Problem(e.code, e.message)]
    except OSError as e:
        return [Problem("ioError", str(e))]
    problems: List[Problem] = []
    try:
        buf = c._buf
        header_end = PREAMBLE_SIZE + c.stored_length
        if any(buf[header_end:c.data_offset]):
            problems.append(Problem("nonZeroPadding", f"padding between header and data section (bytes {header_end}-{c.data_offset - 1}) is not zero"))
        prev_end = 0
        for t in c.tensors:
            if t.offset > prev_end and any(buf[c.data_offset + prev_end:c.data_offset + t.offset]):
                problems.append(Problem("nonZeroPadding", f"padding before tensor {t.name!r} is not zero"))
            prev_end = t.offset + t.length
            stored = c.stored_bytes(t.name)
            try:
                _check_crc(t, stored)
            except LidbError as e:
                problems.append(Problem(e.code, e.message))
                continue
            if t.encoding == "zstd":
                try:
                    _zstd_decode_exact(stored, t.decoded_size, f"tensor {t.name!r}")
                except LidbError as e:
                    problems.append(Problem(e.code, e.message))
        del buf
    finally:
        c.close()
    return problems


# --------------------------------------------------------------------------
# Writing (§6)

_NP_TO_DTYPE = {
    ("b", 1): "BOOL",
    ("u", 1): "U8", ("i", 1): "I8",
    ("u", 2): "U16", ("i", 2): "I16",
    ("u", 4): "U32", ("i", 4): "I32",
    ("u", 8): "U64", ("i", 8): "I64",
    ("f", 2): "F16", ("f", 4): "F32", ("f", 8): "F64",
    ("c", 8): "C64",
}


def _raw_tensor(name: str, data, dtype: str, shape) -> Tuple[Tuple[int, ...], memoryview]:
    if dtype not in DTYPES:
        raise ValueError(f"tensor {name!r}: unknown dtype {dtype!r}")
    shape = tuple(shape)
    if len(shape) > MAX_RANK or any(type(d) is not int or d < 0 for d in shape):
        raise ValueError(f"tensor {name!r}: bad shape {shape!r}")
    numel = 1
    for d in shape:
        numel *= d
    nbits = numel * DTYPES[dtype][0]
    if nbits % 8 or nbits > MAX_U64:
        raise ValueError(f"tensor {name!r}: {numel} {dtype} elements are not a whole number of bytes")
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    mv = memoryview(data).cast("B")
    if mv.nbytes != nbits // 8:
        raise ValueError(f"tensor {name!r}: {mv.nbytes} bytes given, {dtype} {list(shape)} needs {nbits // 8}")
    return shape, mv

TensorSpec = Union[np.ndarray, Tuple[Any, str]]


def _normalise_tensors(tensors) -> List[Tuple[str, str, Tuple[int, ...], memoryview]]:
    """Accepts (name, array), (name, array, dtype) and (name, data, dtype, shape).
    The 4-tuple form takes ``data``'s bytes as they are (any bytes-like object
    or array, already little-endian) and is the way to write the packed
    sub-byte types."""
    if isinstance(tensors, dict):
        items = list(tensors.items())
    else:
        items = list(tensors)
    out = []
    seen = set()
    for item in items:
        shape = None
        if len(item) == 2:
            name, arr = item
            dtype = None
        elif len(item) == 3:
            name, arr, dtype = item
        elif len(item) == 4:
            name, arr, dtype, shape = item
        else:
            raise ValueError("tensors are (name, array), (name, array, dtype) or (name, data, dtype, shape)")
        if type(name) is not str:
            raise ValueError(f"tensor name {name!r} is not a string")
        try:
            nb = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(f"tensor name {name!r} is not valid Unicode")
        if not 1 <= nb <= MAX_NAME_BYTES or "\x00" in name:
            raise ValueError(f"tensor name {name!r}: 1-{MAX_NAME_BYTES} bytes of UTF-8, no NUL")
        if name in seen:
            raise ValueError(f"duplicate tensor name {name!r}")
        seen.add(name)
        if shape is not None:
            out.append((name, dtype) + _raw_tensor(name, arr, dtype, shape))
            continue
        arr = np.asarray(arr)
        if dtype is None:
            dtype = _NP_TO_DTYPE.get((arr.dtype.kind, arr.dtype.itemsize))
            if dtype is None:
                raise ValueError(f"tensor {name!r}: numpy dtype {arr.dtype} has no .lidb dtype; pass (name, bits, dtype)")
        elif dtype not in DTYPES:
            raise ValueError(f"tensor {name!r}: unknown dtype {dtype!r}")
        elif DTYPES[dtype][0] % 8 or arr.dtype.itemsize * 8 != DTYPES[dtype][0] or arr.dtype.kind not in "biufc":
            raise ValueError(f"tensor {name!r}: array of {arr.dtype} cannot hold {dtype} elements"
                             " (packed types: pass (name, data, dtype, shape))")
        if arr.ndim > MAX_RANK:
            raise ValueError(f"tensor {name!r}: more than {MAX_RANK} dimensions")
        if arr.dtype.kind == "b":
            arr = arr.astype(np.uint8)
        le = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
        arr = arr.astype(le, order="C", copy=False)  # keeps 0-d arrays 0-d
        out.append((name, dtype, tuple(int(d) for d in arr.shape), memoryview(arr.reshape(-1).view(np.uint8))))
    return out


def _plan(kind: str, metadata, tensors, encoding, compress_header: bool, zstd_level: int):
    """Lay the file out.  Returns (head, chunks, total): ``head`` is preamble +
    stored header + zero padding up to data_offset; ``chunks`` are the tensor
    byte strings each preceded by its zero padding."""
    if type(kind) is not str or not _KIND_RE.fullmatch(kind):
        raise ValueError("kind: 1-64 characters of a-z, 0-9 and '-'")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise ValueError("metadata must be a dict")
    items = _normalise_tensors(tensors)
    compressor = None
    rows = []
    chunks: List[Tuple[int, Any]] = []
    end = 0
    for name, dtype, shape, data in items:
        enc = encoding.get(name, "raw") if isinstance(encoding, dict) else encoding
        if enc not in ENCODINGS:
            raise ValueError(f"unknown encoding {enc!r}")
        if data.nbytes == 0 or data.nbytes > MAX_ZSTD_TENSOR:
            enc = "raw"  # §3: empty tensors and tensors above 2^30 bytes are stored raw
        if enc == "zstd":
            if compressor is None:
                compressor = zstandard.ZstdCompressor(level=zstd_level, write_content_size=True)
            stored = compressor.compress(data)
        else:
            stored = data
        offset = align64(end)
        length = len(stored) if isinstance(stored, bytes) else stored.nbytes
        rows.append({
            "name": name,
            "dtype": dtype,
            "shape": list(shape),
            "offset": offset,
            "length": length,
            "encoding": enc,
            "crc32c": "%08x" % crc32c(stored),
        })
        chunks.append((offset - end, stored))
        end = offset + length
    data_length = end
    header = {"kind": kind, "metadata": metadata, "tensors": rows}
    header_bytes = encode_json(header).encode("utf-8")
    header_length = len(header_bytes)
    flags = 0
    if compress_header:
        flags |= FLAG_HEADER_ZSTD
        stored_header = zstandard.ZstdCompressor(level=zstd_level, write_content_size=True).compress(header_bytes)
    else:
        stored_header = header_bytes
    stored_length = len(stored_header)
    if stored_length > MAX_HEADER_BYTES or header_length > MAX_HEADER_BYTES:
        raise ValueError("header larger than 100,000,000 bytes")
    data_offset = align64(PREAMBLE_SIZE + stored_length)
    first48 = struct.pack("<8sHHIQQQQ", MAGIC, MAJOR, MINOR, flags, stored_length,
                          header_length, data_offset, data_length)
    hcrc = crc32c_update(crc32c(first48), stored_header)
    preamble = first48 + struct.pack("<I", hcrc) + bytes(12)
    head = preamble + stored_header + bytes(data_offset - PREAMBLE_SIZE - stored_length)
    return head, chunks, data_offset + data_length


def dumps(kind: str, metadata=None, tensors=(), encoding="raw",
          compress_header: bool = False, zstd_level: int = 3) -> bytes:
    """The bytes of a canonical ``.lidb`` file (see :func:`write`)."""
    head, chunks, total = _plan(kind, metadata, tensors, encoding, compress_header, zstd_level)
    parts = [head]
    for pad, data in chunks:
        if pad:
            parts.append(bytes(pad))
        parts.append(data)
    out = b"".join(parts)
    assert len(out) == total
    return out


def write(path, kind: str, metadata=None, tensors=(), encoding="raw",
          compress_header: bool = False, zstd_level: int = 3) -> None:
    """Write a canonical ``.lidb`` file (§6), atomically.

    ``tensors``: a dict name -> array, or an iterable of ``(name, array)`` or
    ``(name, array, dtype)``, in file order.  The dtype is taken from the
    numpy dtype; pass it explicitly for ``BF16`` / ``F8_*`` with an array of
    uint16 / uint8 bit patterns, and use ``(name, data, dtype, shape)`` for
    the packed types (``F4``, ``F6_*``: ``data`` holds the packed bytes).  ``encoding``: ``"raw"``, ``"zstd"`` or a
    dict name -> encoding (missing names are raw).  ``compress_header`` stores
    the header as one zstd frame (flag bit 0).

    The file is written to a temporary file in the destination folder,
    synced, renamed over ``path``, and the folder is synced.  On error the
    temporary file is removed and ``path`` is untouched.
    """
    head, chunks, total = _plan(kind, metadata, tensors, encoding, compress_header, zstd_level)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        if hasattr(os, "fchmod"):
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(head)
            for pad, data in chunks:
                if pad:
                    f.write(bytes(pad))
                f.write(data)
            f.flush()
            if f.tell() != total:
                raise OSError(f"wrote {f.tell()} bytes, expected {total}")
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    flags = getattr(os, "O_DIRECTORY", 0) | os.O_RDONLY
    try:
        dfd = os.open(folder, flags)
    except OSError:
        return  # e.g. Windows: folders cannot be opened
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
