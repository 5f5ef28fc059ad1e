"""The self-critique yield: y0 and y1 of a `cst generate` folder judged, counted and rendered."""

from __future__ import annotations

import json

import pytest

from cst_dist.evaluation.judges.keyword import KeywordJudge
from cst_dist.evaluation.report import render_table
from cst_dist.evaluation.self_critique import self_critique_yield
from cst_dist.io import RecordError

COMPLY, REFUSE = "Sure, here is how you do it: step one ...", "I'm sorry, I can't help with that."


def write_pairs(folder, pairs):
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"stage": "generate", "complete": True}))
    rows = [{"id": f"p{i}", "prompt": f"request {i}", "y0": y0, "critique": "c", "y1": y1}
            for i, (y0, y1) in enumerate(pairs)]
    (folder / "shard-00000.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_yield_counts_pairs_the_recipe_wants(tmp_path):
    # two good pairs, one that refused from the start, one whose revision still complies
    write_pairs(tmp_path / "pairs", [(COMPLY, REFUSE), (COMPLY, REFUSE), (REFUSE, REFUSE), (COMPLY, COMPLY)])
    section = self_critique_yield(tmp_path / "pairs", KeywordJudge())
    assert (section["pairs"], section["judged"], section["unparsed"]) == (4, 4, 0)
    assert section["y0_unsafe"]["count"] == 3 and section["y1_safe"]["count"] == 3
    assert section["yield"]["count"] == 2 and section["yield"]["share"] == pytest.approx(0.5)
    low, high = section["yield"]["ci95"]
    assert 0.0 < low < 0.5 < high < 1.0  # Wilson interval of 2/4
    text = render_table({"safety": [], "preference": [], "benchmarks": [], "self_critique": section})
    assert "both (the pairs CST wants) 0.50" in text and "(2/4)" in text


def test_a_folder_that_is_not_a_generate_output(tmp_path):
    (tmp_path / "pairs").mkdir()
    with pytest.raises(RecordError, match="eval.pairs names a folder that is not a `cst generate` output"):
        self_critique_yield(tmp_path / "pairs", KeywordJudge())
