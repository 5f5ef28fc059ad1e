"""Issue 7, generation side: prompt files that are not UTF-8, and prompts that cannot fit the model's context.

A too-long prompt is rejected before turn 1 as "prompt too long" (generate.over_length=skip: every prompt still ends
up in exactly one row of a shard or its rejects, and the manifest counts it) or stops the run naming the prompt and
its row (generate.over_length=error). Runs without Ray: the chain and the worker are plain classes.
"""

from __future__ import annotations

import json

import pytest

from cst_dist.cli import main
from cst_dist.config import GenerateConfig, SamplingConfig
from cst_dist.engines import HFEngine, RecordingEngine
from cst_dist.farm.shards import plan_shards
from cst_dist.generation.critique import TOO_LONG, PromptItem, PromptTooLongError, SelfCritiqueChain
from cst_dist.generation.inputs import load_prompts
from cst_dist.generation.pairs import PairStore, make_plan
from cst_dist.generation.run import GenerationWorker
from cst_dist.io import RecordError
from tests.generation.helpers import generate_config, read_jsonl, read_pairs

LONG_PROMPT = "Explain, word by word, why this sentence keeps going on and on. " * 120
SAMPLING = SamplingConfig(temperature=1.0, max_new_tokens=6, seed=5)


@pytest.fixture(scope="module")
def engine(tiny_model_config):
    return HFEngine(tiny_model_config, batch_size=4)


def write_prompts(path, prompts: list[str]) -> str:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": text}) + "\n" for i, text in enumerate(prompts)))
    return str(path)


# Bytes that are not UTF-8.


def test_non_utf8_jsonl_prompt_names_file_and_row(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": "caf\xe9"}\n')
    with pytest.raises(RecordError) as info:
        load_prompts(GenerateConfig(prompts=str(path)))
    assert (info.value.path, info.value.row) == (str(path), 2) and "not valid UTF-8 (byte 0xe9" in str(info.value)


def test_non_utf8_csv_prompt_names_file_row_and_column(tmp_path, tiny_model_config, capsys):
    path = tmp_path / "prompts.csv"
    path.write_bytes(b'id,prompt\na,fine\nb,"two\nlines"\nc,caf\xe9 au lait\n')
    with pytest.raises(RecordError) as info:
        load_prompts(GenerateConfig(prompts=str(path)))
    assert (info.value.path, info.value.row, info.value.field) == (str(path), 3, "prompt")
    code = main(["generate", "tiny-cpu", f"model.path={tiny_model_config.path}", f"run_dir={tmp_path}",
                 f"generate.prompts={path}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"cst generate: error: {path}, row 3, field 'prompt': not valid UTF-8")
    assert not (tmp_path / "pairs").exists()
    header = tmp_path / "header.csv"
    header.write_bytes(b"id,pr\xf6mpt\na,x\n")
    with pytest.raises(RecordError, match=r"header\.csv: the header is not valid UTF-8"):
        load_prompts(GenerateConfig(prompts=str(header)))


# Prompts that cannot fit the model's context.


def test_too_long_prompt_is_rejected_before_turn_one(engine):
    recorder = RecordingEngine(engine)
    texts = ["Write a poem", LONG_PROMPT, "Hi", "Tell me about ships"]
    items = [PromptItem(id=f"p{i}", prompt=text, text=text) for i, text in enumerate(texts)]
    result = SelfCritiqueChain(recorder, generator="tiny").run(items, SAMPLING)
    [reject] = [row for row in result.rejects if row["reason"] == TOO_LONG]
    assert reject["id"] == "p1" and reject["prompt"] == LONG_PROMPT
    assert reject["y0"] is reject["critique"] is reject["y1"] is None
    assert reject["needed_tokens"] > reject["max_context"] == engine.max_positions
    assert reject["prompt_tokens"] == engine.count_tokens([{"role": "user", "content": LONG_PROMPT}])
    assert [len(call) for call in recorder.calls] == [3, 3, 3]  # the long prompt was never sent
    assert [item.id for item in result.generated] == ["p0", "p2", "p3"]
    assert sorted(row["id"] for row in result.rows + result.rejects) == ["p0", "p1", "p2", "p3"]


def test_the_bound_covers_all_three_turns(engine):
    """A prompt whose turn 1 fits but whose turn 3 (with two answers and both requests) may not is rejected too."""
    message = [{"role": "user", "content": "Hi"}]
    budget = engine.max_positions - engine.count_tokens(message)
    fits_once = SamplingConfig(temperature=1.0, max_new_tokens=budget // 2, seed=1)  # turn 1 alone would fit
    result = SelfCritiqueChain(engine).run([PromptItem(id="short", prompt="Hi", text="Hi")], fits_once)
    assert [(row["id"], row["reason"]) for row in result.rejects] == [("short", TOO_LONG)]


def test_over_length_error_names_the_prompt_and_its_row(tmp_path, engine):
    path = write_prompts(tmp_path / "prompts.jsonl", ["fine", LONG_PROMPT])
    items, _ = load_prompts(GenerateConfig(prompts=path))
    with pytest.raises(PromptTooLongError) as info:
        SelfCritiqueChain(engine, over_length="error").run(items, SAMPLING)
    message = str(info.value)
    assert message.startswith(f"prompt 'q1' ({path}, row 2) needs ") and "generate.over_length=skip" in message
    assert "\n" not in message


def test_worker_shard_keeps_every_prompt_and_counts_the_too_long(tmp_path, tiny_model_config):
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["Write a poem", LONG_PROMPT, "Hi", LONG_PROMPT + "!"])
    config = generate_config(tiny_model_config, tmp_path / "pairs", prompts=prompts, shard_size=4,
                             save_conversations=True)
    assert config.generate.over_length == "skip"
    items, source = load_prompts(config.generate)
    [shard] = plan_shards(items, config.generate.shard_size, config.generate.sampling)
    result = GenerationWorker(config).run_shard(shard)
    assert len(result.conversations) == 2 * 3  # two prompts fit, three turns each
    store = PairStore(config.pairs_dir, make_plan(config, items, source), num_shards=1)
    store.save(shard, result, attempts=1)
    pairs, rejects = read_pairs(config.pairs_dir)
    assert sorted(row["id"] for row in pairs + rejects) == ["q0", "q1", "q2", "q3"]
    assert {row["id"] for row in rejects if row["reason"] == TOO_LONG} == {"q1", "q3"}
    manifest = json.loads((config.pairs_dir / "manifest.json").read_text())
    assert manifest["shards"][shard.name]["reject_reasons"][TOO_LONG] == 2
    assert manifest["totals"]["reject_reasons"][TOO_LONG] == 2 and manifest["complete"]
    sent = {record["id"] for record in read_jsonl(config.pairs_dir / "conversations" / f"{shard.name}.jsonl")}
    assert sent == {"q0", "q2"}
