"""Child processes of the trainer benchmark: their environment, the peak RSS of each one's process tree, the `cst
train` overrides that match TRL's settings, and the per-step records of a `cst train` run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .variants import PADDING, REPO, SCRIPT


def child_env(args, work: Path) -> dict:
    env = dict(os.environ)
    threads = str(args.threads)
    env.update(
        OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
        TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_CACHE=str(work / "hf_datasets_cache"), TQDM_DISABLE="1", PYTHONUNBUFFERED="1",
    )
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("RANK", None)  # a single process: cst makes its own world of one
    return env


def run_child(cmd: list[str], env: dict, log_path: Path, label: str) -> tuple[float, float]:
    """Run `cmd` to its end; its wall seconds and the peak RSS (GiB) of its process tree. `wait4` reports the child's
    own peak and that of every descendant it waited for (Linux), so a launcher (torchrun) counts its ranks too."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        raise SystemExit(f"{label} failed (exit {proc.returncode}); last lines of {log_path}:\n" + "\n".join(tail))
    return seconds, usage.ru_maxrss / 2**20  # KiB on Linux


def run_worker(kind: str, spec: dict, env: dict, work: Path, label: str) -> dict:
    spec_path = work / f"{label}.spec.json"
    result_path = work / f"{label}.result.json"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    cmd = [sys.executable, str(SCRIPT), "--worker", kind, "--spec", str(spec_path)]
    process_s, process_rss = run_child(cmd, env, work / f"{label}.log", label)
    return {**json.loads(result_path.read_text()), "process_s": process_s, "process_peak_rss_gib": process_rss}


def cst_overrides(args, work: Path, model_path: str, data_dir: str, run_dir: Path, **extra) -> list[str]:
    """The `cst train` overrides that match the TRL settings; --cst-override items come last (they win)."""
    values = {
        "run_dir": str(run_dir), "model.path": model_path,
        "model.dtype": "float32" if args.device == "cpu" else "bfloat16",
        "model.attn_implementation": "auto", "train.data": data_dir,
        "data.max_length": args.max_length, "data.max_prompt_length": args.max_prompt_length,
        "data.packing": "true", "train.reference": "precomputed", "train.max_steps": args.steps,
        "train.global_batch_size": args.global_batch, "train.micro_batch_size": args.micro_batch,
        "train.learning_rate": args.learning_rate, "train.beta": args.beta, "train.loss_type": "sigmoid",
        "train.lr_scheduler": "linear", "train.warmup_ratio": 0.0, "train.seed": args.seed,
        "train.save_steps": max(args.steps, 1), "train.keep_checkpoints": 1, "train.log_steps": 1,
        "train.gradient_checkpointing": "false",
        # One cache shared by every cst variant (it lives in the run folder by default).
        "train.reference_cache": str(work / "reference_logps.safetensors"),
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()] + list(args.cst_override)


def tensorboard_times(run_dir: Path) -> dict[int, float]:
    """Wall-clock time stamps of each step's `loss` scalar (written right after the step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {event.step: event.wall_time for event in accumulator.Scalars("loss")}


def run_cst(args, work: Path, env: dict, model_path: str, data_dir: str, name: str, label: str, **extra) -> dict:
    run_dir = work / f"run-{label}"
    overrides = cst_overrides(args, work, model_path, data_dir, run_dir, **extra)
    cmd = [sys.executable, "-m", "cst_dist.cli", "train", "tiny-cpu", *overrides]
    process_s, process_rss = run_child(cmd, env, work / f"{label}.log", label)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    log_text = (work / f"{label}.log").read_text(errors="replace")
    try:
        stamps = tensorboard_times(run_dir)
    except Exception as error:  # noqa: BLE001 - fall back to the trainer's own step times
        print(f"[{label}] TensorBoard time stamps unreadable ({error}); using step_time_s", file=sys.stderr)
        stamps = {}
    steps = []
    for entry in metrics:
        real = entry["tokens/real"]
        slots = real / max(1.0 - entry["padding_ratio"], 1e-12)
        step = entry["step"]
        wall = stamps[step] - stamps[step - 1] if step in stamps and step - 1 in stamps else None
        flops = entry["perf/model_tflops"] * 1e12 * entry["step_time_s"]  # the trainer's count (cst_dist.flops)
        steps.append({"step": step, "real": real, "slots": round(slots), "step_time_s": entry["step_time_s"],
                      "peak_memory_gib": entry["peak_memory_gib"],
                      "wall_s": wall, "loss": entry["loss"], "flops": flops,
                      "flops_utilization_logged": entry["perf/flops_utilization"]})
    return {"process_s": process_s, "process_peak_rss_gib": process_rss, "steps": steps,
            "losses": [s["loss"] for s in steps], "command": " ".join(cmd[1:]), "cache_hit": "cache hit" in log_text,
            "padding": PADDING[name]}


def cst_precompute_worker(spec: dict) -> dict:
    """Fill the reference cache (`train.reference_cache`) the way `cst train` does, timed (the mode's one-time cost)."""
    import torch

    torch.set_num_threads(spec["threads"])
    import torch.distributed as dist

    from cst_dist.config import load_config
    from cst_dist.models import load_tokenizer, resolve_model
    from cst_dist.training.data import BatchPlan, load_tokenized_set, make_collator
    from cst_dist.training.distributed import setup_distributed
    from cst_dist.training.reference import cache_path
    from cst_dist.training.trainer import setup_reference

    config = load_config("tiny-cpu", spec["overrides"])
    env = setup_distributed()
    tokenizer = load_tokenizer(config.model)
    model = resolve_model(config.model, env.device)
    data = load_tokenized_set(config.train_data_dir, config.data, tokenizer)
    cache = cache_path(config.train, config.layout)
    if cache.exists():
        cache.unlink()
    collate = make_collator(config.data, tokenizer.pad_token_id, model.attn_implementation)
    started = time.perf_counter()
    setup_reference(config, model, BatchPlan.of(config.train, env.world_size), env, tokenizer, data, collate)
    seconds = time.perf_counter() - started
    if dist.is_initialized():
        dist.destroy_process_group()
    return {"precompute_s": seconds, "rows": len(data.pairs), "truncation": data.stats.summary(),
            "torch_threads": torch.get_num_threads()}


def measure_peak(threads: int, device: str) -> float:
    """The machine's fp32 (CPU) / bf16 (GPU) matrix-product peak with the variants' thread count."""
    import torch

    from cst_dist.flops import matmul_peak_flops

    torch.set_num_threads(threads)
    return matmul_peak_flops(device)


def peak_worker(spec: dict) -> dict:
    return {"peak": measure_peak(spec["threads"], spec["device"])}
