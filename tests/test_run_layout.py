"""The run layout: one place for a run folder's paths and for "is this stage's output complete"."""

from __future__ import annotations

import json

import pytest

from cst_dist.config import load_config
from cst_dist.run_layout import STAGES, RunLayout


def test_paths_follow_the_config_overrides(tmp_path):
    config = load_config("tiny-cpu", [f"run_dir={tmp_path}", f"build.output={tmp_path / 'elsewhere'}"])
    layout = config.layout
    assert layout.pairs == tmp_path / "pairs" and layout.preference == tmp_path / "elsewhere"
    assert layout.train_data == layout.preference == config.preference_dir  # train reads what build wrote
    assert layout.export("step-00000004") == tmp_path / "export" / "step-00000004"


def test_stage_completeness_from_the_markers(tmp_path):
    layout = RunLayout(tmp_path)
    assert not any(layout.stage_complete(stage) for stage in STAGES)  # an empty folder has nothing complete
    layout.pairs.mkdir()
    (layout.pairs / "manifest.json").write_text(json.dumps({"complete": False}))
    assert not layout.stage_complete("generate")
    (layout.pairs / "manifest.json").write_text(json.dumps({"complete": True}))
    assert layout.stage_complete("generate")
    layout.preference.mkdir()
    (layout.preference / "manifest.json").write_text('{"stage": "bui')  # torn: not complete, not an error
    assert not layout.stage_complete("build")
    (layout.preference / "manifest.json").write_text(json.dumps({"stage": "build"}))
    assert layout.stage_complete("build")
    tag = layout.checkpoint("step-00000004")
    tag.mkdir(parents=True)
    (layout.checkpoints / "latest").write_text(tag.name)
    assert not layout.stage_complete("train")  # latest names a checkpoint without its marker
    (tag / "complete.json").write_text(json.dumps({"step": 4, "final": False}))
    assert layout.latest_checkpoint() == tag and not layout.stage_complete("train")  # stopped early
    (tag / "complete.json").write_text(json.dumps({"step": 4, "final": True}))
    assert layout.stage_complete("train") and not layout.stage_complete("export")
    layout.export(tag.name).mkdir(parents=True)
    (layout.export(tag.name) / "export.json").write_text("{}")
    assert layout.stage_complete("export")
    with pytest.raises(ValueError, match="unknown stage"):
        layout.stage_complete("serve")
