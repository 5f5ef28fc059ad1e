"""A run folder holds one run and survives kills: identity checks, safe re-save, no pickles from outside, the config
stored with every checkpoint, torn metrics, and one-line errors for bad models and resume settings.

Real `cst train` processes on the tiny model (one rank, gloo). One base run is shared by the tests of this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cst_dist.run_layout import RunLayout
from cst_dist.stage_process import child_env
from tests.training.launch import read_metrics, train_overrides
from tests.training.test_training_units import assert_user_error, cst_train

BASE = {"train.max_steps": 4, "train.save_steps": 2, "train.reference": "precomputed", "train.keep_checkpoints": 2}


class _Payload:
    """Unpickling this creates a file: proof that a pickle was loaded (and code run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickle(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump({"key": _Payload(marker)}, handle)


@contextlib.contextmanager
def read_only_copy(source: Path, where: Path):
    """A copy of `source` behind a read-only bind mount (root ignores chmod, a read-only mount stops even root)."""
    shutil.copytree(source, where / "src")
    (where / "ro").mkdir()
    mounted = subprocess.run(["mount", "--bind", str(where / "src"), str(where / "ro")], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({mounted.stderr.decode().strip()}): read-only data case not run")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(where / "ro")], check=True, capture_output=True)
        yield where / "ro"
    finally:
        subprocess.run(["umount", str(where / "ro")], capture_output=True)


def overrides(model, data, run_dir, **extra):
    return train_overrides(str(model), data, run_dir, **{**BASE, **extra})


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model_config, preference_dir):
    """4 steps (checkpoints at 2 and 4) with a precomputed reference, the data on a read-only mount that carries a
    planted pickle where the old cache used to live, started from a folder of its own with relative paths."""
    root = tmp_path_factory.mktemp("integrity")
    workdir = root / "work"
    shutil.copytree(tiny_model_config.path, workdir / "models" / "tiny")
    plant_pickle(root / "data-src" / "reference_logps.pt", root / "PWNED-cache")
    shutil.copytree(preference_dir, root / "data-src", dirs_exist_ok=True)
    with read_only_copy(root / "data-src", root / "mount") as data:
        env = {**child_env(), "OMP_NUM_THREADS": "1"}
        args = overrides("models/tiny", data, "runs/a")
        result = subprocess.run([sys.executable, "-m", "cst_dist.cli", "train", "tiny-cpu", *args], cwd=workdir,
                                capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        yield {"root": root, "run": workdir / "runs" / "a", "data": data, "result": result,
               "model": workdir / "models" / "tiny"}


def test_read_only_data_and_planted_cache_pickle(base):
    assert not (base["root"] / "PWNED-cache").exists()  # the old cache name is never unpickled
    assert (base["run"] / "reference_logps.safetensors").is_file()  # the cache lives in the run folder
    # One closing line, which says the run finished and where to look next.
    closing = [line for line in base["result"].stdout.splitlines() if line.startswith(("finished", "stopped"))]
    assert closing == [closing[0]] and "step 4/4" in closing[0] and "tensorboard" in closing[0]


def test_every_checkpoint_carries_its_config_and_the_run_identity(base):
    run = base["run"]
    identity = json.loads((run / "run.json").read_text())
    for tag in ("step-00000002", "step-00000004"):
        marker = json.loads((run / "checkpoints" / tag / "complete.json").read_text())
        assert marker["run"] == identity["hash"] and marker["world_size"] == 1
        stored = yaml.safe_load((run / "checkpoints" / tag / "config.yaml").read_text())
        assert stored["model"]["path"] == "models/tiny" and stored["train"]["max_steps"] == 4
        assert (run / "checkpoints" / tag / "rng_state_0.json").is_file()


def test_failed_command_leaves_the_config_and_export_works_from_anywhere(base, tmp_path):
    run = base["run"]
    before = (run / "config.yaml").read_text()
    env = {**os.environ}
    typo = subprocess.run([sys.executable, "-m", "cst_dist.cli", "build", "tiny-cpu", f"run_dir={run}",
                           "build.released=/nowhere/x.json", "model.path=/typo"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert typo.returncode == 2
    assert (run / "config.yaml").read_text() == before
    # From another directory: the stored relative model path resolves against the run's root, not the cwd.
    exported = subprocess.run([sys.executable, "-m", "cst_dist.cli", "export", str(run), "--dtype", "float32"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (run / "export" / "step-00000004" / "model.safetensors").is_file()
    layout = RunLayout(run)  # the pipeline's view: both stages complete
    assert layout.stage_complete("train") and layout.stage_complete("export")


def test_another_run_in_the_folder_is_refused_and_nothing_is_touched(base):
    run = base["run"]
    args = lambda **extra: overrides(base["model"], base["data"], run, **extra)  # noqa: E731
    files = sorted(str(p.relative_to(run)) for p in (run / "checkpoints").rglob("*"))
    other = cst_train(args(**{"train.beta": 0.05}))
    assert_user_error(other, "holds another training run", "train.beta: 0.1 -> 0.05", "train.overwrite=true")
    assert_user_error(cst_train(args(**{"train.beta": 0.05, "train.resume": "auto"})), "another training run")
    assert_user_error(cst_train(args()), "already holds checkpoints of this run", "train.resume=auto")
    assert "attention backend" not in other.stderr  # refused before any model loaded
    assert sorted(str(p.relative_to(run)) for p in (run / "checkpoints").rglob("*")) == files
    assert (run / "checkpoints" / "latest").read_text() == "step-00000004"


def test_resume_settings_are_checked_before_anything_loads(base, tmp_path):
    run = base["run"]
    bad = cst_train(overrides(base["model"], base["data"], run, **{"train.resume": "latest"}))
    assert_user_error(bad, "train.resume", "'never', 'auto' or a checkpoint folder")
    missing = cst_train(overrides(base["model"], base["data"], tmp_path / "r", **{"train.resume": tmp_path / "no"}))
    assert_user_error(missing, "not a complete checkpoint")
    assert "attention backend" not in missing.stderr
    # A checkpoint written by 2 ranks cannot be loaded by 1: said up front, with the ways out.
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export", "*.safetensors"))
    marker = copy / "checkpoints" / "step-00000004" / "complete.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "world_size": 2}))
    ranks = cst_train(overrides(base["model"], base["data"], copy, **{"train.resume": "auto"}))
    assert_user_error(ranks, "saved by 2 ranks, this run has 1", "ds_to_universal", "zero_to_fp32")


def test_planted_pickle_in_the_cache_path_is_refused_in_one_line(base, tmp_path):
    cache = tmp_path / "cache.safetensors"
    plant_pickle(cache, tmp_path / "PWNED")
    result = cst_train(overrides(base["model"], base["data"], tmp_path / "r",
                                 **{"train.reference_cache": str(cache)}))
    assert_user_error(result, str(cache), "not a reference cache", "delete it")
    assert not (tmp_path / "PWNED").exists()


def test_unwritable_cache_location_fails_before_the_reference_pass(base):
    cache = base["data"] / "cache.safetensors"  # on the read-only mount
    result = cst_train(overrides(base["model"], base["data"], base["root"] / "r-ro",
                                 **{"train.reference_cache": str(cache)}))
    assert_user_error(result, str(base["data"]))
    assert "computing" not in result.stderr


def test_kill_during_resave_then_torn_metrics_then_resume(base, tmp_path):
    """Resume from step 2 re-saves step 4; kill -9 as soon as step 4 is being re-saved. Every marked checkpoint must
    still be whole, a torn metrics line must not break the next resume, and the curve must equal the original."""
    run = tmp_path / "run"
    shutil.copytree(base["run"], run, ignore=shutil.ignore_patterns("export"))
    original = [row["loss"] for row in read_metrics(base["run"])]
    plant_pickle(run / "checkpoints" / "step-00000002" / "rng_state_0.pt", tmp_path / "PWNED-rng")
    cache = {"train.reference_cache": str(base["run"] / "reference_logps.safetensors")}
    args = overrides(base["model"], base["data"], run,
                     **{**cache, "train.resume": str(run / "checkpoints" / "step-00000002")})
    env = child_env()
    proc = subprocess.Popen([sys.executable, "-m", "cst_dist.cli", "train", "tiny-cpu", *args],
                            env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run / "checkpoints" / "step-00000004" / "complete.json"
    deadline = time.time() + 240
    while marker.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for folder in (run / "checkpoints").iterdir():
        if (folder / "complete.json").is_file():  # whatever the kill hit, a marked checkpoint is whole
            assert all(f.stat().st_size > 0 for f in folder.rglob("*") if f.is_file()), folder
    latest = (run / "checkpoints" / "latest").read_text()
    assert (run / "checkpoints" / latest / "complete.json").is_file()
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "loss": 0.6')  # a torn last line, as a kill or a full disk leaves it
    resumed = cst_train(overrides(base["model"], base["data"], run, **{**cache, "train.resume": "auto"}))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "torn" in resumed.stderr
    torch.testing.assert_close(torch.tensor([row["loss"] for row in read_metrics(run)]), torch.tensor(original),
                               rtol=1e-5, atol=0)
    assert not (tmp_path / "PWNED-rng").exists()


def test_overwrite_replaces_another_run(base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base["run"], run, ignore=shutil.ignore_patterns("export"))
    old_hash = json.loads((run / "run.json").read_text())["hash"]
    result = cst_train(overrides(base["model"], base["data"], run, **{
        "train.beta": 0.05, "train.overwrite": "true", "train.max_steps": 2}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["hash"] != old_hash
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["step-00000002"]
    assert len(read_metrics(run)) == 2


def test_rotation_never_deletes_latest_or_newer(tmp_path):
    from cst_dist.run_layout import RunLayout
    from cst_dist.training.checkpoint import MARKER, _rotate

    root = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8):
        (root / f"step-{step:08d}").mkdir(parents=True)
        (root / f"step-{step:08d}" / MARKER).write_text("{}")
    # a resumed run re-saved step 6 while step 8 of its first pass exists
    _rotate(RunLayout(tmp_path), "step-00000006", keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000004", "step-00000006", "step-00000008"]


def test_a_checkpoint_that_cannot_be_written_is_one_line(tmp_path, tiny_model_config, preference_dir):
    """A file size limit (what a full disk looks like to a writer) during the save: one line naming the checkpoint,
    exit 2, and no checkpoint marked complete."""
    import resource
    import signal
    import subprocess
    import sys

    from cst_dist.stage_process import child_env
    from tests.training.launch import train_overrides

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write(2) then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (200 << 10, 200 << 10))  # the shards of the tiny model are larger

    run_dir = tmp_path / "run"
    overrides = train_overrides(tiny_model_config.path, preference_dir, run_dir,
                                **{"train.max_steps": 2, "train.save_steps": 1, "model.tiny": "null"})
    done = subprocess.run([sys.executable, "-m", "cst_dist.cli", "train", "tiny-cpu", *overrides], env=child_env(),
                          capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, (done.returncode, done.stderr[-1500:])
    assert "step-00000001" in last and "could not write the checkpoint" in last, last
    assert not list((run_dir / "checkpoints").glob("*/complete.json"))
