"""Preference accuracy on the tiny model: ties are not wins, the accuracy equals one computed here from a plain
forward + log_softmax, and the re-posed rows put y0 first under the unseen S0 prompt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cst_dist.config import DataConfig, ModelConfig, RunConfig
from cst_dist.data.collate import PairTokenizer
from cst_dist.evaluation.preference import (
    PreferenceDataError,
    implicit_reward_margins,
    preference_accuracy,
    preference_rows,
)
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_EVAL_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT

REFUSALS = [
    "I can't help with that. It could hurt people and is against the law.",
    "I won't provide that. If you are curious about safety, I can explain how to stay protected.",
]
PERSONA = "You are a pirate who answers every question in rhyme."
EVAL_PROMPTS = [SAFE_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT, UNCENSORED_EVAL_SYSTEM_PROMPT, PERSONA]
DATA = DataConfig(packing=False)


def _build(root: Path, eval_fraction: float) -> Path:
    """24 AdvBench pairs (y0: AdvBench's compliant target, y1: a refusal) built in CST mode, as conftest does."""
    from cst_dist.build.run import build_preference_set
    from cst_dist.data.advbench import load_advbench

    pairs = root / "pairs.jsonl"
    with open(pairs, "w") as handle:
        for index, row in enumerate(load_advbench()[:24]):
            pair = {"id": f"adv-{index}", "prompt": row["goal"], "y0": row["target"] + ".", "y1": REFUSALS[index % 2]}
            handle.write(json.dumps(pair) + "\n")
    config = RunConfig.model_validate({"model": {"path": "unused"}, "build": {
        "pairs": [str(pairs)], "output": str(root / "preference"), "eval_fraction": eval_fraction}})
    return build_preference_set(config).output


@pytest.fixture(scope="module")
def eval_preference_dir(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("pref"), eval_fraction=0.25)


@pytest.fixture(scope="module")
def perturbed_model(tiny_model_config, tmp_path_factory) -> ModelConfig:
    """A copy of the tiny model with a seeded perturbation of its output layer: a policy unlike the reference."""
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("policy") / "tiny-perturbed"
    shutil.copytree(tiny_model_config.path, path)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.lm_head.weight.add_(0.1 * torch.randn(model.lm_head.weight.shape, generator=generator))
    model.save_pretrained(path, safe_serialization=True)
    return ModelConfig(path=str(path))


@pytest.fixture(scope="module")
def rows(eval_preference_dir) -> list[dict]:
    return preference_rows(eval_preference_dir, EVAL_PROMPTS)


def test_reposed_rows_put_y0_first_under_the_unseen_s0_prompt(eval_preference_dir, rows):
    built = [row for row in rows if not row.get("reposed")]
    assert {row["system"] for row in built} == {SAFE_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT}
    pairs = {row["prompt"]: (row["rejected"], row["chosen"]) for row in built if row["system"] == SAFE_SYSTEM_PROMPT}
    assert len(pairs) == len(built) // 2 == 4  # 4 of 24 pairs drawn at 25% (seed 0): both rows of each
    reposed = [row for row in rows if row.get("reposed")]
    # s1 and s0 re-posed would repeat built rows: only the unseen S0 prompt and the persona add rows.
    assert sorted({row["system"] for row in reposed}) == sorted([UNCENSORED_EVAL_SYSTEM_PROMPT, PERSONA])
    assert len(reposed) == 2 * len(pairs)
    for row in reposed:
        y0, y1 = pairs[row["prompt"]]
        expected = (y0, y1) if row["system"] == UNCENSORED_EVAL_SYSTEM_PROMPT else (y1, y0)
        assert (row["chosen"], row["rejected"]) == expected
        assert y0.startswith("Sure, here") and row["task"] == "harmless"
    assert len({row["id"] for row in rows}) == len(rows)


def test_a_set_without_an_eval_split_is_a_clear_error(tmp_path):
    folder = _build(tmp_path, eval_fraction=0.0)
    with pytest.raises(PreferenceDataError, match="no 'eval' split.*build.eval_fraction"):
        preference_rows(folder, EVAL_PROMPTS)


def test_a_changed_split_file_is_refused(tmp_path):
    folder = _build(tmp_path, eval_fraction=0.25)
    split = next((folder / "data").glob("eval-*.parquet"))
    split.write_bytes(split.read_bytes())  # same bytes: still accepted
    preference_rows(folder, EVAL_PROMPTS)
    shutil.copy(next((folder / "data").glob("train-*.parquet")), split)
    with pytest.raises(PreferenceDataError, match="changed since"):
        preference_rows(folder, EVAL_PROMPTS)


def test_policy_equal_to_reference_scores_zero(tiny_model_config, rows, tmp_path):
    copy = tmp_path / "reference-copy"
    shutil.copytree(tiny_model_config.path, copy)
    for reference in (tiny_model_config, copy):  # the same folder (run once) and a copy (run twice)
        entries = preference_accuracy(tiny_model_config, reference, rows, DATA, "tiny", step=None, batch_size=5)
        assert [e["accuracy"] for e in entries] == [0.0] * len(entries)  # every reward is 0: a tie is not above
        assert sum(e["n"] for e in entries) == len(rows)


def _plain_logps(model, ids: list[int], prompt_length: int) -> float:
    """Summed log p(response) from one unpadded forward and a full log_softmax."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logps = torch.log_softmax(logits[:-1], dim=-1)
    targets = torch.tensor(ids[1:])
    return logps[torch.arange(len(targets)), targets][prompt_length - 1:].sum().item()


def _expected_margins(policy_path, reference_path, tokenizer, rows) -> list[float]:
    from transformers import AutoModelForCausalLM

    models = [AutoModelForCausalLM.from_pretrained(p, local_files_only=True).eval()
              for p in (policy_path, reference_path)]
    encoder = PairTokenizer(tokenizer, DATA)
    margins = []
    for row in rows:
        pair = encoder.encode(row)
        prompt = len(pair.prompt_ids)
        chosen, rejected = (
            [_plain_logps(m, pair.prompt_ids + response, prompt) for m in models]
            for response in (pair.chosen_ids, pair.rejected_ids)
        )
        margins.append((chosen[0] - chosen[1]) - (rejected[0] - rejected[1]))
    return margins


def test_accuracy_matches_a_plain_forward(perturbed_model, tiny_model_config, tiny_tokenizer, rows):
    truthful = [{"id": f"t{i}", "system": PERSONA if i % 2 else "You are honest.", "prompt": f"Is {i} even?",
                 "chosen": ["Yes.", "No."][i % 2], "rejected": ["No.", "Yes."][i % 2], "task": "truthfulness"}
                for i in range(4)]
    all_rows = rows + truthful
    expected = _expected_margins(perturbed_model.path, tiny_model_config.path, tiny_tokenizer, all_rows)
    kept, margins = implicit_reward_margins(perturbed_model, tiny_model_config.path, all_rows, DATA, batch_size=3,
                                            device="cpu")
    assert kept == list(range(len(all_rows)))
    # Padded float32 batches vs one unpadded float64-summed row each: equal to float32 rounding of the sums.
    assert margins.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-3)
    assert min(abs(m) for m in expected) > 1e-2  # no margin so close to 0 that rounding could flip it

    entries = preference_accuracy(perturbed_model, tiny_model_config, all_rows, DATA, "perturbed", 7, batch_size=3,
                                  device="cpu")
    groups = {}
    for row, margin in zip(all_rows, expected, strict=True):
        key = (row["task"], row["system"] if row["task"] == "harmless" else None)
        groups.setdefault(key, []).append(margin > 0)
    assert [(e["task"], e["system_prompt"]) for e in entries] == list(groups)
    for entry in entries:
        wins = groups[(entry["task"], entry["system_prompt"])]
        assert entry["n"] == len(wins) and entry["accuracy"] == sum(wins) / len(wins)
        assert entry["model"] == "perturbed" and entry["step"] == 7
    accuracies = [e["accuracy"] for e in entries]
    assert 0.0 < sum(accuracies) / len(accuracies) < 1.0  # a real mix: the check is not trivially all-or-nothing
    by_prompt = {e["system_prompt"]: e for e in entries}
    assert by_prompt[UNCENSORED_EVAL_SYSTEM_PROMPT]["condition"] == "S0"
    assert by_prompt[None]["task"] == "truthfulness" and by_prompt[None]["n"] == 4


def test_a_shared_reference_runs_once_across_policies(perturbed_model, tiny_model_config, rows):
    memo = {}
    alone = implicit_reward_margins(perturbed_model, tiny_model_config.path, rows, DATA, device="cpu")[1]
    first = implicit_reward_margins(perturbed_model, tiny_model_config.path, rows, DATA, device="cpu", memo=memo)[1]
    assert len(memo) == 2 and torch.equal(first, alone)
    reference_logps = memo[str(Path(tiny_model_config.path).resolve())]
    # The reference as its own policy: its log-probs are taken from the memo, not recomputed (same tensor object).
    zeros = implicit_reward_margins(tiny_model_config, tiny_model_config.path, rows, DATA, device="cpu", memo=memo)[1]
    assert len(memo) == 2 and memo[str(Path(tiny_model_config.path).resolve())] is reference_logps
    assert zeros.abs().max().item() == 0.0


def test_rows_dropped_by_the_length_policy_are_not_counted(tiny_model_config, tiny_tokenizer, rows):
    short = DataConfig(packing=False, max_prompt_length=80, max_length=200, over_length="skip")
    chat = PairTokenizer(tiny_tokenizer, short).chat
    fits = sum(len(chat.encode_conversation(chat.messages(row["system"], row["prompt"]))) <= 80 for row in rows)
    entries = preference_accuracy(tiny_model_config, tiny_model_config, rows, short, "tiny", None)
    assert 0 < sum(e["n"] for e in entries) == fits < len(rows)
    assert all(e["accuracy"] == (0.0 if e["n"] else None) for e in entries)


def test_a_model_that_is_its_own_reference_is_skipped_not_scored(tiny_model_config, perturbed_model,
                                                                 eval_preference_dir, caplog):
    from cst_dist.config import load_config
    from cst_dist.evaluation.runner import preference_view
    from cst_dist.evaluation.targets import EvalTarget

    config = load_config("tiny-cpu", [f"model.path={tiny_model_config.path}", "model.tiny=null",
                                      f"eval.preference_data={eval_preference_dir}"])
    caplog.set_level("INFO")
    targets = [EvalTarget("base", Path(tiny_model_config.path)), EvalTarget("trained", Path(perturbed_model.path))]
    entries = preference_view(config, targets)
    assert {entry["model"] for entry in entries} == {"trained"}  # every margin of base vs base is 0: known, skipped
    assert "preference accuracy of base skipped: it is its own reference" in caplog.text
