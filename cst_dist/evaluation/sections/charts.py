"""The charts of the sections beyond the paper (matplotlib, Agg, as cst_dist.evaluation.charts):

    overrefusal.png  per model and configuration: refusal rate on XSTest's safe prompts | compliance rate on its
                     unsafe ones (two panels)
    overrides.png    per override template: success rate (judged unsafe) of each model
    switch.png       per direction and form: post-switch adherence of each model
    wordings.png     per model: S1 and S0 under each paraphrased prompt (dots), mean and standard deviation (bar)
    adherence.png    per model: adherence, its three kinds, and the over-refusal cost (hatched)
Every bar has its 95% Wilson interval as whiskers. A chart whose section is absent is removed.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cst_dist.evaluation.sections.adherence import KINDS
from cst_dist.evaluation.sections.tables import KIND_TITLES, configuration
from cst_dist.io import atomic_file
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_EVAL_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT

CHARTS = {"overrefusal_chart": "overrefusal.png", "overrides_chart": "overrides.png", "switch_chart": "switch.png",
          "wordings_chart": "wordings.png", "adherence_chart": "adherence.png"}
PALETTE = ["#264653", "#2a9d8f", "#e9c46a", "#f4a261", "#e76f51", "#8338ec", "#3a86ff", "#6c757d"]
Series = tuple[str, list[dict[str, Any] | None]]  # (legend label, one {share, ci95} per group, or None)
# The paper's three prompts in safety.png's colours; other configurations (none included) in greys.
CONFIG_COLOURS = {SAFE_SYSTEM_PROMPT: "#2a9d8f", UNCENSORED_SYSTEM_PROMPT: "#f4a261",
                  UNCENSORED_EVAL_SYSTEM_PROMPT: "#e76f51"}


def _who(entry: dict[str, Any]) -> str:
    return entry["model"] + ("" if entry.get("step") is None else f" @{entry['step']}")


def grouped_bars(axis, groups: list[str], series: list[Series], title: str, ylabel: str,
                 hatched: frozenset[str] = frozenset(), colours: list[str] | None = None) -> None:
    """One group of bars per `groups` entry, one bar per series (colours: PALETTE in order unless given), Wilson
    whiskers, the share printed on top."""
    colours = colours or [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    span = min(0.84, 0.2 * len(series))
    width = span / max(1, len(series))
    for i, (label, values) in enumerate(series):
        shown = False
        for x, value in enumerate(values):
            if value is None or value.get("share") is None:
                continue
            low, high = value["ci95"]
            position = x - span / 2 + width * (i + 0.5)
            axis.bar(position, value["share"], width * 0.9, color=colours[i],
                     hatch="//" if label in hatched else None, edgecolor="white",
                     yerr=[[value["share"] - low], [high - value["share"]]], capsize=2, ecolor="#222222",
                     label=None if shown else label)
            shown = True
            axis.text(position, high + 0.02, f"{value['share']:.2f}", ha="center", va="bottom", fontsize=6)
    axis.set_xticks(range(len(groups)), [textwrap.fill(g, 16) for g in groups], fontsize=7)
    axis.set_xlim(-0.6, len(groups) - 0.4)
    axis.set_ylim(0, 1.18)
    axis.set_ylabel(ylabel, fontsize=8)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    axis.grid(axis="y", alpha=0.3)


def _by(entries: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> list[Any]:
    return list(dict.fromkeys(key(e) for e in entries))


def _overrefusal(figure, entries: list[dict[str, Any]]) -> None:
    models, systems = _by(entries, _who), _by(entries, lambda e: e["system_prompt"])
    index = {(_who(e), e["system_prompt"], e["prompt_label"]): e for e in entries}
    others = iter(["#6c757d", "#adb5bd", "#495057", "#8338ec", "#3a86ff"])
    colours = [CONFIG_COLOURS.get(system) or next(others, "#6c757d") for system in systems]
    left, right = figure.subplots(1, 2)
    for axis, label, field, title in ((left, "safe", "refusal_rate", "Safe prompts: refusal rate (lower is better)"),
                                      (right, "unsafe", "compliance_rate", "Unsafe prompts: compliance rate")):
        series = [(configuration(system), [index[m, system, label][field] if (m, system, label) in index else None
                                           for m in models]) for system in systems]
        grouped_bars(axis, models, series, title, "share of labelled answers", colours=colours)


def _overrides(figure, entries: list[dict[str, Any]]) -> None:
    templates, models = _by(entries, lambda e: e["template"]), _by(entries, _who)
    index = {(e["template"], _who(e)): e["success"] for e in entries}
    grouped_bars(figure.subplots(), templates, [(m, [index.get((t, m)) for t in templates]) for m in models],
                 "Override success under s1 (judged unsafe; 'none' = no override)", "success rate")


def _switch(figure, entries: list[dict[str, Any]]) -> None:
    groups, models = _by(entries, lambda e: f"{e['direction'].replace('_', ' ')} ({e['form']})"), _by(entries, _who)
    index = {(f"{e['direction'].replace('_', ' ')} ({e['form']})", _who(e)): e["adherence"] for e in entries}
    grouped_bars(figure.subplots(), groups, [(m, [index.get((g, m)) for g in groups]) for m in models],
                 "Mid-conversation switch: turn-2 answers following the new configuration", "post-switch adherence")


def _wordings(figure, entries: list[dict[str, Any]], summary: list[dict[str, Any]]) -> None:
    axis = figure.subplots()
    models = _by(entries, _who)
    colours = {"S1": "#2a9d8f", "S0": "#e76f51"}
    for x, model in enumerate(models):
        for offset, condition in ((-0.18, "S1"), (0.18, "S0")):
            stats = next((s for s in summary if _who(s) == model and s["condition"] == condition), None)
            scores = [e["score"]["share"] for e in entries if _who(e) == model and e["condition"] == condition
                      and e["score"]["share"] is not None]
            if stats is None or stats["mean"] is None:
                continue
            axis.bar(x + offset, stats["mean"], 0.32, color=colours[condition], alpha=0.55,
                     yerr=stats["sd"], capsize=3, label=condition if x == 0 else None)
            axis.scatter([x + offset] * len(scores), scores, s=10, color=colours[condition], edgecolor="#222222",
                         linewidths=0.4, zorder=3)
    axis.set_xticks(range(len(models)), [textwrap.fill(m, 16) for m in models], fontsize=7)
    axis.set_xlim(-0.6, len(models) - 0.4)
    axis.set_ylim(0, 1.1)
    axis.set_ylabel("S1: safe share, S0: uncensored share", fontsize=8)
    axis.set_title("Paraphrased system prompts: each wording (dots), mean and standard deviation (bars)", fontsize=9)
    axis.legend(fontsize=7, frameon=False)
    axis.grid(axis="y", alpha=0.3)


def _adherence(figure, entries: list[dict[str, Any]]) -> None:
    models = [_who(e) for e in entries]
    series = [("adherence", [{"share": e["score"], "ci95": e["ci95"]} for e in entries])]
    series += [(KIND_TITLES[kind], [e["kinds"][kind] for e in entries]) for kind in KINDS]
    series += [("over-refusal under s1 (cost)", [e["over_refusal"] for e in entries])]
    grouped_bars(figure.subplots(), models, series, "Adherence to the configuration (and its over-refusal cost)",
                 "share of cases", hatched=frozenset({"over-refusal under s1 (cost)"}))


def _save(path: Path, width: float, height: float, draw: Callable[[Any], None]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    draw(figure)
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)


def write_section_charts(folder: Path, report: dict[str, Any]) -> dict[str, Path]:
    """The sections' charts in `folder` ({kind: path} of those drawn); a chart with nothing to draw is removed."""
    drawers = {
        "overrefusal_chart": (report.get("overrefusal"), lambda f: _overrefusal(f, report["overrefusal"]), 11.0),
        "overrides_chart": (report.get("overrides"), lambda f: _overrides(f, report["overrides"]), 9.0),
        "switch_chart": (report.get("switch"), lambda f: _switch(f, report["switch"]), 7.5),
        "wordings_chart": (report.get("wordings"), lambda f: _wordings(f, report["wordings"],
                                                                       report.get("wordings_summary") or []), 7.0),
        "adherence_chart": (report.get("adherence"), lambda f: _adherence(f, report["adherence"]), 8.0),
    }
    written = {}
    for kind, (entries, draw, width) in drawers.items():
        path = folder / CHARTS[kind]
        if not entries:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        _save(path, width, 4.4, draw)
        written[kind] = path
    return written
