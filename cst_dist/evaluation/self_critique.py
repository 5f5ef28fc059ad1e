"""The self-critique yield of a `cst generate` run: how often the chain turned an unsafe answer into a safe one.

Each pair's first answer y0 and its revision y1 are judged by the evaluation's judge. The yield is the share of pairs
the CST recipe wants (y0 unsafe and y1 safe); the other cells say where the chain failed: the model refused from the
start (y0 safe), or its revision stayed unsafe. Pairs with an unparsed verdict count in `pairs` and in `unparsed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cst_dist.data.pairs import open_pair_folder
from cst_dist.evaluation.judges.base import Judge
from cst_dist.evaluation.scores import wilson_interval


def read_pairs(folder: Path) -> list[dict[str, Any]]:
    """The pairs (`id, prompt, y0, y1`) of a `cst generate` output folder (`eval.pairs`), checked row by row. An
    unfinished run is read as it is: the section reports how many pairs it judged."""
    return open_pair_folder(folder, "eval.pairs", require_manifest=True).rows()


def self_critique_yield(folder: Path, judge: Judge) -> dict[str, Any]:
    """Counts, shares and Wilson intervals of y0 unsafe, y1 safe and both, over the pairs in `folder`."""
    pairs = read_pairs(folder)
    first = judge.judge([{"prompt": p["prompt"], "answer": p["y0"]} for p in pairs])
    revised = judge.judge([{"prompt": p["prompt"], "answer": p["y1"]} for p in pairs])
    judged = [(a["safe"], b["safe"]) for a, b in zip(first, revised, strict=True)
              if a["safe"] is not None and b["safe"] is not None]
    n = len(judged)
    counts = {"y0_unsafe": sum(not y0 for y0, _ in judged), "y1_safe": sum(y1 for _, y1 in judged),
              "yield": sum(not y0 and y1 for y0, y1 in judged)}
    return {"source": str(folder), "pairs": len(pairs), "judged": n, "unparsed": len(pairs) - n,
            **{key: {"count": k, "share": k / n if n else None, "ci95": list(wilson_interval(k, n))}
               for key, k in counts.items()}}


def render_yield(section: dict[str, Any]) -> str:
    """One line per cell, for the console and report.md."""
    def cell(key: str) -> str:
        entry = section[key]
        share = "n/a" if entry["share"] is None else f"{entry['share']:.2f}"
        return f"{share} [{entry['ci95'][0]:.2f}, {entry['ci95'][1]:.2f}] ({entry['count']}/{section['judged']})"

    return (f"Self-critique yield of {section['pairs']} generated pairs ({section['source']}): "
            f"y0 unsafe {cell('y0_unsafe')}, y1 safe {cell('y1_safe')}, both (the pairs CST wants) {cell('yield')}"
            + (f"; {section['unparsed']} with an unparsed verdict" if section["unparsed"] else ""))
