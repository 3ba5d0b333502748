"""Reader, verifier and canonical writer for ``.lidb`` files (container version 1.0)."""

from .basis import BasisError, layer_bases, orthonormal
from .container import (
    DTYPES,
    MAGIC,
    Container,
    IntegerText,
    LidbError,
    Problem,
    TensorEntry,
    dumps,
    encode_json,
    parse_json,
    read,
    verify,
    write,
)
from .crc32c import crc32c, crc32c_update

__version__ = "1.0.0"

__all__ = [
    "BasisError",
    "DTYPES",
    "MAGIC",
    "Container",
    "IntegerText",
    "LidbError",
    "Problem",
    "TensorEntry",
    "crc32c",
    "crc32c_update",
    "dumps",
    "encode_json",
    "layer_bases",
    "orthonormal",
    "parse_json",
    "read",
    "verify",
    "write",
]
