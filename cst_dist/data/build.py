"""`cst build`: self-critique pairs -> the CST preference set (Parquet + dataset card + manifest).

CST doubles every pair (id, prompt, y0, y1): under s1 chosen = y1 (the safe revision), under s0 the same pair reversed.
Plain DPO (the baseline) keeps only the s1 rows. Rows of other tasks (truthfulness, personas) are mixed in unchanged.
The output folder loads with `datasets.load_dataset(folder)` and is written atomically: all of it or none of it.
An existing folder is only replaced when it is an earlier build output and `build.overwrite` is on.
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
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from cst_dist.config import BuildConfig, ConfigError, RunConfig
from cst_dist.data.schemas import (
    PAIR_FIELDS,
    PREFERENCE_FIELDS,
    RELEASED_FIELDS,
    SkipCounter,
    check_fields,
    iter_valid_rows,
)
from cst_dist.errors import UserError
from cst_dist.io import (
    RecordError,
    atomic_directory,
    atomic_file,
    check_output_dir,
    file_sha256,
    read_rows,
    write_json_atomic,
    write_text_atomic,
)
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT
from cst_dist.run_layout import MANIFEST

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

MANIFEST_SCHEMA_VERSION = 1
STAGE = "build"  # the manifest's `stage`: what marks a folder as an earlier build output that may be replaced
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
    folders: list[dict[str, Any]] = field(default_factory=list)
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


def _expand(inputs: _Inputs, mode: str) -> list[dict[str, str]]:
    """CST rows (each pair under s1, and reversed under s0 unless `dpo`), then the extra-task rows; ids unique."""
    rows, seen = [], {}
    for pair, path, number in inputs.pairs:
        variants = [(SAFE_SYSTEM_PROMPT, pair["y1"], pair["y0"], "s1")]
        if mode == "cst":
            variants.append((UNCENSORED_SYSTEM_PROMPT, pair["y0"], pair["y1"], "s0"))
        for system, chosen, rejected, suffix in variants:
            row = {
                "id": f"{pair['id']}-{suffix}",
                "system": system,
                "prompt": pair["prompt"],
                "chosen": chosen,
                "rejected": rejected,
                "task": HARMLESS_TASK,
            }
            rows.append(_claim_id(row, path, number, seen))
    rows.extend(_claim_id(row, path, number, seen) for row, path, number in inputs.extra)
    return rows


def _claim_id(row: dict[str, str], path: str, number: int, seen: dict[str, tuple[str, int]]) -> dict[str, str]:
    # Ids key checkpoints' data order and precomputed reference log-probs: a duplicate is never silently merged.
    if row["id"] in seen:
        first_path, first_row = seen[row["id"]]
        message = f"duplicate id {row['id']!r} (first seen in {first_path}, row {first_row})"
        raise RecordError(path, number, "id", message)
    seen[row["id"]] = (path, number)
    return {name: row[name] for name in PREFERENCE_FIELDS}


def pair_key(row: dict[str, str]) -> str:
    """Rows built from one pair (its `-s1` and `-s0` rows) share a key; any other row is its own group."""
    stem, _, suffix = row["id"].rpartition("-")
    return stem if row["task"] == HARMLESS_TASK and suffix in ("s0", "s1") and stem else row["id"]


def _eval_draw(key: str, seed: int) -> float:
    """A pair's uniform draw in [0, 1) from its key and the seed alone, not from the rows around it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64


def _split(rows: list[dict[str, str]], eval_fraction: float, seed: int) -> dict[str, list[dict[str, str]]]:
    """Seeded shuffle; a pair goes to eval when its draw (`_eval_draw`) is under `eval_fraction`.

    Whole pairs move: the s1 and s0 rows of one prompt never land in different splits (eval would otherwise see a
    trained prompt). The draw depends on the pair's key only, so a CST build and a DPO build of the same input hold
    out the same pairs, and a DPO arm is never scored on pairs it trained on next to a CST arm.
    """
    order = np.random.default_rng(seed).permutation(len(rows))
    shuffled = [rows[int(index)] for index in order]
    if eval_fraction <= 0:
        return {"train": shuffled}
    draws = {key: _eval_draw(key, seed) for key in dict.fromkeys(pair_key(row) for row in shuffled)}
    chosen = {key for key, draw in draws.items() if draw < eval_fraction}
    if not chosen:  # at least one eval pair when asked for one
        chosen = {min(draws, key=draws.get)}
    if len(chosen) == len(draws):  # and never the whole set
        chosen.discard(max(draws, key=draws.get))
    splits = {"train": [row for row in shuffled if pair_key(row) not in chosen]}
    if chosen:
        splits["eval"] = [row for row in shuffled if pair_key(row) in chosen]
    return splits


def _system_label(system: str) -> str:
    return {SAFE_SYSTEM_PROMPT: "s1", UNCENSORED_SYSTEM_PROMPT: "s0"}.get(system, "other")


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
            {"label": _system_label(system), "system": _abbreviate(system), "rows": n}
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
    fingerprint = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    write_text_atomic(staging / "README.md", _dataset_card(splits, manifest["mode"], fingerprint))
    write_json_atomic(staging / MANIFEST, {**manifest, "files": files, "fingerprint": fingerprint})


def _write_parquet(rows: list[dict[str, str]], path: Path) -> None:
    table = pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)
    with atomic_file(path, "wb") as handle:  # fsynced: the folder rename must never expose an unflushed file
        pq.write_table(table, handle)


def _pair_folder_files(folder: Path, build: BuildConfig) -> tuple[list[Path], dict[str, Any] | None]:
    """A `cst generate` output folder: its shard files in shard order, and its manifest (None if it has none).

    A folder without shard files, or an unfinished generate run, would silently give fewer pairs: both are errors
    (the second unless build.allow_incomplete_pairs).
    """
    files = sorted(folder.glob("shard-*.jsonl"))
    if not files:
        raise RecordError(folder, None, None, "build.pairs names a folder without shard-*.jsonl files")
    generate = None
    if (folder / MANIFEST).is_file():
        try:
            generate = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise RecordError(folder / MANIFEST, None, None, f"not readable ({exc})") from None
        if isinstance(generate, dict) and generate.get("complete") is False and not build.allow_incomplete_pairs:
            done, total = len(generate.get("shards", {})), generate.get("num_shards", "?")
            raise RecordError(
                folder, None, None, f"an unfinished `cst generate` output ({done} of {total} shards); rerun "
                "`cst generate` to finish it, or set build.allow_incomplete_pairs=true to build from what is there"
            )
    return files, generate if isinstance(generate, dict) else None


def _read_pair_folder(folder: Path, build: BuildConfig, skips: SkipCounter, inputs: _Inputs) -> None:
    files, generate = _pair_folder_files(folder, build)
    before = len(inputs.pairs)
    for file in files:
        _read_pairs(str(file), build, skips, inputs)
    entry: dict[str, Any] = {"path": str(folder), "shard_files": len(files), "rows": len(inputs.pairs) - before}
    if generate is not None:
        entry.update(generate_complete=generate.get("complete"), generate_totals=generate.get("totals"))
    inputs.folders.append(entry)


def _read_inputs(build: BuildConfig, skips: SkipCounter) -> _Inputs:
    if not build.pairs and not build.released:
        # build.extra_tasks alone would be a set without a single CST pair.
        raise ConfigError("cst build needs input: set build.pairs (pair files) and/or build.released (paper's JSON)")
    if HARMLESS_TASK not in build.tasks:
        raise ConfigError(f"build.tasks must include {HARMLESS_TASK!r} (the task of the CST rows), got {build.tasks}")
    inputs = _Inputs()
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


def check_build_output(config: RunConfig) -> bool:
    """The output folder checks, made before any input is read; True when an earlier build output is replaced."""
    build = config.build
    inputs = [*build.pairs, *filter(None, [build.released]), *build.extra_tasks, config.run_dir]
    return check_output_dir(config.preference_dir, MANIFEST, STAGE, build.overwrite, inputs, "build.output",
                            "set build.overwrite=true")


def write_preference_set(output: str | os.PathLike, splits: dict[str, list[dict[str, str]]],
                         manifest: dict[str, Any], replace: bool = False) -> Path:
    """Write a preference folder (Parquet splits, card, manifest with checksums) atomically; `cst train` reads only
    folders written here. `replace` only after `check_output_dir` allowed it."""
    with atomic_directory(output, replace=replace) as staging:
        _write_folder(staging, splits, {"schema_version": MANIFEST_SCHEMA_VERSION, "stage": STAGE, **manifest})
    return Path(output)


def build_preference_set(config: RunConfig) -> BuildResult:
    """Read pairs / the released set / extra tasks, double (cst) or not (dpo), shuffle, split, write the folder."""
    build, skips = config.build, SkipCounter()
    replace = check_build_output(config)
    inputs = _read_inputs(build, skips)
    rows = _expand(inputs, build.mode)
    if not rows:
        raise ConfigError("cst build: no valid rows left in the inputs (all skipped?)")
    splits = _split(rows, build.eval_fraction, build.seed)
    counts = _counts(splits, len(inputs.pairs))
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "stage": STAGE,
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


class PreferenceSetError(UserError, ValueError):
    """A folder that is not (or no longer) what `cst build` wrote; the message names the file and the way out."""


def verify_preference_set(folder: Path, setting: str) -> None:
    """The folder's manifest lists every Parquet file with its sha256; a missing, changed or unlisted file is an error
    naming `setting` (training or evaluating on a half-copied or hand-edited set would go unnoticed otherwise)."""
    path, rebuild = folder / MANIFEST, "rebuild it with `cst build`"
    if not path.is_file():
        raise PreferenceSetError(f"{folder} ({setting}) has no manifest.json: not a `cst build` output; {rebuild}")
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError) as exc:
        raise PreferenceSetError(f"{path}: not a readable `cst build` manifest ({exc}); {rebuild}") from None
    if not isinstance(files, dict):
        raise PreferenceSetError(f"{path}: has no `files` checksums, so it is not a `cst build` manifest; {rebuild}")
    unlisted = sorted({str(p.relative_to(folder)) for p in (folder / "data").glob("*.parquet")} - set(files))
    if unlisted:
        raise PreferenceSetError(f"{folder / unlisted[0]}: not listed in {path}; {rebuild}")
    for name, digest in sorted(files.items()):
        if not (folder / name).is_file():
            raise PreferenceSetError(f"{folder / name}: listed in {path} but missing; {rebuild}")
        if file_sha256(folder / name) != digest:
            raise PreferenceSetError(f"{folder / name}: its sha256 does not match {path} (changed since built); "
                                     f"{rebuild}")


def load_preference_split(
    folder: str | os.PathLike, split: str = "train", cache_dir: str | None = None
) -> datasets.Dataset:
    """One split of a built preference set as a `datasets.Dataset` (local files only, nothing downloaded)."""
    import datasets

    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise FileNotFoundError(f"{folder} is not a preference set built by `cst build` (no manifest.json)")
    available = sorted(path.name.split("-")[0] for path in (folder / "data").glob("*.parquet"))
    if split not in available:
        raise ValueError(f"{folder} has no {split!r} split (available: {', '.join(available)})")
    return datasets.load_dataset(str(folder), split=split, cache_dir=cache_dir)
