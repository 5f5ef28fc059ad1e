"""File I/O shared by every stage: atomic writes and row readers that name the file and row of a bad record."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cst_dist.errors import UserError


class RecordError(UserError, ValueError):
    """A bad input row. The message always names the file, the row (1-based line for JSONL) and the field."""

    def __init__(self, path: str | os.PathLike, row: int | None, field: str | None, message: str):
        self.path, self.row, self.field = str(path), row, field
        where = self.path + (f", row {row}" if row is not None else "") + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of `path`; on success fsync and rename it over `path`, on error remove it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it into place only when the block succeeds.

    A crash or an error leaves the previous folder (if any) untouched and no partial folder behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        _fsync_dir(staging)
        if target.exists():
            # A folder cannot be renamed over a non-empty one: move the old one aside first, drop it last.
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired)
        else:
            os.replace(staging, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
    A row that is not a JSON object raises RecordError, or, for JSONL with `on_invalid_line` given, is handed to it
    and skipped. Field checks are the caller's (see data.schemas).
    """
    path = Path(path)
    if not path.is_file():
        raise RecordError(path, None, None, "file does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
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
    elif suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RecordError(path, exc.lineno, None, f"not valid JSON ({exc.msg})") from None
        if not isinstance(rows, list):
            raise RecordError(path, None, None, "a .json file must hold a list of objects")
        for index, row in enumerate(rows, start=1):
            yield index, _require_object(path, index, row)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for index, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield index, row
    else:
        raise RecordError(path, None, None, f"unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")


def _require_object(path: Path, row_number: int, row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise RecordError(path, row_number, None, f"expected a JSON object, got {type(row).__name__}")
    return row
