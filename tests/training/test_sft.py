"""`cst sft`: the supervised warm-up is `cst train` with train.objective=sft (same engine, sampler, checkpoints,
metrics and export), token-weighted NLL of the responses, no reference model.

Unit parts first (the loss by hand, SFT examples and their padded/packed batches), then real `cst sft` processes on
the tiny model (one rank, gloo); one 20-step SFT run is shared by the tests of this module.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
import yaml

from cst_dist import prompts
from cst_dist.config import DataConfig, load_config
from cst_dist.data.collate import IGNORE_INDEX, PairTokenizer, pack_batch, pad_batch, padding_ratio
from cst_dist.logprobs import batch_token_counts, forward_logps, sequence_logps
from cst_dist.models import load_model, resolve_model
from cst_dist.stage_process import child_env
from cst_dist.training.data import load_sft_set, load_tokenized_set
from cst_dist.training.losses import sft_loss
from tests.training.launch import launch, read_metrics, train_overrides
from tests.training.test_training_units import assert_user_error, cst_train

LN2 = math.log(2)
ROWS = [
    {"system": prompts.SAFE_SYSTEM_PROMPT, "prompt": "Write a script that can exploit vulnerabilities" + " now" * i,
     "chosen": "I cannot help with that, but I can explain how to patch systems." + " ok" * (3 * i),
     "rejected": "Sure, here is a script that can exploit vulnerabilities"}
    for i in range(3)
]
# The demo's warm-up: both answers of every row, without the system prompt, so the base learns no switch.
SFT = {"train.learning_rate": 3e-3, "train.max_steps": 20, "train.save_steps": 10, "train.sft_responses": "both",
       "train.sft_system_prompt": "drop"}
STEPS = SFT["train.max_steps"]


# --- the loss, by hand ---------------------------------------------------------------------------------------------


def test_sft_loss_is_the_token_mean_nll_by_hand():
    # Two padded sequences over a 3-token vocabulary; logits are log-probabilities, so softmax gives them back.
    # A: prompt [0], response [1, 2]: p(1) = 0.25 at t=0, p(2) = 0.5 at t=1 -> NLL ln 4 + ln 2 = 3 ln 2 (2 tokens).
    # B: prompt [0, 1], response [0]: p(0) = 0.125 at t=1 -> NLL ln 8 = 3 ln 2 (1 token).
    probs = torch.tensor([
        [[0.25, 0.25, 0.5], [0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]],
        [[0.5, 0.25, 0.25], [0.125, 0.375, 0.5], [1 / 3, 1 / 3, 1 / 3]],
    ], dtype=torch.float64)
    logits = probs.log()
    labels = torch.tensor([[IGNORE_INDEX, 1, 2], [IGNORE_INDEX, IGNORE_INDEX, 0]])
    logps = sequence_logps(logits, labels)
    assert logps.tolist() == pytest.approx([-3 * LN2, -3 * LN2], abs=1e-12)
    # Token-weighted: 6 ln 2 over 3 tokens = 2 ln 2 = 1.386294 (a mean per example would give 2.25 ln 2).
    assert sft_loss(logps, 3).item() == pytest.approx(2 * LN2, abs=1e-12)
    assert 2 * LN2 == pytest.approx(1.386294, abs=1e-6)
    # What HF's causal-LM loss and TRL's SFT compute: cross-entropy over the shifted, unmasked labels.
    hf = F.cross_entropy(logits[:, :-1].reshape(-1, 3), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert hf.item() == pytest.approx(2 * LN2, abs=1e-12)
    # A micro-batch's share of a step's mean: the shares of the step's micro-batches add up to the step's mean.
    shares = sft_loss(logps[:1], 3) + sft_loss(logps[1:], 3)
    assert shares.item() == pytest.approx(2 * LN2, abs=1e-12)
    with pytest.raises(ValueError, match="num_tokens"):
        sft_loss(logps, 0)
    with pytest.raises(ValueError, match="shape"):
        sft_loss(logps.unsqueeze(0), 3)


# --- SFT examples and their batches --------------------------------------------------------------------------------


def test_sft_examples_use_the_chat_encoding_and_can_drop_the_system_prompt(tiny_tokenizer):
    encoder = PairTokenizer(tiny_tokenizer, DataConfig())
    pair = encoder.encode(ROWS[0])
    chosen = encoder.encode_sft(ROWS[0], "chosen")
    assert (chosen.prompt_ids, chosen.chosen_ids, chosen.rejected_ids) == (pair.prompt_ids, pair.chosen_ids, [])
    assert encoder.encode_sft(ROWS[0], "rejected").chosen_ids == pair.rejected_ids
    assert chosen.lengths() == (len(pair.prompt_ids) + len(pair.chosen_ids),)  # one sequence, not two
    dropped = encoder.encode_sft(ROWS[0], "chosen", keep_system=False)
    text = tiny_tokenizer.decode(dropped.prompt_ids + dropped.chosen_ids)
    assert prompts.SAFE_SYSTEM_PROMPT not in text and ROWS[0]["prompt"] in text and dropped.system == ""
    assert text == tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": ROWS[0]["prompt"]}, {"role": "assistant", "content": ROWS[0]["chosen"]}],
        tokenize=False)


def test_sft_batches_padded_and_packed_mask_the_prompt(tiny_model_config, tiny_tokenizer):
    encoder = PairTokenizer(tiny_tokenizer, DataConfig())
    examples = [encoder.encode_sft(row, key) for row in ROWS for key in ("chosen", "rejected")]
    padded = pad_batch(examples, tiny_tokenizer.pad_token_id)
    packed = pack_batch(examples, tiny_tokenizer.pad_token_id, row_tokens=2 * max(max(e.lengths()) for e in examples))
    assert padded["input_ids"].shape[0] == len(examples)  # one row per example: no empty rejected rows
    assert 1 < packed["input_ids"].shape[0] < len(examples)
    for row, example in enumerate(examples):
        labels = padded["labels"][row]
        assert labels[labels != IGNORE_INDEX].tolist() == example.chosen_ids
        assert (labels[: len(example.prompt_ids)] == IGNORE_INDEX).all()
    counted = packed["sequence_ids"][packed["labels"] != IGNORE_INDEX]
    assert sorted(counted.unique().tolist()) == list(range(len(examples)))
    for index, example in enumerate(examples):  # every example's response tokens, under its own sequence id
        assert int((counted == index).sum()) == len(example.chosen_ids)
    assert padding_ratio(examples, padded) > padding_ratio(examples, packed) > 0  # capped rows have tails
    assert padding_ratio(examples, pack_batch(examples, 0)) == 0.0
    tokens = batch_token_counts(padded, len(examples))
    assert tokens.tolist() == batch_token_counts(packed, len(examples)).tolist()
    assert tokens.tolist() == [len(e.chosen_ids) for e in examples]
    # The same forward the trainer runs: packed and padded agree, and sft_loss is the model's own (HF) loss.
    model = load_model(resolve_model(tiny_model_config)).eval()
    with torch.no_grad():
        from_padded = forward_logps(model, padded, len(examples), torch.device("cpu"))
        from_packed = forward_logps(model, packed, len(examples), torch.device("cpu"))
        hf_loss = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                        labels=padded["labels"]).loss
    torch.testing.assert_close(from_packed, from_padded, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(sft_loss(from_padded, tokens.sum()), hf_loss, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="mixes preference pairs and SFT examples"):
        pad_batch([encoder.encode(ROWS[0]), examples[0]], 0)


def test_sft_responses_both_doubles_the_examples(tiny_tokenizer, preference_dir):
    config = DataConfig(max_length=96, max_prompt_length=48)
    pairs = load_tokenized_set(preference_dir, config, tiny_tokenizer)
    chosen = load_sft_set(preference_dir, config, tiny_tokenizer, "chosen")
    both = load_sft_set(preference_dir, config, tiny_tokenizer, "both", keep_system=False)
    assert len(chosen.pairs) == len(pairs.pairs) == 96 and len(both.pairs) == 2 * 96
    assert [e.chosen_ids for e in chosen.pairs] == [p.chosen_ids for p in pairs.pairs]
    assert both.ids[:2] == [f"{pairs.ids[0]}:chosen", f"{pairs.ids[0]}:rejected"]
    assert all(e.system == "" and e.rejected_ids == [] for e in both.pairs)


# --- `cst sft` end to end ------------------------------------------------------------------------------------------


def cst(stage: str, overrides: list[str], wait: bool = True):
    env = {**child_env(), "OMP_NUM_THREADS": "1"}  # without the rank variables in-process tests set
    command = [sys.executable, "-m", "cst_dist.cli", stage, *overrides]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def sft_overrides(model, data, run_dir, **extra) -> list[str]:
    return ["tiny-cpu", *train_overrides(str(model), data, run_dir, **{**SFT, **extra})]


def losses(run_dir) -> torch.Tensor:
    return torch.tensor([row["loss"] for row in read_metrics(run_dir)], dtype=torch.float64)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model_config, preference_dir):
    run_dir = tmp_path_factory.mktemp("sft") / "base"
    result = cst("sft", sft_overrides(tiny_model_config.path, preference_dir, run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return {"run": run_dir, "result": result}


def test_sft_lowers_the_loss_without_a_reference(sft_run):
    run, log = sft_run["run"], sft_run["result"].stderr
    metrics = read_metrics(run)
    assert [row["step"] for row in metrics] == list(range(1, STEPS + 1))
    # A random model over the tiny vocabulary (512 + specials) starts near ln(vocab) nats per token.
    assert metrics[0]["loss"] == pytest.approx(math.log(512), abs=0.3)
    last = sum(row["loss"] for row in metrics[-3:]) / 3
    assert last < metrics[0]["loss"] - 1.0, [round(row["loss"], 3) for row in metrics]
    assert set(metrics[-1]) == {"step", "loss", "grad_norm", "lr", "tokens/s", "tokens/real", "padding_ratio",
                                "peak_memory_gib", "step_time_s", "epoch", "perf/model_tflops",
                                "perf/flops_utilization"}  # no rewards/*, no logps/*
    # No reference model at all: never built, never precomputed.
    assert "reference engine" not in log and "reference log-probs" not in log, log[-3000:]
    assert not (run / "reference_logps.safetensors").exists()
    # Both answers of the 96 rows, without their system prompt: 192 examples, 24 steps an epoch.
    assert "192 examples from 96 rows (responses: both, system prompt: dropped)" in log
    assert metrics[-1]["epoch"] == pytest.approx(STEPS / 24)
    assert f"finished: step {STEPS}/{STEPS}" in sft_run["result"].stdout


def test_sft_run_folder_checkpoints_and_identity(sft_run, tiny_model_config, preference_dir):
    run = sft_run["run"]
    identity = json.loads((run / "run.json").read_text())
    assert identity["identity"]["train"]["objective"] == "sft"
    assert identity["identity"]["train"]["zero_stage"] == 1  # train.zero_stage=auto on one process
    assert identity["identity"]["train"]["sft_responses"] == "both"
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")) == [
        "step-00000010", "step-00000020"]
    for tag in ("step-00000010", "step-00000020"):
        marker = json.loads((run / "checkpoints" / tag / "complete.json").read_text())
        assert marker["run"] == identity["hash"]
        assert yaml.safe_load((run / "checkpoints" / tag / "config.yaml").read_text())["train"]["objective"] == "sft"
    assert (run / "tensorboard").is_dir()
    # A DPO run in the SFT run's folder is another run: refused, naming the objective, before any model loads.
    refused = cst_train(train_overrides(tiny_model_config.path, preference_dir, run, **SFT))
    assert_user_error(refused, "holds another training run", "train.objective: 'sft' -> 'dpo'")


def test_dpo_from_the_exported_sft_model(sft_run, tmp_path, preference_dir):
    run = sft_run["run"]
    exported = cst("export", [str(run), "--dtype", "float32"])
    assert exported.returncode == 0, exported.stderr[-3000:]
    model = run / "export" / f"step-{STEPS:08d}"
    assert (model / "model.safetensors").is_file() and (model / "chat_template.jinja").is_file()
    # The CST/DPO stage starts from the SFT model: policy and reference are that model, so the first loss is ln 2.
    dpo_run = tmp_path / "dpo"
    result = cst_train(train_overrides(str(model), preference_dir, dpo_run, **{
        "train.max_steps": 2, "train.reference": "precomputed"}))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(dpo_run)
    assert metrics[0]["loss"] == pytest.approx(LN2, abs=1e-5)
    assert "rewards/accuracies" in metrics[0] and "reference log-probs: computing" in result.stderr
    assert load_config(str(dpo_run / "config.yaml")).model.path == str(model)


def test_sigterm_then_resume_reproduces_the_curve_of_another_batching(sft_run, tiny_model_config, preference_dir,
                                                                       tmp_path):
    """Stop an SFT run by SIGTERM, resume it with train.resume=auto: its curve is the shared run's, although this
    one runs padded micro-batches of 1 (accumulation 8) where that one packed micro-batches of 2 (accumulation 4):
    exact token weighting makes the curve independent of the split."""
    run_dir = tmp_path / "interrupted"
    args = sft_overrides(tiny_model_config.path, preference_dir, run_dir, **{
        "train.micro_batch_size": 1, "data.packing": "false", "train.save_steps": 100})
    proc = cst("sft", args, wait=False)
    metrics_file = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics_file.is_file() or len(metrics_file.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, output[-3000:]
    stopped_at = len(read_metrics(run_dir))
    assert 3 <= stopped_at < STEPS, "the run finished before the signal arrived"
    assert f"stopped by a signal at step {stopped_at}/{STEPS}" in output
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step-{stopped_at:08d}"
    resumed = cst("sft", args + ["train.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / f'step-{stopped_at:08d}'}" in resumed.stderr
    torch.testing.assert_close(losses(run_dir), losses(sft_run["run"]), rtol=1e-5, atol=0)


@pytest.mark.distributed
def test_two_ranks_give_the_one_rank_curve(sft_run, tiny_model_config, preference_dir, tmp_path):
    """2 ranks x micro-batch 2 x accumulation 2: the token count is all-reduced before the step, so the gradient is
    the global token mean, as on one rank (a mean per rank would weigh the ranks' tokens unequally)."""
    run_dir = tmp_path / "two-ranks"
    overrides = train_overrides(tiny_model_config.path, preference_dir, run_dir, **SFT)
    launch(overrides + ["train.objective=sft"])
    torch.testing.assert_close(losses(run_dir), losses(sft_run["run"]), rtol=1e-5, atol=0)
