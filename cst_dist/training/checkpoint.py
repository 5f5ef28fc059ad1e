"""Sharded checkpoints: DeepSpeed's own format, plus a completion marker that makes a save count.

<run_dir>/run.json                     the identity of the one run this folder holds (training-relevant settings)
<run_dir>/checkpoints/step-00000010/   DeepSpeed shards (model, optimizer, scheduler), client state,
                                       rng_state_<rank>.json, config.yaml (the run's resolved config)
                                       + complete.json, written last, only after every rank finished writing
<run_dir>/checkpoints/latest          the newest complete tag (DeepSpeed's format, so zero_to_fp32.py reads it too)
A save that was interrupted has no complete.json and is never resumed from. A tag is re-saved only after its marker
is gone and `latest` no longer names it, so a kill at any moment leaves every marked checkpoint whole.
DeepSpeed's shards are pickles: resume or export only checkpoints you trust. Our own files here are JSON.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cst_dist.config import RunConfig, dump_config
from cst_dist.errors import UserError
from cst_dist.io import write_json_atomic, write_text_atomic
from cst_dist.run_layout import CHECKPOINT_MARKER, RunLayout
from cst_dist.training.distributed import DistEnv, barrier
from cst_dist.training.identity import identity_differences, identity_hash

log = logging.getLogger(__name__)
MARKER = CHECKPOINT_MARKER  # the name tests and export know it by


class CheckpointError(UserError, ValueError):
    pass


def tag_for_step(step: int) -> str:
    return f"step-{step:08d}"


def read_marker(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MARKER).read_text())


def complete_tags(layout: RunLayout, run_hash: str | None = None) -> list[str]:
    """Tags of complete checkpoints, oldest first; with `run_hash`, only those saved by that run."""
    tags = layout.complete_tags()
    if run_hash is not None:
        tags = [tag for tag in tags if read_marker(layout.checkpoint(tag)).get("run") == run_hash]
    return tags


# --- one run per run folder ----------------------------------------------------------------------------------------


def _run_outputs(layout: RunLayout) -> list[str]:
    """What a training run leaves in its folder (the things a second run would mix with)."""
    paths = [layout.checkpoints, layout.metrics, layout.tensorboard, layout.run_file]
    return [path.name for path in paths if path.exists() and not _is_empty_dir(path)]


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def prepare_run_folder(layout: RunLayout, identity: dict[str, Any], resume: str, overwrite: bool,
                       env: DistEnv) -> Path | None:
    """Check that this run may use `run_dir` and return the checkpoint to resume from (None: a fresh start).

    The folder may hold nothing, or this same run (same identity), which `resume=auto` continues. Another run's
    outputs are refused unless `train.overwrite=true`, which deletes them; `resume=never` in a folder that already
    holds this run's checkpoints is refused too (it would re-save over them). Checked before anything loads.
    """
    run_dir, run_hash = layout.root, identity_hash(identity)
    outputs = _run_outputs(layout)
    run_file = layout.run_file
    stored = json.loads(run_file.read_text()) if run_file.is_file() else None
    same_run = stored is not None and stored.get("hash") == run_hash
    if outputs and overwrite:
        if env.is_rank_zero:
            log.warning("train.overwrite=true: deleting %s in %s", ", ".join(outputs), run_dir)
            for name in outputs:
                target = run_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        barrier()
        outputs, same_run = [], False
    if outputs and not same_run:
        changed = identity_differences(stored["identity"], identity) if stored else ["(no run.json: an older run)"]
        raise CheckpointError(
            f"{run_dir} holds another training run ({', '.join(outputs)}; differs in {'; '.join(changed[:4])}); "
            "use a new run_dir, or train.overwrite=true to delete that run"
        )
    if resume == "never" and complete_tags(layout):
        raise CheckpointError(
            f"{run_dir} already holds checkpoints of this run; continue it with train.resume=auto, or set "
            "train.overwrite=true to start it again from scratch"
        )
    checkpoint = find_resume_checkpoint(layout, resume, run_hash)
    if checkpoint is not None:
        check_resumable(checkpoint, run_hash, env.world_size)
    return checkpoint


def record_run(layout: RunLayout, identity: dict[str, Any], config: RunConfig) -> None:
    """run.json (the identity) and config.yaml, written by rank 0 once the stage has really started."""
    if not layout.run_file.is_file():
        write_json_atomic(layout.run_file, {
            "hash": identity_hash(identity), "identity": identity, "workdir": os.getcwd(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        })
    write_text_atomic(layout.config_file, dump_config(config))


def find_resume_checkpoint(layout: RunLayout, resume: str, run_hash: str | None = None) -> Path | None:
    """`never`: None. `auto`: the newest complete checkpoint of the run (of `run_hash` if given; None if there is
    none). A path: that one, which must be complete."""
    if resume == "never":
        return None
    if resume == "auto":
        tags = complete_tags(layout, run_hash)
        return layout.checkpoint(tags[-1]) if tags else None
    path = Path(resume)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"train.resume={resume}: not a complete checkpoint (no {MARKER}: save cut off?)")
    return path


def check_resumable(checkpoint: Path, run_hash: str, world_size: int) -> None:
    """Same run, same number of ranks: ZeRO shards are cut per rank, so another world size cannot load them."""
    marker = read_marker(checkpoint)
    if marker.get("run") != run_hash:
        raise CheckpointError(
            f"train.resume: {checkpoint} was saved by another run (run {marker.get('run')}, this one {run_hash}); "
            "resume only a checkpoint of this run, or start from its exported model (`cst export`, model.path)"
        )
    if marker.get("world_size") != world_size:
        raise CheckpointError(
            f"{checkpoint} was saved by {marker.get('world_size')} ranks, this run has {world_size}: resume with "
            f"{marker.get('world_size')} ranks, convert it with DeepSpeed's universal checkpoint "
            "(python -m deepspeed.checkpoint.ds_to_universal) or start from its weights (`cst export`, or "
            "checkpoints/zero_to_fp32.py) as model.path"
        )


# --- save and load -------------------------------------------------------------------------------------------------


def save_checkpoint(engine, env: DistEnv, layout: RunLayout, step: int, client_state: dict[str, Any], keep: int,
                    run_hash: str, config_yaml: str, final: bool = False) -> Path:
    """Save `step` under its tag; `final` marks the run's last planned step (the train stage is then complete)."""
    root = layout.checkpoints
    tag = tag_for_step(step)
    if env.is_rank_zero and (root / tag).exists():
        _retire(layout, tag)
    barrier()  # no rank writes into the tag before its old marker is gone
    try:
        engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    except RuntimeError as error:  # torch.save reports a failed write (full disk, size limit) as a RuntimeError
        if "inline_container" not in str(error) and "write" not in str(error).lower():  # torch's writer, failing
            raise
        raise OSError(errno.ENOSPC, "could not write the checkpoint (disk full or a file size limit?); the last "
                      "complete checkpoint is kept", str(root / tag)) from error
    # RNG is per rank; DeepSpeed's client_state is written by rank 0 only. JSON: nothing to unpickle on resume.
    write_json_atomic(root / tag / f"rng_state_{env.rank}.json", _rng_state())
    barrier()  # every rank's shards are on disk before the checkpoint is declared complete
    if env.is_rank_zero:
        write_text_atomic(root / tag / "config.yaml", config_yaml)
        write_json_atomic(root / tag / MARKER, {"step": step, "world_size": env.world_size, "run": run_hash,
                                                   "final": final})
        write_text_atomic(root / "latest", tag)
        _rotate(layout, tag, keep)
    barrier()
    log.info("checkpoint %s saved", root / tag)
    return root / tag


def _retire(layout: RunLayout, tag: str) -> None:
    """Unmark a tag before it is written again. `latest` moves first (to the newest other complete tag), so at no
    moment does it name a tag without a marker; then the marker goes, then the old files."""
    root = layout.checkpoints
    latest = root / "latest"
    if latest.is_file() and latest.read_text().strip() == tag:
        others = [other for other in complete_tags(layout) if other != tag]
        if others:
            write_text_atomic(latest, others[-1])
        else:
            latest.unlink()
    (root / tag / MARKER).unlink(missing_ok=True)
    shutil.rmtree(root / tag)


def _rotate(layout: RunLayout, latest: str, keep: int) -> None:
    """Keep `latest` and the keep-1 complete tags before it; never touch a tag newer than `latest`."""
    older = [tag for tag in complete_tags(layout) if tag < latest]
    for tag in older[: max(len(older) - (keep - 1), 0)]:
        shutil.rmtree(layout.checkpoint(tag), ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state().tolist(), "numpy": [kind, keys.tolist(), position, has_gauss, gauss],
            "python": [version, list(internal), gauss_next]}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def load_checkpoint(engine, env: DistEnv, path: Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG; returns the client state (step, ...)."""
    _, client_state = engine.load_checkpoint(
        str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if client_state is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {path}")
    rng_file = path / f"rng_state_{env.rank}.json"
    if rng_file.is_file():
        _set_rng_state(json.loads(rng_file.read_text()))
    log.info("resumed from %s (step %d)", path, read_marker(path)["step"])
    return client_state
