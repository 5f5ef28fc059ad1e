"""The self-critique chain (CST, arXiv 2404.00495): answer, critique, revision, as three turns of ONE conversation.

    turn 1  [system?] user: prompt (optionally inside a jailbreak template)        -> y0 (the first answer)
    turn 2  ... + assistant: y0, user: CRITIQUE_REQUEST                              -> critique
    turn 3  ... + assistant: critique, user: REVISION_REQUEST                        -> y1 (the revision, safe)

A plain class over any engine (see engines.py): usable without Ray, and what each Ray actor runs per shard.
Before turn 1, every prompt is checked against the engine's context: one whose three turns may not fit is rejected
as "prompt too long" (`generate.over_length=skip`) or stops the run naming it (`error`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cst_dist.chat import build_messages
from cst_dist.config import SamplingConfig
from cst_dist.engines import Conversation, Engine
from cst_dist.errors import UserError
from cst_dist.farm.shards import derive_seed
from cst_dist.prompts import CRITIQUE_REQUEST, REVISION_REQUEST

PAIR_ROW_FIELDS = ("id", "prompt", "y0", "critique", "y1", "generator", "sampling", "template_index")
TOO_LONG = "prompt too long"
TURNS = 3


class PromptTooLongError(UserError, ValueError):
    """A prompt whose three turns cannot fit the model's context, under `generate.over_length=error`."""


@dataclass(frozen=True)
class PromptItem:
    """One prompt to turn into a pair. `text` is what the model sees in turn 1 (the prompt inside its jailbreak
    template, or the prompt itself); `prompt` is the original, which is what the pair records. `origin` says where
    it was read (file, row), for error messages."""

    id: str
    prompt: str
    text: str
    template_index: int | None = None
    origin: str = ""


@dataclass
class ChainResult:
    """rows: kept pairs (PAIR_ROW_FIELDS); rejects: the same fields + `reason` (kept, counted, never dropped);
    generated: the items that went through the three turns (the others were rejected before turn 1)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    generated: list[PromptItem] = field(default_factory=list)


def reject_reason(y0: str, y1: str) -> str | None:
    """Why a pair cannot teach a preference: an empty side, or a revision that changed nothing."""
    if not y0.strip():
        return "empty y0"
    if not y1.strip():
        return "empty y1"
    if y0.strip() == y1.strip():
        return "y0 == y1"
    return None


class SelfCritiqueChain:
    """Runs the three turns for a batch of prompts; each turn is one `engine.generate` call over the whole batch."""

    def __init__(self, engine: Engine, system_prompt: str | None = None, generator: str = "model",
                 over_length: Literal["skip", "error"] = "skip"):
        self.engine = engine
        self.system_prompt = system_prompt
        self.generator = generator
        self.over_length = over_length

    def run(self, items: list[PromptItem], sampling: SamplingConfig) -> ChainResult:
        """items -> pairs. `sampling.seed` seeds the chain; turn t samples with derive_seed(seed, t)."""
        result = ChainResult()
        too_long = self._too_long(items, sampling.max_new_tokens)
        result.generated = [item for item in items if item.id not in too_long]
        generated = iter(self._three_turns(result.generated, sampling))
        for item in items:  # rows and rejects in the items' order
            if item.id in too_long:
                row = self._row(item, None, None, None, sampling)
                result.rejects.append({**row, "reason": TOO_LONG, **too_long[item.id]})
                continue
            answer, critique, revision = next(generated)
            row = self._row(item, answer, critique, revision, sampling)
            reason = reject_reason(answer, revision)
            if reason is None:
                result.rows.append(row)
            else:
                result.rejects.append({**row, "reason": reason})
        return result

    def _row(self, item: PromptItem, y0: str | None, critique: str | None, y1: str | None,
             sampling: SamplingConfig) -> dict[str, Any]:
        """A pair row (PAIR_ROW_FIELDS, in order); the texts are None for a prompt that was never generated."""
        return {"id": item.id, "prompt": item.prompt, "y0": y0, "critique": critique, "y1": y1,
                "generator": self.generator, "sampling": sampling.model_dump(), "template_index": item.template_index}

    def _three_turns(self, items: list[PromptItem], sampling: SamplingConfig) -> list[tuple[str, str, str]]:
        """(y0, critique, y1) per item: answer, critique of the answer, revision, in one conversation."""
        if not items:
            return []
        first = [self._first_turn(item) for item in items]
        y0 = self._turn(1, first, sampling)
        second = [messages + _continue(answer, CRITIQUE_REQUEST) for messages, answer in zip(first, y0, strict=True)]
        critiques = self._turn(2, second, sampling)
        third = [messages + _continue(text, REVISION_REQUEST) for messages, text in zip(second, critiques, strict=True)]
        y1 = self._turn(3, third, sampling)
        return list(zip(y0, critiques, y1, strict=True))

    def _first_turn(self, item: PromptItem) -> Conversation:
        return build_messages(self.system_prompt, item.text, self.engine.system_role)

    def _too_long(self, items: list[PromptItem], max_new_tokens: int) -> dict[str, dict[str, int]]:
        """id -> token counts of the prompts whose turn 3 may not fit the engine's context.

        Turn 3's conversation is the longest the chain sends: turn 1's messages, both requests, y0 and the critique
        (each at most max_new_tokens), then the revision's max_new_tokens. Its messages with empty answers, counted
        by the engine's own template, plus 3 x max_new_tokens is the bound. Engines that do not know their context
        (scripted test engines) skip the check.
        """
        context = getattr(self.engine, "max_context", None)
        if not context:
            return {}
        too_long = {}
        for item in items:
            final = self._first_turn(item) + _continue("", CRITIQUE_REQUEST) + _continue("", REVISION_REQUEST)
            needed = self.engine.count_tokens(final) + TURNS * max_new_tokens
            if needed <= context:
                continue
            if self.over_length == "error":
                raise PromptTooLongError(
                    f"prompt {item.id!r} ({item.origin or 'prompt set'}) needs {needed} tokens for its three turns "
                    f"(with generate.sampling.max_new_tokens={max_new_tokens}), more than the model's {context}; "
                    "shorten it, lower max_new_tokens, or set generate.over_length=skip"
                )
            too_long[item.id] = {"prompt_tokens": self.engine.count_tokens(self._first_turn(item)),
                                 "needed_tokens": needed, "max_context": context}
        return too_long

    def _turn(self, turn: int, conversations: list[Conversation], sampling: SamplingConfig) -> list[str]:
        turn_sampling = sampling.model_copy(update={"seed": derive_seed(sampling.seed, turn)})
        # Stripped: the answer goes back into the conversation as the assistant's message, and into the pair.
        return [text.strip() for text in self.engine.generate(conversations, turn_sampling)]


def _continue(answer: str, request: str) -> Conversation:
    return [{"role": "assistant", "content": answer}, {"role": "user", "content": request}]
