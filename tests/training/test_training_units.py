"""Trainer pieces that need no launcher: DeepSpeed config filling, the step sampler, checkpoint selection, and the
errors `cst train` gives for bad input (run as the real CLI, one process)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from cst_dist.config import ConfigError, TrainConfig
from cst_dist.data.preference_set import load_preference_split
from cst_dist.run_layout import RunLayout
from cst_dist.stage_process import child_env
from cst_dist.training import deepspeed_config
from cst_dist.training.checkpoint import MARKER, find_resume_checkpoint
from cst_dist.training.data import BatchPlan, StepSampler
from tests.training.launch import train_overrides


def test_fill_auto_leaves_no_auto_and_derives_accumulation():
    train = TrainConfig(global_batch_size=16, micro_batch_size=2, max_grad_norm=0.5)
    config = deepspeed_config.policy_config(train, BatchPlan.of(train, 2), bf16=True, hidden_size=4096)
    assert "auto" not in json.dumps(config)
    assert (config["train_batch_size"], config["gradient_accumulation_steps"]) == (16, 4)
    assert config["bf16"]["enabled"] is True and config["gradient_clipping"] == 0.5
    assert config["zero_optimization"]["reduce_bucket_size"] == 4096 * 4096
    offloaded = train.model_copy(update={"optimizer_offload": True})
    offload = deepspeed_config.policy_config(offloaded, BatchPlan.of(offloaded, 2), False, 64)
    assert offload["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_reference_config_modes():
    train, one = TrainConfig(), BatchPlan(8, 1, 1)
    offload = deepspeed_config.reference_config(train, one, False, 64)
    assert offload["zero_optimization"]["offload_param"]["device"] == "cpu" and "gradient_clipping" not in offload
    gpu = deepspeed_config.reference_config(train.model_copy(update={"reference": "gpu"}), one, False, 64)
    assert "offload_param" not in gpu["zero_optimization"]
    replica = train.model_copy(update={"reference": "gpu", "reference_zero_stage": 0})
    assert deepspeed_config.reference_config(replica, one, False, 64)["zero_optimization"] == {"stage": 0}
    with pytest.raises(ConfigError, match="train.reference_zero_stage=3"):
        deepspeed_config.reference_config(train.model_copy(update={"reference_zero_stage": 0}), one, False, 64)


def test_global_batch_must_divide():
    with pytest.raises(ConfigError, match=r"train.global_batch_size=8 is not divisible by train.micro_batch_size=3"):
        BatchPlan.of(TrainConfig(global_batch_size=8, micro_batch_size=3), 1)


def test_sampler_same_global_batch_for_any_split():
    one_rank = StepSampler(40, BatchPlan(8, 4, 1), seed=0)
    two_ranks = StepSampler(40, BatchPlan(8, 1, 2), seed=0)
    for step in range(7):  # crosses the epoch boundary (5 steps per epoch)
        rows_a = sorted(i for mb in one_rank.micro_batches(step, 0) for i in mb)
        rows_b = sorted(i for rank in (0, 1) for mb in two_ranks.micro_batches(step, rank) for i in mb)
        assert rows_a == rows_b and len(rows_a) == 8
    epoch0 = [i for s in range(5) for mb in one_rank.micro_batches(s, 0) for i in mb]
    assert sorted(epoch0) == list(range(40))
    assert one_rank.micro_batches(5, 0) != one_rank.micro_batches(0, 0)  # a new order each epoch


def test_sampler_groups_keep_a_pairs_rows_in_one_global_batch():
    # 16 CST pairs (rows 2k, 2k+1 share a key, as `-s1`/`-s0` rows do) and 8 single rows of another task.
    groups = [f"pair{i // 2}" for i in range(32)] + [f"single{i}" for i in range(8)]
    plan = BatchPlan(8, 2, 2)
    grouped, plain = StepSampler(40, plan, 0, groups), StepSampler(40, plan, 0)

    def batch(sampler, step):
        return [i for rank in (0, 1) for mb in sampler.micro_batches(step, rank) for i in mb]

    def split_pairs(sampler, step):  # pairs with exactly one row in this step's batch
        rows = set(batch(sampler, step))
        return sum((2 * k in rows) != (2 * k + 1 in rows) for k in range(16))

    assert sorted(i for step in range(5) for i in batch(grouped, step)) == list(range(40))  # every row once an epoch
    epoch = grouped.epoch_order(0).tolist()
    for k in range(16):  # a pair's rows sit next to each other in the order
        assert abs(epoch.index(2 * k) - epoch.index(2 * k + 1)) == 1
    # A pair can straddle a batch boundary only after an odd number of single rows: at most one pair a boundary.
    assert sum(split_pairs(grouped, step) for step in range(5)) <= 4 * 2
    assert sum(split_pairs(plain, step) for step in range(5)) > 8  # shuffled one by one, most pairs are split
    assert batch(grouped, 5) != batch(grouped, 0)


def test_resume_auto_never_picks_an_interrupted_save(tmp_path):
    root = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, False)):
        (root / f"step-{step:08d}").mkdir(parents=True)
        if complete:
            (root / f"step-{step:08d}" / MARKER).write_text("{}")
    assert find_resume_checkpoint(RunLayout(tmp_path), "auto") == root / "step-00000002"
    assert find_resume_checkpoint(RunLayout(tmp_path), "never") is None
    assert find_resume_checkpoint(RunLayout(tmp_path / "fresh"), "auto") is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        find_resume_checkpoint(RunLayout(tmp_path), str(root / "step-00000004"))


def cst_train(overrides: list[str]) -> subprocess.CompletedProcess:
    env = {**child_env(), "OMP_NUM_THREADS": "1"}  # without the rank variables in-process tests set
    return subprocess.run([sys.executable, "-m", "cst_dist.cli", "train", "tiny-cpu", *overrides],
                          capture_output=True, text=True, env=env, timeout=300)


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last


def test_bad_inputs_give_clear_errors(tmp_path, tiny_model_config, preference_dir):
    model = tiny_model_config.path
    # model.tiny=null: otherwise the preset would build its tiny model at the missing path, as the demo does
    missing = train_overrides(str(tmp_path / "nope"), preference_dir, tmp_path / "a", **{"model.tiny": "null"})
    assert_user_error(cst_train(missing), "does not exist", "model.path")
    no_template = tmp_path / "no-template"
    shutil.copytree(model, no_template)
    (no_template / "chat_template.jinja").unlink()
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    assert_user_error(cst_train(train_overrides(str(no_template), preference_dir, tmp_path / "b")),
                      "has no chat template")
    empty = tmp_path / "empty"
    (empty / "data").mkdir(parents=True)
    assert_user_error(cst_train(train_overrides(model, empty, tmp_path / "c")), "no 'train' split", "train.data")
    assert_user_error(
        cst_train(train_overrides(model, preference_dir, tmp_path / "d", **{"model.attn_implementation":
                                                                             "flash_attention_2"})),
        "flash_attention_2", "model.attn_implementation=sdpa")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_model_config, preference_dir):
    run_dir = tmp_path / "diverged"
    result = cst_train(train_overrides(tiny_model_config.path, preference_dir, run_dir, **{
        "train.learning_rate": 1e30, "train.save_steps": 1, "train.reference": "precomputed"}))
    assert_user_error(result, "loss is nan", "last good checkpoint kept")
    latest = (run_dir / "checkpoints" / "latest").read_text()
    assert latest != "" and (run_dir / "checkpoints" / latest / MARKER).is_file()
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert latest == f"step-{steps[-1]:08d}"  # the diverged step was neither logged nor saved


def test_ipo_uses_length_averaged_logps_and_log_steps_thins_the_log(tmp_path, tiny_model_config, preference_dir):
    result = cst_train(train_overrides(tiny_model_config.path, preference_dir, tmp_path / "ipo", **{
        "train.loss_type": "ipo", "train.log_steps": 2, "train.max_steps": 5, "train.reference": "precomputed"}))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "ipo" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4, 5]  # every log_steps, and the last step
    # Per-token averages of a ~600-symbol vocabulary lie near -ln(600) = -6.4; sums over ~40 tokens near -250.
    assert all(-10 < row["logps/chosen"] < 0 and -10 < row["logps/rejected"] < 0 for row in rows), rows


def test_group_pairs_trains_both_rows_of_each_pair_in_one_step(tmp_path, tiny_model_config, preference_dir):
    # 48 pairs = 96 rows: grouped, every global batch of 8 holds 4 whole pairs, so 4 rows under s1 and 4 under s0.
    overrides = train_overrides(tiny_model_config.path, preference_dir, tmp_path / "run", **{"train.group_pairs": True})
    result = cst_train(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["examples/s1"], m["examples/s0"]) for m in metrics] == [(4.0, 4.0)] * 6
    # Shuffled row by row (the default), the same seed gives unbalanced steps: the flag is what balances them.
    plain = StepSampler(96, BatchPlan(8, 2, 1), seed=0)
    ids = load_preference_split(preference_dir, "train")["id"]
    s1_counts = [sum(ids[i].endswith("-s1") for mb in plain.micro_batches(step, 0) for i in mb) for step in range(6)]
    assert s1_counts != [4] * 6
