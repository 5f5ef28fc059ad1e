"""`cst bench plan CONFIG --gpus 8 16 32 64 --gpu-mem 80 [--host-mem 1024] [overrides]`: argument parsing and output
of the planner (cst_dist/bench/plan.py)."""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict
from pathlib import Path

from cst_dist.bench.plan import (
    H100_BF16_PEAK,
    PAPER_ROWS,
    SELF_CRITIQUE_ROWS,
    TOKENS_PER_ROW,
    Inputs,
    PlanError,
    format_plan,
    load_architecture,
    plan,
)
from cst_dist.config import load_config
from cst_dist.io import write_json_atomic

PLAN_HELP = "will a config fit on N GPUs (GPU memory per rank, host memory per node), and how long is an epoch"


def add_bench_parser(commands) -> None:
    bench = commands.add_parser("bench", help="the memory and time planner", description="the memory and time planner")
    actions = bench.add_subparsers(dest="bench_command", required=True)
    parser = actions.add_parser("plan", help=PLAN_HELP, description=PLAN_HELP)
    parser.add_argument("config", help="YAML file or preset name (e.g. mistral-7b)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.micro_batch_size=2")
    parser.add_argument("--gpus", type=int, nargs="+", default=None,
                        help="GPU counts (default: those of 8 16 32 64 that divide the global batch, else its "
                             "divisors up to 64)")
    parser.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU (default 80: H100-80GB)")
    parser.add_argument("--host-mem", type=float, default=1024.0, help="GiB of host memory per node (default 1024)")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--runtime-gib", type=float, default=None,
                        help="per-GPU allowance for the CUDA context, NCCL and allocator slack (default 3); on "
                             "--device cpu the process baseline (default 0.59, measured: docs/planner.md)")
    parser.add_argument("--host-runtime-gib", type=float, default=8.0,
                        help="host memory of one rank's process (Python, torch, data; default 8)")
    parser.add_argument("--tokens-per-sequence", type=int, default=None,
                        help="packed tokens per sequence in a micro-batch (default data.max_length: the worst case)")
    parser.add_argument("--response-share", type=float, default=1.0,
                        help="share of tokens whose logits are computed (responses; default 1.0, an upper bound)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cuda: bf16 (the presets); cpu: fp32, the process itself as the runtime allowance")
    parser.add_argument("--rows", type=int, nargs="+", default=[PAPER_ROWS, SELF_CRITIQUE_ROWS],
                        help=f"dataset sizes for the epoch time (default {PAPER_ROWS} {SELF_CRITIQUE_ROWS})")
    parser.add_argument("--tokens-per-row", type=int, default=TOKENS_PER_ROW,
                        help=f"real tokens per CST row, both sequences (default {TOKENS_PER_ROW}, measured on the "
                             "released set with a 4.7 chars/token BPE)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilization (default 0.4)")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_PEAK / 1e12,
                        help="per-GPU peak, TFLOP/s (default 989: H100 SXM dense bf16)")
    parser.add_argument("--architecture", help="a config.json to size instead of model.path's / the preset's")
    parser.add_argument("--json", dest="json_path", help="write the same figures as JSON")


POSITIVE = ("gpu_mem", "host_mem", "gpus_per_node", "host_runtime_gib", "tokens_per_sequence", "tokens_per_row",
            "peak_tflops")


def check_numbers(args: argparse.Namespace) -> None:
    """Counts and sizes must be finite and positive, shares in (0, 1]: nonsense in gives nonsense out otherwise."""
    named = {name: getattr(args, name) for name in POSITIVE if getattr(args, name) is not None}
    named.update({"runtime_gib": args.runtime_gib} if args.runtime_gib is not None else {})
    named.update({f"gpus[{i}]": n for i, n in enumerate(args.gpus or [])})
    named.update({f"rows[{i}]": n for i, n in enumerate(args.rows)})
    for name, value in named.items():
        if not math.isfinite(value) or value < 0 or (value == 0 and name != "runtime_gib"):
            raise PlanError(f"--{name.split('[')[0].replace('_', '-')} {value}: must be a finite positive number")
    for name in ("mfu", "response_share"):
        value = getattr(args, name)
        if not (math.isfinite(value) and 0 < value <= 1):
            raise PlanError(f"--{name.replace('_', '-')} {value}: must be a share in (0, 1]")


def default_gpu_counts(config) -> list[int]:
    """8 16 32 64 where they divide the global batch at the configured micro-batch, else its divisors up to 64."""
    per_step = config.train.global_batch_size // config.train.micro_batch_size
    usual = [n for n in (8, 16, 32, 64) if per_step % n == 0]
    return usual or [n for n in range(1, min(per_step, 64) + 1) if per_step % n == 0]


def run_bench(args: argparse.Namespace) -> None:
    check_numbers(args)
    config = load_config(args.config, args.overrides)
    arch = load_architecture(config, args.config, args.architecture)
    args.gpus = args.gpus or default_gpu_counts(config)
    cpu = args.device == "cpu"
    inputs = Inputs(
        gpus=0, gpu_mem_gib=args.gpu_mem, host_mem_gib=args.host_mem, gpus_per_node=args.gpus_per_node,
        runtime_gib=args.runtime_gib if args.runtime_gib is not None else (0.59 if cpu else 3.0),
        host_runtime_gib_per_rank=args.host_runtime_gib,
        tokens_per_sequence=args.tokens_per_sequence or config.data.max_length,
        response_share=args.response_share, dtype_bytes=4 if cpu else 2,
    )
    peak = args.peak_tflops * 1e12
    plans = plan(config, arch, args.gpus, inputs, args.rows, args.mfu, peak, args.tokens_per_row)
    print(format_plan(plans, arch, config, inputs, args.mfu, peak))
    if args.json_path:
        write_json_atomic(Path(args.json_path), {
            "model": {"parameters": arch.shape.parameters, "matmul_parameters": arch.shape.matmul_parameters,
                      "largest_layer_parameters": arch.largest_layer_parameters, "architecture": arch.source},
            "inputs": {**asdict(inputs), "mfu": args.mfu, "peak_flops": peak, "tokens_per_row": args.tokens_per_row},
            "plans": [asdict(p) for p in plans],
        })
        print(f"wrote {args.json_path}")
