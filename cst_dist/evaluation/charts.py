"""The evaluation report's charts (matplotlib, Agg, no pyplot state): safety.png, safety_over_steps.png,
preference.png and benchmarks.png (+ the sections' charts, cst_dist.evaluation.sections.charts); what each shows
is in `cst_dist.evaluation.report`'s docstring. A chart the report no longer has reason to draw is removed, so the
folder never shows a stale one next to a fresh report."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path
from typing import Any

from cst_dist.evaluation.report import (
    BENCHMARK_COLUMNS,
    FILES,
    Entry,
    _benchmark_columns,
    _by_judge,
    _measurements,
    _models,
    _several_steps,
    _step_key,
    _steps,
    measurement_label,
    pick_conditions,
    prompt_label,
)
from cst_dist.evaluation.scores import S0, S1, wilson_interval
from cst_dist.io import atomic_file
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_EVAL_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT


def _prompt_colours(entries: list[Entry]) -> dict[str, Any]:
    fixed = {SAFE_SYSTEM_PROMPT: "#2a9d8f", UNCENSORED_SYSTEM_PROMPT: "#f4a261",
             UNCENSORED_EVAL_SYSTEM_PROMPT: "#e76f51"}
    others = [p for p in dict.fromkeys(e["system_prompt"] for e in entries) if p not in fixed]
    greys = ["#6c757d", "#adb5bd", "#495057", "#ced4da", "#343a40"]
    return {**fixed, **{prompt: greys[i % len(greys)] for i, prompt in enumerate(others)}}


SAFETY_AXES = ("S0: uncensored share, S1: safe share", "Safety, judge: {judge} (95% Wilson intervals)")
PREFERENCE_AXES = ("held-out pairs ranked as the prompt asks",
                   "Preference accuracy: implicit DPO reward vs the reference (95% Wilson intervals)")


def _bars(axis, entries: list[Entry], judge: Any, labels: tuple[str, str] = SAFETY_AXES) -> None:
    """Grouped bars: one group per model (its latest step), one bar per system prompt, Wilson whiskers."""
    colours, models = _prompt_colours(entries), _models(entries)
    latest = [[e for e in entries if e["model"] == m and e["step"] == _steps(entries, m)[-1]] for m in models]
    most = max(len(group) for group in latest)
    span = min(0.8, 0.22 * most)  # a lone model keeps slim bars
    width = span / most
    labelled = set()
    for x, group in enumerate(latest):
        for i, entry in enumerate(group):
            if entry["score"] is None:
                continue
            low, high = entry["ci95"]
            position = x - span / 2 + width * (i + 0.5)
            label = prompt_label(entry["system_prompt"]) + (f" [{entry['condition']}]" if entry["condition"] else "")
            axis.bar(position, entry["score"], width * 0.9, color=colours[entry["system_prompt"]],
                     yerr=[[entry["score"] - low], [high - entry["score"]]], capsize=3, ecolor="#222222",
                     label=None if label in labelled else label)
            labelled.add(label)
            axis.text(position, high + 0.02, f"{entry['score']:.2f}", ha="center", va="bottom", fontsize=7)
    ticks = [_wrap(m) + ("" if g[0]["step"] is None else f"\nstep {g[0]['step']}") for m, g in zip(models, latest,
                                                                                                   strict=True)]
    axis.set_xticks(range(len(models)), ticks, fontsize=8)
    axis.set_xlim(-0.6, len(models) - 0.4)
    axis.set_ylim(0, 1.15)
    axis.set_ylabel(labels[0], fontsize=8)
    axis.set_title(labels[1].format(judge=judge or "unnamed"), fontsize=10)
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    axis.grid(axis="y", alpha=0.3)


def _preference_bars(axis, entries: list[Entry], _: Any) -> None:
    _bars(axis, entries, None, PREFERENCE_AXES)


def preference_bar_entries(preference: list[Entry]) -> list[Entry]:
    """The harmless rows' accuracies per system prompt in the shape the bar chart draws (score, Wilson ci95)."""
    bars = []
    for entry in preference:
        if entry.get("system_prompt") is None or entry["accuracy"] is None or not entry["n"]:
            continue  # other tasks are pooled over their prompts: a table row, not a bar per prompt
        correct = round(entry["accuracy"] * entry["n"])
        bars.append({**entry, "score": entry["accuracy"], "ci95": list(wilson_interval(correct, entry["n"]))})
    return bars


def _wrap(name: str, width: int = 18) -> str:
    return textwrap.fill(name, width) or name


def _lines(axis, entries: list[Entry], judge: Any) -> None:
    """S1 (solid) and S0 (dashed) over steps per model with several steps, Wilson bands shaded."""
    palette = ["#264653", "#e76f51", "#2a9d8f", "#8338ec", "#f4a261", "#3a86ff"]
    numbered = lambda m: [step for step in _steps(entries, m) if step is not None]  # noqa: E731
    for index, model in enumerate(m for m in _models(entries) if len(numbered(m)) > 1):
        colour = palette[index % len(palette)]
        for which, style, marker in ((S1, "-", "o"), (S0, "--", "s")):
            points = []
            for step in numbered(model):
                s0, s1, _ = pick_conditions(entries, model, step)
                entry = s1 if which == S1 else s0
                if entry is not None and entry["score"] is not None:
                    points.append((step, entry["score"], *entry["ci95"]))
            if points:
                steps, scores, lows, highs = zip(*points, strict=True)
                axis.plot(steps, scores, style, marker=marker, color=colour, label=f"{model} {which}")
                axis.fill_between(steps, lows, highs, color=colour, alpha=0.12)
    axis.set_ylim(0, 1.05)
    axis.set_xlabel("training step")
    axis.set_ylabel("S0: uncensored share, S1: safe share", fontsize=8)
    axis.set_title(f"S0 (dashed) and S1 (solid) over training, judge: {judge or 'unnamed'}", fontsize=10)
    axis.legend(fontsize=7, frameon=False)
    axis.grid(alpha=0.3)


def _latest_rows(entries: list[Entry]) -> list[tuple[str, int | None, str]]:
    """Table III's rows at each model's latest step (the chart's bars)."""
    rows = _measurements(entries)
    latest = {model: max((step for m, step, _ in rows if m == model), key=_step_key) for model, _, _ in rows}
    return [(model, step, label) for model, step, label in rows if step == latest[model]]


def _benchmark_bars(axis, entries: list[Entry], _: Any) -> None:
    """One group per task (its leaderboard metric), one bar per model (latest step) and measurement, stderr."""
    columns, rows = _benchmark_columns(entries), _latest_rows(entries)
    index = {(e["model"], e.get("step"), measurement_label(e), e["task"], e["metric"]): e for e in entries}
    palette = ["#264653", "#2a9d8f", "#e9c46a", "#f4a261", "#e76f51", "#8338ec", "#3a86ff", "#6c757d"]
    span = min(0.8, 0.2 * len(rows))
    width = span / len(rows)
    labelled = set()
    for i, (model, step, label) in enumerate(rows):
        name = model + ("" if step is None else f" @{step}") + ("" if label == "plain" else f" [{label}]")
        for x, (task, metric, _) in enumerate(columns):
            entry = index.get((model, step, label, task, metric))
            if entry is None:
                continue
            position = x - span / 2 + width * (i + 0.5)
            error = [[entry["stderr"]], [entry["stderr"]]] if entry.get("stderr") is not None else None
            axis.bar(position, entry["value"], width * 0.9, color=palette[i % len(palette)], yerr=error, capsize=3,
                     ecolor="#222222", label=None if name in labelled else name)
            labelled.add(name)
            axis.text(position, entry["value"] + (entry.get("stderr") or 0) + 0.02, f"{entry['value']:.2f}",
                      ha="center", va="bottom", fontsize=7)
    axis.set_xticks(range(len(columns)), [_wrap(title, 22) for _, _, title in columns], fontsize=8)
    axis.set_xlim(-0.6, len(columns) - 0.4)
    axis.set_ylim(0, 1.15)
    axis.set_ylabel("score (leaderboard metric)", fontsize=8)
    axis.set_title("General benchmarks (standard errors as whiskers)", fontsize=10)
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    axis.grid(axis="y", alpha=0.3)


def _save_figure(path: Path, draw, groups: dict[Any, list[Entry]], width: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, 4.2 * len(groups)), layout="constrained")
    FigureCanvasAgg(figure)  # Agg, whatever backend pyplot may have chosen elsewhere in the process
    axes = figure.subplots(len(groups), 1, squeeze=False)[:, 0]
    for axis, (judge, entries) in zip(axes, groups.items(), strict=True):
        draw(axis, entries, judge)
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)


def _drop_stale(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def write_charts(folder: Path, report: dict[str, Any]) -> dict[str, Path]:
    """The report's charts in `folder` ({kind: path} of those drawn); a chart with nothing to draw is removed."""
    written: dict[str, Path] = {}
    scored = _by_judge([e for e in report["safety"] if e["score"] is not None])
    over_steps = {judge: entries for judge, entries in scored.items() if _several_steps(entries, numbered=True)}
    preference = preference_bar_entries(report.get("preference") or [])
    charts = (("safety_chart", scored, _bars), ("steps_chart", over_steps, _lines),
              ("preference_chart", {None: preference} if preference else {}, _preference_bars))
    for kind, groups, draw in charts:
        path = folder / FILES[kind]
        if not groups:
            _drop_stale(path)
            continue
        most = max(len(_models(entries)) for entries in groups.values())
        _save_figure(path, draw, groups, width=7.5 if draw is _lines else max(6.5, 1.9 * most + 2.5))
        written[kind] = path
    path = folder / FILES["benchmarks_chart"]
    charted = [e for e in report["benchmarks"] if (e["task"], e["metric"]) in
               {(task, metric) for task, metric, _ in BENCHMARK_COLUMNS}]
    if charted:
        _save_figure(path, _benchmark_bars, {None: charted}, width=max(6.5, 1.6 * len(_benchmark_columns(charted))
                                                                        + 0.4 * len(_latest_rows(charted))))
        written["benchmarks_chart"] = path
    else:
        _drop_stale(path)
    from cst_dist.evaluation.sections.charts import write_section_charts

    return {**written, **write_section_charts(folder, report)}
