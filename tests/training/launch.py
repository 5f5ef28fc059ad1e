"""Helpers for trainer tests: config overrides for short tiny runs, a torchrun launcher, the metrics reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def train_overrides(model_path: str, data: Path, run_dir: Path, **extra) -> list[str]:
    base = {
        "model.path": model_path, "train.data": str(data), "run_dir": str(run_dir),
        "data.max_length": 96, "data.max_prompt_length": 48, "data.pack_row_tokens": 384,
        "train.learning_rate": 1e-3, "train.global_batch_size": 8, "train.micro_batch_size": 2,
        "train.max_steps": 6, "train.save_steps": 100, "train.warmup_ratio": 0.0,
        "train.group_pairs": False,  # the preset groups pairs; these tests (and the golden loss curve) shuffle rows
    }
    base.update(extra)
    return [f"{key}={value}" for key, value in base.items()]


def launch(overrides: list[str], nproc: int = 2, nnodes: int = 1, wait: bool = True, timeout: float = 300):
    """`torchrun ... -m cst_dist.cli train tiny-cpu OVERRIDES` with a fresh port; two simulated nodes when nnodes=2."""
    from cst_dist.training.distributed import _free_port

    port = str(_free_port())
    if nnodes == 1:
        launcher = ["--standalone", f"--nproc_per_node={nproc}"]
        commands = [launcher]
    else:  # one process per "node", rendezvous over 127.0.0.1 as on two real hosts
        commands = [[f"--nnodes={nnodes}", "--nproc_per_node=1", f"--node_rank={rank}", "--master_addr=127.0.0.1",
                     f"--master_port={port}"] for rank in range(nnodes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args, "-m", "cst_dist.cli", "train",
                          "tiny-cpu", *overrides], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
        for args in commands
    ]
    if not wait:
        return procs
    outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-4000:]
    return outputs[0]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
