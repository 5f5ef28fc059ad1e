"""`cst generate` from the command line: the launcher joining a running cluster, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cst_dist.cli import main
from tests.generation.helpers import read_pairs

ROOT = Path(__file__).resolve().parents[2]


def cli_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **extra}


def overrides(model_path, run_dir, **generate) -> list[str]:
    settings = {"max_prompts": 8, "shard_size": 4, "num_replicas": 1, "gpus_per_replica": 0,
                "sampling.temperature": 1.0, "sampling.max_new_tokens": 8, **generate}
    return [f"model.path={model_path}", f"run_dir={run_dir}", *(f"generate.{k}={v}" for k, v in settings.items())]


def test_launcher_joins_the_cluster_at_ray_address(ray_cluster, tiny_model_config, tmp_path):
    """The Slurm path: a cluster is already up (here the test's own), the launcher starts nothing and the driver
    joins it through RAY_ADDRESS."""
    import ray

    run_dir = tmp_path / "run"
    result = subprocess.run(
        [str(ROOT / "launchers" / "ray_generate.sh"), "tiny-cpu", *overrides(tiny_model_config.path, run_dir)],
        env=cli_env(RAY_ADDRESS=ray_cluster), cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"joining the Ray cluster at RAY_ADDRESS={ray_cluster}" in result.stderr
    assert f"Ray cluster at {ray_cluster}" in result.stderr and "Started a local Ray instance" not in result.stderr
    pairs, rejects = read_pairs(run_dir / "pairs")
    assert len({row["id"] for row in pairs + rejects}) == 8
    assert "8/8" in result.stderr and "prompt/s" in result.stderr and "tokens/s" in result.stderr  # progress bar
    assert json.loads((run_dir / "pairs" / "manifest.json").read_text())["complete"]
    assert ray.cluster_resources().get("CPU") == 2  # the cluster outlives the driver that joined it


def test_unreachable_ray_address_is_a_quick_clear_error(tiny_model_config, tmp_path):
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cst_dist.cli", "generate", "tiny-cpu",
         *overrides(tiny_model_config.path, tmp_path, connect_timeout_s=5)],
        env=cli_env(RAY_ADDRESS="127.0.0.1:1"), cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 2
    assert "cst generate: error: cannot reach the Ray cluster at RAY_ADDRESS='127.0.0.1:1' within 5s" in result.stderr
    assert "Traceback" not in result.stderr and time.monotonic() - start < 60
    assert not list((tmp_path / "pairs").glob("shard-*.jsonl"))


def test_missing_model_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["generate", "tiny-cpu", f"model.path={tmp_path / 'absent'}", "model.tiny=null",
                 f"run_dir={tmp_path}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("cst generate: error: model folder") and "model.path" in error
    assert not (tmp_path / "pairs").exists()


def test_empty_prompt_file_is_a_one_line_error(tiny_model_config, tmp_path, capsys):
    empty = tmp_path / "prompts.jsonl"
    empty.write_text("")
    assert main(["generate", "tiny-cpu", *overrides(tiny_model_config.path, tmp_path, prompts=empty)]) == 2
    assert capsys.readouterr().err.strip() == f"cst generate: error: {empty}: no prompts (the file is empty)"
    assert not (tmp_path / "pairs").exists()
