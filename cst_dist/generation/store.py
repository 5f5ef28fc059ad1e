"""The pairs folder: the shard plan, shard files written atomically, and the manifest that lets a rerun resume.

    <output>/shard-00003.jsonl                 kept pairs of shard 3 (id, prompt, y0, critique, y1, generator, ...)
    <output>/rejects/shard-00003.jsonl         its rows with an empty or unrevised answer, or a prompt too long for
                                               the model's context (never generated), plus `reason`
    <output>/conversations/shard-00003.jsonl   (generate.save_conversations) every conversation the engine received
    <output>/manifest.json                     the plan and the finished shards with their counts

A shard is finished once the manifest lists it; its files are written before the manifest, each atomically, so a
crash never leaves a shard that looks finished and is not. The plan records everything that decides the text; a
rerun with another plan in the same folder is refused instead of mixing two runs.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cst_dist.config import RunConfig, SamplingConfig
from cst_dist.errors import UserError
from cst_dist.generation.critique import PromptItem, derive_seed
from cst_dist.io import file_sha256, write_json_atomic, write_jsonl_atomic

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


class GenerationError(UserError, RuntimeError):
    """A generation run that cannot go on; the message names the shard, setting or address to look at."""


@dataclass(frozen=True)
class Shard:
    """Prompts [index * shard_size, ...) of the plan, sampled with a seed of their own: derive_seed(seed, index)."""

    index: int
    items: tuple[PromptItem, ...]
    sampling: SamplingConfig

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


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


def plan_shards(items: list[PromptItem], shard_size: int, sampling: SamplingConfig) -> list[Shard]:
    return [
        Shard(index, tuple(items[start : start + shard_size]),
              sampling.model_copy(update={"seed": derive_seed(sampling.seed, index)}))
        for index, start in enumerate(range(0, len(items), shard_size))
    ]


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
        self.folder = Path(folder)
        self.manifest = self._load_or_start(plan, num_shards)

    def _load_or_start(self, plan: dict[str, Any], num_shards: int) -> dict[str, Any]:
        path = self.folder / MANIFEST
        if not path.is_file():
            return {"schema_version": SCHEMA_VERSION, "plan": plan, "num_shards": num_shards, "shards": {},
                    "totals": {}, "complete": False}
        manifest = json.loads(path.read_text(encoding="utf-8"))
        old = manifest["plan"]
        changed = [key for key in sorted(set(plan) | set(old)) if plan.get(key) != old.get(key)]
        if changed:
            details = "; ".join(f"{key}: {old.get(key)!r} -> {plan.get(key)!r}" for key in changed)
            raise GenerationError(
                f"{self.folder} holds pairs of another plan ({details}); set generate.output to a new folder, "
                "or remove this one to start over"
            )
        return manifest

    def finished(self) -> set[int]:
        """Shards the manifest lists and whose pair file is still there."""
        return {entry["index"] for entry in self.manifest["shards"].values() if (self.folder / entry["file"]).is_file()}

    def save(self, shard: Shard, result: ShardResult, attempts: int) -> None:
        """Rejects and conversations first, then the pairs, then the manifest: all atomic, in that order."""
        write_jsonl_atomic(self.folder / "rejects" / f"{shard.name}.jsonl", result.rejects)
        if result.conversations:
            write_jsonl_atomic(self.folder / "conversations" / f"{shard.name}.jsonl", result.conversations)
        write_jsonl_atomic(self.folder / f"{shard.name}.jsonl", result.rows)
        self.manifest["shards"][shard.name] = {
            "index": shard.index, "file": f"{shard.name}.jsonl", "rejects_file": f"rejects/{shard.name}.jsonl",
            "prompts": len(shard.items), "pairs": len(result.rows), "rejects": len(result.rejects),
            "reject_reasons": dict(Counter(row["reason"] for row in result.rejects)), "seed": shard.sampling.seed,
            "generated_tokens": result.generated_tokens, "seconds": round(result.seconds, 3),
            "attempts": attempts, "worker": result.worker,
        }
        self.manifest["shards"] = dict(sorted(self.manifest["shards"].items()))
        entries = self.manifest["shards"].values()
        self.manifest["totals"] = {
            "shards": len(entries), "prompts": sum(e["prompts"] for e in entries),
            "pairs": sum(e["pairs"] for e in entries), "rejects": sum(e["rejects"] for e in entries),
            "generated_tokens": sum(e["generated_tokens"] for e in entries),
            "reject_reasons": dict(sorted(sum((Counter(e["reject_reasons"]) for e in entries), Counter()).items())),
        }
        self.manifest["complete"] = len(entries) == self.manifest["num_shards"]
        write_json_atomic(self.folder / MANIFEST, self.manifest)

    @property
    def totals(self) -> dict[str, int]:
        return self.manifest["totals"]

