"""Over-refusal: does a configuration refuse harmless questions that merely sound dangerous?

Prompts: XSTest v2 (Röttger et al., "XSTest: A Test Suite for Identifying Exaggerated Safety Behaviours in Large
Language Models", NAACL 2024; CC-BY-4.0), vendored as `assets/xstest_prompts.csv`: 250 safe prompts in 10 types
(homonyms, figurative language, safe targets, ...) and 200 unsafe contrast prompts. Each is answered under every
configuration of `eval.overrefusal.system_prompts` (default s1, s0, the unseen S0 prompt, none); `per_type` keeps a
seeded sample of each type. Each answer gets XSTest's label from the refusal judge (judges/refusal.py) and a safety
verdict from eval.judge (which recognises redirections the refusal rules miss).

Headline per (model, configuration): refusal rate on the safe prompts (full + partial refusals: the cost of
safety) and compliance rate on the unsafe ones (full compliance: what should not happen under a safe config).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from cst_dist.config.evaluation import OverRefusalConfig
from cst_dist.evaluation.judges.refusal import FULL_COMPLIANCE, FULL_REFUSAL, LABELS, PARTIAL_REFUSAL
from cst_dist.evaluation.safety import ConversationItem
from cst_dist.evaluation.sections.common import ASSETS, condition_of, safety_counts, share, tags
from cst_dist.io import RecordError, read_csv_columns

NAME = "overrefusal"
XSTEST_CSV = ASSETS / "xstest_prompts.csv"
XSTEST_COLUMNS = ("id", "prompt", "type", "label")
PROMPT_LABELS = ("safe", "unsafe")


def load_xstest(path: str | Path = XSTEST_CSV) -> list[dict[str, str]]:
    """XSTest rows {id, prompt, type, label (safe | unsafe)}; a missing column or a bad row raises RecordError
    naming the file (and eval.overrefusal.path)."""
    rows = read_csv_columns(path, XSTEST_COLUMNS, absent="file does not exist (eval.overrefusal.path)",
                            missing="missing column: eval.overrefusal.path needs XSTest's columns "
                                    f"{', '.join(XSTEST_COLUMNS)}")
    for number, row in rows:
        if row["label"] not in PROMPT_LABELS:
            raise RecordError(path, number, "label", f"expected safe or unsafe, got {row['label']!r}")
    return [row for _, row in rows]


def sample_per_type(rows: list[dict[str, str]], per_type: int | None, seed: int = 0) -> list[dict[str, str]]:
    """At most `per_type` rows of each type (a seeded draw within each type), in the file's order."""
    if per_type is None:
        return list(rows)
    by_type: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_type.setdefault(row["type"], []).append(index)
    rng = np.random.default_rng(seed)
    kept = {indices[i] for indices in by_type.values() for i in rng.permutation(len(indices))[:per_type]}
    return [row for index, row in enumerate(rows) if index in kept]


def items(cfg: OverRefusalConfig) -> list[ConversationItem]:
    """Every (sampled) XSTest prompt under every configuration; ids `xstest-<id>-p<configuration index>`."""
    rows = sample_per_type(load_xstest(cfg.path or XSTEST_CSV), cfg.per_type)
    return [ConversationItem(f"xstest-{row['id']}-p{k}", system, row["prompt"],
                             ((("system", system),) if system else ()) + (("user", row["prompt"]),),
                             tags(NAME, xstest_id=row["id"], type=row["type"], prompt_label=row["label"]))
            for row in rows for k, system in enumerate(cfg.system_prompts)]


def label_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """{"n", full_compliance, full_refusal, partial_refusal, "unlabelled"} of rows with a refusal `label`."""
    counts = Counter(row["refusal"] for row in rows)
    return {"n": len(rows), **{label: counts[label] for label in LABELS}, "unlabelled": counts[None]}


def entries(rows: list[dict[str, Any]], model: str, step: int | None) -> list[dict[str, Any]]:
    """One entry per (configuration, prompt label): the three labels' counts overall and per XSTest type, the
    refusal rate (full + partial) and compliance rate (full) over labelled answers, and the safety judge's
    unsafe share; each share with its Wilson interval."""
    groups: dict[tuple[str | None, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["system"], row["prompt_label"]), []).append(row)
    out = []
    for (system, prompt_label), group in groups.items():
        counts = label_counts(group)
        labelled = counts["n"] - counts["unlabelled"]
        safety = safety_counts(group)
        per_type = {}
        for row in group:
            per_type.setdefault(row["type"], []).append(row)
        out.append({
            "model": model, "step": step, "system_prompt": system, "condition": condition_of(system),
            "prompt_label": prompt_label, **counts,
            "refusal_rate": share(counts[FULL_REFUSAL] + counts[PARTIAL_REFUSAL], labelled),
            "compliance_rate": share(counts[FULL_COMPLIANCE], labelled),
            "judged_unsafe": share(safety["unsafe"], safety["safe"] + safety["unsafe"]),
            "per_type": {kind: label_counts(type_rows) for kind, type_rows in per_type.items()},
        })
    # The configurations in the order they were asked for (first seen), safe prompts before unsafe ones.
    order = list(dict.fromkeys(row["system"] for row in rows))
    return sorted(out, key=lambda e: (order.index(e["system_prompt"]), PROMPT_LABELS.index(e["prompt_label"])))
