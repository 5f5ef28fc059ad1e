"""DeepSpeed configs: the JSON templates in ds_configs/ with their "auto" fields filled in by one pure function."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from cst_dist.config import ConfigError, TrainConfig
from cst_dist.training.data import BatchPlan

# Package data (cst_dist/ds_configs/, shipped in the wheel); the top-level ds_configs/ of a checkout links to it.
TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "ds_configs"


def load_template(name: str) -> dict[str, Any]:
    return json.loads((TEMPLATE_DIR / f"{name}.json").read_text())


def fill_auto(
    template: dict[str, Any], *, micro_batch_size: int, accumulation: int, world_size: int, max_grad_norm: float,
    bf16: bool, hidden_size: int, zero_stage: int,
) -> dict[str, Any]:
    """Replace every "auto" with its value. Bucket sizes follow the hidden size, as HF's Trainer and TRL size them."""
    config = copy.deepcopy(template)
    values = {
        "train_batch_size": micro_batch_size * accumulation * world_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": max_grad_norm,
    }
    for key, value in values.items():
        if config.get(key) == "auto":
            config[key] = value
    if config.get("bf16", {}).get("enabled") == "auto":
        config["bf16"]["enabled"] = bf16
    zero = config.setdefault("zero_optimization", {})
    zero["stage"] = zero_stage
    buckets = {
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
    }
    for key, value in buckets.items():
        if zero.get(key) == "auto":
            zero[key] = value
    if zero_stage < 3:  # stage-3-only keys are rejected by lower stages' config checks
        for key in [k for k in zero if k.startswith("stage3_") or k == "offload_param"]:
            del zero[key]
    return config


def resolve_zero_stage(zero_stage: int | str, world_size: int) -> int:
    """`auto`: ZeRO-3 where there are ranks to partition over; on one process ZeRO-1, which partitions nothing but
    keeps DeepSpeed's ZeRO checkpoint layout (so `cst export` and zero_to_fp32.py read it as they read ZeRO-3's).
    Measured on the realistic benchmark (benchmarks/trainer_throughput.py, 1 process): ZeRO-1/2 step within noise of
    ZeRO-0, ZeRO-3 12-15% slower. A resume needs the same world size, so it resolves to the same stage."""
    if zero_stage != "auto":
        return int(zero_stage)
    return 1 if world_size == 1 else 3


def policy_config(train: TrainConfig, plan: BatchPlan, bf16: bool, hidden_size: int) -> dict[str, Any]:
    template = load_template("zero3_policy_offload_optimizer" if train.optimizer_offload else "zero3_policy")
    return fill_auto(
        template, micro_batch_size=plan.micro_batch_size, accumulation=plan.accumulation,
        world_size=plan.world_size, max_grad_norm=train.max_grad_norm, bf16=bf16, hidden_size=hidden_size,
        zero_stage=resolve_zero_stage(train.zero_stage, plan.world_size),
    )


def reference_config(train: TrainConfig, plan: BatchPlan, bf16: bool, hidden_size: int) -> dict[str, Any]:
    """Inference-only engine for the frozen reference: ZeRO-3 with parameters offloaded to CPU (`offload`), ZeRO-3
    on the device (`gpu`), or stage 0, a full replica per rank, when `train.reference_zero_stage=0`."""
    if train.reference == "offload" and train.reference_zero_stage != 3:
        raise ConfigError("train.reference=offload needs train.reference_zero_stage=3 (offload partitions parameters)")
    template = load_template("zero3_reference_offload")
    if train.reference != "offload":
        template["zero_optimization"].pop("offload_param", None)
    config = fill_auto(
        template, micro_batch_size=plan.micro_batch_size, accumulation=plan.accumulation,
        world_size=plan.world_size, max_grad_norm=train.max_grad_norm, bf16=bf16, hidden_size=hidden_size,
        zero_stage=train.reference_zero_stage,
    )
    config.pop("gradient_clipping", None)
    return config
