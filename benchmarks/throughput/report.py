"""Figures of the trainer benchmark from its per-step records: a summary per run, a table row per variant, the
Markdown tables (throughput and memory, the memory planner beside the measured peak), the environment, `--report`."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path

from .variants import LABELS, REPO


def summarise(result: dict, warmup: int, steps: int, wall_key: str = "wall_s") -> dict:
    measured = [s for s in result["steps"] if warmup < s["step"] <= steps]
    real = sum(s["real"] for s in measured)
    slots = sum(s["slots"] for s in measured)
    walls = [s.get(wall_key) for s in measured]
    source = wall_key
    if not measured or any(w is None for w in walls):
        walls = [s["step_time_s"] for s in measured]  # cst without TensorBoard stamps
        source = "step_time_s"
    wall = sum(walls)
    # Medians: robust to a step slowed down by other work on a shared machine (reported beside the totals).
    median_step = statistics.median(walls) if walls else float("nan")
    median_rate = statistics.median(s["real"] / w for s, w in zip(measured, walls, strict=True)) if walls \
        else float("nan")
    summary = {
        "measured_steps": len(measured), "real_tokens": real, "token_slots": slots, "wall_s": wall,
        "wall_source": source,
        "real_tokens_per_s": real / wall if wall else float("nan"),
        "padding_share": 1.0 - real / slots if slots else float("nan"),
        "step_time_s": wall / len(measured) if measured else float("nan"),
        "real_tokens_per_step": real / len(measured) if measured else float("nan"),
        "median_step_time_s": median_step, "median_real_tokens_per_s": median_rate,
        "step_walls_s": walls,
        "model_flops_per_s": sum(s.get("flops", 0.0) for s in measured) / wall if wall else float("nan"),
        # In the training process, up to the end of the last step (what cst logs, and TRL's worker at each step end):
        # peak RSS on CPU, torch.cuda.max_memory_allocated on GPU. Every step counts: the peak is set early.
        "peak_memory_gib": max((s.get("peak_memory_gib") or 0.0 for s in result["steps"]), default=None)
        or result.get("peak_memory_gib"),
        # The whole child process tree from start to exit (loading, the final checkpoint save included), host RSS.
        "process_peak_rss_gib": result.get("process_peak_rss_gib"),
        # A step over twice the variant's fastest: usually other work on the CPUs (oversubscribed OpenMP threads), not
        # the trainer (the fastest, not the median: contention can last for most of a variant's steps).
        "unsteady_steps": sum(w > 2 * min(walls) for w in walls) if walls else 0,
    }
    if measured and all("step_time_s" in s for s in measured):
        in_loop = sum(s["step_time_s"] for s in measured)
        summary["in_loop_step_time_s"] = in_loop / len(measured)  # cst's own measure (excludes metric writing)
    return summary


def table_rows(results: dict, variants: list[str], warmup: int, steps: int, peak_flops: float) -> list[dict]:
    """One row per variant over its repetitions: min / median / max of each repetition's real tokens/s, the median
    repetition's other figures, the largest peak memory of any repetition, and speed-ups of the medians against TRL's
    default and TRL's best setting."""
    rows = []
    for variant in variants:
        summaries = [summarise(run, warmup, steps) for run in results[variant]]
        rates = sorted(summary["real_tokens_per_s"] for summary in summaries)
        middle = sorted(summaries, key=lambda summary: summary["real_tokens_per_s"])[len(summaries) // 2]
        rows.append({
            "variant": variant, "label": LABELS[variant], **middle, "repetitions": len(summaries),
            "min_real_tokens_per_s": rates[0], "median_real_tokens_per_s": statistics.median(rates),
            "max_real_tokens_per_s": rates[-1],
            "median_model_tflops": statistics.median(x["model_flops_per_s"] for x in summaries) / 1e12,
            "flops_utilization": statistics.median(x["model_flops_per_s"] for x in summaries) / peak_flops,
            "precompute_s": results[variant][0].get("precompute_s"),
            "peak_memory_gib": max((x["peak_memory_gib"] or 0.0 for x in summaries), default=0.0) or None,
            "process_peak_rss_gib": max((x["process_peak_rss_gib"] or 0.0 for x in summaries), default=0.0) or None,
        })
    by_variant = {row["variant"]: row for row in rows}
    for row in rows:
        for name in ("trl", "trl-precomputed"):
            other = by_variant.get(name)
            row[f"speedup_vs_{name}"] = (row["median_real_tokens_per_s"] / other["median_real_tokens_per_s"]
                                         if other else None)
            row[f"memory_vs_{name}"] = (row["peak_memory_gib"] / other["peak_memory_gib"]
                                        if other and row["peak_memory_gib"] and other["peak_memory_gib"] else None)
    return rows


def _gib(value) -> str:
    return f"{value:.2f}" if value else "-"


def _ratio(value) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def _percent(value) -> str:
    return f"{value:+.0f}%" if value is not None else "-"


def format_table(rows: list[dict], device: str = "cpu") -> str:
    memory = "peak GPU GiB (allocated)" if device == "cuda" else "peak RSS GiB (training process)"
    header = ["variant", "real tokens/s (median)", "min - max", "padding %", "median step s", "model TFLOP/s",
              "share of matmul peak", "vs TRL default", "vs TRL best", "one-time ref precompute s", memory,
              "memory vs TRL best", "process tree peak RSS GiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [
            row["label"], f"{row['median_real_tokens_per_s']:,.0f}",
            f"{row['min_real_tokens_per_s']:,.0f} - {row['max_real_tokens_per_s']:,.0f}",
            f"{100 * row['padding_share']:.1f}", f"{row['median_step_time_s']:.3f}",
            f"{row['median_model_tflops']:.3f}", f"{100 * row['flops_utilization']:.0f}%",
            _ratio(row["speedup_vs_trl"]), _ratio(row["speedup_vs_trl-precomputed"]),
            f"{row['precompute_s']:.1f}" if row.get("precompute_s") is not None else "-",
            _gib(row.get("peak_memory_gib")), _ratio(row.get("memory_vs_trl-precomputed")),
            _gib(row.get("process_peak_rss_gib")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_memory_plan(plans: dict) -> str:
    """The memory planner's prediction (`cst bench plan`) beside the measured peak, per cst variant."""
    header = ["variant", "measured peak GiB", "planner GiB (heaviest micro-batch)", "off", "planner GiB (worst case: "
              "max_length, all logits)", "off", "planner parts GiB (heaviest micro-batch)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 2) + ["---"]) + "|"]
    for variant, plan in plans.items():
        shaped, worst = plan["measured_shape"], plan["worst_case"]
        parts = ", ".join(f"{name} {value:.2f}" for name, value in shaped["parts_gib"].items() if value)
        lines.append("| " + " | ".join([
            LABELS[variant], _gib(plan["measured_gib"]), f"{shaped['total_gib']:.2f}",
            _percent(shaped.get("off_percent")), f"{worst['total_gib']:.2f}", _percent(worst.get("off_percent")),
            parts]) + " |")
    return "\n".join(lines)


def environment(args) -> dict:
    from importlib import metadata

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "cst_dist", "configs", "ds_configs"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        commit, dirty = None, ""
    return {
        "git_commit": commit, "package_files_modified": bool(dirty),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "platform": platform.platform(), "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": args.threads, "OMP_NUM_THREADS": str(args.threads),
        "versions": {name: version(name) for name in
                     ("torch", "transformers", "trl", "deepspeed", "accelerate", "datasets", "cst-dist")},
    }


def report_from_json(path: Path, warmup: int | None) -> int:
    """--report: the table again from a result file's per-step records (no training), e.g. with another --warmup.
    The file's `table` and `table_markdown` are rewritten; its per-step records (the measurement) are kept as they are.
    """
    report = json.loads(path.read_text())
    settings = report["settings"]
    warmup = settings["warmup_steps"] if warmup is None else warmup
    rows = table_rows(report["runs"], settings["variants"], warmup, settings["steps"], report["peak_flops"])
    table = format_table(rows, settings.get("device", "cpu"))
    report.update(table=rows, table_markdown=table)
    report["settings"]["warmup_steps"] = warmup
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    env = report["environment"]
    print(f"{path}: {settings['steps']} steps per variant (first {warmup} left out), {settings['repeats']} "
          f"repetitions; measured {env['date']} on {env['cpu_count']} CPUs ({env.get('cpu_model')}), "
          f"{env['threads']} threads; model {report['model']['parameters']:,} parameters; "
          f"data {report['data']['kind']}")
    print(table)
    if report.get("memory_plan_markdown"):
        print()
        print(report["memory_plan_markdown"])
    return 0
