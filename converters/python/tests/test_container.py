"""Tests for the Python .lidb reader/writer (spec/format.md).

Run from the repository root:

    python -m unittest discover -s converters/python/tests -v
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import zstandard  # noqa: E402

import lidb  # noqa: E402
from lidb import IntegerText, LidbError, crc32c  # noqa: E402
from lidb.container import NegativeZero, align64, encode_json, parse_json  # noqa: E402

REPO = HERE.parent.parent.parent
EXAMPLES = REPO / "spec" / "examples"


# ---------------------------------------------------------------- crafting

def crc_hex(b: bytes) -> str:
    return "%08x" % crc32c(b)


def row(name="t", dtype="U8", shape=(4,), offset=0, length=4, encoding="raw", data=b"\x01\x02\x03\x04", **extra):
    r = {"name": name, "dtype": dtype, "shape": list(shape), "offset": offset, "length": length,
         "encoding": encoding, "crc32c": crc_hex(data)}
    r.update(extra)
    return r


def assemble(header=None, data=b"", *, major=1, minor=0, flags=0, stored_length=None,
             header_length=None, data_offset=None, data_length=None, reserved=bytes(12),
             crc=None, compress=False, stored=None, pad_byte=0, extra=b""):
    """Build a file byte by byte.  ``header`` is a dict (encoded canonically),
    str or bytes; ``stored`` overrides the stored header bytes.  Every preamble
    field can be overridden; the header CRC is recomputed unless ``crc`` is
    given, so that the check under test is the one that fires."""
    if isinstance(header, dict) or isinstance(header, list):
        header = encode_json(header, max_nesting=1 << 20)
    if isinstance(header, str):
        header = header.encode("utf-8")
    if stored is None:
        stored = zstandard.ZstdCompressor().compress(header) if compress else header
    if compress:
        flags |= 1
    sl = len(stored) if stored_length is None else stored_length
    hl = (len(header) if header is not None else len(stored)) if header_length is None else header_length
    real_offset = align64(64 + len(stored))
    do = real_offset if data_offset is None else data_offset
    dl = len(data) if data_length is None else data_length
    first48 = struct.pack("<8sHHIQQQQ", lidb.MAGIC, major, minor, flags, sl, hl, do, dl)
    if crc is None:
        crc = crc32c(first48 + stored)
    pre = first48 + struct.pack("<I", crc) + reserved
    assert len(pre) == 64
    return pre + stored + bytes([pad_byte]) * (real_offset - 64 - len(stored)) + data + extra


def good_header(**over):
    h = {"kind": "tensors", "metadata": {"a": 1},
         "tensors": [row("a", shape=(4,), offset=0, length=4, data=b"\x01\x02\x03\x04"),
                     row("b", shape=(2,), offset=64, length=2, data=b"\x05\x06")]}
    h.update(over)
    return h


GOOD_DATA = b"\x01\x02\x03\x04" + bytes(60) + b"\x05\x06"


def good_file(**kw):
    return assemble(good_header(), GOOD_DATA, **kw)


def with_rows(*rows, data=GOOD_DATA, **kw):
    h = good_header(tensors=list(rows))
    return assemble(h, data, **kw)


class Base(unittest.TestCase):
    def assertCode(self, blob, code):
        with self.assertRaises(LidbError) as cm:
            lidb.read(blob)
        self.assertEqual(cm.exception.code, code, str(cm.exception))
        return cm.exception


# ---------------------------------------------------------------- CRC

class TestCRC(Base):
    def test_vector(self):
        self.assertEqual(crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(crc32c(b""), 0)

    def _bitwise(self, data):
        c = 0xFFFFFFFF
        for b in data:
            c ^= b
            for _ in range(8):
                c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        return c ^ 0xFFFFFFFF

    def test_small_against_bitwise(self):
        rng = np.random.default_rng(1)
        for n in (1, 3, 7, 8, 9, 15, 16, 17, 100, 1000):
            d = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            self.assertEqual(crc32c(d), self._bitwise(d), n)

    def test_large_paths_agree(self):
        # the numpy path (large inputs) against incremental small updates
        rng = np.random.default_rng(2)
        for n in (1 << 15, (1 << 15) + 5, 100_003, 1 << 20):
            d = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            inc = 0
            for i in range(0, n, 4000):
                inc = lidb.crc32c_update(inc, d[i:i + 4000])
            self.assertEqual(crc32c(d), inc, n)

    def test_known_large(self):
        self.assertEqual(crc32c(bytes(1 << 16)), self._bitwise(bytes(1 << 16)))


# ---------------------------------------------------------------- round trips

class TestRoundTrip(Base):
    META = {
        "str": "plain", "esc": "q\"b\\s/\b\f\n\r\t\x00\x1f\x7f é ü \u2028 😀",
        "int": 12, "neg": -3, "zero": 0, "i64max": (1 << 63) - 1, "i64min": -(1 << 63),
        "big": IntegerText("18446744073709551616"),
        "half": 0.5, "small": 1e-05, "two": 2.0, "negzero": -0.0, "huge": 1e300, "tiny": 5e-324,
        "t": True, "f": False, "n": None, "empty_obj": {}, "empty_arr": [],
        "nested": {"a": [1, [2, [3.5, {"b": None}]]]},
    }

    def test_typed_metadata(self):
        blob = lidb.dumps("tensors", self.META, [])
        c = lidb.read(blob)
        self.assertEqual(c.metadata, self.META)
        for k, v in self.META.items():
            self.assertIs(type(c.metadata[k]), type(v), k)
        self.assertEqual(str(c.metadata["negzero"]), "-0.0")
        self.assertEqual(c.tensors, [])
        self.assertEqual(c.data_length, 0)
        self.assertEqual(len(blob), c.data_offset)
        self.assertEqual(lidb.dumps("tensors", c.metadata, []), blob)

    def test_float_format(self):
        # §6: shortest form reading back to the same binary64, always with '.' or an exponent
        import random
        for f in [2.0, -0.0, 0.0, 1e16, 1e-05, 0.1, 1 / 3, 5e-324, 1.7976931348623157e308, 123456789.0, 1e22, -2.5]:
            text = encode_json(f)
            self.assertTrue("." in text or "e" in text or "E" in text, text)
            self.assertEqual(float(text), f)
            self.assertIs(type(parse_json(text)), float)
            self.assertEqual(repr(float(text)), repr(f))  # -0.0 keeps its sign
        self.assertEqual(encode_json(2.0), "2.0")
        self.assertEqual(encode_json(np.float32(0.5)), "0.5")
        rng = random.Random(5)
        for _ in range(2000):
            f = struct.unpack("<d", rng.randbytes(8))[0]
            if f != f or f in (float("inf"), float("-inf")):
                continue
            text = encode_json(f)
            self.assertEqual(parse_json(text), f)
            # shortest: one digit fewer does not read back
            mant = text.split("e")[0].replace("-", "").replace(".", "").lstrip("0")
            if len(mant) > 1:
                self.assertNotEqual(float("%.*e" % (len(mant) - 2, f)), f, text)
        with self.assertRaises(ValueError):
            encode_json(float("nan"))

    def test_escaping_matches_json_module(self):
        s = "".join(chr(i) for i in range(0x100)) + "\u2028\ue000\U0001f600"
        self.assertEqual(encode_json(s), json.dumps(s, ensure_ascii=False))
        self.assertEqual(encode_json("\x00\x08\x0b\x1f"), '"\\u0000\\b\\u000b\\u001f"')

    def test_all_dtypes_raw_and_zstd(self):
        rng = np.random.default_rng(3)
        arrays = [
            ("bool", rng.integers(0, 2, (3, 5)).astype(bool)),
            ("u8", rng.integers(0, 256, (7,), dtype=np.uint8)),
            ("i8", rng.integers(-128, 128, (7,), dtype=np.int8)),
            ("u16", rng.integers(0, 1 << 16, (2, 2, 2), dtype=np.uint16)),
            ("i16", rng.integers(-(1 << 15), 1 << 15, (9,), dtype=np.int16)),
            ("u32", rng.integers(0, 1 << 32, (9,), dtype=np.uint32)),
            ("i32", rng.integers(-(1 << 31), 1 << 31, (9,), dtype=np.int32)),
            ("u64", rng.integers(0, 1 << 63, (3,), dtype=np.uint64)),
            ("i64", rng.integers(-(1 << 62), 1 << 62, (3,), dtype=np.int64)),
            ("f16", rng.standard_normal((4, 4)).astype(np.float16)),
            ("f32", rng.standard_normal((1000,)).astype(np.float32)),
            ("f64", rng.standard_normal((2, 3)).astype(np.float64)),
            ("big_endian", np.arange(5, dtype=">i4")),
            ("scalar", np.float32(7.5)),
            ("empty", np.zeros((3, 0), np.float32)),
        ]
        arrays.append(("c64", (rng.standard_normal(5) + 1j * rng.standard_normal(5)).astype(np.complex64)))
        extra = [("bf16", np.array([0x3F80, 0xC000], np.uint16), "BF16"),
                 ("e4m3", np.array([0x38, 0x7F], np.uint8), "F8_E4M3"),
                 ("e5m2", np.array([0x3C], np.uint8), "F8_E5M2"),
                 ("e4m3fnuz", np.array([0x80, 0x01], np.uint8), "F8_E4M3FNUZ"),
                 ("e5m2fnuz", np.array([0x40], np.uint8), "F8_E5M2FNUZ"),
                 ("e8m0", np.array([[127, 255]], np.uint8), "F8_E8M0")]
        packed = [("f4", bytes([0x21, 0x43, 0x05]), "F4", [2, 3]),
                  ("f6a", bytes(range(1, 7)), "F6_E2M3", [8]),
                  ("f6b", b"\xff\xee\xdd", "F6_E3M2", [1, 4]),
                  ("f4e", b"", "F4", [0, 5])]
        for enc in ("raw", "zstd"):
            for ch in (False, True):
                with self.subTest(encoding=enc, compress_header=ch):
                    blob = lidb.dumps("tensors", {"k": 1}, arrays + extra + packed, encoding=enc, compress_header=ch)
                    c = lidb.read(blob)
                    self.assertEqual(c.flags, 1 if ch else 0)
                    self.assertEqual(lidb.verify(blob), [])
                    for name, arr in arrays:
                        got = c.tensor(name)
                        self.assertEqual(got.shape, np.shape(arr), name)
                        np.testing.assert_array_equal(got, arr)
                        expected_enc = "raw" if (enc == "raw" or np.size(arr) == 0) else "zstd"
                        self.assertEqual(c.entry(name).encoding, expected_enc)
                    for name, bits, dt in extra:
                        self.assertEqual(c.entry(name).dtype, dt)
                        np.testing.assert_array_equal(c.tensor(name), bits)
                    for name, raw, dt, shape in packed:
                        t = c.entry(name)
                        self.assertEqual((t.dtype, list(t.shape), t.decoded_size), (dt, shape, len(raw)))
                        got = c.tensor(name)
                        self.assertEqual(got.dtype, np.uint8)
                        self.assertEqual(got.tobytes(), raw)
                    self.assertEqual(c.tensor("u16").dtype, np.dtype("<u2"))
                    self.assertEqual(c.tensor("bool").dtype, np.dtype(bool))

    def test_layout(self):
        blob = lidb.dumps("tensors", {}, [("a", np.zeros(3, np.uint8)), ("e", np.zeros(0, np.uint8)),
                                          ("b", np.zeros(65, np.uint8)), ("z", np.zeros(0, np.uint8))])
        c = lidb.read(blob)
        self.assertEqual([(t.offset, t.length) for t in c.tensors], [(0, 3), (64, 0), (64, 65), (192, 0)])
        self.assertEqual(c.data_length, 192)
        self.assertEqual(c.data_offset % 64, 0)
        self.assertEqual(len(blob), c.data_offset + c.data_length)

    def test_compressed_header(self):
        blob = lidb.dumps("subject", {"x": "y" * 1000}, [("w", np.ones(100, np.float32))], compress_header=True)
        c = lidb.read(blob)
        self.assertEqual(c.flags & 1, 1)
        self.assertLess(c.stored_length, c.header_length)
        self.assertEqual(c.kind, "subject")
        self.assertEqual(c.metadata["x"], "y" * 1000)
        self.assertEqual(blob[64:68], b"\x28\xb5\x2f\xfd")

    def test_write_atomic(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "x.lidb")
            lidb.write(p, "tensors", {"v": 1}, {"w": np.arange(4, dtype=np.float32)})
            self.assertEqual(lidb.read(p).metadata, {"v": 1})
            lidb.write(p, "tensors", {"v": 2}, {"w": np.arange(4, dtype=np.float32)})
            self.assertEqual(lidb.read(p).metadata, {"v": 2})
            before = Path(p).read_bytes()
            with self.assertRaises(ValueError):
                lidb.write(p, "tensors", {"v": float("nan")}, {})
            self.assertEqual(Path(p).read_bytes(), before)
            self.assertEqual(sorted(os.listdir(d)), ["x.lidb"])
            self.assertEqual(lidb.dumps("tensors", {"v": 2}, {"w": np.arange(4, dtype=np.float32)}), before)

    def test_writer_refuses(self):
        for kind, meta, tensors in [
            ("Tensors", {}, {}),                      # kind: lower-case
            ("", {}, {}),
            ("k" * 65, {}, {}),                       # kind: at most 64 characters
            ("a b", {}, {}),
            ("tensors", {"s": "\ud800"}, {}),         # lone surrogate: not valid Unicode
            ("tensors", {1: 2}, {}),                  # non-string key
            ("tensors", {"x": float("inf")}, {}),
            ("tensors", {"x": 1 << 63}, {}),          # does not fit in 64 bits
            ("tensors", {"x": object()}, {}),
            ("tensors", {}, {"": np.zeros(1)}),       # empty name
            ("tensors", {}, {"a\x00b": np.zeros(1)}),
            ("tensors", {}, {"n" * 1025: np.zeros(1)}),
            ("tensors", {}, [("a", np.zeros(1)), ("a", np.zeros(1))]),
            ("tensors", {}, {"c": np.zeros(1, np.complex128)}),
            ("tensors", {}, [("p", np.zeros(1, np.uint8), "F4")]),       # packed: needs a shape
            ("tensors", {}, [("p", b"\x00", "F4", [3])]),                # 12 bits
            ("tensors", {}, [("p", b"\x00\x00", "F6_E2M3", [4])]),      # needs 3 bytes
            ("tensors", {}, [("b", np.zeros(1, np.uint8), "BF16")]),
        ]:
            with self.subTest(kind=kind, meta=meta):
                with self.assertRaises(ValueError):
                    lidb.dumps(kind, meta, tensors)
        deep = 1
        for _ in range(62):
            deep = [deep]
        lidb.dumps("tensors", {"d": deep}, {})  # header depth 64: fine
        with self.assertRaises(ValueError):
            lidb.dumps("tensors", {"d": [deep]}, {})

    def test_example_file(self):
        lidb_path = EXAMPLES / "example.lidb"
        if not lidb_path.exists():
            self.skipTest("spec/examples/example.lidb not present")
        sys.path.insert(0, str(HERE.parent))
        import make_spec_example as ex
        data = lidb_path.read_bytes()
        self.assertEqual(ex.file_bytes(), data, "the writer no longer produces the worked example")
        c = lidb.read(lidb_path)
        expected = json.loads((EXAMPLES / "example.expected.json").read_text("utf-8"))
        self.assertEqual(ex.expected_parse(c), expected)
        self.assertEqual(lidb.verify(lidb_path), [])
        c.close()


# ---------------------------------------------------------------- JSON

class TestJSON(Base):
    def test_numbers(self):
        v = parse_json('[0,-0,12,-3,0.5,1e-05,1E5,2.0,-0.0,9223372036854775807,-9223372036854775808,'
                       '9223372036854775808,123456789012345678901234567890]')
        self.assertEqual([type(x) for x in v],
                         [int, NegativeZero, int, int, float, float, float, float, float, int, int, IntegerText, IntegerText])
        self.assertEqual(v[1], 0)  # -0 is the integer 0 in metadata
        self.assertEqual(v[11], "9223372036854775808")
        self.assertEqual(v[9], (1 << 63) - 1)

    def test_invalid(self):
        for t in ['', ' ', '{', '{"a":1,}', '[1,]', "{'a':1}", '{"a":NaN}', '{"a":Infinity}', '{"a":-Infinity}',
                  '{"a":1e400}', '{"a":01}', '{"a":.5}', '{"a":1.}', '{"a":+1}', '{"a":"\x01"}', '{"a":"\\x"}',
                  '{} x', '{}{}', '\ufeff{}', '{"a" 1}', '[tru]', '{"a":1 "b":2}', '"\\ud8"']:
            with self.subTest(text=t):
                with self.assertRaises(LidbError) as cm:
                    parse_json(t)
                self.assertEqual(cm.exception.code, "invalidJSON")

    def test_lone_surrogates(self):
        # §1.2: \u escapes must not encode lone surrogates, in keys and values, anywhere
        for t in ['"\\ud800"', '"\\udc00"', '"a\\ud83d"', '"\\ude00\\ud83d"', '"\\ud83d\\u0041"',
                  '"\\ud83d\\ud83d"', '"\\ud83dx\\ude00"', '{"\\udfff":1}', '[1,{"a":["\\ud800"]}]']:
            with self.subTest(text=t):
                with self.assertRaises(LidbError) as cm:
                    parse_json(t)
                self.assertEqual(cm.exception.code, "invalidJSON")
        self.assertEqual(parse_json('"\\ud83d\\ude00\\uD83D\\uDE00"'), "\U0001f600" * 2)
        self.assertEqual(parse_json('{"\\ue000":"\\uffff"}'), {"\ue000": "\uffff"})

    def test_float_range(self):
        # §1.2: a floating-point literal must be finite as a binary64
        for t in ["1e400", "-1e400", "1.8e308", "[0.5,{\"x\":-2E+309}]", "1" * 400 + ".0"]:
            with self.subTest(text=t[:40]):
                with self.assertRaises(LidbError) as cm:
                    parse_json(t)
                self.assertEqual(cm.exception.code, "invalidJSON")
        self.assertEqual(parse_json("[1.7976931348623157e308,1e-400,-5e-324]"), [1.7976931348623157e308, 0.0, -5e-324])
        self.assertEqual(parse_json("1" * 400), IntegerText("1" * 400))  # integers are kept as text

    def test_bom(self):
        with self.assertRaises(LidbError) as cm:
            parse_json("\ufeff{}")
        self.assertEqual(cm.exception.code, "invalidJSON")

    def test_depth(self):
        self.assertEqual(parse_json("[" * 64 + "]" * 64), eval("[" * 64 + "]" * 64))
        for t in ("[" * 65 + "]" * 65, '{"a":' * 65 + "1" + "}" * 65, "[" * 200000 + "]" * 200000):
            with self.assertRaises(LidbError) as cm:
                parse_json(t)
            self.assertEqual(cm.exception.code, "nestingTooDeep")
        # syntax is checked over the whole text first
        with self.assertRaises(LidbError) as cm:
            parse_json("[" * 100 + "]" * 99)
        self.assertEqual(cm.exception.code, "invalidJSON")

    def test_duplicates(self):
        for t in ['{"a":1,"a":2}', '{"x":[{"b":1,"c":2,"b":3}]}', '{"a":1,"\\u0061":2}']:
            with self.assertRaises(LidbError) as cm:
                parse_json(t)
            self.assertEqual(cm.exception.code, "duplicateKey")
        self.assertEqual(parse_json('[{"a":1},{"a":2}]'), [{"a": 1}, {"a": 2}])
        # order inside step 8: invalidJSON, then nestingTooDeep, then duplicateKey
        with self.assertRaises(LidbError) as cm:
            parse_json('{"a":1,"a":2,}')
        self.assertEqual(cm.exception.code, "invalidJSON")
        with self.assertRaises(LidbError) as cm:
            parse_json('{"a":1,"a":2,"d":' + "[" * 70 + "]" * 70 + "}")
        self.assertEqual(cm.exception.code, "nestingTooDeep")


# ---------------------------------------------------------------- §5, step by step

class TestValidation(Base):
    def test_good(self):
        c = lidb.read(good_file())
        self.assertEqual([t.name for t in c.tensors], ["a", "b"])
        self.assertEqual(c.tensor("a").tolist(), [1, 2, 3, 4])
        self.assertEqual(lidb.verify(good_file()), [])

    # 1
    def test_step1_magic(self):
        for blob in [b"", b"\x89LID", b"\x89LIDB\r\n", b"\x89LIDB\n\x1a" + bytes(100),
                     b"PK\x03\x04" + bytes(100), b"\x89LIDB\r\n\x1b" + bytes(100)]:
            self.assertCode(blob, "badMagic")
        self.assertCode(b"\x89LIDB\r\n\x1a", "truncated")
        self.assertCode(good_file()[:63], "truncated")

    # 2
    def test_step2_version(self):
        self.assertCode(good_file(major=2), "unsupportedVersion")
        self.assertCode(good_file(major=0), "unsupportedVersion")
        # checked before the header CRC
        self.assertCode(good_file(major=2, crc=0), "unsupportedVersion")

    # 3
    def test_step3_sizes(self):
        self.assertCode(good_file(stored_length=100_000_001), "headerTooLarge")
        self.assertCode(good_file(header_length=100_000_001, compress=True), "headerTooLarge")
        self.assertCode(good_file(stored_length=1 << 63), "headerTooLarge")
        blob = good_file()
        self.assertCode(good_file(stored_length=len(blob) - 63), "headerPastEnd")
        self.assertCode(good_file(stored_length=len(blob) - 63, crc=0), "headerPastEnd")

    # 4
    def test_step4_header_crc(self):
        blob = bytearray(good_file())
        blob[70] ^= 0x01  # inside the header text
        self.assertCode(bytes(blob), "headerChecksumMismatch")
        self.assertCode(good_file(crc=0x12345678), "headerChecksumMismatch")
        for off in (10, 12, 26, 34, 44, 48, 51):  # minor, flags, lengths, offsets, the CRC itself
            blob = bytearray(good_file())
            blob[off] ^= 0x04
            self.assertCode(bytes(blob), "headerChecksumMismatch")
        # also checked before anything in the header is looked at
        self.assertCode(assemble(b"\xff\xfe", b"", crc=1), "headerChecksumMismatch")

    def test_every_bit_of_preamble_and_header(self):
        blob = good_file()
        end = 64 + struct.unpack_from("<Q", blob, 16)[0]
        for i in range(end):
            for bit in range(8):
                b = bytearray(blob)
                b[i] ^= 1 << bit
                with self.assertRaises(LidbError, msg=(i, bit)):
                    lidb.read(bytes(b))

    # 5
    def test_step5_reserved_flags(self):
        self.assertCode(good_file(reserved=b"\x00" * 11 + b"\x01"), "nonZeroReserved")
        # later minors: reserved bytes are ignored
        lidb.read(good_file(minor=1, reserved=b"\xff" * 12))
        self.assertCode(good_file(flags=0x2), "unknownRequiredFlags")
        self.assertCode(good_file(flags=0x8000), "unknownRequiredFlags")
        self.assertCode(good_file(minor=3, flags=0x2), "unknownRequiredFlags")
        # optional flags are ignored
        self.assertEqual(lidb.read(good_file(flags=0x10000 | 0x80000000)).flags, 0x80010000)
        # reserved is checked before flags
        self.assertCode(good_file(flags=0x2, reserved=b"\x01" + bytes(11)), "nonZeroReserved")
        self.assertCode(good_file(header_length=5), "sizeMismatch")
        self.assertCode(good_file(header_length=5, flags=2), "unknownRequiredFlags")

    # 6
    def test_step6_data_section(self):
        blob = good_file()
        do = struct.unpack_from("<Q", blob, 32)[0]
        self.assertCode(good_file(data_offset=do + 1), "misalignedDataSection")
        self.assertCode(good_file(data_offset=do + 64), "hole")
        self.assertCode(good_file(data_offset=do - 64), "overlap")  # smaller: overlap, greater: hole
        self.assertCode(good_file(data_offset=0), "overlap")
        self.assertCode(good_file(data_length=len(GOOD_DATA) + 1), "truncated")
        self.assertCode(good_file(data_length=(1 << 63)), "truncated")
        # data_offset + data_length overflowing 64 bits
        self.assertCode(good_file(data_length=(1 << 64) - 1), "dataSectionMismatch")
        self.assertCode(good_file(data_length=(1 << 64) - do), "dataSectionMismatch")
        self.assertCode(good_file(data_length=(1 << 64) - do - 1), "truncated")
        self.assertCode(good_file(extra=b"\x00"), "dataSectionMismatch")
        self.assertCode(good_file(data_length=len(GOOD_DATA) - 1), "dataSectionMismatch")

    # 7
    def test_step7_compressed_header(self):
        h = encode_json(good_header()).encode()
        z = zstandard.ZstdCompressor()
        good = z.compress(h)
        lidb.read(assemble(h, GOOD_DATA, compress=True, stored=good))
        co = z.compressobj()
        unknown_size = co.compress(h) + co.flush()
        skippable = b"\x50\x2a\x4d\x18" + struct.pack("<I", 4) + b"abcd"
        corrupt = bytearray(good)
        corrupt[-3] ^= 0xFF
        cases = {
            "plain text": h,
            "no content size": unknown_size,
            "trailing byte": good + b"\x00",
            "two frames": good + good,
            "skippable frame first": skippable + good,
            "truncated frame": good[:-2],
            "corrupt frame": bytes(corrupt),
        }
        d = zstandard.ZstdCompressionDict(b"kind tensors metadata name dtype shape offset length" * 20,
                                          dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        cases["dictionary (id in frame)"] = zstandard.ZstdCompressor(
            dict_data=zstandard.train_dictionary(1024, [h, h[::-1], h.upper(), h.lower()] * 10),
            write_dict_id=True).compress(h)
        cases["dictionary (no id)"] = zstandard.ZstdCompressor(dict_data=d, write_dict_id=False).compress(h)
        cases["skippable frame only"] = b"\x50\x2a\x4d\x18" + struct.pack("<I", len(h)) + h
        for what, stored in cases.items():
            with self.subTest(what):
                self.assertCode(assemble(h, GOOD_DATA, compress=True, stored=stored), "decompressionFailed")
        # declared size differs from header_length
        self.assertCode(assemble(h, GOOD_DATA, compress=True, stored=good, header_length=len(h) + 1),
                        "decompressionFailed")
        self.assertCode(assemble(h, GOOD_DATA, compress=True, stored=good, header_length=len(h) - 1),
                        "decompressionFailed")

    # 8
    def test_step8_text(self):
        self.assertCode(assemble(b'{"kind":"\xff","tensors":[]}'), "headerNotUTF8")
        self.assertCode(assemble(b'{"kind":"\xc0\xaf","tensors":[]}'), "headerNotUTF8")  # overlong
        self.assertCode(assemble(b'{"kind":"\xed\xa0\x80","tensors":[]}'), "headerNotUTF8")  # surrogate
        self.assertCode(assemble(b'{"kind":"t","tensors":[]'), "invalidJSON")
        self.assertCode(assemble(b'{"kind":"t","tensors":[],"m":NaN}'), "invalidJSON")
        self.assertCode(assemble(b''), "invalidJSON")
        self.assertCode(assemble(b'{"kind":"t","tensors":[]}\x00'), "invalidJSON")
        self.assertCode(assemble(b'\xef\xbb\xbf{"kind":"t","tensors":[]}'), "invalidJSON")  # no BOM
        # §1.2 restrictions apply everywhere, metadata included
        self.assertCode(assemble(b'{"kind":"t","tensors":[],"metadata":{"s":"\\ud800"}}'), "invalidJSON")
        self.assertCode(assemble(b'{"kind":"t","tensors":[],"metadata":{"\\udc00":1}}'), "invalidJSON")
        self.assertCode(assemble(b'{"kind":"t","tensors":[],"x":["\\ud83d"]}'), "invalidJSON")
        self.assertCode(assemble(b'{"kind":"t","tensors":[],"metadata":{"f":1e400}}'), "invalidJSON")
        self.assertCode(assemble(b'{"kind":"t","tensors":[],"metadata":{"f":-1.5e999}}'), "invalidJSON")
        c = lidb.read(assemble(b'{"kind":"t","tensors":[],"metadata":{"s":"\\ud83d\\ude00","f":1e308}}'))
        self.assertEqual(c.metadata, {"s": "\U0001f600", "f": 1e308})
        self.assertCode(assemble('{"kind":"t","tensors":[],"metadata":' + "[" * 64 + "]" * 64 + "}"),
                        "nestingTooDeep")
        lidb.read(assemble('{"kind":"t","tensors":[],"metadata":{"d":' + "[" * 62 + "]" * 62 + "}}"))
        self.assertCode(assemble('{"kind":"t","tensors":[],"metadata":{"d":' + "[" * 63 + "]" * 63 + "}}"),
                        "nestingTooDeep")
        self.assertCode(assemble(b'{"kind":"t","tensors":[],"kind":"u"}'), "duplicateKey")
        self.assertCode(assemble(b'{"kind":"t","tensors":[],"metadata":{"x":{"a":1,"a":1}}}'), "duplicateKey")
        self.assertCode(assemble(b'[]'), "headerNotObject")
        self.assertCode(assemble(b' "x" '), "headerNotObject")
        self.assertCode(assemble(b'null'), "headerNotObject")

    # 9
    def test_step9_top_level(self):
        self.assertCode(assemble({"tensors": []}), "missingField")
        self.assertCode(assemble({"kind": 1, "tensors": []}), "wrongType")
        self.assertCode(assemble({"kind": None, "tensors": []}), "wrongType")
        self.assertCode(assemble({"kind": "t", "metadata": [], "tensors": []}), "wrongType")
        self.assertCode(assemble({"kind": "t", "metadata": None, "tensors": []}), "wrongType")
        self.assertCode(assemble({"kind": "t", "metadata": {}}), "missingField")
        self.assertCode(assemble({"kind": "t", "tensors": {}}), "wrongType")
        # kind is checked before metadata and tensors
        self.assertCode(assemble({"metadata": 1}), "missingField")
        # a kind is 1-64 characters of a-z, 0-9 and '-'
        for kind in ["", "Tensors", "anything goes", "a_b", "a.b", "é", "k" * 65, "tensors\n", "\u0131"]:
            with self.subTest(kind=kind):
                self.assertCode(assemble({"kind": kind, "tensors": []}), "wrongType")
        self.assertCode(assemble({"kind": IntegerText("123456789012345678901234567890"), "tensors": []}), "wrongType")
        for kind in ["k" * 64, "-", "0", "a-9-z", "my-kind-2"]:
            self.assertEqual(lidb.read(assemble({"kind": kind, "tensors": []})).kind, kind)
        # kind is checked before metadata and tensors
        self.assertCode(assemble({"kind": "Bad", "metadata": 1}), "wrongType")
        c = lidb.read(assemble({"kind": "anything-goes", "tensors": [], "later": {"x": 1}}))
        self.assertEqual((c.kind, c.metadata), ("anything-goes", {}))

    # 10
    def test_step10_row_fields(self):
        ok = dict(row())
        data4 = b"\x01\x02\x03\x04"

        def without(k):
            r = dict(ok)
            del r[k]
            return r

        def w(**kw):
            r = dict(ok)
            r.update(kw)
            return r

        cases = [
            ([1], "wrongType"),
            ([[ok]], "wrongType"),
            ([without("name")], "missingField"),
            ([w(name=5)], "wrongType"),
            ([w(name="")], "invalidName"),
            ([w(name="a\u0000b")], "invalidName"),
            ([w(name="é" * 513)], "invalidName"),  # 1026 bytes
            ([without("dtype")], "missingField"),
            ([w(dtype="f32")], "unknownDType"),
            ([w(dtype="FLOAT")], "unknownDType"),
            ([w(dtype=None)], "wrongType"),  # dtype: present, a string, known
            ([w(dtype=8)], "wrongType"),
            ([w(dtype=["U8"])], "wrongType"),
            ([w(dtype=IntegerText("18446744073709551616"))], "wrongType"),
            ([without("shape")], "missingField"),
            ([w(shape=4)], "wrongType"),  # shape: present, an array, valid dimensions
            ([w(shape=None)], "wrongType"),
            ([w(shape="[4]")], "wrongType"),
            ([w(shape={"0": 4})], "wrongType"),
            ([w(shape=[-4])], "invalidShape"),
            ([w(shape=[4.0])], "invalidShape"),
            ([w(shape=[True])], "invalidShape"),
            ([w(shape=["4"])], "invalidShape"),
            ([w(shape=[1] * 33)], "invalidShape"),
            ([w(shape=[IntegerText("9223372036854775808")])], "invalidShape"),
            ([w(shape=[1 << 62, 4, 0])], "sizeOverflow"),  # intermediate product above 2^64 - 1
            ([w(shape=[(1 << 63) - 1, 3, 0])], "sizeOverflow"),
            ([w(dtype="F64", shape=[1 << 61, 4])], "sizeOverflow"),  # elements fit, bits do not
            ([w(shape=[1 << 62, 3])], "sizeOverflow"),  # U8: 3 * 2^62 elements, 3 * 2^65 bits
            ([w(dtype="F4", shape=[3], length=1)], "invalidShape"),  # 12 bits
            ([w(dtype="F6_E3M2", shape=[2, 1], length=1)], "invalidShape"),
            ([w(dtype="F4", shape=[1 << 62, 3], length=0)], "sizeOverflow"),  # checked before whole bytes
            ([w(dtype="F4", shape=[4], length=4)], "sizeMismatch"),  # 2 bytes
            ([without("offset")], "missingField"),
            ([w(offset=-64)], "wrongType"),
            ([w(offset=0.0)], "wrongType"),
            ([w(offset="0")], "wrongType"),
            ([without("length")], "missingField"),
            ([w(length=-1)], "wrongType"),
            ([w(length=IntegerText("18446744073709551616"))], "wrongType"),  # 2^64
            ([w(offset=IntegerText("18446744073709551616"))], "wrongType"),
            ([w(offset=IntegerText("100000000000000000000000000000"))], "wrongType"),
            ([w(length=IntegerText("-9223372036854775809"))], "wrongType"),
            # below 2^64 passes the type check and fails a later one
            ([w(length=IntegerText("18446744073709551615"))], "sizeMismatch"),
            ([w(offset=IntegerText("9223372036854775808"))], "hole"),  # 2^63, a multiple of 64
            ([w(offset=IntegerText("18446744073709551615"))], "misalignedTensor"),
            ([w(encoding="gzip")], "unknownEncoding"),
            ([w(encoding="RAW")], "unknownEncoding"),
            ([w(encoding=None)], "wrongType"),  # encoding: a string, then known
            ([w(encoding=0)], "wrongType"),
            ([w(encoding=["raw"])], "wrongType"),
            ([w(length=5)], "sizeMismatch"),
            ([w(shape=[0], length=0, encoding="zstd", crc32c=crc_hex(b""))], "wrongType"),
            ([w(shape=[(1 << 30) + 1], encoding="zstd")], "limitExceeded"),
            ([w(dtype="F32", shape=[1 << 28, 2], encoding="zstd", crc32c="x")], "limitExceeded"),
            ([w(dtype="F32", shape=[0, 1 << 40], encoding="zstd")], "wrongType"),
            ([without("crc32c")], "missingField"),
            ([w(crc32c=ok["crc32c"].upper() if ok["crc32c"].upper() != ok["crc32c"] else "ABCDEF01")], "wrongType"),
            ([w(crc32c="1234567")], "wrongType"),
            ([w(crc32c="123456789")], "wrongType"),
            ([w(crc32c=0x1234)], "wrongType"),
        ]
        lidb.read(with_rows(ok, data=data4))
        # intermediate products up to 2^64 - 1 are fine (a later 0 makes the tensor empty)
        lidb.read(with_rows(w(shape=[(1 << 63) - 1, 2, 0], length=0, crc32c=crc_hex(b"")), data=b""))
        lidb.read(with_rows(w(shape=[0, 1 << 62, 4], length=0, crc32c=crc_hex(b"")), data=b""))  # §2 example
        lidb.read(with_rows(w(dtype="F4", shape=[8], length=4), data=data4))
        lidb.read(with_rows(w(dtype="F6_E2M3", shape=[4], length=3, crc32c=crc_hex(data4[:3])), data=data4[:3]))
        lidb.read(with_rows(w(dtype="C64", shape=[0], length=0, crc32c=crc_hex(b"")), data=b""))
        # a zstd tensor of exactly 2^30 bytes passes the table checks
        big = w(shape=[1 << 30], encoding="zstd")
        self.assertEqual(lidb.read(with_rows(big, data=data4), verify=False).entry("t").decoded_size, 1 << 30)
        for rows, code in cases:
            with self.subTest(rows=str(rows)[:120], code=code):
                self.assertCode(with_rows(*rows, data=data4), code)

    def test_step10_negative_zero(self):
        # shape, offset and length are written without a sign: -0 is refused in all three, as the
        # Swift reader refuses it (Tests/TensorFileTests/NegativeZeroTests.swift)
        empty = row("a", dtype="F32", shape=(0, 4), offset=0, length=0, data=b"")
        text = encode_json(good_header(tensors=[empty], metadata={"z": 0}))
        c = lidb.read(assemble(text, b""))
        self.assertEqual(c.tensors[0].shape, (0, 4))
        c = lidb.read(assemble(text.replace('"z":0', '"z":-0'), b""))
        self.assertEqual(c.metadata["z"], 0)
        self.assertCode(assemble(text.replace('"shape":[0,4]', '"shape":[-0,4]'), b""), "invalidShape")
        self.assertCode(assemble(text.replace('"length":0', '"length":-0'), b""), "wrongType")
        four = encode_json(good_header(tensors=[row("a")]))
        self.assertCode(assemble(four.replace('"offset":0', '"offset":-0'), b"\x01\x02\x03\x04"), "wrongType")

    def test_step10_row_categories(self):
        # a row that is not an object: wrongType; a row without crc32c: missingField
        self.assertCode(assemble(good_header(tensors=[7]), b""), "wrongType")
        r = row("a")
        del r["crc32c"]
        self.assertCode(assemble(good_header(tensors=[r]), b"\x01\x02\x03\x04"), "missingField")

    def test_step10_row_check_order(self):
        # within a row: the fields in order name, dtype, shape, offset/length, encoding, crc32c
        self.assertCode(with_rows({"dtype": "nope", "shape": "x"}, data=b""), "missingField")
        self.assertCode(with_rows({"name": "a", "dtype": "nope", "shape": "x"}, data=b""), "unknownDType")
        self.assertCode(with_rows({"name": "a", "dtype": 1, "shape": [-1]}, data=b""), "wrongType")
        self.assertCode(with_rows({"name": "a", "dtype": "U8", "shape": "x", "offset": -1}, data=b""), "wrongType")
        self.assertCode(with_rows(row(shape=[-1], encoding=None), data=b""), "invalidShape")
        self.assertCode(with_rows(row(shape=[1] * 40, length=-1), data=b""), "invalidShape")
        self.assertCode(with_rows(row(length=5, encoding="lz4"), data=b""), "unknownEncoding")
        self.assertCode(with_rows(row(length=5, crc32c="x"), data=b""), "sizeMismatch")
        # per-row checks come before duplicate / placement checks of that row
        a = row("a")
        self.assertCode(with_rows(a, row("a", offset=64, dtype="Q")), "unknownDType")
        self.assertCode(with_rows(a, row("a", offset=64)), "duplicateTensor")
        # rows are checked in order
        self.assertCode(with_rows(row("a", offset=1), row("b", dtype="Q")), "misalignedTensor")

    def test_step10_placement(self):
        d4 = b"\x01\x02\x03\x04"
        a = row("a", data=d4)
        b64 = d4 + bytes(60) + d4
        self.assertCode(with_rows(a, row("a", offset=64), data=b64), "duplicateTensor")
        self.assertCode(with_rows(row("a", offset=32), data=bytes(32) + d4), "misalignedTensor")
        self.assertCode(with_rows(row("a", offset=64), data=bytes(64) + d4), "hole")
        self.assertCode(with_rows(a, row("b", offset=128), data=b64 + bytes(64)), "hole")
        self.assertCode(with_rows(a, row("b", offset=0), data=b64), "overlap")
        big = row("a", shape=[80], length=80, data=bytes(80))
        self.assertCode(with_rows(big, row("b", offset=64), data=bytes(80 + 48) + d4), "overlap")
        self.assertCode(with_rows(a, row("b", offset=64), data=d4 + bytes(60) + d4[:3]), "outOfRange")
        self.assertCode(with_rows(row("a", length=4), data=d4[:3]), "outOfRange")
        # a zstd row's length is not tied to its decoded size: offset + length past the data section
        z = row("z", shape=[4], encoding="zstd", length=IntegerText(str((1 << 64) - 1)), data=d4)
        self.assertCode(with_rows(z, data=d4), "outOfRange")
        self.assertCode(with_rows(a, row("z", offset=64, shape=[4], encoding="zstd",
                                          length=IntegerText(str((1 << 64) - 64))), data=b64),
                        "outOfRange")
        # zero-length tensors share the next offset and may end the table
        e = row("e", dtype="F32", shape=[0], offset=64, length=0, data=b"")
        c = lidb.read(with_rows(a, e, row("b", offset=64), data=b64))
        self.assertEqual([t.offset for t in c.tensors], [0, 64, 64])
        c = lidb.read(with_rows(a, e, data=d4 + bytes(60)))
        self.assertEqual(c.data_length, 64)
        self.assertEqual(c.tensor("e").shape, (0,))

    # 11
    def test_step11_coverage(self):
        d4 = b"\x01\x02\x03\x04"
        self.assertCode(with_rows(row("a"), data=d4 + b"\x00"), "bufferNotCovered")
        self.assertCode(with_rows(data=bytes(64)), "bufferNotCovered")
        lidb.read(with_rows(data=b""))

    def test_unknown_fields_ignored(self):
        h = good_header(extra_field=[1, 2], metadata={"z": 1})
        h["tensors"][0]["note"] = "ignored"
        c = lidb.read(assemble(h, GOOD_DATA))
        self.assertEqual(c.metadata, {"z": 1})
        h = good_header()
        del h["tensors"][0]["encoding"]
        self.assertEqual(lidb.read(assemble(h, GOOD_DATA)).entry("a").encoding, "raw")


# ---------------------------------------------------------------- tensor access and verify

class TestTensorsAndVerify(Base):
    def test_tensor_checksum(self):
        blob = bytearray(good_file())
        blob[-1] ^= 0x10  # inside tensor b
        blob = bytes(blob)
        self.assertCode(blob, "tensorChecksumMismatch")
        c = lidb.read(blob, verify=False)
        self.assertEqual(c.tensor("a").tolist(), [1, 2, 3, 4])
        self.assertEqual(c.tensor("b").tolist(), [5, 6 ^ 0x10])
        self.assertEqual([p.code for p in lidb.verify(blob)], ["tensorChecksumMismatch"])

    def test_zstd_tensor_checked_before_decoding(self):
        blob = lidb.dumps("tensors", {}, {"w": np.arange(100, dtype=np.float32)}, encoding="zstd")
        c = lidb.read(blob)
        flipped = bytearray(blob)
        flipped[c.data_offset + 10] ^= 1
        c2 = lidb.read(bytes(flipped), verify=False)
        with self.assertRaises(LidbError) as cm:
            c2.tensor("w")
        self.assertEqual(cm.exception.code, "tensorChecksumMismatch")

    def test_zstd_tensor_wrong_size(self):
        payload = np.arange(8, dtype=np.uint8).tobytes()
        frame = zstandard.ZstdCompressor().compress(payload + b"\x00")  # declares 9 bytes
        r = row("w", shape=[8], length=len(frame), encoding="zstd", data=frame)
        blob = with_rows(r, data=frame)
        c = lidb.read(blob)  # the table is consistent; the payload is not
        with self.assertRaises(LidbError) as cm:
            c.tensor("w")
        self.assertEqual(cm.exception.code, "decompressionFailed")
        self.assertEqual([p.code for p in lidb.verify(blob)], ["decompressionFailed"])

    def test_zstd_tensor_frame_rules(self):
        # §3: exactly one zstd frame, not a skippable frame, no dictionary, nothing after it
        payload = bytes(range(64)) * 4
        d = zstandard.ZstdCompressionDict(bytes(range(64)) * 8, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        good = zstandard.ZstdCompressor().compress(payload)
        frames = {
            "dictionary, id written": zstandard.ZstdCompressor(
                dict_data=zstandard.train_dictionary(1024, [payload, payload[::-1], bytes(range(256))] * 20),
                write_dict_id=True).compress(payload),
            "dictionary, no id": zstandard.ZstdCompressor(dict_data=d, write_dict_id=False).compress(payload),
            "skippable frame": b"\x50\x2a\x4d\x18" + struct.pack("<I", len(payload)) + payload,
            "skippable then frame": b"\x5f\x2a\x4d\x18" + struct.pack("<I", 0) + good,
            "trailing bytes": good + b"\x00",
        }
        for what, frame in frames.items():
            with self.subTest(what):
                r = row("w", shape=[len(payload)], length=len(frame), encoding="zstd", data=frame)
                blob = with_rows(r, data=frame)
                c = lidb.read(blob)  # the table is consistent; the payload is not
                with self.assertRaises(LidbError) as cm:
                    c.tensor("w")
                self.assertEqual(cm.exception.code, "decompressionFailed")
                self.assertEqual([p.code for p in lidb.verify(blob)], ["decompressionFailed"])

    def test_verify_reports_every_damaged_part(self):
        # §5: verify reports tensorChecksumMismatch, nonZeroPadding and decompressionFailed, all of them
        payload = bytes(range(16))
        bad_frame = zstandard.ZstdCompressor().compress(payload + b"!")  # declares 17 bytes, row says 16
        d4 = b"\x01\x02\x03\x04"
        rows = [row("a", data=d4), row("b", offset=64, data=d4),
                row("z", offset=128, shape=[16], length=len(bad_frame), encoding="zstd", data=bad_frame)]
        data = bytearray(d4 + bytes(60) + d4 + bytes(60) + bad_frame)
        data[0] ^= 0xFF  # tensor a damaged
        data[70] = 1  # padding after b
        blob = assemble(good_header(tensors=rows), bytes(data), pad_byte=2)
        codes = [p.code for p in lidb.verify(blob)]
        self.assertEqual(sorted(codes), sorted(["nonZeroPadding", "tensorChecksumMismatch", "nonZeroPadding",
                                                "decompressionFailed"]))

    def test_raw_tensors_are_unchecked_views(self):
        # §5: raw tensors are handed out without a check, zstd ones are checked before each decoding
        blob = lidb.dumps("tensors", {}, [("r", np.arange(4, dtype=np.uint8)), ("z", np.arange(64, dtype=np.uint8))],
                          encoding={"z": "zstd"})
        c = lidb.read(blob)
        buf = bytearray(blob)
        buf[c.data_offset] ^= 0x80
        c2 = lidb.read(buf, verify=False)
        self.assertEqual(c2.tensor("r").tolist(), [0x80, 1, 2, 3])
        buf[c.data_offset + c.entry("z").offset + 5] ^= 1
        with self.assertRaises(LidbError) as cm:
            c2.tensor("z")
        self.assertEqual(cm.exception.code, "tensorChecksumMismatch")

    def test_element_values_not_validated(self):
        blob = lidb.dumps("tensors", {}, [("b", np.array([0, 1, 2, 255], np.uint8), "BOOL")])
        self.assertEqual(lidb.verify(blob), [])
        self.assertEqual(lidb.read(blob).tensor("b").view(np.uint8).tolist(), [0, 1, 2, 255])

    def test_nonzero_padding(self):
        self.assertEqual([p.code for p in lidb.verify(good_file(pad_byte=1))], ["nonZeroPadding"])
        lidb.read(good_file(pad_byte=1))  # padding is verify's business
        data = bytearray(GOOD_DATA)
        data[10] = 7
        blob = assemble(good_header(), bytes(data))
        self.assertEqual([p.code for p in lidb.verify(blob)], ["nonZeroPadding"])

    def test_mutations_only_raise_lidb_errors(self):
        import random
        blob = lidb.dumps("tensors", {"a": [1, 2.5, {"b": None}], "s": "x\u00e9"},
                          [("w", np.arange(10, dtype=np.float32)), ("e", np.zeros(0)),
                           ("z", np.arange(100, dtype=np.int16))], encoding={"z": "zstd"})
        c = lidb.read(blob)
        header = blob[64:64 + c.stored_length]
        data = blob[c.data_offset:]
        alphabet = b'{}[]":,0123456789-+.eE \\ntrufalsn\x00\xff\xc3'
        rng = random.Random(7)
        for _ in range(1500):
            h = bytearray(header)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(h))
                op = rng.random()
                if op < 0.5:
                    h[i] = rng.choice(alphabet)
                elif op < 0.75:
                    h[i:i] = bytes([rng.choice(alphabet)])
                else:
                    del h[i:i + rng.randint(1, 5)]
            f = assemble(bytes(h), data, compress=rng.random() < 0.3)
            try:
                c = lidb.read(f)
                for t in c.tensors:
                    c.tensor(t.name)
            except LidbError:
                pass
            lidb.verify(f)

    def test_verify_reports_open_failure(self):
        self.assertEqual([p.code for p in lidb.verify(b"nope")], ["badMagic"])

    def test_path_and_cli(self):
        import subprocess
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "f.lidb")
            lidb.write(p, "tensors", {"a": [1, 2.5]}, {"w": np.ones(3, np.float16)})
            c = lidb.read(p)
            self.assertEqual(c.tensor("w").tolist(), [1.0, 1.0, 1.0])
            c.close()
            env = dict(os.environ, PYTHONPATH=str(HERE.parent))
            out = subprocess.run([sys.executable, "-m", "lidb", "inspect", p], env=env,
                                 capture_output=True, text=True, check=True).stdout
            doc = json.loads(out)
            self.assertEqual(doc["metadata"], {"a": [1, 2.5]})
            self.assertEqual(doc["tensors"][0]["dtype"], "F16")
            r = subprocess.run([sys.executable, "-m", "lidb", "verify", p], env=env, capture_output=True)
            self.assertEqual(r.returncode, 0)
            with open(p, "r+b") as f:
                f.seek(-1, 2)
                f.write(b"\x55")
            r = subprocess.run([sys.executable, "-m", "lidb", "verify", p], env=env,
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 1)
            self.assertIn("tensorChecksumMismatch", r.stdout)


if __name__ == "__main__":
    unittest.main()
