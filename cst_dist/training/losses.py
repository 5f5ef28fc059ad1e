"""Preference losses for CST-DPO and the sequence log-probabilities they are computed from.

`sequence_logps` turns model logits into one summed (or averaged) log-probability per response, for padded batches
[B, T, V] and for packed, padding-free batches [R, N, V] with a `sequence_ids` map. `preference_loss` turns the four
log-probabilities of a preference pair (policy/reference x chosen/rejected) into a per-example loss and the implicit
rewards. Nothing here reduces over the batch: the trainer decides how to average across micro-batches and ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# Tokens per chunk when upcasting logits to float32: bounds the transient copy to CHUNK x V floats.
_LOGSUMEXP_CHUNK = 1024


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
SMOOTHED_LOSS_TYPES = ("sigmoid", "robust")


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
    IPO is meant for length-averaged log-probs, i.e. `sequence_logps(..., average=True)`; with summed log-probs its
    target margin 1/(2*beta) is reached only for very short responses.

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


# --- sequence log-probabilities ------------------------------------------------------------------------------------


def _counted_tokens(
    labels: Tensor, sequence_ids: Tensor | None, num_sequences: int | None, ignore_index: int
) -> tuple[Tensor, Tensor, int]:
    """Shifted token selection shared by `sequence_logps` and `sequence_token_counts`.

    labels [R, T] (and sequence_ids [R, T] when packed). Returns `(mask, seq_index, num_sequences)`: mask [R, T-1]
    is True where label t+1 is counted (predicted by the logits at t), seq_index [K] gives the sequence of each of
    the K counted tokens, in row-major order.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must have shape [B, T], got {tuple(labels.shape)}")
    mask = labels[:, 1:] != ignore_index
    if sequence_ids is None:
        rows = labels.shape[0]
        if num_sequences is not None and num_sequences != rows:
            raise ValueError(f"num_sequences={num_sequences} but the padded batch has {rows} rows")
        seq_ids = torch.arange(rows, device=labels.device).unsqueeze(1).expand_as(mask)
        return mask, seq_ids[mask], rows
    if sequence_ids.shape != labels.shape:
        raise ValueError(f"sequence_ids shape {tuple(sequence_ids.shape)} != labels shape {tuple(labels.shape)}")
    if num_sequences is None:
        raise ValueError("num_sequences is required with sequence_ids (inferring it would need a device sync)")
    # A label belongs to the sequence of the label token. The first token of a packed sequence is predicted from
    # the previous sequence's last token, so it is never counted -- exactly as in a padded row.
    seq_ids = sequence_ids[:, 1:].long()
    mask = mask & (seq_ids == sequence_ids[:, :-1])
    return mask, seq_ids[mask], num_sequences


def sequence_token_counts(
    labels: Tensor, sequence_ids: Tensor | None = None, num_sequences: int | None = None, ignore_index: int = -100
) -> Tensor:
    """Number of counted (shifted, non-ignored) label tokens per sequence.

    Padded: labels [B, T] -> [B]. Packed: labels and sequence_ids [R, N] -> [num_sequences]. Same selection as
    `sequence_logps`, so `sequence_logps(..., average=True) == sequence_logps(...) / counts` (for counts > 0).
    Returns int64.
    """
    _, seq_index, num = _counted_tokens(labels, sequence_ids, num_sequences, ignore_index)
    counts = torch.zeros(num, dtype=torch.long, device=labels.device)
    return counts.index_add_(0, seq_index, torch.ones_like(seq_index))


def _token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(label) for logits [K, V] and labels [K] -> [K], in at least float32.

    `gathered - logsumexp` instead of a full log_softmax: only a chunk of the logits is upcast at a time.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    gathered = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1).to(dtype)
    lse = torch.cat([chunk.to(dtype).logsumexp(-1) for chunk in logits.split(_LOGSUMEXP_CHUNK)])
    return gathered - lse


def sequence_logps(
    logits: Tensor,
    labels: Tensor,
    *,
    sequence_ids: Tensor | None = None,
    num_sequences: int | None = None,
    average: bool = False,
    ignore_index: int = -100,
) -> Tensor:
    """Summed (or token-averaged) log-probability of each sequence's labels under the logits.

    Causal shift: logits[:, t] predict labels[:, t + 1]; labels equal to `ignore_index` (prompt, padding) are
    not counted.
      - Padded batch: logits [B, T, V], labels [B, T] -> [B].
      - Packed batch: logits [R, N, V], labels [R, N], sequence_ids [R, N] with values in [0, num_sequences)
        (any value at ignored padding positions) -> [num_sequences]. The first token of each packed sequence is
        not counted (it would be predicted from the previous sequence), matching the padded layout.
    `average=True` divides by the number of counted tokens (see `sequence_token_counts`); a sequence with no
    counted token gives 0. The result is float32 (float64 for float64 logits) and differentiable w.r.t. logits.
    """
    if logits.ndim != 3 or logits.shape[:2] != labels.shape:
        shapes = f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        raise ValueError(f"logits [R, T, V] and labels [R, T] expected, got {shapes}")
    mask, seq_index, num = _counted_tokens(labels, sequence_ids, num_sequences, ignore_index)
    # Boolean indexing of the shifted view selects only counted tokens [K, V]: prompt and padding never upcast.
    token_logps = _token_logps(logits[:, :-1][mask], labels[:, 1:][mask])
    totals = torch.zeros(num, dtype=token_logps.dtype, device=logits.device).index_add(0, seq_index, token_logps)
    if not average:
        return totals
    counts = torch.zeros(num, dtype=token_logps.dtype, device=logits.device)
    counts.index_add_(0, seq_index, torch.ones_like(token_logps))
    return totals / counts.clamp(min=1)
