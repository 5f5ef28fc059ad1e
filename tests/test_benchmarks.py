"""`benchmarks/trainer_throughput.py --quick`: the benchmark runs end to end (TRL and cst in their own processes)
and its figures are the ones it claims to be. No timing is asserted: only what holds on any machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
