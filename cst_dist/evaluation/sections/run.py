"""The sections of one `cst eval`: planned before any model loads, then answered, judged and scored per model.

    plan_sections   read every section file (XSTest, templates, wordings), build the items, probe each model's chat
                    template for the switch: bad input fails here, before any model loads
    run_sections    per model (its latest step): answers per section on the farm (resumable), verdicts of the judge
                    (and the refusal judge for over-refusal), report entries; adherence from all of them
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cst_dist.config import EvalConfig, ModelConfig
from cst_dist.evaluation.judges import Judge
from cst_dist.evaluation.judges.refusal import RefusalJudge
from cst_dist.evaluation.safety import ConversationItem, generate_answers
from cst_dist.evaluation.sections import adherence, overrefusal, overrides, switch, wordings
from cst_dist.evaluation.targets import EvalTarget
from cst_dist.farm.pool import KeptActors, ShardDone
from cst_dist.io import write_jsonl_atomic

log = logging.getLogger(__name__)
ANSWERED = ("overrefusal", "overrides", "switch", "wordings")  # the sections with answers of their own
MODULES = {"overrefusal": overrefusal, "overrides": overrides, "switch": switch, "wordings": wordings}


@dataclass
class SectionPlan:
    """The enabled sections (eval.sections order), their items (switch: per target key, its forms differ by chat
    template) and the targets they run on (each model's latest step)."""

    names: list[str]
    items: dict[str, list[ConversationItem]] = field(default_factory=dict)
    switch_items: dict[str, list[ConversationItem]] = field(default_factory=dict)
    targets: list[EvalTarget] = field(default_factory=list)

    def items_of(self, section: str, target: EvalTarget) -> list[ConversationItem]:
        return self.switch_items[target.key] if section == "switch" else self.items[section]


def latest_targets(targets: list[EvalTarget]) -> list[EvalTarget]:
    """Each model at its latest step (a plain folder has one): where the sections run."""
    latest: dict[str, EvalTarget] = {}
    for target in targets:
        held = latest.get(target.name)
        if held is None or (target.step or 0) > (held.step or 0):
            latest[target.name] = target
    return list(latest.values())


def plan_sections(eval_cfg: EvalConfig, targets: list[EvalTarget],
                  model_config_of: Callable[[EvalTarget], ModelConfig]) -> SectionPlan:
    """Every section's items, built from its files; the switch's forms per model from its tokenizer alone."""
    plan = SectionPlan(list(eval_cfg.sections))
    if not plan.names:
        return plan
    plan.targets = latest_targets(targets)
    for name in ("overrefusal", "overrides", "wordings"):
        if name in plan.names:
            plan.items[name] = MODULES[name].items(getattr(eval_cfg, name))
    if "switch" in plan.names:
        from cst_dist.chat import ChatEncoder
        from cst_dist.models import load_tokenizer

        for target in plan.targets:
            chat = ChatEncoder(load_tokenizer(model_config_of(target)))
            forms = switch.forms_for(eval_cfg.switch, chat.second_system, f"model {target.name!r} "
                                     f"({target.model_path})")
            plan.switch_items[target.key] = switch.items(eval_cfg.switch, forms)
    return plan


@dataclass
class SectionResults:
    """Report entries per report key, and per `<target key>/<section>` what its generation run did."""

    entries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    generation: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, key: str, entries: list[dict[str, Any]]) -> None:
        self.entries.setdefault(key, []).extend(entries)


def run_sections(plan: SectionPlan, target: EvalTarget, model_config: ModelConfig, eval_cfg: EvalConfig,
                 folder: Path, judge: Judge, refusal_judge: RefusalJudge | None, paper_rows: list[dict[str, Any]],
                 results: SectionResults, on_shard_done: Callable[[ShardDone], None] | None = None,
                 actors: KeptActors | None = None) -> None:
    """The sections of one target into `results`: `<folder>/<section>/generations/` (answers, per shard) and
    `<folder>/<section>/judged.jsonl` (answers + verdicts) per answered section, then adherence. `actors`: the
    model's kept answer replicas (safety.answer_actors), shared by every section."""
    judged: dict[str, list[dict[str, Any]]] = {adherence.PAPER: paper_rows}
    for name in (name for name in ANSWERED if name in plan.names):
        run = generate_answers(model_config, plan.items_of(name, target), eval_cfg,
                               folder / name / "generations", on_shard_done, actors)
        results.generation[f"{target.key}/{name}"] = {"shards": run.shards_total, "generated": run.shards_generated,
                                    "engine_calls": run.engine_calls, "retries": run.retries}
        rows = [{**row, **verdict} for row, verdict in zip(run.rows, judge.judge(run.rows), strict=True)]
        if name == "overrefusal":
            assert refusal_judge is not None  # built whenever the section is on
            rows = [{**row, "refusal": verdict["label"], "refusal_raw": verdict["judge_raw"]}
                    for row, verdict in zip(rows, refusal_judge.label(rows), strict=True)]
        write_jsonl_atomic(folder / name / "judged.jsonl", rows)
        judged[name] = rows
        entries = MODULES[name].entries(rows, target.name, target.step)
        results.add(name, entries)
        if name == "wordings":
            results.add("wordings_summary", wordings.summary(entries, target.name, target.step))
    if "adherence" in plan.names:
        results.add("adherence", [adherence.adherence_entry(judged, target.name, target.step)])
