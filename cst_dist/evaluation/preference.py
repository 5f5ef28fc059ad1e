"""Preference accuracy: the likelihood view of CST (cheap, deterministic, no judge, no generation).

On the held-out (`eval`) split of a `cst build` output, a pair counts as ranked right when its implicit DPO reward
prefers chosen: (policy_chosen - ref_chosen) > (policy_rejected - ref_rejected), with summed response log-probs. A
tie (policy == reference gives 0 = 0 everywhere) is not "above", so an untrained policy scores 0.0.

Rows: the split as built (harmless rows under s1 and s0, other tasks unchanged) plus every harmless pair re-posed
under each prompt of `eval.system_prompts`: chosen = y1 (the safe revision) under S1-condition prompts and under
prompts of no condition, chosen = y0 under S0-condition prompts (so the unseen S0 prompt asks for the uncensored
answer). A re-posed row identical to a built one is dropped, so each (system, pair) is counted once.

Entries {"model", "step", "system_prompt", "condition", "task", "n", "accuracy"}: harmless rows per system prompt;
rows of other tasks pooled per task (`system_prompt` null: persona sets carry one prompt per row). `n` counts the
rows scored (rows dropped by `data.over_length=skip` are logged, not counted); `accuracy` is null when n = 0.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from cst_dist.config import DataConfig, ModelConfig
from cst_dist.data.collate import EncodedPair, PairTokenizer, pad_batch
from cst_dist.data.preference_set import HARMLESS_TASK, PreferenceSetError, pair_key, read_split
from cst_dist.errors import UserError
from cst_dist.evaluation.scores import S0, condition_of
from cst_dist.logprobs import LOGITS_CHUNK_SIZE, chosen_rejected_logps
from cst_dist.models import load_model, load_tokenizer, resolve_model
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT

log = logging.getLogger(__name__)
ModelRef = ModelConfig | str | os.PathLike
# A preference folder that cannot give held-out rows: the floor reader's error (the old name stays for callers).
PreferenceDataError = PreferenceSetError
NO_EVAL_SPLIT = "rebuild it with build.eval_fraction=0.1 (or more), or set eval.preference=false"


def _pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(y0, y1) of every harmless pair, once: from its s1 row (chosen y1) or its s0 row (chosen y0)."""
    pairs: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        if row["task"] != HARMLESS_TASK or row["system"] not in (SAFE_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT):
            continue  # a harmless row under another prompt says nothing about which answer is y0
        y1, y0 = (row["chosen"], row["rejected"]) if row["system"] == SAFE_SYSTEM_PROMPT else (
            row["rejected"], row["chosen"])
        pairs.setdefault((row["prompt"], y0, y1), {"id": pair_key(row), "prompt": row["prompt"], "y0": y0, "y1": y1,
                                                   "source": row["source"], "row": row["row"]})
    return list(pairs.values())


def repose_rows(rows: list[dict[str, Any]], system_prompts: list[str]) -> list[dict[str, Any]]:
    """`rows` plus each harmless pair under every prompt of `system_prompts` (y0 chosen under S0-condition prompts,
    y1 otherwise); a row equal to one already present (same system, prompt, chosen, rejected) is not repeated."""
    result = list(rows)
    seen = {(r["system"], r["prompt"], r["chosen"], r["rejected"]) for r in rows}
    for pair in _pairs(rows):
        for index, system in enumerate(system_prompts):
            uncensored = condition_of(system) == S0
            chosen, rejected = (pair["y0"], pair["y1"]) if uncensored else (pair["y1"], pair["y0"])
            key = (system, pair["prompt"], chosen, rejected)
            if key in seen:
                continue
            seen.add(key)
            result.append({"id": f"{pair['id']}-p{index}", "system": system, "prompt": pair["prompt"],
                           "chosen": chosen, "rejected": rejected, "task": HARMLESS_TASK, "reposed": True,
                           "source": pair["source"], "row": pair["row"]})
    return result


def preference_rows(folder: str | os.PathLike, system_prompts: list[str], split: str = "eval"
                         ) -> list[dict[str, Any]]:
    """Held-out rows of a `cst build` folder, re-posed under `system_prompts` (`eval.system_prompts`).

    Rows: {id, system, prompt, chosen, rejected, task, source, row[, reposed]} (source/row: where a bad row came from).
    """
    rows = [{**row, "source": str(file), "row": number}
            for file, number, row in read_split(folder, split, "eval.preference_data", NO_EVAL_SPLIT)]
    if not rows:
        raise PreferenceDataError(f"the {split!r} split of {folder} (eval.preference_data) has no rows")
    return repose_rows(rows, system_prompts)


def _model_config(model: ModelRef) -> ModelConfig:
    return model if isinstance(model, ModelConfig) else ModelConfig(path=os.fspath(model))


def _device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def response_logps(model_config: ModelConfig, pairs: list[EncodedPair], pad_token_id: int, batch_size: int,
                   device: torch.device) -> torch.Tensor:
    """Summed response log-probs [len(pairs), 2] (chosen, rejected) under one plain HF model in eval mode.

    Pairs run longest first (less padding per batch); the result is in the order of `pairs`. The model is freed
    before returning, so policy and reference never sit in memory together.
    """
    model = load_model(resolve_model(model_config, device)).to(device).eval()
    result = torch.zeros(len(pairs), 2, dtype=torch.float64)
    order = sorted(range(len(pairs)), key=lambda i: -max(pairs[i].lengths()))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = pad_batch([pairs[i] for i in chunk], pad_token_id)
        logps = chosen_rejected_logps(model, batch, len(chunk), device, chunk_size=LOGITS_CHUNK_SIZE)
        result[chunk] = logps.stack().double().cpu()
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _tokenizer(policy: ModelConfig, reference: ModelConfig):
    """The policy's tokenizer, after checking the reference reads token ids the same way (same vocabulary)."""
    tokenizer = load_tokenizer(policy)
    if Path(reference.path).resolve() != Path(policy.path).resolve():
        if load_tokenizer(reference).get_vocab() != tokenizer.get_vocab():
            raise UserError(f"reference model {reference.path} (eval.reference) has another vocabulary than "
                            f"{policy.path}; preference accuracy needs the policy's own starting model")
    return tokenizer


def implicit_reward_margins(policy: ModelRef, reference: ModelRef, rows: list[dict[str, Any]],
                            data_config: DataConfig, batch_size: int = 4, device: str | torch.device | None = None,
                            memo: dict[str, torch.Tensor] | None = None) -> tuple[list[int], torch.Tensor]:
    """(indices of the rows scored, margins [len(indices)] float64): margin = (pi_c - ref_c) - (pi_r - ref_r).

    Rows are tokenized as in training (`PairTokenizer` under `data_config`); rows that `data.over_length=skip`
    drops are left out of the indices. A reference at the policy's own path is run once (every margin is 0).
    `device`: default the GPU when there is one (the models' dtype `auto` then means bf16), else the CPU.
    `memo`: log-probs by resolved model path, kept across calls on the same `rows` (one reference, several policies:
    the reference runs once); the caller owns it and must not reuse it for other rows.
    """
    policy, reference = _model_config(policy), _model_config(reference)
    tokenizer = _tokenizer(policy, reference)
    encoder = PairTokenizer(tokenizer, data_config)
    kept, pairs = [], []
    for index, row in enumerate(rows):
        pair = encoder.encode(row, row.get("source", "<preference rows>"), row.get("row"))
        if pair is not None:
            kept.append(index)
            pairs.append(pair)
    log.info("preference accuracy rows: %s", encoder.stats.summary())
    if not pairs:  # nothing fits: no model is loaded for nothing
        return kept, torch.zeros(0, dtype=torch.float64)
    device, memo = _device(device), {} if memo is None else memo

    def logps(model: ModelConfig) -> torch.Tensor:
        key = str(Path(model.path).resolve())
        if key not in memo:
            memo[key] = response_logps(model, pairs, tokenizer.pad_token_id, batch_size, device)
        return memo[key]

    policy_logps, reference_logps = logps(policy), logps(reference)
    rewards = policy_logps - reference_logps  # [N, 2]: chosen, rejected
    return kept, rewards[:, 0] - rewards[:, 1]


def _group_key(row: dict[str, Any]) -> tuple[str, str | None]:
    # Harmless rows per system prompt (the CST view); other tasks pooled: persona sets have one prompt per row.
    return (row["task"], row["system"] if row["task"] == HARMLESS_TASK else None)


def preference_accuracy(policy: ModelRef, reference: ModelRef, rows: list[dict[str, Any]], data_config: DataConfig,
                        model_name: str, step: int | None, batch_size: int = 4,
                        device: str | torch.device | None = None,
                        memo: dict[str, torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """Share of rows whose implicit DPO reward ranks chosen above rejected, per group (first-seen order):
    [{"model", "step", "system_prompt", "condition", "task", "n", "accuracy"}]; see the module docstring."""
    kept, margins = implicit_reward_margins(policy, reference, rows, data_config, batch_size, device, memo)
    correct = dict(zip(kept, (margins > 0).tolist(), strict=True))
    groups: dict[tuple[str, str | None], list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(_group_key(row), []).append(index)
    entries = []
    for (task, system), members in groups.items():
        scored = [correct[i] for i in members if i in correct]
        entries.append({"model": model_name, "step": step, "system_prompt": system, "condition": condition_of(system),
                        "task": task, "n": len(scored), "accuracy": sum(scored) / len(scored) if scored else None})
    return entries
