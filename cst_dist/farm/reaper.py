"""The local Ray instance dies with the process that started it, even on kill -9.

Ray's raylet and GCS share the driver's fate, but the agents the raylet starts (`ray::DashboardAgent`,
`ray::RuntimeEnvAgent`) and idle workers outlive it, and ignore SIGTERM. So before a local instance starts, the
driver marks its environment with a fresh `CST_RAY_SESSION` value (every Ray process inherits it: the raylet from the
driver, agents and workers from the raylet) and starts a reaper in a session of its own that holds a pipe from the
driver. When the pipe closes (the driver exited, however it exited), the reaper kills every process still carrying
the mark. A cluster joined through RAY_ADDRESS is never touched: its processes do not carry the mark.

    python -m cst_dist.farm.reaper MARK DRIVER_PID     (started by `start_reaper`, never by hand)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

MARK_VARIABLE = "CST_RAY_SESSION"
GRACE_S = 2.0  # SIGTERM first (raylet-side shutdown), then SIGKILL for what ignores it (the agents)


def marked_processes(mark: str, exclude: set[int]) -> list[int]:
    """Pids (this user's, Linux /proc) whose environment holds CST_RAY_SESSION=<mark>."""
    needle = f"{MARK_VARIABLE}={mark}".encode() + b"\0"
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid in exclude:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if needle in environ + b"\0":
            pids.append(pid)
    return pids


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def sweep(mark: str, exclude: set[int]) -> int:
    """Terminate, then kill, every marked process; returns how many were found."""
    pids = marked_processes(mark, exclude)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = marked_processes(mark, exclude)
    _signal_all(pids, signal.SIGKILL)
    return len(pids)


def start_reaper() -> subprocess.Popen | None:
    """Mark this process's environment (inherited by the Ray instance about to start) and start its reaper.
    Keep the returned handle alive for the session; `stop_reaper` ends it after a clean shutdown. None off Linux."""
    if not Path("/proc/self/environ").exists():
        return None
    mark = uuid.uuid4().hex
    os.environ[MARK_VARIABLE] = mark
    return subprocess.Popen([sys.executable, "-m", "cst_dist.farm.reaper", mark, str(os.getpid())],
                            stdin=subprocess.PIPE, start_new_session=True)


def stop_reaper(reaper: subprocess.Popen | None) -> None:
    """After a clean `ray.shutdown()`: close the pipe (the reaper sweeps what shutdown left) and wait for it."""
    if reaper is None:
        return
    reaper.stdin.close()
    try:
        reaper.wait(timeout=GRACE_S + 10)
    except subprocess.TimeoutExpired:
        reaper.kill()
    os.environ.pop(MARK_VARIABLE, None)


def main(argv: list[str]) -> int:
    mark, driver = argv[0], int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal reaches the driver, not the reaper
    sys.stdin.buffer.read()  # returns at EOF: the driver has exited or shut Ray down
    sweep(mark, exclude={os.getpid(), driver})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
