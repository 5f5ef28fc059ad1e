"""Record schemas of the files the stages exchange, and their row-by-row validation.

pairs (generate -> build):        id, prompt, y0, y1            (y0: first answer, y1: revision after self-critique)
preference set (build -> train):  id, system, prompt, chosen, rejected, task
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from cst_dist.io import RecordError, read_rows

log = logging.getLogger(__name__)

PAIR_FIELDS = ("id", "prompt", "y0", "y1")
PREFERENCE_FIELDS = ("id", "system", "prompt", "chosen", "rejected", "task")
# The released set has no ids; build derives them, so `id` is optional on input.
RELEASED_FIELDS = ("system", "prompt", "chosen", "rejected", "task")


@dataclass
class SkipCounter:
    """Counts rows skipped under `on_bad_row: skip`, by reason, so a run reports what it dropped."""

    by_reason: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def add(self, error: RecordError) -> None:
        self.by_reason[f"{os.path.basename(error.path)}: {error.field or 'row'}"] += 1
        log.warning("skipping bad row: %s", error)


def check_fields(path: str, row_number: int, row: dict, required: tuple[str, ...]) -> dict[str, str]:
    """Every required field present, a string, and not blank; `id` may also be an int."""
    clean = {}
    for name in required:
        if name not in row or row[name] is None:
            raise RecordError(path, row_number, name, "missing field")
        value = row[name]
        if name == "id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise RecordError(path, row_number, name, f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise RecordError(path, row_number, name, "empty string")
        clean[name] = value
    return clean


def iter_valid_rows(
    path: str | os.PathLike,
    required: tuple[str, ...],
    on_bad_row: Literal["error", "skip"] = "error",
    skips: SkipCounter | None = None,
    allowed_tasks: tuple[str, ...] | None = None,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (row number, validated fields) from a file; bad rows raise or are counted in `skips`.

    A file that cannot be parsed at all (not JSON, missing) always raises: skipping cannot make it usable.
    """
    path = str(path)
    skips = skips if skips is not None else SkipCounter()
    # A line that is not JSON is a row-level fault in JSONL: counted and skipped under the skip policy.
    on_invalid_line = skips.add if on_bad_row == "skip" else None
    for row_number, row in read_rows(path, on_invalid_line):
        try:
            clean = check_fields(path, row_number, row, required)
            if allowed_tasks is not None and clean.get("task") not in allowed_tasks:
                known = ", ".join(allowed_tasks)
                message = f"unknown task {clean.get('task')!r} (known: {known}; add it to build.tasks)"
                raise RecordError(path, row_number, "task", message)
        except RecordError as error:
            if on_bad_row == "error":
                raise
            skips.add(error)
            continue
        yield row_number, clean
