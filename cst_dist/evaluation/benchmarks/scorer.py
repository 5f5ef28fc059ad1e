"""Log-likelihoods of multiple-choice requests: (context, continuation) -> sum of log p(continuation tokens).

Tokenization is the harness's: trailing whitespace of the context moves to the continuation, the context is encoded
alone and the continuation is what encoding context + continuation adds after the context's tokens; BOS follows the
floor's one rule (`ChatEncoder.encode_text`). A request longer than `max_length` loses context tokens from the left.

Every choice of a question shares its context. `share_contexts=True` runs each context once: the contexts of a
batch of questions go through the model left-padded (their last position predicts each continuation's first token),
their key/value cache is repeated once per choice, and only the continuations (less their last token) run on top of
it. A one-token continuation (MMLU's " A") then costs nothing beyond its context. `share_contexts=False` runs every
request as its own full sequence (left-padded batches), the plain way. Both sort by length, longest first, so a
batch holds similar lengths and the largest batch runs (and fails, if memory is short) first.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cst_dist.logprobs import sequence_logps

IGNORE = -100


@dataclass(frozen=True)
class ChoiceRequests:
    """One question's requests as token ids: the shared context and one continuation per choice; `truncated`
    counts the context tokens cut from the left to fit `max_length`."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    truncated: int = 0


def split_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the continuation (the harness's `_encode_pair`)."""
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


def encode_requests(encode: Callable[[str], list[int]], context: str, continuations: Sequence[str],
                    max_length: int) -> ChoiceRequests:
    """Token ids of one question's requests (see the module docstring). Raises ValueError for a continuation that
    adds no token or does not fit `max_length` with at least one context token."""
    context_ids, encoded = None, []
    for continuation in continuations:
        left, right = split_trailing_space(context, continuation)
        if context_ids is None:
            context_ids = encode(left)
        whole = encode(left + right)
        if len(whole) <= len(context_ids):
            raise ValueError(f"the continuation {continuation!r} adds no token to its context")
        encoded.append(tuple(whole[len(context_ids):]))
    longest = max(len(ids) for ids in encoded)
    # The model reads context + continuation[:-1]: at most max_length tokens, with at least one of the context.
    room = max_length + 1 - longest
    if room < 1:
        raise ValueError(f"a continuation of {longest} tokens does not fit max_length={max_length}")
    kept = context_ids[-room:]
    return ChoiceRequests(tuple(kept), tuple(encoded), len(context_ids) - len(kept))


@dataclass
class ScorerStats:
    """What the scorer ran: forward calls, requests scored, and token positions fed to the model (padding too)."""

    forwards: int = 0
    requests: int = 0
    input_tokens: int = 0


class LoglikelihoodScorer:
    """Scores `ChoiceRequests` with one causal LM in eval mode; results are float64 lists in the input order."""

    def __init__(self, model, pad_token_id: int, device: torch.device | str, batch_size: int = 16,
                 share_contexts: bool = True):
        self.model, self.pad, self.device = model, pad_token_id, torch.device(device)
        self.batch_size, self.share_contexts = batch_size, share_contexts
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.stats = ScorerStats()

    @torch.inference_mode()
    def score(self, questions: Sequence[ChoiceRequests]) -> list[list[float]]:
        """Summed log-probabilities of every continuation of every question: result[q][c]."""
        results: list[list[float]] = [[0.0] * len(q.continuations) for q in questions]
        if self.share_contexts:
            order = sorted(range(len(questions)), key=lambda q: -_longest(questions[q]))
            for batch in self._batches(order, [len(q.continuations) for q in questions]):
                for q, values in zip(batch, self._shared([questions[q] for q in batch]), strict=True):
                    results[q] = values
        else:
            flat = [(q, c) for q, question in enumerate(questions) for c in range(len(question.continuations))]
            flat.sort(key=lambda qc: -(len(questions[qc[0]].context) + len(questions[qc[0]].continuations[qc[1]])))
            for start in range(0, len(flat), self.batch_size):
                chunk = flat[start:start + self.batch_size]
                pairs = [(questions[q].context, questions[q].continuations[c]) for q, c in chunk]
                for (q, c), value in zip(chunk, self._full(pairs), strict=True):
                    results[q][c] = value
        self.stats.requests += sum(len(q.continuations) for q in questions)
        return results

    def _batches(self, order: list[int], sizes: list[int]) -> list[list[int]]:
        """Consecutive questions while their continuations fit `batch_size` (a question is never split)."""
        batches: list[list[int]] = []
        rows = 0
        for q in order:
            if batches and rows + sizes[q] <= self.batch_size:
                batches[-1].append(q)
                rows += sizes[q]
            else:
                batches.append([q])
                rows = sizes[q]
        return batches

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: int,
                 cache=None) -> tuple[torch.Tensor, object]:
        """Logits of the last `keep` positions [B, keep, V] (and the key/value cache)."""
        extra = {"logits_to_keep": keep} if self.keeps_logits else {}
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), past_key_values=cache, use_cache=True, **extra)
        self.stats.forwards += 1
        self.stats.input_tokens += ids.numel()
        return out.logits[:, -keep:], out.past_key_values

    def _shared(self, questions: list[ChoiceRequests]) -> list[list[float]]:
        """Contexts once (left-padded, cache kept), then every continuation on its question's cache."""
        contexts = [q.context for q in questions]
        ids, mask = _left_pad(contexts, self.pad)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        last, cache = self._forward(ids, mask, positions, keep=1)  # [Q, 1, V]: predicts each first token
        rows = [(q, cont) for q, question in enumerate(questions) for cont in question.continuations]
        owner = torch.tensor([q for q, _ in rows])
        longest = max(len(cont) for _, cont in rows)
        parts = [last[owner.to(last.device)]]
        if longest > 1:  # the continuations less their last token, each on a copy of its question's cache
            cache.reorder_cache(owner.to(self.device))
            cont_ids, cont_mask = _right_pad([cont[:-1] for _, cont in rows], self.pad, longest - 1)
            lengths = torch.tensor([len(contexts[q]) for q, _ in rows])
            cont_positions = lengths.unsqueeze(1) + torch.arange(longest - 1)
            logits, _ = self._forward(cont_ids, torch.cat([mask[owner], cont_mask], dim=1), cont_positions,
                                      keep=longest - 1, cache=cache)
            parts.append(logits)
        # logits[:, t] predicts labels[:, t + 1]; the appended column predicts nothing (sequence_logps drops it).
        parts.append(parts[0].new_zeros(len(rows), 1, parts[0].shape[-1]))
        labels = torch.full((len(rows), longest + 1), IGNORE, dtype=torch.long)
        for r, (_, cont) in enumerate(rows):
            labels[r, 1:1 + len(cont)] = torch.tensor(cont)
        values = sequence_logps(torch.cat(parts, dim=1), labels.to(self.device)).double().cpu().tolist()
        results, start = [], 0
        for question in questions:
            results.append(values[start:start + len(question.continuations)])
            start += len(question.continuations)
        return results

    def _full(self, pairs: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[float]:
        """Each (context, continuation) as one left-padded sequence; only the last positions' logits are kept."""
        ids, mask = _left_pad([context + cont[:-1] for context, cont in pairs], self.pad)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        longest = max(len(cont) for _, cont in pairs)
        logits, _ = self._forward(ids, mask, positions, keep=longest)
        logits = torch.cat([logits, logits.new_zeros(len(pairs), 1, logits.shape[-1])], dim=1)
        labels = torch.full((len(pairs), longest + 1), IGNORE, dtype=torch.long)
        for r, (_, cont) in enumerate(pairs):
            labels[r, longest + 1 - len(cont):] = torch.tensor(cont)
        return sequence_logps(logits, labels.to(self.device)).double().cpu().tolist()


def _longest(question: ChoiceRequests) -> int:
    return len(question.context) + max(len(cont) for cont in question.continuations)


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[r, width - len(row):] = 1
    return ids, mask


def _right_pad(rows: Sequence[Sequence[int]], pad: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, :len(row)] = 1
    return ids, mask
