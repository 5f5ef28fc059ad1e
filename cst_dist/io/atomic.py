"""Atomic files and folders: write to a temporary name, fsync, rename; written files honour the umask."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cst_dist.errors import UserError

log = logging.getLogger(__name__)
# mkdtemp's names: `.<target name>.` + 8 characters of [a-z0-9_] + `.tmp` (staging) or `.old` (the replaced folder).
STAGING_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.(?P<kind>tmp|old)")


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
    if not replace and non_empty_dir(target):
        raise OutputError(f"{target} already exists and is not empty; choose a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        _honour_umask(staging, is_dir=True)
        yield staging
        widen_private_files(staging)
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



def widen_private_files(folder: Path) -> None:
    """Files that writers created 0600 through a temporary file (safetensors' model.safetensors does) get the mode
    the umask gives a plain open(), like every other output."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 == 0o600:
            _honour_umask(path, is_dir=False)



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

def non_empty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def file_in_the_way(path: Path) -> Path | None:
    """The path itself or its nearest existing parent, when that is not a folder (a file where a folder should be)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None
