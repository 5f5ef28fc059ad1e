"""`cst train`: full-parameter CST-DPO under DeepSpeed. The loop reads top to bottom, in nanoGPT's order.

`train.objective` (`cst sft` sets it to sft) selects the examples, the reference (DPO only) and what one optimizer
step runs (`OBJECTIVES`); engine, sampler, checkpoints, signals, metrics and export are the same for both.
"""

from __future__ import annotations

import logging
import math
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cst_dist.config import RunConfig, TrainConfig, dump_config
from cst_dist.data import preference_set
from cst_dist.errors import UserError
from cst_dist.flops import matmul_peak_flops, model_shape
from cst_dist.io import check_writable_dir
from cst_dist.logprobs import (
    batch_token_counts,
    chosen_rejected_logps,
    forward_logps,
)
from cst_dist.models import ModelSpec, load_model_config, load_tokenizer, resolve_model
from cst_dist.training import checkpoint
from cst_dist.training.data import (
    BatchPlan,
    BatchPrefetcher,
    MicroBatch,
    StepSampler,
    TokenizedSet,
    load_train_set,
    make_collator,
)
from cst_dist.training.deepspeed_config import resolve_zero_stage
from cst_dist.training.distributed import DistEnv, all_reduce_sum, setup_distributed
from cst_dist.training.engine import setup_policy_engine, setup_reference_engine
from cst_dist.training.identity import identity_hash, training_identity
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
    # `auto` becomes the stage this world size runs, so the identity and the stored config name the stage used.
    train_cfg.zero_stage = resolve_zero_stage(train_cfg.zero_stage, env.world_size)
    # Which run this is, and whether the folder may take it: decided before any model or data loads.
    identity = training_identity(config, preference_set.fingerprint(config.train_data_dir))
    run_hash = identity_hash(identity)
    resume_from = checkpoint.prepare_run_folder(config.layout, identity, train_cfg.resume, train_cfg.overwrite, env)
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
    # Model FLOPs per step against the matrix-product peak of the ranks' devices, measured here (cst_dist.flops).
    shape = model_shape(load_model_config(config.model))
    peak_flops = all_reduce_sum(torch.tensor([matmul_peak_flops(env.device)], dtype=torch.float64)).item()
    if env.is_rank_zero:
        log.info("model FLOPs on %s matmul parameters; matrix-product peak %.1f TFLOP/s over %d rank(s)",
                 f"{shape.matmul_parameters:,}", peak_flops / 1e12, env.world_size)

    # Precompute before the policy exists, so the reference and the policy never share device memory.
    reference = objective.setup_reference(config, spec, plan, env, tokenizer, data, collate)
    live_reference = isinstance(reference, LiveReference)
    engine, scheduler = setup_policy_engine(spec, train_cfg, plan, total_steps)
    step = 0
    if resume_from is not None:
        step = checkpoint.load_checkpoint(engine, env, resume_from)["step"]
    if env.is_rank_zero:  # the stage has started: only now does the run folder record this run and its config
        checkpoint.record_run(config.layout, identity, config)
    config_yaml = dump_config(config)
    writer = MetricsWriter(config.layout, env.is_rank_zero, resume_step=step)
    metrics: dict[str, float] = {}
    stopped = False
    progress = _progress_bar(env, total_steps, step)
    batches = BatchPrefetcher(data, sampler, collate, env.rank, total_steps)
    try:
        while step < total_steps:
            started = time.perf_counter()
            accumulator = objective.accumulator()
            micro_batches = batches.step(step)
            objective.run_step(engine, reference, micro_batches, train_cfg, env, accumulator)
            lengths = [length for micro_batch in micro_batches for length in micro_batch.sequence_lengths()]
            accumulator.add("flops", shape.training_flops(lengths, lengths if live_reference else ()))
            accumulator.add("stop_requested", float(stop.requested))
            step += 1

            # Reduce once per step; every rank sees the same loss and the same stop decision.
            metrics = accumulator.reduce()
            if not math.isfinite(metrics["loss"]):
                raise NonFiniteLossError(
                    f"loss is {metrics['loss']} at step {step}; stopping without saving (last good checkpoint kept)"
                )
            elapsed = time.perf_counter() - started
            flops = metrics.pop("flops")
            metrics.update(
                grad_norm=float(engine.get_global_grad_norm() or 0.0), lr=scheduler.get_last_lr()[0],
                **{"tokens/s": metrics["tokens/real"] / elapsed, "step_time_s": elapsed,
                   "perf/model_tflops": flops / elapsed / 1e12, "perf/flops_utilization": flops / elapsed / peak_flops,
                   "peak_memory_gib": peak_memory_gib(env.device), "epoch": step / sampler.steps_per_epoch},
            )
            stop_now = metrics.pop("stop_requested")
            if step % train_cfg.log_steps == 0 or step == total_steps or stop_now:
                writer.write(step, metrics)
            progress.update(1)
            progress.set_postfix(_postfix(metrics))
            if step % train_cfg.save_steps == 0 or step == total_steps or stop_now:
                checkpoint.save_checkpoint(engine, env, config.layout, step, {"step": step},
                                           train_cfg.keep_checkpoints, run_hash, config_yaml, step == total_steps)
            if stop_now:
                log.warning("stopped at step %d after a signal; resume with train.resume=auto", step)
                stopped = True
                break
    finally:
        batches.close()
        progress.close()
        writer.close()
    return TrainResult(metrics, step, total_steps, stopped)


def dpo_step(engine, reference, micro_batches: list[MicroBatch], train_cfg: TrainConfig, env: DistEnv,
             accumulator: StepAccumulator) -> None:
    """One DPO optimizer step: this rank's micro-batches, each a mean over its pairs (DeepSpeed then averages the
    micro-batches and ranks; all hold the same number of pairs, so that is the global batch's mean)."""
    for micro_batch in micro_batches:
        micro_step(engine, reference, micro_batch, train_cfg, env, accumulator)


def micro_step(engine, reference, micro_batch: MicroBatch, train_cfg: TrainConfig, env: DistEnv,
               accumulator: StepAccumulator) -> None:
    """Forward chosen+rejected in one pass, the reference's log-probs, the loss, backward; sums into `accumulator`."""
    rows, pairs, batch = micro_batch.rows, micro_batch.examples, micro_batch.batch
    # IPO regresses length-averaged log-ratios (Azar et al. 2023, as TRL computes it); the other losses use sums.
    average = train_cfg.loss_type == "ipo"
    # The LM head runs over the responses a chunk of positions at a time: the logits never exist for all of them.
    policy = chosen_rejected_logps(engine, batch, len(rows), env.device, average, train_cfg.logits_chunk_size)
    ref = reference(rows, batch, env.device, average)
    losses, chosen_rewards, rejected_rewards = preference_loss(
        policy.chosen.float(), policy.rejected.float(), ref.chosen.float(), ref.rejected.float(),
        beta=train_cfg.beta, loss_type=train_cfg.loss_type, label_smoothing=train_cfg.label_smoothing,
    )
    engine.backward(losses.mean())  # DeepSpeed divides by the accumulation steps
    engine.step()  # steps optimizer and scheduler only at the accumulation boundary
    accumulator.add_batch(losses, chosen_rewards, rejected_rewards, policy.chosen, policy.rejected,
                          [p.system for p in pairs])
    accumulator.add("tokens/real", sum(micro_batch.sequence_lengths()))
    accumulator.add("tokens/slots", batch["input_ids"].numel())


def sft_step(engine, reference, micro_batches: list[MicroBatch], train_cfg: TrainConfig, env: DistEnv,
             accumulator: SftStepAccumulator) -> None:
    """One SFT optimizer step, token-weighted exactly: the gradient is that of the mean NLL per response token of the
    whole global batch, whatever its split into micro-batches, accumulation steps and ranks.

    Micro-batches hold different numbers of response tokens, so a mean per micro-batch (what DeepSpeed's averaging
    of micro-batches and ranks would give) weighs the tokens of short micro-batches more and makes the loss curve
    depend on the split. Instead the step's response tokens are counted first (from the collated labels; one small
    all-reduce over the ranks) and every micro-batch's summed NLL is divided by that total (as HF Trainer's
    `num_items_in_batch`). `reference` is None: SFT has none."""
    counts = [batch_token_counts(mb.batch, len(mb.examples)) for mb in micro_batches]
    local_tokens = sum(int(count.sum()) for count in counts)
    step_tokens = all_reduce_sum(torch.tensor([float(local_tokens)], dtype=torch.float64)).item()
    for micro_batch, count in zip(micro_batches, counts, strict=True):
        sft_micro_step(engine, micro_batch, count, step_tokens, env, accumulator, train_cfg.logits_chunk_size)


def sft_micro_step(engine, micro_batch: MicroBatch, token_counts: torch.Tensor, step_tokens: float, env: DistEnv,
                   accumulator: SftStepAccumulator, chunk_size: int | None) -> None:
    """Forward the responses of one collated micro-batch, its share of the step's token-mean NLL, backward; sums
    into `accumulator`."""
    batch = micro_batch.batch
    logps = forward_logps(engine, batch, len(micro_batch.examples), env.device, chunk_size=chunk_size)
    # The loss is already this micro-batch's share of the step's mean: DeepSpeed must not divide it by the
    # accumulation steps (scale_wrt_gas=False), and its averaging of gradients over the ranks is undone by world_size.
    engine.backward(sft_loss(logps.float(), step_tokens) * env.world_size, scale_wrt_gas=False)
    engine.step()  # steps optimizer and scheduler only at the accumulation boundary
    accumulator.add_sft_batch(logps, token_counts)
    accumulator.add("tokens/real", sum(micro_batch.sequence_lengths()))
    accumulator.add("tokens/slots", batch["input_ids"].numel())


def setup_reference(config: RunConfig, spec: ModelSpec, plan: BatchPlan, env: DistEnv, tokenizer,
                    data: TokenizedSet, collate) -> PrecomputedReference | LiveReference:
    """`precomputed`: log-probs from the cache (computed once if missing; the engine is then freed). Otherwise the
    frozen reference engine, offloaded or on the device."""
    train_cfg = config.train
    if train_cfg.reference != "precomputed":
        return LiveReference(setup_reference_engine(spec, train_cfg, plan), train_cfg.logits_chunk_size)

    def compute() -> torch.Tensor:
        engine = setup_reference_engine(spec, train_cfg, plan)
        return compute_reference_logps(engine, collate, data, plan.micro_batch_size, env, train_cfg.logits_chunk_size)

    path = cache_path(train_cfg, config.layout)
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


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    postfix = {"loss": f"{metrics['loss']:.4f}"}
    if "rewards/accuracies" in metrics:
        postfix["acc"] = f"{metrics['rewards/accuracies']:.2f}"
    return postfix


def _progress_bar(env: DistEnv, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", disable=not env.is_rank_zero, dynamic_ncols=True)

