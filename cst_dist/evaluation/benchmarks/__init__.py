"""General benchmarks of `cst eval` (the paper's Table III): ARC-Challenge, HellaSwag, MMLU, TruthfulQA (mc2), scored by
log-likelihood the way lm-evaluation-harness scores them, so the numbers sit beside the Open LLM Leaderboard's.

tasks.py    the four tasks: readers of their public column layouts (JSONL/JSON/Parquet) and their prompt formats
fewshot.py  the few-shot prompt builder: shots chosen as the harness chooses them, one text (or chat turn) per doc
scorer.py   log-likelihoods of (context, continuation) requests: length-sorted batches, each context computed once
metrics.py  acc, acc_norm, mc2 per document and per task (with the harness's standard error)
run.py      the farm worker and the driver: docs -> shards of requests on Ray actors -> report entries

Nothing here downloads: `eval.benchmarks.<task>.path` points at a local copy; a task without one is skipped.
"""

from cst_dist.errors import UserError


class BenchmarkError(UserError, ValueError):
    """A benchmark setting or file that cannot be used; the message names the `eval.benchmarks.*` key or the file."""
