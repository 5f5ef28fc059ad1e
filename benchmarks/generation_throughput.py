"""Generation throughput: the HF engine's length-bucketed batching against the naive loop, and 1 against 2 actors.

    .venv/bin/python benchmarks/generation_throughput.py            # about 2 minutes on 2 CPU cores
    .venv/bin/python benchmarks/generation_throughput.py --report benchmarks/results/generation_throughput.json

Part 1 (one process, no Ray): the same turn-1 conversations through `HFEngine`, for two workloads (AdvBench train
prompts, of similar lengths; prompts of the paper's released set, whose lengths vary about tenfold)
  - naive:    one conversation per `generate` call (batch_size 1), the loop a first script would write;
  - batched:  batches of `--batch-size` in input order (each chunk its own call: no global length sort);
  - bucketed: one call, all conversations sorted by token length, then batched (what `cst generate` does).
Part 2 (local Ray, `--cpus` cores): the whole self-critique chain (3 turns) through `run_farm` with
  1 actor x 1 thread, 1 actor x all threads, and 2 actors x 1 thread each.
tokens/s counts generated tokens (EOS included). Prints a Markdown table and writes JSON (settings, environment,
every measurement). Nothing passes or fails on a timing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64, help="conversations in part 1")
    parser.add_argument("--farm-prompts", type=int, default=64, help="prompts through the chain in part 2")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2, help="cores for torch (part 1) and for the Ray instance")
    parser.add_argument("--repeats", type=int, default=3, help="part 1 runs per variant; the best is reported")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    released = REPO.parent / "shared/data/configurable-system-prompt-multitask.json"
    parser.add_argument("--released", default=str(released),
                        help="the paper's released set: its prompts are the varied-length workload (skipped if absent)")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/generation_throughput.json"))
    parser.add_argument("--report", help="print the table of an existing JSON and exit")
    return parser.parse_args()


def model_config(args, work: Path):
    from cst_dist.config import ModelConfig, TinyModelConfig
    from cst_dist.models import ensure_model

    tiny = TinyModelConfig(hidden_size=args.hidden_size, intermediate_size=2 * args.hidden_size,
                           num_hidden_layers=args.layers)
    config = ModelConfig(path=str(work / "model"), tiny=tiny, dtype="float32", attn_implementation="sdpa")
    ensure_model(config)
    return config


def padding_share(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of prompt token slots that are padding when `batches` (lists of indices) are left-padded."""
    slots = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1 - sum(lengths) / slots


def workloads(args) -> dict[str, list[list[dict]]]:
    """Turn-1 conversations: AdvBench train prompts (similar lengths), and where the paper's released set is present,
    a seeded sample of its prompts (truthfulness and harmless tasks: lengths vary about tenfold)."""
    import random

    from cst_dist.config import GenerateConfig
    from cst_dist.generation.inputs import load_prompts

    items, _ = load_prompts(GenerateConfig(max_prompts=args.prompts))
    loads = {"advbench": [[{"role": "user", "content": item.text}] for item in items]}
    if Path(args.released).is_file():
        prompts = sorted({row["prompt"] for row in json.loads(Path(args.released).read_text())})
        sample = random.Random(0).sample(prompts, args.prompts)
        loads["released-set"] = [[{"role": "user", "content": prompt}] for prompt in sample]
    else:
        print(f"  {args.released} is absent: the varied-length workload is left out", flush=True)
    return loads


def engine_variants(args, config) -> list[dict]:
    import torch

    from cst_dist.config import SamplingConfig
    from cst_dist.engines import HFEngine

    torch.set_num_threads(args.cpus)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    engine = HFEngine(config, batch_size=args.batch_size)
    engine.generate([[{"role": "user", "content": "warm up"}]], sampling.model_copy(update={"max_new_tokens": 4}))
    results = []
    for workload, conversations in workloads(args).items():
        for name, (batch_size, run, batches) in variant_runs(args, engine, conversations, sampling).items():
            engine.batch_size = batch_size
            timings = []
            for _ in range(args.repeats):
                tokens_before, start = engine.stats.generated_tokens, time.perf_counter()
                run()
                timings.append((time.perf_counter() - start, engine.stats.generated_tokens - tokens_before))
            seconds, tokens = min(timings)
            lengths = [len(engine.encode(c)) for c in conversations]
            results.append({"workload": workload, "variant": name, "batch_size": batch_size,
                            "conversations": len(conversations), "prompt_tokens": sum(lengths),
                            "generated_tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": tokens / seconds,
                            "padding_share": round(padding_share(lengths, batches), 4),
                            "all_seconds": [round(t, 3) for t, _ in timings]})
            print(f"  {workload} {name}: {tokens / seconds:.0f} tokens/s", flush=True)
    return results


def variant_runs(args, engine, conversations, sampling) -> dict:
    """name -> (engine batch size, the calls, the batches they form: for the padding share)."""
    lengths = [len(engine.encode(c)) for c in conversations]
    starts = range(0, len(conversations), args.batch_size)
    in_order = [list(range(len(conversations)))[i : i + args.batch_size] for i in starts]
    by_length = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return {
        "naive": (1, lambda: [engine.generate([c], sampling) for c in conversations], [[i] for i in by_length]),
        "batched": (args.batch_size, lambda: [engine.generate([conversations[i] for i in b], sampling)
                                              for b in in_order], in_order),
        "bucketed": (args.batch_size, lambda: engine.generate(conversations, sampling),
                     [by_length[i : i + args.batch_size] for i in starts]),
    }


def farm_variants(args, config, work: Path) -> list[dict]:
    import ray

    from cst_dist.config import RunConfig
    from cst_dist.generation.run import run_farm

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    results = []
    try:
        for name, replicas, threads in [("1 actor x 1 thread", 1, 1), (f"1 actor x {args.cpus} threads", 1, args.cpus),
                                        ("2 actors x 1 thread", 2, 1)]:
            generate = {"max_prompts": args.farm_prompts, "shard_size": args.shard_size, "batch_size": args.batch_size,
                        "num_replicas": replicas, "cpus_per_replica": threads, "gpus_per_replica": 0,
                        "sampling": {"temperature": 1.0, "max_new_tokens": args.max_new_tokens},
                        "output": str(work / name.replace(" ", "_") / "pairs")}
            run = RunConfig.model_validate({"model": config.model_dump(), "generate": generate})
            start = time.perf_counter()
            summary = run_farm(run)
            wall = time.perf_counter() - start
            results.append({"variant": name, "actors": replicas, "threads_per_actor": threads,
                            "prompts": args.farm_prompts, "shards": summary.shards_generated,
                            "generated_tokens": summary.generated_tokens, "dispatch_seconds": round(summary.seconds, 3),
                            "tokens_per_s": summary.generated_tokens / summary.seconds,
                            "end_to_end_seconds": round(wall, 3)})
            print(f"  {name}: {results[-1]['tokens_per_s']:.0f} tokens/s", flush=True)
    finally:
        ray.shutdown()
    return results


def environment(args) -> dict:
    from importlib import metadata

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "git_commit": commit,
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        **{name: metadata.version(name) for name in ("torch", "transformers", "ray")},
    }


def print_report(report: dict) -> None:
    print("\n| workload | engine variant | batch | padding % | tokens | seconds | tokens/s | vs naive |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in report["engine"]:
        base = next(r["tokens_per_s"] for r in report["engine"] if r["workload"] == row["workload"])
        print(f"| {row['workload']} | {row['variant']} | {row['batch_size']} | {100 * row['padding_share']:.1f} | "
              f"{row['generated_tokens']} | {row['seconds']:.2f} | {row['tokens_per_s']:.0f} | "
              f"{row['tokens_per_s'] / base:.2f}x |")
    base = report["farm"][0]["tokens_per_s"]
    print("\n| farm variant (3-turn chain) | tokens | dispatch s | tokens/s | vs 1 actor x 1 thread | end-to-end s |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in report["farm"]:
        print(f"| {row['variant']} | {row['generated_tokens']} | {row['dispatch_seconds']:.2f} | "
              f"{row['tokens_per_s']:.0f} | {row['tokens_per_s'] / base:.2f}x | {row['end_to_end_seconds']:.1f} |")


def main() -> None:
    args = parse_args()
    if args.report:
        print_report(json.loads(Path(args.report).read_text()))
        return
    os.environ.pop("RAY_ADDRESS", None)  # always a local instance: the numbers are about this machine
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gen-bench-") as tmp:
        work = Path(tmp)
        config = model_config(args, work)
        print("part 1: HF engine", flush=True)
        engine = engine_variants(args, config)
        print("part 2: Ray farm", flush=True)
        farm = farm_variants(args, config, work)
    report = {"settings": vars(args), "environment": {**environment(args), "load_average_before": load_before},
              "model": {"hidden_size": args.hidden_size, "layers": args.layers}, "engine": engine, "farm": farm}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
