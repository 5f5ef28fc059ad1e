"""Reading input rows (JSONL, JSON, CSV, Parquet) with errors that name the file, the row and the field; file hashes."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cst_dist.errors import UserError
from cst_dist.io.atomic import file_in_the_way

log = logging.getLogger(__name__)

class RecordError(UserError, ValueError):
    """A bad input row. The message always names the file, the row (1-based line for JSONL) and the field."""

    def __init__(self, path: str | os.PathLike, row: int | None, field: str | None, message: str):
        self.path, self.row, self.field = str(path), row, field
        where = self.path + (f", row {row}" if row is not None else "") + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")



def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: str | os.PathLike, blocks: int = 64, block_size: int = 1 << 20) -> str:
    """sha256 of the size and of `blocks` evenly spaced 1 MiB blocks (the whole file when it is smaller).

    For multi-GB weight files: a full hash reads 15-20 GB per 7B model on every start; any fine-tune changes every
    block, so sampled blocks tell checkpoints apart at a 64 MiB read.
    """
    size = os.path.getsize(path)
    if size <= blocks * block_size:
        return file_sha256(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        for index in range(blocks):
            handle.seek(index * (size - block_size) // (blocks - 1))
            digest.update(handle.read(block_size))
    return digest.hexdigest()


def read_rows(
    path: str | os.PathLike, on_invalid_line: Callable[[RecordError], None] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row number, raw dict) from a .jsonl, .json (a list of objects) or .parquet file.

    Row numbers are 1-based: the line for JSONL, the list position for JSON and Parquet. Blank JSONL lines are skipped.
    A row that is not a JSON object, or not UTF-8, raises RecordError, or, for JSONL with `on_invalid_line` given, is
    handed to it and skipped. A file that cannot be read at all (missing, corrupt Parquet) always raises. Field checks
    are the caller's (see data.schemas).
    """
    path = Path(path)
    if not path.is_file():
        blocker = file_in_the_way(path.parent)
        reason = f"does not exist ({blocker} is a file, not a folder)" if blocker else "does not exist"
        raise RecordError(path, None, None, f"file {reason}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path, on_invalid_line)
    elif suffix == ".json":
        yield from _read_json(path)
    elif suffix == ".parquet":
        yield from enumerate(read_parquet_table(path).to_pylist(), start=1)
    else:
        raise RecordError(path, None, None, f"unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")


def _read_jsonl(path: Path, on_invalid_line: Callable[[RecordError], None] | None) -> Iterator[tuple[int, dict]]:
    # Bytes, decoded line by line: a line that is not UTF-8 is one bad row, not an exception for the whole file.
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = _decode_utf8(path, line_number, raw)
                if not line.strip():
                    continue
                row = _require_object(path, line_number, json.loads(line))
            except (json.JSONDecodeError, RecordError) as exc:
                error = exc if isinstance(exc, RecordError) else RecordError(
                    path, line_number, None, f"not valid JSON ({exc.msg})"
                )
                if on_invalid_line is None:
                    raise error from None
                on_invalid_line(error)
                continue
            yield line_number, row


def _decode_utf8(path: Path, line_number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = raw[exc.start]
        message = f"not valid UTF-8 (byte 0x{byte:02x} at column {exc.start + 1}); re-save the file as UTF-8"
        raise RecordError(path, line_number, None, message) from None


def _read_json(path: Path) -> Iterator[tuple[int, dict]]:
    # surrogateescape keeps undecodable bytes as lone surrogates, so the row and field holding them can be named.
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(path, exc.lineno, None, f"not valid JSON ({exc.msg})") from None
    if not isinstance(rows, list):
        raise RecordError(path, None, None, "a .json file must hold a list of objects")
    for index, row in enumerate(rows, start=1):
        row = _require_object(path, index, row)
        bad = next((key for key, value in row.items() if not is_utf8_text(key) or not is_utf8_text(value)), None)
        if bad is not None:
            raise RecordError(path, index, bad, "not valid UTF-8 text; re-save the file as UTF-8")
        yield index, row


def read_csv_columns(path: str | os.PathLike, columns: tuple[str, ...], absent: str = "file does not exist",
                     missing: str = "missing column") -> list[tuple[int, dict[str, str]]]:
    """(data row number from 1, {column: value}) of a CSV whose `columns` must all be present and non-empty in every
    row; a missing file, column or value raises RecordError naming the file (and the row and column). `absent` and
    `missing` word the first two errors (e.g. which setting names the file)."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(path, None, None, absent)
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        lacking = [name for name in columns if name not in (reader.fieldnames or ())]
        if lacking:
            raise RecordError(path, None, lacking[0], f"{missing} (header: {reader.fieldnames})")
        rows = []
        for number, raw in enumerate(reader, start=1):
            for name in columns:
                if not (raw.get(name) or "").strip():
                    raise RecordError(path, number, name, "empty or missing value")
            rows.append((number, {name: raw[name] for name in columns}))
    return rows


def is_utf8_text(value: Any) -> bool:
    """False for text holding lone surrogates (undecodable bytes, or escapes no UTF-8 file can store)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    elif isinstance(value, list):
        return all(is_utf8_text(item) for item in value)
    elif isinstance(value, dict):
        return all(is_utf8_text(key) and is_utf8_text(item) for key, item in value.items())
    return True


def read_parquet_table(path: str | os.PathLike):
    """The whole Parquet file as a pyarrow Table; a file that is not Parquet (or is cut short) is a RecordError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RecordError(path, None, None, f"not a readable Parquet file ({reason})") from None


def _require_object(path: Path, row_number: int, row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise RecordError(path, row_number, None, f"expected a JSON object, got {type(row).__name__}")
    return row
