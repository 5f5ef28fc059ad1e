"""What each variant of the trainer benchmark runs: one lever changed at a time against `trl` or `cst`."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "trainer_throughput.py"  # the entry point; workers are this script with --worker
DEFAULT_RELEASED = REPO.parent / "shared" / "data" / "configurable-system-prompt-multitask.json"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "trainer_throughput.json"

ALL_VARIANTS = ("trl", "trl-precomputed", "trl-gc", "cst", "cst-gc", "cst-padded", "cst-rows", "cst-zero3",
                "cst-offload")
DEFAULT_VARIANTS = "trl,trl-precomputed,cst,cst-padded,cst-rows,cst-zero3"  # the random-weights workload
REAL_MODEL_VARIANTS = "trl,trl-precomputed,cst,cst-gc"  # --model: what gradient checkpointing costs and saves
LABELS = {
    "trl": "TRL DPOTrainer (default: live reference)",
    "trl-precomputed": "TRL DPOTrainer, precomputed ref (TRL's best)",
    "trl-gc": "TRL DPOTrainer, precomputed ref, gradient checkpointing",
    "cst": "cst-dist: packed varlen, precomputed ref, ZeRO auto (1)",
    "cst-gc": "cst-dist: as cst, gradient checkpointing",
    "cst-padded": "cst-dist: padded, precomputed ref, ZeRO-1",
    "cst-rows": "cst-dist: packed rows <= max_length, SDPA mask, ZeRO-1",
    "cst-zero3": "cst-dist: packed varlen, precomputed ref, ZeRO-3",
    "cst-offload": "cst-dist: packed varlen, live ref offloaded, ZeRO-1",
}
# What each TRL variant sets in its worker's spec.
TRL_EXTRA = {
    "trl": {"precompute": False, "gradient_checkpointing": False},
    "trl-precomputed": {"precompute": True, "gradient_checkpointing": False},
    # DPOConfig's own default is gradient_checkpointing=True; the other TRL variants turn it off, as cst's default is.
    "trl-gc": {"precompute": True, "gradient_checkpointing": True},
}
# What each cst variant changes against `cst` (the package's defaults on this machine): one lever each.
CST_EXTRA = {
    "cst": {}, "cst-gc": {"train.gradient_checkpointing": "true"}, "cst-padded": {"data.packing": "false"},
    "cst-rows": {"model.attn_implementation": "sdpa"}, "cst-zero3": {"train.zero_stage": 3},
    "cst-offload": {"train.reference": "offload"},
}
PADDING = {
    "cst": "packed: the micro-batch's 2B sequences end to end in one row, varlen attention, no padding",
    "cst-padded": "right-padded to the longest of the micro-batch's 2B sequences",
    "cst-rows": "packed first-fit decreasing into rows of at most max_length tokens (SDPA block-diagonal mask)",
    "cst-gc": "as cst", "cst-zero3": "as cst", "cst-offload": "as cst",
}
