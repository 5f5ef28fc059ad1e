"""`cst export RUN_DIR`: a sharded ZeRO checkpoint -> a Hugging Face folder (safetensors + tokenizer + template).

Consolidation is DeepSpeed's own (`get_fp32_state_dict_from_zero_checkpoint`, the code behind zero_to_fp32.py), so
our export and `zero_to_fp32.py` agree by construction; it runs on one CPU process, no GPU or launcher needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cst_dist.config import RunConfig, load_run_config
from cst_dist.io import atomic_directory, check_output_dir, write_json_atomic
from cst_dist.models import load_model_config, load_tokenizer
from cst_dist.run_layout import EXPORT_MARKER, RunLayout
from cst_dist.training.checkpoint import MARKER

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_tag(layout: RunLayout, tag: str | None) -> str:
    root = layout.checkpoints
    if tag is None:
        latest = root / "latest"
        if not latest.is_file():
            raise FileNotFoundError(f"{layout.root}: no complete checkpoint ({latest} missing); train first")
        tag = latest.read_text().strip()
    if not (root / tag / MARKER).is_file():
        raise FileNotFoundError(f"{root / tag} is not a complete checkpoint (no {MARKER})")
    return tag


def checkpoint_config(layout: RunLayout, tag: str) -> RunConfig:
    """The config the checkpoint was trained with (stored in it; the run folder's for older checkpoints), with its
    relative paths resolved against the run's root: a later command in the run folder cannot change it."""
    stored = layout.checkpoint(tag) / "config.yaml"
    return load_run_config(stored if stored.is_file() else layout.config_file, layout.root)


def check_export_output(output: Path, layout: RunLayout, tag: str, overwrite: bool) -> bool:
    """Made before the consolidation (minutes on a 7B model): True when an earlier export is replaced."""
    inputs = [layout.root, layout.checkpoint(tag)]
    return check_output_dir(output, EXPORT_MARKER, "export", overwrite, inputs, "--output", "pass --overwrite")


def export_checkpoint(layout: RunLayout, tag: str | None = None, dtype: str = "float32",
                      output: str | Path | None = None, overwrite: bool = False) -> Path:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    tag = resolve_tag(layout, tag)
    config = checkpoint_config(layout, tag)
    output = Path(output) if output else layout.export(tag)
    replace = check_export_output(output, layout, tag, overwrite)
    state = get_fp32_state_dict_from_zero_checkpoint(str(layout.checkpoints), tag=tag)
    model_config = load_model_config(config.model)
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32,
                                             trust_remote_code=config.model.trust_remote_code)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied:
        raise ValueError(f"{tag} does not fit {config.model.path}: missing {missing}, unexpected {unexpected}")
    model.to(DTYPES[dtype])
    with atomic_directory(output, replace=replace) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        load_tokenizer(config.model).save_pretrained(staging)  # carries the chat template
        write_json_atomic(staging / EXPORT_MARKER, {"stage": "export", "tag": tag, "dtype": dtype})
    log.info("exported %s (%s) to %s", tag, dtype, output)
    return output
