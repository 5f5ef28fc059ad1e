"""The memory planner (`cst bench plan`, cst_dist/bench/plan.py) run on the benchmark's own settings, so each cst
variant's measured peak stands beside the prediction for it."""

from __future__ import annotations

import os
from pathlib import Path

from cst_dist.bench.plan import Inputs, architecture_from_file, plan_one
from cst_dist.config import load_config

GIB = 2**30
HOST_RUNTIME_GIB = 8.0  # `cst bench plan --host-runtime-gib` default; host memory is not compared here


def machine_memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def predict(overrides: list[str], model_path: str, device: str, heaviest: dict, max_length: int) -> dict:
    """The planner's per-rank total for one process (`--gpus 1`) under the variant's `cst train` overrides, twice:
    for the heaviest micro-batch the sampled rows can make (its tokens per sequence and response share, the shape
    that sets the activation peak) and for the planner's defaults (every sequence max_length long, logits at every
    position: what `cst bench plan` prints when given no measured shape).

    The runtime allowance is the planner's CPU default (0.59 GiB: the Python, torch and DeepSpeed process itself) on
    CPU, and 0 on GPU, where the measured figure, torch.cuda.max_memory_allocated, holds no CUDA context either."""
    config = load_config("tiny-cpu", overrides)
    arch = architecture_from_file(Path(model_path) / "config.json")
    cpu = device == "cpu"
    runtime = 0.59 if cpu else 0.0
    memory = machine_memory_gib() if cpu else 80.0

    def total(tokens_per_sequence: int, response_share: float) -> dict:
        inputs = Inputs(gpus=1, gpu_mem_gib=memory, host_mem_gib=memory, gpus_per_node=1, runtime_gib=runtime,
                        host_runtime_gib_per_rank=HOST_RUNTIME_GIB, tokens_per_sequence=tokens_per_sequence,
                        response_share=response_share, dtype_bytes=4 if cpu else 2)
        plan = plan_one(config, arch, inputs)
        command = (f"cst bench plan tiny-cpu {' '.join(overrides)} --device {device} --gpus 1 --gpus-per-node 1 "
                   f"--runtime-gib {runtime} --tokens-per-sequence {tokens_per_sequence} "
                   f"--response-share {response_share:.3f}")
        return {"total_gib": plan.total_gib, "parts_gib": plan.per_gpu_gib, "zero_stage": plan.zero_stage,
                "tokens_per_sequence": tokens_per_sequence, "response_share": response_share, "command": command}

    return {"measured_shape": total(heaviest["tokens_per_sequence"], heaviest["response_share"]),
            "worst_case": total(max_length, 1.0)}


def compare(plans: dict, rows: list[dict]) -> dict:
    """Add each variant's measured peak (the largest of its repetitions, in the training process) and the planner's
    error against it, (predicted - measured) / measured."""
    measured = {row["variant"]: row.get("peak_memory_gib") for row in rows}
    for variant, plan in plans.items():
        plan["measured_gib"] = measured.get(variant)
        for prediction in (plan["measured_shape"], plan["worst_case"]):
            value = plan["measured_gib"]
            prediction["off_percent"] = 100 * (prediction["total_gib"] - value) / value if value else None
    return plans
