"""The built preference set (`cst build` -> `cst train`, `cst eval`), read in one place.

A folder holds Parquet splits (`data/<split>-00000-of-00001.parquet`, columns `PREFERENCE_FIELDS`, all strings), a
dataset card and `manifest.json` (`stage: build`, each file's sha256 under `files`, their `fingerprint`). Readers
verify the manifest before reading a row, so a half-copied or hand-edited set is an error naming the file, never
trained or scored on. Every error here is a `PreferenceSetError`: one line that names the file and the way out.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cst_dist.data.schemas import PREFERENCE_FIELDS, check_fields
from cst_dist.errors import UserError
from cst_dist.io import file_sha256, read_parquet_table
from cst_dist.run_layout import MANIFEST

if TYPE_CHECKING:
    import datasets

BUILD_STAGE = "build"  # the manifest's `stage`: what marks a folder as a `cst build` output
HARMLESS_TASK = "harmless"  # the task of the CST rows (a pair under s1, and reversed under s0)
SPLIT_FILES = {"train": "data/train-00000-of-00001.parquet", "eval": "data/eval-00000-of-00001.parquet"}
REBUILD = "rebuild it with `cst build`"


class PreferenceSetError(UserError, ValueError):
    """A folder that is not (or no longer) what `cst build` wrote; the message names the file and the way out."""


def pair_key(row: dict[str, str]) -> str:
    """Rows built from one pair (its `-s1` and `-s0` rows) share a key; any other row is its own group."""
    stem, _, suffix = row["id"].rpartition("-")
    return stem if row["task"] == HARMLESS_TASK and suffix in ("s0", "s1") and stem else row["id"]


def files_fingerprint(files: dict[str, str]) -> str:
    """16 hex digits over {file relative to the set: sha256}: the `fingerprint` a build writes into its manifest."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(folder: str | os.PathLike) -> str:
    """The content fingerprint of the Parquet files now in `folder` (equal to the manifest's when nothing changed)."""
    folder = Path(folder)
    return files_fingerprint({path.relative_to(folder).as_posix(): file_sha256(path)
                              for path in sorted((folder / "data").glob("*.parquet"))})


def verify_preference_set(folder: str | os.PathLike, setting: str) -> dict[str, Any]:
    """The folder's manifest, after checking it is a `cst build` manifest listing every Parquet file with its sha256.

    A missing manifest, another stage's, or a missing, changed or unlisted file is an error naming `setting`
    (training or evaluating on a half-copied or hand-edited set would go unnoticed otherwise).
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise PreferenceSetError(f"{folder} ({setting}) has no manifest.json: not a `cst build` output; {REBUILD}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files, stage = manifest.get("files"), manifest.get("stage")
    except (OSError, ValueError, AttributeError) as exc:
        raise PreferenceSetError(f"{path}: not a readable `cst build` manifest ({exc}); {REBUILD}") from None
    if not isinstance(files, dict):
        raise PreferenceSetError(f"{path}: has no `files` checksums, so it is not a `cst build` manifest; {REBUILD}")
    if stage != BUILD_STAGE:
        raise PreferenceSetError(f"{path}: written by stage {stage!r}, not by `cst build`; {REBUILD}")
    unlisted = sorted({p.relative_to(folder).as_posix() for p in (folder / "data").glob("*.parquet")} - set(files))
    if unlisted:
        raise PreferenceSetError(f"{folder / unlisted[0]}: not listed in {path}; {REBUILD}")
    for name, digest in sorted(files.items()):
        if not (folder / name).is_file():
            raise PreferenceSetError(f"{folder / name}: listed in {path} but missing; {REBUILD}")
        if file_sha256(folder / name) != digest:
            raise PreferenceSetError(f"{folder / name}: its sha256 does not match {path} (changed since built); "
                                     f"{REBUILD}")
    return manifest


def split_files(folder: str | os.PathLike, split: str, setting: str, hint: str = "run `cst build` first") -> list[Path]:
    """The split's Parquet files of a verified set. `setting` (e.g. `train.data`) and `hint` (what to do when the
    split is absent) go into the one-line error."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PreferenceSetError(f"{setting} {folder} is a file, not a preference set folder; run `cst build` first")
    files = sorted((folder / "data").glob(f"{split}-*.parquet"))
    if not files:
        raise PreferenceSetError(
            f"preference set {folder} ({setting}) has no {split!r} split (data/{split}-*.parquet); {hint}")
    verify_preference_set(folder, setting)
    return files


def file_rows(file: Path) -> list[tuple[int, dict[str, str]]]:
    """(row number, row) of one split file; a null or non-string value is a RecordError naming file, row and column."""
    table = read_parquet_table(file)
    missing = [name for name in PREFERENCE_FIELDS if name not in table.column_names]
    if missing:
        raise PreferenceSetError(f"{file}: missing columns {missing}; expected {list(PREFERENCE_FIELDS)}")
    raw_rows = table.select(list(PREFERENCE_FIELDS)).to_pylist()
    return [(number, check_fields(str(file), number, raw, PREFERENCE_FIELDS))
            for number, raw in enumerate(raw_rows, start=1)]


def read_split(folder: str | os.PathLike, split: str, setting: str, hint: str = "run `cst build` first"
               ) -> list[tuple[Path, int, dict[str, str]]]:
    """(file, row number, row) of every row of a verified split, in file order; see `split_files`."""
    files = split_files(folder, split, setting, hint)
    return [(file, number, row) for file in files for number, row in file_rows(file)]


def load_preference_split(
    folder: str | os.PathLike, split: str = "train", cache_dir: str | None = None
) -> datasets.Dataset:
    """One verified split as a `datasets.Dataset` (local files only, nothing downloaded)."""
    import datasets

    split_files(folder, split, "load_preference_split")
    return datasets.load_dataset(str(folder), split=split, cache_dir=cache_dir)
