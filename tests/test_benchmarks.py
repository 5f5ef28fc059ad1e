"""`benchmarks/trainer_throughput.py --quick`: the benchmark runs end to end (TRL and cst in their own processes)
and its figures are the ones it claims to be. No timing is asserted: only what holds on any machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cst_dist.config import ModelConfig, TinyModelConfig
from cst_dist.models import ensure_model
from cst_dist.stage_process import child_env
from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]


def test_trainer_throughput_quick(tmp_path):
    out = tmp_path / "throughput.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "trainer_throughput.py"), "--quick", "--out", str(out)],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {row["variant"]: row for row in report["table"]}
    assert set(rows) == {"trl-precomputed", "cst"}
    assert report["data"]["kind"] == ("released" if (SHARED_DATA / "configurable-system-prompt-multitask.json")
                                      .is_file() else "advbench-fallback")
    # cst packs each micro-batch into one varlen row: not one padding slot; TRL pads to the longest sequence
    assert rows["cst"]["padding_share"] == 0.0 and rows["trl-precomputed"]["padding_share"] > 0.0
    # model FLOPs: at least 6N per real token on both sides (attention on top), against a measured positive peak
    six_n = 6 * report["model"]["matmul_parameters"]
    for row in rows.values():
        assert row["model_flops_per_s"] >= six_n * row["real_tokens"] / row["wall_s"]
        assert row["flops_utilization"] == pytest.approx(row["median_model_tflops"] * 1e12 / report["peak_flops"])
        assert row["flops_utilization"] > 0
    assert rows["trl-precomputed"]["speedup_vs_trl-precomputed"] == 1.0
    # the LM head ran at the response positions only: fewer than the batch's tokens
    levers = report["levers"]
    assert 0 < levers["logit_positions"] < levers["tokens"]
    assert "| cst-dist: packed varlen" in result.stdout and "share of matmul peak" in result.stdout


def test_trainer_throughput_real_model_option(tmp_path):
    """--model DIR: every variant trains that HF folder (its tokenizer, chat template, tied LM head) on the same token
    ids, and reports its peak memory beside the memory planner's prediction."""
    model = tmp_path / "model"
    ensure_model(ModelConfig(path=str(model), tiny=TinyModelConfig(tie_word_embeddings=True)))
    out = tmp_path / "real.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "trainer_throughput.py"), "--model", str(model), "--steps", "1",
         "--repeats", "1", "--variants", "trl,cst-gc", "--max-length", "128", "--max-prompt-length", "64",
         "--global-batch", "2", "--micro-batch", "1", "--no-levers", "--out", str(out)],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["model"]["path"] == str(model) and report["model"]["kind"] == "pretrained"
    # FLOPs from the folder's own config: a tied head is counted once, as the LM head's matmul
    assert report["model"]["tied_embeddings"] and report["model"]["matmul_parameters"] == report["model"]["parameters"]
    rows = {row["variant"]: row for row in report["table"]}
    assert set(rows) == {"trl", "cst-gc"}
    for row in rows.values():
        assert row["peak_memory_gib"] > 0 and row["process_peak_rss_gib"] >= row["peak_memory_gib"] * 0.99
        assert row["flops_utilization"] > 0
    # one step of global batch 2 = every sampled row: both sides trained on exactly the same token ids
    trl_steps, cst_steps = report["runs"]["trl"][0]["steps"], report["runs"]["cst-gc"][0]["steps"]
    assert trl_steps[0]["real"] == cst_steps[0]["real"] > 0
    assert "train.gradient_checkpointing=true" in report["runs"]["cst-gc"][0]["command"]
    plan = report["memory_plan"]["cst-gc"]  # the planner on the same settings, against the measured peak
    assert plan["measured_gib"] == rows["cst-gc"]["peak_memory_gib"]
    for prediction in (plan["measured_shape"], plan["worst_case"]):
        assert prediction["total_gib"] > 0 and prediction["off_percent"] is not None
        assert "train.gradient_checkpointing=true" in prediction["command"]
    assert "memory planner" in result.stdout


def test_benchmarks_render_chats_through_the_project_encoder():
    """The benchmarks feed models the ids every stage uses: no chat template is rendered outside cst_dist/chat.py."""
    callers = [str(p) for p in (REPO / "benchmarks").rglob("*.py") if "apply_chat_template(" in p.read_text()]
    assert callers == []


def test_scaling_study_quick(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scaling_study.py"), "--quick", "--out", str(tmp_path)],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "scaling.json").read_text())
    measured = report["measured"]
    # 2 widths x (1 rank, 2 ranks on a node, 2 simulated nodes); ZeRO auto: stage 1 alone, 3 with two ranks
    assert [(r["width"], r["ranks"], r["nodes"], r["zero_stage"]) for r in measured] == [
        (w, ranks, nodes, 1 if ranks == 1 else 3) for w in (64, 128) for ranks, nodes in ((1, 1), (2, 1), (2, 2))]
    for width in (64, 128):  # the same global batch whatever the world: the same tokens and model FLOPs a step
        rows = [r for r in measured if r["width"] == width]
        assert len({r["tokens_per_step"] for r in rows}) == 1
        assert max(r["flops_per_step"] for r in rows) == pytest.approx(min(r["flops_per_step"] for r in rows))
    assert all(r["fitted_step_s"] == r["fitted_step_s"] for r in measured)  # finite fit for every run
    assert set(report["fit"]) >= {"seconds_per_flop", "seconds_per_byte", "overhead_s"}
    projection = report["projection"]
    assert [(p["model"], p["gpus"]) for p in projection] == [
        (m, g) for m in ("mistral-7b", "solar-10.7b") for g in (8, 16, 32, 64)]
    for row in projection:
        assert row["step_s"] == pytest.approx(row["compute_s"] + row["communication_s"]) and row["communication_s"] > 0
    assert (tmp_path / "scaling.png").stat().st_size > 1000
    assert "PROJECTION (not measured" in result.stdout and "MEASURED" in result.stdout
