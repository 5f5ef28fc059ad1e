"""What `cst build` reads: pair files and `cst generate` folders, the paper's released set, extra-task rows.

Every row is checked field by field; under `build.on_bad_row=skip` a bad row is counted (`SkipCounter`) instead of
stopping the build. Every item keeps the (path, row) it came from, so a later error (a duplicate id) can name it, and
every file is recorded with its sha256 for the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cst_dist.config import BuildConfig, ConfigError
from cst_dist.data.pairs import open_pair_folder
from cst_dist.data.preference_set import HARMLESS_TASK
from cst_dist.data.schemas import PAIR_FIELDS, RELEASED_FIELDS, SkipCounter, check_fields, iter_valid_rows
from cst_dist.io import RecordError, file_sha256, read_rows
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT

log = logging.getLogger(__name__)


@dataclass
class BuildInputs:
    """Everything read from the input files. Each item carries (path, row) so errors can point back at it."""

    pairs: list[tuple[dict[str, str], str, int]] = field(default_factory=list)
    extra: list[tuple[dict[str, str], str, int]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    folders: list[dict[str, Any]] = field(default_factory=list)
    released_inconsistent: int = 0


def derive_id(*parts: str) -> str:
    """A stable 12-hex id for rows that come without one (the released set has none)."""
    return hashlib.sha1(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()[:12]


def _read_pairs(path: str, build: BuildConfig, skips: SkipCounter, inputs: BuildInputs) -> None:
    rows = list(iter_valid_rows(path, PAIR_FIELDS, build.on_bad_row, skips))
    inputs.pairs.extend((row, path, number) for number, row in rows)
    inputs.sources.append({"kind": "pairs", "path": path, "sha256": file_sha256(path), "rows": len(rows)})


def _read_released(path: str, build: BuildConfig, skips: SkipCounter, inputs: BuildInputs) -> None:
    """s1 harmless rows become pairs; s0 harmless rows are only checked (doubling rebuilds them); the rest is kept."""
    rows = list(iter_valid_rows(path, RELEASED_FIELDS, build.on_bad_row, skips, tuple(build.tasks)))
    s0_rows = []
    for number, row in rows:
        if row["task"] == HARMLESS_TASK and row["system"] == SAFE_SYSTEM_PROMPT:
            pair = {"id": derive_id(row["prompt"]), "prompt": row["prompt"], "y0": row["rejected"], "y1": row["chosen"]}
            inputs.pairs.append((pair, path, number))
        elif row["task"] == HARMLESS_TASK and row["system"] == UNCENSORED_SYSTEM_PROMPT:
            s0_rows.append(row)
        else:
            inputs.extra.append(({"id": derive_id(*(row[k] for k in RELEASED_FIELDS)), **row}, path, number))
    # An s0 row that is not the exact reverse of its s1 pair (or has none) cannot be reproduced by doubling.
    reversed_pairs = {(p["prompt"], p["y0"], p["y1"]) for p, source, _ in inputs.pairs if source == path}
    inconsistent = sum((r["prompt"], r["chosen"], r["rejected"]) not in reversed_pairs for r in s0_rows)
    if inconsistent:
        log.warning("%s: %d s0 harmless rows are not the reverse of an s1 row", path, inconsistent)
    inputs.released_inconsistent += inconsistent
    inputs.sources.append({"kind": "released", "path": path, "sha256": file_sha256(path), "rows": len(rows)})


def _read_extra(path: str, build: BuildConfig, skips: SkipCounter, inputs: BuildInputs) -> None:
    """Preference rows used unchanged; `id` is optional (derived from the content when absent)."""
    # iter_valid_rows returns only the required fields, so the optional ids are read in a second, raw pass.
    raw_ids = {number: raw.get("id") for number, raw in read_rows(path, on_invalid_line=lambda error: None)}
    count = 0
    for number, row in iter_valid_rows(path, RELEASED_FIELDS, build.on_bad_row, skips, tuple(build.tasks)):
        given = {"id": raw_ids[number]} if raw_ids.get(number) is not None else None
        try:  # a given id is checked like any field: a non-blank string or an int
            row_id = check_fields(path, number, given, ("id",))["id"] if given else derive_id(*row.values())
        except RecordError as error:
            if build.on_bad_row == "error":
                raise
            skips.add(error)
            continue
        count += 1
        inputs.extra.append(({"id": row_id, **row}, path, number))
    inputs.sources.append({"kind": "extra_tasks", "path": path, "sha256": file_sha256(path), "rows": count})


def _read_pair_folder(folder: Path, build: BuildConfig, skips: SkipCounter, inputs: BuildInputs) -> None:
    """A `cst generate` output: its shard files, each read as a pairs file; an unfinished run is refused unless
    `build.allow_incomplete_pairs`."""
    pair_folder = open_pair_folder(folder, "build.pairs")
    if not build.allow_incomplete_pairs:
        pair_folder.require_complete("rerun `cst generate` to finish it, or set build.allow_incomplete_pairs=true "
                                     "to build from what is there")
    before = len(inputs.pairs)
    for file in pair_folder.files:
        _read_pairs(str(file), build, skips, inputs)
    entry: dict[str, Any] = {"path": str(folder), "shard_files": len(pair_folder.files),
                             "rows": len(inputs.pairs) - before}
    if pair_folder.manifest is not None:
        entry.update(generate_complete=pair_folder.manifest.get("complete"),
                     generate_totals=pair_folder.manifest.get("totals"))
    inputs.folders.append(entry)


def read_inputs(build: BuildConfig, skips: SkipCounter) -> BuildInputs:
    """Pairs (files or generate folders), then the released set, then extra tasks, in the order the config names."""
    if not build.pairs and not build.released:
        # build.extra_tasks alone would be a set without a single CST pair.
        raise ConfigError("cst build needs input: set build.pairs (pair files) and/or build.released (paper's JSON)")
    if HARMLESS_TASK not in build.tasks:
        raise ConfigError(f"build.tasks must include {HARMLESS_TASK!r} (the task of the CST rows), got {build.tasks}")
    inputs = BuildInputs()
    for path in build.pairs:
        if Path(path).is_dir():  # a `cst generate` output: its shard files
            _read_pair_folder(Path(path), build, skips, inputs)
        else:
            _read_pairs(str(path), build, skips, inputs)
    if build.released:
        _read_released(str(build.released), build, skips, inputs)
    for path in build.extra_tasks:
        _read_extra(str(path), build, skips, inputs)
    return inputs
