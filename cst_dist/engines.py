"""Generation engines: `generate(conversations, sampling) -> texts`, one text per conversation, in input order.

`HFEngine` (transformers, batched, CPU or GPU) works everywhere; `VLLMEngine` follows the same interface where vLLM
is installed. `RecordingEngine` wraps either and keeps every conversation it was sent, so the self-critique chain's
turns can be inspected (`generate.save_conversations`). Engines never import Ray.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import torch

from cst_dist.chat import ChatEncoder, Conversation
from cst_dist.config import ModelConfig, SamplingConfig
from cst_dist.errors import UserError
from cst_dist.models import ensure_model, load_model, load_tokenizer, resolve_model

log = logging.getLogger(__name__)


class EngineError(UserError, RuntimeError):
    pass


@dataclass
class EngineStats:
    """Running totals of an engine: generate calls, conversations answered, tokens generated (EOS included)."""

    calls: int = 0
    conversations: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0


class Engine(Protocol):
    name: str
    system_role: bool  # whether the chat template renders a system message (else it is folded into the user turn)
    stats: EngineStats
    max_context: int | None  # prompt + generated tokens the model can hold; None if unknown (no length check)

    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[str]: ...

    def count_tokens(self, conversation: Conversation) -> int: ...


class ChatModelEngine:
    """What every engine shares: the model's tokenizer and the one conversation encoding (`cst_dist.chat`), so all
    engines, and training, feed a model the same ids for the same conversation."""

    def __init__(self, model_config: ModelConfig):
        self.tokenizer = load_tokenizer(model_config)
        self.chat = ChatEncoder(self.tokenizer)
        self.system_role = self.chat.system_role
        self.stats = EngineStats()

    def encode(self, conversation: Conversation) -> list[int]:
        """Token ids of the conversation + the assistant header: the ids training uses for the same prompt."""
        return self.chat.encode_conversation(conversation)

    def count_tokens(self, conversation: Conversation) -> int:
        return len(self.encode(conversation))


class HFEngine(ChatModelEngine):
    """transformers `generate`: prompts sorted by token length and batched (less padding), left-padded, KV cache on,
    each row stopping at EOS. `batch_size=1` is the naive one-prompt-at-a-time loop."""

    name = "hf"

    def __init__(self, model_config: ModelConfig, batch_size: int = 16, device: str = "cpu", num_gpus: int = 0):
        super().__init__(model_config)
        self.tokenizer.padding_side = "left"  # generation appends on the right, so padding goes left
        # A replica spanning several GPUs is split layer-wise by accelerate; one device otherwise.
        extra = {"device_map": "auto"} if num_gpus > 1 and device == "cuda" else {}
        self.model = load_model(resolve_model(model_config, device), **extra).eval()
        if not extra:
            self.model.to(device)
        self.device = self.model.device
        self.batch_size = batch_size
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self.max_context = self.max_positions
        configured = self.model.generation_config.eos_token_id
        configured = configured if isinstance(configured, list) else [configured] if configured is not None else []
        self.eos_ids = sorted({self.tokenizer.eos_token_id, *configured} - {None})

    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[str]:
        """texts[i] answers conversations[i]. The sampler is seeded with `sampling.seed` first, so the same
        conversations and settings give the same texts."""
        start = time.perf_counter()
        prompts = [self.encode(conversation) for conversation in conversations]
        self._check_length(max((len(ids) for ids in prompts), default=0), sampling.max_new_tokens)
        # Longest first: similar lengths share a batch (little padding), and an out-of-memory shows up at once.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        texts: list[str] = [""] * len(prompts)
        torch.manual_seed(sampling.seed)
        for first in range(0, len(order), self.batch_size):
            batch = order[first : first + self.batch_size]
            for index, text in zip(batch, self._generate_batch([prompts[i] for i in batch], sampling), strict=True):
                texts[index] = text
        self.stats.calls += 1
        self.stats.conversations += len(conversations)
        self.stats.seconds += time.perf_counter() - start
        return texts

    def _generate_batch(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[str]:
        """prompts: token ids of B conversations -> B decoded answers. input_ids/attention_mask: [B, longest]."""
        width = max(len(ids) for ids in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts],
                                      device=self.device)
        decoding = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.temperature == 0:
            decoding = dict(do_sample=False)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=sampling.max_new_tokens,
                eos_token_id=self.eos_ids, pad_token_id=pad, use_cache=True, **decoding,
            )
        texts = []
        for row in output[:, width:].tolist():
            # A finished row is filled with padding up to the batch's longest answer: cut at the first EOS.
            length = next((i + 1 for i, token in enumerate(row) if token in self.eos_ids), len(row))
            self.stats.generated_tokens += length
            texts.append(self.tokenizer.decode(row[:length], skip_special_tokens=True))
        return texts

    def _check_length(self, longest_prompt: int, max_new_tokens: int) -> None:
        # A backstop: the chain rejects prompts whose three turns may not fit before it calls generate.
        if self.max_positions and longest_prompt + max_new_tokens > self.max_positions:
            raise EngineError(
                f"a conversation of {longest_prompt} tokens + generate.sampling.max_new_tokens={max_new_tokens} "
                f"exceeds the model's {self.max_positions} positions; lower generate.sampling.max_new_tokens"
            )


class VLLMEngine(ChatModelEngine):
    """vLLM with the HF engine's interface (optional: only where vLLM is installed; not exercised by the CPU tests).

    Prompts are rendered by the same chat template and passed as token ids, so both engines see identical inputs.
    """

    name = "vllm"

    def __init__(self, model_config: ModelConfig, num_gpus: int = 1):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise EngineError("generate.engine=vllm but vLLM is not installed; install it or use generate.engine=hf")\
                from exc
        super().__init__(model_config)
        dtype = "bfloat16" if model_config.dtype == "auto" else model_config.dtype
        self.llm = LLM(model=str(ensure_model(model_config)), tensor_parallel_size=max(num_gpus, 1), dtype=dtype,
                       trust_remote_code=model_config.trust_remote_code)
        self.max_context = getattr(getattr(self.llm.llm_engine, "model_config", None), "max_model_len", None)

    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[str]:
        from vllm import SamplingParams

        start = time.perf_counter()
        prompts = [{"prompt_token_ids": self.encode(conversation)} for conversation in conversations]
        params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_new_tokens, seed=sampling.seed)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self.stats.calls += 1
        self.stats.conversations += len(conversations)
        self.stats.generated_tokens += sum(len(out.outputs[0].token_ids) for out in outputs)
        self.stats.seconds += time.perf_counter() - start
        return [out.outputs[0].text for out in outputs]


class RecordingEngine:
    """Wraps an engine and keeps every call's conversations: `calls[k]` is the list sent in the k-th call."""

    def __init__(self, inner: Engine):
        self.inner = inner
        self.name, self.system_role = inner.name, inner.system_role
        self.max_context = getattr(inner, "max_context", None)
        self.calls: list[list[Conversation]] = []

    @property
    def stats(self) -> EngineStats:
        return self.inner.stats

    def count_tokens(self, conversation: Conversation) -> int:
        return self.inner.count_tokens(conversation)

    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[str]:
        self.calls.append([[dict(message) for message in conversation] for conversation in conversations])
        return self.inner.generate(conversations, sampling)


def build_engine(kind: str, model_config: ModelConfig, batch_size: int, device: str = "cpu", num_gpus: int = 0):
    """The engine named by `generate.engine`."""
    if kind == "vllm":
        return VLLMEngine(model_config, num_gpus)
    return HFEngine(model_config, batch_size, device, num_gpus)
