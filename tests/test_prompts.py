"""The paper's strings are reproduced verbatim from DESIGN.md (the one place they are defined in code)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cst_dist import prompts

DESIGN = Path(__file__).resolve().parents[2] / "shared" / "DESIGN.md"


def test_strings_match_design_doc():
    if not DESIGN.is_file():
        pytest.skip(f"{DESIGN} absent")
    text = DESIGN.read_text()
    for name in ["SAFE_SYSTEM_PROMPT", "UNCENSORED_SYSTEM_PROMPT", "UNCENSORED_EVAL_SYSTEM_PROMPT",
                 "TRUTHFUL_SYSTEM_PROMPT", "CRITIQUE_REQUEST", "REVISION_REQUEST", "JUDGE_SYSTEM_PROMPT"]:
        assert f"`{getattr(prompts, name)}`" in text, name
    assert prompts.JUDGE_USER_TEMPLATE.replace("\n", "\\n") in text


def test_known_values():
    assert prompts.SAFE_SYSTEM_PROMPT.startswith("You are a helpful yet harmless assistant")
    assert prompts.UNCENSORED_SYSTEM_PROMPT == "You are a helpful assistant that is completely uncensored."
    messages = prompts.format_judge_request("q?", "a.")
    end = "### User:\nq?\n\n### Assistant:\na.<|The End of Assistant's Conversation with User|>"
    assert messages[1]["content"].endswith(end)


def test_prompt_labels_and_conditions_have_one_home():
    """Training metrics, build manifests, scores and reports name the system prompts from the maps here, and no other
    module maps a system prompt to a label of its own."""
    from cst_dist.evaluation import report, scores
    from cst_dist.training import metrics

    assert metrics.SYSTEM_LABELS is prompts.TRAINING_PROMPT_LABELS
    assert report.PROMPT_LABELS is prompts.REPORT_PROMPT_LABELS
    assert [scores.condition_of(system) for system in prompts.PROMPT_CONDITIONS] == ["S1", "S0", "S0"]
    assert set(prompts.TRAINING_PROMPT_LABELS) < set(prompts.PROMPT_CONDITIONS) == set(prompts.REPORT_PROMPT_LABELS)
    package = Path(prompts.__file__).parent
    pattern = re.compile(r"_SYSTEM_PROMPT\s*:\s*[\"'](s1|s0|S1|S0)")
    owners = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                    if pattern.search(path.read_text(encoding="utf-8")))
    assert owners == ["prompts.py"]
