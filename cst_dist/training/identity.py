"""A training run's identity: the settings that decide its trajectory. One run folder holds checkpoints of one
identity; a resume with another is refused, naming the keys that changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cst_dist.config import RunConfig, TrainConfig

# Train settings that do not change the trajectory: a run resumed with another value is still the same run.
# logits_chunk_size: the same sums in another order (1e-6 apart), so a resume may change it.
OPERATIONAL_TRAIN_KEYS = ("resume", "overwrite", "save_steps", "keep_checkpoints", "log_steps", "reference_cache",
                          "dist_timeout_s", "logits_chunk_size")


# Train keys added after run folders existed (the sft objective): left out of the identity at their defaults.
IDENTITY_KEYS_ADDED_LATER = ("objective", "sft_responses", "sft_system_prompt", "group_pairs")


def training_identity(config: RunConfig, data_fingerprint: str) -> dict[str, Any]:
    """The settings that decide a training run's trajectory; one run folder holds checkpoints of one identity.

    The preference set enters by its content fingerprint, not its path, so moving the data keeps the identity.
    """
    identity = config.model_dump(mode="json", include={"model", "data", "train"})
    identity["model"]["path"] = str(Path(config.model.path).resolve())  # `models/x` and `/abs/models/x` are one model
    for key in OPERATIONAL_TRAIN_KEYS + ("data",):
        identity["train"].pop(key, None)
    for key in IDENTITY_KEYS_ADDED_LATER:  # at their defaults they change nothing: older runs keep their identity
        if identity["train"].get(key) == TrainConfig.model_fields[key].default:
            identity["train"].pop(key)
    identity["train_data_fingerprint"] = data_fingerprint
    return identity


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def identity_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identities (for an error that names what changed)."""
    keys = sorted(set(old) | set(new))
    # A key left out of an identity (added later, at its default) shows as that default, not as None.
    omitted = {k: TrainConfig.model_fields[k].default for k in IDENTITY_KEYS_ADDED_LATER} if prefix == "train." else {}
    differences = []
    for key in keys:
        a, b = old.get(key, omitted.get(key)), new.get(key, omitted.get(key))
        if isinstance(a, dict) and isinstance(b, dict):
            differences += identity_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return differences
