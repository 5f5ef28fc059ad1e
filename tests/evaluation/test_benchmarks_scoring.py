"""Benchmark scores on the tiny model: acc / acc_norm / mc2 equal values computed here from a plain forward pass (the
harness's recipe written out, not the code under test); batch size, context sharing and the number of farm actors
change no number; a rerun scores only missing shards; `cst eval` reports the benchmarks next to safety."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cst_dist.config import BenchmarksConfig, BenchmarkTaskConfig, RunConfig
from cst_dist.evaluation.benchmarks.metrics import doc_metrics, mean_stderr, task_metrics
from cst_dist.evaluation.benchmarks.run import (
    BenchmarkWorker,
    ScoringItem,
    benchmark_entries,
    load_suite,
    score_items,
)
from cst_dist.evaluation.benchmarks.tasks import Doc
from cst_dist.farm.cluster import FarmSettings
from cst_dist.farm.shards import plan_shards
from cst_dist.prompts import SAFE_SYSTEM_PROMPT
from tests.evaluation.benchmark_fixtures import ARC_TEST, HELLASWAG_VAL, MMLU_TEST, TRUTHFULQA, write_all

SHOTS = {"arc_challenge": 2, "hellaswag": 1, "mmlu": 2, "truthfulqa_mc2": 0}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("benchmarks"))


def benchmarks_config(files, **extra) -> BenchmarksConfig:
    tasks = {task: BenchmarkTaskConfig(**{key: str(path) for key, path in paths.items()}, num_fewshot=SHOTS[task])
             for task, paths in files.items()}
    return BenchmarksConfig(**tasks, **extra)


def score_directly(worker: BenchmarkWorker, items: list[ScoringItem]) -> list[dict]:
    [shard] = plan_shards(items, len(items))
    return worker.run_shard(shard)["rows"]


# ---- the expected values, computed here ---------------------------------------------------------------------------
def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """The harness's recipe: trailing spaces of the context move to the continuation; the continuation's tokens are
    what encoding context + continuation adds after the context's; one unpadded forward of the whole sequence."""
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped):] + continuation
    context_ids = tokenizer(context).input_ids
    continuation_ids = tokenizer(context + continuation).input_ids[len(context_ids):]
    with torch.no_grad():
        logits = model(torch.tensor([context_ids + continuation_ids])).logits[0].double()
    logps = logits.log_softmax(-1)
    return sum(logps[len(context_ids) - 1 + j, token].item() for j, token in enumerate(continuation_ids))


def gold_answers() -> dict[str, list]:
    """Gold per question straight from the fixture rows (not through the readers)."""
    return {"arc_challenge": [r["choices"]["label"].index(r["answerKey"]) for r in ARC_TEST],
            "hellaswag": [int(r["label"]) for r in HELLASWAG_VAL], "mmlu": [r["answer"] for r in MMLU_TEST],
            "truthfulqa_mc2": [r["mc2_targets"]["labels"] for r in TRUTHFULQA]}


def expected_metrics(task: str, items: list[ScoringItem], lls: list[list[float]]) -> dict[str, float]:
    golds = gold_answers()[task]
    if task == "truthfulqa_mc2":
        mass = [sum(math.exp(v) for v, label in zip(row, labels, strict=True) if label) / sum(math.exp(v) for v in row)
                for row, labels in zip(lls, golds, strict=True)]
        return {"mc2": sum(mass) / len(mass)}
    acc = [float(row.index(max(row)) == gold) for row, gold in zip(lls, golds, strict=True)]
    # Length in characters of the choice: the continuation less the target delimiter (one leading space).
    per_char = [[v / len(continuation[1:]) for v, continuation in zip(row, item.continuations, strict=True)]
                for row, item in zip(lls, items, strict=True)]
    acc_norm = [float(row.index(max(row)) == gold) for row, gold in zip(per_char, golds, strict=True)]
    result = {"acc": sum(acc) / len(acc), "acc_norm": sum(acc_norm) / len(acc_norm)}
    if task == "mmlu":
        subjects = {}
        for row, value in zip(MMLU_TEST, acc, strict=True):
            subjects.setdefault(row["subject"], []).append(value)
        result = {"acc": result["acc"], "acc_macro": sum(sum(v) / len(v) for v in subjects.values()) / len(subjects)}
    return result


@pytest.fixture(scope="module")
def scored(files, tiny_model_config):
    suite = load_suite(benchmarks_config(files))
    items = suite.items()
    worker = BenchmarkWorker(tiny_model_config, batch_size=16, max_length=None)
    return suite, items, score_directly(worker, items), worker


def test_metrics_equal_values_from_a_plain_forward(scored, tiny_model_config, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    suite, items, rows, _ = scored
    model = AutoModelForCausalLM.from_pretrained(tiny_model_config.path, dtype=torch.float32).eval()
    entries = benchmark_entries(suite, rows, "tiny", None)
    assert [(e["task"], e["metric"]) for e in entries] == [
        ("arc_challenge", "acc"), ("arc_challenge", "acc_norm"), ("hellaswag", "acc"), ("hellaswag", "acc_norm"),
        ("mmlu", "acc"), ("mmlu", "acc_macro"), ("truthfulqa_mc2", "mc2")]
    for task in SHOTS:
        task_items = [item for item in items if item.id.startswith(task)]
        task_rows = [row for row in rows if row["id"].startswith(task)]
        direct = [[direct_loglikelihood(model, tiny_tokenizer, item.context, cont) for cont in item.continuations]
                  for item in task_items]
        for mine, theirs in zip(task_rows, direct, strict=True):
            assert mine["loglikelihoods"] == pytest.approx(theirs, rel=1e-5, abs=1e-4)
        expected = expected_metrics(task, task_items, direct)
        got = {e["metric"]: e for e in entries if e["task"] == task}
        assert {metric: got[metric]["value"] for metric in expected} == pytest.approx(expected, abs=1e-9)
        assert {e["n"] for e in got.values()} == {len(task_items)}
        assert {e["num_fewshot"] for e in got.values()} == {SHOTS[task]}
    # The shots really are in the scored contexts (2 ARC examples before the question, 6 QA pairs in TruthfulQA).
    assert items[0].context.count("Question:") == 3 and items[-1].context.count("\nA:") == 7


def test_metric_definitions_on_hand_values():
    """acc picks the largest log-likelihood, acc_norm the largest per character of the choice (without the leading
    space), mc2 the true answers' share of probability, in log space (these would underflow exp() to 0/0)."""
    doc = Doc("q", ("ab", "abcdef"), gold=1)
    assert doc_metrics(doc, [-4.0, -6.0]) == {"acc": 0.0, "acc_norm": 1.0}  # -2.0/char against -1.0/char
    # The length is the choice's, without the delimiter: counting " a" and " abc" would pick "a" (-1.0 > -1.25).
    assert doc_metrics(Doc("q", ("a", "abc"), gold=1), [-2.0, -5.0])["acc_norm"] == 1.0
    mc2 = Doc("q", ("a", "b", "c"), gold=0, labels=(1, 0, 1))
    assert doc_metrics(mc2, [math.log(0.2), math.log(0.1), math.log(0.3)])["mc2"] == pytest.approx(0.5 / 0.6)
    assert doc_metrics(mc2, [-2000.0, -2000.0 + math.log(2), -2000.0])["mc2"] == pytest.approx(0.5)
    assert doc_metrics(Doc("q", ("x", "y"), gold=1), [-1.0, -1.0])["acc"] == 0.0  # a tie goes to the first
    assert mean_stderr([1.0, 0.0, 1.0, 0.0]) == pytest.approx(math.sqrt(1 / 3) / 2)
    subjects = [Doc("q", ("A", "B"), 0, subject="s1"), Doc("q", ("A", "B"), 0, subject="s1"),
                Doc("q", ("A", "B"), 0, subject="s2")]
    results = {r["metric"]: r["value"] for r in task_metrics("mmlu", subjects, [[0, -1], [-1, 0], [0, -1]])}
    assert results == {"acc": pytest.approx(2 / 3), "acc_macro": pytest.approx((0.5 + 1.0) / 2)}


def test_batch_size_and_context_sharing_change_no_score(scored, tiny_model_config):
    suite, items, rows, worker = scored
    reference = benchmark_entries(suite, rows, "tiny", None)
    tokens = {}
    for batch_size, share in ((1, True), (16, False), (1, False)):
        other = BenchmarkWorker(tiny_model_config, batch_size=batch_size, max_length=None)
        other.scorer.share_contexts = share
        before = other.scorer.stats.input_tokens
        other_rows = score_directly(other, items)
        tokens[batch_size, share] = other.scorer.stats.input_tokens - before
        for mine, theirs in zip(rows, other_rows, strict=True):
            assert mine["id"] == theirs["id"]
            assert mine["loglikelihoods"] == pytest.approx(theirs["loglikelihoods"], rel=1e-6, abs=1e-5)
        entries = benchmark_entries(suite, other_rows, "tiny", None)
        assert [(e["task"], e["metric"], e["n"]) for e in entries] == [(e["task"], e["metric"], e["n"])
                                                                      for e in reference]
        assert [e["value"] for e in entries] == pytest.approx([e["value"] for e in reference], abs=1e-7)
    # Each context runs once with sharing: far fewer token positions than one full sequence per choice.
    assert tokens[1, True] < 0.5 * tokens[1, False]


def test_one_and_two_actors_give_identical_numbers_and_a_rerun_resumes(ray_cluster, files, tiny_model_config,
                                                                       tmp_path, scored):
    suite, items, direct_rows, _ = scored
    config = benchmarks_config(files, shard_size=5, batch_size=8)
    runs = {}
    for actors in (1, 2):
        farm = FarmSettings("eval", num_replicas=actors, gpus_per_replica=0, connect_timeout_s=30)
        runs[actors] = score_items(tiny_model_config, items, config, farm, tmp_path / f"actors-{actors}")
    assert runs[1].rows == runs[2].rows  # the same floats, not just close ones
    assert runs[1].shards_total == runs[2].shards_scored == math.ceil(len(items) / 5)
    manifest = json.loads((tmp_path / "actors-2" / "manifest.json").read_text())
    assert len({entry["worker"] for entry in manifest["shards"].values()}) == 2  # both actors scored shards
    assert manifest["totals"]["questions"] == len(items) and manifest["complete"]
    assert [v for row in runs[1].rows for v in row["loglikelihoods"]] == pytest.approx(
        [v for row in direct_rows for v in row["loglikelihoods"]], rel=1e-6, abs=1e-5)
    farm = FarmSettings("eval", num_replicas=1, gpus_per_replica=0, connect_timeout_s=30)
    (tmp_path / "actors-1" / "shard-00001.jsonl").unlink()  # as if the run died before writing it
    again = score_items(tiny_model_config, items, config, farm, tmp_path / "actors-1")
    assert again.shards_scored == 1 and again.rows == runs[1].rows


def test_chat_template_measurement_encodes_one_bos(scored, tiny_tokenizer):
    """Under the chat template the context is the rendered conversation (the template writes BOS; none is added),
    and the generation prompt's trailing newline moves into every continuation, as in the harness."""
    _, _, _, worker = scored
    item = ScoringItem("x", "What is 2 + 3?\nAnswer:", ("A", "B"), system=SAFE_SYSTEM_PROMPT, chat=True)
    requests = worker.encode(item)
    text = (f"<s><|im_start|>system\n{SAFE_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?\nAnswer:"
            "<|im_end|>\n<|im_start|>assistant")
    assert list(requests.context) == tiny_tokenizer(text, add_special_tokens=False).input_ids
    assert requests.context.count(tiny_tokenizer.bos_token_id) == 1
    whole = tiny_tokenizer(text + "\nB", add_special_tokens=False).input_ids
    assert list(requests.continuations[1]) == whole[len(requests.context):]


def test_cst_eval_reports_benchmarks_beside_safety(ray_cluster, files, tiny_model_config, tmp_path, scored):
    """One model through `run_eval`: plain and under s1 (a second measurement), hellaswag left unconfigured."""
    suite, items, direct_rows, _ = scored
    benchmarks = {task: {key: str(path) for key, path in paths.items()} | {"num_fewshot": SHOTS[task]}
                  for task, paths in files.items() if task != "hellaswag"}
    settings = {"models": {"tiny": tiny_model_config.path}, "max_prompts": 2, "shard_size": 2, "num_replicas": 1,
                "gpus_per_replica": 0, "sampling": {"temperature": 0.0, "max_new_tokens": 2},
                "judge": {"kind": "keyword"}, "preference": False,
                "benchmarks": {**benchmarks, "system_prompts": [None, SAFE_SYSTEM_PROMPT], "shard_size": 8}}
    config = RunConfig.model_validate({"run_dir": str(tmp_path), "model": tiny_model_config.model_dump(),
                                       "eval": settings})
    from cst_dist.evaluation.runner import run_eval

    result = run_eval(config)
    report = json.loads(result.files["json"].read_text())
    assert report["benchmarks_skipped"] == [{"task": "hellaswag", "reason": "no eval.benchmarks.hellaswag.path"}]
    plain = [e for e in report["benchmarks"] if e["system_prompt"] is None]
    under_s1 = [e for e in report["benchmarks"] if e["system_prompt"] == SAFE_SYSTEM_PROMPT]
    assert len(plain) == len(under_s1) == 5 and {e["model"] for e in report["benchmarks"]} == {"tiny"}
    expected = [e for e in benchmark_entries(suite, direct_rows, "tiny", None) if e["task"] != "hellaswag"]
    assert [(e["task"], e["metric"], e["n"], e["num_fewshot"]) for e in plain] == [
        (e["task"], e["metric"], e["n"], e["num_fewshot"]) for e in expected]
    assert [e["value"] for e in plain] == pytest.approx([e["value"] for e in expected], abs=1e-7)
    assert report["safety"] and (tmp_path / "eval" / "tiny" / "benchmarks" / "manifest.json").is_file()
    markdown = result.files["markdown"].read_text()
    header = "| model | measurement | ARC (acc_norm, 2-shot) | MMLU (acc, 2-shot) | TruthfulQA (mc2, 0-shot) |"
    assert header in markdown and header in result.table
    row = next(line for line in markdown.splitlines() if line.startswith("| tiny | plain |"))
    by_metric = {(e["task"], e["metric"]): e["value"] for e in plain}
    assert row == (f"| tiny | plain | {by_metric['arc_challenge', 'acc_norm']:.4f} | {by_metric['mmlu', 'acc']:.4f} "
                   f"| {by_metric['truthfulqa_mc2', 'mc2']:.4f} |")
    assert "| tiny | s1 (safe), plain text |" in markdown
    assert "Skipped: hellaswag (no eval.benchmarks.hellaswag.path)." in markdown
    import matplotlib.image

    image = matplotlib.image.imread(result.files["benchmarks_chart"])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
