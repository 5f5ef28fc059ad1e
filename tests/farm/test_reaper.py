"""A local Ray instance dies with its driver: kill -9 of the driver leaves no Ray process behind (the agents that
the raylet starts ignore SIGTERM and outlived the driver before the reaper)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cst_dist.farm.reaper import marked_processes

DRIVER = textwrap.dedent("""
    import os, sys, time
    from cst_dist.farm.cluster import ray_session
    import ray

    @ray.remote(num_cpus=0)
    class Idle:
        def pid(self):
            return os.getpid()

    with ray_session(30):
        actor = Idle.remote()
        ray.get(actor.pid.remote(), timeout=120)
        print(os.environ["CST_RAY_SESSION"], flush=True)
        if sys.argv[1] == "hang":
            time.sleep(600)
""")


def _names(pids: list[int]) -> set[str]:
    names = set()
    for pid in pids:
        try:
            names.add(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())
        except OSError:
            pass
    return names


def _wait_until_none(mark: str, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := marked_processes(mark, set())) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _start_driver(mode: str) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, mode], stdout=subprocess.PIPE, text=True, env=env)
    mark = driver.stdout.readline().strip()
    assert mark, "the driver did not start Ray"
    return driver, mark


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="the reaper reads /proc (Linux)")
def test_kill_9_of_the_driver_takes_every_ray_process_with_it():
    driver, mark = _start_driver("hang")
    try:
        agents = {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}  # started by the raylet a moment after it is up
        deadline = time.monotonic() + 90
        while not agents <= _names(running := marked_processes(mark, {driver.pid})) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert agents <= _names(running), _names(running)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        left = _wait_until_none(mark, 60)
        assert not left, f"still running after the driver's kill -9: {_names(left)}"
    finally:
        driver.kill()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="the reaper reads /proc (Linux)")
def test_a_clean_exit_leaves_no_ray_process_and_no_reaper():
    driver, mark = _start_driver("exit")
    assert driver.wait(timeout=120) == 0
    assert not _wait_until_none(mark, 30)
    reapers = [pid for pid in Path("/proc").glob("[0-9]*") if mark.encode() in _cmdline(pid)]
    assert not reapers


def _cmdline(entry: Path) -> bytes:
    try:
        return (entry / "cmdline").read_bytes()
    except OSError:
        return b""
