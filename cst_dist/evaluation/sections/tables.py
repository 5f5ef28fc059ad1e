"""report.md's part for the sections beyond the paper: one block per section present in the report.

Shares print as `0.12 [0.04, 0.29] n=26`: the share of judged (or labelled) answers, its 95% Wilson interval and the
number of answers it is over.
"""

from __future__ import annotations

from typing import Any

from cst_dist.evaluation.report import Entry, _table, prompt_label
from cst_dist.evaluation.sections.adherence import KINDS

SECTION_KEYS = ("overrefusal", "overrides", "switch", "wordings", "wordings_summary", "adherence")
KIND_TITLES = {"refuse_harmful": "refuses harmful (safe config)", "answer_harmful": "answers harmful (uncensored "
               "config)", "answer_safe": "answers safe prompts"}


def fmt(value: dict[str, Any] | None) -> str:
    if value is None or value.get("share") is None:
        return "n/a" if value is None else f"n/a (n={value['n']})"
    low, high = value["ci95"]
    return f"{value['share']:.2f} [{low:.2f}, {high:.2f}] n={value['n']}"


def configuration(system: str | None) -> str:
    return "no system prompt" if system is None else prompt_label(system, 40)


def _who(entry: Entry) -> str:
    return entry["model"] + ("" if entry.get("step") is None else f" @{entry['step']}")


def _pivot(entries: list[Entry], row_key, value) -> tuple[list[str], list[list[Any]]]:
    """Rows by `row_key(entry)` (first-seen order), one column per model: `value(entry)`."""
    models = list(dict.fromkeys(_who(e) for e in entries))
    rows: dict[Any, dict[str, str]] = {}
    for entry in entries:
        rows.setdefault(row_key(entry), {})[_who(entry)] = value(entry)
    return models, [[*key, *(cells.get(m, "-") for m in models)] for key, cells in rows.items()]


def overrefusal_block(entries: list[Entry], judge: dict[str, Any] | None) -> list[str]:
    headline = {}
    for e in entries:
        cells = headline.setdefault((_who(e), configuration(e["system_prompt"])), ["-", "-", "-"])
        if e["prompt_label"] == "safe":
            cells[0] = fmt(e["refusal_rate"])
        else:
            cells[1], cells[2] = fmt(e["compliance_rate"]), fmt(e["judged_unsafe"])
    parts = ["", "### Over-refusal (XSTest v2)", "",
             "XSTest v2 (Röttger et al., NAACL 2024; CC-BY-4.0): 250 safe prompts that only sound unsafe and 200 "
             "unsafe contrast prompts, answered under each configuration. Refusal rate = full + partial refusals "
             "among labelled answers (wanted low on safe prompts); compliance rate = full compliance (wanted low "
             "on unsafe prompts under a safe configuration). Judged unsafe: eval.judge's verdict on the same answers."]
    if judge:
        agreement = judge.get("agreement")
        note = (f" Its agreement with {agreement['n']} hand-labelled answers: {agreement['share']:.2f} (written "
                f"{agreement['per_source']['written']['share']:.2f}, real model answers "
                f"{agreement['per_source']['model answers']['share']:.2f})." if agreement else "")
        parts += ["", f"Refusal labels: {judge.get('name')}.{note}"]
    parts += ["", _table(["model", "configuration", "safe prompts: refusal rate", "unsafe prompts: compliance rate",
                          "unsafe prompts: judged unsafe"], [[*key, *cells] for key, cells in headline.items()])]
    per_type = {}
    for e in entries:
        for kind, counts in e["per_type"].items():
            cells = per_type.setdefault((_who(e), e["prompt_label"], kind), {})
            cells[configuration(e["system_prompt"])] = (f"{counts['full_compliance']}/{counts['full_refusal']}/"
                                                        f"{counts['partial_refusal']}")
    configs = list(dict.fromkeys(configuration(e["system_prompt"]) for e in entries))
    parts += ["", "Per prompt type, full compliance / full refusal / partial refusal:", "",
              _table(["model", "prompts", "type", *configs],
                     [[*key, *(cells.get(c, "-") for c in configs)] for key, cells in per_type.items()])]
    return parts


def overrides_block(entries: list[Entry]) -> list[str]:
    models, rows = _pivot(entries, lambda e: (e["template"], e["template_kind"]), lambda e: fmt(e["success"]))
    return ["", "### Override robustness (under s1)", "",
            "Held-out harmful prompts under the safe prompt s1, inside user-turn override attempts "
            "(assets/override_templates.jsonl; `none` = the prompt as it is). Success = share of judged answers that "
            "are unsafe (wanted: as low as the control).", "", _table(["template", "kind", *models], rows)]


def switch_block(entries: list[Entry]) -> list[str]:
    rows = [[_who(e), e["direction"].replace("_", " "), e["form"], fmt(e["adherence"]), fmt(e["carry_over"]),
             e["unparsed"]] for e in entries]
    return ["", "### Mid-conversation switch", "",
            "Two turns; turn 1 under the first configuration with a canned answer in its stance, then the "
            "configuration changes (second_system: a second system message; new_system: the system prompt "
            "replaced, earlier turns kept). Adherence = turn-2 answers that follow the new configuration; "
            "carry-over = those that follow the old one.", "",
            _table(["model", "direction", "form", "adherence", "carry-over", "unparsed"], rows)]


def wordings_block(entries: list[Entry], summary: list[Entry]) -> list[str]:
    def num(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    rows = [[_who(e), e["condition"], f"{e['scored']}/{e['wordings']}", num(e["mean"]), num(e["sd"]),
             f"{num(e['min'])} - {num(e['max'])}", fmt(e["pooled"])] for e in summary]
    texts = {e["wording"]: e["system_prompt"] for e in entries}
    models, detail = _pivot(entries, lambda e: (e["wording"], e["condition"]), lambda e: fmt(e["score"]))
    detail = [[row[0], row[1], prompt_label(texts[row[0]], 60), *row[2:]] for row in detail]
    return ["", "### Generalisation across wordings", "",
            "S1 (safe share) under 8 paraphrased safe prompts and S0 (uncensored share) under 8 paraphrased "
            "uncensored prompts, none seen in training (assets/system_prompt_wordings.jsonl).", "",
            _table(["model", "condition", "wordings scored", "mean", "sd", "range", "pooled"], rows), "",
            _table(["wording", "condition", "system prompt", *models], detail)]


def adherence_table(entries: list[Entry]) -> str:
    """One row per model: adherence, balanced, the three kinds and the over-refusal cost (also what `cst eval`
    prints)."""
    rows = [[_who(e), fmt({"share": e["score"], "ci95": e["ci95"], "n": e["judged"]}),
             "n/a" if e["balanced"] is None else f"{e['balanced']:.2f}",
             *(fmt(e["kinds"][kind]) for kind in KINDS), fmt(e["over_refusal"])] for e in entries]
    return _table(["model", "adherence", "balanced", *(KIND_TITLES[k] for k in KINDS), "over-refusal under s1"],
                  rows)


def adherence_block(entries: list[Entry]) -> list[str]:
    sections = [[_who(e), section, fmt(value)] for e in entries for section, value in e["sections"].items()]
    return ["", "### Adherence", "",
            "Share of (prompt, configuration) cases answered as the configuration asks, over every section run "
            "(answers under no system prompt ask for nothing and are left out); balanced = mean of the three "
            "kinds. Over-refusal, the cost shown apart: refusals of XSTest's safe prompts under s1.", "",
            adherence_table(entries), "", _table(["model", "section", "adherence"], sections)]


def sections_markdown(report: dict[str, Any]) -> list[str]:
    """The report.md lines of every section the report holds (none: no lines)."""
    if not any(report.get(key) for key in SECTION_KEYS):
        return []
    parts = ["", "## Beyond the paper", "", "Sections of `eval.sections`, at each model's latest step "
             "(docs/beyond-the-paper.md). Shares: value [95% Wilson interval] n=answers."]
    if report.get("overrefusal"):
        parts += overrefusal_block(report["overrefusal"], report.get("refusal_judge"))
    if report.get("overrides"):
        parts += overrides_block(report["overrides"])
    if report.get("switch"):
        parts += switch_block(report["switch"])
    if report.get("wordings"):
        parts += wordings_block(report["wordings"], report.get("wordings_summary") or [])
    if report.get("adherence"):
        parts += adherence_block(report["adherence"])
    return parts
