"""The whole run's config and its file-path settings (`~` expanded; made absolute when a stored run is read back)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from cst_dist.config.base import StrictModel
from cst_dist.config.evaluation import EvalConfig
from cst_dist.config.stages import BuildConfig, DataConfig, GenerateConfig, ModelConfig, PipelineConfig, TrainConfig


class RunConfig(StrictModel):
    """Everything one run needs. Every stage writes into `run_dir`."""

    run_dir: str = "runs/default"
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @model_validator(mode="after")
    def _expand_home(self) -> RunConfig:
        # The shell does not expand `~` inside `key=~/x`: without this, run_dir=~/x makes a folder named `~`.
        for section, key in PATH_KEYS:
            owner = config_section(self, section)
            if owner is None:  # an optional section left out (model.tiny)
                continue
            value = getattr(owner, key)
            if isinstance(value, str) and value.startswith("~"):
                object.__setattr__(owner, key, os.path.expanduser(value))
            elif isinstance(value, list):
                object.__setattr__(owner, key, [os.path.expanduser(v) for v in value])
        return self

    @property
    def layout(self):
        """Every path of this run's folder (cst_dist.run_layout)."""
        from cst_dist.run_layout import RunLayout  # the layout module imports nothing of ours, but keeps it lazy

        return RunLayout.of(self)

    @property
    def preference_dir(self) -> Path:
        return self.layout.preference

    @property
    def pairs_dir(self) -> Path:
        return self.layout.pairs

    @property
    def train_data_dir(self) -> Path:
        return self.layout.train_data


# Every setting that names a file or folder: `~` is expanded, and `load_run_config` resolves them against the run root.
PATH_KEYS = (
    (None, "run_dir"), ("model", "path"), ("generate", "prompts"), ("generate", "templates"), ("generate", "output"),
    ("build", "pairs"), ("build", "released"), ("build", "extra_tasks"), ("build", "output"), ("train", "data"),
    ("train", "reference_cache"), ("eval", "generations"), ("eval", "preference_data"), ("eval", "reference"),
    ("eval", "pairs"), ("eval", "output"), ("eval.judge", "train_data"), ("eval.judge", "classifier_path"),
    ("eval.judge", "cache"),
    ("model.tiny", "tokenizer_corpus"),
    *((f"eval.benchmarks.{task}", key) for task in ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2")
      for key in ("path", "fewshot_path")),
)


def config_section(config: RunConfig, section: str | None) -> Any:
    """The config object a PATH_KEYS entry lives in: the root, `train`, or a nested `eval.judge`."""
    owner = config
    for name in (section.split(".") if section else ()):
        owner = getattr(owner, name) if owner is not None else None
    return owner
