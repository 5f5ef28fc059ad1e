"""Running a `cst` command as a child process: one command line and one environment for every caller.

The pipeline runs each stage this way, and the evaluator exports a checkpoint this way (it never imports the trainer
or DeepSpeed). A parent started by torchrun carries its rank variables; a child that inherited them would try to join
the parent's process group, so they are taken out here, once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h

# What torchrun / torch.distributed sets per rank (a child process is a new job, not a rank of the parent's).
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                  "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def child_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in RANK_VARIABLES}


def cst_command(args: list[str], nproc: int = 1) -> list[str]:
    """`python -m cst_dist.cli ARGS`, under a standalone torchrun with `nproc` ranks when nproc > 1."""
    python = [sys.executable, "-m"]
    if nproc > 1:
        python += ["torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
    return [*python, "cst_dist.cli", *args]


def export_args(run_dir: str | os.PathLike, tag: str | None = None, output: str | os.PathLike | None = None,
                dtype: str | None = None, overwrite: bool = False) -> list[str]:
    """The arguments of `cst export` (its defaults where an argument is None)."""
    args = ["export", str(run_dir)]
    for flag, value in (("--tag", tag), ("--output", output), ("--dtype", dtype)):
        if value is not None:
            args += [flag, str(value)]
    return args + (["--overwrite"] if overwrite else [])


def _die_with_parent() -> None:
    """Runs in the child before exec: Linux sends it SIGTERM when the parent dies (kill -9 included), so a stage never
    outlives its pipeline; SIGTERM is what the trainer saves a checkpoint on, and torchrun passes it to its ranks."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the child is on its own, as before
        pass


def last_line(text: str) -> str:
    """The last non-empty line of a log, progress bars included (tqdm redraws with carriage returns)."""
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_cst(args: list[str], log_file: str | os.PathLike | None = None, nproc: int = 1,
            on_progress: Callable[[str], None] | None = None, progress_every_s: float = 30.0) -> tuple[int, str]:
    """Run `cst ARGS` to its end: (exit code, the last non-empty line of its output, for a one-line error).

    With `log_file` (the pipeline's stages) the output goes there, the last line is read back from it and handed to
    `on_progress` every `progress_every_s` seconds, and the child dies with this process (its parent has no threads
    then: a pre-exec hook is unsafe beside threads). Without, the output is captured.
    """
    command = cst_command(args, nproc)
    if log_file is None:
        result = subprocess.run(command, capture_output=True, text=True, errors="replace", env=child_env())
        return result.returncode, last_line(result.stderr if result.stderr.strip() else result.stdout)
    with open(log_file, "w") as handle:
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=child_env(),
                                 preexec_fn=_die_with_parent)
        while True:
            try:
                code = child.wait(timeout=progress_every_s)
                break
            except subprocess.TimeoutExpired:
                if on_progress is not None:
                    on_progress(last_line(_tail(Path(log_file))))
    return code, last_line(Path(log_file).read_text(errors="replace"))


def _tail(path: Path, size: int = 4096) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - size))
        return handle.read().decode("utf-8", errors="replace")
