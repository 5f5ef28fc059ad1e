"""The AdvBench split is regenerated from the paper's recipe and must equal the reference file, cell for cell."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from cst_dist.data.advbench import (
    ADVBENCH_CSV,
    SPLIT_COLUMNS,
    SPLIT_CSV,
    load_advbench,
    split_advbench,
    write_split_csv,
)
from cst_dist.io import RecordError
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_EVAL_SYSTEM_PROMPT


def _as_strings(rows):
    return [{key: "" if value is None else str(value) for key, value in row.items()} for row in rows]


def _read_csv(path):
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == SPLIT_COLUMNS
        return list(reader)


@pytest.fixture(scope="module")
def split():
    return split_advbench(load_advbench())


def test_load_advbench_has_520_goals():
    rows = load_advbench()
    assert len(rows) == 520
    assert set(rows[0]) == {"goal", "target"}
    assert rows[0]["goal"].startswith("Write a script that can exploit vulnerabilities")


def test_split_equals_reference_file(split, shared_advbench_split):
    reference = _read_csv(shared_advbench_split)
    generated = _as_strings(split)
    assert len(generated) == len(reference) == 520
    for position, (mine, theirs) in enumerate(zip(generated, reference, strict=True)):
        assert list(mine) == list(SPLIT_COLUMNS)
        assert mine == theirs, f"row {position} differs"


def test_vendored_split_equals_generated(split):
    assert _read_csv(SPLIT_CSV) == _as_strings(split)


def test_write_split_csv_reproduces_the_file_byte_for_byte(split, tmp_path):
    target = write_split_csv(split, tmp_path / "split.csv")
    assert target.read_bytes() == SPLIT_CSV.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["split.csv"]  # no temporary left behind


def test_test_prompts_alternate_26_26(split):
    test = [row for row in split if row["split"] == "test"]
    assert [row["split_position"] for row in test] == list(range(52))
    assert Counter(row["eval_system_prompt"] for row in test) == {
        UNCENSORED_EVAL_SYSTEM_PROMPT: 26,
        SAFE_SYSTEM_PROMPT: 26,
    }
    for row in test:
        expected = UNCENSORED_EVAL_SYSTEM_PROMPT if row["split_position"] % 2 == 0 else SAFE_SYSTEM_PROMPT
        assert row["eval_system_prompt"] == expected
        assert row["jailbreak_template_index"] is None


def test_train_and_test_are_disjoint_and_cover_advbench(split):
    train = {row["advbench_row"] for row in split if row["split"] == "train"}
    test = {row["advbench_row"] for row in split if row["split"] == "test"}
    assert len(train) == 468 and len(test) == 52
    assert not train & test
    assert train | test == set(range(520))
    goals = load_advbench()
    assert all(goals[row["advbench_row"]]["goal"] == row["goal"] for row in split)


def test_train_rows_cycle_jailbreak_templates(split):
    train = [row for row in split if row["split"] == "train"]
    assert [row["split_position"] for row in train] == list(range(468))
    assert all(row["jailbreak_template_index"] == row["split_position"] % 18 for row in train)
    assert all(row["eval_system_prompt"] is None for row in train)


def test_other_seed_gives_other_split():
    rows = load_advbench()
    assert [r["advbench_row"] for r in split_advbench(rows, seed=1)] != [
        r["advbench_row"] for r in split_advbench(rows)
    ]


def test_bad_advbench_file_names_file_row_and_field(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("goal,target\nfine,ok\n,missing goal\n")
    with pytest.raises(RecordError) as info:
        load_advbench(bad)
    assert (info.value.path, info.value.row, info.value.field) == (str(bad), 2, "goal")
    with pytest.raises(RecordError, match="does not exist"):
        load_advbench(tmp_path / "absent.csv")
    assert ADVBENCH_CSV.is_file()
