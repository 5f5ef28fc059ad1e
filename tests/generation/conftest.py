"""Fixtures for generation tests: the farm tests' local Ray instance and watchdog (one Ray for both folders)."""

from tests.farm.conftest import ray_cluster, watchdog  # noqa: F401
