#!/usr/bin/env python3
"""Compresses CLIP's BPE vocabulary for embedding in the lidb binary.

    python converters/embed_vocabulary.py     # needs zstandard (converters/requirements.txt)

Reads samples/clip-tokenizer/vocab.json and merges.txt (written by
converters/fixtures/make_tokenizer_fixtures.py, which also runs this script) and writes
Sources/CEmbeddedVocabulary/clip-vocab.json.zst and clip-merges.txt.zst: one zstd frame each,
level 19, declaring its content size and carrying a checksum. The C target takes them in with
#embed; a base converted from a single-file checkpoint stores the decoded files as its tokenizer.
The output is deterministic for the pinned zstandard version, and a Swift test checks that the
frames decode to the sample files byte for byte, so the two cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "clip-tokenizer"
TARGET = ROOT / "Sources" / "CEmbeddedVocabulary"
FILES = {"vocab.json": "clip-vocab.json.zst", "merges.txt": "clip-merges.txt.zst"}


def main() -> None:
    compressor = zstandard.ZstdCompressor(level=19, write_content_size=True, write_checksum=True)
    for source, target in FILES.items():
        data = (SAMPLE / source).read_bytes()
        frame = compressor.compress(data)
        assert zstandard.ZstdDecompressor().decompress(frame) == data
        (TARGET / target).write_bytes(frame)
        print(f"{target}: {len(data):,} -> {len(frame):,} bytes")


if __name__ == "__main__":
    main()
