"""JSON and JSONL files of records (training data, benchmark files), read with errors that name the file
and the line or entry of a bad record."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any


class RecordFileError(ValueError):
    """A data file that cannot be read; the message names the file, and the line where there is one."""


def read_records(path: str | os.PathLike, what: str = "data file") -> Iterator[tuple[str, Any]]:
    """(where, record) pairs: `line N` for JSONL, `entry N` for a JSON list; a JSON object is one record,
    `the top level`. JSONL is read a line at a time, so a large file is never held whole."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise RecordFileError(f"{what} {path} is a directory; give a JSON or JSONL file.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise RecordFileError(f"{path}, line {n}: not valid JSON ({err.msg}).") from None
                    yield f"line {n}", record
                return
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise RecordFileError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}).") from None
    except UnicodeDecodeError as err:
        raise RecordFileError(
            f"{path}: not UTF-8 text (byte {err.object[err.start : err.start + 1]!r} at offset {err.start}); "
            "JSON files must be UTF-8."
        ) from None
    if isinstance(data, list):
        for n, row in enumerate(data):
            yield f"entry {n}", row
    else:
        yield "the top level", data
