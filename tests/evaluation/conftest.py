"""Fixtures for evaluation tests: the farm tests' local Ray instance and watchdog (one Ray for every folder)."""

from tests.farm.conftest import ray_cluster, watchdog  # noqa: F401
