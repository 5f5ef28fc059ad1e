"""Running a `cst` command as a child process: one command line and one environment for every caller.

The pipeline runs each stage this way, and the evaluator exports a checkpoint this way (it never imports the trainer
or DeepSpeed). A parent started by torchrun carries its rank variables; a child that inherited them would try to join
the parent's process group, so they are taken out here, once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def run_cst(args: list[str], log_file: str | os.PathLike | None = None, nproc: int = 1) -> tuple[int, str]:
    """Run `cst ARGS` to its end: (exit code, the last non-empty line of its output, for a one-line error).

    With `log_file` the output goes there (and the last line is read back from it); otherwise it is captured.
    """
    command = cst_command(args, nproc)
    if log_file is None:
        result = subprocess.run(command, capture_output=True, text=True, errors="replace", env=child_env())
        output = result.stderr if result.stderr.strip() else result.stdout  # errors and logs go to stderr
    else:
        with open(log_file, "w") as handle:
            result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=child_env())
        output = Path(log_file).read_text(errors="replace")
    lines = [line for line in output.splitlines() if line.strip()]
    return result.returncode, lines[-1] if lines else ""
