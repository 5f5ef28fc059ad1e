"""Reference log-probs: computed live by the frozen reference engine, or precomputed once and cached.

The cache is a safetensors file in the run folder (`train.reference_cache` to put it elsewhere), so a read-only or
shared data mount works and two models trained on one set keep a cache each. It is keyed by hashes of the data, the
reference weights and the tokenization settings, stored as its metadata and checked before any tensor is read; a
cache made under other settings is an error, never silently reused, and nothing in it is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from cst_dist.config import DataConfig, TrainConfig
from cst_dist.data import preference_set
from cst_dist.errors import UserError
from cst_dist.io import atomic_file, check_writable_dir, file_fingerprint
from cst_dist.logprobs import LOGITS_CHUNK_SIZE, ChosenRejected, batch_token_counts, chosen_rejected_logps
from cst_dist.models import ModelSpec
from cst_dist.run_layout import REFERENCE_CACHE, RunLayout
from cst_dist.training.data import TokenizedSet
from cst_dist.training.distributed import DistEnv, barrier

log = logging.getLogger(__name__)
CACHE_NAME = REFERENCE_CACHE


class ReferenceCacheMismatch(UserError, ValueError):
    pass


def cache_key_parts(spec: ModelSpec, data_config: DataConfig, tokenizer, data: TokenizedSet) -> dict[str, str]:
    """Hashes of everything the cached numbers depend on: the rows, the reference weights, the tokenization."""
    model_dir = spec.path
    weights = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    return {
        "data": preference_set.fingerprint(data.source),  # of every split's files: the set as `cst build` wrote it
        "reference": hashlib.sha256("".join(file_fingerprint(p) for p in weights).encode()).hexdigest(),
        "tokenization": hashlib.sha256(json.dumps(
            [data_config.model_dump(exclude={"packing"}), tokenizer.chat_template, len(tokenizer), spec.config.dtype],
            sort_keys=True,
        ).encode()).hexdigest(),
    }


@torch.no_grad()
def compute_reference_logps(engine, collate: Callable[[list], dict], data: TokenizedSet, size: int, env: DistEnv,
                            chunk_size: int | None = LOGITS_CHUNK_SIZE):
    """[rows, 2] (chosen, rejected) summed reference log-probs of every row, in micro-batches of `size` spread over
    the ranks. ZeRO-3 needs every rank in every forward, so the last round repeats a batch on ranks that ran out."""
    chunks = [list(range(i, min(i + size, len(data.pairs)))) for i in range(0, len(data.pairs), size)]
    rounds = -(-len(chunks) // env.world_size)
    results: dict[int, tuple[float, float]] = {}
    for round_index in range(rounds):
        chunk_index = round_index * env.world_size + env.rank
        chunk = chunks[min(chunk_index, len(chunks) - 1)]
        batch = collate([data.pairs[i] for i in chunk])
        logps = chosen_rejected_logps(engine, batch, len(chunk), env.device, chunk_size=chunk_size)
        if chunk_index < len(chunks):
            for row, (chosen, rejected) in zip(chunk, logps.stack().float().tolist(), strict=True):
                results[row] = (chosen, rejected)
    gathered = [None] * env.world_size if dist.is_initialized() else [results]
    if dist.is_initialized():
        dist.all_gather_object(gathered, results)
    merged = {row: value for part in gathered for row, value in part.items()}
    return torch.tensor([merged[row] for row in range(len(data.pairs))], dtype=torch.float32)


def cache_path(train: TrainConfig, layout: RunLayout) -> Path:
    return Path(train.reference_cache or layout.reference_cache)


def _ids_hash(ids: list[str]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def read_cache(path: Path, parts: dict[str, str], ids: list[str]) -> torch.Tensor:
    """The cached [rows, 2] log-probs, after its metadata proved it was made for exactly this data and model."""
    try:
        with safe_open(str(path), framework="pt") as cache:
            metadata = cache.metadata() or {}
            key = json.loads(metadata.get("key", "{}"))
            differing = [name for name, value in parts.items() if key.get(name) != value]
            if metadata.get("ids") != _ids_hash(ids):
                differing.append("rows")
            if differing:
                raise ReferenceCacheMismatch(
                    f"{path} was computed for other {', '.join(differing)} than this run uses; delete it to "
                    "recompute, or set train.reference=offload"
                )
            return cache.get_tensor("logps")
    except (SafetensorError, json.JSONDecodeError, OSError) as exc:
        raise ReferenceCacheMismatch(
            f"{path} is not a reference cache written by cst train ({str(exc).splitlines()[0]}); delete it to recompute"
        ) from None


def load_or_compute_cache(path: Path, parts: dict[str, str], data: TokenizedSet, env: DistEnv,
                          compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The cached log-probs when the cache matches `parts` and the rows; else `compute()` once and cache it."""
    if path.is_file():
        logps = read_cache(path, parts, data.ids)
        log.info("reference log-probs: cache hit %s (reference model not loaded)", path)
        return logps
    check_writable_dir(path.parent, "train.reference_cache folder")  # before the pass, not after an hour of it
    log.info("reference log-probs: computing %d rows once into %s", len(data.pairs), path)
    logps = compute()
    if env.is_rank_zero:
        metadata = {"key": json.dumps(parts, sort_keys=True), "ids": _ids_hash(data.ids), "rows": str(len(data.ids))}
        with atomic_file(path, "wb") as handle:
            handle.write(safetensors_bytes({"logps": logps.contiguous()}, metadata=metadata))
    barrier()
    return logps


class PrecomputedReference:
    """Reference log-probs read from the cache: [rows, 2] summed (chosen, rejected)."""

    def __init__(self, logps: torch.Tensor):
        self.logps = logps

    def __call__(self, rows: list[int], batch: dict, device: torch.device, average: bool) -> ChosenRejected:
        ref = self.logps[rows].to(device)
        ref = ChosenRejected(ref[:, 0], ref[:, 1])
        if average:  # the cache holds sums; the batch's labels give the token counts
            counts = ChosenRejected.split(batch_token_counts(batch, 2 * len(rows)).to(device).clamp(min=1))
            ref = ChosenRejected(ref.chosen / counts.chosen, ref.rejected / counts.rejected)
        return ref


class LiveReference:
    """Reference log-probs from the frozen reference engine, on the same batch as the policy."""

    def __init__(self, engine, chunk_size: int | None = LOGITS_CHUNK_SIZE):
        self.engine, self.chunk_size = engine, chunk_size

    @torch.no_grad()
    def __call__(self, rows: list[int], batch: dict, device: torch.device, average: bool) -> ChosenRejected:
        return chosen_rejected_logps(self.engine, batch, len(rows), device, average, self.chunk_size)
