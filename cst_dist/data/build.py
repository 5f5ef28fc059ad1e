"""`cst build`: self-critique pairs -> the CST preference set (Parquet + dataset card + manifest).

CST doubles every pair (id, prompt, y0, y1): under s1 chosen = y1 (the safe revision), under s0 the same pair reversed.
Plain DPO (the baseline) keeps only the s1 rows. Rows of other tasks (truthfulness, personas) are mixed in unchanged.
The output folder loads with `datasets.load_dataset(folder)` and is written atomically: all of it or none of it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from cst_dist.config import BuildConfig, RunConfig
from cst_dist.data.io import RecordError, atomic_directory, atomic_file, file_sha256, read_rows, write_json_atomic
from cst_dist.data.io import write_text_atomic
from cst_dist.data.schemas import PAIR_FIELDS, RELEASED_FIELDS, SkipCounter, check_fields, iter_valid_rows
from cst_dist.data.schemas import PREFERENCE_FIELDS
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT

log = logging.getLogger(__name__)

MANIFEST_SCHEMA_VERSION = 1
HARMLESS_TASK = "harmless"
SPLIT_FILES = {"train": "data/train-00000-of-00001.parquet", "eval": "data/eval-00000-of-00001.parquet"}
ARROW_SCHEMA = pa.schema([(name, pa.string()) for name in PREFERENCE_FIELDS])


@dataclass
class BuildResult:
    """What `build_preference_set` wrote: the folder, the manifest's counts and the rows it skipped."""

    output: Path
    counts: dict[str, Any]
    skips: SkipCounter


@dataclass
class _Inputs:
    """Everything read from the input files. Each item carries (path, row) so errors can point back at it."""

    pairs: list[tuple[dict[str, str], str, int]] = field(default_factory=list)
    extra: list[tuple[dict[str, str], str, int]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    released_inconsistent: int = 0


def derive_id(*parts: str) -> str:
    """A stable 12-hex id for rows that come without one (the released set has none)."""
    return hashlib.sha1(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()[:12]


def _read_pairs(path: str, build: BuildConfig, skips: SkipCounter, inputs: _Inputs) -> None:
    rows = list(iter_valid_rows(path, PAIR_FIELDS, build.on_bad_row, skips))
    inputs.pairs.extend((row, path, number) for number, row in rows)
    inputs.sources.append({"kind": "pairs", "path": path, "sha256": file_sha256(path), "rows": len(rows)})


def _read_released(path: str, build: BuildConfig, skips: SkipCounter, inputs: _Inputs) -> None:
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


def _read_extra(path: str, build: BuildConfig, skips: SkipCounter, inputs: _Inputs) -> None:
    """Preference rows used unchanged; `id` is optional (derived from the content when absent)."""
    # iter_valid_rows returns only the required fields, so the optional ids are read in a second, raw pass.
    raw_ids = {number: raw.get("id") for number, raw in read_rows(path, on_invalid_line=lambda error: None)}
    count = 0
    for number, row in iter_valid_rows(path, RELEASED_FIELDS, build.on_bad_row, skips, tuple(build.tasks)):
        row_id = raw_ids.get(number)
        try:
            row_id = derive_id(*row.values()) if row_id is None else check_fields(path, number, raw_ids, ())["id"]
        except RecordError:
            pass
        count += 1
        inputs.extra.append(({"id": row_id, **row}, path, number))
    inputs.sources.append({"kind": "extra_tasks", "path": path, "sha256": file_sha256(path), "rows": count})
