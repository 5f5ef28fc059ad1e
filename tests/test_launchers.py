"""Launcher scripts: all parse, and torchrun_train.sh really trains with two ranks on CPU."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from cst_dist.training.distributed import _free_port
from tests.training.launch import train_overrides

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(ROOT.glob("launchers/*.sh")) + sorted(ROOT.glob("slurm/*.sh")) + sorted(ROOT.glob("slurm/*.sbatch"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_is_strict(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert "set -euo pipefail" in script.read_text()
    assert os.access(script, os.X_OK)


@pytest.mark.distributed
def test_torchrun_launcher_trains_two_ranks(tmp_path, tiny_model_config, preference_dir):
    run_dir = tmp_path / "run"
    env = {**os.environ, "GPUS_PER_NODE": "2", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"}
    overrides = train_overrides(tiny_model_config.path, preference_dir, run_dir,
                                **{"train.max_steps": 2, "train.reference": "precomputed"})
    result = subprocess.run([str(ROOT / "launchers" / "torchrun_train.sh"), "tiny-cpu", *overrides], env=env,
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in steps] == [1, 2]
    assert "2 ranks x micro-batch 2 x accumulation 2" in result.stderr + result.stdout



@pytest.mark.parametrize("script, args, env, fragment", [
    ("launchers/torchrun_train.sh", ["x.yaml"], {"PYTHON": "/usr/bin/false"}, "cannot import cst_dist and torch"),
    ("slurm/train.sbatch", ["configs/tiny-cpu.yaml"], {}, "slurm/_common.sh not found"),
    ("slurm/eval.sbatch", ["configs/tiny-cpu.yaml"], {"CST_REPO": str(ROOT)}, "runs inside a Slurm job"),
    ("slurm/train.sbatch", ["configs/tiny-cpu.yaml"], {"CST_REPO": str(ROOT)}, "runs inside a Slurm job"),
    ("slurm/scaling_study.sh", [], {"PATH": "/usr/bin:/bin"}, "sbatch not found"),
    ("slurm/pipeline.sh", ["tiny-cpu"], {"PATH": "/usr/bin:/bin"}, "sbatch not found"),
])
def test_scripts_say_what_they_need_in_one_line(tmp_path, script, args, env, fragment):
    """Run from another directory, outside a job, without the venv or Slurm: one line, exit 2, never bash's own."""
    if env.get("PATH") == "/usr/bin:/bin":  # a PATH of this machine's tools without Slurm's (CI installs Slurm)
        no_slurm = tmp_path / "bin"
        no_slurm.mkdir()
        for folder in ("/usr/bin", "/bin"):
            for tool in Path(folder).iterdir():
                if not tool.name.startswith(("sbatch", "srun", "squeue", "scontrol")):
                    with contextlib.suppress(FileExistsError):
                        (no_slurm / tool.name).symlink_to(tool)
        env = {**env, "PATH": str(no_slurm)}
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ("CST_REPO", "PYTHON")}
    done = subprocess.run(["bash", str(ROOT / script), *args], cwd=tmp_path, env={**base, **env},
                          capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and fragment in lines[0], (done.returncode, done.stderr)
