"""What `cst eval` evaluates: `eval.models` resolved to HF folders, one per model (or per checkpoint of a run).

A value is an exported HF folder, a run folder (its latest complete checkpoint; every one with
`eval.checkpoints=all`) or `RUN_FOLDER:TAG`. A checkpoint without an export is exported first, into the run folder,
by `cst export` itself (a subprocess: the evaluator never imports the trainer, nor DeepSpeed).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cst_dist.config import EvalConfig, RunConfig, load_run_config
from cst_dist.errors import UserError
from cst_dist.run_layout import CHECKPOINT_MARKER, EXPORT_MARKER, RunLayout, split_model_ref
from cst_dist.stage_process import export_args, run_cst

log = logging.getLogger(__name__)


class EvalError(UserError, ValueError):
    """An evaluation that cannot run; the message names the `eval.*` key or the path to fix."""


@dataclass(frozen=True)
class EvalTarget:
    """One model to evaluate: its name in the report, its HF folder, the training step (None for a plain folder)
    and the reference model of its run (for preference accuracy; None: use eval.reference / model.path)."""

    name: str
    model_path: Path
    step: int | None = None
    reference_path: Path | None = None

    @property
    def key(self) -> str:
        """Unique per target: names its folder under <eval>/ (checkpoints of one run share a report name)."""
        return self.name if self.step is None else f"{self.name}@{self.step}"


def default_models(config: RunConfig) -> dict[str, str]:
    """The run's own checkpoints when it has any, else the configured base model."""
    if config.layout.latest_checkpoint() is not None:
        return {"model": config.run_dir}
    return {"base": config.model.path}


def resolve_targets(config: RunConfig) -> list[EvalTarget]:
    """Every (name, folder) of `eval.models`, checked up front: a missing path or a run without a complete
    checkpoint is a one-line error before any model loads."""
    models = config.eval.models or default_models(config)
    targets: list[EvalTarget] = []
    for name, value in models.items():
        targets += _targets_of(name, value, config.eval)
    return targets


def _targets_of(name: str, value: str, eval_cfg: EvalConfig) -> list[EvalTarget]:
    path, tag = split_model_ref(value)
    folder = Path(os.path.expanduser(path))
    if not folder.exists():
        raise EvalError(f"eval.models.{name}: {folder} does not exist (an exported model folder or a run folder)")
    layout = RunLayout(folder)
    if not layout.checkpoints.is_dir():
        if not (folder / "config.json").is_file():
            raise EvalError(f"eval.models.{name}: {folder} is neither a model folder (config.json) nor a run folder")
        return [EvalTarget(name, folder)]
    tags = _checkpoint_tags(name, layout, tag, eval_cfg.checkpoints)
    reference = _run_reference(folder)
    return [EvalTarget(name, ensure_export(folder, tag), _step(layout, tag), reference) for tag in tags]


def _checkpoint_tags(name: str, layout: RunLayout, tag: str, which: str) -> list[str]:
    complete = layout.complete_tags()
    if tag:
        if tag not in complete:
            raise EvalError(f"eval.models.{name}: {layout.checkpoint(tag)} is not a complete checkpoint")
        return [tag]
    if not complete:
        raise EvalError(f"eval.models.{name}: run folder {layout.root} has no complete checkpoint (train first)")
    latest = layout.latest_checkpoint()
    return complete if which == "all" else [latest.name if latest else complete[-1]]


def _step(layout: RunLayout, tag: str) -> int:
    return int(json.loads((layout.checkpoint(tag) / CHECKPOINT_MARKER).read_text())["step"])


def _run_reference(run_dir: Path) -> Path | None:
    """The base model the run trained from (its DPO reference), from the config stored with the run."""
    layout = RunLayout(run_dir)
    latest = layout.latest_checkpoint()
    stored = latest / "config.yaml" if latest and (latest / "config.yaml").is_file() else layout.config_file
    if not stored.is_file():
        return None
    return Path(load_run_config(stored, run_dir).model.path)


def ensure_export(run_dir: Path, tag: str) -> Path:
    """The HF export of a checkpoint, made by `cst export` first when missing (a finished export has its marker)."""
    folder = RunLayout(run_dir).export(tag)
    if (folder / EXPORT_MARKER).is_file():
        return folder
    log.info("exporting %s of %s for evaluation", tag, run_dir)
    import torch

    dtype = "bfloat16" if torch.cuda.is_available() else "float32"  # what the model runs in here (models.select_dtype)
    code, last_line = run_cst(export_args(run_dir, tag, dtype=dtype))
    if code != 0:
        raise EvalError(f"exporting {run_dir} {tag} failed (exit {code}): {last_line}")
    return folder
