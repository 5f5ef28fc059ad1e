"""DeepSpeed engines for the policy (trained) and the reference (frozen); both run `cst_dist.logprobs.forward_logps`."""

from __future__ import annotations

import logging

import torch

from cst_dist.config import TrainConfig
from cst_dist.models import ModelSpec, load_model
from cst_dist.training import deepspeed_config
from cst_dist.training.data import BatchPlan

log = logging.getLogger(__name__)


def load_partitioned_model(spec: ModelSpec, ds_config: dict):
    """Load the model so that, under ZeRO-3, every rank holds only its partition, never a full host copy.

    transformers checks a live HfDeepSpeedConfig while `from_pretrained` runs; it must exist before the call.
    """
    from transformers.integrations import HfDeepSpeedConfig

    keep_alive = HfDeepSpeedConfig(ds_config) if ds_config["zero_optimization"]["stage"] == 3 else None
    model = load_model(spec)
    del keep_alive
    disable_dropout(model)
    model.config.use_cache = False  # a KV cache also disables the packed-sequence mask in transformers
    return model


def disable_dropout(model: torch.nn.Module) -> None:
    """DPO compares log-probs of policy and reference: dropout noise in either biases the loss (TRL does the same)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(model.config, name):
            setattr(model.config, name, 0.0)


def setup_policy_engine(spec: ModelSpec, train: TrainConfig, plan: BatchPlan, total_steps: int):
    """Policy under ZeRO-3 with AdamW and a linear/cosine schedule; returns (engine, lr scheduler)."""
    import deepspeed
    from transformers import get_scheduler

    bf16 = spec.dtype == torch.bfloat16
    ds_config = deepspeed_config.policy_config(train, plan, bf16, spec.hidden_size)
    model = load_partitioned_model(spec, ds_config)
    # from_pretrained returns eval mode, and transformers recomputes layers only in training mode: without this,
    # gradient checkpointing is silently off (dropout stays off either way: disable_dropout).
    model.train()
    if train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=train.learning_rate, betas=train.adam_betas, weight_decay=train.weight_decay
    )
    scheduler = get_scheduler(
        "constant_with_warmup" if train.lr_scheduler == "constant" else train.lr_scheduler, optimizer,
        num_warmup_steps=int(train.warmup_ratio * total_steps), num_training_steps=total_steps,
    )
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine, scheduler


def setup_reference_engine(spec: ModelSpec, train: TrainConfig, plan: BatchPlan):
    """The frozen reference as a DeepSpeed inference engine (ZeRO-3, parameters offloaded to CPU by default)."""
    import deepspeed

    ds_config = deepspeed_config.reference_config(train, plan, spec.dtype == torch.bfloat16, spec.hidden_size)
    model = load_partitioned_model(spec, ds_config)
    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    engine.eval()
    log.info("reference engine: ZeRO stage %d, parameter offload %s", ds_config["zero_optimization"]["stage"],
             ds_config["zero_optimization"].get("offload_param", {}).get("device", "none"))
    return engine
