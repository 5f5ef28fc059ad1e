"""The report: report.json round-trips in its schema, report.md has Table I's rows, the PNG charts are real images."""

from __future__ import annotations

import json

import pytest

from cst_dist.evaluation.charts import preference_bar_entries
from cst_dist.evaluation.report import (
    FILES,
    SCHEMA_VERSION,
    check_report,
    make_report,
    render_markdown,
    render_table,
    write_report,
)
from cst_dist.evaluation.scores import score_safety, wilson_interval
from cst_dist.prompts import (
    SAFE_SYSTEM_PROMPT,
    TRUTHFUL_SYSTEM_PROMPT,
    UNCENSORED_EVAL_SYSTEM_PROMPT,
    UNCENSORED_SYSTEM_PROMPT,
)


def _rows(system: str, safe: int, unsafe: int, unparsed: int = 0) -> list[dict]:
    verdicts = [True] * safe + [False] * unsafe + [None] * unparsed
    return [{"system": system, "prompt": f"p{i}", "answer": "a", "safe": v} for i, v in enumerate(verdicts)]


def _cell(model: str, s0_uncensored: int, s1_safe: int, judge: str, step: int | None = None, n: int = 26):
    rows = _rows(UNCENSORED_EVAL_SYSTEM_PROMPT, n - s0_uncensored, s0_uncensored) + _rows(SAFE_SYSTEM_PROMPT,
                                                                                          s1_safe, n - s1_safe)
    return score_safety(rows, model, judge, step)


def table_i_report() -> dict:
    """Table I's four models under the paper's labels, plus a run scored at three steps by a second judge."""
    safety = []
    for model, s0, s1 in [("OpenHermes DPO", 3, 25), ("OpenHermes CST", 26, 26), ("SOLAR DPO", 0, 26),
                          ("SOLAR CST", 25, 24)]:
        safety += _cell(model, s0, s1, "gpt-4 (paper labels)")
    for step, s0, s1 in [(10, 2, 20), (20, 9, 22), (30, 17, 25)]:
        safety += _cell("tiny run", s0, s1, "classifier", step=step)
    safety += score_safety(_rows(UNCENSORED_SYSTEM_PROMPT, 4, 20, 2) + _rows(TRUTHFUL_SYSTEM_PROMPT, 5, 1),
                           "tiny run", "classifier", step=30)
    preference = [
        {"model": "tiny run", "step": 30, "system_prompt": SAFE_SYSTEM_PROMPT, "condition": "S1", "task": "harmless",
         "n": 12, "accuracy": 0.75},
        {"model": "tiny run", "step": 30, "system_prompt": UNCENSORED_EVAL_SYSTEM_PROMPT, "condition": "S0",
         "task": "harmless", "n": 12, "accuracy": 0.5},
        {"model": "tiny run", "step": 30, "system_prompt": None, "task": "truthfulness", "n": 4, "accuracy": 1.0},
    ]
    return make_report(safety, preference, judge={"kind": "classifier", "path": "judge/classifier.json"})


def _table_rows(markdown: str, header_start: str, after: str = "") -> list[list[str]]:
    """The cells of the first markdown table (after the line `after`) whose header starts with `header_start`."""
    lines = markdown.splitlines()
    first = lines.index(after) if after else 0
    start = next(i for i, line in enumerate(lines) if i >= first and line.startswith(f"| {header_start}"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_report_json_round_trips(tmp_path):
    report = table_i_report()
    paths = write_report(tmp_path / "eval", report)
    assert paths["json"] == tmp_path / "eval" / FILES["json"]
    loaded = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert loaded == report
    assert loaded["schema_version"] == SCHEMA_VERSION and loaded["benchmarks"] == []
    assert set(loaded) == {"schema_version", "safety", "preference", "judge", "benchmarks", "benchmarks_skipped"}
    check_report(loaded)
    # Atomic writes leave no temporary files behind (and no benchmark chart without benchmarks).
    charts = {kind: name for kind, name in FILES.items() if kind != "benchmarks_chart"}
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == sorted(charts.values())


def test_a_partial_report_is_completed_on_write(tmp_path):
    safety = table_i_report()["safety"][:2]
    paths = write_report(tmp_path, {"safety": safety, "judge": {"kind": "labels"}})
    loaded = json.loads(paths["json"].read_text())
    assert loaded == {"schema_version": 1, "safety": safety, "preference": [], "judge": {"kind": "labels"},
                      "benchmarks": [], "benchmarks_skipped": []}
    with pytest.raises(ValueError, match="schema_version"):
        write_report(tmp_path, {"schema_version": 2, "safety": safety})


def test_check_report_refuses_another_schema():
    with pytest.raises(ValueError, match="schema_version"):
        check_report({**table_i_report(), "schema_version": 2})
    with pytest.raises(ValueError, match="preference"):
        check_report({**table_i_report(), "preference": None})


def test_main_table_has_table_i_rows():
    text = render_table(table_i_report())
    paper = _table_rows(text, "model | S0")
    assert paper == [
        ["OpenHermes DPO", "0.12 [0.04, 0.29] n=26", "0.96 [0.81, 0.99] n=26"],
        ["OpenHermes CST", "1.00 [0.87, 1.00] n=26", "1.00 [0.87, 1.00] n=26"],
        ["SOLAR DPO", "0.00 [0.00, 0.13] n=26", "1.00 [0.87, 1.00] n=26"],
        ["SOLAR CST", "0.96 [0.81, 0.99] n=26", "0.92 [0.76, 0.98] n=26"],
    ]
    # The second judge's table: the run at its latest step, with a step column.
    run = _table_rows(text, "model | step | S0")
    assert run == [["tiny run", "30", "0.65 [0.46, 0.81] n=26", "0.96 [0.81, 0.99] n=26"]]
    # What `cst eval` and `cst pipeline` print holds every view: preference accuracy per system prompt too.
    preference = _table_rows(text, "model | step | s1")
    assert preference == [["tiny run", "30", "0.75", "0.50", "1.00"]]


def test_markdown_has_every_row_preference_and_steps():
    markdown = render_markdown(table_i_report())
    every = _table_rows(markdown, "model | step | judge")
    assert len(every) == 8 + 6 + 2  # Table I's 8 cells, the run's 3 steps x 2 prompts, its s0 and truthful rows
    s0_train = next(row for row in every if row[4] == "s0 (uncensored, training)")
    assert s0_train[5:9] == ["26", "4", "20", "2"]  # n, safe, unsafe, unparsed
    assert s0_train[9] == f"{20 / 24:.3f}"
    truthful = next(row for row in every if row[4].startswith('"You are an unbiased'))
    assert truthful[3] == "-" and truthful[9] == f"{5 / 6:.3f}"
    preference = _table_rows(markdown, "model | step | task")
    assert [row[2:] for row in preference] == [
        ["harmless", "s1 (safe)", "S1", "12", "0.750"],
        ["harmless", "S0 eval (uncensored, unseen)", "S0", "12", "0.500"],
        ["truthfulness", "(per task)", "-", "4", "1.000"],
    ]
    steps = _table_rows(markdown, "model | step | S0", after="## Safety over training steps")
    assert [row[:2] for row in steps] == [["tiny run", "10"], ["tiny run", "20"], ["tiny run", "30"]]
    assert steps[0][2].startswith("0.08 ") and steps[2][3].startswith("0.96 ")


def test_training_s0_stands_in_marked_when_the_unseen_prompt_is_missing():
    safety = score_safety(_rows(UNCENSORED_SYSTEM_PROMPT, 1, 3) + _rows(SAFE_SYSTEM_PROMPT, 4, 0), "m", "keyword")
    text = render_table(make_report(safety))
    assert _table_rows(text, "model | S0") == [["m", "0.75 [0.30, 0.95] n=4 †", "1.00 [0.51, 1.00] n=4"]]
    assert "training prompt s0" in text


def test_pipes_and_unparsed_are_shown_safely():
    safety = score_safety(_rows("Be | odd", 1, 1, 3) + _rows(SAFE_SYSTEM_PROMPT, 0, 0, 2), "m|x", None)
    markdown = render_markdown(make_report(safety))
    every = _table_rows(markdown, "model | step | judge")
    assert len(every) == 2 and every[0][4] == '"Be \\| odd"' and every[1][9] == "n/a"
    assert _table_rows(markdown, "model | S0")[0][2] == "n/a (n=0, 2 unparsed)"


def _image(path):
    from matplotlib.image import imread

    assert path.is_file() and path.stat().st_size > 0
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image


def test_charts_are_written_and_open(tmp_path):
    paths = write_report(tmp_path, table_i_report())
    bars, lines = _image(paths["safety_chart"]), _image(paths["steps_chart"])
    # Two judges: two bar panels stacked; one judge scored several steps: one line panel.
    assert bars.shape[0] > 700 and bars.shape[1] >= 700 and 350 < lines.shape[0] < 700
    assert bars[..., :3].std() > 0.05  # not a blank canvas


def test_preference_chart_draws_harmless_accuracies_with_wilson_whiskers(tmp_path):
    report = table_i_report()
    bars = preference_bar_entries(report["preference"])
    # Per-prompt harmless rows become bars (9/12 and 6/12 ranked right); the pooled truthfulness row does not.
    assert [(b["system_prompt"], b["score"]) for b in bars] == [(SAFE_SYSTEM_PROMPT, 0.75),
                                                                (UNCENSORED_EVAL_SYSTEM_PROMPT, 0.5)]
    assert bars[0]["ci95"] == pytest.approx(list(wilson_interval(9, 12)))
    paths = write_report(tmp_path, report)
    assert _image(paths["preference_chart"])[..., :3].std() > 0.05
    # Without preference accuracy the chart goes, stale copy included.
    paths = write_report(tmp_path, make_report(report["safety"], judge=report["judge"]))
    assert "preference_chart" not in paths and not (tmp_path / FILES["preference_chart"]).exists()


def test_a_single_step_report_draws_no_steps_chart_and_drops_a_stale_one(tmp_path):
    write_report(tmp_path, table_i_report())
    assert (tmp_path / FILES["steps_chart"]).is_file()
    single = make_report(_cell("m", 5, 20, "classifier", step=100))
    paths = write_report(tmp_path, single)
    assert "steps_chart" not in paths and not (tmp_path / FILES["steps_chart"]).exists()
    assert "Safety over training steps" not in paths["markdown"].read_text()
    _image(paths["safety_chart"])


def test_an_empty_report_writes_json_and_markdown_only(tmp_path):
    paths = write_report(tmp_path, make_report([]))
    assert set(paths) == {"json", "markdown"}
    assert "No safety scores." in paths["markdown"].read_text()


def test_a_run_scored_over_steps_starts_at_the_model_it_trained_from(tmp_path):
    from cst_dist.evaluation.runner import starting_points
    from cst_dist.evaluation.targets import EvalTarget

    base, other = tmp_path / "base", tmp_path / "other"
    safety = _cell("base", 18, 7, "j") + _cell("other", 1, 1, "j") + _cell("cst", 20, 24, "j", step=40)
    targets = [EvalTarget("base", base), EvalTarget("other", other), EvalTarget("cst", tmp_path / "c", 40, base),
               EvalTarget("solo", tmp_path / "s", 40, tmp_path / "not-evaluated")]
    added = starting_points(safety, targets)
    assert [(e["model"], e["step"], e["start"]) for e in added] == [("cst", 0, "base")] * 2
    assert sorted(e["score"] for e in added) == sorted(e["score"] for e in safety if e["model"] == "base")
    text = render_markdown(make_report(safety + added))
    assert "| cst | 0 |" in text and "| cst | 40 |" in text
