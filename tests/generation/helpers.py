"""Helpers shared by the generation tests: a small run config and readers of a pairs folder."""

from __future__ import annotations

import json
from pathlib import Path

from cst_dist.config import RunConfig


def generate_config(model_config, output, **generate) -> RunConfig:
    """24 AdvBench prompts in shards of 4 on 2 CPU replicas, 8 sampled tokens per turn (temperature 1: a random
    tiny model repeats itself under greedy decoding, so y0 == y1 would reject most rows)."""
    settings = {
        "max_prompts": 24, "shard_size": 4, "batch_size": 4, "num_replicas": 2, "gpus_per_replica": 0,
        "sampling": {"temperature": 1.0, "max_new_tokens": 8, "seed": 7}, "output": str(output),
        **generate,
    }
    return RunConfig.model_validate(
        {"run_dir": str(output.parent), "model": model_config.model_dump(), "generate": settings}
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_pairs(folder: Path) -> tuple[list[dict], list[dict]]:
    """(pairs, rejects) of a pairs folder, shard by shard."""
    pairs = [row for path in sorted(folder.glob("shard-*.jsonl")) for row in read_jsonl(path)]
    rejects = [row for path in sorted((folder / "rejects").glob("shard-*.jsonl")) for row in read_jsonl(path)]
    return pairs, rejects


def shard_texts(folder: Path) -> dict[str, str]:
    """File name -> content of every shard and reject file: equal dicts mean byte-identical outputs."""
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("shard-*.jsonl"))
            if "conversations" not in p.parts}
