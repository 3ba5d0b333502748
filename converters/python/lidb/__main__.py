"""Command line: ``python -m lidb inspect FILE`` and ``python -m lidb verify FILE``."""

from __future__ import annotations

import argparse
import sys

from .container import LidbError, encode_json, read, verify


def _inspect(path: str) -> int:
    try:
        c = read(path, verify=False)
    except (LidbError, OSError) as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 1
    try:
        doc = {
            "major": c.major,
            "minor": c.minor,
            "flags": c.flags,
            "kind": c.kind,
            "metadata": c.metadata,
            "header_length": c.header_length,
            "stored_length": c.stored_length,
            "data_offset": c.data_offset,
            "data_length": c.data_length,
            "header_crc32c": "%08x" % c.header_crc32c,
            "tensors": [t.as_dict() for t in c.tensors],
        }
        print(encode_json(doc, indent=2, max_nesting=1 << 30))
    finally:
        c.close()
    return 0


def _verify(path: str) -> int:
    problems = verify(path)
    if not problems:
        c = read(path, verify=False)
        kind = c.kind
        c.close()
        if kind == "subject":
            # an intact container must also be a valid subject (spec/subject.md §4)
            from .subject import SubjectError, read_subject
            try:
                read_subject(path, verify=False)
            except SubjectError as e:
                print(f"{path}: invalidSubject: {e}")
                return 1
    if not problems:
        print(f"{path}: ok")
        return 0
    for p in problems:
        print(f"{path}: {p}")
    return 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lidb", description="Inspect and verify .lidb files.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="print the preamble fields, kind, metadata and tensor table as JSON")
    p.add_argument("file")
    p = sub.add_parser("verify", help="check the whole file (checksums, padding, zstd payloads); exit 1 on problems")
    p.add_argument("file")
    args = parser.parse_args(argv)
    if args.command == "inspect":
        return _inspect(args.file)
    return _verify(args.file)


if __name__ == "__main__":
    sys.exit(main())
