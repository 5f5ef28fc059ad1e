"""Losses on sequence log-probabilities (see `cst_dist.logprobs`): preference losses for CST-DPO, and the SFT loss.

`preference_loss` turns the four log-probabilities of a preference pair (policy/reference x chosen/rejected) into a
per-example loss and the implicit rewards. Nothing there reduces over the batch: the trainer decides how to average
across micro-batches and ranks. `sft_loss` (the `cst sft` warm-up) is a token mean, so it takes the token count it
averages over from the trainer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from cst_dist.config import SMOOTHED_LOSS_TYPES

# --- preference losses ---------------------------------------------------------------------------------------------
# Each takes logits = (pi_c - pi_r) - (ref_c - ref_r), shape [B], and returns per-example losses [B].


def _sigmoid_loss(logits: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # DPO, Rafailov et al. 2023, eq. 7; label_smoothing > 0 is conservative DPO (cDPO, Mitchell 2023):
    # the preference label is assumed flipped with probability label_smoothing.
    return -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing


def _ipo_loss(logits: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # IPO, Azar et al. 2023, eq. 17: regress the log-ratio gap onto 1/(2*tau), with tau = beta.
    return (logits - 1 / (2 * beta)) ** 2


def _hinge_loss(logits: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # SLiC-HF, Zhao et al. 2023: the rank-calibration hinge with margin 1/beta, applied to the reference-normalised
    # log-ratio gap as in TRL (beta * logits vs. the margin 1).
    return torch.relu(1 - beta * logits)


def _robust_loss(logits: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # rDPO, Chowdhury et al. 2024 ("Provably Robust DPO"): an unbiased estimate of the clean DPO loss when labels
    # flip with probability label_smoothing; it grows without bound as label_smoothing -> 0.5.
    keep, flip = -F.logsigmoid(beta * logits), -F.logsigmoid(-beta * logits)
    return (keep * (1 - label_smoothing) - flip * label_smoothing) / (1 - 2 * label_smoothing)


LOSS_TYPES: dict[str, Callable[[Tensor, float, float], Tensor]] = {
    "sigmoid": _sigmoid_loss,
    "ipo": _ipo_loss,
    "hinge": _hinge_loss,
    "robust": _robust_loss,
}
# Loss types whose formula uses label_smoothing; for the others a non-zero value would be silently ignored.


def _check_loss_args(loss_type: str, beta: float, label_smoothing: float, shapes: list[torch.Size]) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"train.loss_type must be one of {sorted(LOSS_TYPES)}, got {loss_type!r}")
    if not beta > 0:  # also rejects NaN
        raise ValueError(f"train.beta must be > 0, got {beta!r}")
    if not 0 <= label_smoothing < 0.5:  # 0.5 makes robust divide by zero and sigmoid constant
        raise ValueError(f"train.label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
    if label_smoothing and loss_type not in SMOOTHED_LOSS_TYPES:
        raise ValueError(f"train.label_smoothing is only defined for {list(SMOOTHED_LOSS_TYPES)}, not {loss_type!r}")
    if len(set(shapes)) != 1:
        raise ValueError(f"policy/reference chosen/rejected log-prob shapes differ: {[tuple(s) for s in shapes]}")


def preference_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-example preference loss and implicit rewards.

    All four inputs are sequence log-probabilities of shape [B] (see `sequence_logps`). The reference ones normally
    carry no gradient. `loss_type` is one of `LOSS_TYPES`: "sigmoid" (DPO / cDPO), "ipo", "hinge" (SLiC) or "robust".
    IPO is meant for length-averaged log-probs, i.e. `sequence_logps(..., average=True)` (the trainer passes those
    for `loss_type="ipo"`); with summed log-probs its target margin 1/(2*beta) is reached only for very short
    responses.

    Returns `(losses, chosen_rewards, rejected_rewards)`, each of shape [B], not reduced. The rewards are
    `beta * (policy - reference)` for the chosen and rejected responses, detached (for logging and accuracy).
    Raises ValueError, naming the `train.*` key, for an unknown loss type, beta <= 0, label_smoothing outside
    [0, 0.5) or non-zero for a loss that does not use it, and for mismatched shapes.
    """
    inputs = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    _check_loss_args(loss_type, beta, label_smoothing, [t.shape for t in inputs])

    logits = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    losses = LOSS_TYPES[loss_type](logits, beta, label_smoothing)
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


# --- supervised fine-tuning ----------------------------------------------------------------------------------------


def sft_loss(sequence_logps: Tensor, num_tokens: float | Tensor) -> Tensor:
    """Mean negative log-likelihood per response token: `-sum(sequence_logps) / num_tokens` (token-weighted, as
    Hugging Face's Trainer and TRL's SFTTrainer compute it; a long answer weighs by its tokens, not as one example).

    `sequence_logps` [B] are summed response log-probs (`sequence_logps(..., average=False)`); `num_tokens` is the
    number of response tokens to average over: this batch's (`sequence_token_counts(...).sum()`) gives its mean, the
    whole optimizer step's gives this batch's share of the step's mean (how the trainer weights accumulated
    micro-batches exactly). Returns a scalar. Raises ValueError for a non-1-D input or num_tokens <= 0.
    """
    if sequence_logps.ndim != 1:
        raise ValueError(f"sequence_logps must have shape [B], got {tuple(sequence_logps.shape)}")
    if not float(num_tokens) > 0:  # also rejects NaN
        raise ValueError(f"num_tokens must be > 0, got {num_tokens!r}")
    return -sequence_logps.sum() / num_tokens
