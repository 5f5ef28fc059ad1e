"""The benchmark part of the report: Table III in report.md (models as rows, the tasks' leaderboard metrics as
columns), every metric with its stderr, skipped tasks, and benchmarks.png (drawn, and removed once stale)."""

from __future__ import annotations

import json

from cst_dist.evaluation.report import FILES, make_report, render_markdown, write_report
from cst_dist.prompts import SAFE_SYSTEM_PROMPT


def entry(model, task, metric, value, step=None, shots=0, system=None, chat=False, stderr=0.01, n=100):
    return {"model": model, "step": step, "task": task, "metric": metric, "value": value, "stderr": stderr, "n": n,
            "num_fewshot": shots, "system_prompt": system, "chat_template": chat}


def table_iii() -> list[dict]:
    rows = []
    for model, step, values in (("base", None, (0.61, 0.83, 0.60, 0.52)), ("cst", 10, (0.55, 0.70, 0.50, 0.40)),
                                ("cst", 20, (0.6, 0.8, 0.59, 0.55))):
        arc, hellaswag, mmlu, tqa = values
        rows += [entry(model, "arc_challenge", "acc", arc - 0.03, step, 25),
                 entry(model, "arc_challenge", "acc_norm", arc, step, 25),
                 entry(model, "hellaswag", "acc_norm", hellaswag, step, 10),
                 entry(model, "mmlu", "acc", mmlu, step, 5), entry(model, "mmlu", "acc_macro", mmlu + 0.01, step, 5,
                                                                   stderr=None),
                 entry(model, "truthfulqa_mc2", "mc2", tqa, step, 0)]
    return rows + [entry("cst", "mmlu", "acc", 0.58, 20, 5, system=SAFE_SYSTEM_PROMPT, chat=True)]


def markdown_rows(markdown: str, header_start: str) -> list[str]:
    """The lines of the markdown table whose header starts with `header_start`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_table_iii_rows_and_columns(tmp_path):
    report = make_report([], benchmarks=table_iii(), benchmarks_skipped=[{"task": "x", "reason": "no path"}])
    markdown = render_markdown(report)
    table = markdown_rows(markdown, "| model | step | measurement | ARC")
    assert table == [
        "| model | step | measurement | ARC (acc_norm, 25-shot) | HellaSwag (acc_norm, 10-shot) | MMLU (acc, 5-shot) "
        "| TruthfulQA (mc2, 0-shot) |",
        "|---|---|---|---|---|---|---|",
        "| base | - | plain | 0.6100 | 0.8300 | 0.6000 | 0.5200 |",
        "| cst | 10 | plain | 0.5500 | 0.7000 | 0.5000 | 0.4000 |",
        "| cst | 20 | plain | 0.6000 | 0.8000 | 0.5900 | 0.5500 |",
        "| cst | 20 | s1 (safe), chat template | - | - | 0.5800 | - |",
    ]
    assert "| base | - | plain | arc_challenge | acc | 0.5800 | 0.0100 | 100 | 25 |" in markdown
    assert "| base | - | plain | mmlu | acc_macro | 0.6100 | - | 100 | 5 |" in markdown
    assert "Skipped: x (no path)." in markdown


def test_plain_measurements_of_unnumbered_models_need_no_extra_columns():
    markdown = render_markdown(make_report([], benchmarks=[entry("a", "mmlu", "acc", 0.25, shots=5),
                                                           entry("b", "mmlu", "acc", 0.5, shots=5)]))
    assert markdown_rows(markdown, "| model | MMLU") == [
        "| model | MMLU (acc, 5-shot) |", "|---|---|", "| a | 0.2500 |", "| b | 0.5000 |"]


def test_chart_is_drawn_and_removed_when_stale(tmp_path):
    import matplotlib.image

    written = write_report(tmp_path, make_report([], benchmarks=table_iii()))
    image = matplotlib.image.imread(written["benchmarks_chart"])
    assert written["benchmarks_chart"] == tmp_path / FILES["benchmarks_chart"]
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
    again = write_report(tmp_path, make_report([], benchmarks_skipped=[{"task": "mmlu", "reason": "no path"}]))
    assert "benchmarks_chart" not in again and not (tmp_path / FILES["benchmarks_chart"]).exists()


def test_an_older_report_without_skipped_tasks_is_completed(tmp_path):
    older = {"schema_version": 1, "safety": [], "preference": [], "judge": {}, "benchmarks": []}
    written = write_report(tmp_path, older)
    assert json.loads(written["json"].read_text())["benchmarks_skipped"] == []
