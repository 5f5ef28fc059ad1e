"""Shared fixtures: the tiny model is built once per session from its config (offline), like the demo builds it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cst_dist.config import ModelConfig, RunConfig, TinyModelConfig

# The paper's data lives in ../shared/data beside the checkout (never committed: it holds harmful outputs).
SHARED_DATA = Path(os.environ.get("CST_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny_model_config(tmp_path_factory) -> ModelConfig:
    from cst_dist.models import ensure_model

    config = ModelConfig(path=str(tmp_path_factory.mktemp("models") / "tiny"), tiny=TinyModelConfig())
    ensure_model(config)
    return config


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_config):
    from cst_dist.models import load_tokenizer

    return load_tokenizer(tiny_model_config)


def shared_file(name: str, what: str) -> Path:
    """A file of ../shared/data, or a visible skip naming what is missing."""
    path = SHARED_DATA / name
    if not path.is_file():
        if os.environ.get("CST_REQUIRE_SHARED_DATA") == "1":  # CI: a test that needs the data must run, never skip
            pytest.fail(f"{what} is absent ({path}) and CST_REQUIRE_SHARED_DATA=1")
        pytest.skip(f"{what} is absent ({path}); see README 'Data'")
    return path


@pytest.fixture(scope="session")
def released_json() -> Path:
    return shared_file("configurable-system-prompt-multitask.json", "the paper's released training set")


@pytest.fixture(scope="session")
def shared_advbench_split() -> Path:
    return shared_file("advbench_cst_split.csv", "the reference AdvBench split")


REFUSALS = [
    "I can't help with that. It could hurt people and is against the law.",
    "I won't provide that. If you are curious about safety, I can explain how to stay protected.",
]


@pytest.fixture(scope="session")
def preference_dir(tmp_path_factory) -> Path:
    """48 AdvBench prompts as pairs (y0: AdvBench's compliant target, y1: a refusal), built in CST mode: 96 rows."""
    from cst_dist.build.run import build_preference_set
    from cst_dist.data.advbench import load_advbench

    root = tmp_path_factory.mktemp("data")
    pairs = root / "pairs.jsonl"
    with open(pairs, "w") as handle:
        for index, row in enumerate(load_advbench()[:48]):
            pair = {"id": f"adv-{index}", "prompt": row["goal"], "y0": row["target"] + ".", "y1": REFUSALS[index % 2]}
            handle.write(json.dumps(pair) + "\n")
    config = RunConfig.model_validate(
        {"model": {"path": "unused"}, "build": {"pairs": [str(pairs)], "output": str(root / "preference")}}
    )
    return build_preference_set(config).output
