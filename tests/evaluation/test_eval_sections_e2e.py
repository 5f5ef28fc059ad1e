"""`cst eval` with every section beyond the paper, end to end on the tiny model and the local Ray: an interrupted run
resumes with only the missing shards of each section, and the report holds every section with counts, shares and
Wilson intervals, its tables and its charts."""

from __future__ import annotations

import json

import pytest

from cst_dist.config import RunConfig
from cst_dist.evaluation.runner import run_eval
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_EVAL_SYSTEM_PROMPT

SECTIONS = ["overrefusal", "overrides", "switch", "wordings", "adherence"]
# Shards of 6 answers: paper 4 prompts (1 shard); overrefusal 18 types x 1 x 2 configurations = 36 (6 shards);
# overrides 2 prompts x 8 = 16 (3); switch 2 prompts x 2 directions x 2 forms = 8 (2); wordings 1 x 16 = 16 (3).
SHARDS = {"paper": 1, "overrefusal": 6, "overrides": 3, "switch": 2, "wordings": 3}
ANSWERS = {"overrefusal": 36, "overrides": 16, "switch": 8, "wordings": 16}


class Interrupted(RuntimeError):
    pass


def sections_config(tiny_model_config, run_dir) -> RunConfig:
    settings = {"models": {"tiny": tiny_model_config.path}, "max_prompts": 4, "shard_size": 6, "batch_size": 6,
                "sampling": {"temperature": 0.0, "max_new_tokens": 4}, "num_replicas": 1, "gpus_per_replica": 0,
                "judge": {"kind": "keyword"}, "preference": False, "sections": SECTIONS,
                "overrefusal": {"per_type": 1, "system_prompts": [SAFE_SYSTEM_PROMPT, UNCENSORED_EVAL_SYSTEM_PROMPT]},
                "overrides": {"max_prompts": 2}, "switch": {"max_prompts": 2, "form": "both"},
                "wordings": {"max_prompts": 1}}
    return RunConfig.model_validate({"run_dir": str(run_dir), "model": tiny_model_config.model_dump(),
                                     "eval": settings})


def shard_files(folder):
    return {path.name: path.stat().st_mtime_ns for path in folder.glob("shard-*.jsonl")}


def test_interrupted_eval_with_sections_resumes_and_reports_every_section(ray_cluster, tiny_model_config, tmp_path):
    config = sections_config(tiny_model_config, tmp_path)
    done = []

    def stop_after_five(event):
        done.append(event.shard.name)
        if len(done) == 5:  # the paper's shard and 4 of the 6 over-refusal shards are on disk
            raise Interrupted("killed mid-run")

    with pytest.raises(Interrupted):
        run_eval(config, on_shard_done=stop_after_five)
    model = tmp_path / "eval" / "tiny"
    kept = shard_files(model / "overrefusal" / "generations")
    assert len(kept) == 4 and not (model / "overrides").exists() and not (tmp_path / "eval" / "report.json").exists()

    result = run_eval(config)
    generated = {key.split("/")[-1] if "/" in key else "paper": run["generated"]
                 for key, run in result.generation.items()}
    assert generated == {"paper": 0, "overrefusal": 2, "overrides": 3, "switch": 2, "wordings": 3}
    assert {key.split("/")[-1] if "/" in key else "paper": run["shards"]
            for key, run in result.generation.items()} == SHARDS
    after = shard_files(model / "overrefusal" / "generations")
    assert {name: after[name] for name in kept} == kept  # the shards written before the interruption stay as they were
    for section, count in ANSWERS.items():
        judged = [json.loads(line) for line in (model / section / "judged.jsonl").read_text().splitlines()]
        assert len(judged) == count == len({row["id"] for row in judged}) and all("safe" in row for row in judged)
        manifest = json.loads((model / section / "generations" / "manifest.json").read_text())
        assert manifest["complete"] and manifest["totals"]["prompts"] == count

    report = json.loads(result.files["json"].read_text())
    assert [(e["system_prompt"], e["prompt_label"]) for e in report["overrefusal"]] == [
        (SAFE_SYSTEM_PROMPT, "safe"), (SAFE_SYSTEM_PROMPT, "unsafe"), (UNCENSORED_EVAL_SYSTEM_PROMPT, "safe"),
        (UNCENSORED_EVAL_SYSTEM_PROMPT, "unsafe")]
    assert [e["n"] for e in report["overrefusal"]] == [10, 8, 10, 8]  # 10 safe and 8 unsafe types, one prompt each
    assert all(set(e["refusal_rate"]) == {"k", "n", "share", "ci95"} for e in report["overrefusal"])
    assert [e["template"] for e in report["overrides"]][0] == "none" and len(report["overrides"]) == 8
    assert all(e["n"] == 2 for e in report["overrides"])
    assert sorted((e["direction"], e["form"]) for e in report["switch"]) == sorted(
        (d, f) for d in ("safe_to_uncensored", "uncensored_to_safe") for f in ("second_system", "new_system"))
    assert len(report["wordings"]) == 16 and [e["condition"] for e in report["wordings_summary"]] == ["S1", "S0"]
    [adherence] = report["adherence"]
    assert adherence["cases"] == 4 + 36 + 16 + 8 + 16 and set(adherence["sections"]) == {"paper", *ANSWERS}
    assert report["refusal_judge"]["kind"] == "rules" and report["refusal_judge"]["agreement"]["n"] == 109
    markdown = result.files["markdown"].read_text()
    assert "## Beyond the paper" in markdown and "### Adherence" in markdown
    for kind in ("overrefusal_chart", "overrides_chart", "switch_chart", "wordings_chart", "adherence_chart"):
        assert result.files[kind].stat().st_size > 10_000
    switch_row = json.loads((model / "switch" / "judged.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in switch_row["messages"]] == ["system", "user", "assistant", "system", "user"]
