"""train.dist_timeout_s: the process group's timeout (a dead or hung rank ends a collective instead of hanging it);
an operational setting, so a run resumed with another value is the same run."""

from __future__ import annotations

import os
import subprocess
import sys

from cst_dist.config import load_config
from cst_dist.training.identity import identity_hash, training_identity

PROBE = """
import torch, torch.distributed as dist
from cst_dist.training.distributed import setup_distributed
setup_distributed(7.5)
backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
print("timeout", backend.options._timeout.total_seconds())
"""


def test_the_timeout_reaches_the_process_group():
    # A fresh process: a process group already made in this one would be reused with its own timeout.
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "timeout 7.5" in result.stdout.splitlines()


def test_the_timeout_is_not_part_of_the_run_identity():
    default, other = load_config("tiny-cpu"), load_config("tiny-cpu", ["train.dist_timeout_s=60"])
    assert default.train.dist_timeout_s == 1800.0
    assert "dist_timeout_s" not in training_identity(default, "data")["train"]  # older runs keep their identity
    assert identity_hash(training_identity(default, "data")) == identity_hash(training_identity(other, "data"))
