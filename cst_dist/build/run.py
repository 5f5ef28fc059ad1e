"""`cst build`: read the inputs, double and split the rows, write the preference set folder.

The output folder loads with `datasets.load_dataset(folder)` and is written atomically: all of it or none of it.
An existing folder is only replaced when it is an earlier build output and `build.overwrite` is on. Its format (split
files, manifest with checksums and fingerprint) is the one `cst_dist.data.preference_set` reads.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from cst_dist.build.inputs import read_inputs
from cst_dist.build.rows import expand, split_rows
from cst_dist.config import ConfigError, RunConfig
from cst_dist.data.preference_set import BUILD_STAGE, SPLIT_FILES, files_fingerprint
from cst_dist.data.schemas import PREFERENCE_FIELDS, SkipCounter
from cst_dist.io import (
    atomic_directory,
    atomic_file,
    check_output_dir,
    file_sha256,
    write_json_atomic,
    write_text_atomic,
)
from cst_dist.prompts import TRAINING_PROMPT_LABELS
from cst_dist.run_layout import MANIFEST

log = logging.getLogger(__name__)

MANIFEST_SCHEMA_VERSION = 1
ARROW_SCHEMA = pa.schema([(name, pa.string()) for name in PREFERENCE_FIELDS])


@dataclass
class BuildResult:
    """What `build_preference_set` wrote: the folder, the manifest's counts and the rows it skipped."""

    output: Path
    counts: dict[str, Any]
    skips: SkipCounter


def _abbreviate(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _counts(splits: dict[str, list[dict[str, str]]], n_pairs: int) -> dict[str, Any]:
    everything = [row for rows in splits.values() for row in rows]
    systems = Counter(row["system"] for row in everything)
    return {
        "rows": len(everything),
        "splits": {name: len(rows) for name, rows in splits.items()},
        "tasks": dict(sorted(Counter(row["task"] for row in everything).items())),
        "system_prompts": [
            {"label": TRAINING_PROMPT_LABELS.get(system, "other"), "system": _abbreviate(system), "rows": n}
            for system, n in sorted(systems.items(), key=lambda item: (-item[1], item[0]))
        ],
        "pairs": n_pairs,
    }


def _dataset_card(splits: dict[str, list[dict[str, str]]], mode: str, fingerprint: str) -> str:
    # The `configs` front matter is what makes `datasets.load_dataset(folder)` return exactly these splits. datasets
    # 5.x keys its cache on this YAML, not on the files: the content fingerprint makes a rebuilt folder a cache miss.
    data_files = [{"split": name, "path": f"data/{name}-*"} for name in splits]
    description = f"cst-dist preference set {fingerprint}"
    config = {"config_name": "default", "description": description, "data_files": data_files}
    front = yaml.safe_dump({"configs": [config]}, sort_keys=False, width=1000)
    sizes = ", ".join(f"{name}: {len(rows)} rows" for name, rows in splits.items())
    return (
        f"---\n{front}---\n\n# CST preference set ({mode})\n\n"
        "Built by `cst build` (Configurable Safety Tuning, arXiv 2404.00495). Columns: "
        f"`{', '.join(PREFERENCE_FIELDS)}`. Splits: {sizes}. See `manifest.json` for sources and counts.\n\n"
        "Warning: rejected (and, under the uncensored system prompt, chosen) answers may contain harmful text.\n"
    )


def _write_folder(staging: Path, splits: dict[str, list[dict[str, str]]], manifest: dict[str, Any]) -> None:
    """Parquet shards, then the card and the manifest, which both record the shards' checksums."""
    files = {}
    for name, rows in splits.items():
        _write_parquet(rows, staging / SPLIT_FILES[name])
        files[SPLIT_FILES[name]] = file_sha256(staging / SPLIT_FILES[name])
    fingerprint = files_fingerprint(files)
    write_text_atomic(staging / "README.md", _dataset_card(splits, manifest["mode"], fingerprint))
    write_json_atomic(staging / MANIFEST, {**manifest, "files": files, "fingerprint": fingerprint})


def _write_parquet(rows: list[dict[str, str]], path: Path) -> None:
    table = pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)
    with atomic_file(path, "wb") as handle:  # fsynced: the folder rename must never expose an unflushed file
        pq.write_table(table, handle)


def check_build_output(config: RunConfig) -> bool:
    """The output folder checks, made before any input is read; True when an earlier build output is replaced."""
    build = config.build
    inputs = [*build.pairs, *filter(None, [build.released]), *build.extra_tasks, config.run_dir]
    return check_output_dir(config.preference_dir, MANIFEST, BUILD_STAGE, build.overwrite, inputs, "build.output",
                            "set build.overwrite=true")


def write_preference_set(output: str | os.PathLike, splits: dict[str, list[dict[str, str]]],
                         manifest: dict[str, Any], replace: bool = False) -> Path:
    """Write a preference folder (Parquet splits, card, manifest with checksums) atomically; `cst train` reads only
    folders written here. `replace` only after `check_output_dir` allowed it."""
    with atomic_directory(output, replace=replace) as staging:
        _write_folder(staging, splits, {"schema_version": MANIFEST_SCHEMA_VERSION, "stage": BUILD_STAGE, **manifest})
    return Path(output)


def build_preference_set(config: RunConfig) -> BuildResult:
    """Read pairs / the released set / extra tasks, double (cst) or not (dpo), shuffle, split, write the folder."""
    build, skips = config.build, SkipCounter()
    replace = check_build_output(config)
    inputs = read_inputs(build, skips)
    rows = expand(inputs, build.mode)
    if not rows:
        raise ConfigError("cst build: no valid rows left in the inputs (all skipped?)")
    splits = split_rows(rows, build.eval_fraction, build.seed)
    counts = _counts(splits, len(inputs.pairs))
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "stage": BUILD_STAGE,
        "mode": build.mode,
        "seed": build.seed,
        "eval_fraction": build.eval_fraction,
        "counts": counts,
        "skipped": {"total": skips.total, "by_reason": dict(sorted(skips.by_reason.items()))},
        "released_inconsistent": inputs.released_inconsistent,
        "sources": inputs.sources,
        "input_folders": inputs.folders,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    output = write_preference_set(config.preference_dir, splits, manifest, replace)
    log.info(
        "built %s preference set in %s: %d pairs -> %s; tasks %s; %d rows skipped",
        build.mode,
        output,
        counts["pairs"],
        counts["splits"],
        counts["tasks"],
        skips.total,
    )
    return BuildResult(output=Path(output), counts=counts, skips=skips)
