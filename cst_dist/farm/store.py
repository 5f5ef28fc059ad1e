"""A shard folder: each finished shard's files, written atomically, and the manifest that lets a rerun resume.

    <folder>/<files of shard 3>     whatever the caller's shard produces, e.g. shard-00003.jsonl, rejects/...
    <folder>/manifest.json          {"schema_version", "plan", "num_shards", "shards": {name: entry}, "totals",
                                     "complete"}

A shard is finished once the manifest lists it and its `file` is there; its files are written before the manifest,
each atomically, so a crash never leaves a shard that looks finished and is not. The plan records everything that
decides the output; a rerun with another plan in the same folder is refused instead of mixing two runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cst_dist.farm import FarmError
from cst_dist.farm.shards import Shard
from cst_dist.io import file_fingerprint, write_json_atomic, write_jsonl_atomic

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def model_items_plan(model_path: Path, items: Sequence[Any]) -> dict[str, Any]:
    """The part of a plan that a model and its work items decide: the model folder, its weight files' fingerprints
    and a hash of the items (dataclasses, in order). Callers add their own settings."""
    weights = sorted(model_path.glob("*.safetensors")) or sorted(model_path.glob("*.bin"))
    listing = json.dumps([dataclasses.astuple(item) for item in items], ensure_ascii=False)
    return {"model": str(model_path), "weights": [file_fingerprint(path) for path in weights],
            "items_sha256": hashlib.sha256(listing.encode()).hexdigest(), "num_items": len(items)}


class ShardStore:
    """The folder of one plan. `finished()` lists what a rerun skips; `save()` records one more shard.

    `counted`: the entry keys summed into `totals` (ints, or {reason: count} dicts summed per key); `contents` and
    `output_setting` name the folder's contents and the setting that moves it in the refusal of another plan.
    """

    def __init__(self, folder: str | Path, plan: dict[str, Any], num_shards: int, counted: Sequence[str],
                 contents: str = "shards", output_setting: str = "the output setting"):
        self.folder = Path(folder)
        self.counted = tuple(counted)
        self.contents, self.output_setting = contents, output_setting
        self.manifest = self._load_or_start(plan, num_shards)

    def _load_or_start(self, plan: dict[str, Any], num_shards: int) -> dict[str, Any]:
        path = self.folder / MANIFEST
        if not path.is_file():
            return {"schema_version": SCHEMA_VERSION, "plan": plan, "num_shards": num_shards, "shards": {},
                    "totals": {}, "complete": False}
        manifest = json.loads(path.read_text(encoding="utf-8"))
        old = manifest["plan"]
        changed = [key for key in sorted(set(plan) | set(old)) if plan.get(key) != old.get(key)]
        if changed:
            details = "; ".join(f"{key}: {old.get(key)!r} -> {plan.get(key)!r}" for key in changed)
            raise FarmError(
                f"{self.folder} holds {self.contents} of another plan ({details}); set {self.output_setting} to a new "
                "folder, or remove this one to start over"
            )
        return manifest

    def finished(self) -> set[int]:
        """Indices of the shards the manifest lists and whose file is still there."""
        return {entry["index"] for entry in self.manifest["shards"].values() if (self.folder / entry["file"]).is_file()}

    def save(self, shard: Shard, files: dict[str, list[dict[str, Any]]], entry: dict[str, Any]) -> None:
        """Write `files` ({path relative to the folder: rows}) in their order, each atomically, then the manifest.

        The last file is the shard's `file`: the one whose presence marks it finished. The manifest entry is
        {"index", "file", **entry}; `entry` holds the `counted` keys and anything else worth keeping (seed, timing).
        """
        if not files:
            raise ValueError(f"{shard.name}: a shard is saved with at least one file")
        for relative, rows in files.items():
            write_jsonl_atomic(self.folder / relative, rows)
        self.manifest["shards"][shard.name] = {"index": shard.index, "file": list(files)[-1], **entry}
        self.manifest["shards"] = dict(sorted(self.manifest["shards"].items()))
        entries = list(self.manifest["shards"].values())
        self.manifest["totals"] = {"shards": len(entries),
                                   **{key: _total(entry[key] for entry in entries) for key in self.counted}}
        self.manifest["complete"] = len(entries) == self.manifest["num_shards"]
        write_json_atomic(self.folder / MANIFEST, self.manifest)

    @property
    def totals(self) -> dict[str, Any]:
        return self.manifest["totals"]

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])


def _total(values: Iterable[int | dict[str, int]]) -> int | dict[str, int]:
    """The sum of ints, or of {key: count} dicts (per key, keys sorted)."""
    values = list(values)
    if values and isinstance(values[0], dict):
        return dict(sorted(sum((Counter(value) for value in values), Counter()).items()))
    return sum(values)
