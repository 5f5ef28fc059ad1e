"""One resumable run of a shard plan: the loop that `cst generate`, the eval answers and the benchmark scores share.

    shards (plan_shards) + a ShardStore of their plan
      -> skip the shards the folder already holds
      -> run the rest (at most `max_shards`) on the farm (`run_shards`)
      -> write each result as it comes back: `record(done)` -> (files, manifest entry) -> `store.save`
      -> `after_save(done)` (the caller's counts, hooks, the progress bar's rate)
      -> `ResumableRun.rows()`: every shard's rows read back from the folder, in plan order

The store is built by the caller, so a folder of another plan is refused before Ray starts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cst_dist.farm.cluster import FarmSettings
from cst_dist.farm.pool import Job, KeptActors, ShardDone, run_shards
from cst_dist.farm.shards import Shard
from cst_dist.farm.store import ShardStore
from cst_dist.io import read_rows

log = logging.getLogger(__name__)

# done -> ({path relative to the folder: rows}, manifest entry): the shard's files, its file last (see ShardStore.save)
Record = Callable[[ShardDone], tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]]


@dataclass
class ResumableRun:
    """What `run_resumable` did: the store (manifest, totals), the whole plan's shards, how many an earlier run
    had finished (`skipped`) and this run wrote (`done`), actor deaths survived, seconds from first send to last
    result."""

    store: ShardStore
    shards: list[Shard]
    skipped: int
    done: int = 0
    retries: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return len(self.shards)

    def rows(self) -> list[dict[str, Any]]:
        """The rows of every shard's file (the manifest entry's `file`), in plan order; the plan must be complete."""
        entries = self.store.manifest["shards"]
        return [row for shard in self.shards for _, row in read_rows(self.store.folder / entries[shard.name]["file"])]


def run_resumable(job: Job, shards: Sequence[Shard], store: ShardStore, settings: FarmSettings, record: Record,
                  after_save: Callable[[ShardDone], str | None] | None = None, max_shards: int | None = None,
                  actors: KeptActors | None = None) -> ResumableRun:
    """Run the shards `store` lacks (the first `max_shards` of them, if set) and save each as it comes back.

    `job.total_items` / `job.items_done` are filled in here (every item of the plan / those of finished shards), so
    the progress bar of a resumed run starts where the last one stopped. `after_save`'s return value is shown after
    the bar's rate. `actors`: kept actors of the same worker to run on (see pool.KeptActors), else a pool of its own.
    """
    finished = store.finished()
    todo = [shard for shard in shards if shard.index not in finished][:max_shards]
    run = ResumableRun(store, list(shards), skipped=len(finished))
    if todo:
        log.info("%d of %d shards to run (%d already done) in %s", len(todo), len(shards), len(finished),
                 store.folder)

    def save(done: ShardDone) -> str | None:
        files, entry = record(done)
        store.save(done.shard, files, entry)
        run.done += 1
        return after_save(done) if after_save is not None else None

    job = dataclasses.replace(job, total_items=sum(len(shard.items) for shard in shards),
                              items_done=sum(len(shard.items) for shard in shards if shard.index in finished))
    pool_run = run_shards(job, todo, settings, save, actors)
    run.retries, run.seconds = pool_run.retries, pool_run.seconds
    return run
