"""The pool runs any plain worker class: here one that squares numbers, on the local Ray instance, with actors
killed mid-run. Nothing here knows about models or pairs."""

from __future__ import annotations

import os
import time

import pytest

from cst_dist.farm import FarmError
from cst_dist.farm.cluster import FarmSettings
from cst_dist.farm.pool import Job, ShardDone, run_shards
from cst_dist.farm.shards import Shard, plan_shards

NUMBERS = list(range(24))
SETTINGS = FarmSettings("square", num_replicas=2, gpus_per_replica=0, max_retries=1, connect_timeout_s=20)


class Squarer:
    """A non-generation worker: squares a shard's numbers, slowly enough that a shard is still running when its
    actor is killed."""

    def __init__(self, delay_s: float, num_gpus: int = 0, num_cpus: int = 1, name: str = "squarer"):
        self.delay_s, self.name = delay_s, name

    def ready(self) -> dict:
        return {"name": self.name, "pid": os.getpid()}

    def run_shard(self, shard: Shard[int]) -> dict[int, int]:
        time.sleep(self.delay_s)
        return {number: number * number for number in shard.items}


def test_plain_worker_needs_no_ray():
    [shard] = plan_shards([3, 4], shard_size=2)
    assert Squarer(0.0).run_shard(shard) == {3: 9, 4: 16} and shard.sampling is None


def test_killed_actor_shard_is_retried_and_every_item_runs_once(ray_cluster):
    """ray.kill on the actor running the newest shard (submitted just before the event: surely still running)."""
    import ray

    results: dict[str, dict[int, int]] = {}
    attempts: dict[str, int] = {}
    killed: list[str] = []

    def collect(done: ShardDone) -> str:
        assert done.shard.name not in results  # each shard is handed over once
        results[done.shard.name], attempts[done.shard.name] = done.result, done.attempts
        if not killed and done.in_flight:
            shard_name, actor_name = list(done.in_flight.items())[-1]
            ray.kill(ray.get_actor(actor_name), no_restart=True)
            killed.append(shard_name)
        return f"{len(results)} shards"

    shards = plan_shards(NUMBERS, shard_size=4)
    run = run_shards(Job(Squarer, (0.3,), role="squaring", unit="number"), shards, SETTINGS, collect)
    assert killed and run.retries == 1 and run.shards_done == len(results) == 6
    assert attempts[killed[0]] == 2 and sorted(attempts.values()) == [1, 1, 1, 1, 1, 2]
    squared = [number for result in results.values() for number in result]
    assert sorted(squared) == NUMBERS  # every number exactly once
    assert all(result[number] == number * number for result in results.values() for number in result)


def test_shard_past_its_retries_fails_the_run_naming_its_items(ray_cluster):
    import ray

    killed: set[str] = set()

    def kill_every_running(done: ShardDone) -> None:
        for actor_name in set(done.in_flight.values()) - killed:
            ray.kill(ray.get_actor(actor_name), no_restart=True)
            killed.add(actor_name)

    settings = FarmSettings("square", num_replicas=2, gpus_per_replica=0, max_retries=0, connect_timeout_s=20)
    with pytest.raises(FarmError, match=r"shard-\d{5} \(numbers \d+ .. \d+\): its actor died 1 times "
                                        r"\(square.max_retries=0\)"):
        run_shards(Job(Squarer, (0.3,), unit="number"), plan_shards(NUMBERS, 4), settings, kill_every_running)
