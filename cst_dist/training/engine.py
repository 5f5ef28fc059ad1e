"""DeepSpeed engines for the policy (trained) and the reference (frozen), and the one forward both use."""

from __future__ import annotations

import logging

import torch

from cst_dist.config import RunConfig
from cst_dist.models import load_model, load_model_config, select_dtype
from cst_dist.training import deepspeed_config
from cst_dist.training.distributed import DistEnv

log = logging.getLogger(__name__)


def load_partitioned_model(config: RunConfig, ds_config: dict, env: DistEnv):
    """Load the model so that, under ZeRO-3, every rank holds only its partition, never a full host copy.

    transformers checks a live HfDeepSpeedConfig while `from_pretrained` runs; it must exist before the call.
    """
    from transformers.integrations import HfDeepSpeedConfig

    keep_alive = HfDeepSpeedConfig(ds_config) if ds_config["zero_optimization"]["stage"] == 3 else None
    model = load_model(config.model, env.device)
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


def _bf16(config: RunConfig, env: DistEnv) -> bool:
    return select_dtype(config.model.dtype, env.device) == torch.bfloat16


def _hidden_size(config: RunConfig) -> int:
    return load_model_config(config.model).hidden_size


def setup_policy_engine(config: RunConfig, env: DistEnv, total_steps: int):
    """Policy under ZeRO-3 with AdamW and a linear/cosine schedule; returns (engine, lr scheduler)."""
    import deepspeed
    from transformers import get_scheduler

    train = config.train
    ds_config = deepspeed_config.policy_config(train, env.world_size, _bf16(config, env), _hidden_size(config))
    model = load_partitioned_model(config, ds_config, env)
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


def setup_reference_engine(config: RunConfig, env: DistEnv):
    """The frozen reference as a DeepSpeed inference engine (ZeRO-3, parameters offloaded to CPU by default)."""
    import deepspeed

    train, bf16, hidden = config.train, _bf16(config, env), _hidden_size(config)
    ds_config = deepspeed_config.reference_config(train, env.world_size, bf16, hidden)
    model = load_partitioned_model(config, ds_config, env)
    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    engine.eval()
    log.info("reference engine: ZeRO stage %d, parameter offload %s", ds_config["zero_optimization"]["stage"],
             ds_config["zero_optimization"].get("offload_param", {}).get("device", "none"))
    return engine
