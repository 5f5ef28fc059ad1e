#!/usr/bin/env python
"""Trainer throughput: TRL's DPOTrainer against `cst train`, same model, same rows, same global batch.

    python benchmarks/trainer_throughput.py [--steps 20] [--out benchmarks/results/trainer_throughput.json]
        [--max-length 512] [--hidden-size 256] [--layers 4] [--variants trl,trl-precomputed,cst,cst-zero0]

Every variant runs in its own process (same thread count, same environment) on:
  - the same tiny Llama built offline by `cst_dist.models.ensure_model` (size from --hidden-size/--layers),
  - the same preference rows: a seeded sample (global batch x steps rows: one epoch for every variant) of the CST set
    that `cst build` makes from the paper's released data (AdvBench-derived pairs if that file is absent; the output
    says which), leaving out rows whose prompt alone fills max_length, which TRL 1.16 drops and cst would keep,
  - the same truncation: TRL 1.16 has no max_prompt_length, so a thin wrapper around its collator cuts prompt ids
    from the left to it first, as cst (and TRL < 0.20) do (--no-trl-prompt-cut: TRL as it comes),
  - the same global batch (8 rows = 16 sequences per optimizer step, micro-batch 4 x accumulation 2), the same
    max_length / max_prompt_length, DPO sigmoid loss, beta 0.1, learning rate 5e-4, linear schedule, fp32, SDPA.

Variants (default: trl, trl-precomputed, cst, cst-zero0):
  trl              TRL DPOTrainer, reference model forward every step (TRL's default), TRL's padded batches
  trl-precomputed  TRL DPOTrainer with precompute_ref_log_probs=True (one reference pass before training)
  cst              `python -m cst_dist.cli train` with train.reference=precomputed and data.packing=true
  cst-padded       as cst, data.packing=false (right-padded batches: isolates what packing buys)
  cst-zero0        as cst, train.zero_stage=0 (isolates what ZeRO-3's partitioning costs on one process)

Measured: real (non-padding) tokens per second over the optimizer steps after the first --warmup steps, as each side
counts them from its own tokenization (prompt + response, chosen and rejected), divided by the wall time between the
end of step `warmup` and the end of the last step (TRL: a callback at each step end; cst: the wall-clock time stamps
TensorBoard records with each step's metrics). Also the padding share of the token slots, the mean step time, and
medians (robust to a step slowed down by other work on a shared machine). One-time costs (reference precompute)
are reported apart. Nothing here passes or fails on a timing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RELEASED = REPO.parent / "shared" / "data" / "configurable-system-prompt-multitask.json"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "trainer_throughput.json"
ALL_VARIANTS = ("trl", "trl-precomputed", "cst", "cst-padded", "cst-rows", "cst-zero3", "cst-offload")
DEFAULT_VARIANTS = "trl,trl-precomputed,cst,cst-padded,cst-rows,cst-zero3"
LABELS = {
    "trl": "TRL DPOTrainer (default: live reference)",
    "trl-precomputed": "TRL DPOTrainer, precomputed ref (TRL's best)",
    "cst": "cst-dist: packed varlen, precomputed ref, ZeRO auto (1)",
    "cst-padded": "cst-dist: padded, precomputed ref, ZeRO-1",
    "cst-rows": "cst-dist: packed rows <= max_length, SDPA mask, ZeRO-1",
    "cst-zero3": "cst-dist: packed varlen, precomputed ref, ZeRO-3",
    "cst-offload": "cst-dist: packed varlen, live ref offloaded, ZeRO-1",
}
# What each cst variant changes against `cst` (the package's defaults on this machine): one lever each.
CST_EXTRA = {
    "cst": {}, "cst-padded": {"data.packing": "false"}, "cst-rows": {"model.attn_implementation": "sdpa"},
    "cst-zero3": {"train.zero_stage": 3}, "cst-offload": {"train.reference": "offload"},
}
PADDING = {
    "cst": "packed: the micro-batch's 2B sequences end to end in one row, varlen attention, no padding",
    "cst-padded": "right-padded to the longest of the micro-batch's 2B sequences",
    "cst-rows": "packed first-fit decreasing into rows of at most max_length tokens (SDPA block-diagonal mask)",
    "cst-zero3": "as cst", "cst-offload": "as cst",
}
REFUSAL = "I'm sorry, but I can't help with that. It could cause real harm, and I won't assist with it."


# --------------------------------------------------------------------------------------------------------------------
# Preparation (parent process): model, preference rows for both sides
# --------------------------------------------------------------------------------------------------------------------


def build_model(args, work: Path) -> dict:
    from cst_dist.config import ModelConfig, TinyModelConfig
    from cst_dist.models import ensure_model

    corpus = [args.released] if Path(args.released).is_file() else []
    tiny = TinyModelConfig(
        vocab_size=args.vocab_size, tokenizer_corpus=corpus,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size or 2 * args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(1024, args.max_length),
    )
    path = work / "model"
    ensure_model(ModelConfig(path=str(path), tiny=tiny))
    config = json.loads((path / "config.json").read_text())
    from safetensors import safe_open

    params = 0
    for shard in path.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as handle:
            for key in handle.keys():
                params += _prod(handle.get_slice(key).get_shape())
    from cst_dist.flops import model_shape
    from cst_dist.models import load_model_config

    shape = model_shape(load_model_config(ModelConfig(path=str(path))))
    return {
        "path": str(path), "parameters": params, "matmul_parameters": shape.matmul_parameters,
        "lm_head_share_of_matmul_flops": shape.vocab_size * shape.hidden_size / shape.matmul_parameters,
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"], "layers": config["num_hidden_layers"],
        "heads": config["num_attention_heads"], "kv_heads": config["num_key_value_heads"],
        "vocab_size": config["vocab_size"], "dtype": "float32" if args.device == "cpu" else "bfloat16",
        "attention": "cst: auto (varlen for packed batches); TRL: sdpa",
    }


def _prod(shape) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


def build_rows(args, work: Path, model_path: str) -> dict:
    """Build the CST preference set with the package, sample the benchmark's rows, write them for both sides."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cst_dist.chat import build_messages, supports_system_role
    from cst_dist.config import ModelConfig, RunConfig
    from cst_dist.data.build import build_preference_set, write_preference_set
    from cst_dist.data.schemas import PREFERENCE_FIELDS
    from cst_dist.models import load_tokenizer

    released = Path(args.released)
    config = RunConfig(run_dir=str(work / "build"), model=ModelConfig(path=model_path))
    config.build.eval_fraction = 0.0
    config.build.mode = "cst"
    config.build.output = str(work / "preference_full")
    if released.is_file():
        config.build.released = str(released)
        source = {"kind": "released", "path": str(released),
                  "note": "the paper's released multitask set (vicgalle/configurable-system-prompt-multitask)"}
    else:
        from cst_dist.data.advbench import load_advbench

        pairs_file = work / "advbench_pairs.jsonl"
        with open(pairs_file, "w", encoding="utf-8") as handle:
            for index, row in enumerate(load_advbench()):
                pair = {"id": f"advbench-{index}", "prompt": row["goal"], "y0": row["target"], "y1": REFUSAL}
                handle.write(json.dumps(pair) + "\n")
        config.build.pairs = [str(pairs_file)]
        source = {"kind": "advbench-fallback", "path": str(pairs_file),
                  "note": f"{released} is absent: AdvBench pairs with y0 = target, y1 = a fixed refusal, CST-doubled"}
    result = build_preference_set(config)
    table = pq.read_table(result.output / "data" / "train-00000-of-00001.parquet")
    total = table.num_rows

    # TRL 1.16 drops rows whose prompt alone fills max_length (it has no max_prompt_length to cut it); cst would cut
    # such a prompt to max_prompt_length and keep the row. Those rows are left out for both sides, so that both train
    # on exactly the same rows (with the tiny 512-token BPE they are the long persona system prompts).
    tokenizer = load_tokenizer(ModelConfig(path=model_path))
    system_role = supports_system_role(tokenizer)
    candidates = []
    for index, row in enumerate(table.to_pylist()):
        messages = build_messages(row["system"], row["prompt"], system_role)
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]  # as TRL tokenizes it
        if len(prompt_ids) < args.max_length:
            candidates.append(index)
    wanted = min(args.rows, len(candidates))
    order = np.random.default_rng(args.seed).permutation(len(candidates))[:wanted]
    subset = table.take(pa.array(sorted(candidates[i] for i in order)))
    rows = subset.to_pylist()
    folder = write_preference_set(work / "preference", {"train": [{k: r[k] for k in PREFERENCE_FIELDS} for r in rows]},
                                  {"mode": "benchmark-sample", "seed": args.seed, "rows": len(rows)})

    # The same rows as TRL's conversational format: the chat template is applied by TRL itself.
    with open(work / "trl_rows.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({
                "prompt": build_messages(row["system"], row["prompt"], system_role),
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}],
            }) + "\n")
    assert set(PREFERENCE_FIELDS) <= set(subset.column_names)
    tasks: dict[str, int] = {}
    for row in rows:
        tasks[row["task"]] = tasks.get(row["task"], 0) + 1
    return {**source, "set_rows": total, "rows_prompt_over_max_length": total - len(candidates),
            "benchmark_rows": wanted, "sample_seed": args.seed, "tasks": tasks,
            "preference_dir": str(folder), "trl_rows": str(work / "trl_rows.jsonl")}


# --------------------------------------------------------------------------------------------------------------------
# Workers (child processes)
# --------------------------------------------------------------------------------------------------------------------


class PromptCutCollator:
    """TRL 1.16 dropped `max_prompt_length`; this cuts prompt ids from the left to it before TRL's own collator (which
    then cuts prompt + response to `max_length`, keeping the start), i.e. what TRL < 0.20 and `cst` do."""

    def __init__(self, inner, max_prompt_length: int | None):
        self.inner, self.max_prompt_length = inner, max_prompt_length

    def __call__(self, examples):
        if self.max_prompt_length:
            examples = [
                {**ex, "prompt_ids": ex["prompt_ids"][-self.max_prompt_length:]}
                if len(ex["prompt_ids"]) > self.max_prompt_length else ex
                for ex in examples
            ]
        return self.inner(examples)


def trl_worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from cst_dist.flops import model_shape

    rows = [json.loads(line) for line in open(spec["rows"], encoding="utf-8") if line.strip()]
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    cuda = spec["device"] == "cuda"
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation="sdpa")
    shape = model_shape(model.config)  # the same model FLOPs (cst_dist.flops) as the cst trainer logs
    transformers.logging.set_verbosity_error()
    args = DPOConfig(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=spec["micro_batch"],
        gradient_accumulation_steps=spec["accumulation"],
        max_steps=spec["steps"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=spec["beta"],
        loss_type=["sigmoid"],
        max_length=spec["max_length"],
        precompute_ref_log_probs=spec["precompute"],
        gradient_checkpointing=False,  # DPOConfig defaults to True; cst-dist's default is off
        bf16=cuda,  # both sides: fp32 on CPU, bf16 on GPU
        use_cpu=not cuda,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,  # cst logs every step too
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        seed=spec["seed"],
    )
    collator = PromptCutCollator(
        DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=spec["max_length"],
                                  truncation_mode="keep_start", pad_to_multiple_of=None),
        spec["max_prompt_length"],
    )
    record = {"precompute_s": 0.0, "micro": [], "steps": []}

    class Bench(DPOTrainer):
        def training_step(self, *a, **kw):
            inputs = a[1] if len(a) > 1 else kw["inputs"]
            mask = inputs["attention_mask"]
            record["micro"].append((int(mask.sum()), int(mask.numel()), list(mask.shape), mask.sum(-1).tolist()))
            return super().training_step(*a, **kw)

        def _precompute_ref_logps(self, *a, **kw):
            started = time.perf_counter()
            out = super()._precompute_ref_logps(*a, **kw)
            record["precompute_s"] += time.perf_counter() - started
            return out

    class Timing(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            record["train_begin"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            micro, record["micro"] = record["micro"], []
            lengths = [n for m in micro for n in m[3]]  # TRL concatenates chosen and rejected rows in one forward
            record["steps"].append({
                "step": state.global_step, "t_end": time.perf_counter(),
                "real": sum(m[0] for m in micro), "slots": sum(m[1] for m in micro),
                "shapes": [m[2] for m in micro],
                "flops": shape.training_flops(lengths, () if spec["precompute"] else lengths),
            })

    started = time.perf_counter()
    trainer = Bench(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                    data_collator=collator, callbacks=[Timing()])
    init_s = time.perf_counter() - started
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    steps = record["steps"]
    previous = record["train_begin"]
    for entry in steps:
        entry["wall_s"] = entry["t_end"] - previous
        previous = entry.pop("t_end")
    return {
        "init_s": init_s, "train_s": train_s, "precompute_s": record["precompute_s"],
        "peak_memory_gib": (torch.cuda.max_memory_allocated() if cuda
                            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30,
        "rows_after_trl_filter": len(trainer.train_dataset), "steps": steps, "losses": losses,
        "optimizer": str(args.optim), "torch_threads": torch.get_num_threads(),
        "padding": "right-padded to the longest of the micro-batch's 2B sequences (DataCollatorForPreference, "
                   "pad_to_multiple_of=None), chosen and rejected concatenated in one forward",
    }


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
    cache = cache_path(config.train, config.run_dir)
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


# --------------------------------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------------------------------


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


def run_child(cmd: list[str], env: dict, log_path: Path, label: str) -> float:
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        raise SystemExit(f"{label} failed (exit {proc.returncode}); last lines of {log_path}:\n" + "\n".join(tail))
    return seconds


def run_worker(kind: str, spec: dict, env: dict, work: Path, label: str) -> dict:
    spec_path = work / f"{label}.spec.json"
    result_path = work / f"{label}.result.json"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", str(spec_path)]
    process_s = run_child(cmd, env, work / f"{label}.log", label)
    return {**json.loads(result_path.read_text()), "process_s": process_s}


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
    process_s = run_child(cmd, env, work / f"{label}.log", label)
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
    return {"process_s": process_s, "steps": steps, "losses": [s["loss"] for s in steps],
            "command": " ".join(cmd[1:]), "cache_hit": "cache hit" in log_text,
            "padding": PADDING[name]}


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
        "peak_memory_gib": max((s.get("peak_memory_gib") or 0.0 for s in measured), default=None)
        or result.get("peak_memory_gib"),
        # A step over twice the variant's fastest: usually other work on the CPUs (oversubscribed OpenMP threads), not
        # the trainer (the fastest, not the median: contention can last for most of a variant's steps).
        "unsteady_steps": sum(w > 2 * min(walls) for w in walls) if walls else 0,
    }
    if measured and all("step_time_s" in s for s in measured):
        in_loop = sum(s["step_time_s"] for s in measured)
        summary["in_loop_step_time_s"] = in_loop / len(measured)  # cst's own measure (excludes metric writing)
    return summary


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


def table_rows(results: dict, variants: list[str], warmup: int, steps: int, peak_flops: float) -> list[dict]:
    """One row per variant over its repetitions: min / median / max of each repetition's real tokens/s, the median
    repetition's other figures, and speed-ups of the medians against TRL's default and TRL's best setting."""
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
        })
    by_variant = {row["variant"]: row for row in rows}
    for row in rows:
        for name in ("trl", "trl-precomputed"):
            other = by_variant.get(name)
            row[f"speedup_vs_{name}"] = (row["median_real_tokens_per_s"] / other["median_real_tokens_per_s"]
                                         if other else None)
    return rows


def report_from_json(path: Path, warmup: int | None) -> int:
    """--report: the table again from a result file's per-step records (no training), e.g. with another --warmup.
    The file's `table` and `table_markdown` are rewritten; its per-step records (the measurement) are kept as they are.
    """
    report = json.loads(path.read_text())
    settings = report["settings"]
    warmup = settings["warmup_steps"] if warmup is None else warmup
    rows = table_rows(report["runs"], settings["variants"], warmup, settings["steps"], report["peak_flops"])
    table = format_table(rows)
    report.update(table=rows, table_markdown=table)
    report["settings"]["warmup_steps"] = warmup
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    env = report["environment"]
    print(f"{path}: {settings['steps']} steps per variant (first {warmup} left out), {settings['repeats']} "
          f"repetitions; measured {env['date']} on {env['cpu_count']} CPUs ({env.get('cpu_model')}), "
          f"{env['threads']} threads; model {report['model']['parameters']:,} parameters; "
          f"data {report['data']['kind']}")
    print(table)
    return 0


def format_table(rows: list[dict]) -> str:
    header = ["variant", "real tokens/s (median)", "min - max", "padding %", "median step s", "model TFLOP/s",
              "share of matmul peak", "vs TRL default", "vs TRL best", "one-time ref precompute s", "peak memory GiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]

    def ratio(value):
        return f"{value:.2f}x" if value is not None else "-"

    for row in rows:
        cells = [
            row["label"], f"{row['median_real_tokens_per_s']:,.0f}",
            f"{row['min_real_tokens_per_s']:,.0f} - {row['max_real_tokens_per_s']:,.0f}",
            f"{100 * row['padding_share']:.1f}", f"{row['median_step_time_s']:.3f}",
            f"{row['median_model_tflops']:.3f}", f"{100 * row['flops_utilization']:.0f}%",
            ratio(row["speedup_vs_trl"]), ratio(row["speedup_vs_trl-precomputed"]),
            f"{row['precompute_s']:.1f}" if row.get("precompute_s") is not None else "-",
            f"{row['peak_memory_gib']:.2f}" if row.get("peak_memory_gib") else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_peak(threads: int, device: str) -> float:
    """The machine's fp32 (CPU) / bf16 (GPU) matrix-product peak with the variants' thread count."""
    import torch

    from cst_dist.flops import matmul_peak_flops

    torch.set_num_threads(threads)
    return matmul_peak_flops(device)


def levers_worker(spec: dict) -> dict:
    """In-process timings of the levers that have no switch in `cst train`: the LM head only at response positions
    (`logits_to_keep`) against full logits, and collation's share of a micro-batch (what overlapping it can save).
    Forward + backward of one micro-batch of the benchmark's rows, repetitions alternating, medians."""
    import torch

    torch.set_num_threads(spec["threads"])
    from cst_dist import logprobs
    from cst_dist.config import load_config
    from cst_dist.models import load_model, load_tokenizer, resolve_model
    from cst_dist.training.data import load_tokenized_set, make_collator

    config = load_config("tiny-cpu", spec["overrides"])
    tokenizer = load_tokenizer(config.model)
    device = torch.device(spec["device"])
    model_spec = resolve_model(config.model, device, packed=True)
    model = load_model(model_spec).to(device)
    data = load_tokenized_set(config.train_data_dir, config.data, tokenizer)
    collate = make_collator(config.data, tokenizer.pad_token_id, model_spec.attn_implementation)
    pairs = data.pairs[: spec["micro_batch"]]
    takes = logprobs._takes_logits_to_keep
    timings: dict[str, list[float]] = {"collate_s": [], "response_logits_s": [], "full_logits_s": []}
    for repetition in range(spec["repeats"] + 1):
        started = time.perf_counter()
        batch = collate(pairs)
        collate_s = time.perf_counter() - started
        for key, keep in (("response_logits_s", takes), ("full_logits_s", lambda model: False)):
            logprobs._takes_logits_to_keep = keep
            model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            logprobs.forward_logps(model, batch, 2 * len(pairs), device).sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if repetition:  # the first repetition warms up
                timings[key].append(time.perf_counter() - started)
        if repetition:
            timings["collate_s"].append(collate_s)
    logprobs._takes_logits_to_keep = takes
    medians = {key: statistics.median(values) for key, values in timings.items()}
    labels = batch["labels"]
    return {**medians, "timings": timings, "tokens": int(batch["input_ids"].numel()),
            "logit_positions": int((labels[:, 1:] != -100).sum()),
            "response_logits_saving": 1 - medians["response_logits_s"] / medians["full_logits_s"],
            "collate_share": medians["collate_s"] / medians["response_logits_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per variant and repetition")
    parser.add_argument("--repeats", type=int, default=3,
                        help="repetitions; each runs every variant once, in turn, so slow phases of a shared machine "
                             "fall on all variants alike (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (the test suite's): a small model, 3 steps, 1 repetition, trl-precomputed and "
                             "cst; figures are not meaningful")
    parser.add_argument("--warmup", type=int, default=None,
                        help="first steps left out of the measurement (default 2)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result file")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-prompt-length", type=int, default=128)
    parser.add_argument("--no-trl-prompt-cut", action="store_true",
                        help="run TRL without emulating max_prompt_length (TRL 1.16 only cuts prompt+response to "
                             "max_length, keeping the start); the two sides then see different token counts")
    parser.add_argument("--vocab-size", type=int, default=8192,
                        help="BPE symbols, trained on the released set (default 8192: 4.7 characters a token on it, "
                             "close to Mistral's tokenizer, so sequence lengths and padding are realistic)")
    parser.add_argument("--hidden-size", type=int, default=384,
                        help="model width (default 384 x 6 layers, MLP 1024: 15.7M parameters, the LM head a quarter "
                             "of the matmul FLOPs, as in a 7B model's order of magnitude rather than a toy's)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--intermediate-size", type=int, default=1024, help="MLP width")
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--rows", type=int, default=None,
                        help="rows sampled from the CST set (default: global batch x steps: every variant trains "
                             "exactly one epoch over the same rows, and the reference precompute stays small)")
    parser.add_argument("--released", default=str(DEFAULT_RELEASED), help="the paper's released multitask JSON")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: one GPU, bf16 on both sides, peak = the measured bf16 matmul peak (so the share "
                             "is MFU); see benchmarks/gpu_throughput.sh")
    parser.add_argument("--threads", type=int, default=2, help="torch threads and OMP_NUM_THREADS for every variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help=f"comma-separated, from {','.join(ALL_VARIANTS)}")
    parser.add_argument("--cst-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra dotted override for every cst variant (e.g. data.pack_row_tokens=1024); repeatable")
    parser.add_argument("--work-dir", default=None, help="keep intermediate files here (default: a temp dir, removed)")
    parser.add_argument("--report", metavar="JSON",
                        help="print (and rewrite) the table of an earlier result file from its per-step records; "
                             "runs nothing (--warmup applies)")
    parser.add_argument("--worker", choices=["trl", "cst-precompute", "levers"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.report:
        return report_from_json(Path(args.report), args.warmup)
    if args.quick:
        args.steps, args.repeats, args.warmup = 3, 1, 1
        args.hidden_size, args.layers, args.intermediate_size, args.heads, args.kv_heads = 64, 2, 128, 4, 2
        args.vocab_size, args.max_length, args.max_prompt_length = 512, 256, 64
        if args.variants == DEFAULT_VARIANTS:
            args.variants = "trl-precomputed,cst"
    args.warmup = 2 if args.warmup is None else args.warmup
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        worker = {"trl": trl_worker, "cst-precompute": cst_precompute_worker, "levers": levers_worker}[args.worker]
        result = worker(spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(ALL_VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(ALL_VARIANTS)}")
    if args.global_batch % args.micro_batch:
        parser.error("--global-batch must be a multiple of --micro-batch")
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")
    args.rows = args.rows or args.global_batch * args.steps

    os.environ.update(OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                      HF_DATASETS_OFFLINE="1")
    import logging

    logging.basicConfig(level=logging.WARNING)
    if os.getloadavg()[0] > 0.5:
        print(f"[prepare] WARNING: load average {os.getloadavg()[0]:.2f} before the run: other work is using the CPUs, "
              "and timings taken now can be several times too slow (see unsteady steps in the table)", flush=True)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="cst-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    env_info = environment(args)
    load_before = os.getloadavg()
    started = time.perf_counter()
    print(f"[prepare] work dir {work}", flush=True)
    model = build_model(args, work)
    env = child_env(args, work)
    data = build_rows(args, work, model["path"])
    print(f"[prepare] model {model['parameters']:,} parameters (hidden {model['hidden_size']} x {model['layers']} "
          f"layers); data: {data['kind']}, {data['benchmark_rows']} of {data['set_rows']} CST rows", flush=True)
    if data["kind"] != "released":
        print(f"[prepare] NOTE: {data['note']}", flush=True)

    accumulation = args.global_batch // args.micro_batch
    peaks = [measure_peak(args.threads, args.device)]
    precision = "fp32" if args.device == "cpu" else "bf16"
    print(f"[prepare] {precision} matrix-product peak {peaks[0] / 1e9:.1f} GFLOP/s on {args.device}", flush=True)
    results: dict[str, list[dict]] = {variant: [] for variant in variants}
    precompute = None
    for repetition in range(args.repeats):
        for variant in variants:
            t0 = time.perf_counter()
            label = f"{variant}-{repetition}"
            if variant.startswith("trl"):
                spec = {
                    "model": model["path"], "rows": data["trl_rows"], "output_dir": str(work / f"out-{label}"),
                    "threads": args.threads, "micro_batch": args.micro_batch, "accumulation": accumulation,
                    "steps": args.steps, "learning_rate": args.learning_rate, "beta": args.beta,
                    "max_length": args.max_length,
                    "max_prompt_length": None if args.no_trl_prompt_cut else args.max_prompt_length,
                    "precompute": variant == "trl-precomputed", "seed": args.seed, "device": args.device,
                }
                result = run_worker("trl", spec, env, work, label)
                if variant != "trl-precomputed":
                    result["precompute_s"] = None
            else:
                if precompute is None:  # the reference cache: one-time cost, shared by the cst variants
                    overrides = cst_overrides(args, work, model["path"], data["preference_dir"],
                                              work / "run-precompute")
                    precompute = run_worker("cst-precompute", {"overrides": overrides, "threads": args.threads},
                                            env, work, "cst-precompute")
                result = run_cst(args, work, env, model["path"], data["preference_dir"], variant, label,
                                 **CST_EXTRA[variant])
                result["precompute_s"] = precompute["precompute_s"] if variant != "cst-offload" else None
            results[variant].append(result)
            summary = summarise(result, args.warmup, args.steps)
            print(f"[{label}] {summary['real_tokens_per_s']:,.0f} real tokens/s, padding "
                  f"{100 * summary['padding_share']:.1f}%, step {summary['step_time_s']:.3f}s, "
                  f"{summary['model_flops_per_s'] / 1e9:.1f} model GFLOP/s ({time.perf_counter() - t0:.0f}s)",
                  flush=True)
            if summary["unsteady_steps"]:
                print(f"[{label}] WARNING: {summary['unsteady_steps']} of {summary['measured_steps']} measured steps "
                      "took over twice its fastest step: other work on the machine?", flush=True)
    peaks.append(measure_peak(args.threads, args.device))
    peak_flops = max(peaks)
    levers = None
    if any(v.startswith("cst") for v in variants):
        overrides = cst_overrides(args, work, model["path"], data["preference_dir"], work / "run-levers")
        levers = run_worker("levers", {"overrides": overrides, "threads": args.threads, "device": args.device,
                                       "micro_batch": args.micro_batch, "repeats": max(args.repeats, 3)},
                            env, work, "levers")
        print(f"[levers] LM head at response positions only: forward+backward {levers['response_logits_s']:.3f}s "
              f"vs {levers['full_logits_s']:.3f}s with full logits ({100 * levers['response_logits_saving']:.0f}% "
              f"saved); collation {1000 * levers['collate_s']:.1f} ms = {100 * levers['collate_share']:.1f}% of a "
              "micro-batch (the most overlapping it can hide)", flush=True)

    rows = table_rows(results, variants, args.warmup, args.steps, peak_flops)
    table = format_table(rows)
    load_after = os.getloadavg()
    total_s = time.perf_counter() - started

    print()
    print(f"{args.repeats} repetitions x {args.steps} optimizer steps per variant (first {args.warmup} left out), "
          "global batch "
          f"{args.global_batch} rows = {args.micro_batch} x {accumulation} accumulation, max_length "
          f"{args.max_length}, max_prompt_length {args.max_prompt_length}; model {model['parameters']:,} parameters; "
          f"{args.threads} threads; data {data['kind']}")
    print(table)
    print("\nreal tokens/s: non-padding tokens (prompt + response, chosen and rejected) of the steps after the "
          "warm-up, over their wall time; the median repetition, and the range over all.")
    print(f"model TFLOP/s: 6N per policy token, 2N per live-reference token, plus causal attention (cst_dist.flops; "
          f"N = {model['matmul_parameters']:,} matmul parameters), over the same wall time; share of the machine's "
          f"{precision} matrix-product peak, {peak_flops / 1e9:.1f} GFLOP/s, measured before and after the variants "
          "(on a GPU this share is the MFU).")
    print(f"speed-ups compare medians; total run {total_s:.0f}s; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "trainer_throughput",
        "settings": {
            "steps": args.steps, "warmup_steps": args.warmup, "global_batch": args.global_batch,
            "micro_batch": args.micro_batch, "accumulation": accumulation, "max_length": args.max_length,
            "max_prompt_length": args.max_prompt_length, "trl_prompt_cut_emulated": not args.no_trl_prompt_cut,
            "learning_rate": args.learning_rate, "beta": args.beta, "loss": "sigmoid", "lr_scheduler": "linear",
            "seed": args.seed, "variants": variants, "repeats": args.repeats,
        },
        "peak_flops": peak_flops, "peak_flops_measurements": peaks, "levers": levers,
        "environment": {**env_info, "load_average_before": load_before, "load_average_after": load_after},
        "model": model,
        "data": {k: v for k, v in data.items() if k not in ("preference_dir", "trl_rows")},
        "table": rows,
        "table_markdown": table,
        "runs": results,
        "total_s": total_s,
    }
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
