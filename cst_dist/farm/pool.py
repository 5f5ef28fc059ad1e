"""Shards farmed out to Ray actors of a plain worker class: one shard per actor at a time, retries, progress.

The worker contract (a plain class, usable without Ray; `ray.remote` wraps it here and only here):

    Worker(*job.worker_args, num_gpus=int, num_cpus=int, name=str)   loads what it needs once (a model replica)
    worker.ready() -> dict                                           describes the replica (logged once)
    worker.run_shard(shard) -> result                                the shard's output, any picklable value

Workers only return results; the caller's `on_shard_done` writes them, so actors may run on nodes that cannot see
the output folder. A shard whose actor dies is re-run on a replacement actor (in the same placement group, if any),
up to `settings.max_retries` times; an error raised by `run_shard` itself is not retried (it would repeat).
`KeptActors` keeps one job's actors across several `run_shards` calls (started by the first that has shards).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cst_dist.farm import FarmError
from cst_dist.farm.cluster import FarmSettings, Layout, actor_options, ray_session, replica_layout, reserve_replica
from cst_dist.farm.shards import Shard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """What the actors run and how the run names itself.

    role: names the workers in errors ("a generation worker failed to start"); unit: one item, on the progress bar
    ("prompt/s") and in a failed shard's message ("prompts a .. b", items named by their `id` attribute if any);
    total_items / items_done: the bar's total and its start (items finished by earlier runs; None: these shards).
    """

    worker_class: type
    worker_args: tuple[Any, ...] = ()
    role: str = "farm"
    unit: str = "item"
    total_items: int | None = None
    items_done: int = 0


@dataclass
class ShardDone:
    """Passed to `on_shard_done` for each result: the shard, its result, how many times it was sent, what is
    running now (shard name -> actor name, oldest first; the freed actor's next shard, if any, is the newest), and
    the seconds since the first shard was sent."""

    shard: Shard
    result: Any
    attempts: int
    in_flight: dict[str, str]
    seconds: float


@dataclass
class PoolRun:
    """What `run_shards` did: shards done, actor deaths survived by a retry, seconds from first send to last result."""

    shards_done: int = 0
    retries: int = 0
    seconds: float = 0.0


def run_shards(job: Job, shards: Sequence[Shard], settings: FarmSettings,
               on_shard_done: Callable[[ShardDone], str | None], actors: KeptActors | None = None) -> PoolRun:
    """Run every shard once on a pool of `job.worker_class` actors (sized by `settings` and the cluster) and hand
    each result to `on_shard_done` as it comes back, in any order. Its return value, if any, is shown after the
    bar's rate (e.g. "812 tokens/s"). Joins RAY_ADDRESS or starts a local Ray (see `ray_session`); no shards, no Ray.
    `actors`: run on these kept actors (of the same worker) instead of starting and stopping a pool of its own.
    """
    run = PoolRun()
    if not shards:
        return run
    if actors is not None:
        _run_on(actors.pool(), job, shards, settings, on_shard_done, run)
        return run
    with ray_session(settings.connect_timeout_s) as where:
        pool = start_pool(job, settings, where, len(shards))
        try:
            _run_on(pool, job, shards, settings, on_shard_done, run)
        finally:
            pool.shutdown()
    return run


def start_pool(job: Job, settings: FarmSettings, where: str, shards: int | None = None) -> ActorPool:
    """A pool of ready actors (one per replica, no more than `shards`), inside an open Ray session."""
    import ray

    layout = replica_layout(settings, ray.cluster_resources())
    pool = ActorPool(job, settings, layout, slots=layout.replicas if shards is None else min(layout.replicas, shards))
    try:
        for info in pool.wait_ready():
            log.info("replica ready: %s", ", ".join(f"{key} {value}" for key, value in info.items()))
    except BaseException:
        pool.shutdown()
        raise
    log.info("%d replicas x %d GPUs x %d CPUs on %s", len(pool.actors), layout.gpus, layout.cpus, where)
    return pool


def _run_on(pool: ActorPool, job: Job, shards: Sequence[Shard], settings: FarmSettings,
            on_shard_done: Callable[[ShardDone], str | None], run: PoolRun) -> None:
    from tqdm import tqdm

    total = job.total_items if job.total_items is not None else sum(len(shard.items) for shard in shards)
    with tqdm(total=total, initial=job.items_done, unit=job.unit, desc=settings.section, mininterval=1.0) as bar:
        _dispatch(pool, shards, on_shard_done, bar, run)


class KeptActors:
    """One job's actors kept for several `run_shards` calls (one model's answers to every section of an eval: each
    call would otherwise start and load its replicas again). Ray is joined and the actors started by the first call
    that has shards, so a fully resumed run starts nothing; `close()` (or leaving the `with`) stops them. Every call
    must run `job.worker_class` with `job.worker_args`: the actors hold that worker."""

    def __init__(self, job: Job, settings: FarmSettings):
        self.job, self.settings = job, settings
        self._stack = contextlib.ExitStack()
        self._pool: ActorPool | None = None

    def pool(self) -> ActorPool:
        if self._pool is None:
            where = self._stack.enter_context(ray_session(self.settings.connect_timeout_s))
            self._pool = start_pool(self.job, self.settings, where)
            self._stack.callback(self._pool.shutdown)
        return self._pool

    def close(self) -> None:
        self._pool = None
        self._stack.close()

    def __enter__(self) -> KeptActors:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ActorPool:
    """Replica actors by slot. A dead actor's slot gets a new actor (in the same placement group, if any); actor
    names are `cst-<section>-<run id>-<slot>-<incarnation>`, so a log line names the very actor."""

    def __init__(self, job: Job, settings: FarmSettings, layout: Layout, slots: int):
        import ray

        self.remote_class = ray.remote(job.worker_class)
        self.job, self.settings, self.layout, self.run_id = job, settings, layout, uuid.uuid4().hex[:6]
        gpus_setting = f"{settings.section}.gpus_per_replica"
        self.groups = [reserve_replica(layout, settings.connect_timeout_s, gpus_setting) for _ in range(slots)]
        self.actors: list[Any] = [None] * slots
        self.names: list[str] = [""] * slots
        self.incarnations = [0] * slots
        for slot in range(slots):
            self.start(slot)

    def start(self, slot: int) -> None:
        self.incarnations[slot] += 1
        self.names[slot] = f"cst-{self.settings.section}-{self.run_id}-{slot}-{self.incarnations[slot]}"
        options = actor_options(self.layout, self.names[slot], self.groups[slot])
        self.actors[slot] = self.remote_class.options(**options).remote(
            *self.job.worker_args, num_gpus=self.layout.gpus, num_cpus=self.layout.cpus, name=self.names[slot]
        )

    def replace(self, slot: int) -> None:
        import ray

        ray.kill(self.actors[slot], no_restart=True)
        self.start(slot)

    def wait_ready(self) -> list[dict[str, Any]]:
        """Blocks until every replica has loaded (its model); a replica that cannot start fails the run here."""
        import ray

        try:
            return ray.get([actor.ready.remote() for actor in self.actors])
        except ray.exceptions.RayActorError as exc:
            raise FarmError(f"a {self.job.role} worker failed to start: {last_line(exc)}") from None

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        for group in filter(None, self.groups):
            remove_placement_group(group)


def _dispatch(pool: ActorPool, todo: Sequence[Shard], on_shard_done: Callable[[ShardDone], str | None], bar: Any,
              run: PoolRun) -> None:
    """One shard per actor at a time; results are handed over as they come back, in any order."""
    import ray

    queue, idle = deque(todo), deque(range(len(pool.actors)))
    in_flight: dict[Any, tuple[Shard, int]] = {}  # ObjectRef -> (shard, actor slot), in submission order
    attempts: dict[int, int] = {}

    def submit_to_idle() -> None:
        while queue and idle:
            slot, shard = idle.popleft(), queue.popleft()
            attempts[shard.index] = attempts.get(shard.index, 0) + 1
            in_flight[pool.actors[slot].run_shard.remote(shard)] = (shard, slot)

    start = time.perf_counter()
    submit_to_idle()
    while in_flight:
        [ref], _ = ray.wait(list(in_flight), num_returns=1)
        shard, slot = in_flight.pop(ref)
        idle.append(slot)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            _check_retry(pool, shard, attempts[shard.index], exc)
            log.warning("%s: actor %s died (%s); retrying on a new actor", shard.name, pool.names[slot], last_line(exc))
            pool.replace(slot)
            queue.appendleft(shard)
            run.retries += 1
            submit_to_idle()
            continue
        except ray.exceptions.RayTaskError as exc:  # an error in run_shard itself: retrying would repeat it
            raise FarmError(f"{shard.name} failed on {pool.names[slot]}: {getattr(exc, 'cause', exc)}") from None
        submit_to_idle()  # before the caller's bookkeeping: the freed actor starts on its next shard at once
        run.seconds = time.perf_counter() - start
        running = {other.name: pool.names[s] for other, s in in_flight.values()}
        postfix = on_shard_done(ShardDone(shard, result, attempts[shard.index], running, run.seconds))
        run.shards_done += 1
        if postfix:
            bar.set_postfix_str(postfix, refresh=False)
        bar.update(len(shard.items))


def _check_retry(pool: ActorPool, shard: Shard, attempts: int, error: BaseException) -> None:
    """A shard may run 1 + max_retries times; past that the run stops and names the shard and its items."""
    max_retries = pool.settings.max_retries
    if attempts > max_retries:
        first, last = (getattr(item, "id", item) for item in (shard.items[0], shard.items[-1]))
        raise FarmError(
            f"{shard.name} ({pool.job.unit}s {first} .. {last}): its actor died {attempts} times "
            f"({pool.settings.section}.max_retries={max_retries}); last error: {last_line(error)}"
        ) from None


def last_line(error: BaseException) -> str:
    """The last non-blank line of an error: Ray's messages end with the cause, after the remote traceback."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
