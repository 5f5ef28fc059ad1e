"""The Ray farm: any stage's work cut into shards and run on replica actors, with retries and resume.

shards.py   derive_seed, the generic Shard (index, items of any type, sampling) and plan_shards
store.py    a shard folder: atomic shard files, then manifest.json (plan, per-shard entries, totals) for resume
cluster.py  Ray connection (RAY_ADDRESS or local), FarmSettings, replica sizing, placement groups
pool.py     actors of a plain worker class (`ready()`, `run_shard(shard)`), retries, progress: `run_shards`;
            `KeptActors`: one job's actors kept across several runs
driver.py   `run_resumable`: skip finished shards, farm the rest, save each, read all rows back (every stage's loop)

The floor under `generate` and `evaluate`: it imports only cst_dist.errors, cst_dist.io and cst_dist.config, never a
stage, and nothing here imports Ray or torch at import time (CPU-only callers import it).
"""

from cst_dist.errors import UserError


class FarmError(UserError, RuntimeError):
    """A farm run that cannot go on; the message names the shard, setting or address to look at."""
