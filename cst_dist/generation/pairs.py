"""The pairs folder: a shard store (cst_dist.farm.store) whose shards hold self-critique pairs and their rejects.

    <output>/shard-00003.jsonl                 kept pairs of shard 3 (id, prompt, y0, critique, y1, generator, ...)
    <output>/rejects/shard-00003.jsonl         its rows with an empty or unrevised answer, or a prompt too long for
                                               the model's context (never generated), plus `reason`
    <output>/conversations/shard-00003.jsonl   (generate.save_conversations) every conversation the engine received
    <output>/manifest.json                     the plan and the finished shards with their counts

The plan records everything that decides the text; a rerun with another plan in the same folder is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cst_dist.config import RunConfig
from cst_dist.farm.shards import Shard
from cst_dist.farm.store import ShardStore
from cst_dist.generation.critique import PromptItem
from cst_dist.io import file_sha256

# Summed into the manifest's totals (with "shards"), in this order.
COUNTED = ("prompts", "pairs", "rejects", "generated_tokens", "reject_reasons")


@dataclass
class ShardResult:
    """What a worker returns for a shard; the driver writes it (workers may run on nodes without the folder)."""

    rows: list[dict[str, Any]]
    rejects: list[dict[str, Any]]
    conversations: list[dict[str, Any]] = field(default_factory=list)
    engine_calls: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    worker: str = ""
    node: str = ""  # the worker's Ray node id (its host name outside Ray)


def make_plan(config: RunConfig, items: list[PromptItem], source: str) -> dict[str, Any]:
    """Everything that decides a shard's text. Batch size is in it: it changes which rows share a sampler call."""
    generate = config.generate
    prompts = json.dumps([[i.id, i.prompt, i.text, i.template_index] for i in items], ensure_ascii=False)
    return {
        "model": str(config.model.path),
        "engine": generate.engine,
        "system_prompt": generate.system_prompt,
        "prompts": source,
        "prompts_sha256": hashlib.sha256(prompts.encode("utf-8")).hexdigest(),
        "num_prompts": len(items),
        "templates_sha256": file_sha256(generate.templates) if generate.templates else None,
        "sampling": generate.sampling.model_dump(),
        "batch_size": generate.batch_size,
        "shard_size": generate.shard_size,
    }


class PairStore:
    """The pairs folder of one plan. `finished()` lists what a rerun skips; `save()` records one more shard."""

    def __init__(self, folder: str | Path, plan: dict[str, Any], num_shards: int):
        self.shards = ShardStore(folder, plan, num_shards, COUNTED, contents="pairs", output_setting="generate.output")
        self.folder = self.shards.folder

    def finished(self) -> set[int]:
        """Shards the manifest lists and whose pair file is still there."""
        return self.shards.finished()

    def save(self, shard: Shard[PromptItem], result: ShardResult, attempts: int) -> None:
        """Rejects and conversations first, then the pairs (the shard's file), then the manifest: all atomic."""
        self.shards.save(shard, *shard_record(shard, result, attempts))

    @property
    def manifest(self) -> dict[str, Any]:
        return self.shards.manifest

    @property
    def totals(self) -> dict[str, Any]:
        return self.shards.totals


def shard_record(shard: Shard[PromptItem], result: ShardResult, attempts: int
                 ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """A generated shard's files (rejects, conversations if recorded, then the pairs: the shard's file) and its
    manifest entry."""
    files = {f"rejects/{shard.name}.jsonl": result.rejects}
    if result.conversations:
        files[f"conversations/{shard.name}.jsonl"] = result.conversations
    files[f"{shard.name}.jsonl"] = result.rows
    return files, {
        "rejects_file": f"rejects/{shard.name}.jsonl", "prompts": len(shard.items), "pairs": len(result.rows),
        "rejects": len(result.rejects), "reject_reasons": dict(Counter(row["reason"] for row in result.rejects)),
        "seed": shard.sampling.seed, "generated_tokens": result.generated_tokens,
        "seconds": round(result.seconds, 3), "attempts": attempts, "worker": result.worker, "node": result.node,
    }
