"""The resumable driver on a plain worker (squares numbers): an interrupted run resumes with only the missing shards,
the progress bar starts at the items already done, and the rows come back from the folder in plan order."""

from __future__ import annotations

import json

import pytest

from cst_dist.farm.driver import run_resumable
from cst_dist.farm.pool import Job, ShardDone
from cst_dist.farm.shards import plan_shards
from cst_dist.farm.store import ShardStore
from tests.farm.test_pool import SETTINGS, Squarer

NUMBERS = list(range(10))
PLAN = {"numbers": NUMBERS, "shard_size": 3}


def record(done: ShardDone):
    rows = [{"id": number, "square": square} for number, square in done.result.items()]
    return {f"{done.shard.name}.jsonl": rows}, {"items": len(rows), "attempts": done.attempts}


class Interrupted(RuntimeError):
    pass


def test_interrupted_run_resumes_with_the_missing_shards_only(ray_cluster, tmp_path, monkeypatch):
    shards = plan_shards(NUMBERS, shard_size=3)  # 4 shards: 3 + 3 + 3 + 1
    job = Job(Squarer, (0.0,), role="squaring", unit="number")

    def stop_after_two(done: ShardDone) -> None:
        if len(ShardStore(tmp_path, PLAN, len(shards), ("items",)).finished()) == 2:
            raise Interrupted("stopped after two shards")

    with pytest.raises(Interrupted):
        run_resumable(job, shards, ShardStore(tmp_path, PLAN, len(shards), ("items",)), SETTINGS, record,
                      stop_after_two)
    first = ShardStore(tmp_path, PLAN, len(shards), ("items",)).finished()
    assert len(first) == 2

    jobs: list[tuple[Job, set[int]]] = []
    import cst_dist.farm.driver as driver

    real_run_shards = driver.run_shards

    def spy(job, todo, settings, save, actors=None):
        jobs.append((job, {shard.index for shard in todo}))
        return real_run_shards(job, todo, settings, save, actors)

    monkeypatch.setattr(driver, "run_shards", spy)
    run = run_resumable(job, shards, ShardStore(tmp_path, PLAN, len(shards), ("items",)), SETTINGS, record)
    assert (run.total, run.skipped, run.done) == (4, 2, 2)
    job_sent, sent = jobs[0]
    assert sent == set(range(4)) - first  # finished shards are not sent again
    assert job_sent.total_items == 10 and job_sent.items_done == sum(len(shards[i].items) for i in first)
    assert [row["id"] for row in run.rows()] == NUMBERS and all(r["square"] == r["id"] ** 2 for r in run.rows())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["totals"] == {"shards": 4, "items": 10}

    again = run_resumable(job, shards, ShardStore(tmp_path, PLAN, len(shards), ("items",)), SETTINGS, record)
    assert (again.skipped, again.done) == (4, 0) and jobs[1][1] == set() and [r["id"] for r in again.rows()] == NUMBERS


def test_max_shards_runs_the_first_missing_ones(ray_cluster, tmp_path):
    shards = plan_shards(NUMBERS, shard_size=3)
    job = Job(Squarer, (0.0,), unit="number")
    run = run_resumable(job, shards, ShardStore(tmp_path, PLAN, len(shards), ("items",)), SETTINGS, record,
                        max_shards=1)
    assert run.done == 1 and ShardStore(tmp_path, PLAN, len(shards), ("items",)).finished() == {0}


def test_kept_actors_serve_several_runs_and_start_only_when_needed(ray_cluster, tmp_path):
    """Two shard folders on one set of kept actors: the same actors answer both (one start, one model load each);
    a run with nothing left to do starts none."""
    import ray

    from cst_dist.farm.pool import KeptActors

    job = Job(Squarer, (0.0,), unit="number")
    actors = KeptActors(job, SETTINGS)
    with actors:
        done = run_resumable(job, [], ShardStore(tmp_path / "empty", PLAN, 0, ("items",)), SETTINGS, record,
                             actors=actors)
        assert done.done == 0 and actors._pool is None  # nothing to run: no actor started
        names = []
        for name in ("a", "b"):
            shards = plan_shards(NUMBERS, shard_size=3)
            run = run_resumable(job, shards, ShardStore(tmp_path / name, PLAN, len(shards), ("items",)), SETTINGS,
                                record, actors=actors)
            assert [row["id"] for row in run.rows()] == NUMBERS
            names.append(list(actors.pool().names))
        assert names[0] == names[1] and len(names[0]) == SETTINGS.num_replicas
        handles = list(actors.pool().actors)
    for handle in handles:  # closed: the actors are gone
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(handle.ready.remote(), timeout=30)
