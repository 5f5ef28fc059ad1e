"""The one reader of built preference sets: verification, fingerprint, split files and rows, pair keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cst_dist.build.run import build_preference_set
from cst_dist.config import RunConfig
from cst_dist.data.preference_set import (
    SPLIT_FILES,
    PreferenceSetError,
    files_fingerprint,
    fingerprint,
    load_preference_split,
    pair_key,
    read_split,
    split_files,
    verify_preference_set,
)
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT


@pytest.fixture
def built(tmp_path) -> Path:
    """6 pairs in CST mode with a third of them held out, plus one extra-task row."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"how to {i}?", "y0": f"sure {i}",
                                         "y1": f"no {i}"}) + "\n" for i in range(6)))
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"id": "t-s1", "system": "Be truthful.", "prompt": "q", "chosen": "a",
                                 "rejected": "b", "task": "truthfulness"}) + "\n")
    config = RunConfig.model_validate({"model": {"path": "unused"}, "run_dir": str(tmp_path / "run"), "build": {
        "pairs": [str(pairs)], "extra_tasks": [str(extra)], "eval_fraction": 0.3, "output": str(tmp_path / "set")}})
    return build_preference_set(config).output


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_fingerprint_equals_what_build_recorded(built):
    manifest = _manifest(built)
    assert sorted(manifest["files"]) == sorted(SPLIT_FILES.values())
    assert fingerprint(built) == manifest["fingerprint"] == files_fingerprint(manifest["files"])
    assert f"cst-dist preference set {manifest['fingerprint']}" in (built / "README.md").read_text()
    assert verify_preference_set(built, "train.data") == manifest
    # Any change to a split file changes the fingerprint.
    (built / SPLIT_FILES["eval"]).write_bytes((built / SPLIT_FILES["train"]).read_bytes())
    assert fingerprint(built) != manifest["fingerprint"]


def test_rows_of_a_split_name_their_file_and_row(built, tmp_path):
    rows = {name: read_split(built, name, "train.data") for name in ("train", "eval")}
    assert sum(len(split) for split in rows.values()) == 13
    for name, split in rows.items():
        assert [(file, number) for file, number, _ in split] == [
            (built / SPLIT_FILES[name], number) for number in range(1, len(split) + 1)]
    keys = {name: {pair_key(row) for _, _, row in split} for name, split in rows.items()}
    assert not keys["train"] & keys["eval"]  # both rows of a pair sit in one split
    assert keys["train"] | keys["eval"] == {*(f"p{i}" for i in range(6)), "t-s1"}
    loaded = load_preference_split(built, "eval", cache_dir=str(tmp_path / "hf"))  # the `datasets` view, same rows
    assert loaded["id"] == [row["id"] for _, _, row in rows["eval"]]


def test_pair_key():
    harmless = {"task": "harmless", "system": SAFE_SYSTEM_PROMPT}
    assert pair_key({**harmless, "id": "adv-3-s1"}) == pair_key({**harmless, "id": "adv-3-s0"}) == "adv-3"
    assert pair_key({**harmless, "id": "adv-3-p0"}) == "adv-3-p0"  # not a doubled row: its own group
    assert pair_key({**harmless, "id": "-s0", "system": UNCENSORED_SYSTEM_PROMPT}) == "-s0"  # no stem
    assert pair_key({"task": "truthfulness", "id": "t-s1"}) == "t-s1"  # other tasks are never doubled


def _one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message and "cst build" in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("case", ["not json", "a list", "no files", "another stage"])
def test_a_bad_manifest_is_one_line_naming_the_file(built, case):
    path = built / "manifest.json"
    manifest = _manifest(built)
    text, expected = {
        "not json": ("{torn", "not a readable `cst build` manifest"),
        "a list": ("[1, 2]", "not a readable `cst build` manifest"),
        "no files": (json.dumps({k: v for k, v in manifest.items() if k != "files"}), "has no `files` checksums"),
        "another stage": (json.dumps({**manifest, "stage": "generate"}), "written by stage 'generate'"),
    }[case]
    path.write_text(text)
    for read in (lambda: verify_preference_set(built, "eval.preference_data"),
                 lambda: read_split(built, "train", "eval.preference_data"),
                 lambda: load_preference_split(built, "train", cache_dir=str(built.parent / "hf"))):
        with pytest.raises(PreferenceSetError) as error:
            read()
        _one_line(error, f"{path}: ", expected)


def test_missing_and_foreign_sets(built, tmp_path):
    (built / SPLIT_FILES["eval"]).unlink()
    with pytest.raises(PreferenceSetError) as error:
        split_files(built, "train", "train.data")
    _one_line(error, f"{built / SPLIT_FILES['eval']}: listed in", "but missing")
    with pytest.raises(PreferenceSetError) as error:
        split_files(built, "eval", "eval.preference_data", hint="rerun `cst build` with build.eval_fraction=0.1")
    _one_line(error, f"{built} (eval.preference_data) has no 'eval' split", "build.eval_fraction=0.1")
    (tmp_path / "empty" / "data").mkdir(parents=True)
    (tmp_path / "empty" / "data" / "train-00000-of-00001.parquet").write_bytes(b"x")
    with pytest.raises(PreferenceSetError) as error:
        split_files(tmp_path / "empty", "train", "train.data")
    _one_line(error, f"{tmp_path / 'empty'} (train.data) has no manifest.json")
