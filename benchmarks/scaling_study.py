#!/usr/bin/env python
"""Scaling study: `cst train` step time at several world sizes and model widths, a fitted step-time model, and a
labelled projection to 8-64 GPUs for the 7B and 10.7B shapes.

    python benchmarks/scaling_study.py [--quick] [--widths 128 256] [--steps 8] [--out benchmarks/results/scaling]

Runs (CPU, gloo, precomputed reference, ZeRO auto): 1 rank (ZeRO-1), 2 ranks on one node and 2 simulated nodes of
one rank each (ZeRO-3 over 127.0.0.1), for each width. Measured: the median step time after the first two steps, from
the trainer's `metrics.jsonl`, with its model FLOPs per step (`perf/model_tflops` x `step_time_s`).
Fit (least squares over the runs): step_s = a * FLOPs per rank + b * ZeRO-3 bytes moved per rank + c, where a rank
moves 3 x parameters x bytes x (w - 1) / w a step under ZeRO-3 (all-gather in forward and backward, reduce-scatter
of gradients; Rajbhandari et al. 2020, sec. 7) and nothing at w = 1. 1/a is the sustained FLOP/s, 1/b the effective
bandwidth, c the per-step overhead.
The PROJECTION to 7B / 10.7B at 8-64 GPUs uses the same form with stated hardware figures instead of the CPU fit
(--gpu-peak-tflops, --mfu, --intra-node-gbs within a node of 8 GPUs, --inter-node-gbs across nodes): it is not a
measurement. On a cluster, `slurm/scaling_study.sh` measures the same table per node count instead.
Nothing here passes or fails on a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RELEASED = REPO.parent / "shared" / "data" / "configurable-system-prompt-multitask.json"
WORLDS = (("1 rank", 1, 1), ("2 ranks, 1 node", 2, 1), ("2 nodes x 1 rank", 2, 2))
SHAPES_7B = {"mistral-7b": "mistral-7b.config.json", "solar-10.7b": "solar-10.7b.config.json"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cst(args: list[str], nproc: int, nnodes: int, log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, 2 // nproc)), "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if nproc == 1:
        commands = [[sys.executable, "-m", "cst_dist.cli", *args]]
    elif nnodes == 1:
        commands = [[sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                     "-m", "cst_dist.cli", *args]]
    else:  # one rank per "node", rendezvous over 127.0.0.1 as two hosts would
        port = free_port()
        commands = [[sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", "--nproc_per_node=1",
                     f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "cst_dist.cli",
                     *args] for rank in range(nnodes)]
    with open(log, "w") as handle:
        procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT) for cmd in commands]
        codes = [proc.wait(timeout=1800) for proc in procs]
    if any(codes):
        raise SystemExit(f"{' '.join(args[:2])} failed ({codes}); see {log}")


def measure(work: Path, data: Path, width: int, layers: int, label: str, nproc: int, nnodes: int,
            steps: int) -> dict:
    run_dir = work / f"run-{width}-{nproc}x{nnodes}"
    overrides = [
        f"run_dir={run_dir}", f"model.path={work / f'model-{width}'}", f"train.data={data}",
        f"model.tiny.hidden_size={width}", f"model.tiny.intermediate_size={int(2.75 * width)}",
        f"model.tiny.num_hidden_layers={layers}", "model.tiny.num_attention_heads=4", "model.tiny.vocab_size=512",
        "model.tiny.tokenizer_corpus=[]", "train.reference=precomputed", f"train.max_steps={steps}",
        "train.save_steps=1000", f"train.reference_cache={work / f'ref-{width}.safetensors'}",
    ]
    if not (work / f"model-{width}").exists():  # build the model (and the reference cache) once, in one process
        run_cst(["train", "tiny-cpu", *overrides, f"run_dir={work / f'warm-{width}'}", "train.max_steps=1"], 1, 1,
                work / f"warm-{width}.log")
    run_cst(["train", "tiny-cpu", *overrides], nproc, nnodes, work / f"{run_dir.name}.log")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    measured = rows[2:] if len(rows) > 3 else rows[1:]
    from cst_dist.config import ModelConfig
    from cst_dist.flops import model_shape
    from cst_dist.models import load_model_config

    shape = model_shape(load_model_config(ModelConfig(path=str(work / f"model-{width}"))))
    return {
        "world": label, "ranks": nproc, "nodes": nnodes, "width": width, "layers": layers,
        "parameters": shape.parameters,
        "median_step_s": statistics.median(r["step_time_s"] for r in measured),
        "tokens_per_step": statistics.median(r["tokens/real"] for r in measured),
        "flops_per_step": statistics.median(r["perf/model_tflops"] * 1e12 * r["step_time_s"] for r in measured),
        "zero_stage": 1 if nproc == 1 else 3,
    }


def comm_bytes(parameters: float, world: int, dtype_bytes: int) -> float:
    """Bytes a rank moves per step under ZeRO-3: two all-gathers of the weights and a reduce-scatter of gradients."""
    return 0.0 if world == 1 else 3 * parameters * dtype_bytes * (world - 1) / world


def fit(rows: list[dict]) -> dict:
    import numpy as np

    design = np.array([[r["flops_per_step"] / r["ranks"], comm_bytes(r["parameters"], r["ranks"], 4), 1.0]
                       for r in rows])
    target = np.array([r["median_step_s"] for r in rows])
    coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
    for row, predicted in zip(rows, design @ coefficients, strict=True):
        row["fitted_step_s"] = float(predicted)
    a, b, c = (float(x) for x in coefficients)
    return {"seconds_per_flop": a, "seconds_per_byte": b, "overhead_s": c,
            "sustained_gflops": 1 / a / 1e9 if a > 0 else None, "effective_gbs": 1 / b / 1e9 if b > 0 else None}


def projection(args) -> list[dict]:
    """Step and epoch time of the 7B / 10.7B shapes from stated hardware figures: a PROJECTION."""
    from cst_dist.bench.plan import TOKENS_PER_ROW, architecture_from_file

    rows = []
    for name, file in SHAPES_7B.items():
        shape = architecture_from_file(REPO / "cst_dist" / "configs" / file).shape
        sequence = TOKENS_PER_ROW // 2
        flops_per_row = shape.training_flops([sequence, sequence])
        for gpus in (8, 16, 32, 64):
            compute = args.global_batch * flops_per_row / gpus / (args.mfu * args.gpu_peak_tflops * 1e12)
            bandwidth = (args.intra_node_gbs if gpus <= 8 else args.inter_node_gbs) * 1e9
            comm = comm_bytes(shape.parameters, gpus, 2) / bandwidth
            step = compute + comm
            rows.append({"model": name, "parameters": shape.parameters, "gpus": gpus, "compute_s": compute,
                         "communication_s": comm, "step_s": step,
                         "epoch_min_1952_rows": 1952 / args.global_batch * step / 60})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, _, _ in WORLDS:
        points = [r for r in rows if r["world"] == label]
        ax.plot([r["parameters"] / 1e6 for r in points], [r["median_step_s"] for r in points], "o-", label=label)
        ax.plot([r["parameters"] / 1e6 for r in points], [r["fitted_step_s"] for r in points], "k:", alpha=0.5)
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("median step time (s)")
    ax.set_title("cst train on 2 CPU cores (dotted: fitted model)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(c[1] for c in columns) + " |", "|" + "---:|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format(row[key], spec) for key, _, spec in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="widths 64 and 128, 4 steps (the test suite's)")
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scaling"))
    parser.add_argument("--global-batch", type=int, default=64, help="projection: rows per step")
    parser.add_argument("--gpu-peak-tflops", type=float, default=989.0, help="projection: H100 SXM dense bf16")
    parser.add_argument("--mfu", type=float, default=0.4, help="projection: model FLOPs utilization")
    parser.add_argument("--intra-node-gbs", type=float, default=450.0, help="projection: NVLink GB/s per GPU")
    parser.add_argument("--inter-node-gbs", type=float, default=50.0,
                        help="projection: GB/s per GPU across nodes (400 Gb/s InfiniBand per GPU)")
    args = parser.parse_args(argv)
    if args.quick:
        args.widths, args.layers, args.steps = [64, 128], 2, 4
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cst-scaling-"))
    try:
        data = work / "preference"
        build = ["build", "tiny-cpu", f"run_dir={work / 'build'}", f"build.output={data}", "build.eval_fraction=0"]
        build += [f"build.released={RELEASED}"] if RELEASED.is_file() else []
        run_cst(build, 1, 1, work / "build.log")
        rows = [measure(work, data, width, args.layers, label, nproc, nnodes, args.steps)
                for width in args.widths for label, nproc, nnodes in WORLDS]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    model = fit(rows)
    projected = projection(args)
    measured_md = table(rows, [("world", "world", "s"), ("parameters", "parameters", ","),
                               ("zero_stage", "ZeRO", "d"), ("tokens_per_step", "tokens/step", ",.0f"),
                               ("median_step_s", "median step s", ".3f"), ("fitted_step_s", "fitted step s", ".3f")])
    projected_md = table(projected, [("model", "model", "s"), ("gpus", "GPUs", "d"), ("compute_s", "compute s", ".3f"),
                                     ("communication_s", "communication s", ".3f"), ("step_s", "step s", ".3f"),
                                     ("epoch_min_1952_rows", "epoch min (1,952 rows)", ".2f")])
    plot(rows, out / "scaling.png")
    report = {"measured": rows, "fit": model, "projection": projected,
              "projection_inputs": {k: getattr(args, k) for k in ("global_batch", "gpu_peak_tflops", "mfu",
                                                                   "intra_node_gbs", "inter_node_gbs")}}
    (out / "scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    text = (f"MEASURED (2 CPU cores, gloo):\n{measured_md}\n\n"
            f"fit: step_s = {model['seconds_per_flop']:.3e} x FLOPs/rank + {model['seconds_per_byte']:.3e} x "
            f"ZeRO-3 bytes/rank + {model['overhead_s']:.3f}\n\n"
            f"PROJECTION (not measured: {args.mfu:.0%} MFU of {args.gpu_peak_tflops:g} TFLOP/s, "
            f"{args.intra_node_gbs:g} GB/s within a node, {args.inter_node_gbs:g} GB/s across nodes, global batch "
            f"{args.global_batch}):\n{projected_md}\n")
    (out / "scaling.md").write_text(text)
    print(text + f"wrote {out / 'scaling.json'}, {out / 'scaling.md'}, {out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
