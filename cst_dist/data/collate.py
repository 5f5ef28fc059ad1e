"""Tokenization of preference rows and their collation into padded or packed (padding-free) batches.

A row (system, prompt, chosen, rejected) becomes prompt ids (the chat template up to and including the generation
prompt) and two response ids (the rest of the rendered conversation: the answer and the template's end-of-turn).
The prompt is cut from the left to `max_prompt_length` (its end, next to the answer, is kept); the responses are cut
from the right so that prompt + response fits `max_length`.

An SFT example (`cst sft`) is an `EncodedPair` without a rejected side (`rejected_ids == []`, see
`PairTokenizer.encode_sft`): the collators then emit its one sequence, so the same padded and packed batches, labels
and `sequence_ids` serve both objectives.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import torch

from cst_dist.chat import ChatEncoder
from cst_dist.config import DataConfig
from cst_dist.io import RecordError

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


@dataclass
class EncodedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    system: str = ""

    def lengths(self) -> tuple[int, ...]:
        """Token lengths of the sequences a batch holds for this pair: (chosen, rejected), or (response,) for an SFT
        example (no rejected side)."""
        chosen = len(self.prompt_ids) + len(self.chosen_ids)
        return (chosen, len(self.prompt_ids) + len(self.rejected_ids)) if self.rejected_ids else (chosen,)


@dataclass
class TruncationStats:
    """What tokenization had to cut or drop; reported in the run's metrics, never silent."""

    rows: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        return (
            f"{self.rows} rows: {self.prompt_truncated} prompts cut from the left, "
            f"{self.response_truncated} with a response cut, {sum(self.skipped.values())} skipped"
        )


class PairTokenizer:
    """Chat-template tokenization of preference rows under a `DataConfig` (max lengths, over-length policy)."""

    def __init__(self, tokenizer, config: DataConfig):
        self.tokenizer = tokenizer
        self.config = config
        self.chat = ChatEncoder(tokenizer)  # the encoding generation and evaluation use too (one BOS rule)
        self.stats = TruncationStats()

    def encode(self, row: dict[str, str], source: str = "<rows>", row_number: int | None = None) -> EncodedPair | None:
        """Tokenize one row; returns None when the over-length policy is `skip` and the row does not fit."""
        messages = self.chat.messages(row["system"], row["prompt"])
        prompt_ids = self.chat.encode_conversation(messages)
        chosen_ids = self.chat.ids(self.chat.response_text(messages, row["chosen"]))
        rejected_ids = self.chat.ids(self.chat.response_text(messages, row["rejected"]))
        fitted = self._fit(prompt_ids, [chosen_ids, rejected_ids], "chosen/rejected", source, row_number)
        if fitted is None:
            return None
        prompt_ids, (chosen_ids, rejected_ids) = fitted
        return EncodedPair(prompt_ids, chosen_ids, rejected_ids, row["system"])

    def encode_sft(self, row: dict[str, str], response: str = "chosen", keep_system: bool = True,
                   source: str = "<rows>", row_number: int | None = None) -> EncodedPair | None:
        """One SFT example of a row: its prompt (under its system prompt, or none with `keep_system=False`) and the
        answer `row[response]`, as an `EncodedPair` without a rejected side. Same encoding, limits and over-length
        policy as `encode`; None when the policy is `skip` and the example does not fit."""
        system = row["system"] if keep_system else ""
        messages = self.chat.messages(system, row["prompt"])
        prompt_ids = self.chat.encode_conversation(messages)
        response_ids = self.chat.ids(self.chat.response_text(messages, row[response]))
        fitted = self._fit(prompt_ids, [response_ids], response, source, row_number)
        if fitted is None:
            return None
        prompt_ids, (response_ids,) = fitted
        return EncodedPair(prompt_ids, response_ids, [], system)

    def _fit(self, prompt_ids: list[int], responses: list[list[int]], response_field: str, source: str,
             row_number: int | None) -> tuple[list[int], list[list[int]]] | None:
        """Apply the length limits to one prompt and its responses: cut (counted), or skip (None) / raise."""
        cfg = self.config
        self.stats.rows += 1
        longest_response = max(len(ids) for ids in responses)
        too_long = len(prompt_ids) > cfg.max_prompt_length or len(prompt_ids) + longest_response > cfg.max_length
        if too_long and cfg.over_length != "truncate":
            longest = "prompt" if len(prompt_ids) > cfg.max_prompt_length else response_field
            message = (
                f"{len(prompt_ids)} prompt + {longest_response} response tokens exceed "
                f"data.max_prompt_length={cfg.max_prompt_length} / data.max_length={cfg.max_length}"
            )
            if cfg.over_length == "error":
                raise RecordError(source, row_number, longest, message + " (set data.over_length=truncate or skip)")
            self.stats.skipped[f"over_length:{longest}"] += 1
            return None
        if len(prompt_ids) > cfg.max_prompt_length:
            prompt_ids = prompt_ids[-cfg.max_prompt_length:]  # keep the end, next to the answer
            self.stats.prompt_truncated += 1
        budget = cfg.max_length - len(prompt_ids)
        if any(len(ids) > budget for ids in responses):
            responses = [ids[:budget] for ids in responses]
            self.stats.response_truncated += 1
        return prompt_ids, responses


def _sequences(pairs: list[EncodedPair]) -> list[tuple[list[int], int]]:
    """(input ids, prompt length) for every chosen, then every rejected sequence: one forward serves both. A batch of
    SFT examples (no rejected side) gives one sequence per example; a batch never mixes the two kinds."""
    chosen = [(p.prompt_ids + p.chosen_ids, len(p.prompt_ids)) for p in pairs]
    rejected = [(p.prompt_ids + p.rejected_ids, len(p.prompt_ids)) for p in pairs if p.rejected_ids]
    if rejected and len(rejected) != len(pairs):
        raise ValueError("a batch mixes preference pairs and SFT examples (pairs without a rejected side)")
    return chosen + rejected


def _labels(ids: list[int], prompt_length: int) -> list[int]:
    return [IGNORE_INDEX] * prompt_length + ids[prompt_length:]


def pad_batch(pairs: list[EncodedPair], pad_token_id: int, pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded batch of 2B rows (chosen 0..B-1, rejected B..2B-1); B rows for B SFT examples.

    Returns input_ids, attention_mask, labels: [2B, T] with T the longest row (rounded up to a multiple).
    """
    sequences = _sequences(pairs)
    width = max(len(ids) for ids, _ in sequences)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(_labels(ids, prompt_length))
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pack_batch(
    pairs: list[EncodedPair], pad_token_id: int, pad_to_multiple_of: int = 1, row_tokens: int | None = None
) -> dict[str, torch.Tensor]:
    """The 2B sequences of the batch (B for SFT examples) packed without padding between them, into rows of at most
    `row_tokens` tokens (None: a single row). Sequences are placed longest first into the first row with room
    (first-fit decreasing).

    Returns input_ids, labels, position_ids, sequence_ids: [R, W] (position ids restart at 0 for every sequence, which
    is how transformers' SDPA mask finds the boundaries; sequence_ids index the 2B sequences); row tails are padding
    with masked labels. Also cu_seq_lens [S + 1] (int32: the starts of the S segments, sequences and row tails, of
    the rows laid end to end) and max_length (the longest segment), which varlen attention takes instead of a mask.
    Mask-based attention costs O(tokens x row length), so rows are capped there; varlen attention needs no cap.
    """
    sequences = _sequences(pairs)
    capacity = max([row_tokens or 0] + [len(ids) for ids, _ in sequences]) if row_tokens else None
    rows: list[list[int]] = []  # sequence indices per row
    room: list[int] = []
    for index in sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0])):
        length = len(sequences[index][0])
        target = next((r for r, free in enumerate(room) if capacity is None or free >= length), None)
        if target is None:
            rows.append([])
            room.append(capacity or 0)
            target = len(rows) - 1
        rows[target].append(index)
        room[target] -= length
    width = max(sum(len(sequences[i][0]) for i in row) for row in rows)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    sequence_ids = torch.zeros(shape, dtype=torch.long)
    segments: list[int] = []  # lengths of the segments of the flat token axis, in order: sequences and row tails
    for r, row in enumerate(rows):
        offset = 0
        for index in sorted(row):
            ids, prompt_length = sequences[index]
            span = slice(offset, offset + len(ids))
            input_ids[r, span] = torch.tensor(ids)
            labels[r, span] = torch.tensor(_labels(ids, prompt_length))
            position_ids[r, span] = torch.arange(len(ids))
            sequence_ids[r, span] = index
            offset += len(ids)
            segments.append(len(ids))
        if offset < width:  # the tail is one padding "sequence": its labels are masked, any valid id will do
            position_ids[r, offset:] = torch.arange(width - offset)
            segments.append(width - offset)
    cu_seq_lens = torch.zeros(len(segments) + 1, dtype=torch.int32)
    cu_seq_lens[1:] = torch.tensor(segments).cumsum(0)
    return {
        "input_ids": input_ids, "labels": labels, "position_ids": position_ids, "sequence_ids": sequence_ids,
        # where each segment of the flattened rows starts: what varlen attention kernels take (`cst_dist.attention`)
        "cu_seq_lens": cu_seq_lens, "max_length": torch.tensor(max(segments)),
    }


def padding_ratio(pairs: list[EncodedPair], batch: dict[str, torch.Tensor]) -> float:
    """Share of the batch's token slots that hold padding (0 for a packed batch without tail padding)."""
    real = sum(sum(p.lengths()) for p in pairs)
    return 1.0 - real / batch["input_ids"].numel()
