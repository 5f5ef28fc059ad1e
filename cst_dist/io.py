"""File I/O shared by every stage: atomic writes, output-folder checks, and row readers that name the file and row
of a bad record.

Outputs never cost the user anything they had: an existing folder is only replaced when it is an earlier output of
the same stage and the user asked for it (`check_output_dir`), and written files honour the umask.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cst_dist.errors import UserError

log = logging.getLogger(__name__)
# mkdtemp's names: `.<target name>.` + 8 characters of [a-z0-9_] + `.tmp` (staging) or `.old` (the replaced folder).
STAGING_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.(?P<kind>tmp|old)")


class RecordError(UserError, ValueError):
    """A bad input row. The message always names the file, the row (1-based line for JSONL) and the field."""

    def __init__(self, path: str | os.PathLike, row: int | None, field: str | None, message: str):
        self.path, self.row, self.field = str(path), row, field
        where = self.path + (f", row {row}" if row is not None else "") + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")


class OutputError(UserError, ValueError):
    """An output that cannot be written where asked; the message names the path and the way out."""


def _umask() -> int:
    # The umask can only be read by setting it; the stand-in is restrictive, so a thread creating a file in between
    # gets tighter, never looser, permissions.
    previous = os.umask(0o077)
    os.umask(previous)
    return previous


def _honour_umask(path: str | os.PathLike | int, is_dir: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700 whatever the umask: give the file the mode a plain open()/mkdir() would."""
    mode = (0o777 if is_dir else 0o666) & ~_umask()
    if isinstance(path, int):
        os.fchmod(path, mode)
    else:
        os.chmod(path, mode)


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
        _honour_umask(fd, is_dir=False)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _raise_with_path(error, target)
        raise


def _raise_with_path(error: BaseException, target: Path) -> None:
    """A write(2) that fails (full disk, file size limit) raises an OSError with no file name: name the output."""
    if isinstance(error, OSError) and not isinstance(error, UserError) and not error.filename and error.errno:
        raise OSError(error.errno, f"{error.strerror or os.strerror(error.errno)} while writing", str(target)) \
            from error


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
def atomic_directory(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it into place only when the block succeeds.

    A crash or an error leaves the previous folder (if any) untouched and no partial folder behind. An existing
    non-empty folder is replaced only with `replace=True`, which a caller passes after `check_output_dir` has
    validated that folder: this function never deletes what it was not told it may.
    """
    target = Path(path)
    if not replace and _non_empty_dir(target):
        raise OutputError(f"{target} already exists and is not empty; choose a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        _honour_umask(staging, is_dir=True)
        yield staging
        _widen_private_files(staging)
        _fsync_dir(staging)
        if replace and target.exists():
            # A folder cannot be renamed over a non-empty one: move the old one aside first, drop it last.
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired)
        else:
            os.replace(staging, target)  # an empty folder is replaced by rename(2); a non-empty one makes it fail
        _fsync_dir(target.parent)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        _raise_with_path(error, target)
        raise


@contextlib.contextmanager
def exclusive_lock(folder: str | os.PathLike, what: str, kind: str = "cst") -> Iterator[Path | None]:
    """Hold an advisory lock on `folder` while the block runs: a second process asking for it is refused in one line
    naming the holder's pid. The lock file sits beside the folder (`.<name>.<kind>-lock`), so an output built by
    renaming a staging folder into place stays exactly what the stage wrote; the kernel drops the lock when the
    holder dies (kill -9 included: the file then stays, and the next holder takes it over); a clean exit removes it."""
    import fcntl

    folder = Path(folder)
    path = folder.parent / f".{folder.name}.{kind}-lock"
    while True:
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            # No lock where nothing can be written (a file in the way, a read-only mount): the stage's own checks
            # name that problem better, before it writes anything.
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(f"{what} {folder} is in use by another cst process (pid {holder}); wait for it to "
                              "end or stop it") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file as we opened it: lock the one at the path now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding the lock: whoever opened it meanwhile retries on the new file
        os.close(fd)


def _widen_private_files(folder: Path) -> None:
    """Files that writers created 0600 through a temporary file (safetensors' model.safetensors does) get the mode
    the umask gives a plain open(), like every other output."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 == 0o600:
            _honour_umask(path, is_dir=False)


def _non_empty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _file_in_the_way(path: Path) -> Path | None:
    """The path itself or its nearest existing parent, when that is not a folder (a file where a folder should be)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _refuse_file_in_the_way(path: Path, what: str) -> None:
    blocker = _file_in_the_way(path)
    if blocker is not None:
        where = "is a file" if blocker == path else f"is under {blocker}, which is a file"
        raise OutputError(f"{what} {path} {where}, not a folder; choose a folder")


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create the folder if it is missing and prove it writable by creating and removing a file in it.

    Raises OutputError (one line, naming `what` and the path) for a file in the way or any OSError: before a stage
    starts its work, not after hours of it.
    """
    path = Path(path)
    _refuse_file_in_the_way(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cst-write-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} {path} is not writable ({exc.strerror or exc}); choose a writable folder") from None
    return path


def remove_stale_staging(target: str | os.PathLike) -> int:
    """Remove the `.tmp` / `.old` siblings of `target` that killed runs of `atomic_directory` left behind.

    A `.old` folder still holding the previous output while `target` is missing (a run killed between its two
    renames) is moved back to `target` first: the user's previous output is restored, never dropped.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return 0
    removed = 0
    for entry in sorted(target.parent.iterdir()):
        match = STAGING_NAME.fullmatch(entry.name)
        if match is None or match["name"] != target.name or entry.is_symlink() or not entry.is_dir():
            continue
        if match["kind"] == "old" and not target.exists() and (entry / target.name).is_dir():
            os.replace(entry / target.name, target)
            log.warning("restored %s from %s (a replacement of it was interrupted)", target, entry)
        shutil.rmtree(entry)
        removed += 1
    if removed:
        log.info("removed %d staging folder(s) of interrupted runs beside %s", removed, target)
    return removed


def read_marker(folder: Path, marker_name: str) -> dict[str, Any] | None:
    """The JSON object in `folder/marker_name`, or None when it is missing or not a JSON object."""
    try:
        marker = json.loads((folder / marker_name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def check_output_dir(
    target: str | os.PathLike,
    marker_name: str,
    marker_stage: str,
    overwrite: bool,
    protected_inputs: list[str | os.PathLike],
    what: str,
    overwrite_hint: str,
) -> bool:
    """Refuse an output folder that would cost the user something; True when it replaces an earlier output.

    Refused: the folder (or a parent of it) is a file; it is, or holds, one of `protected_inputs`; it is not writable;
    it is non-empty and not an earlier output of this stage (`marker_name` with `"stage": marker_stage`); it is such
    an output and `overwrite` is off (`overwrite_hint` says how to turn it on). An empty folder is used as it is.
    Leftover staging folders of killed runs writing the same target are cleaned first.
    """
    target = Path(target)
    resolved = target.resolve()
    for source in protected_inputs:
        source_path = Path(source).resolve()
        if resolved == source_path or resolved in source_path.parents:
            raise OutputError(
                f"{what} {target} is or holds {source}, an input of `cst {marker_stage}`; choose another folder"
            )
    _refuse_file_in_the_way(target, what)
    check_writable_dir(target.parent, what)  # staging is created, and renamed into place, there
    remove_stale_staging(target)
    if not _non_empty_dir(target):
        if target.exists():
            check_writable_dir(target, what)  # an empty read-only mount would only fail at the final rename
        return False
    marker = read_marker(target, marker_name)
    if marker is None or marker.get("stage") != marker_stage:
        raise OutputError(
            f"{what} {target} is not empty and is not a `cst {marker_stage}` output (no {marker_name}); it is never "
            "replaced: choose a new or empty folder"
        )
    if not overwrite:
        raise OutputError(
            f"{what} {target} holds an earlier `cst {marker_stage}` output; {overwrite_hint} to replace it, or choose "
            "a new folder"
        )
    check_writable_dir(target, what)
    return True


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
        blocker = _file_in_the_way(path.parent)
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
