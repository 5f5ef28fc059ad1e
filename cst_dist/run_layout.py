"""Every path of a run folder, and how to tell that a stage's output there is complete.

    <run_dir>/config.yaml                    the resolved config of the training run (also inside every checkpoint)
    <run_dir>/run.json                       the identity of the one training run the folder holds
    <run_dir>/pairs/                         `cst generate`: shard files + manifest.json (complete: true when done)
    <run_dir>/preference/                    `cst build`: Parquet splits + manifest.json (stage: build)
    <run_dir>/reference_logps.safetensors    precomputed reference log-probs (train.reference=precomputed)
    <run_dir>/checkpoints/<tag>/             `cst train`: DeepSpeed shards + config.yaml + complete.json (last)
    <run_dir>/checkpoints/latest             the newest complete tag
    <run_dir>/metrics.jsonl, tensorboard/    training metrics
    <run_dir>/export/<tag>/                  `cst export`: an HF folder + export.json (last)
    <run_dir>/eval/                          `cst eval`: <model>/generations/, judge/, report.json|md, charts
Stages read and write paths through this module only, so a pipeline can ask "is this stage done?" in one place.
Nothing here imports a stage (only the floor's io) or reads a config: `RunLayout.of(config)` takes what the config says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cst_dist.io import read_marker

STAGES = ("generate", "build", "train", "export", "eval")
MANIFEST = "manifest.json"  # pairs/ and preference/
CHECKPOINT_MARKER = "complete.json"  # a checkpoint counts once this exists
EXPORT_MARKER = "export.json"  # an export counts once this exists
RUN_FILE = "run.json"
REFERENCE_CACHE = "reference_logps.safetensors"
EVAL_REPORT = "report.json"


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run folder. `pairs`, `preference` and `train_data` may point elsewhere (config overrides)."""

    root: Path
    pairs_override: Path | None = None
    preference_override: Path | None = None
    train_data_override: Path | None = None
    eval_override: Path | None = None

    @classmethod
    def of(cls, config: Any) -> RunLayout:
        """The layout a RunConfig describes (`generate.output`, `build.output`, `train.data` override defaults)."""
        optional = lambda value: Path(value) if value else None  # noqa: E731
        return cls(Path(config.run_dir), optional(config.generate.output), optional(config.build.output),
                   optional(config.train.data), optional(config.eval.output))

    @property
    def pairs(self) -> Path:
        return self.pairs_override or self.root / "pairs"

    @property
    def preference(self) -> Path:
        return self.preference_override or self.root / "preference"

    @property
    def train_data(self) -> Path:
        return self.train_data_override or self.preference

    config_file = property(lambda self: self.root / "config.yaml")
    run_file = property(lambda self: self.root / RUN_FILE)
    reference_cache = property(lambda self: self.root / REFERENCE_CACHE)
    checkpoints = property(lambda self: self.root / "checkpoints")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    tensorboard = property(lambda self: self.root / "tensorboard")
    exports = property(lambda self: self.root / "export")

    @property
    def eval(self) -> Path:
        return self.eval_override or self.root / "eval"

    def checkpoint(self, tag: str) -> Path:
        return self.checkpoints / tag

    def export(self, tag: str) -> Path:
        return self.exports / tag

    def complete_tags(self) -> list[str]:
        """Tags of the complete checkpoints (their marker exists), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p.name for p in self.checkpoints.iterdir() if p.is_dir() and (p / CHECKPOINT_MARKER).is_file())

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint `latest` names, if it is complete."""
        latest = self.checkpoints / "latest"
        if not latest.is_file():
            return None
        folder = self.checkpoint(latest.read_text().strip())
        return folder if (folder / CHECKPOINT_MARKER).is_file() else None

    def stage_complete(self, stage: str) -> bool:
        """Whether `stage`'s output in this folder is complete (a pipeline skips such a stage)."""
        if stage == "generate":
            return _json(self.pairs / MANIFEST).get("complete") is True
        if stage == "build":
            return _json(self.preference / MANIFEST).get("stage") == "build"
        if stage == "train":
            latest = self.latest_checkpoint()
            return latest is not None and _json(latest / CHECKPOINT_MARKER).get("final") is True
        if stage == "export":
            latest = self.latest_checkpoint()
            return latest is not None and (self.export(latest.name) / EXPORT_MARKER).is_file()
        if stage == "eval":
            return (self.eval / EVAL_REPORT).is_file()
        raise ValueError(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")


def split_model_ref(value: str) -> tuple[str, str]:
    """An `eval.models` value: (folder, checkpoint tag) for `RUN:TAG`, (folder, "") for a folder. A path that exists
    as written is a folder even when it holds a colon."""
    return tuple(value.partition(":")[::2]) if ":" in value and not Path(value).exists() else (value, "")


def _json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when it is absent or torn (an incomplete stage, never an error here)."""
    return read_marker(path.parent, path.name) or {}
