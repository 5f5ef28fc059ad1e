"""Chunked LM-head log-probs under DeepSpeed ZeRO-3 (gloo, CPU, 2 ranks): same loss and gradients as plain logits.

Under ZeRO-3 the head's weight (tied to the embedding here) is an empty partition outside the head's own forward and
backward; the chunked path must still see it whole in both. This file is also the torchrun worker (`__main__`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed
CHUNK = 3


def test_chunked_matches_plain_under_zero3(tmp_path):
    from cst_dist.training.distributed import _free_port

    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={_free_port()}", __file__, str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    result = json.loads(out.read_text())
    assert result["tied"] and result["partitioned"]  # the case the chunked path must get right is really there
    for layout in ("padded", "packed"):
        # Sums of ~30 tokens' log-probs (~170 in size): fp32 rounding of other matmul blockings stays far below.
        assert result[f"{layout}/logps_diff"] < 1e-5 * result[f"{layout}/logps_max"], result
        assert result[f"{layout}/loss_diff"] < 1e-5 * result[f"{layout}/logps_max"], result
        scale = result[f"{layout}/grad_max"]
        assert scale > 1e-3  # the gradients compared are not all zero
        assert result[f"{layout}/grad_diff"] < 1e-5 * max(1.0, scale), result
        assert result[f"{layout}/head_grad_diff"] < 1e-5 * max(1.0, scale), result
    assert result["reference_diff"] < 1e-5  # the frozen reference engine (parameters offloaded), no grad


def worker(out: Path) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_grad
    from transformers import LlamaConfig, LlamaForCausalLM

    from cst_dist.logprobs import forward_logps
    from cst_dist.training.deepspeed_config import fill_auto, load_template
    from cst_dist.training.distributed import setup_distributed

    env = setup_distributed()
    torch.manual_seed(0)  # the same initial model on both ranks
    config = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, attn_implementation="sdpa")

    def ds_config(template: str) -> dict:
        ds = fill_auto(load_template(template), micro_batch_size=2, accumulation=1, world_size=env.world_size,
                       max_grad_norm=1.0, bf16=False, hidden_size=32, zero_stage=3)
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition every parameter
        return ds

    model = LlamaForCausalLM(config).float()
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.0),
                                      config=ds_config("zero3_policy"))
    module = engine.module
    result = {"tied": module.lm_head.weight is module.model.embed_tokens.weight,
              "partitioned": module.lm_head.weight.data.numel() == 0 and module.lm_head.weight.ds_numel == 256 * 32}

    g = torch.Generator().manual_seed(1 + env.rank)  # each rank its own rows, as in training
    lengths, prompts = [9, 14, 6, 11], [3, 4, 2, 5]
    seqs = [torch.randint(1, 256, (n,), generator=g) for n in lengths]
    labels = [s.clone() for s in seqs]
    for label, prompt in zip(labels, prompts, strict=True):
        label[:prompt] = -100
    width = max(lengths)
    padded = {"input_ids": torch.zeros(4, width, dtype=torch.long), "attention_mask": torch.zeros(4, width,
              dtype=torch.long), "labels": torch.full((4, width), -100)}
    for i, (s, label) in enumerate(zip(seqs, labels, strict=True)):
        n = len(s)
        padded["input_ids"][i, :n], padded["attention_mask"][i, :n], padded["labels"][i, :n] = s, 1, label
    packed = {"input_ids": torch.cat(seqs)[None], "labels": torch.cat(labels)[None],
              "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
              "sequence_ids": torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]}
    weights = torch.tensor([0.5, 1.0, -0.7, 2.0])

    def step(batch, chunk_size):
        logps = forward_logps(engine, batch, 4, env.device, chunk_size=chunk_size)
        loss = (logps * weights).sum()
        engine.backward(loss)
        grads = {name: safe_get_full_grad(param).clone() for name, param in module.named_parameters()}
        engine.step()  # lr 0: the weights stay, the gradients are cleared
        return logps.detach(), loss.detach(), grads

    for layout, batch in (("padded", padded), ("packed", packed)):
        plain_logps, plain_loss, plain_grads = step(batch, None)
        chunked_logps, chunked_loss, chunked_grads = step(batch, CHUNK)
        head = "model.embed_tokens.weight"  # = lm_head.weight
        result.update({
            f"{layout}/logps_max": plain_logps.abs().max().item(),
            f"{layout}/logps_diff": (chunked_logps - plain_logps).abs().max().item(),
            f"{layout}/loss_diff": (chunked_loss - plain_loss).abs().item(),
            f"{layout}/grad_max": max(grad.abs().max().item() for grad in plain_grads.values()),
            f"{layout}/grad_diff": max((chunked_grads[name] - grad).abs().max().item()
                                       for name, grad in plain_grads.items()),
            f"{layout}/head_grad_diff": (chunked_grads[head] - plain_grads[head]).abs().max().item(),
        })

    reference_model = LlamaForCausalLM(config).float().requires_grad_(False)
    reference, *_ = deepspeed.initialize(model=reference_model, config=ds_config("zero3_reference_offload"))
    reference.eval()
    with torch.no_grad():
        plain = forward_logps(reference, padded, 4, env.device)
        chunked = forward_logps(reference, padded, 4, env.device, chunk_size=CHUNK)
    result["reference_diff"] = (chunked - plain).abs().max().item()

    gathered = [None] * env.world_size
    dist.all_gather_object(gathered, result)
    if env.is_rank_zero:  # flags must hold on every rank, differences are the largest of any rank
        merged = {key: (all if isinstance(value, bool) else max)(part[key] for part in gathered)
                  for key, value in result.items()}
        out.write_text(json.dumps(merged))
    dist.barrier()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
