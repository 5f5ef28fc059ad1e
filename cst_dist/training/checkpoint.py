"""Sharded checkpoints: DeepSpeed's own format, plus a completion marker that makes a save count.

<run_dir>/checkpoints/step-00000010/   DeepSpeed shards (model, optimizer, scheduler), client state, rng_state_<r>.pt
                                       + complete.json, written last, only after every rank finished writing
<run_dir>/checkpoints/latest          the newest complete tag (DeepSpeed's format, so zero_to_fp32.py reads it too)
A save that was interrupted has no complete.json and is never resumed from.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cst_dist.data.io import write_json_atomic, write_text_atomic
from cst_dist.training.distributed import DistEnv, barrier

log = logging.getLogger(__name__)
MARKER = "complete.json"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def tag_for_step(step: int) -> str:
    return f"step-{step:08d}"


def complete_tags(root: Path) -> list[str]:
    """Tags of complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / MARKER).is_file())


def save_checkpoint(engine, env: DistEnv, run_dir: str | Path, step: int, client_state: dict[str, Any], keep: int):
    root = checkpoint_root(run_dir)
    tag = tag_for_step(step)
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    # RNG is per rank; DeepSpeed's client_state is written by rank 0 only.
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save(rng, root / tag / f"rng_state_{env.rank}.pt")
    barrier()  # every rank's shards are on disk before the checkpoint is declared complete
    if env.is_rank_zero:
        write_json_atomic(root / tag / MARKER, {"step": step, "world_size": env.world_size})
        write_text_atomic(root / "latest", tag)
        for old in complete_tags(root)[:-keep]:
            shutil.rmtree(root / old, ignore_errors=True)
    barrier()
    log.info("checkpoint %s saved", root / tag)
    return root / tag


def find_resume_checkpoint(run_dir: str | Path, resume: str) -> Path | None:
    """`never`: None. `auto`: the newest complete checkpoint of the run (None if there is none). A path: that one,
    which must be complete."""
    if resume == "never":
        return None
    if resume == "auto":
        tags = complete_tags(checkpoint_root(run_dir))
        return checkpoint_root(run_dir) / tags[-1] if tags else None
    path = Path(resume)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"train.resume={resume}: not a complete checkpoint (no {MARKER}: save cut off?)")
    return path


def load_checkpoint(engine, env: DistEnv, path: Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG; returns the client state (step, ...)."""
    _, client_state = engine.load_checkpoint(
        str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if client_state is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {path}")
    rng_file = path / f"rng_state_{env.rank}.pt"
    if rng_file.is_file():  # absent when resuming on a different number of ranks: data order does not need it
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
    marker = json.loads((path / MARKER).read_text())
    log.info("resumed from %s (step %d)", path, marker["step"])
    return client_state
