"""The pairs folder `cst generate` writes (generate -> build, and the evaluator's self-critique yield), opened in one
place: its `shard-*.jsonl` files in shard order (rows `PAIR_FIELDS`, extra fields allowed; `rejects/` is never read
as pairs) and its manifest (`complete`, `num_shards`, `shards`, `totals`).

A folder without shard files, or an unfinished generate run, would silently give fewer pairs: the first is always an
error, the second wherever the caller does not allow it (`require_complete`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cst_dist.data.schemas import PAIR_FIELDS, iter_valid_rows
from cst_dist.io import RecordError
from cst_dist.run_layout import MANIFEST


@dataclass
class PairFolder:
    """A `cst generate` output: its shard files in shard order, and its manifest (None if it has none)."""

    path: Path
    files: list[Path]
    manifest: dict[str, Any] | None

    def require_complete(self, way_out: str) -> None:
        """An error naming the folder when its manifest says the generate run is unfinished; `way_out` says what
        to do about it."""
        if self.manifest is not None and self.manifest.get("complete") is False:
            done, total = len(self.manifest.get("shards", {})), self.manifest.get("num_shards", "?")
            raise RecordError(self.path, None, None,
                              f"an unfinished `cst generate` output ({done} of {total} shards); {way_out}")

    def rows(self) -> list[dict[str, str]]:
        """The pairs of every shard, checked (`PAIR_FIELDS` only); a bad row is an error naming file, row and field."""
        return [row for file in self.files for _, row in iter_valid_rows(file, PAIR_FIELDS)]


def open_pair_folder(folder: str | os.PathLike, setting: str, require_manifest: bool = False) -> PairFolder:
    """The folder's shard files and manifest; `setting` (e.g. `build.pairs`) names the folder in errors.

    `require_manifest`: a folder without manifest.json is refused (it was not written by `cst generate`).
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if require_manifest and not path.is_file():
        raise RecordError(folder, None, None, f"{setting} names a folder that is not a `cst generate` output "
                          "(no manifest.json)")
    files = sorted(folder.glob("shard-*.jsonl"))
    if not files:
        raise RecordError(folder, None, None, f"{setting} names a folder without shard-*.jsonl files")
    manifest = None
    if path.is_file():
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise RecordError(path, None, None, f"not readable ({exc})") from None
    return PairFolder(folder, files, manifest if isinstance(manifest, dict) else None)
