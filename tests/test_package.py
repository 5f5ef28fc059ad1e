"""Installable as a package: a wheel (not the editable checkout) carries the presets and DeepSpeed templates, and its
`cst` console script builds and trains the tiny preset from a folder outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Variables an in-process distributed test may leave behind; a stale RANK would make the CLI wait for peers.
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS and k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run(command: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    output = f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"{command[:4]} exited {result.returncode}:\n{output}"
    return result


def build_wheel(tmp_path: Path) -> Path:
    """Built from a copy of the sources: no build/ folder in the checkout, whose stale files a wheel could pick up."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "cst_dist", source / "cst_dist", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q", str(source),
         "-w", str(wheels)], cwd=source, timeout=300)
    (wheel,) = wheels.glob("cst_dist-*.whl")
    return wheel


def test_wheel_installs_and_runs_the_tiny_preset_outside_the_repo(tmp_path, released_json):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"cst_dist/configs/tiny-cpu.yaml", "cst_dist/configs/mistral-7b.yaml", "cst_dist/configs/solar-10.7b.yaml",
            "cst_dist/configs/smollm2-135m-cpu.yaml",
            "cst_dist/ds_configs/zero3_policy.json", "cst_dist/ds_configs/zero3_reference_offload.json",
            "cst_dist/assets/advbench_cst_split.csv"} <= names

    # A fresh venv with the wheel installed; the wheel goes in first, while this venv's editable cst_dist is invisible.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, timeout=120)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        cwd=tmp_path, timeout=300)
    # Then the dependencies (torch, deepspeed, ...): this venv's site-packages as a plain .pth line. A directory added
    # that way is not scanned for .pth files, so the editable install's finder inside it never runs.
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp_path, timeout=60).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "zz_test_dependencies.pth").write_text("".join(f"{path}\n" for path in ours))

    work = tmp_path / "work"  # outside the repository: presets are found by name in the installed package only
    work.mkdir()
    probe = ("import cst_dist, cst_dist.config as c, cst_dist.training.deepspeed_config as d; "
             "print(cst_dist.__file__); print(c.PRESET_DIR); print(d.TEMPLATE_DIR)")
    located = [Path(line) for line in run([str(python), "-c", probe], cwd=work, timeout=120).stdout.split()]
    for path in located:
        assert path.is_relative_to(site / "cst_dist"), f"{path} is not the installed package in {site}"
        assert not path.resolve().is_relative_to(ROOT)

    cst = str(venv / "bin" / "cst")
    run_dir = work / "run"
    small = ["data.max_length=96", "data.max_prompt_length=48", "train.global_batch_size=8", "train.micro_batch_size=4"]
    run([cst, "build", "tiny-cpu", f"run_dir={run_dir}", f"build.released={released_json}", *small],
        cwd=work, timeout=300)
    run([cst, "train", "tiny-cpu", f"run_dir={run_dir}", "train.max_steps=2", "train.save_steps=2",
         "train.reference=precomputed", *small], cwd=work, timeout=600)
    assert (run_dir / "checkpoints" / "step-00000002" / "complete.json").is_file()
    assert (work / "runs" / "models" / "tiny-llama-8k").is_dir()  # preset model.path: relative to the cwd
