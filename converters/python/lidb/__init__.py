"""Reader, verifier and canonical writer for ``.lidb`` files (container version 1.0) and their kinds:
``base`` (:mod:`lidb.base`), ``subject`` (:mod:`lidb.subject`), ``hypernetwork`` (:mod:`lidb.hypernetwork`)."""

from .base import Base, BaseError, read_base, write_base
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
from .safetensors_io import SafetensorsError, read_safetensors, write_safetensors
from .subject import LiDBTerm, LoRATerm, Subject, SubjectError, SubjectLayer, read_subject, write_subject

__version__ = "1.0.0"

__all__ = [
    "Base",
    "BaseError",
    "LiDBTerm",
    "LoRATerm",
    "SafetensorsError",
    "Subject",
    "SubjectError",
    "SubjectLayer",
    "read_base",
    "read_safetensors",
    "read_subject",
    "write_base",
    "write_safetensors",
    "write_subject",
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
