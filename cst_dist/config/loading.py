"""Reading configs: presets, YAML files, dotted overrides, and a run's stored config read back from any directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cst_dist.config.base import ConfigError
from cst_dist.config.run import PATH_KEYS, RunConfig, config_section
from cst_dist.io import read_marker, write_text_atomic

# Package data (cst_dist/configs/, shipped in the wheel); the top-level configs/ of a checkout is a symlink to it.
PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"


def resolve_preset(name_or_path: str) -> Path:
    """A YAML path, or the name of a preset in configs/ (`tiny-cpu`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    presets = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a preset (presets: {', '.join(presets)})")


def apply_override(tree: dict[str, Any], dotted: str) -> None:
    """Apply `a.b.c=value` to a nested dict; the value is parsed as YAML (`0.05`, `null`, `[x, y]`)."""
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} is not of the form key=value (e.g. train.beta=0.05)")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"override {key!r}: the value {raw!r} is not valid YAML ({problem}); quote it, e.g. "
                          f"{key}='\"...\"'") from None


def format_validation_error(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append(f"{key}: {message}")
    return f"invalid config ({source}): " + "; ".join(problems)


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    path = resolve_preset(name_or_path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    for dotted in overrides:
        apply_override(tree, dotted)
    source = str(path) + (f" with overrides {list(overrides)}" if overrides else "")
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def dump_config(config: RunConfig) -> str:
    """The config as resolved (defaults filled in), as YAML that `load_config` reads back to an equal config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_resolved_config(config: RunConfig, run_dir: str | os.PathLike | None = None) -> Path:
    """Write the config as resolved (defaults filled in) to <run_dir>/config.yaml, atomically."""
    target = Path(run_dir or config.run_dir) / "config.yaml"
    write_text_atomic(target, dump_config(config))
    return target


def run_root(run_dir: str | os.PathLike, stored_run_dir: str) -> Path:
    """The folder a run was started from: the stored `run_dir` is relative to it, so it is `run_dir` with the stored
    relative path taken off its end (`/x/runs/a` for `runs/a` gives `/x`). An absolute stored path: the current dir."""
    actual, stored = Path(run_dir).resolve(), Path(stored_run_dir)
    if stored.is_absolute() or not stored.parts:
        # The run's other relative paths (model.path, ...) are relative to where it was started: run.json says.
        recorded = (read_marker(actual, "run.json") or {}).get("workdir")
        return Path(recorded) if isinstance(recorded, str) and Path(recorded).is_dir() else Path.cwd()
    if actual.parts[-len(stored.parts):] == stored.parts:
        return Path(*actual.parts[: -len(stored.parts)])
    return actual.parent  # the run folder was renamed: its parent is the best guess


def load_run_config(config_file: str | os.PathLike, run_dir: str | os.PathLike) -> RunConfig:
    """A run's stored config with `run_dir` set to where the run is now and relative paths made absolute against the
    run's root, so the stored config works from any directory (export, eval)."""
    config = load_config(str(config_file))
    root = run_root(run_dir, config.run_dir)
    absolute = lambda value: value if value is None or Path(value).is_absolute() else str(root / value)
    for section, key in PATH_KEYS:
        owner = config_section(config, section)
        if owner is None:
            continue
        value = getattr(owner, key)
        value = [absolute(v) for v in value] if isinstance(value, list) else absolute(value)
        object.__setattr__(owner, key, value)
    object.__setattr__(config, "run_dir", str(Path(run_dir).resolve()))
    # The run's model exists (it trained on it): a missing one is an error, never a new random tiny model.
    object.__setattr__(config.model, "tiny", None)
    return config
