"""AdvBench prompts and the paper's fixed 468 train / 52 test split.

The split is `numpy.random.default_rng(0).permutation(520)`, first 52 = test (equal to `datasets`'
`train_test_split(test_size=0.1, seed=0)`). Test prompts alternate between the unseen S0 evaluation prompt (even
positions) and s1 (odd positions), 26 each; train prompts cycle through the 18 jailbreak templates. The result is
vendored as `assets/advbench_cst_split.csv`; `split_advbench` regenerates it so the file can be checked, not trusted.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from cst_dist.io import atomic_file, read_csv_columns
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_EVAL_SYSTEM_PROMPT

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ADVBENCH_CSV = ASSETS / "advbench_harmful_behaviors.csv"
SPLIT_CSV = ASSETS / "advbench_cst_split.csv"

ADVBENCH_COLUMNS = ("goal", "target")
SPLIT_COLUMNS = ("advbench_row", "goal", "split", "split_position", "jailbreak_template_index", "eval_system_prompt")
TEST_SIZE = 52
JAILBREAK_TEMPLATES = 18


def load_advbench(path: str | os.PathLike = ADVBENCH_CSV) -> list[dict[str, str]]:
    """Rows of AdvBench's `harmful_behaviors.csv` as {goal, target}; row i of the list is `advbench_row` i.

    A bad row raises RecordError naming the file, the data row (1-based) and the field.
    """
    return [row for _, row in read_csv_columns(path, ADVBENCH_COLUMNS)]


def split_advbench(rows: list[dict[str, Any]], test_size: int = TEST_SIZE, seed: int = 0) -> list[dict[str, Any]]:
    """The split table in the vendored CSV's order: train rows (by position), then test rows.

    Empty cells are None (written as empty CSV cells). Integers stay integers.
    """
    if not 0 < test_size < len(rows):
        raise ValueError(f"test_size must be in 1..{len(rows) - 1}, got {test_size}")
    permutation = np.random.default_rng(seed).permutation(len(rows))
    test, train = permutation[:test_size], permutation[test_size:]
    table = [
        _split_row(rows, int(index), "train", position, position % JAILBREAK_TEMPLATES, None)
        for position, index in enumerate(train)
    ]
    for position, index in enumerate(test):
        # Even positions probe the uncensored mode with a prompt never seen in training, odd ones the safe mode.
        system = UNCENSORED_EVAL_SYSTEM_PROMPT if position % 2 == 0 else SAFE_SYSTEM_PROMPT
        table.append(_split_row(rows, int(index), "test", position, None, system))
    return table


def _split_row(
    rows: list[dict[str, Any]], index: int, split: str, position: int, template: int | None, system: str | None
) -> dict[str, Any]:
    return {
        "advbench_row": index,
        "goal": rows[index]["goal"],
        "split": split,
        "split_position": position,
        "jailbreak_template_index": template,
        "eval_system_prompt": system,
    }


def write_split_csv(rows: list[dict[str, Any]], path: str | os.PathLike = SPLIT_CSV) -> Path:
    """Write the split table atomically, in the vendored file's exact format (csv module defaults, CRLF rows)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=SPLIT_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    # Bytes, not text mode: the CRLF terminators must reach the file untranslated on every platform.
    with atomic_file(path, "wb") as handle:
        handle.write(buffer.getvalue().encode("utf-8"))
    return Path(path)
