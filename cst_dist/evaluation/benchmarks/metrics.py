"""Multiple-choice metrics from per-choice log-likelihoods, as lm-evaluation-harness defines them.

    acc       the choice with the highest log-likelihood is the gold one (first maximum on ties, as numpy.argmax)
    acc_norm  the same after dividing each log-likelihood by its choice's length in characters (without the
              leading space): the harness's length normalisation, the leaderboard's metric for ARC and HellaSwag
    mc2       TruthfulQA: the probability mass of the true answers among all answers, p_i = exp(ll_i) normalised;
              computed in log space (logsumexp), so long answers whose exp(ll) underflows still count
    acc_macro MMLU: the mean of the per-subject accuracies (the Open LLM Leaderboard v1 averaged its 57 MMLU tasks);
              `acc` is the harness's `mmlu` group: every question counts once (weighted by subject size)
Task values carry the harness's standard error: sample standard deviation / sqrt(n) (none for acc_macro).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cst_dist.evaluation.benchmarks.tasks import TASKS, Doc


def argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(value - top) for value in values))


def doc_metrics(doc: Doc, loglikelihoods: Sequence[float]) -> dict[str, float]:
    """Every per-document metric of the doc's task (acc_macro is a task-level one: it uses `acc`)."""
    if len(loglikelihoods) != len(doc.choices):
        raise ValueError(f"{len(loglikelihoods)} log-likelihoods for {len(doc.choices)} choices")
    if doc.labels is not None:
        true = [ll for ll, label in zip(loglikelihoods, doc.labels, strict=True) if label == 1]
        return {"mc2": math.exp(logsumexp(true) - logsumexp(loglikelihoods))}
    normalised = [ll / max(len(choice), 1) for ll, choice in zip(loglikelihoods, doc.choices, strict=True)]
    return {"acc": float(argmax(loglikelihoods) == doc.gold), "acc_norm": float(argmax(normalised) == doc.gold)}


def mean_stderr(values: Sequence[float]) -> float | None:
    """Sample standard deviation / sqrt(n), the harness's stderr of a mean; None below 2 values."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) / math.sqrt(len(values))


def task_metrics(task: str, docs: Sequence[Doc], loglikelihoods: Sequence[Sequence[float]]
                 ) -> list[dict[str, float | int | None]]:
    """[{"metric", "value", "stderr", "n"}] in the task's metric order, over all its documents."""
    per_doc = [doc_metrics(doc, lls) for doc, lls in zip(docs, loglikelihoods, strict=True)]
    results = []
    for metric in TASKS[task].metrics:
        if metric == "acc_macro":
            subjects: dict[str | None, list[float]] = {}
            for doc, values in zip(docs, per_doc, strict=True):
                subjects.setdefault(doc.subject, []).append(values["acc"])
            means = [sum(v) / len(v) for v in subjects.values()]
            results.append({"metric": metric, "value": sum(means) / len(means), "stderr": None, "n": len(docs)})
            continue
        values = [entry[metric] for entry in per_doc]
        results.append({"metric": metric, "value": sum(values) / len(values), "stderr": mean_stderr(values),
                        "n": len(values)})
    return results
