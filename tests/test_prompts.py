"""The paper's strings are reproduced verbatim from DESIGN.md (the one place they are defined in code)."""

from __future__ import annotations

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
