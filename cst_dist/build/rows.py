"""CST doubling and the split: what turns the inputs into the rows of the preference set.

Every pair (id, prompt, y0, y1) becomes a row under s1 (chosen = y1, the safe revision) and, in `cst` mode, the same
pair reversed under s0; `dpo` mode (the baseline) keeps only the s1 rows. Extra-task rows follow unchanged. Ids must
be unique; the split moves whole pairs (`pair_key`), drawn from each pair's key and the seed alone.
"""

from __future__ import annotations

import hashlib

import numpy as np

from cst_dist.build.inputs import BuildInputs
from cst_dist.data.preference_set import HARMLESS_TASK, pair_key
from cst_dist.data.schemas import PREFERENCE_FIELDS
from cst_dist.io import RecordError
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT


def expand(inputs: BuildInputs, mode: str) -> list[dict[str, str]]:
    """CST rows (each pair under s1, and reversed under s0 unless `dpo`), then the extra-task rows; ids unique."""
    rows, seen = [], {}
    for pair, path, number in inputs.pairs:
        variants = [(SAFE_SYSTEM_PROMPT, pair["y1"], pair["y0"], "s1")]
        if mode == "cst":
            variants.append((UNCENSORED_SYSTEM_PROMPT, pair["y0"], pair["y1"], "s0"))
        for system, chosen, rejected, suffix in variants:
            row = {
                "id": f"{pair['id']}-{suffix}",
                "system": system,
                "prompt": pair["prompt"],
                "chosen": chosen,
                "rejected": rejected,
                "task": HARMLESS_TASK,
            }
            rows.append(_claim_id(row, path, number, seen))
    rows.extend(_claim_id(row, path, number, seen) for row, path, number in inputs.extra)
    return rows


def _claim_id(row: dict[str, str], path: str, number: int, seen: dict[str, tuple[str, int]]) -> dict[str, str]:
    # Ids key checkpoints' data order and precomputed reference log-probs: a duplicate is never silently merged.
    if row["id"] in seen:
        first_path, first_row = seen[row["id"]]
        message = f"duplicate id {row['id']!r} (first seen in {first_path}, row {first_row})"
        raise RecordError(path, number, "id", message)
    seen[row["id"]] = (path, number)
    return {name: row[name] for name in PREFERENCE_FIELDS}


def _eval_draw(key: str, seed: int) -> float:
    """A pair's uniform draw in [0, 1) from its key and the seed alone, not from the rows around it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64


def split_rows(rows: list[dict[str, str]], eval_fraction: float, seed: int) -> dict[str, list[dict[str, str]]]:
    """Seeded shuffle; a pair goes to eval when its draw (`_eval_draw`) is under `eval_fraction`.

    Whole pairs move: the s1 and s0 rows of one prompt never land in different splits (eval would otherwise see a
    trained prompt). The draw depends on the pair's key only, so a CST build and a DPO build of the same input hold
    out the same pairs, and a DPO arm is never scored on pairs it trained on next to a CST arm.
    """
    order = np.random.default_rng(seed).permutation(len(rows))
    shuffled = [rows[int(index)] for index in order]
    if eval_fraction <= 0:
        return {"train": shuffled}
    draws = {key: _eval_draw(key, seed) for key in dict.fromkeys(pair_key(row) for row in shuffled)}
    chosen = {key for key, draw in draws.items() if draw < eval_fraction}
    if not chosen:  # at least one eval pair when asked for one
        chosen = {min(draws, key=draws.get)}
    if len(chosen) == len(draws):  # and never the whole set
        chosen.discard(max(draws, key=draws.get))
    splits = {"train": [row for row in shuffled if pair_key(row) not in chosen]}
    if chosen:
        splits["eval"] = [row for row in shuffled if pair_key(row) in chosen]
    return splits
