"""Gradient checkpointing is active when asked for: every decoder layer's attention runs again during backward (the
recomputation), and only then. It used to be silently off: the policy stayed in eval mode, where transformers does
not checkpoint."""

from __future__ import annotations

import pytest
import torch

from cst_dist.config import load_config
from cst_dist.models import resolve_model
from cst_dist.training.data import BatchPlan
from cst_dist.training.distributed import setup_distributed
from cst_dist.training.engine import setup_policy_engine


@pytest.mark.parametrize(("checkpointing", "forwards_per_layer"), [(False, 1), (True, 2)])
def test_each_layer_is_recomputed_only_with_checkpointing(tiny_model_config, checkpointing, forwards_per_layer):
    config = load_config("tiny-cpu", [f"model.path={tiny_model_config.path}", "model.tiny=null",
                                      f"train.gradient_checkpointing={str(checkpointing).lower()}"])
    env = setup_distributed()
    spec, plan = resolve_model(config.model, env.device), BatchPlan.of(config.train, env.world_size)
    engine, _ = setup_policy_engine(spec, config.train, plan, total_steps=1)
    assert engine.module.training  # the policy trains in training mode (dropout is off regardless)
    layers = engine.module.model.layers
    calls = [0] * len(layers)
    # Counted at the attention's start: transformers checkpoints a layer's forward inside the layer's own hooks, and
    # torch stops a recomputation once the last saved tensor is back (before a submodule's post-forward hook).
    for index, layer in enumerate(layers):
        layer.self_attn.register_forward_pre_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    input_ids = torch.arange(3, 35).unsqueeze(0)
    loss = engine(input_ids=input_ids, labels=input_ids).loss
    engine.backward(loss)
    assert calls == [forwards_per_layer] * len(layers)
