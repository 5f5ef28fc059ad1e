"""Sequence log-probabilities: the shared floor of training, the reference cache and evaluation (pure torch).

`sequence_logps` turns model logits into one summed (or averaged) log-probability per response, for padded batches
[B, T, V] and for packed, padding-free batches [R, N, V] with a `sequence_ids` map. `forward_logps` runs a model on one
collated batch (see `cst_dist.data.collate`) and returns those log-probs, from full response logits or, with
`chunk_size`, from logits that never exist for more than `chunk_size` positions at once (issue 23).
`chosen_rejected_logps` returns them for a chosen+rejected batch as a `ChosenRejected` pair of halves.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

# Tokens per chunk when upcasting logits to float32: bounds the transient copy to CHUNK x V floats.
_LOGSUMEXP_CHUNK = 1024
# Positions per LM-head chunk where training, the reference and evaluation call `forward_logps`: logits [512, V]
# at a time (96 MiB in fp32 at SmolLM2's V = 49,152) instead of [K, V] for all K response tokens of a micro-batch.
LOGITS_CHUNK_SIZE = 512




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


class ChosenRejected(NamedTuple):
    """Per-pair values of one chosen+rejected batch: `chosen` [N] and `rejected` [N], entry i of both is pair i.

    The collators put the N chosen sequences first and the N rejected after them; `split` is the one place that
    knows it. A tuple, so `chosen, rejected = ...` unpacks it.
    """

    chosen: Tensor
    rejected: Tensor

    @classmethod
    def split(cls, values: Tensor) -> ChosenRejected:
        """[2N] in collated order (chosen..., rejected...) -> the two halves."""
        if values.shape[0] % 2:
            raise ValueError(f"a chosen+rejected batch has an even number of sequences, got {values.shape[0]}")
        half = values.shape[0] // 2
        return cls(values[:half], values[half:])

    def stack(self) -> Tensor:
        """[N, 2]: column 0 chosen, column 1 rejected (the layout of the reference cache)."""
        return torch.stack([self.chosen, self.rejected], dim=1)

    def map(self, fn: Callable[[Tensor], Tensor]) -> ChosenRejected:
        """`fn` applied to both halves, e.g. `.map(Tensor.float)`."""
        return ChosenRejected(fn(self.chosen), fn(self.rejected))


def chosen_rejected_logps(model, batch: dict[str, Tensor], num_pairs: int, device: torch.device,
                          average: bool = False, chunk_size: int | None = None) -> ChosenRejected:
    """`forward_logps` of one collated chosen+rejected batch of `num_pairs` pairs, as [num_pairs] halves."""
    return ChosenRejected.split(forward_logps(model, batch, 2 * num_pairs, device, average, chunk_size))


def forward_logps(model, batch: dict[str, torch.Tensor], num_sequences: int, device: torch.device,
                  average: bool = False, chunk_size: int | None = None) -> Tensor:
    """Summed (or, `average=True`, token-averaged) response log-probs [num_sequences] of one collated batch
    (chosen+rejected, or SFT examples), padded or packed; equal to `sequence_logps` of the full logits.

    The LM head runs only at the positions whose next token is counted (the responses): the prompt's logits are
    never computed. `chunk_size=None` builds those K positions' logits [K, V] at once (upcast to fp32 in chunks);
    an integer runs the head on `chunk_size` positions at a time in forward and backward, so no more than one
    chunk's logits ever exist (`_ChunkedTokenLogps`; the head must be an `nn.Linear` whose output the model returns
    unchanged). The selection is made from the batch's CPU tensors, so nothing waits on the device. A packed batch
    carries position_ids that restart per sequence and, for varlen attention, cu_seq_lens; no attention mask.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of positions or None, got {chunk_size}")
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
        inputs["logits_to_keep"] = positions.to(device)
        select = functools.partial(_flatten_positions, None)  # the model already selected the K positions
    else:
        select = functools.partial(_flatten_positions, mask.to(device))
    if chunk_size is None:
        token_logps = _token_logps(select(model(**inputs, use_cache=False).logits), targets)
    else:
        with _head_returns_token_logps(model, select, targets, chunk_size) as produced:
            returned = model(**inputs, use_cache=False).logits
        token_logps = _returned_token_logps(returned, produced)
    return _per_sequence(token_logps, seq_index.to(device), num, average)


def _flatten_positions(mask: Tensor | None, values: Tensor) -> Tensor:
    """[..., K, D] already selected (mask None) or [R, T, D] with the counted mask [R, T-1] -> [K, D]."""
    if mask is None:
        return values.reshape(-1, values.shape[-1])
    return values[:, :-1][mask]


@contextlib.contextmanager
def _head_returns_token_logps(model, select: Callable[[Tensor], Tensor], targets: Tensor, chunk_size: int):
    """While active, the model's LM head returns log p(target) [K] of its selected positions instead of logits.

    The head is still *called as a module* by the model's own forward, only its `forward` is swapped: under
    ZeRO-3 the hooks that gather its (possibly tied) weight before forward and before backward fire as for plain
    logits, and a DeepSpeed engine's forward (backward prologue, gradient scaling hooks) runs unchanged. A
    function applying the weight outside the head's forward would see an empty partition there. Yields the list
    that receives what the head produced, for `_returned_token_logps`.
    """
    module = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"chunked log-probs need an nn.Linear LM head; {type(module).__name__} has "
                         f"{type(head).__name__}: use chunk_size=None")
    produced: list[Tensor] = []

    def forward(hidden: Tensor) -> Tensor:
        token_logps = _ChunkedTokenLogps.apply(select(hidden), head.weight, head.bias, targets, chunk_size)
        produced.append(token_logps)
        return token_logps

    head.forward = forward  # an instance attribute: shadows the class's forward, `del` restores it
    try:
        yield produced
    finally:
        del head.forward


def _returned_token_logps(returned: Tensor, produced: list[Tensor]) -> Tensor:
    """The model's returned `logits` when they are exactly what the swapped head produced (the same storage: ZeRO-3
    wraps the head's output in a detached view of it); anything else means the model transformed the head's
    output (logit scaling, softcapping) or called the head again, and chunked log-probs would be wrong."""
    if (len(produced) != 1 or returned.shape != produced[0].shape
            or returned.data_ptr() != produced[0].data_ptr()):
        raise ValueError("this model does not return its LM head's output unchanged (logit scaling or softcapping, "
                         "as in Gemma-2 or Granite): chunked log-probs cannot serve it; use full logits "
                         "(chunk_size=None)")
    return returned  # not produced[0]: the returned tensor carries ZeRO-3's pre-backward gather of the head


class _ChunkedTokenLogps(torch.autograd.Function):
    """log p(target) [K] of hidden states [K, H] under an LM head (weight [V, H], bias [V] or None), `chunk_size`
    positions at a time: only the target's logit and the log-sum-exp of each position are kept, so at most one
    chunk's logits [chunk, V] (and its fp32 copy) exist at once. Backward recomputes each chunk's logits:
    d log p(target) / d logits = onehot(target) - softmax. Result fp32 (fp64 for fp64 inputs), as `_token_logps`.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk_size: int):
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        lse = hidden.new_empty(hidden.shape[0], dtype=dtype)
        token_logps = torch.empty_like(lse)
        for rows in _chunks(hidden.shape[0], chunk_size):
            logits = torch.nn.functional.linear(hidden[rows], weight, bias)
            lse[rows] = logits.to(dtype).logsumexp(-1)
            token_logps[rows] = logits.gather(-1, targets[rows, None]).squeeze(-1).to(dtype) - lse[rows]
            del logits  # freed before the next chunk's
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_size = chunk_size
        return token_logps

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        # Weight and bias gradients sum over chunks: in fp32 for low-precision heads (one rounding per chunk would
        # otherwise add up); the plain path's single matrix product accumulates in fp32 inside the kernel.
        accumulate = torch.promote_types(weight.dtype, torch.float32)
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=accumulate) if needs_weight else None
        grad_bias = torch.zeros_like(bias, dtype=accumulate) if needs_bias else None
        grad_output = grad_output.to(lse.dtype)
        for rows in _chunks(hidden.shape[0], ctx.chunk_size):
            grad = grad_output[rows, None]
            softmax = torch.nn.functional.linear(hidden[rows], weight, bias).to(lse.dtype).sub_(lse[rows, None]).exp_()
            grad_logits = softmax.mul_(-grad).scatter_add_(-1, targets[rows, None], grad).to(weight.dtype)
            if needs_hidden:
                grad_hidden[rows] = grad_logits @ weight
            if needs_weight and grad_weight.dtype == weight.dtype:
                grad_weight.addmm_(grad_logits.T, hidden[rows])  # in place: no [V, H] temporary per chunk
            elif needs_weight:
                grad_weight.add_(grad_logits.T @ hidden[rows])
            if needs_bias:
                grad_bias.add_(grad_logits.sum(0))
            del softmax, grad_logits
        grad_weight = grad_weight.to(weight.dtype) if needs_weight else None
        grad_bias = grad_bias.to(bias.dtype) if needs_bias else None
        return grad_hidden, grad_weight, grad_bias, None, None


def _chunks(total: int, size: int):
    return (slice(start, start + size) for start in range(0, total, size))


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
