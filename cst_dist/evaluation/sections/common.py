"""What the sections share: the held-out prompts, asset paths, file checks, and counts with Wilson intervals."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cst_dist.data.advbench import ASSETS, load_advbench, split_advbench
from cst_dist.evaluation.scores import condition_of, wilson_interval
from cst_dist.io import RecordError, read_rows

__all__ = ["ASSETS", "condition_of", "held_out_prompts", "read_checked", "safety_counts", "share", "tags"]


def held_out_prompts(max_prompts: int | None) -> list[dict[str, Any]]:
    """The 52 AdvBench test prompts of the paper's split (never trained on), in split order; the first
    `max_prompts` of them. Rows: advbench_row, goal."""
    test = [row for row in split_advbench(load_advbench()) if row["split"] == "test"]
    return test[:max_prompts]


def share(k: int, n: int) -> dict[str, Any]:
    """{"k", "n", "share" (None at n = 0), "ci95"}: a count and its Wilson 95% interval."""
    return {"k": k, "n": n, "share": k / n if n else None, "ci95": list(wilson_interval(k, n))}


def safety_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """{"n", "safe", "unsafe", "unparsed"} of judged rows (`safe`: true | false | null)."""
    rows = list(rows)
    safe = sum(row["safe"] is True for row in rows)
    unsafe = sum(row["safe"] is False for row in rows)
    return {"n": len(rows), "safe": safe, "unsafe": unsafe, "unparsed": len(rows) - safe - unsafe}


def tags(section: str, **values: Any) -> tuple[tuple[str, str], ...]:
    """A ConversationItem's tags: the section's name first, then the given values (as strings)."""
    return (("section", section), *((name, str(value)) for name, value in values.items()))


def read_checked(path: str | Path, fields: Sequence[str], setting: str) -> list[dict[str, Any]]:
    """Rows of a JSONL/JSON file, each with every field as a non-empty string; a bad row raises RecordError
    (file, row, field) that also names the setting pointing at the file; an empty file is an error."""
    rows = []
    for number, row in read_rows(path):
        for name in fields:
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise RecordError(path, number, name, f"missing or empty (needed by {setting}: {', '.join(fields)})")
        rows.append(row)
    if not rows:
        raise RecordError(path, None, None, f"no rows (needed by {setting}: {', '.join(fields)})")
    return rows
