"""The self-critique chain (CST, arXiv 2404.00495): answer, critique, revision, as three turns of ONE conversation.

    turn 1  [system?] user: prompt (optionally inside a jailbreak template)        -> y0 (the first answer)
    turn 2  ... + assistant: y0, user: CRITIQUE_REQUEST                              -> critique
    turn 3  ... + assistant: critique, user: REVISION_REQUEST                        -> y1 (the revision, safe)

A plain class over any engine (see engines.py): usable without Ray, and what each Ray actor runs per shard.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cst_dist.config import SamplingConfig
from cst_dist.generation.engines import Conversation, Engine
from cst_dist.models import build_messages
from cst_dist.prompts import CRITIQUE_REQUEST, REVISION_REQUEST

PAIR_ROW_FIELDS = ("id", "prompt", "y0", "critique", "y1", "generator", "sampling", "template_index")


@dataclass(frozen=True)
class PromptItem:
    """One prompt to turn into a pair. `text` is what the model sees in turn 1 (the prompt inside its jailbreak
    template, or the prompt itself); `prompt` is the original, which is what the pair records."""

    id: str
    prompt: str
    text: str
    template_index: int | None = None


@dataclass
class ChainResult:
    """rows: kept pairs (PAIR_ROW_FIELDS); rejects: the same fields + `reason` (kept, counted, never dropped)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any JSON-able parts; stable across processes and Python versions (unlike hash())."""
    digest = hashlib.sha256(json.dumps(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


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

    def __init__(self, engine: Engine, system_prompt: str | None = None, generator: str = "model"):
        self.engine = engine
        self.system_prompt = system_prompt
        self.generator = generator

    def run(self, items: list[PromptItem], sampling: SamplingConfig) -> ChainResult:
        """items -> pairs. `sampling.seed` seeds the chain; turn t samples with derive_seed(seed, t)."""
        result = ChainResult()
        first = [build_messages(self.system_prompt, item.text, self.engine.system_role) for item in items]
        y0 = self._turn(1, first, sampling)
        second = [messages + _continue(answer, CRITIQUE_REQUEST) for messages, answer in zip(first, y0, strict=True)]
        critiques = self._turn(2, second, sampling)
        third = [messages + _continue(text, REVISION_REQUEST) for messages, text in zip(second, critiques, strict=True)]
        y1 = self._turn(3, third, sampling)
        for item, answer, critique, revision in zip(items, y0, critiques, y1, strict=True):
            row = {
                "id": item.id, "prompt": item.prompt, "y0": answer, "critique": critique, "y1": revision,
                "generator": self.generator, "sampling": sampling.model_dump(), "template_index": item.template_index,
            }
            reason = reject_reason(answer, revision)
            if reason is None:
                result.rows.append(row)
            else:
                result.rejects.append({**row, "reason": reason})
        return result

    def _turn(self, turn: int, conversations: list[Conversation], sampling: SamplingConfig) -> list[str]:
        turn_sampling = sampling.model_copy(update={"seed": derive_seed(sampling.seed, turn)})
        # Stripped: the answer goes back into the conversation as the assistant's message, and into the pair.
        return [text.strip() for text in self.engine.generate(conversations, turn_sampling)]


def _continue(answer: str, request: str) -> Conversation:
    return [{"role": "assistant", "content": answer}, {"role": "user", "content": request}]
