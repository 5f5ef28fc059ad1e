"""Evaluation throughput, two workloads of `cst eval`.

Safety generation: answering the AdvBench test prompts one at a time (what a first script does) against the engine's
length-sorted batches, and on 1 against 2 Ray actors.
Benchmark scoring: multiple-choice log-likelihoods (ARC, HellaSwag, MMLU and TruthfulQA layouts, synthetic questions
of realistic shape) one request at a time against length-sorted batches, with and without each shared context
computed once, and on 1 against 2 Ray actors.

    .venv/bin/python benchmarks/eval_throughput.py                        # both, about 7 minutes on 2 CPU cores
    .venv/bin/python benchmarks/eval_throughput.py --sections scoring --quick
    .venv/bin/python benchmarks/eval_throughput.py --report benchmarks/results/eval_throughput.json

Generation workload: `cst eval`'s own items (`protocol=full`: every test prompt under s1, s0 and the unseen S0 prompt),
greedy, `--max-new-tokens` per answer, on a tiny Llama built offline (256 hidden x 4 layers by default, fp32, SDPA).
Part 1 (one process): `HFEngine` with batch size 1, one call per prompt, against one call over all prompts, sorted by
length and batched (what an `AnswerWorker` does per shard).
Part 2 (local Ray): `generate_answers` through the farm, 1 actor x 1 thread against 2 actors x 1 thread, timed from
the first shard sent to the last answer back (actor start-up, the same for any workload, is reported apart).
Scoring workload: `--questions` synthetic questions per task written in the tasks' public layouts and read by
`cst eval`'s own readers, prompted with shots (ARC 5, HellaSwag 3, MMLU 5 from a dev split, TruthfulQA's preamble),
on the same model. Part 3 (one process): `LoglikelihoodScorer` one request per forward, against length-sorted batches
of `--batch-size` requests as full sequences, against the same batches with each question's context run once (the
default of `cst eval`). Part 4 (local Ray): `score_items` on 1 actor x 1 thread against 2 actors x 1 thread.
Running one section keeps the other's results in the JSON. Prints Markdown tables, writes JSON (settings,
environment, every measurement). Nothing passes or fails on a timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.generation_throughput import environment, model_config  # noqa: E402  (the same model recipe)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=52, help="test prompts (x 3 system prompts)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=12)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--questions", type=int, default=64, help="scoring: synthetic questions per task")
    parser.add_argument("--score-shard-size", type=int, default=16, help="scoring: questions per shard (farm)")
    parser.add_argument("--sections", default="generation,scoring", help="generation, scoring, or both")
    parser.add_argument("--threads", type=int, help="scoring, one process: torch threads (default: --cpus); 1 on a "
                        "busy machine, where spinning OpenMP threads stall each other")
    parser.add_argument("--quick", action="store_true",
                        help="scoring: 16 questions per task in shards of 8; generation: 12 prompts")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/eval_throughput.json"))
    parser.add_argument("--report", help="print the tables of an existing JSON and exit")
    args = parser.parse_args()
    args.threads = args.threads or args.cpus
    if args.quick:
        args.questions, args.prompts = min(args.questions, 16), min(args.prompts, 12)
        args.score_shard_size = min(args.score_shard_size, 8)
    return args


def eval_settings(args, output: Path, replicas: int):
    from cst_dist.config import EvalConfig

    return EvalConfig(protocol="full", max_prompts=args.prompts, batch_size=args.batch_size,
                      shard_size=args.shard_size, num_replicas=replicas, gpus_per_replica=0, cpus_per_replica=1,
                      sampling={"temperature": 0.0, "max_new_tokens": args.max_new_tokens}, output=str(output))


def engine_variants(args, config, items) -> list[dict]:
    import torch

    from cst_dist.config import SamplingConfig
    from cst_dist.engines import HFEngine

    torch.set_num_threads(args.cpus)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
    results = []
    for name, batch_size in (("one prompt at a time", 1), ("length-sorted batches", args.batch_size)):
        engine = HFEngine(config, batch_size=batch_size)
        conversations = [engine.chat.messages(item.system, item.prompt) for item in items]
        engine.generate(conversations[:2], sampling)  # warm-up: first-call allocations are not the workload's
        before = engine.stats.generated_tokens
        start = time.perf_counter()
        if batch_size == 1:
            for conversation in conversations:
                engine.generate([conversation], sampling)
        else:
            engine.generate(conversations, sampling)
        seconds = time.perf_counter() - start
        tokens = engine.stats.generated_tokens - before
        results.append({"variant": name, "batch_size": batch_size, "prompts": len(items), "seconds": seconds,
                        "generated_tokens": tokens, "prompts_per_s": len(items) / seconds,
                        "tokens_per_s": tokens / seconds})
        print(f"  {name}: {results[-1]['prompts_per_s']:.1f} prompts/s", flush=True)
    return results


def farm_variants(args, config, items, work: Path) -> list[dict]:
    import ray

    from cst_dist.evaluation.safety import generate_answers

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    results = []
    try:
        for replicas in (1, 2):
            settings = eval_settings(args, work / f"actors-{replicas}", replicas)
            start = time.perf_counter()
            run = generate_answers(config, items, settings, work / f"actors-{replicas}" / "generations")
            seconds = time.perf_counter() - start
            tokens = sum(row["tokens"] for row in run.rows)
            results.append({"variant": f"{replicas} actor{'s' if replicas > 1 else ''} x 1 thread",
                            "actors": replicas, "prompts": len(items), "shards": run.shards_generated,
                            "dispatch_seconds": run.seconds, "prompts_per_s": len(items) / run.seconds,
                            "end_to_end_seconds": seconds, "answer_tokens": tokens})
            print(f"  {results[-1]['variant']}: {results[-1]['prompts_per_s']:.1f} prompts/s", flush=True)
    finally:
        ray.shutdown()
    return results


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# ---- benchmark scoring --------------------------------------------------------------------------------------------
WORDS = ("the a small large river city light water stone early late green red blue cold warm people house school "
         "market winter summer garden road bridge teacher student farmer doctor simple heavy quiet fast slow open "
         "closed north south mountain island forest field animal plant metal paper glass energy sound color number "
         "answer question reason change grows falls moves turns holds gives takes makes finds keeps shows helps "
         "between under over after before because while every most some many few").split()


def _words(rnd, low: int, high: int) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(low, high)))


def scoring_files(args, work: Path) -> dict[str, dict[str, str]]:
    """Synthetic questions of realistic shape in each task's public layout (seeded), evaluated split and shots."""
    import random

    def write_rows(path: Path, rows: list[dict]) -> str:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return str(path)

    rnd = random.Random(0)

    def arc(n):
        return [{"id": f"q{i}", "question": _words(rnd, 12, 30).capitalize() + "?",
                 "choices": {"text": [_words(rnd, 1, 6) for _ in range(4)], "label": list("ABCD")},
                 "answerKey": rnd.choice("ABCD")} for i in range(n)]

    def hellaswag(n):
        return [{"activity_label": _words(rnd, 1, 3).title(), "ctx_a": _words(rnd, 10, 25).capitalize() + ".",
                 "ctx_b": _words(rnd, 2, 4), "endings": [_words(rnd, 6, 16) + "." for _ in range(4)],
                 "label": str(rnd.randint(0, 3))} for _ in range(n)]

    def mmlu(n, subjects=("high_school_physics", "world_religions", "nutrition")):
        return [{"question": _words(rnd, 10, 30).capitalize() + "?", "subject": subjects[i % len(subjects)],
                 "choices": [_words(rnd, 1, 5) for _ in range(4)], "answer": rnd.randint(0, 3)} for i in range(n)]

    def truthfulqa(n):
        rows = []
        for _ in range(n):
            size = rnd.randint(4, 8)
            labels = [1] * rnd.randint(1, size - 1)
            rows.append({"question": _words(rnd, 6, 14).capitalize() + "?", "mc2_targets": {
                "choices": [_words(rnd, 4, 12).capitalize() + "." for _ in range(size)],
                "labels": labels + [0] * (size - len(labels))}})
        return rows

    q = args.questions
    return {
        "arc_challenge": {"path": write_rows(work / "arc" / "test.parquet", arc(q)),
                          "fewshot_path": write_rows(work / "arc" / "train.jsonl", arc(50)), "num_fewshot": 5},
        "hellaswag": {"path": write_rows(work / "hellaswag" / "validation.jsonl", hellaswag(q)),
                      "fewshot_path": write_rows(work / "hellaswag" / "train.parquet", hellaswag(50)),
                      "num_fewshot": 3},
        "mmlu": {"path": write_rows(work / "mmlu" / "test.parquet", mmlu(q)),
                 "fewshot_path": write_rows(work / "mmlu" / "dev.jsonl", mmlu(15)), "num_fewshot": 5},
        "truthfulqa_mc2": {"path": write_rows(work / "truthfulqa" / "validation.parquet", truthfulqa(q))},
    }


def scoring_config(args, work: Path, shard_size: int):
    from cst_dist.config import BenchmarksConfig

    return BenchmarksConfig(**scoring_files(args, work), batch_size=args.batch_size, shard_size=shard_size)


def scoring_variants(args, config, items) -> tuple[list[dict], dict]:
    """One process: one request per forward, batched full sequences, batched with each context run once."""
    import torch

    from cst_dist.evaluation.benchmarks.run import BenchmarkWorker

    torch.set_num_threads(args.threads)
    worker = BenchmarkWorker(config, batch_size=1, max_length=None, num_cpus=args.threads)
    encoded = [worker.encode(item) for item in items]
    requests = sum(len(q.continuations) for q in encoded)
    shape = {"questions": len(items), "requests": requests,
             "mean_context_tokens": sum(len(q.context) for q in encoded) / len(encoded),
             "mean_continuation_tokens": sum(len(c) for q in encoded for c in q.continuations) / requests,
             "truncated": sum(1 for q in encoded if q.truncated)}
    results, scores = [], {}
    for name, batch_size, share in (("one request at a time", 1, False),
                                    ("length-sorted batches", args.batch_size, False),
                                    ("length-sorted batches, shared contexts once", args.batch_size, True)):
        scorer = worker.scorer
        scorer.batch_size, scorer.share_contexts = batch_size, share
        scorer.score(encoded[:2])  # warm-up: first-call allocations are not the workload's
        before = dataclasses.replace(scorer.stats)
        start = time.perf_counter()
        scores[name] = scorer.score(encoded)
        seconds = time.perf_counter() - start
        results.append({"variant": name, "batch_size": batch_size, "share_contexts": share, "requests": requests,
                        "seconds": seconds, "requests_per_s": requests / seconds,
                        "forwards": scorer.stats.forwards - before.forwards,
                        "input_tokens": scorer.stats.input_tokens - before.input_tokens})
        print(f"  {name}: {results[-1]['requests_per_s']:.1f} requests/s", flush=True)
    first = scores["one request at a time"]
    for row in results:  # the same numbers whichever way they were computed
        pairs = zip(first, scores[row["variant"]], strict=True)
        row["max_abs_diff_vs_one_at_a_time"] = max(abs(a - b) for qa, qb in pairs for a, b in zip(qa, qb, strict=True))
    return results, shape


def scoring_farm_variants(args, config, items, benchmarks_cfg, work: Path) -> list[dict]:
    import ray

    from cst_dist.evaluation.benchmarks.run import score_items
    from cst_dist.farm.cluster import FarmSettings

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    results, rows = [], {}
    try:
        for replicas in (1, 2):
            farm = FarmSettings("eval", num_replicas=replicas, gpus_per_replica=0, cpus_per_replica=1)
            start = time.perf_counter()
            run = score_items(config, items, benchmarks_cfg, farm, work / f"scoring-actors-{replicas}")
            seconds = time.perf_counter() - start
            requests = sum(len(item.continuations) for item in items)
            rows[replicas] = run.rows
            results.append({"variant": f"{replicas} actor{'s' if replicas > 1 else ''} x 1 thread",
                            "actors": replicas, "questions": len(items), "requests": requests,
                            "shards": run.shards_scored, "dispatch_seconds": run.seconds,
                            "requests_per_s": requests / run.seconds, "end_to_end_seconds": seconds})
            print(f"  {results[-1]['variant']}: {results[-1]['requests_per_s']:.1f} requests/s", flush=True)
    finally:
        ray.shutdown()
    results[-1]["identical_to_1_actor"] = rows[1] == rows[2]
    return results


def scoring_section(args, work: Path) -> dict:
    from cst_dist.evaluation.benchmarks.run import load_suite

    config = model_config(args, work)
    benchmarks_cfg = scoring_config(args, work / "data", args.score_shard_size)
    items = load_suite(benchmarks_cfg).items()
    print(f"{len(items)} questions ({args.questions} per task), batches of {args.batch_size} requests, "
          f"{args.threads} thread(s) in one process")
    engine, shape = scoring_variants(args, config, items)
    return {"workload": shape, "engine": engine, "farm": scoring_farm_variants(args, config, items, benchmarks_cfg,
                                                                                work)}


def print_scoring(scoring: dict) -> None:
    engine, farm, shape = scoring["engine"], scoring["farm"], scoring["workload"]
    threads = scoring.get("settings", {}).get("threads", "?")
    print(f"\nScoring: {shape['questions']} questions, {shape['requests']} requests, "
          f"{shape['mean_context_tokens']:.0f} context tokens and {shape['mean_continuation_tokens']:.1f} "
          f"continuation tokens on average; one process on {threads} thread(s)")
    print("\n" + markdown_table(
        ["scoring variant", "batch", "requests", "forwards", "token positions", "seconds", "requests/s",
         "vs one at a time", "max |diff| of log-likelihoods"],
        [[r["variant"], str(r["batch_size"]), str(r["requests"]), str(r["forwards"]), str(r["input_tokens"]),
          f"{r['seconds']:.2f}", f"{r['requests_per_s']:.1f}",
          f"{r['requests_per_s'] / engine[0]['requests_per_s']:.2f}x", f"{r['max_abs_diff_vs_one_at_a_time']:.1e}"]
         for r in engine]))
    print("\n" + markdown_table(
        ["scoring farm variant", "requests", "shards", "dispatch s", "requests/s", "vs 1 actor",
         "end-to-end s (with start-up)"],
        [[r["variant"], str(r["requests"]), str(r["shards"]), f"{r['dispatch_seconds']:.1f}",
          f"{r['requests_per_s']:.1f}", f"{r['requests_per_s'] / farm[0]['requests_per_s']:.2f}x",
          f"{r['end_to_end_seconds']:.1f}"] for r in farm]))
    if "identical_to_1_actor" in farm[-1]:
        print(f"\n2 actors give the same log-likelihoods as 1: {farm[-1]['identical_to_1_actor']}")


def print_report(report: dict) -> None:
    if "engine" in report:
        print_generation(report)
    if "scoring" in report:
        print_scoring(report["scoring"])


def print_generation(report: dict) -> None:
    engine, farm = report["engine"], report["farm"]
    print("\n" + markdown_table(
        ["engine variant", "batch", "prompts", "seconds", "prompts/s", "tokens/s", "vs one at a time"],
        [[r["variant"], str(r["batch_size"]), str(r["prompts"]), f"{r['seconds']:.2f}", f"{r['prompts_per_s']:.1f}",
          f"{r['tokens_per_s']:.0f}", f"{r['prompts_per_s'] / engine[0]['prompts_per_s']:.2f}x"] for r in engine]))
    print("\n" + markdown_table(
        ["farm variant", "prompts", "shards", "dispatch s", "prompts/s", "vs 1 actor", "end-to-end s (with start-up)"],
        [[r["variant"], str(r["prompts"]), str(r["shards"]), f"{r['dispatch_seconds']:.1f}",
          f"{r['prompts_per_s']:.1f}", f"{r['prompts_per_s'] / farm[0]['prompts_per_s']:.2f}x",
          f"{r['end_to_end_seconds']:.1f}"] for r in farm]))


def main() -> None:
    args = parse_args()
    if args.report:
        print_report(json.loads(Path(args.report).read_text()))
        return
    sections = set(args.sections.split(","))
    if not sections <= {"generation", "scoring"}:
        raise SystemExit(f"--sections: generation and/or scoring, got {args.sections}")
    os.environ.pop("RAY_ADDRESS", None)  # a local instance: the numbers are about this machine
    from cst_dist.evaluation.safety import safety_items

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}  # the section not run keeps its results
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        work = Path(tmp)
        if "generation" in sections:
            config = model_config(args, work)
            items = safety_items(eval_settings(args, work, 1))
            print(f"{len(items)} prompts ({args.prompts} test prompts x 3 system prompts), "
                  f"{args.max_new_tokens} tokens")
            report.update({"settings": vars(args), "engine": engine_variants(args, config, items),
                           "farm": farm_variants(args, config, items, work)})
            report["environment"] = {**environment(args), "load_average_before": load_before}
        if "scoring" in sections:
            scoring = scoring_section(args, work / "scoring")
            report["scoring"] = {"settings": vars(args), **scoring,
                                 "environment": {**environment(args), "load_average_before": load_before}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
