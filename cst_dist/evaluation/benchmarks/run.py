"""The benchmarks of one model on the farm: configured tasks -> prompts -> shards of questions -> report entries.

    <eval>/<model>[@step]/benchmarks/shard-*.jsonl   per question: id, loglikelihoods (one per choice), token counts
    <eval>/<model>[@step]/benchmarks/manifest.json   the plan (model weights, prompts, batch settings) for resume

Every file is read and every prompt built before any model loads (`load_suite`): a malformed row fails at once,
naming file, row and field, and a task without `path` is listed as skipped. Questions are cut into shards of
`eval.benchmarks.shard_size`; `BenchmarkWorker` actors (a plain class, wrapped by the farm) score a shard's requests
with `LoglikelihoodScorer`. A shard's numbers depend only on the shard, never on which actor ran it, so 1 and 2
actors give the same report; a rerun scores only the shards the folder lacks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cst_dist.config import BenchmarksConfig, ModelConfig
from cst_dist.evaluation.benchmarks.fewshot import Prompt, build_prompts, continuations, render
from cst_dist.evaluation.benchmarks.metrics import task_metrics
from cst_dist.evaluation.benchmarks.tasks import TASKS, Doc, read_docs
from cst_dist.farm.cluster import FarmSettings, actor_device
from cst_dist.farm.driver import run_resumable
from cst_dist.farm.pool import Job, ShardDone
from cst_dist.farm.shards import Shard, plan_shards
from cst_dist.farm.store import ShardStore, model_items_plan

log = logging.getLogger(__name__)
COUNTS = ("questions", "requests", "forwards", "input_tokens", "truncated")
DEFAULT_MAX_LENGTH = 2048  # the harness's when a model's config names no context size


@dataclass(frozen=True)
class ScoringItem:
    """One question under one system prompt, as text: the context (plain: the whole prompt; chat: the user turn),
    its continuations, and (chat only) the system turn."""

    id: str
    context: str
    continuations: tuple[str, ...]
    system: str | None = None
    chat: bool = False


@dataclass
class LoadedTask:
    """A configured task, read and prompted: its documents, their prompts, the shots per prompt."""

    task: str
    docs: list[Doc]
    prompts: list[Prompt]
    num_fewshot: int


@dataclass
class BenchmarkSuite:
    """The tasks to score (in the order of TASKS) and the ones skipped, with why."""

    tasks: list[LoadedTask]
    skipped: list[dict[str, str]]
    system_prompts: list[str | None]
    chat_template: bool

    def items(self) -> list[ScoringItem]:
        """Every question under every system prompt; ids `<task>-<question index>-p<system prompt index>`."""
        items = []
        for loaded in self.tasks:
            for index, (doc, prompt) in enumerate(zip(loaded.docs, loaded.prompts, strict=True)):
                for k, system in enumerate(self.system_prompts):
                    context, system_turn = render(prompt, system, self.chat_template)
                    items.append(ScoringItem(item_id(loaded.task, index, k), context,
                                             continuations(doc, self.chat_template), system_turn, self.chat_template))
        return items


def item_id(task: str, index: int, prompt_index: int) -> str:
    return f"{task}-{index:06d}-p{prompt_index}"


def load_suite(cfg: BenchmarksConfig) -> BenchmarkSuite:
    """Read every configured task's files and build its prompts (no model); tasks without a path are skipped."""
    loaded, skipped = [], []
    for task in TASKS:
        task_cfg = getattr(cfg, task)
        setting = f"eval.benchmarks.{task}"
        if not task_cfg.path:
            skipped.append({"task": task, "reason": f"no {setting}.path"})
            continue
        every = read_docs(task, task_cfg.path)
        docs = every[: task_cfg.limit] if task_cfg.limit else every
        pool = None
        if task_cfg.fewshot_path and task_cfg.num_fewshot:
            same = Path(task_cfg.fewshot_path).resolve() == Path(task_cfg.path).resolve()
            pool = every if same else read_docs(task, task_cfg.fewshot_path)
        prompts = build_prompts(task, docs, pool, task_cfg.num_fewshot, cfg.fewshot_seed, setting)
        loaded.append(LoadedTask(task, docs, prompts, task_cfg.num_fewshot))
    if skipped:
        log.info("benchmarks skipped: %s", "; ".join(f"{s['task']} ({s['reason']})" for s in skipped))
    return BenchmarkSuite(loaded, skipped, list(cfg.system_prompts), cfg.chat_template)


class BenchmarkWorker:
    """One model replica: loads model and tokenizer once, scores a shard's questions (`LoglikelihoodScorer`)."""

    def __init__(self, model_config: ModelConfig, batch_size: int, max_length: int | None, share_contexts: bool = True,
                 num_gpus: int = 0, num_cpus: int = 1, name: str = "worker"):
        from cst_dist.chat import ChatEncoder
        from cst_dist.evaluation.benchmarks.scorer import LoglikelihoodScorer
        from cst_dist.models import load_model, load_tokenizer, resolve_model

        self.name = name
        self.device = actor_device(num_gpus, num_cpus)
        tokenizer = load_tokenizer(model_config)
        self.chat = ChatEncoder(tokenizer)
        model = load_model(resolve_model(model_config, self.device)).to(self.device).eval()
        self.max_length = max_length or context_size(model.config)
        self.scorer = LoglikelihoodScorer(model, tokenizer.pad_token_id, self.device, batch_size, share_contexts)

    def ready(self) -> dict[str, Any]:
        return {"name": self.name, "pid": os.getpid(), "device": self.device, "max_length": self.max_length}

    def encode(self, item: ScoringItem):
        from cst_dist.evaluation.benchmarks.scorer import encode_requests

        text = item.context
        if item.chat:
            text = self.chat.render(self.chat.messages(item.system, item.context))
        try:
            return encode_requests(self.chat.encode_text, text, item.continuations, self.max_length)
        except ValueError as error:
            raise ValueError(f"{item.id}: {error}") from None

    def run_shard(self, shard: Shard) -> dict[str, Any]:
        """{"rows": [{id, loglikelihoods, context_tokens, continuation_tokens, truncated}] in the shard's item order,
        "forwards", "input_tokens" (the scorer's counts for this shard), "worker" (this replica's name)}."""
        before = dataclasses.replace(self.scorer.stats)
        encoded = [self.encode(item) for item in shard.items]
        scores = self.scorer.score(encoded)
        rows = [{"id": item.id, "loglikelihoods": values, "context_tokens": len(requests.context),
                 "continuation_tokens": [len(cont) for cont in requests.continuations],
                 "truncated": requests.truncated}
                for item, requests, values in zip(shard.items, encoded, scores, strict=True)]
        stats = self.scorer.stats
        return {"rows": rows, "forwards": stats.forwards - before.forwards,
                "input_tokens": stats.input_tokens - before.input_tokens, "worker": self.name}


def context_size(model_config) -> int:
    """The model's context length from its transformers config (the harness's order of attributes)."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        if isinstance(getattr(model_config, name, None), int):
            return getattr(model_config, name)
    return DEFAULT_MAX_LENGTH


@dataclass
class ScoringRun:
    """The rows of one model's folder (in item order) and what this run did."""

    rows: list[dict[str, Any]]
    shards_total: int
    shards_scored: int = 0
    retries: int = 0
    seconds: float = 0.0
    totals: dict[str, Any] = field(default_factory=dict)


def scoring_plan(model_path: Path, items: list[ScoringItem], cfg: BenchmarksConfig) -> dict[str, Any]:
    """Everything that decides the numbers; another plan in the same folder is refused, not mixed in."""
    return {**model_items_plan(model_path, items), "batch_size": cfg.batch_size, "shard_size": cfg.shard_size,
            "max_length": cfg.max_length}


def score_items(model_config: ModelConfig, items: list[ScoringItem], cfg: BenchmarksConfig, farm: FarmSettings,
                folder: Path, on_shard_done: Callable[[ShardDone], None] | None = None) -> ScoringRun:
    """Score every item once (the shards the folder lacks only); return all rows of the folder, in item order."""
    shards = plan_shards(items, cfg.shard_size)
    store = ShardStore(folder, scoring_plan(Path(model_config.path), items, cfg), len(shards), COUNTS,
                       "benchmark log-likelihoods", "eval.output")
    def record(done: ShardDone) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
        result = done.result
        entry = {"questions": len(done.shard.items), "requests": sum(len(i.continuations) for i in done.shard.items),
                 "forwards": result["forwards"], "input_tokens": result["input_tokens"],
                 "truncated": sum(1 for row in result["rows"] if row["truncated"]), "attempts": done.attempts,
                 "worker": result["worker"]}
        return {f"{done.shard.name}.jsonl": result["rows"]}, entry

    def saved(done: ShardDone) -> str:
        if on_shard_done is not None:
            on_shard_done(done)
        return f"{store.totals.get('requests', 0) / max(done.seconds, 1e-9):.0f} requests/s"

    job = Job(BenchmarkWorker, (model_config, cfg.batch_size, cfg.max_length), role="benchmark", unit="question")
    done = run_resumable(job, shards, store, farm, record, saved)
    return ScoringRun(done.rows(), len(shards), done.done, done.retries, done.seconds, dict(store.totals))


def benchmark_entries(suite: BenchmarkSuite, rows: list[dict[str, Any]], model: str, step: int | None
                      ) -> list[dict[str, Any]]:
    """Report entries {"model", "step", "task", "metric", "value", "stderr", "n", "num_fewshot", "system_prompt",
    "chat_template", "source" (the scored file)}: per task, per system prompt, per metric."""
    by_id = {row["id"]: row for row in rows}
    entries = []
    for loaded in suite.tasks:
        truncated = 0
        for k, system in enumerate(suite.system_prompts):
            scored = [by_id[item_id(loaded.task, index, k)] for index in range(len(loaded.docs))]
            truncated += sum(1 for row in scored if row["truncated"])
            for result in task_metrics(loaded.task, loaded.docs, [row["loglikelihoods"] for row in scored]):
                entries.append({"model": model, "step": step, "task": loaded.task, **result,
                                "num_fewshot": loaded.num_fewshot, "system_prompt": system,
                                "source": loaded.docs[0].source,
                                "chat_template": suite.chat_template})
        if truncated:
            log.warning("%s of %s: %d prompts were cut from the left to fit the model's context", loaded.task, model,
                        truncated)
    return entries
