"""`cst pipeline`: stages skipped when complete, an interrupted pipeline resumes with only the missing stages, and bad
settings fail before any stage starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cst_dist.cli import main
from cst_dist.stage_process import child_env

SMALL = ["data.max_length=96", "data.max_prompt_length=48", "train.max_steps=2", "train.reference=precomputed",
         "eval.max_prompts=2", "eval.sampling.max_new_tokens=4", "eval.judge.kind=keyword", "eval.preference=false",
         "eval.num_replicas=1", "eval.gpus_per_replica=0", "pipeline.stages=[build,train,export,eval]",
         "pipeline.arms={}"]


def pipeline_args(tmp_path, tiny_model_config, released_json):
    return ["pipeline", "tiny-cpu", f"run_dir={tmp_path / 'run'}", f"model.path={tiny_model_config.path}",
            "model.tiny=null", f"build.released={released_json}", *SMALL]


def events(run_dir):
    return [json.loads(line) for line in (run_dir / "pipeline.jsonl").read_text().splitlines()]


def test_interrupted_after_training_resumes_with_export_and_eval_only(tmp_path, tiny_model_config, released_json):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in child_env().items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "cst_dist.cli", *pipeline_args(tmp_path, tiny_model_config, released_json)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = [e for e in events(run_dir) if e["event"] == "end"] if (run_dir / "pipeline.jsonl").exists() else []
        if any(e["stage"] == "train" for e in done):
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole pipeline and whatever stage it started next
    proc.wait()
    first = len(events(run_dir))
    assert {"build", "train"} <= {e["stage"] for e in events(run_dir) if e["event"] == "end"}

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    started = [e["stage"] for e in events(run_dir)[first:] if e["event"] == "start"]
    assert set(started) <= {"export", "eval"} and "eval" in started, started
    assert "build: complete, skipped" in again.stdout and "train: complete, skipped" in again.stdout
    assert (run_dir / "eval" / "report.json").is_file() and "| base |" in again.stdout

    # Complete now: a third run starts nothing.
    third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "running" not in third.stdout


@pytest.mark.parametrize("extra, fragment", [
    (["--only", "serve"], "--only 'serve'"),
    (["pipeline.stages=[build,serve]"], "pipeline.stages"),
    (["pipeline.stages=[train,build]"], "pipeline.stages"),
    (["eval.models={x: /nowhere/run}"], "eval.models.x"),
    (["pipeline.arms={cst: [train.beta=-1]}"], "pipeline.arms.cst"),
])
def test_bad_settings_fail_before_any_stage(tmp_path, tiny_model_config, released_json, capsys, extra, fragment):
    args = pipeline_args(tmp_path, tiny_model_config, released_json)
    assert main(args + extra) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "run" / "pipeline.jsonl").exists()  # no stage started


def test_a_trained_and_exported_sft_base_is_complete(tmp_path, tiny_model_config):
    from cst_dist.config import load_config
    from cst_dist.pipeline import StageRun, stage_complete

    base = tmp_path / "run" / "base"
    config = load_config("tiny-cpu", [f"run_dir={base}", f"model.path={tiny_model_config.path}"])
    run = StageRun("sft", "base", config)
    (base / "checkpoints" / "step-00000300").mkdir(parents=True)
    (base / "checkpoints" / "step-00000300" / "complete.json").write_text('{"final": true}')
    (base / "checkpoints" / "latest").write_text("step-00000300")
    assert not stage_complete(run)  # trained, not exported yet
    (base / "export" / "latest").mkdir(parents=True)
    (base / "export" / "latest" / "export.json").write_text('{"stage": "export"}')
    assert stage_complete(run)  # where export_latest puts it (an export under the tag's name is not required)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if text.encode() in handle.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def test_a_killed_pipeline_takes_its_stage_with_it_and_shows_progress(tmp_path, tiny_model_config, released_json):
    import threading

    run_dir = tmp_path / "run"
    args = [*pipeline_args(tmp_path, tiny_model_config, released_json), "pipeline.stages=[build,train]",
            "train.max_steps=400", "train.reference=offload"]
    env = {k: v for k, v in child_env().items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "cst_dist.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        # Kill once the trainer has logged a step (its SIGTERM checkpoint needs a built engine) and the pipeline
        # has printed a progress line; generous bounds: CI's 2 cores are shared by the whole suite.
        deadline = time.time() + 480
        while time.time() < deadline and not (any(line.startswith("    train ") for line in lines)
                                              and (run_dir / "metrics.jsonl").is_file()):
            time.sleep(0.5)
        progress = [line for line in lines if line.startswith("    train ")]
        assert progress and " s: " in progress[0], lines  # the stage's own last log line, every 30 s
        assert _processes_mentioning(str(run_dir))  # the trainer runs
        os.kill(proc.pid, signal.SIGKILL)  # the pipeline alone, not its process group
        deadline = time.time() + 120
        while time.time() < deadline and _processes_mentioning(str(run_dir)):
            time.sleep(0.5)
        assert not _processes_mentioning(str(run_dir)), "the trainer outlived its pipeline"
        # It got SIGTERM, the trainer's preemption signal: it saved a checkpoint before leaving.
        assert (run_dir / "checkpoints" / "latest").is_file()
    finally:
        for pid in _processes_mentioning(str(run_dir)):
            os.kill(pid, signal.SIGKILL)


def test_a_complete_stage_with_changed_settings_is_refused_or_rerun(tmp_path, tiny_model_config, released_json,
                                                                   capsys):
    args = [*pipeline_args(tmp_path, tiny_model_config, released_json), "pipeline.stages=[build]"]
    manifest = tmp_path / "run" / "preference" / "manifest.json"
    assert main(args) == 0
    first = json.loads(manifest.read_text())
    assert main(args) == 0 and "build: complete, skipped" in capsys.readouterr().out
    changed = [*args, "build.eval_fraction=0.2"]
    assert main(changed) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("cst pipeline: error: stage build is complete but was made with other settings")
    assert "(build.eval_fraction changed)" in error and "--rerun-changed" in error
    assert json.loads(manifest.read_text()) == first  # nothing was touched
    assert main([*changed, "--rerun-changed"]) == 0
    assert "settings changed (build.eval_fraction)" in capsys.readouterr().out
    assert json.loads(manifest.read_text())["counts"] != first["counts"]
    assert main(changed) == 0 and "build: complete, skipped" in capsys.readouterr().out


def test_one_process_per_output_folder(tmp_path, tiny_model_config, released_json):
    """A second `cst train` in a run folder that a running one holds is refused in one line naming the holder."""
    from tests.training.launch import train_overrides

    build = [*pipeline_args(tmp_path, tiny_model_config, released_json), "pipeline.stages=[build]"]
    assert main(build) == 0
    run_dir = tmp_path / "run"
    overrides = train_overrides(tiny_model_config.path, run_dir / "preference", run_dir,
                                **{"train.max_steps": 400, "model.tiny": "null"})
    command = [sys.executable, "-m", "cst_dist.cli", "train", "tiny-cpu", *overrides]
    first = subprocess.Popen(command, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.time() + 360  # the first trainer holds the lock once it logs (bounds for a loaded CI)
        while time.time() < deadline and not (run_dir / "metrics.jsonl").is_file():
            time.sleep(0.2)
        assert (run_dir / "metrics.jsonl").is_file(), "the first trainer never started"
        second = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        last = second.stderr.strip().splitlines()[-1]
        assert f"run_dir {run_dir} is in use by another cst process (pid {first.pid})" in last, last
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # The kernel released the lock with the killed holder: the folder is usable again at once.
    from cst_dist.io import exclusive_lock

    with exclusive_lock(run_dir, "run_dir"):
        pass
