"""`cst train`: full-parameter CST-DPO under DeepSpeed. The loop reads top to bottom, in nanoGPT's order.

`train.objective` (`cst sft` sets it to sft) selects the examples, the reference (DPO only) and what one optimizer
step runs (`OBJECTIVES`); engine, sampler, checkpoints, signals, metrics and export are the same for both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cst_dist.config import RunConfig, TrainConfig, dump_config, identity_hash, training_identity
from cst_dist.data.collate import EncodedPair
from cst_dist.errors import UserError
from cst_dist.io import check_writable_dir, file_sha256
from cst_dist.logprobs import batch_token_counts, forward_logps
from cst_dist.models import ModelSpec, load_tokenizer, resolve_model
from cst_dist.training import checkpoint
from cst_dist.training.data import BatchPlan, StepSampler, TokenizedSet, load_train_set, make_collator
from cst_dist.training.distributed import DistEnv, all_reduce_sum, setup_distributed
from cst_dist.training.engine import setup_policy_engine, setup_reference_engine
from cst_dist.training.losses import preference_loss, sft_loss
from cst_dist.training.metrics import MetricsWriter, SftStepAccumulator, StepAccumulator
from cst_dist.training.reference import (
    LiveReference,
    PrecomputedReference,
    cache_key_parts,
    cache_path,
    compute_reference_logps,
    load_or_compute_cache,
)

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
    pass


class StopFlag:
    """SIGTERM / SIGUSR1 (what Slurm sends before preemption) ask for a checkpoint and a clean exit."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        log.warning("received signal %d: will checkpoint and stop after this step", signum)
        self.requested = True


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@dataclass
class TrainResult:
    """How `train` ended: the last step's metrics, the step reached, and whether a signal stopped it early."""

    metrics: dict[str, float]
    step: int
    total_steps: int
    stopped_by_signal: bool = False


def train(config: RunConfig) -> TrainResult:
    """Train the policy. All ranks run this; rank 0 logs and writes files."""
    train_cfg = config.train
    env = setup_distributed(train_cfg.dist_timeout_s)
    # From here on a stop signal is never lost: one that arrives while the model loads stops after the first step.
    stop = StopFlag()
    objective = OBJECTIVES[train_cfg.objective]
    check_writable_dir(config.run_dir, "run_dir")
    # Which run this is, and whether the folder may take it: decided before any model or data loads.
    identity = training_identity(config, preference_fingerprint(config.train_data_dir))
    run_hash = identity_hash(identity)
    resume_from = checkpoint.prepare_run_folder(config.run_dir, identity, train_cfg.resume, train_cfg.overwrite, env)
    torch.manual_seed(train_cfg.seed)
    # config.json read once; backend (varlen attention for packed batches) and dtype chosen once
    spec = resolve_model(config.model, env.device, packed=config.data.packing)
    tokenizer = load_tokenizer(config.model)
    data = load_train_set(config.train_data_dir, config.data, train_cfg, tokenizer)
    plan = BatchPlan.of(train_cfg, env.world_size)
    sampler = StepSampler(len(data.pairs), plan, train_cfg.seed, data.groups if train_cfg.group_pairs else None)
    total_steps = train_cfg.max_steps or sampler.steps_per_epoch * train_cfg.epochs
    if env.is_rank_zero:
        log.info("%d rows, %d ranks x micro-batch %d x accumulation %d = global batch %d; %d steps",
                 len(data.pairs), env.world_size, plan.micro_batch_size, plan.accumulation, plan.global_batch_size,
                 total_steps)
    collate = make_collator(config.data, tokenizer.pad_token_id, spec.attn_implementation)

    # Precompute before the policy exists, so the reference and the policy never share device memory.
    reference = objective.setup_reference(config, spec, plan, env, tokenizer, data, collate)
    engine, scheduler = setup_policy_engine(spec, train_cfg, plan, total_steps)
    step = 0
    if resume_from is not None:
        step = checkpoint.load_checkpoint(engine, env, resume_from)["step"]
    if env.is_rank_zero:  # the stage has started: only now does the run folder record this run and its config
        checkpoint.record_run(config.run_dir, identity, config)
    config_yaml = dump_config(config)
    writer = MetricsWriter(config.run_dir, env.is_rank_zero, resume_step=step)
    metrics: dict[str, float] = {}
    stopped = False
    progress = _progress_bar(env, total_steps, step)
    try:
        while step < total_steps:
            started = time.perf_counter()
            accumulator = objective.accumulator()
            objective.run_step(engine, reference, data, sampler.micro_batches(step, env.rank), collate, train_cfg,
                               env, accumulator)
            accumulator.add("stop_requested", float(stop.requested))
            step += 1

            # Reduce once per step; every rank sees the same loss and the same stop decision.
            metrics = accumulator.reduce()
            if not math.isfinite(metrics["loss"]):
                raise NonFiniteLossError(
                    f"loss is {metrics['loss']} at step {step}; stopping without saving (last good checkpoint kept)"
                )
            elapsed = time.perf_counter() - started
            metrics.update(
                grad_norm=float(engine.get_global_grad_norm() or 0.0), lr=scheduler.get_last_lr()[0],
                **{"tokens/s": metrics["tokens/real"] / elapsed, "step_time_s": elapsed,
                   "peak_memory_gib": peak_memory_gib(env.device), "epoch": step / sampler.steps_per_epoch},
            )
            stop_now = metrics.pop("stop_requested")
            if step % train_cfg.log_steps == 0 or step == total_steps or stop_now:
                writer.write(step, metrics)
            progress.update(1)
            progress.set_postfix(_postfix(metrics))
            if step % train_cfg.save_steps == 0 or step == total_steps or stop_now:
                checkpoint.save_checkpoint(engine, env, config.run_dir, step, {"step": step},
                                           train_cfg.keep_checkpoints, run_hash, config_yaml, step == total_steps)
            if stop_now:
                log.warning("stopped at step %d after a signal; resume with train.resume=auto", step)
                stopped = True
                break
    finally:
        progress.close()
        writer.close()
    return TrainResult(metrics, step, total_steps, stopped)


def dpo_step(engine, reference, data: TokenizedSet, micro_batches: list[list[int]], collate, train_cfg: TrainConfig,
             env: DistEnv, accumulator: StepAccumulator) -> None:
    """One DPO optimizer step: this rank's micro-batches, each a mean over its pairs (DeepSpeed then averages the
    micro-batches and ranks; all hold the same number of pairs, so that is the global batch's mean)."""
    for rows in micro_batches:
        micro_step(engine, reference, [data.pairs[i] for i in rows], rows, collate, train_cfg, env, accumulator)


def micro_step(engine, reference, pairs: list[EncodedPair], rows: list[int], collate, train_cfg: TrainConfig,
               env: DistEnv, accumulator: StepAccumulator) -> None:
    """Forward chosen+rejected in one pass, the reference's log-probs, the loss, backward; sums into `accumulator`."""
    batch = collate(pairs)
    # IPO regresses length-averaged log-ratios (Azar et al. 2023, as TRL computes it); the other losses use sums.
    average = train_cfg.loss_type == "ipo"
    policy_logps = forward_logps(engine, batch, 2 * len(rows), env.device, average=average)
    ref_chosen, ref_rejected = reference(rows, batch, env.device, average)
    policy_chosen, policy_rejected = policy_logps[: len(rows)], policy_logps[len(rows):]
    losses, chosen_rewards, rejected_rewards = preference_loss(
        policy_chosen.float(), policy_rejected.float(), ref_chosen.float(), ref_rejected.float(),
        beta=train_cfg.beta, loss_type=train_cfg.loss_type, label_smoothing=train_cfg.label_smoothing,
    )
    engine.backward(losses.mean())  # DeepSpeed divides by the accumulation steps
    engine.step()  # steps optimizer and scheduler only at the accumulation boundary
    accumulator.add_batch(losses, chosen_rewards, rejected_rewards, policy_chosen, policy_rejected,
                          [p.system for p in pairs])
    accumulator.add("tokens/real", sum(sum(p.lengths()) for p in pairs))
    accumulator.add("tokens/slots", batch["input_ids"].numel())


def sft_step(engine, reference, data: TokenizedSet, micro_batches: list[list[int]], collate, train_cfg: TrainConfig,
             env: DistEnv, accumulator: SftStepAccumulator) -> None:
    """One SFT optimizer step, token-weighted exactly: the gradient is that of the mean NLL per response token of the
    whole global batch, whatever its split into micro-batches, accumulation steps and ranks.

    Micro-batches hold different numbers of response tokens, so a mean per micro-batch (what DeepSpeed's averaging
    of micro-batches and ranks would give) weighs the tokens of short micro-batches more and makes the loss curve
    depend on the split. Instead the step's response tokens are counted first (from the collated labels; one small
    all-reduce over the ranks) and every micro-batch's summed NLL is divided by that total (as HF Trainer's
    `num_items_in_batch`). `reference` is None: SFT has none."""
    examples = [[data.pairs[i] for i in rows] for rows in micro_batches]
    batches = [collate(micro_batch) for micro_batch in examples]  # CPU tensors: one step's worth
    counts = [batch_token_counts(batch, len(ex)) for batch, ex in zip(batches, examples, strict=True)]
    local_tokens = sum(int(count.sum()) for count in counts)
    step_tokens = all_reduce_sum(torch.tensor([float(local_tokens)], dtype=torch.float64)).item()
    for batch, micro_batch in zip(batches, examples, strict=True):
        sft_micro_step(engine, batch, micro_batch, step_tokens, env, accumulator)


def sft_micro_step(engine, batch: dict[str, torch.Tensor], examples: list[EncodedPair], step_tokens: float,
                   env: DistEnv, accumulator: SftStepAccumulator) -> None:
    """Forward the responses of one collated micro-batch, its share of the step's token-mean NLL, backward; sums
    into `accumulator`."""
    logps = forward_logps(engine, batch, len(examples), env.device)
    # The loss is already this micro-batch's share of the step's mean: DeepSpeed must not divide it by the
    # accumulation steps (scale_wrt_gas=False), and its averaging of gradients over the ranks is undone by world_size.
    engine.backward(sft_loss(logps.float(), step_tokens) * env.world_size, scale_wrt_gas=False)
    engine.step()  # steps optimizer and scheduler only at the accumulation boundary
    accumulator.add_sft_batch(logps, batch_token_counts(batch, len(examples)))
    accumulator.add("tokens/real", sum(sum(p.lengths()) for p in examples))
    accumulator.add("tokens/slots", batch["input_ids"].numel())


def setup_reference(config: RunConfig, spec: ModelSpec, plan: BatchPlan, env: DistEnv, tokenizer,
                    data: TokenizedSet, collate) -> PrecomputedReference | LiveReference:
    """`precomputed`: log-probs from the cache (computed once if missing; the engine is then freed). Otherwise the
    frozen reference engine, offloaded or on the device."""
    train_cfg = config.train
    if train_cfg.reference != "precomputed":
        return LiveReference(setup_reference_engine(spec, train_cfg, plan))

    def compute() -> torch.Tensor:
        engine = setup_reference_engine(spec, train_cfg, plan)
        return compute_reference_logps(engine, collate, data, plan.micro_batch_size, env)

    path = cache_path(train_cfg, config.run_dir)
    parts = cache_key_parts(spec, config.data, tokenizer, data)
    return PrecomputedReference(load_or_compute_cache(path, parts, data, env, compute))


def no_reference(*args) -> None:
    """SFT trains against no reference model: none is built, loaded or precomputed."""
    return None


@dataclass(frozen=True)
class Objective:
    """What `train.objective` selects; the loop around it is the same for every objective."""

    setup_reference: Callable[..., object]  # setup_reference's arguments -> what `run_step` gets as `reference`
    run_step: Callable[..., None]  # one optimizer step: every micro-batch this rank runs at that step
    accumulator: type[StepAccumulator]  # the step's sums, and the metrics they reduce to


OBJECTIVES = {
    "dpo": Objective(setup_reference, dpo_step, StepAccumulator),
    "sft": Objective(no_reference, sft_step, SftStepAccumulator),
}


def preference_fingerprint(folder: Path) -> str:
    """The content fingerprint `cst build` wrote into the set's manifest (a hash of the Parquet files otherwise)."""
    manifest = folder / "manifest.json"
    if manifest.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return str(json.loads(manifest.read_text())["fingerprint"])
    files = sorted((folder / "data").glob("*.parquet"))
    return hashlib.sha256("".join(file_sha256(path) for path in files).encode()).hexdigest()[:16]


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    postfix = {"loss": f"{metrics['loss']:.4f}"}
    if "rewards/accuracies" in metrics:
        postfix["acc"] = f"{metrics['rewards/accuracies']:.2f}"
    return postfix


def _progress_bar(env: DistEnv, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", disable=not env.is_rank_zero, dynamic_ncols=True)

