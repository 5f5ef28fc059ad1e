"""`cst build`: CST doubling, the released set reproduced exactly, splits, the dataset card, and bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from cst_dist.build import run as build_run
from cst_dist.build.inputs import derive_id
from cst_dist.build.run import build_preference_set
from cst_dist.config import RunConfig
from cst_dist.data.preference_set import SPLIT_FILES, load_preference_split
from cst_dist.data.schemas import PREFERENCE_FIELDS
from cst_dist.io import RecordError, file_sha256
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT

FIELDS = ("system", "prompt", "chosen", "rejected")


def _config(tmp_path: Path, **build) -> RunConfig:
    return RunConfig.model_validate({"model": {"path": "unused"}, "run_dir": str(tmp_path / "run"), "build": build})


def _jsonl(path: Path, rows: list) -> str:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _pairs(n: int, prefix: str = "p") -> list[dict]:
    return [{"id": f"{prefix}{i}", "prompt": f"how to {i}?", "y0": f"sure {i}", "y1": f"no {i}"} for i in range(n)]


def _rows(folder: Path, split: str = "train") -> list[dict]:
    table = pq.read_table(folder / SPLIT_FILES[split])
    assert table.column_names == list(PREFERENCE_FIELDS)
    assert all(str(column.type) == "string" for column in table.columns)
    return table.to_pylist()


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def released_rows(released_json) -> list[dict]:
    return json.loads(Path(released_json).read_text())


@pytest.fixture(scope="module")
def released_builds(released_json, tmp_path_factory) -> dict:
    out = {}
    for mode in ("cst", "dpo"):
        config = _config(tmp_path_factory.mktemp(mode), released=str(released_json), mode=mode)
        out[mode] = build_preference_set(config)
    return out


def test_cst_reproduces_the_released_set_exactly(released_builds, released_rows, released_json):
    rows = _rows(released_builds["cst"].output)
    assert len(rows) == 1952
    released_harmless = Counter(tuple(r[k] for k in FIELDS) for r in released_rows if r["task"] == "harmless")
    assert Counter(tuple(r[k] for k in FIELDS) for r in rows if r["task"] == "harmless") == released_harmless
    assert sum(released_harmless.values()) == 936
    others = Counter(tuple(r[k] for k in (*FIELDS, "task")) for r in rows if r["task"] != "harmless")
    released_others = Counter(tuple(r[k] for k in (*FIELDS, "task")) for r in released_rows if r["task"] != "harmless")
    assert others == released_others and sum(others.values()) == 1016
    assert len({r["id"] for r in rows}) == 1952

    manifest = _manifest(released_builds["cst"].output)
    assert manifest["counts"] == released_builds["cst"].counts
    assert manifest["counts"]["rows"] == 1952 and manifest["counts"]["splits"] == {"train": 1952}
    assert manifest["counts"]["tasks"] == {"harmless": 936, "truthfulness": 1016}
    assert manifest["counts"]["pairs"] == 468
    labels = Counter()
    for entry in manifest["counts"]["system_prompts"]:
        labels[entry["label"]] += entry["rows"]
        assert len(entry["system"]) <= 60
    assert labels == {"s1": 468, "s0": 468, "other": 1016}
    assert manifest["released_inconsistent"] == 0 and manifest["skipped"]["total"] == 0
    assert manifest["sources"] == [
        {"kind": "released", "path": str(released_json), "sha256": file_sha256(released_json), "rows": 1952}
    ]
    assert manifest["mode"] == "cst" and manifest["seed"] == 0 and manifest["schema_version"] == 1


def test_dpo_keeps_only_the_safe_rows(released_builds, released_rows):
    rows = _rows(released_builds["dpo"].output)
    harmless = [r for r in rows if r["task"] == "harmless"]
    assert len(harmless) == 468 and len(rows) == 468 + 1016
    assert {r["system"] for r in harmless} == {SAFE_SYSTEM_PROMPT}
    released_s1 = Counter(
        tuple(r[k] for k in FIELDS)
        for r in released_rows
        if r["task"] == "harmless" and r["system"] == SAFE_SYSTEM_PROMPT
    )
    assert Counter(tuple(r[k] for k in FIELDS) for r in harmless) == released_s1
    counts = _manifest(released_builds["dpo"].output)["counts"]
    assert counts["tasks"] == {"harmless": 468, "truthfulness": 1016}
    assert "s0" not in {entry["label"] for entry in counts["system_prompts"]}


def test_load_dataset_returns_train_and_eval(released_json, tmp_path):
    result = build_preference_set(_config(tmp_path, released=str(released_json), eval_fraction=0.1))
    loaded = datasets.load_dataset(str(result.output), cache_dir=str(tmp_path / "hf"))
    assert set(loaded) == {"train", "eval"}
    assert (len(loaded["train"]), len(loaded["eval"])) == (1770, 182)  # 9.3% of the rows; pairs are drawn
    assert loaded["train"].column_names == list(PREFERENCE_FIELDS)
    assert _manifest(result.output)["counts"]["splits"] == {"train": 1770, "eval": 182}
    assert not set(loaded["train"]["id"]) & set(loaded["eval"]["id"])
    assert len(set(loaded["train"]["id"]) | set(loaded["eval"]["id"])) == 1952
    card = (result.output / "README.md").read_text()
    assert card.startswith("---\nconfigs:\n- config_name: default\n") and "path: data/eval-*" in card


def test_without_eval_fraction_there_is_only_train(tmp_path):
    pairs = _jsonl(tmp_path / "pairs.jsonl", _pairs(5))
    result = build_preference_set(_config(tmp_path, pairs=[pairs]))
    assert sorted(p.name for p in (result.output / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    loaded = datasets.load_dataset(str(result.output), cache_dir=str(tmp_path / "hf"))
    assert set(loaded) == {"train"} and len(loaded["train"]) == 10
    with pytest.raises(ValueError, match="no 'eval' split"):
        load_preference_split(result.output, "eval")


def test_shuffle_is_deterministic_and_seeded(tmp_path):
    pairs = _jsonl(tmp_path / "pairs.jsonl", _pairs(40))
    cache = str(tmp_path / "hf")

    def ids(seed: int, out: str) -> list[str]:
        config = _config(tmp_path, pairs=[pairs], seed=seed, eval_fraction=0.25, output=str(tmp_path / out),
                         overwrite=True)
        folder = build_preference_set(config).output
        return [
            *load_preference_split(folder, "train", cache)["id"],
            *load_preference_split(folder, "eval", cache)["id"],
        ]

    first, again, other = ids(0, "a"), ids(0, "b"), ids(1, "c")
    assert first == again
    assert first != other and sorted(first) == sorted(other)
    # Rebuilding into the same folder must not be served from datasets' cache of the previous build.
    assert ids(1, "a") == other


def test_pairs_become_two_opposite_rows(tmp_path):
    pairs = _pairs(3)
    path = _jsonl(tmp_path / "pairs.jsonl", pairs)
    result = build_preference_set(_config(tmp_path, pairs=[path]))
    rows = {r["id"]: r for r in _rows(result.output)}
    assert len(rows) == 6 and result.counts["pairs"] == 3
    for pair in pairs:
        safe, uncensored = rows[f"{pair['id']}-s1"], rows[f"{pair['id']}-s0"]
        assert (safe["system"], safe["chosen"], safe["rejected"]) == (SAFE_SYSTEM_PROMPT, pair["y1"], pair["y0"])
        assert (uncensored["system"], uncensored["chosen"], uncensored["rejected"]) == (
            UNCENSORED_SYSTEM_PROMPT,
            pair["y0"],
            pair["y1"],
        )
        assert safe["prompt"] == uncensored["prompt"] == pair["prompt"]
        assert safe["task"] == uncensored["task"] == "harmless"
    dpo = build_preference_set(_config(tmp_path, pairs=[path], mode="dpo", output=str(tmp_path / "dpo")))
    assert sorted(r["id"] for r in _rows(dpo.output)) == ["p0-s1", "p1-s1", "p2-s1"]


def test_a_generate_output_folder_is_read_shard_by_shard(tmp_path):
    folder = tmp_path / "pairs"
    (folder / "rejects").mkdir(parents=True)
    _jsonl(folder / "shard-00000.jsonl", [dict(p, critique="c", template_index=0) for p in _pairs(2, "a")])
    _jsonl(folder / "shard-00001.jsonl", _pairs(1, "b"))
    _jsonl(folder / "rejects" / "shard-00000.jsonl", _pairs(1, "rejected"))  # never read as pairs
    result = build_preference_set(_config(tmp_path, pairs=[str(folder)]))
    assert sorted(r["id"] for r in _rows(result.output)) == ["a0-s0", "a0-s1", "a1-s0", "a1-s1", "b0-s0", "b0-s1"]


def test_extra_tasks_are_mixed_in_unchanged(tmp_path):
    pairs = _jsonl(tmp_path / "pairs.jsonl", _pairs(2))
    extra_rows = [
        {"id": "t1", "system": "Be truthful.", "prompt": "q1", "chosen": "a", "rejected": "b", "task": "truthfulness"},
        {"system": "Be truthful.", "prompt": "q2", "chosen": "c", "rejected": "d", "task": "truthfulness"},
    ]
    extra = _jsonl(tmp_path / "extra.jsonl", extra_rows)
    result = build_preference_set(_config(tmp_path, pairs=[pairs], extra_tasks=[extra]))
    rows = [r for r in _rows(result.output) if r["task"] == "truthfulness"]
    assert len(rows) == 2  # never doubled
    assert {r["id"] for r in rows} >= {"t1"}
    derived = next(r["id"] for r in rows if r["prompt"] == "q2")
    assert derived == derive_id("Be truthful.", "q2", "c", "d", "truthfulness")
    assert [s["rows"] for s in _manifest(result.output)["sources"]] == [2, 2]


def test_released_inconsistencies_are_counted(tmp_path):
    def row(system, prompt, chosen, rejected):
        return {"system": system, "prompt": prompt, "chosen": chosen, "rejected": rejected, "task": "harmless"}

    released = tmp_path / "released.json"
    released.write_text(
        json.dumps(
            [
                row(SAFE_SYSTEM_PROMPT, "x", "safe x", "bad x"),
                row(UNCENSORED_SYSTEM_PROMPT, "x", "bad x", "safe x"),  # the exact reverse: fine
                row(SAFE_SYSTEM_PROMPT, "y", "safe y", "bad y"),
                row(UNCENSORED_SYSTEM_PROMPT, "y", "other y", "safe y"),  # not the reverse
                row(UNCENSORED_SYSTEM_PROMPT, "z", "bad z", "safe z"),  # no s1 row
            ]
        )
    )
    result = build_preference_set(_config(tmp_path, released=str(released)))
    assert _manifest(result.output)["released_inconsistent"] == 2
    rows = _rows(result.output)
    assert len(rows) == 4 and {r["prompt"] for r in rows} == {"x", "y"}


def _bad_inputs(tmp_path: Path) -> dict:
    """name -> (build settings, expected (file, row, field), skip reason or None)."""
    good = _pairs(3)
    not_json = _jsonl(tmp_path / "not_json.jsonl", [good[0], "{not json", good[2]])
    missing = _jsonl(tmp_path / "missing.jsonl", [good[0], {k: v for k, v in good[1].items() if k != "y1"}, good[2]])
    empty = _jsonl(tmp_path / "empty.jsonl", [good[0], good[1], {**good[2], "y0": "  "}])
    pairs = _jsonl(tmp_path / "pairs.jsonl", good)
    task = {"system": "s", "prompt": "q", "chosen": "a", "rejected": "b", "task": "poetry"}
    unknown = _jsonl(tmp_path / "unknown_task.jsonl", [{**task, "task": "truthfulness"}, task])
    return {
        "not_json": ({"pairs": [not_json]}, (not_json, 2, None), "not_json.jsonl: row"),
        "missing_field": ({"pairs": [missing]}, (missing, 2, "y1"), "missing.jsonl: y1"),
        "empty_field": ({"pairs": [empty]}, (empty, 3, "y0"), "empty.jsonl: y0"),
        "unknown_task": (
            {"pairs": [pairs], "extra_tasks": [unknown]},
            (unknown, 2, "task"),
            "unknown_task.jsonl: task",
        ),
        "missing_file": (
            {"pairs": [str(tmp_path / "absent.jsonl")]},
            (str(tmp_path / "absent.jsonl"), None, None),
            None,
        ),
    }


@pytest.mark.parametrize("case", ["not_json", "missing_field", "empty_field", "unknown_task", "missing_file"])
def test_bad_input_names_file_row_and_field(tmp_path, case):
    settings, (path, row, field), _ = _bad_inputs(tmp_path)[case]
    config = _config(tmp_path, **settings)
    with pytest.raises(RecordError) as info:
        build_preference_set(config)
    assert (info.value.path, info.value.row, info.value.field) == (path, row, field)
    message = str(info.value)
    assert path in message
    assert (f"row {row}" in message) if row else "does not exist" in message
    assert (repr(field) in message) if field else True
    assert not config.preference_dir.exists()
    assert not list(config.preference_dir.parent.glob(".preference.*"))  # no staging folder left behind


@pytest.mark.parametrize("case", ["not_json", "missing_field", "empty_field", "unknown_task"])
def test_skip_policy_counts_bad_rows(tmp_path, case):
    settings, _, reason = _bad_inputs(tmp_path)[case]
    result = build_preference_set(_config(tmp_path, on_bad_row="skip", **settings))
    skipped = _manifest(result.output)["skipped"]
    assert skipped == {"total": 1, "by_reason": {reason: 1}}
    assert result.skips.total == 1
    assert result.counts["pairs"] == (3 if case == "unknown_task" else 2)


def test_duplicate_ids_name_both_files(tmp_path):
    first = _jsonl(tmp_path / "first.jsonl", _pairs(2))
    second = _jsonl(tmp_path / "second.jsonl", [_pairs(3)[2], _pairs(2)[1]])
    with pytest.raises(RecordError) as info:
        build_preference_set(_config(tmp_path, pairs=[first, second]))
    assert (info.value.path, info.value.row, info.value.field) == (second, 2, "id")
    assert "'p1-s1'" in str(info.value) and f"first seen in {first}, row 2" in str(info.value)


def test_no_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"build\.pairs.*build\.released"):
        build_preference_set(_config(tmp_path))


def test_failed_build_leaves_the_previous_set_untouched(tmp_path, monkeypatch):
    config = _config(tmp_path, pairs=[_jsonl(tmp_path / "pairs.jsonl", _pairs(4))])
    before = _snapshot(build_preference_set(config).output)
    settings, _, _ = _bad_inputs(tmp_path)["missing_field"]
    with pytest.raises(RecordError):
        build_preference_set(_config(tmp_path, overwrite=True, **settings))
    assert _snapshot(config.preference_dir) == before

    # A failure while writing (after the Parquet files are in the staging folder) changes nothing either.
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(build_run, "write_json_atomic", broken)
    with pytest.raises(OSError, match="disk full"):
        build_preference_set(_config(tmp_path, pairs=[_jsonl(tmp_path / "more.jsonl", _pairs(9))], overwrite=True))
    assert _snapshot(config.preference_dir) == before
    assert sorted(p.name for p in config.preference_dir.parent.iterdir()) == ["preference"]


def test_eval_split_keeps_the_two_rows_of_a_pair_together(released_json, tmp_path):
    result = build_preference_set(_config(tmp_path, released=str(released_json), eval_fraction=0.1))
    splits = {name: load_preference_split(result.output, name) for name in ("train", "eval")}
    harmless = {name: [i for i, t in zip(split["id"], split["task"], strict=True) if t == "harmless"]
                for name, split in splits.items()}
    stems = {name: {i.rsplit("-", 1)[0] for i in ids} for name, ids in harmless.items()}
    assert harmless["eval"] and not stems["train"] & stems["eval"]  # no prompt in both splits
    assert len(harmless["eval"]) == 2 * len(stems["eval"])  # each eval pair brings its s1 and s0 rows


def test_cst_and_dpo_builds_hold_out_the_same_pairs(released_json, tmp_path):
    # Arms compared side by side (the pipeline) are scored on one held-out set: neither may have trained on it.
    def stems(mode: str) -> dict[str, set[str]]:
        result = build_preference_set(_config(tmp_path / mode, released=str(released_json), mode=mode,
                                              eval_fraction=0.1))
        splits = {name: load_preference_split(result.output, name) for name in ("train", "eval")}
        return {name: {i.rsplit("-", 1)[0] if t == "harmless" else i
                       for i, t in zip(rows["id"], rows["task"], strict=True)} for name, rows in splits.items()}

    cst, dpo = stems("cst"), stems("dpo")
    assert cst["eval"] == dpo["eval"] and len(cst["eval"]) > 100
    assert not cst["eval"] & dpo["train"] and not dpo["eval"] & cst["train"]
