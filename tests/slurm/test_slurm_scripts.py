"""The slurm/ scripts on a real Slurm cluster of two fake nodes (tests/slurm/harness.sh).

- train.sbatch trains the tiny preset on 2 nodes over gloo and checkpoints; USR1 to the batch script mid-run makes it
  checkpoint, requeue itself and finish from the checkpoint with the same losses as an uninterrupted run;
- a bad config on one node ends the whole job with a non-zero exit and the error in the job's log;
- generate.sbatch brings Ray up on both nodes and pairs come from actors on both Ray nodes;
- pipeline.sh chains generate -> build -> train -> export -> eval (afterok) and the eval report exists; a failed stage
  cancels every job after it; a second pipeline.sh submits nothing when every stage is complete;
- scaling_study.sh runs the throughput benchmark at 1 and 2 nodes and collects one table.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest
import torch

from cst_dist.training.reference import CACHE_NAME
from tests.slurm.conftest import CPU_JOB, REPO, SlurmCluster
from tests.training.launch import read_metrics, train_overrides

pytestmark = pytest.mark.slurm
TRAIN_STEPS = 30


def losses(run_dir) -> torch.Tensor:
    return torch.tensor([row["loss"] for row in read_metrics(run_dir)], dtype=torch.float64)


@pytest.fixture(scope="module")
def train_runs(slurm_cluster: SlurmCluster, tiny_model_config, preference_dir, tmp_path_factory):
    """Two 2-node runs of the same training, side by side: one uninterrupted, one sent USR1 mid-run."""
    root = tmp_path_factory.mktemp("slurm-train")
    data = root / "preference"  # a private copy: no reference cache of other tests next to it
    shutil.copytree(preference_dir, data, ignore=shutil.ignore_patterns(CACHE_NAME))

    def overrides(name):
        return train_overrides(tiny_model_config.path, data, root / name, **{
            "train.max_steps": TRAIN_STEPS, "train.reference": "precomputed", "train.save_steps": 100})

    reference, waiting = slurm_cluster.sbatch_wait_in_background("train.sbatch", "tiny-cpu", *overrides("reference"))
    interrupted, _ = slurm_cluster.sbatch("train.sbatch", "tiny-cpu", *overrides("interrupted"))
    metrics = root / "interrupted" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    signalled_after = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
    # What Slurm does near the time limit (--signal=B:USR1@300): USR1 to the batch script only.
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(interrupted)], check=True)
    end = slurm_cluster.wait(interrupted, timeout=600)
    waiting.communicate(timeout=600)
    return {"root": root, "reference": reference, "reference_result": waiting, "interrupted": interrupted,
            "interrupted_end": end, "signalled_after": signalled_after}


def test_train_sbatch_trains_on_two_nodes_and_checkpoints(slurm_cluster, train_runs):
    job, result = train_runs["reference"], train_runs["reference_result"]
    log = slurm_cluster.log(job)
    assert result.returncode == 0, log[-4000:]
    run = train_runs["root"] / "reference"
    assert [row["step"] for row in read_metrics(run)] == list(range(1, TRAIN_STEPS + 1))
    marker = json.loads((run / "checkpoints" / f"step-{TRAIN_STEPS:08d}" / "complete.json").read_text())
    assert marker["world_size"] == 2 and marker["final"] is True
    assert "2 ranks x micro-batch 2 x accumulation 2" in log
    # one torchrun per fake node, each with its own log
    assert (slurm_cluster.logs / f"cst-train-{job}-node0.log").is_file()
    assert (slurm_cluster.logs / f"cst-train-{job}-node1.log").is_file()
    assert "training complete" in log


def test_usr1_checkpoints_requeues_and_resumes_to_the_same_losses(slurm_cluster, train_runs):
    job = train_runs["interrupted"]
    log = slurm_cluster.log(job)
    ends = slurm_cluster.ends(job)
    # jobcomp records the requeued run (PENDING again) and then the completed one
    assert [end.state for end in ends] == ["PENDING", "COMPLETED"], (ends, log[-4000:])
    assert train_runs["interrupted_end"].exit_code == "0:0"
    stopped = re.search(r"stopped by a signal at step (\d+)/(\d+)", log)
    assert stopped, log[-4000:]
    stopped_at = int(stopped.group(1))
    assert train_runs["signalled_after"] <= stopped_at < TRAIN_STEPS, "the run finished before the signal arrived"
    assert f"resumed from {train_runs['root'] / 'interrupted'}/checkpoints/step-{stopped_at:08d}" in log
    assert "requeueing job" in log and "restart 1:" in log
    # the checkpoint the signal made is kept (keep_checkpoints=2) and was saved by both ranks
    marker = json.loads((train_runs["root"] / "interrupted" / "checkpoints" / f"step-{stopped_at:08d}" /
                         "complete.json").read_text())
    assert marker["world_size"] == 2 and marker["final"] is False
    interrupted, reference = losses(train_runs["root"] / "interrupted"), losses(train_runs["root"] / "reference")
    assert len(interrupted) == len(reference) == TRAIN_STEPS
    print(f"stopped at step {stopped_at}; final loss interrupted {interrupted[-1].item():.10f}, "
          f"uninterrupted {reference[-1].item():.10f}")
    torch.testing.assert_close(interrupted, reference, rtol=1e-5, atol=0)


def test_a_bad_config_on_one_node_fails_the_whole_job(slurm_cluster, tiny_model_config, preference_dir, tmp_path):
    # The interpreter of node 1 only hands its rank an unknown key: a bad config on one node.
    python = tmp_path / "python-node1-bad"
    python.write_text(
        "#!/usr/bin/env bash\n"
        'if [[ "${SLURM_NODEID:-0}" == 1 && "$1" == -m && "$2" == torch.distributed.run ]]; then\n'
        f'  exec {slurm_cluster.env["CST_PYTHON"]} "$@" train.no_such_key=1\n'
        "fi\n"
        f'exec {slurm_cluster.env["CST_PYTHON"]} "$@"\n'
    )
    python.chmod(0o755)
    overrides = train_overrides(tiny_model_config.path, preference_dir, tmp_path / "run",
                                **{"train.reference": "precomputed"})
    job, result = slurm_cluster.sbatch("train.sbatch", "tiny-cpu", *overrides, wait=True, timeout=300,
                                       CST_PYTHON=str(python))
    log = slurm_cluster.log(job, "cst-train")
    assert result.returncode != 0
    own_log = (slurm_cluster.logs / f"cst-train-{job}.out").read_text()
    assert "train.no_such_key: unknown key" in own_log  # the node's error, copied into the job's own log
    assert "training failed" in own_log, log[-3000:]
    assert slurm_cluster.ends(job)[-1].state == "FAILED"


@pytest.fixture(scope="module")
def pipeline(slurm_cluster: SlurmCluster, tiny_model_config, tmp_path_factory):
    """The whole chain on the tiny preset: generate (Ray on both nodes) -> build -> train -> export -> eval."""
    run_dir = tmp_path_factory.mktemp("slurm-pipeline") / "run"
    overrides = [
        f"model.path={tiny_model_config.path}", f"run_dir={run_dir}",
        "generate.max_prompts=8", "generate.shard_size=2", "generate.sampling.max_new_tokens=8",
        "generate.num_replicas=2", "generate.cpus_per_replica=1",  # one CPU per Ray node: one actor on each
        f"build.pairs=[{run_dir}/pairs]", "build.released=null",
        "data.max_length=96", "data.max_prompt_length=48", "train.max_steps=2", "train.global_batch_size=4",
        "train.micro_batch_size=2", "train.reference=precomputed",
        "eval.max_prompts=4", "eval.shard_size=2", "eval.judge.kind=keyword", "eval.preference=false",
        "eval.sampling.max_new_tokens=8",
    ]
    result = slurm_cluster.run("pipeline.sh", "tiny-cpu", *overrides, CST_SBATCH_ARGS=" ".join(CPU_JOB))
    assert result.returncode == 0, result.stderr
    jobs = dict(line.split() for line in result.stdout.splitlines())
    ends = {stage: slurm_cluster.wait(int(job), timeout=600) for stage, job in jobs.items()}
    return {"run_dir": run_dir, "jobs": jobs, "ends": ends, "overrides": overrides}



def test_generate_sbatch_writes_pairs_from_actors_on_both_ray_nodes(slurm_cluster, pipeline):
    job = int(pipeline["jobs"]["generate"])
    log = slurm_cluster.log(job, "cst-generate")
    assert pipeline["ends"]["generate"].state == "COMPLETED", log[-4000:]
    # the Ray cluster the script brought up: 2 alive nodes, one per fake node (each its own IP)
    ray_nodes = dict(re.findall(r"ray node ([0-9a-f]{56}) at (\S+):", log.split("Ray: 2 node(s) alive")[0]))
    assert len(ray_nodes) == 2 and set(ray_nodes.values()) == {"127.0.0.11", "127.0.0.12"}, log[-3000:]
    manifest = json.loads((pipeline["run_dir"] / "pairs" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["totals"]["prompts"] == 8
    shard_nodes = {entry["node"] for entry in manifest["shards"].values()}
    print("Ray nodes:", ray_nodes, "; nodes that wrote shards:", sorted(shard_nodes))
    assert shard_nodes == set(ray_nodes)  # every shard came from an actor on one of the two nodes, and both worked
    assert "Ray stopped" in log


def test_pipeline_chains_the_stages_and_the_last_output_exists(slurm_cluster, pipeline):
    jobs, ends = pipeline["jobs"], pipeline["ends"]
    assert list(jobs) == ["generate", "build", "train", "export", "eval"]
    logs = "\n".join(slurm_cluster.log(int(job)) for job in jobs.values())
    assert all(end.state == "COMPLETED" for end in ends.values()), (ends, logs[-4000:])
    stages = list(ends.values())
    # afterok: each stage starts only once the one before it has ended
    for before, after in zip(stages[:-1], stages[1:], strict=True):
        assert after.start >= before.end, (before, after)
    run_dir = pipeline["run_dir"]
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert report  # the last job's output
    assert (run_dir / "export" / "step-00000002" / "export.json").is_file()
    assert (run_dir / "checkpoints" / "step-00000002" / "complete.json").is_file()
    # everything is complete now: the same command submits nothing
    again = slurm_cluster.run("pipeline.sh", "tiny-cpu", *pipeline["overrides"], CST_SBATCH_ARGS=" ".join(CPU_JOB))
    assert again.returncode == 0 and again.stdout == "", again.stderr
    assert "nothing submitted" in again.stderr


def test_a_failed_stage_cancels_the_jobs_after_it(slurm_cluster, tiny_model_config, tmp_path):
    result = slurm_cluster.run("pipeline.sh", "tiny-cpu", f"model.path={tiny_model_config.path}",
                               f"run_dir={tmp_path / 'run'}", f"build.pairs=[{tmp_path / 'missing.jsonl'}]",
                               "build.released=null", CST_SBATCH_ARGS=" ".join(CPU_JOB),
                               CST_STAGES="build train export eval")
    assert result.returncode == 0, result.stderr
    jobs = dict(line.split() for line in result.stdout.splitlines())
    assert list(jobs) == ["build", "train", "export", "eval"]
    states = {stage: slurm_cluster.wait(int(job), timeout=300).state for stage, job in jobs.items()}
    assert states == {"build": "FAILED", "train": "CANCELLED", "export": "CANCELLED", "eval": "CANCELLED"}
    assert "missing.jsonl: file does not exist" in slurm_cluster.log(int(jobs["build"]))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_scaling_study_collects_one_table(slurm_cluster, tmp_path):
    out = tmp_path / "scaling"
    result = slurm_cluster.run(
        "scaling_study.sh", "--nodes", "1 2", "--shapes", "32x1", "--steps", "3", "--out", str(out), "--",
        "--variants", "cst", "--max-length", "128", "--max-prompt-length", "64", "--heads", "2", "--kv-heads", "1",
        CST_SBATCH_ARGS=" ".join(CPU_JOB),
    )
    assert result.returncode == 0, result.stderr
    jobs = dict(line.split() for line in result.stdout.splitlines())
    assert list(jobs) == ["1n-32x1", "2n-32x1", "collect"]
    end = slurm_cluster.wait(int(jobs["collect"]), timeout=600)
    logs = "\n".join(slurm_cluster.log(int(job)) for job in jobs.values())
    assert end.state == "COMPLETED", logs[-4000:]
    table = json.loads((out / "scaling.json").read_text())
    assert [(row["nodes"], row["shape"], row["variant"]) for row in table["rows"]] == [
        (1, "32x1", "cst"), (2, "32x1", "cst")], logs[-3000:]
    assert all(row["real_tokens_per_s"] > 0 for row in table["rows"]) and table["missing"] == []
    markdown = (out / "scaling.md").read_text()
    assert markdown.count("| 32x1 |") == 2
    assert str(REPO) not in markdown  # a table of numbers, not of paths
