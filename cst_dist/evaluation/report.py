"""The evaluation report: `report.json` (stable schema), `report.md` (Tables I and III style) and PNG charts.

report.json, schema_version 1 (keys are only ever added; a change of meaning bumps the version):
    {
      "schema_version": 1,
      "safety": [                      # one entry per (judge, model, step, system prompt); see evaluation.scores
        {"model": str, "step": int | null, "system_prompt": str, "condition": "S1" | "S0" | null,
         "judge": str | null, "n": int, "safe": int, "unsafe": int, "unparsed": int,
         "score": float | null,        # S1: safe share, S0: uncensored share, null: safe share; of judged rows
         "ci95": [float, float]}       # Wilson interval of that share over safe + unsafe
      ],
      "preference": [                  # likelihood view; see evaluation.preference
        {"model": str, "step": int | null, "system_prompt": str | null, "n": int, "accuracy": float | null,
         "condition": "S1" | "S0" | null, "task": str}      # condition and task: optional, added by preference.py
      ],
      "judge": {...},                  # free-form description of the judge(s): kind, paths, agreement, ...
      "benchmarks": [                  # general benchmarks by log-likelihood; see evaluation.benchmarks
        {"model": str, "task": str, "metric": str, "value": float, "n": int, "num_fewshot": int,
         "step": int | null, "stderr": float | null,       # the harness's standard error of the mean
         "system_prompt": str | null, "chat_template": bool}  # how it was measured (null, false: the leaderboard's)
      ],
      "benchmarks_skipped": [          # configured-out tasks (added in place: older reports read as [])
        {"task": str, "reason": str}
      ]
    }
report.md: per judge, the main table (models as rows at their latest step; S0 under the unseen uncensored prompt, or
the training s0 marked with a dagger when only that was run; S1 under s1), every (model, step, system prompt) row,
preference accuracy, a per-step table when a model was scored at several steps, and the general benchmarks (Table
III: measurements as rows, tasks' leaderboard metrics as columns; every metric with its standard error; skipped
tasks).
Charts (matplotlib, Agg, no pyplot state): safety.png (bars per model and system prompt, Wilson whiskers) and, when a
model has several steps, safety_over_steps.png (S0 and S1 over training steps); preference.png (held-out preference
accuracy per model and system prompt, harmless pairs only) when preference accuracy was measured; benchmarks.png (per
task, grouped bars of each model's latest step, standard-error whiskers). A chart the report no longer has reason to
draw is removed, so the folder never shows a stale one next to a fresh report.
"""

from __future__ import annotations

import contextlib
import json
import textwrap
from pathlib import Path
from typing import Any

from cst_dist.evaluation.benchmarks.tasks import TASKS
from cst_dist.evaluation.scores import S0, S1, wilson_interval
from cst_dist.evaluation.self_critique import render_yield
from cst_dist.io import atomic_file, write_json_atomic, write_text_atomic
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_EVAL_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT

SCHEMA_VERSION = 1
REPORT_KEYS = ("safety", "preference", "judge", "benchmarks", "benchmarks_skipped")
FILES = {"json": "report.json", "markdown": "report.md", "safety_chart": "safety.png",
         "steps_chart": "safety_over_steps.png", "preference_chart": "preference.png",
         "benchmarks_chart": "benchmarks.png"}
# Table III's columns: the leaderboard's metric of each task, in this order (other metrics: the full table).
BENCHMARK_COLUMNS = tuple((spec.name, spec.headline, spec.title) for spec in TASKS.values())
PROMPT_LABELS = {
    SAFE_SYSTEM_PROMPT: "s1 (safe)",
    UNCENSORED_SYSTEM_PROMPT: "s0 (uncensored, training)",
    UNCENSORED_EVAL_SYSTEM_PROMPT: "S0 eval (uncensored, unseen)",
}
# The paper's S0 is measured under the unseen prompt; the training s0 stands in (marked) only when it is all there is.
S0_PREFERENCE = (UNCENSORED_EVAL_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT)
DAGGER = "†"
Entry = dict[str, Any]


def make_report(safety: list[Entry], preference: list[Entry] | None = None, judge: dict[str, Any] | None = None,
                benchmarks: list[Entry] | None = None, benchmarks_skipped: list[Entry] | None = None
                ) -> dict[str, Any]:
    """A report dict in the schema above (lists copied, so the caller's lists are not shared)."""
    return {"schema_version": SCHEMA_VERSION, "safety": list(safety), "preference": list(preference or []),
            "judge": dict(judge or {}), "benchmarks": list(benchmarks or []),
            "benchmarks_skipped": list(benchmarks_skipped or [])}


def complete_report(report: dict[str, Any]) -> dict[str, Any]:
    """`report` with the schema version and any missing section filled in (empty); other keys kept as they are."""
    return {**make_report([]), **report}


def check_report(report: dict[str, Any]) -> None:
    """Raise ValueError unless `report` has this module's schema version and all its sections."""
    if report.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"report schema_version must be {SCHEMA_VERSION}, got {report.get('schema_version')!r}")
    for key in REPORT_KEYS:
        expected = dict if key == "judge" else list
        if not isinstance(report.get(key), expected):
            raise ValueError(f"report[{key!r}] must be a {expected.__name__}")


# ---- table helpers ------------------------------------------------------------------------------------------------
def prompt_label(system: str | None, width: int = 48) -> str:
    """A short name for a system prompt: the paper's three by role, any other abbreviated and quoted."""
    if system is None:
        return "(per task)"
    if system in PROMPT_LABELS:
        return PROMPT_LABELS[system]
    flat = " ".join(system.split())
    return f'"{flat if len(flat) <= width else flat[: width - 3] + "..."}"'


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def format_cell(entry: Entry | None) -> str:
    """`0.12 [0.04, 0.29] n=26` (n = judged rows; unparsed ones listed after), `n/a` with nothing judged."""
    if entry is None:
        return "-"
    judged = entry["safe"] + entry["unsafe"]
    unparsed = f", {entry['unparsed']} unparsed" if entry["unparsed"] else ""
    if entry["score"] is None:
        return f"n/a (n=0{unparsed})"
    low, high = entry["ci95"]
    return f"{entry['score']:.2f} [{low:.2f}, {high:.2f}] n={judged}{unparsed}"


def _step_key(step: int | None) -> tuple[bool, int]:
    return (step is not None, step or 0)  # a numbered checkpoint is later than an unnumbered folder


def _by_judge(entries: list[Entry]) -> dict[Any, list[Entry]]:
    groups: dict[Any, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.get("judge"), []).append(entry)
    return groups


def _models(entries: list[Entry]) -> list[str]:
    return list(dict.fromkeys(entry["model"] for entry in entries))


def _steps(entries: list[Entry], model: str) -> list[int | None]:
    return sorted({e["step"] for e in entries if e["model"] == model}, key=_step_key)


def pick_conditions(entries: list[Entry], model: str, step: int | None) -> tuple[Entry | None, Entry | None, bool]:
    """(S0 entry, S1 entry, S0 is the training prompt) of one model at one step: Table I's two cells."""
    at = {e["system_prompt"]: e for e in entries if e["model"] == model and e["step"] == step}
    s0_prompt = next((prompt for prompt in S0_PREFERENCE if prompt in at), None)
    return at.get(s0_prompt), at.get(SAFE_SYSTEM_PROMPT), s0_prompt == UNCENSORED_SYSTEM_PROMPT


def _several_steps(entries: list[Entry], numbered: bool = False) -> bool:
    """Whether some model was scored at more than one step (`numbered`: more than one numbered step)."""
    for group in _by_judge(entries).values():
        for model in _models(group):
            steps = [step for step in _steps(group, model) if step is not None or not numbered]
            if len(steps) > 1:
                return True
    return False


# ---- markdown -----------------------------------------------------------------------------------------------------
def _main_table(entries: list[Entry]) -> tuple[str, bool]:
    """Models as rows at their latest step, S0 and S1 as columns; also whether a dagger (training s0) was used."""
    show_step = any(e["step"] is not None for e in entries)
    rows, dagger = [], False
    for model in _models(entries):
        step = _steps(entries, model)[-1]
        s0, s1, trained_prompt = pick_conditions(entries, model, step)
        dagger |= trained_prompt and s0 is not None
        cells = [format_cell(s0) + (f" {DAGGER}" if trained_prompt and s0 is not None else ""), format_cell(s1)]
        rows.append([model] + ([step if step is not None else "-"] if show_step else []) + cells)
    header = ["model"] + (["step"] if show_step else []) + ["S0 (uncensored share)", "S1 (safe share)"]
    return _table(header, rows), dagger


def render_table(report: dict[str, Any]) -> str:
    """The main Table I-style table(s), one per judge, and Table III when there are benchmarks, as markdown (what
    `cst eval` prints)."""
    text = safety_tables(report)
    if report.get("preference"):
        text += ("\n\nPreference accuracy on held-out pairs (share ranked as the system prompt asks; n per cell in "
                 "report.md)\n\n" + preference_summary(report["preference"]))
    if report.get("self_critique"):
        text += "\n\n" + render_yield(report["self_critique"])
    if report.get("benchmarks"):
        sources = dict.fromkeys(f"{e['task']} = {e['source']} (n={e['n']})" for e in report["benchmarks"]
                                if e.get("source"))
        text += "\n\nGeneral benchmarks (lm-evaluation-harness conventions)\n\n" + benchmark_table(report["benchmarks"])
        text += "\n\nScored files: " + "; ".join(sources) if sources else ""
    return text


def safety_tables(report: dict[str, Any]) -> str:
    """The main Table I-style table(s), one per judge."""
    blocks = []
    for judge, entries in _by_judge(report["safety"]).items():
        table, dagger = _main_table(entries)
        note = f"\n{DAGGER} S0 under the training prompt s0 (the unseen S0 prompt was not run)." if dagger else ""
        blocks.append(f"Safety, judge: {judge or 'unnamed'} (score [95% Wilson interval] n=judged answers)\n\n"
                      f"{table}{note}")
    return "\n\n".join(blocks) if blocks else "No safety scores."


def _all_rows_table(entries: list[Entry]) -> str:
    rows = [[e["model"], "-" if e["step"] is None else e["step"], e.get("judge") or "-", e["condition"] or "-",
             prompt_label(e["system_prompt"]), e["n"], e["safe"], e["unsafe"], e["unparsed"],
             "n/a" if e["score"] is None else f"{e['score']:.3f}", "[{:.3f}, {:.3f}]".format(*e["ci95"])]
            for e in entries]
    header = ["model", "step", "judge", "condition", "system prompt", "n", "safe", "unsafe", "unparsed", "score",
              "95% CI"]
    return _table(header, rows)


def preference_summary(entries: list[Entry]) -> str:
    """One row per model (and step), one column per system prompt (harmless pairs) or pooled task."""
    column = lambda e: prompt_label(e["system_prompt"], 24) if e.get("system_prompt") else e.get("task") or "-"  # noqa: E731
    columns = list(dict.fromkeys(column(e) for e in entries))
    rows = {}
    for e in entries:
        cells = rows.setdefault((e["model"], "-" if e["step"] is None else e["step"]), {})
        cells[column(e)] = "n/a" if e["accuracy"] is None else f"{e['accuracy']:.2f}"
    return _table(["model", "step", *columns],
                  [[model, step, *(cells.get(c, "-") for c in columns)] for (model, step), cells in rows.items()])


def _preference_table(entries: list[Entry]) -> str:
    rows = [[e["model"], "-" if e["step"] is None else e["step"], e.get("task") or "-",
             prompt_label(e["system_prompt"]), e.get("condition") or "-", e["n"],
             "n/a" if e["accuracy"] is None else f"{e['accuracy']:.3f}"] for e in entries]
    return _table(["model", "step", "task", "system prompt", "condition", "n", "accuracy"], rows)


def _steps_table(entries: list[Entry]) -> str:
    """Every step of the models scored at more than one."""
    rows = []
    for model in (m for m in _models(entries) if len(_steps(entries, m)) > 1):
        for step in _steps(entries, model):
            s0, s1, trained_prompt = pick_conditions(entries, model, step)
            rows.append([model, "-" if step is None else step,
                         format_cell(s0) + (f" {DAGGER}" if trained_prompt and s0 is not None else ""),
                         format_cell(s1)])
    return _table(["model", "step", "S0 (uncensored share)", "S1 (safe share)"], rows)


def measurement_label(entry: Entry) -> str:
    """How a benchmark entry was measured: the leaderboard's way (plain text, no system prompt) or another."""
    if entry.get("system_prompt") is None and not entry.get("chat_template"):
        return "plain"
    system = "no system prompt" if entry.get("system_prompt") is None else prompt_label(entry["system_prompt"], 32)
    return system + (", chat template" if entry.get("chat_template") else ", plain text")


def _measurements(entries: list[Entry]) -> list[tuple[str, int | None, str]]:
    """(model, step, measurement) in first-seen order: the rows of Table III."""
    return list(dict.fromkeys((e["model"], e.get("step"), measurement_label(e)) for e in entries))


def _benchmark_columns(entries: list[Entry]) -> list[tuple[str, str, str]]:
    """Table III's (task, metric, header) for the tasks present, e.g. ("arc_challenge", "acc_norm", "ARC ...")."""
    present = {(e["task"], e["metric"]): e["num_fewshot"] for e in entries}
    return [(task, metric, f"{title} ({metric}, {present[task, metric]}-shot)")
            for task, metric, title in BENCHMARK_COLUMNS if (task, metric) in present]


def benchmark_table(entries: list[Entry]) -> str:
    """Table III: one row per model (and step, and measurement), the leaderboard metric of each task as columns."""
    columns = _benchmark_columns(entries)
    show_step = any(e.get("step") is not None for e in entries)
    show_measurement = any(measurement_label(e) != "plain" for e in entries)
    index = {(e["model"], e.get("step"), measurement_label(e), e["task"], e["metric"]): e for e in entries}
    rows = []
    for model, step, measurement in _measurements(entries):
        cells = []
        for task, metric, _ in columns:
            entry = index.get((model, step, measurement, task, metric))
            cells.append("-" if entry is None else f"{entry['value']:.4f}")
        rows.append([model] + (["-" if step is None else step] if show_step else [])
                    + ([measurement] if show_measurement else []) + cells)
    header = (["model"] + (["step"] if show_step else []) + (["measurement"] if show_measurement else [])
              + [title for _, _, title in columns])
    return _table(header, rows)


def _benchmark_details(entries: list[Entry]) -> str:
    rows = [[e["model"], "-" if e.get("step") is None else e["step"], measurement_label(e), e["task"], e["metric"],
             f"{e['value']:.4f}", "-" if e.get("stderr") is None else f"{e['stderr']:.4f}", e["n"], e["num_fewshot"]]
            for e in entries]
    return _table(["model", "step", "measurement", "task", "metric", "value", "stderr", "n", "shots"], rows)


def _benchmarks_section(report: dict[str, Any]) -> list[str]:
    entries, skipped = report["benchmarks"], report.get("benchmarks_skipped") or []
    if not entries and not skipped:
        return []
    parts = ["", "## General benchmarks (Table III)", "",
             "Log-likelihood multiple choice as lm-evaluation-harness scores it (its prompts, shots and metrics; "
             "acc_norm: log-likelihood per character of the choice; mc2: probability mass of the true answers). "
             "`plain` is the leaderboard's measurement (plain text, no system prompt); any other measurement is "
             "not comparable with it."]
    if entries:
        parts += ["", benchmark_table(entries), "", "Every metric (stderr: standard error of the mean):", "",
                  _benchmark_details(entries)]
    if skipped:
        parts += ["", "Skipped: " + "; ".join(f"{s['task']} ({s['reason']})" for s in skipped) + "."]
    return parts


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report.md."""
    parts = ["# CST evaluation report", "",
             "S1: share of safe answers under the safe prompt s1. S0: share of uncensored answers under the unseen "
             "uncensored prompt (both wanted). Unparsed verdicts are left out of the score and counted apart.", "",
             "## Safety (Table I)", "", safety_tables(report)]
    if report["safety"]:
        parts += ["", "## Safety per system prompt", "", _all_rows_table(report["safety"])]
    if _several_steps(report["safety"]):
        parts += ["", "## Safety over training steps"]
        for judge, entries in _by_judge(report["safety"]).items():
            if _several_steps(entries):
                parts += ["", f"Judge: {judge or 'unnamed'}", "", _steps_table(entries)]
    if report["preference"]:
        parts += ["", "## Preference accuracy", "",
                  "Share of held-out pairs whose implicit DPO reward ranks chosen above rejected "
                  "(policy vs reference log-probs; ties count as wrong).", "", _preference_table(report["preference"])]
    if report.get("self_critique"):
        parts += ["", "## Self-critique yield of `cst generate`", "", render_yield(report["self_critique"])]
    parts += _benchmarks_section(report)
    if report["judge"]:
        parts += ["", "## Judge", "", "```json", _json_block(report["judge"]), "```"]
    return "\n".join(parts) + "\n"


def _json_block(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)


# ---- charts -------------------------------------------------------------------------------------------------------
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


def write_report(folder: Path, report: dict[str, Any]) -> dict[str, Path]:
    """Write report.json, report.md and the charts into `folder` (each file atomically); returns {kind: path} of the
    files written (kinds: json, markdown, safety_chart, steps_chart, preference_chart, benchmarks_chart). Missing
    sections and the schema version are filled in (`complete_report`); a report of another schema version is refused."""
    report = complete_report(report)
    check_report(report)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {"json": folder / FILES["json"], "markdown": folder / FILES["markdown"]}
    write_json_atomic(written["json"], report)
    write_text_atomic(written["markdown"], render_markdown(report))
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
    return written
