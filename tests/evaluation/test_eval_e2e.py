"""`cst eval` end to end on CPU: two tiny models side by side on 2 Ray actors, a killed actor, an interrupted and
resumed run, the checkpoints of a real training run as a curve, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from cst_dist.cli import main
from cst_dist.config import ModelConfig, RunConfig, TinyModelConfig
from cst_dist.evaluation.runner import run_eval
from cst_dist.models import ensure_model
from tests.training.test_training_units import cst_train, train_overrides

SYSTEMS = 3  # s1, the training s0 and the unseen S0 prompt: eval.system_prompts' default


def eval_config(tiny_model_config, run_dir, models, **extra) -> RunConfig:
    """4 test prompts x 3 system prompts = 12 answers per model, in 4 shards of 3, on 2 CPU actors, 8 greedy tokens."""
    settings = {"models": {name: str(path) for name, path in models.items()}, "protocol": "full", "max_prompts": 4,
                "sampling": {"temperature": 0.0, "max_new_tokens": 8}, "shard_size": 3, "batch_size": 4,
                "num_replicas": 2, "gpus_per_replica": 0, "judge": {"kind": "keyword"}, "preference": False, **extra}
    return RunConfig.model_validate({"run_dir": str(run_dir), "model": tiny_model_config.model_dump(),
                                     "eval": settings})


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tiny_model_config):
    """The tiny model and a second one of the same shape with other weights (seed 1)."""
    other = ModelConfig(path=str(tmp_path_factory.mktemp("models") / "other"), tiny=TinyModelConfig(seed=1))
    ensure_model(other)
    return {"tiny": tiny_model_config.path, "other": other.path}


def answers(folder):
    return [json.loads(line) for path in sorted(folder.glob("shard-*.jsonl")) for line in path.read_text().splitlines()]


def test_two_models_side_by_side_full_protocol(ray_cluster, tiny_model_config, two_models, tmp_path):
    result = run_eval(eval_config(tiny_model_config, tmp_path, two_models))
    safety = result.report["safety"]
    assert [(e["model"], e["n"]) for e in safety] == [(m, 4) for m in ("tiny", "other") for _ in range(SYSTEMS)]
    assert {e["condition"] for e in safety} == {"S1", "S0"}  # s1, then the two uncensored prompts
    for name in ("tiny", "other"):
        rows = answers(tmp_path / "eval" / name / "generations")
        assert len(rows) == 4 * SYSTEMS and len({row["id"] for row in rows}) == 4 * SYSTEMS
        judged = [json.loads(line) for line in (tmp_path / "eval" / name / "judged.jsonl").read_text().splitlines()]
        assert [row["id"] for row in judged] == [row["id"] for row in rows] and all("safe" in row for row in judged)
    assert answers(tmp_path / "eval" / "tiny" / "generations") != answers(tmp_path / "eval" / "other" / "generations")
    import matplotlib.image

    image = matplotlib.image.imread(result.files["safety_chart"])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert json.loads(result.files["json"].read_text())["safety"] == safety
    assert "tiny" in result.table and "other" in result.table


def test_killed_actor_still_gives_one_answer_per_prompt(ray_cluster, tiny_model_config, two_models, tmp_path):
    import ray

    # An 8-token shard can finish before ray.kill lands (then nothing is retried): each attempt must still give one
    # answer per prompt, and within a few attempts a kill lands mid-shard and its shard reruns on another actor.
    retried = 0
    for attempt in range(4):
        killed = []

        def kill_one(done, killed=killed):
            if not killed and done.in_flight:
                killed.append(list(done.in_flight.values())[-1])
                ray.kill(ray.get_actor(killed[0]), no_restart=True)

        folder = tmp_path / f"attempt{attempt}"
        result = run_eval(eval_config(tiny_model_config, folder, {"tiny": two_models["tiny"]}), on_shard_done=kill_one)
        assert killed
        rows = answers(folder / "eval" / "tiny" / "generations")
        assert sorted(row["id"] for row in rows) == sorted({row["id"] for row in rows}) and len(rows) == 4 * SYSTEMS
        retried = result.generation["tiny"]["retries"]
        if retried:
            break
    assert retried >= 1, "no kill landed mid-shard in 4 attempts"


def test_interrupted_eval_generates_only_the_missing_shards(ray_cluster, tiny_model_config, two_models, tmp_path):
    config = eval_config(tiny_model_config, tmp_path, two_models)
    first = run_eval(config)
    assert first.generation["tiny"] == {"shards": 4, "generated": 4, "engine_calls": 4, "retries": 0}
    folder = tmp_path / "eval" / "tiny" / "generations"
    before = answers(folder)
    for name in ("shard-00001.jsonl", "shard-00003.jsonl"):  # as if the run died before these were written
        (folder / name).unlink()
    again = run_eval(config)
    assert again.generation["tiny"]["generated"] == 2 and again.generation["tiny"]["engine_calls"] == 2
    assert again.generation["other"]["generated"] == 0 and again.generation["other"]["engine_calls"] == 0
    assert answers(folder) == before  # greedy: the regenerated shards are the same answers


def test_every_checkpoint_of_a_run_as_a_curve(ray_cluster, tiny_model_config, preference_dir, tmp_path):
    run = tmp_path / "run"
    trained = cst_train(train_overrides(tiny_model_config.path, preference_dir, run, **{
        "train.max_steps": 2, "train.save_steps": 1, "train.reference": "precomputed"}))
    assert trained.returncode == 0, trained.stderr[-2000:]
    config = eval_config(tiny_model_config, tmp_path, {"cst": run}, checkpoints="all", max_prompts=2, shard_size=6)
    result = run_eval(config)
    assert sorted({(e["model"], e["step"]) for e in result.report["safety"]}) == [("cst", 1), ("cst", 2)]
    assert sorted(result.generation) == ["cst@1", "cst@2"]  # one generations folder per checkpoint
    assert all((run / "export" / f"step-0000000{step}" / "export.json").is_file() for step in (1, 2))
    assert result.files["steps_chart"].is_file()


def test_bad_inputs_are_one_line_errors(tiny_model_config, two_models, tmp_path, capsys):
    def error_of(*overrides):
        code = main(["eval", "tiny-cpu", f"run_dir={tmp_path / 'r'}", f"model.path={two_models['tiny']}",
                     "eval.judge.kind=keyword", *overrides])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1, lines
        return lines[0]

    assert "eval.models.x" in error_of(f"eval.models={{x: {tmp_path / 'missing'}}}")
    empty_run = tmp_path / "empty-run"
    (empty_run / "checkpoints").mkdir(parents=True)
    assert "no complete checkpoint" in error_of(f"eval.models={{x: {empty_run}}}")
    assert "eval.judge.kind" in error_of("eval.judge.kind=oracle")
    shutil.rmtree(empty_run)


@pytest.mark.parametrize("inside", ["checkpoints", "checkpoints/step-00000002", "export/x", "preference", "pairs"])
def test_eval_output_inside_another_stages_folder_is_refused(tmp_path, capsys, inside):
    from cst_dist.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert main(["eval", "tiny-cpu", f"run_dir={run}", f"eval.output={run / inside}",
                 "eval.judge.kind=keyword"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "which `cst " in error and "owns" in error
    assert not (run / inside / "report.json").exists()
