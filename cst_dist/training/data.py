"""Training data: the tokenized preference set and a deterministic, resumable order of micro-batches.

Step `s` of epoch `e` always uses the same rows (a seeded permutation per epoch), so the sampler position is just the
global step: resuming needs no iterator state, and 1 rank x accumulation 4 sees the rows that 4 x 1 sees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from cst_dist.config import ConfigError, DataConfig, TrainConfig
from cst_dist.data.collate import EncodedPair, PairTokenizer, TruncationStats, pack_batch, pad_batch
from cst_dist.data.preference_set import pair_key, read_split
from cst_dist.errors import UserError

log = logging.getLogger(__name__)


class EmptyDataError(UserError, ValueError):
    pass


@dataclass
class TokenizedSet:
    pairs: list[EncodedPair]
    ids: list[str]
    stats: TruncationStats
    source: Path
    groups: list[str] | None = None  # per row, its pair's key (`preference_set.pair_key`): rows that may batch together


def load_tokenized_set(folder: Path, data_config: DataConfig, tokenizer, split: str = "train") -> TokenizedSet:
    """Read the `cst build` output and tokenize every row (rows over length: the `data.over_length` policy).

    The folder must be what `cst build` wrote: its manifest's checksums must match the Parquet files, and every row
    must hold the six string fields. Anything else is an error naming the file (and row, and column).
    """
    encoder = PairTokenizer(tokenizer, data_config)
    pairs, ids, groups = [], [], []
    for file, row_number, row in read_split(folder, split, "train.data"):
        pair = encoder.encode(row, str(file), row_number)
        if pair is not None:
            pairs.append(pair)
            ids.append(row["id"])
            groups.append(pair_key(row))
    if not pairs:
        raise EmptyDataError(f"preference set {folder} (train.data) has no usable {split} rows")
    log.info("tokenized %s: %s", folder, encoder.stats.summary())
    return TokenizedSet(pairs, ids, encoder.stats, Path(folder), groups)


def load_sft_set(folder: Path, data_config: DataConfig, tokenizer, responses: str = "chosen",
                 keep_system: bool = True, split: str = "train") -> TokenizedSet:
    """SFT examples (`train.objective=sft`) from the same preference set, checked and tokenized as for DPO: per row
    its chosen answer (`responses="chosen"`), or its chosen and its rejected answer (`"both"`: two examples), under
    the row's system prompt or none (`keep_system=False`). Each example is an `EncodedPair` without a rejected side;
    its id is `<row id>:chosen` or `<row id>:rejected`. Duplicates are kept: in a CST set a pair's two answers appear
    under both system prompts, so with `both` and the system prompt dropped every example appears twice, uniformly.
    """
    encoder = PairTokenizer(tokenizer, data_config)
    keys = ("chosen", "rejected") if responses == "both" else ("chosen",)
    examples, ids, rows = [], [], 0
    for file, row_number, row in read_split(folder, split, "train.data"):
        rows += 1
        for key in keys:
            example = encoder.encode_sft(row, key, keep_system, str(file), row_number)
            if example is not None:
                examples.append(example)
                ids.append(f"{row['id']}:{key}")
    if not examples:
        raise EmptyDataError(f"preference set {folder} (train.data) has no usable {split} rows for SFT")
    log.info("SFT set %s: %d examples from %d rows (responses: %s, system prompt: %s); %s", folder, len(examples),
             rows, responses, "kept" if keep_system else "dropped", encoder.stats.summary())
    return TokenizedSet(examples, ids, encoder.stats, Path(folder))


def load_train_set(folder: Path, data_config: DataConfig, train: TrainConfig, tokenizer) -> TokenizedSet:
    """What `train.objective` trains on: preference pairs (dpo) or SFT examples of the same set (sft)."""
    if train.objective == "sft":
        return load_sft_set(folder, data_config, tokenizer, train.sft_responses, train.sft_system_prompt == "keep")
    return load_tokenized_set(folder, data_config, tokenizer)


def make_collator(data_config: DataConfig, pad_token_id: int, attn_implementation: str) -> Callable[[list], dict]:
    """Padded batches, or packed ones; packed rows are capped only for mask-based attention (SDPA, eager), whose cost
    grows with the row length, while varlen attention (flash-attn's or `cst_dist.attention`) takes one row of any
    length at per-sequence cost: a micro-batch is then one row without a single padding token."""
    if not data_config.packing:
        return partial(pad_batch, pad_token_id=pad_token_id)
    row_tokens = data_config.pack_row_tokens
    if row_tokens is None and attn_implementation not in ("flash_attention_2", "varlen"):
        row_tokens = data_config.max_length
    return partial(pack_batch, pad_token_id=pad_token_id, row_tokens=row_tokens)


@dataclass(frozen=True)
class BatchPlan:
    """The global batch is fixed by the config; accumulation is derived from it once, here, and passed on to the
    sampler and the DeepSpeed config."""

    global_batch_size: int
    micro_batch_size: int
    world_size: int

    @classmethod
    def of(cls, train: TrainConfig, world_size: int) -> BatchPlan:
        if train.global_batch_size % (train.micro_batch_size * world_size):
            raise ConfigError(
                f"train.global_batch_size={train.global_batch_size} is not divisible by train.micro_batch_size="
                f"{train.micro_batch_size} x {world_size} ranks; change one of them"
            )
        return cls(train.global_batch_size, train.micro_batch_size, world_size)

    @property
    def accumulation(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.world_size)


class StepSampler:
    """Which row indices each rank's micro-batches use at a given optimizer step."""

    def __init__(self, num_rows: int, plan: BatchPlan, seed: int, groups: list[str] | None = None):
        """`groups`: a key per row; rows with one key stay next to each other in the epoch order, so they share a
        global batch (unless the group straddles a batch boundary). None: rows are shuffled one by one."""
        if num_rows < plan.global_batch_size:
            raise EmptyDataError(
                f"{num_rows} training rows are fewer than train.global_batch_size={plan.global_batch_size}"
            )
        if groups is not None and len(groups) != num_rows:
            raise ValueError(f"{len(groups)} group keys for {num_rows} rows")
        self.num_rows, self.plan, self.seed = num_rows, plan, seed
        self.members: list[list[int]] | None = None
        if groups is not None:
            by_key: dict[str, list[int]] = {}
            for row, key in enumerate(groups):
                by_key.setdefault(key, []).append(row)
            self.members = list(by_key.values())
        self.steps_per_epoch = num_rows // plan.global_batch_size  # the last partial batch is dropped

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        if self.members is None:
            return rng.permutation(self.num_rows)
        order = []
        for group in rng.permutation(len(self.members)):
            order += self.members[group]
        return np.asarray(order)

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """Row indices of each micro-batch this rank runs at `step`; micro-batch k of rank r holds global slots
        [(k * world + r) * micro, ... + micro), so changing ranks or accumulation keeps the global batch the same."""
        plan = self.plan
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * plan.global_batch_size
        rows = self.epoch_order(epoch)[start : start + plan.global_batch_size].tolist()
        return [
            rows[(k * plan.world_size + rank) * plan.micro_batch_size :][: plan.micro_batch_size]
            for k in range(plan.accumulation)
        ]


@dataclass
class MicroBatch:
    """One micro-batch as the step runs it: its row indices, their encoded examples and the collated tensors (CPU)."""

    rows: list[int]
    examples: list[EncodedPair]
    batch: dict[str, Any]

    def sequence_lengths(self) -> list[int]:
        return [length for example in self.examples for length in example.lengths()]


class BatchPrefetcher:
    """This rank's micro-batches of each step, collated one step ahead on a worker thread: collation is Python work
    that would otherwise stand between two forwards, and the model's kernels release the GIL while it runs. The rows
    are exactly `StepSampler`'s, so resume and batch invariance do not depend on it."""

    def __init__(self, data: TokenizedSet, sampler: StepSampler, collate: Callable[[list], dict], rank: int,
                 total_steps: int):
        self.data, self.sampler, self.collate, self.rank, self.total_steps = data, sampler, collate, rank, total_steps
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collate")
        self.pending: dict[int, Future] = {}

    def _collate(self, step: int) -> list[MicroBatch]:
        micro_batches = []
        for rows in self.sampler.micro_batches(step, self.rank):
            examples = [self.data.pairs[i] for i in rows]
            micro_batches.append(MicroBatch(rows, examples, self.collate(examples)))
        return micro_batches

    def step(self, step: int) -> list[MicroBatch]:
        future = self.pending.pop(step, None) or self.pool.submit(self._collate, step)
        if step + 1 < self.total_steps:
            self.pending[step + 1] = self.pool.submit(self._collate, step + 1)
        return future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
