"""`cst eval`: models -> answers (farm) -> verdicts (judge) -> S0/S1 scores, preference accuracy, general
benchmarks, the sections beyond the paper (eval.sections) -> report.

    <eval>/<model>[@step]/generations/   answers, per shard (resumable)
    <eval>/<model>[@step]/judged.jsonl   the answers with `safe` (true | false | null) and `judge_raw`
    <eval>/<model>[@step]/benchmarks/    benchmark log-likelihoods per question, per shard (resumable)
    <eval>/<model>[@step]/<section>/     eval.sections beyond the paper (latest step): generations/, judged.jsonl
    <eval>/judge/                 the classifier judge's saved model, the http judge's verdict cache
    <eval>/report.json|md, *.png  the report (schema: cst_dist.evaluation.report)
Every check that needs no model runs first: a bad `eval.models` entry, judge setting or benchmark file fails before
any load.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cst_dist.config import ConfigError, RunConfig
from cst_dist.evaluation.benchmarks.run import benchmark_entries, load_suite, score_items
from cst_dist.evaluation.judges import build_judge, build_refusal_judge, judge_info
from cst_dist.evaluation.preference import preference_accuracy, preference_rows
from cst_dist.evaluation.report import make_report, render_table, write_report
from cst_dist.evaluation.safety import answer_actors, generate_answers, safety_items
from cst_dist.evaluation.scores import load_labelled, score_labelled, score_safety
from cst_dist.evaluation.sections.run import SectionResults, plan_sections, run_sections
from cst_dist.evaluation.self_critique import self_critique_yield
from cst_dist.evaluation.targets import EvalTarget, resolve_targets
from cst_dist.farm.cluster import FarmSettings, ray_session
from cst_dist.farm.pool import ShardDone
from cst_dist.io import check_writable_dir, write_jsonl_atomic
from cst_dist.run_layout import RunLayout, split_model_ref

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """The report as written, where its files are, and per model what the generation run did."""

    report: dict[str, Any]
    files: dict[str, Path]
    table: str
    generation: dict[str, Any]


def run_eval(config: RunConfig, on_shard_done: Callable[[ShardDone], None] | None = None) -> EvalResult:
    eval_cfg = config.eval
    refuse_other_stage_folder(config)
    folder = check_writable_dir(config.layout.eval, "eval.output")
    if eval_cfg.generations:  # labelled rows: scored as they are, no model and no judge (the paper's Table I)
        if eval_cfg.sections:
            raise ConfigError(f"eval.sections={eval_cfg.sections} answers with models, but eval.generations scores a "
                              "file of labelled answers; set eval.sections=[] or unset eval.generations")
        rows = load_labelled(eval_cfg.generations)  # rows name their model and step; else one model, the file's name
        report = make_report(score_labelled(rows, "labels of the file", Path(eval_cfg.generations).stem),
                             judge={"kind": "labels", "source": str(eval_cfg.generations)})
        return _finish(folder, report, {})
    targets = resolve_targets(config)
    suite = load_suite(eval_cfg.benchmarks)  # every benchmark file read, every prompt built: before any model loads
    model_config_of = lambda target: config.model.model_copy(  # noqa: E731
        update={"path": str(target.model_path), "tiny": None})
    sections = plan_sections(eval_cfg, targets, model_config_of)  # section files read, chat templates probed
    judge = build_judge(eval_cfg.judge, workdir=folder, train_data=judge_training_data(config))
    refusal_judge = build_refusal_judge(eval_cfg, workdir=folder) if "overrefusal" in sections.names else None
    items, benchmark_items = safety_items(eval_cfg), suite.items()
    safety, benchmarks, generation, beyond = [], [], {}, SectionResults()
    with contextlib.ExitStack() as farm:
        if sections.names:  # several farm runs per model: one Ray session for all (each would start its own)
            farm.enter_context(ray_session(eval_cfg.connect_timeout_s))
        for target in targets:
            model_config = model_config_of(target)
            with answer_actors(model_config, eval_cfg) as actors:  # one replica start for the paper and sections
                run = generate_answers(model_config, items, eval_cfg, folder / target.key / "generations",
                                       on_shard_done, actors)
                generation[target.key] = {"shards": run.shards_total, "generated": run.shards_generated,
                                           "engine_calls": run.engine_calls, "retries": run.retries}
                labelled = [{**row, **verdict} for row, verdict in zip(run.rows, judge.judge(run.rows), strict=True)]
                write_jsonl_atomic(folder / target.key / "judged.jsonl", labelled)
                safety += score_safety(labelled, target.name, judge.name, target.step)
                if target in sections.targets:  # the sections beyond the paper, at each model's latest step
                    run_sections(sections, target, model_config, eval_cfg, folder / target.key, judge,
                                 refusal_judge, labelled, beyond, on_shard_done, actors)
            if benchmark_items:  # scored on the farm like the answers; none when no task is configured
                scored = score_items(model_config, benchmark_items, eval_cfg.benchmarks,
                                     FarmSettings.of("eval", eval_cfg), folder / target.key / "benchmarks",
                                     on_shard_done)
                benchmarks += benchmark_entries(suite, scored.rows, target.name, target.step)
    safety += starting_points(safety, targets)
    report = make_report(safety, preference_view(config, targets), judge_info(judge), benchmarks, suite.skipped)
    report.update(beyond.entries)
    if refusal_judge is not None:
        report["refusal_judge"] = refusal_judge.info()
    generation.update(beyond.generation)
    if eval_cfg.pairs:
        log.info("judging the y0 and y1 of %s (self-critique yield)", eval_cfg.pairs)
        report["self_critique"] = self_critique_yield(Path(eval_cfg.pairs), judge)
    return _finish(folder, report, generation)


def starting_points(safety: list[dict[str, Any]], targets: list[EvalTarget]) -> list[dict[str, Any]]:
    """Step 0 of a run scored at its checkpoints: the scores of the model it trained from (its reference), when that
    model is evaluated too, so the curve over training starts where training did."""
    plain = {Path(t.model_path).resolve(): t.name for t in targets if t.step is None}
    added = []
    for name in dict.fromkeys(t.name for t in targets if t.step is not None):
        reference = next((t.reference_path for t in targets if t.name == name and t.reference_path), None)
        start = plain.get(Path(reference).resolve()) if reference else None
        if start is not None and start != name:
            added += [{**entry, "model": name, "step": 0, "start": start} for entry in safety
                      if entry["model"] == start and entry["step"] is None]
    return added


def refuse_other_stage_folder(config: RunConfig) -> None:
    """eval.output must not sit inside what another stage owns: checkpoints, exports, pairs or the preference set
    of this run or of a run it evaluates (a rotation or an overwrite there would take the report with it)."""
    output = config.layout.eval.resolve()
    runs = [Path(config.run_dir)] + [Path(split_model_ref(value)[0]) for value in config.eval.models.values()]
    for run in runs:
        layout = RunLayout(run)
        for stage, owned in (("train", layout.checkpoints), ("export", layout.exports), ("generate", layout.pairs),
                             ("build", layout.preference)):
            owned = owned.resolve()
            if output == owned or owned in output.parents:
                raise ConfigError(f"eval.output {config.layout.eval} is inside {owned}, which `cst {stage}` owns; "
                                  "choose a folder of its own (default: <run_dir>/eval)")


def judge_training_data(config: RunConfig) -> Path | None:
    """What the classifier judge learns from when eval.judge.train_data is unset: the paper's released set if the
    config names one that exists, else the run's preference set (its train split only, never test prompts)."""
    released = config.build.released
    if released and Path(released).is_file():
        return Path(released)
    return config.preference_dir if config.preference_dir.is_dir() else None


def preference_view(config: RunConfig, targets: list[EvalTarget]) -> list[dict[str, Any]]:
    """Preference accuracy on the build's held-out split for every target (skipped, with a reason, without one)."""
    folder = Path(config.eval.preference_data) if config.eval.preference_data else config.preference_dir
    if not config.eval.preference:
        return []
    if not any((folder / "data").glob("eval-*.parquet")):
        log.warning("preference accuracy skipped: %s has no eval split (build with build.eval_fraction > 0, or set "
                    "eval.preference_data)", folder)
        return []
    rows = preference_rows(folder, config.eval.system_prompts)
    tasks = config.eval.preference_tasks
    if tasks is not None:
        rows = [row for row in rows if row["task"] in tasks]
        if not rows:
            raise ConfigError(f"eval.preference_tasks={tasks}: the eval split of {folder} has no rows of these tasks")
    entries, memo = [], {}  # the shared reference is scored once for every target
    for target in targets:
        reference = target.reference_path or Path(config.eval.reference or config.model.path)
        if Path(target.model_path).resolve() == Path(reference).resolve():
            log.info("preference accuracy of %s skipped: it is its own reference (every margin is 0)", target.name)
            continue
        entries += preference_accuracy(target.model_path, reference, rows, config.data, target.name, target.step,
                                       batch_size=config.eval.batch_size, memo=memo)
    return entries


def _finish(folder: Path, report: dict[str, Any], generation: dict[str, Any]) -> EvalResult:
    files = write_report(folder, report)
    return EvalResult(report, files, render_table(report), generation)
