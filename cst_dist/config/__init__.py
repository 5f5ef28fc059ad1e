"""Typed configuration for every stage: YAML presets plus dotted command-line overrides.

One home for defaults. `load_config("configs/tiny-cpu.yaml", ["train.beta=0.05"])` reads the preset, applies the
overrides and validates the result; an unknown key or a wrong type is an error that names the key. A run's stored
config (`<run_dir>/config.yaml`, and one in every checkpoint) is read back with `load_run_config`, which resolves its
relative paths against the folder the run was started from, so `cst export` works from any directory.

    base.py        strict models (unknown keys are errors), ConfigError
    stages.py      model, data, generate, build, train, pipeline sections
    evaluation.py  the eval section (judge, benchmarks, protocol)
    run.py         RunConfig: all sections, the path settings
    loading.py     presets, YAML, overrides, stored configs read back
A training run's identity (which settings decide its trajectory) lives with training: `cst_dist.training.identity`.
"""

from cst_dist.config.base import ConfigError, StrictModel
from cst_dist.config.evaluation import (
    LEADERBOARD_FEWSHOT,
    BenchmarksConfig,
    BenchmarkTaskConfig,
    EvalConfig,
    JudgeConfig,
)
from cst_dist.config.loading import (
    PRESET_DIR,
    apply_override,
    dump_config,
    format_validation_error,
    load_config,
    load_run_config,
    resolve_preset,
    run_root,
    save_resolved_config,
)
from cst_dist.config.run import PATH_KEYS, RunConfig, config_section
from cst_dist.config.stages import (
    PIPELINE_STAGES,
    SMOOTHED_LOSS_TYPES,
    BuildConfig,
    DataConfig,
    GenerateConfig,
    ModelConfig,
    PipelineConfig,
    SamplingConfig,
    TinyModelConfig,
    TrainConfig,
)

__all__ = [
    "BenchmarkTaskConfig", "BenchmarksConfig", "BuildConfig", "ConfigError", "DataConfig", "EvalConfig",
    "GenerateConfig", "JudgeConfig", "LEADERBOARD_FEWSHOT", "ModelConfig", "PATH_KEYS", "PIPELINE_STAGES",
    "PRESET_DIR", "PipelineConfig", "RunConfig", "SMOOTHED_LOSS_TYPES", "SamplingConfig", "StrictModel",
    "TinyModelConfig", "TrainConfig", "apply_override", "config_section", "dump_config", "format_validation_error",
    "load_config", "load_run_config", "resolve_preset", "run_root", "save_resolved_config",
]
