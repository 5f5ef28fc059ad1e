"""`cst judge CONFIG --input FILE --output FILE`: judge any file of (prompt, answer) rows with the configured judge.

Input: JSONL (or JSON / Parquet) rows with `prompt` and `answer`, optionally `id` and `system`; other fields are
kept. Output: the same rows with `safe` (true | false | null = unparsed) and `judge_raw`, written atomically; the
input is never overwritten. A row that already holds a `safe` label keeps it as `reference_safe`, and the summary
then reports the judge's agreement with those labels (how to measure a judge against GPT-4's verdicts).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cst_dist.config import RunConfig
from cst_dist.data.schemas import check_fields
from cst_dist.evaluation.judges import build_judge, judge_info
from cst_dist.io import OutputError, RecordError, check_writable_dir, read_rows, write_jsonl_atomic

log = logging.getLogger(__name__)


def default_train_data(config: RunConfig) -> Path | None:
    """The classifier's training data when eval.judge.train_data is unset: build.released if it exists, else the
    run's preference set (its train split) if it exists."""
    if config.build.released and Path(config.build.released).expanduser().is_file():
        return Path(config.build.released).expanduser()
    return config.preference_dir if config.preference_dir.is_dir() else None


def read_judge_rows(path: Path) -> list[dict[str, Any]]:
    """Rows with a non-blank `prompt` and a string `answer` (may be empty: models do answer nothing)."""
    rows = []
    for number, raw in read_rows(path):
        check_fields(str(path), number, raw, ("prompt",))
        if not isinstance(raw.get("answer"), str):
            answer = raw.get("answer")
            problem = "missing field" if answer is None else f"expected a string, got {type(answer).__name__}"
            raise RecordError(path, number, "answer", problem)
        if raw.get("system") is not None and not isinstance(raw["system"], str):
            raise RecordError(path, number, "system", f"expected a string, got {type(raw['system']).__name__}")
        if raw.get("id") is not None:
            check_fields(str(path), number, raw, ("id",))
        rows.append(raw)
    return rows


def _check_paths(input_path: Path, output_path: Path) -> None:
    if output_path.resolve() == input_path.resolve() or (output_path.exists() and output_path.samefile(input_path)):
        raise OutputError(f"--output {output_path} is the input file; the input is never overwritten: choose "
                          "another output file")
    if output_path.is_dir():
        raise OutputError(f"--output {output_path} is a folder; give a file name (e.g. judged.jsonl)")
    check_writable_dir(output_path.parent, "--output folder")  # before any judging, not after it


def judge_file(config: RunConfig, input_path: str | Path, output_path: str | Path) -> dict[str, Any]:
    """Judge every row of `input_path` and write them, with `safe` and `judge_raw`, to `output_path`.

    Returns {rows, safe, unsafe, unparsed} (and agreement / labelled when the input held `safe` labels), plus the
    judge's name and the output path.
    """
    input_path, output_path = Path(input_path).expanduser(), Path(output_path).expanduser()
    _check_paths(input_path, output_path)
    rows = read_judge_rows(input_path)
    judge = build_judge(config.eval.judge, workdir=config.layout.eval, train_data=default_train_data(config))
    verdicts = judge.judge(rows) if rows else []
    out = []
    for row, verdict in zip(rows, verdicts, strict=True):
        row = dict(row)
        if "safe" in row:
            row["reference_safe"] = row.pop("safe")
        out.append({**row, "safe": verdict["safe"], "judge_raw": verdict["judge_raw"]})
    write_jsonl_atomic(output_path, out)
    return _summary(out, judge_info(judge), output_path)


def _is_label(value: Any) -> bool:
    """true / false, or 1 / 0 (the paper's judged generations score 1 = safe)."""
    return type(value) in (bool, int) and value in (0, 1)


def _summary(rows: list[dict[str, Any]], info: dict[str, Any], output_path: Path) -> dict[str, Any]:
    counts: dict[str, Any] = {
        "rows": len(rows),
        "safe": sum(row["safe"] is True for row in rows),
        "unsafe": sum(row["safe"] is False for row in rows),
        "unparsed": sum(row["safe"] is None for row in rows),
    }
    labelled = [row for row in rows if _is_label(row.get("reference_safe")) and row["safe"] is not None]
    if labelled:
        counts["labelled"] = len(labelled)
        counts["agreement"] = round(sum(row["safe"] == row["reference_safe"] for row in labelled) / len(labelled), 4)
    return {**counts, "judge": info["name"], "output": str(output_path)}
