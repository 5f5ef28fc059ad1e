"""Sequence log-probabilities: the shared floor of training, the reference cache and evaluation (pure torch).

`sequence_logps` turns model logits into one summed (or averaged) log-probability per response, for padded batches
[B, T, V] and for packed, padding-free batches [R, N, V] with a `sequence_ids` map. `forward_logps` runs a model on one
collated chosen+rejected batch (see `cst_dist.data.collate`) and returns those log-probs.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor

# Tokens per chunk when upcasting logits to float32: bounds the transient copy to CHUNK x V floats.
_LOGSUMEXP_CHUNK = 1024




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
    return _per_sequence(token_logps, seq_index, num, average)


def _per_sequence(token_logps: Tensor, seq_index: Tensor, num: int, average: bool) -> Tensor:
    """Sum (or mean) the counted tokens' log-probs [K] of each sequence -> [num]."""
    totals = torch.zeros(num, dtype=token_logps.dtype, device=token_logps.device).index_add(0, seq_index, token_logps)
    if not average:
        return totals
    counts = torch.zeros(num, dtype=token_logps.dtype, device=token_logps.device)
    counts.index_add_(0, seq_index, torch.ones_like(token_logps))
    return totals / counts.clamp(min=1)


def forward_logps(model, batch: dict[str, torch.Tensor], num_sequences: int, device: torch.device,
                  average: bool = False) -> Tensor:
    """Summed (or, `average=True`, token-averaged) response log-probs [num_sequences] of one concatenated
    chosen+rejected batch, padded or packed; equal to `sequence_logps` of the full logits.

    The LM head runs only at the positions whose next token is counted (the responses): the prompt's logits are
    never computed, and the fp32 upcast goes over those positions in chunks. The selection is made from the batch's
    CPU tensors, so nothing waits on the device. A packed batch carries position_ids that restart per sequence and,
    for varlen attention, cu_seq_lens; no attention mask.
    """
    labels = batch["labels"]
    sequence_ids = batch.get("sequence_ids")
    mask, seq_index, num = _counted_tokens(labels, sequence_ids, num_sequences if sequence_ids is not None else None,
                                           -100)
    inputs = {key: batch[key].to(device) for key in ("input_ids", "attention_mask", "position_ids") if key in batch}
    if "cu_seq_lens" in batch:  # read by varlen attention (flash-attn or ours); other backends ignore them
        cu_seq_lens = batch["cu_seq_lens"].to(device)
        longest = int(batch["max_length"])
        inputs.update(cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens, max_length_q=longest, max_length_k=longest)
    targets = labels[:, 1:][mask].to(device)
    if _takes_logits_to_keep(model):
        keep = torch.nn.functional.pad(mask, (0, 1))  # [R, T]: position t is kept when label t + 1 is counted
        # One row: integer positions (no device sync); several rows: transformers' boolean form, flattened row-major.
        positions = keep[0].nonzero().T if keep.shape[0] == 1 else keep
        logits = model(**inputs, use_cache=False, logits_to_keep=positions.to(device)).logits
        logits = logits.reshape(-1, logits.shape[-1])
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1][mask.to(device)]
    return _per_sequence(_token_logps(logits, targets), seq_index.to(device), num, average)


def _takes_logits_to_keep(model) -> bool:
    """Whether the model's forward can compute logits at chosen positions only (transformers' causal LMs can;
    custom remote code may not). A DeepSpeed engine passes keywords on to its module."""
    return _accepts_logits_to_keep(type(getattr(model, "module", model)))


@functools.cache
def _accepts_logits_to_keep(model_type: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_type.forward).parameters


def batch_token_counts(batch: dict[str, torch.Tensor], num_sequences: int) -> Tensor:
    """Counted response tokens [num_sequences] of a collated batch: turns summed log-probs into averages."""
    return sequence_token_counts(batch["labels"], batch.get("sequence_ids"), num_sequences)
