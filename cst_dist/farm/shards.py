"""The shard plan: items cut into fixed-size shards, each sampled with a seed of its own.

A shard's seed depends only on the base seed and the shard's index, so a shard re-run after a crash, a retry or on
another actor samples exactly as the first time: resumed output is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from cst_dist.config import SamplingConfig

Item = TypeVar("Item")


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any JSON-able parts; stable across processes and Python versions (unlike hash())."""
    digest = hashlib.sha256(json.dumps(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class Shard(Generic[Item]):
    """Items [index * shard_size, ...) of the plan (any picklable type), sampled with derive_seed(seed, index);
    `sampling` is None for work that does not sample (scoring). Sent as is to a worker's `run_shard`."""

    index: int
    items: tuple[Item, ...]
    sampling: SamplingConfig | None = None

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def plan_shards(items: Sequence[Item], shard_size: int, sampling: SamplingConfig | None = None) -> list[Shard[Item]]:
    """items -> shards of `shard_size` (the last may be shorter), in order; shard k gets sampling.seed = derive_seed(
    sampling.seed, k)."""
    return [
        Shard(index, tuple(items[start : start + shard_size]),
              None if sampling is None else sampling.model_copy(update={"seed": derive_seed(sampling.seed, index)}))
        for index, start in enumerate(range(0, len(items), shard_size))
    ]
