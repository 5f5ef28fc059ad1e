"""Model FLOPs and the machine's matrix-product peak: what training throughput is measured against (shared floor).

Accounting as in Kaplan et al. 2020 (sec. 2.1) and PaLM's model FLOPs utilization (Chowdhery et al. 2022, app. B):
a forward pass costs 2 FLOPs per matmul parameter per token (every linear layer, the LM head included; the input
embedding is a lookup and costs none unless it is tied to the head) plus the attention products QK^T and AV; a
backward costs twice its forward. So a trained (policy) token costs 6N plus attention, a frozen (reference) token 2N.
Causal attention is counted exactly: token i of a sequence attends to i + 1 positions, nothing across packed rows.
These are *model* FLOPs: work the trainer skips (the LM head at prompt positions, padding) is not subtracted, and
work it repeats (activation recomputation) is not added, so every trainer is measured against the same figure.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count of a causal LM depends on, read off the model itself (parameters counted, not estimated)."""

    parameters: int  # every parameter, counted once (tied weights once)
    embedding_parameters: int  # the input embedding table
    matmul_parameters: int  # parameters multiplied with every token: all linear layers, the LM head included
    layers: int
    attention_width: int  # query heads x head dimension
    hidden_size: int
    vocab_size: int

    def forward_flops(self, lengths: Iterable[int]) -> float:
        """Forward FLOPs of sequences of these lengths (each attends causally to itself only)."""
        total = 0.0
        for n in lengths:
            # QK^T and AV: token i multiplies its query with i + 1 keys, then i + 1 values; 2 FLOPs per multiply-add.
            attention = 2 * 2 * self.layers * self.attention_width * n * (n + 1) / 2
            total += 2.0 * self.matmul_parameters * n + attention
        return total

    def training_flops(self, policy_lengths: Iterable[int], reference_lengths: Iterable[int] = ()) -> float:
        """One optimizer step's model FLOPs: forward + backward (3 forwards) of the policy's sequences, plus the
        forward of the sequences a live reference model scores (none when its log-probs are precomputed)."""
        return 3.0 * self.forward_flops(policy_lengths) + self.forward_flops(reference_lengths)


def model_shape(hf_config) -> ModelShape:
    """Count the parameters of the model `hf_config` describes by building it on the meta device: exact, and no
    memory or weights needed, so a 10.7B shape is counted on a laptop."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    parameters = sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding
    embedding_parameters = embedding.numel()
    matmul_parameters = parameters - (0 if tied else embedding_parameters)
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    return ModelShape(
        parameters=parameters, embedding_parameters=embedding_parameters, matmul_parameters=matmul_parameters,
        layers=hf_config.num_hidden_layers, attention_width=heads * head_dim, hidden_size=hf_config.hidden_size,
        vocab_size=hf_config.vocab_size,
    )


def matmul_peak_flops(device: torch.device | str = "cpu", dtype: torch.dtype | None = None, size: int | None = None,
                      repeats: int = 5) -> float:
    """The best FLOP/s of a square matrix product on `device` (fp32 on CPU, bf16 on GPU by default): the machine's
    own ceiling for dense training work, measured rather than taken from a data sheet. About a second on CPU."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    size = size or (8192 if cuda else 1536)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up: thread pool, kernel selection
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        torch.matmul(a, b)
        if cuda:
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best
