"""A real Slurm cluster for the slurm/ scripts: tests/slurm/harness.sh starts two fake nodes (n1, n2) on this host.

The cluster is started once per session and always stopped at its end. Where Slurm cannot be installed or started
(not root, no apt, no network) the tests skip and say why; with CST_REQUIRE_SLURM=1 (.ci/run) that is a failure.
Jobs run the checkout's code: CST_PYTHON is this interpreter and PYTHONPATH starts with the checkout.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("harness.sh")
ROOT = Path(os.environ.get("CST_SLURM_ROOT", "/tmp/cst-slurm"))
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
# The CPU test cluster has no GPUs and 2 CPUs a fake node: every job asks for none and for one.
CPU_JOB = ("--gpus-per-node=0", "--cpus-per-task=1")


def unavailable(reason: str) -> None:
    if os.environ.get("CST_REQUIRE_SLURM") == "1":
        pytest.fail(f"CST_REQUIRE_SLURM=1 but no Slurm test cluster: {reason}", pytrace=False)
    pytest.skip(f"no Slurm test cluster: {reason}")


@dataclass
class JobEnd:
    """One line of Slurm's job completion log (a requeued job has one per run: PENDING, then its final state)."""

    job: int
    name: str
    state: str
    exit_code: str
    start: str
    end: str


@dataclass
class SlurmCluster:
    root: Path
    logs: Path
    env: dict[str, str] = field(default_factory=dict)

    def job_env(self, **extra: str) -> dict[str, str]:
        return {**self.env, **extra}

    def sbatch(self, script: str, *args: str, options: tuple[str, ...] = (), wait: bool = False,
               timeout: float = 600, **env: str) -> tuple[int, subprocess.CompletedProcess]:
        """Submit slurm/<script> with CONFIG/overrides `args`; with `wait`, return after the job ended (sbatch --wait:
        its exit code is the job's)."""
        command = ["sbatch", "--parsable", *CPU_JOB, f"--output={self.logs}/%x-%j.out", *options]
        command += ["--wait"] if wait else []
        result = subprocess.run([*command, str(REPO / "slurm" / script), *args], cwd=REPO, env=self.job_env(**env),
                                capture_output=True, text=True, timeout=timeout)
        match = re.search(r"^(\d+)", result.stdout)
        assert match, f"sbatch printed no job id: {result.stdout} {result.stderr}"
        return int(match.group(1)), result

    def sbatch_wait_in_background(self, script: str, *args: str) -> tuple[int, subprocess.Popen]:
        """`sbatch --wait` left running: the job id now, the process (its exit code is the job's) to wait for later."""
        command = ["sbatch", "--parsable", "--wait", *CPU_JOB, f"--output={self.logs}/%x-%j.out"]
        process = subprocess.Popen([*command, str(REPO / "slurm" / script), *args], cwd=REPO, env=self.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = process.stdout.readline()
        match = re.search(r"^(\d+)", line)
        assert match, f"sbatch printed no job id: {line} {process.stderr.read() if process.poll() is not None else ''}"
        return int(match.group(1)), process

    def run(self, script: str, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        """A slurm/ script run on the "login node" (pipeline.sh, scaling_study.sh)."""
        return subprocess.run([str(REPO / "slurm" / script), *args], cwd=REPO, env=self.job_env(**env),
                              capture_output=True, text=True, timeout=timeout)

    def ends(self, job: int) -> list[JobEnd]:
        """Every end of `job` recorded so far, oldest first."""
        path = self.root / "log" / "jobcomp.log"
        text = path.read_text(errors="replace") if path.is_file() else ""
        pattern = re.compile(rf"^JobId={job} .*?Name=(\S*) JobState=(\S+) .*?StartTime=(\S+) EndTime=(\S+) .*?"
                             r"ExitCode=(\S+)", re.M)
        return [JobEnd(job, m[1], m[2], m[5], m[3], m[4]) for m in pattern.finditer(text)]

    def wait(self, job: int, timeout: float = 600) -> JobEnd:
        """Block until `job` reached a final state; returns that end."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            ends = self.ends(job)
            if ends and ends[-1].state in TERMINAL:
                return ends[-1]
            time.sleep(1)
        raise TimeoutError(f"job {job} did not end within {timeout:g}s; squeue: {squeue()}")

    def log(self, job: int, name: str = "*") -> str:
        """The job's own log (the batch script's output), and its per-node logs after it."""
        files = sorted(self.logs.glob(f"{name}-{job}.out")) + sorted(self.logs.glob(f"*-{job}-*.log"))
        return "\n".join(f"==> {f.name} <==\n{f.read_text(errors='replace')}" for f in files)


def harness(action: str) -> subprocess.CompletedProcess:
    """tests/slurm/harness.sh up|down, as root (through passwordless sudo when this is not root)."""
    command = [str(HARNESS), action]
    if os.geteuid() != 0:
        command = ["sudo", "-n", "--preserve-env=CST_SLURM_ROOT,CST_SLURM_NO_INSTALL", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def can_be_root() -> bool:
    if os.geteuid() == 0:
        return True
    sudo = shutil.which("sudo")
    return bool(sudo) and subprocess.run([sudo, "-n", "true"], capture_output=True).returncode == 0


def squeue() -> str:
    return subprocess.run(["squeue"], capture_output=True, text=True).stdout


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    if not can_be_root():
        unavailable("the harness installs and starts Slurm as root (tests/slurm/harness.sh); this is not root and "
                    "has no passwordless sudo")
    # One session at a time drives the cluster (it is one per host): another one waits here.
    lock = open(Path(os.environ.get("TMPDIR", "/tmp")) / "cst-slurm-tests.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        up = harness("up")
        if up.returncode != 0:
            unavailable(f"tests/slurm/harness.sh up failed: {' | '.join(up.stderr.strip().splitlines()[-6:])}")
        logs = tmp_path_factory.mktemp("slurm-logs")
        env = {**os.environ, "CST_PYTHON": sys.executable, "CST_REPO": str(REPO), "CST_LOG_DIR": str(logs),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
        yield SlurmCluster(ROOT, logs, env)
    finally:
        harness("down")
        lock.close()
