"""Safety-evaluation throughput: answering the AdvBench test prompts one at a time (what a first script does) against
the engine's length-sorted batches, and on 1 against 2 Ray actors.

    .venv/bin/python benchmarks/eval_throughput.py          # about 2 minutes on 2 CPU cores
    .venv/bin/python benchmarks/eval_throughput.py --report benchmarks/results/eval_throughput.json

Workload: `cst eval`'s own items (`protocol=full`: every test prompt under s1, s0 and the unseen S0 prompt), greedy,
`--max-new-tokens` per answer, on a tiny Llama built offline (256 hidden x 4 layers by default, fp32, SDPA).
Part 1 (one process): `HFEngine` with batch size 1, one call per prompt, against one call over all prompts, sorted by
length and batched (what an `AnswerWorker` does per shard).
Part 2 (local Ray): `generate_answers` through the farm, 1 actor x 1 thread against 2 actors x 1 thread, timed from
the first shard sent to the last answer back (actor start-up, the same for any workload, is reported apart).
Prints Markdown tables, writes JSON (settings, environment, every measurement). Nothing passes or fails on a timing.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/eval_throughput.json"))
    parser.add_argument("--report", help="print the tables of an existing JSON and exit")
    return parser.parse_args()


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


def print_report(report: dict) -> None:
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
    os.environ.pop("RAY_ADDRESS", None)  # a local instance: the numbers are about this machine
    from cst_dist.evaluation.safety import safety_items

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        work = Path(tmp)
        config = model_config(args, work)
        items = safety_items(eval_settings(args, work, 1))
        print(f"{len(items)} prompts ({args.prompts} test prompts x 3 system prompts), {args.max_new_tokens} tokens")
        report = {"settings": vars(args), "engine": engine_variants(args, config, items),
                  "farm": farm_variants(args, config, items, work)}
    report["environment"] = {**environment(args), "load_average_before": load_before}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
