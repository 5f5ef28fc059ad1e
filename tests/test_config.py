"""Config loading: presets validate, dotted overrides apply with types, unknown keys and bad types name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cst_dist.config import PRESET_DIR, ConfigError, load_config, save_resolved_config

PRESETS = sorted(PRESET_DIR.rglob("*.yaml"))


def test_every_preset_validates():
    assert {p.stem for p in PRESETS} >= {"tiny-cpu", "smollm2-135m-cpu", "mistral-7b", "solar-10.7b"}
    assert len(PRESETS) == 4  # a new preset must be added here on purpose, so none goes unvalidated
    for path in PRESETS:
        load_config(str(path))


def test_overrides_are_typed_and_nested():
    config = load_config("tiny-cpu", ["train.beta=0.05", "build.mode=dpo", "build.extra_tasks=[a.jsonl, b.jsonl]"])
    assert config.train.beta == 0.05 and config.build.mode == "dpo"
    assert config.build.extra_tasks == ["a.jsonl", "b.jsonl"]
    assert config.train_data_dir == Path("runs/tiny-cpu/preference")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.betaa=0.1", "train.betaa: unknown key"),
        ("train.beta=fast", "train.beta: Input should be a valid number"),
        ("train.beta=-1", "train.beta: Input should be greater than 0"),
        ("build.mode=ppo", "build.mode: Input should be 'cst' or 'dpo'"),
        ("data.max_prompt_length=600", "data.max_prompt_length (600) must be < data.max_length (128)"),
        ("train.loss_type=ipo", None),
        ("beta", "not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    if message is None:  # ipo with the preset's (zero) smoothing is fine; with smoothing it is not
        load_config("tiny-cpu", [override])
        with pytest.raises(ConfigError, match="train.label_smoothing"):
            load_config("tiny-cpu", [override, "train.label_smoothing=0.1"])
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("tiny-cpu", [override])


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="tiny-cpu"):
        load_config("no-such-preset")


def test_resolved_config_round_trips(tmp_path):
    config = load_config("tiny-cpu", [f"run_dir={tmp_path}", "train.beta=0.2"])
    written = save_resolved_config(config)
    tree = yaml.safe_load(written.read_text())
    assert tree["train"]["beta"] == 0.2 and tree["train"]["loss_type"] == "sigmoid"  # defaults are written too
    assert load_config(str(written)) == config


def test_keys_added_later_keep_older_run_identities():
    from cst_dist.training.identity import identity_hash, training_identity

    dpo, sft = load_config("tiny-cpu"), load_config("tiny-cpu", ["train.objective=sft"])
    assert "objective" not in training_identity(dpo, "data")["train"]  # a pre-sft run's identity is unchanged
    assert identity_hash(training_identity(dpo, "data")) != identity_hash(training_identity(sft, "data"))


def test_overrides_may_follow_options():
    from cst_dist.cli import parse_args

    args = parse_args(["judge", "tiny-cpu", "--input", "a.jsonl", "eval.judge.kind=keyword", "--output", "b.jsonl",
                       "eval.max_prompts=2"])
    assert (args.input, args.output) == ("a.jsonl", "b.jsonl")
    assert args.overrides == ["eval.judge.kind=keyword", "eval.max_prompts=2"]
    args = parse_args(["pipeline", "tiny-cpu", "--from", "train", "train.beta=0.2"])
    assert args.from_stage == "train" and args.overrides == ["train.beta=0.2"]
    with pytest.raises(SystemExit):
        parse_args(["judge", "tiny-cpu", "--input", "a", "--output", "b", "--no-such-option"])
    with pytest.raises(SystemExit):  # export takes no overrides
        parse_args(["export", "runs/x", "--tag", "t", "train.beta=0.2"])


def test_a_malformed_yaml_override_is_one_line(capsys):
    from cst_dist.cli import main

    assert main(["train", "tiny-cpu", "train.beta=[1"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "override 'train.beta'" in error and "not valid YAML" in error
