"""Output folders: who may write there (an advisory lock per output), whether an existing folder may be replaced,
and whether a folder is writable at all."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cst_dist.io.atomic import OutputError, file_in_the_way, non_empty_dir, remove_stale_staging

log = logging.getLogger(__name__)


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







def _refuse_file_in_the_way(path: Path, what: str) -> None:
    blocker = file_in_the_way(path)
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
    if not non_empty_dir(target):
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


