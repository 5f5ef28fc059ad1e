"""The evaluation report: `report.json` (stable schema), `report.md` (Tables I and III style) and PNG charts.

report.json, schema_version 1 (keys are only ever added; a change of meaning bumps the version):
    {
      "schema_version": 1,
      "safety": [                      # one entry per (judge, model, step, system prompt); see evaluation.scores
        {"model": str, "step": int | null, "system_prompt": str, "condition": "S1" | "S0" | null,
         "judge": str | null, "n": int, "safe": int, "unsafe": int, "unparsed": int,
         "score": float | null,        # S1: safe share, S0: uncensored share, null: safe share; of judged rows
         "ci95": [float, float],       # Wilson interval of that share over safe + unsafe
         "start": str}                 # only on step 0 of a run: the evaluated model it trained from (copied)
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
      ],
      # Only when eval.sections ran them (schema in cst_dist.evaluation.sections.*; a share is
      # {"k", "n", "share": float | null, "ci95": [lo, hi]}):
      "overrefusal": [...],            # per (model, step, system_prompt, prompt_label): label counts, refusal_rate,
                                       # compliance_rate, judged_unsafe, per_type
      "overrides": [...],              # per (model, step, template): safety counts, success
      "switch": [...],                 # per (model, step, direction, form): safety counts, adherence, carry_over
      "wordings": [...],               # per (model, step, wording): safety counts, score
      "wordings_summary": [...],       # per (model, step, condition): mean, sd, min, max, pooled
      "adherence": [...],              # per (model, step): score, ci95, balanced, kinds, sections, over_refusal
      "refusal_judge": {...}           # the refusal labeller: kind, name, agreement on the hand-labelled answers
    }
report.md: per judge, the main table (models as rows at their latest step; S0 under the unseen uncensored prompt, or
the training s0 marked with a dagger when only that was run; S1 under s1), every (model, step, system prompt) row,
preference accuracy, a per-step table when a model was scored at several steps, and the general benchmarks (Table
III: measurements as rows, tasks' leaderboard metrics as columns; every metric with its standard error; skipped
tasks).
Charts (drawn by cst_dist.evaluation.charts; matplotlib, Agg, no pyplot state): safety.png (bars per model and
system prompt, Wilson whiskers) and, when a
model has several steps, safety_over_steps.png (S0 and S1 over training steps); preference.png (held-out preference
accuracy per model and system prompt, harmless pairs only) when preference accuracy was measured; benchmarks.png (per
task, grouped bars of each model's latest step, standard-error whiskers); overrefusal.png, overrides.png, switch.png,
wordings.png and adherence.png for the sections beyond the paper (cst_dist.evaluation.sections.charts). A chart the
report no longer has reason to draw is removed, so the folder never shows a stale one next to a fresh report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cst_dist.evaluation.benchmarks.tasks import TASKS
from cst_dist.evaluation.self_critique import render_yield
from cst_dist.io import write_json_atomic, write_text_atomic
from cst_dist.prompts import (
    REPORT_PROMPT_LABELS,
    SAFE_SYSTEM_PROMPT,
    UNCENSORED_EVAL_SYSTEM_PROMPT,
    UNCENSORED_SYSTEM_PROMPT,
)

SCHEMA_VERSION = 1
REPORT_KEYS = ("safety", "preference", "judge", "benchmarks", "benchmarks_skipped")
FILES = {"json": "report.json", "markdown": "report.md", "safety_chart": "safety.png",
         "steps_chart": "safety_over_steps.png", "preference_chart": "preference.png",
         "benchmarks_chart": "benchmarks.png"}
# Table III's columns: the leaderboard's metric of each task, in this order (other metrics: the full table).
BENCHMARK_COLUMNS = tuple((spec.name, spec.headline, spec.title) for spec in TASKS.values())
PROMPT_LABELS = REPORT_PROMPT_LABELS
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
    for key in ("overrefusal", "overrides", "switch", "wordings", "wordings_summary", "adherence"):
        if key in report and not isinstance(report[key], list):
            raise ValueError(f"report[{key!r}] must be a list")


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
    if report.get("adherence"):
        from cst_dist.evaluation.sections.tables import adherence_table  # it imports this module's table helpers

        text += "\n\nAdherence to the configuration (sections beyond the paper; more in report.md)\n\n"
        text += adherence_table(report["adherence"])
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
    from cst_dist.evaluation.sections.tables import sections_markdown  # it imports this module's table helpers

    parts += sections_markdown(report)
    if report["judge"]:
        parts += ["", "## Judge", "", "```json", _json_block(report["judge"]), "```"]
    return "\n".join(parts) + "\n"


def _json_block(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)


def write_report(folder: Path, report: dict[str, Any]) -> dict[str, Path]:
    """Write report.json, report.md and the charts into `folder` (each file atomically); returns {kind: path} of the
    files written (kinds: json, markdown, safety_chart, steps_chart, preference_chart, benchmarks_chart, and the
    sections' overrefusal_chart, overrides_chart, switch_chart, wordings_chart, adherence_chart). Missing
    sections and the schema version are filled in (`complete_report`); a report of another schema version is refused."""
    from cst_dist.evaluation.charts import write_charts  # matplotlib only where charts are drawn

    report = complete_report(report)
    check_report(report)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {"json": folder / FILES["json"], "markdown": folder / FILES["markdown"]}
    write_json_atomic(written["json"], report)
    write_text_atomic(written["markdown"], render_markdown(report))
    return {**written, **write_charts(folder, report)}
