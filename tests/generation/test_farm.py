"""The Ray farm on a local Ray instance: exactly-once output from 2 actors, a killed actor, resume, bad input."""

from __future__ import annotations

import importlib.util
import json

import pytest

from cst_dist.build.run import build_preference_set
from cst_dist.config import RunConfig
from cst_dist.farm.shards import plan_shards
from cst_dist.generation.inputs import load_prompts
from cst_dist.generation.run import GenerationError, GenerationWorker, run_farm
from cst_dist.models import ModelLoadError
from cst_dist.prompts import CRITIQUE_REQUEST, REVISION_REQUEST
from tests.generation.helpers import generate_config, read_jsonl, read_pairs, shard_texts

PROMPTS = 24
SHARDS = 6  # 24 prompts in shards of 4
TURNS = 3


@pytest.fixture(scope="module")
def reference_run(ray_cluster, tiny_model_config, tmp_path_factory):
    """One uninterrupted run: the output every interrupted, resumed or retried run must reproduce byte for byte."""
    output = tmp_path_factory.mktemp("reference") / "pairs"
    config = generate_config(tiny_model_config, output, save_conversations=True)
    summary = run_farm(config)
    return config, summary


def assert_exactly_once(folder, count=PROMPTS):
    pairs, rejects = read_pairs(folder)
    ids = [row["id"] for row in pairs + rejects]
    assert len(ids) == len(set(ids)) == count
    return pairs, rejects


def test_two_actors_write_every_prompt_once(reference_run):
    config, summary = reference_run
    folder = config.pairs_dir
    pairs, rejects = assert_exactly_once(folder)
    items, _ = load_prompts(config.generate)
    assert {row["id"] for row in pairs + rejects} == {item.id for item in items}
    assert summary.complete and summary.shards_generated == SHARDS and summary.engine_calls == SHARDS * TURNS
    assert 0 < summary.generated_tokens <= PROMPTS * TURNS * 8
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["totals"]["pairs"] == len(pairs) == summary.pairs
    assert len({entry["worker"] for entry in manifest["shards"].values()}) == 2  # both actors did work
    assert set(pairs[0]) == {"id", "prompt", "y0", "critique", "y1", "generator", "sampling", "template_index"}


def test_turns_sent_to_the_engine_continue_one_conversation(reference_run):
    config, _ = reference_run
    pairs, rejects = read_pairs(config.pairs_dir)
    rows = {row["id"]: row for row in pairs + rejects}
    records = [r for path in sorted((config.pairs_dir / "conversations").glob("*.jsonl")) for r in read_jsonl(path)]
    assert len(records) == PROMPTS * TURNS
    turns = {(r["id"], r["turn"]): r["messages"] for r in records}
    for row_id, row in rows.items():
        first, second, third = (turns[row_id, turn] for turn in (1, 2, 3))
        assert first == [{"role": "user", "content": row["prompt"]}]
        assert second == first + [{"role": "assistant", "content": row["y0"]},
                                  {"role": "user", "content": CRITIQUE_REQUEST}]
        assert third == second + [{"role": "assistant", "content": row["critique"]},
                                  {"role": "user", "content": REVISION_REQUEST}]


def test_plain_worker_reproduces_a_farm_shard(reference_run):
    """The worker without Ray gives shard 2 exactly as the farm wrote it: same seed, same text, any process."""
    config, _ = reference_run
    items, _ = load_prompts(config.generate)
    shard = plan_shards(items, config.generate.shard_size, config.generate.sampling)[2]
    result = GenerationWorker(config).run_shard(shard)
    assert result.rows == read_jsonl(config.pairs_dir / "shard-00002.jsonl")
    assert result.rejects == read_jsonl(config.pairs_dir / "rejects" / "shard-00002.jsonl")


def test_build_reads_the_pairs(reference_run, tmp_path):
    config, summary = reference_run
    files = sorted(str(path) for path in config.pairs_dir.glob("shard-*.jsonl"))
    build = RunConfig.model_validate({"model": {"path": "unused"},
                                      "build": {"pairs": files, "output": str(tmp_path / "preference")}})
    assert build_preference_set(build).counts["rows"] == 2 * summary.pairs


def test_killed_actor_shard_is_retried(reference_run, tiny_model_config, tmp_path):
    """ray.kill on the actor running a shard: the shard is re-run on a replacement; the output is unchanged.

    The newest in-flight shard was submitted just before the event, so it is surely still running when killed."""
    import ray

    killed = []

    def kill_one_running(event):
        if not killed and event.in_flight:
            shard_name, actor_name = list(event.in_flight.items())[-1]
            ray.kill(ray.get_actor(actor_name), no_restart=True)
            killed.append(shard_name)

    config = generate_config(tiny_model_config, tmp_path / "pairs")
    summary = run_farm(config, on_shard_done=kill_one_running)
    assert killed and summary.retries == 1 and summary.complete
    assert_exactly_once(config.pairs_dir)
    manifest = json.loads((config.pairs_dir / "manifest.json").read_text())
    assert manifest["shards"][killed[0]]["attempts"] == 2
    assert shard_texts(config.pairs_dir) == shard_texts(reference_run[0].pairs_dir)


def test_shard_fails_the_run_after_max_retries(ray_cluster, tiny_model_config, tmp_path):
    import ray

    killed = set()

    def kill_every_running(event):
        for actor_name in set(event.in_flight.values()) - killed:
            ray.kill(ray.get_actor(actor_name), no_restart=True)
            killed.add(actor_name)

    config = generate_config(tiny_model_config, tmp_path / "pairs", max_retries=0)
    with pytest.raises(GenerationError, match=r"shard-\d{5} \(prompts advbench-\d+ .. advbench-\d+\): its actor died "
                                              r"1 times \(generate.max_retries=0\)"):
        run_farm(config, on_shard_done=kill_every_running)
    manifest = json.loads((config.pairs_dir / "manifest.json").read_text())
    assert not manifest["complete"]
    assert sorted(p.name for p in config.pairs_dir.glob("shard-*.jsonl")) == sorted(
        entry["file"] for entry in manifest["shards"].values())  # only finished shards have files


def test_resume_skips_finished_shards(reference_run, tiny_model_config, tmp_path):
    """Stopped after 2 shards (max_shards), then by an error after 1 more: each rerun does only what is missing,
    and the result is identical to the uninterrupted run."""
    output = tmp_path / "pairs"
    first = run_farm(generate_config(tiny_model_config, output, max_shards=2))
    assert (first.shards_generated, first.engine_calls, first.complete) == (2, 2 * TURNS, False)

    class Stop(Exception):
        pass

    def stop_after_one(event):
        raise Stop

    with pytest.raises(Stop):
        run_farm(generate_config(tiny_model_config, output), on_shard_done=stop_after_one)
    assert len(list(output.glob("shard-*.jsonl"))) == 3

    last = run_farm(generate_config(tiny_model_config, output))
    assert (last.shards_skipped, last.shards_generated, last.engine_calls) == (3, 3, 3 * TURNS)
    assert last.complete and shard_texts(output) == shard_texts(reference_run[0].pairs_dir)
    again = run_farm(generate_config(tiny_model_config, output))
    assert (again.shards_generated, again.engine_calls, again.pairs) == (0, 0, last.pairs)


def test_rerun_with_another_plan_is_refused(reference_run, tiny_model_config):
    config, _ = reference_run
    changed = generate_config(tiny_model_config, config.pairs_dir, sampling={"temperature": 0.5, "max_new_tokens": 8})
    with pytest.raises(GenerationError, match=r"another plan \(sampling: .*'temperature': 1\.0.* -> .*0\.5"):
        run_farm(changed)


def test_missing_model_folder_fails_before_any_shard(ray_cluster, tmp_path):
    config = RunConfig.model_validate({"model": {"path": str(tmp_path / "no-model")},
                                       "generate": {"output": str(tmp_path / "pairs"), "max_prompts": 4}})
    with pytest.raises(ModelLoadError, match="no-model.*model.path"):
        run_farm(config)
    assert not (tmp_path / "pairs").exists()


def test_bad_prompt_file_fails_before_any_shard(ray_cluster, tiny_model_config, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": ""}\n')
    config = generate_config(tiny_model_config, tmp_path / "pairs", prompts=str(prompts))
    with pytest.raises(Exception, match=r"p\.jsonl, row 2, field 'prompt': empty string"):
        run_farm(config)
    assert not (tmp_path / "pairs").exists()


def test_worker_errors_fail_the_run_with_their_message(ray_cluster, tiny_model_config, tmp_path):
    """An error inside the chain is not retried (it would repeat); a worker that cannot start fails the run."""
    too_long = generate_config(tiny_model_config, tmp_path / "a", num_replicas=1, sampling={"max_new_tokens": 1020},
                               over_length="error")
    with pytest.raises(GenerationError, match=r"shard-00000 failed on cst-generate-\w+-0-1: prompt 'advbench-\d+' "
                                              r"\(advbench-train, row \d+\) needs \d+ tokens .*max_new_tokens=1020"):
        run_farm(too_long)
    if importlib.util.find_spec("vllm") is not None:
        return
    vllm = generate_config(tiny_model_config, tmp_path / "b", num_replicas=1, engine="vllm")
    with pytest.raises(GenerationError, match="a generation worker failed to start: .*vLLM is not installed"):
        run_farm(vllm)
    assert not list(tmp_path.rglob("shard-*.jsonl"))
