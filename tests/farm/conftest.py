"""Fixtures for the farm tests (and, imported there, the generation tests): one local Ray instance per session and
a watchdog."""

from __future__ import annotations

import os
import signal

import pytest

TEST_TIMEOUT_S = 150


@pytest.fixture(autouse=True)
def watchdog():
    """Fail a test that hangs (an actor that never schedules, a Ray call that never returns) instead of the suite."""

    def expire(signum, frame):
        raise TimeoutError(f"test took longer than {TEST_TIMEOUT_S}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_TIMEOUT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance on the 2 cores. It declares 2 GPUs that do not exist: Ray only counts them, which is
    enough to place a 2-GPU replica in a placement group; torch still runs on CPU (gpus_per_replica=0 elsewhere).
    tests/generation defines this fixture too (imported from here): whichever runs second joins the first's instance."""
    import ray

    if ray.is_initialized():
        yield ray.get_runtime_context().gcs_address
        return
    saved = os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved

