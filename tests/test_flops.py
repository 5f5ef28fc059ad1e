"""Model FLOPs (cst_dist.flops): parameter counts from the meta device, the 6N / 2N / attention accounting by hand,
and the matrix-product peak measurement."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cst_dist.flops import matmul_peak_flops, model_shape


def small_config(**extra) -> LlamaConfig:
    return LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, **extra)


@pytest.mark.parametrize("tied", [False, True])
def test_meta_device_count_equals_a_real_model(tied):
    config = small_config(tie_word_embeddings=tied)
    shape = model_shape(config)
    real = LlamaForCausalLM(config)
    assert shape.parameters == sum(p.numel() for p in real.parameters())
    assert shape.embedding_parameters == 1000 * 64
    # untied: the embedding is a lookup (no FLOPs), the head a matmul; tied: one matrix that is both
    assert shape.matmul_parameters == shape.parameters - (0 if tied else 1000 * 64)
    # by hand: per layer q, o 64x64; k, v 64x32; MLP 3 x 64x160; two norms of 64; final norm; head 1000x64
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 160 + 2 * 64
    assert shape.matmul_parameters == 3 * per_layer + 64 + 1000 * 64
    assert (shape.layers, shape.attention_width) == (3, 64)


def test_forward_and_training_flops_by_hand():
    shape = model_shape(small_config())
    n_params = shape.matmul_parameters
    # a sequence of 10 tokens: 2N per token; QK^T and AV over 1 + 2 + ... + 10 = 55 (query, key) pairs per layer
    assert shape.forward_flops([10]) == 2 * n_params * 10 + 2 * 2 * 3 * 64 * 55
    assert shape.forward_flops([10, 4]) == shape.forward_flops([10]) + shape.forward_flops([4])
    # packing never lets sequences attend to each other: one of 14 tokens costs more than 10 + 4
    assert shape.forward_flops([14]) > shape.forward_flops([10, 4])
    # policy: forward + backward = 3 forwards; a live reference adds its forward (2N per token)
    assert shape.training_flops([10, 4]) == 3 * shape.forward_flops([10, 4])
    assert shape.training_flops([10, 4], [10, 4]) == 4 * shape.forward_flops([10, 4])


def test_published_parameter_count_of_mistral_7b():
    config = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8)
    shape = model_shape(config)  # on the meta device: no 29 GB of memory needed
    assert shape.parameters == 7_241_732_096  # Mistral-7B's published 7.24B
    assert shape.matmul_parameters == 7_241_732_096 - 32000 * 4096


def test_matmul_peak_is_the_flops_of_a_timed_product(monkeypatch):
    import cst_dist.flops as flops

    clock = iter(range(100))  # every perf_counter() call advances 1 s: each timed product "takes" 1 s
    monkeypatch.setattr(flops.time, "perf_counter", lambda: float(next(clock)))
    assert flops.matmul_peak_flops("cpu", size=64, repeats=3) == 2 * 64**3
    monkeypatch.undo()
    measured = matmul_peak_flops("cpu", dtype=torch.float32, size=256, repeats=2)
    assert math.isfinite(measured) and measured > 1e6
