"""Prompt sets and jailbreak templates: the AdvBench default, id/prompt files, and errors naming file, row, field."""

from __future__ import annotations

import json

import pytest

from cst_dist.config import GenerateConfig
from cst_dist.data.advbench import load_advbench, split_advbench
from cst_dist.generation.inputs import load_prompts
from cst_dist.io import RecordError


def write_templates(path, count=18):
    path.write_text(json.dumps([f"T{i} {{ignore me}} <{{prompt}}>" for i in range(count)]))
    return str(path)


def test_advbench_train_split_is_the_default(tmp_path):
    items, source = load_prompts(GenerateConfig())
    train = [row for row in split_advbench(load_advbench()) if row["split"] == "train"]
    assert source == "advbench-train" and len(items) == 468 == len({item.id for item in items})
    assert [item.prompt for item in items] == [row["goal"] for row in train]
    assert all(item.text == item.prompt and item.template_index is None for item in items)

    templated, _ = load_prompts(GenerateConfig(templates=write_templates(tmp_path / "t.json"), max_prompts=40))
    assert [item.template_index for item in templated] == [position % 18 for position in range(40)]
    assert templated[20].text == f"T2 {{ignore me}} <{templated[20].prompt}>"  # the prompt stays un-templated
    assert templated[20].prompt == train[20]["goal"]


def test_jsonl_and_csv_prompt_files(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"id": 1, "prompt": "one"}\n\n{"id": "b", "prompt": "two", "template_index": 2}\n')
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("id,prompt\na,one\nb,two\n")
    templates = write_templates(tmp_path / "t.json", 3)
    items, _ = load_prompts(GenerateConfig(prompts=str(jsonl), templates=templates))
    assert [(i.id, i.prompt, i.template_index) for i in items] == [("1", "one", 0), ("b", "two", 2)]
    items, _ = load_prompts(GenerateConfig(prompts=str(csv_file)))
    assert [(i.id, i.text, i.template_index) for i in items] == [("a", "one", None), ("b", "two", None)]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", "", r"empty\.jsonl: no prompts"),
        ("empty.csv", "", r"empty\.csv: no prompts"),
        ("header-only.csv", "id,prompt\n", r"header-only\.csv: no prompts"),
        ("no-text.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "b"}\n', r"no-text\.jsonl, row 2, field 'prompt'"),
        ("blank.csv", "id,prompt\na,x\nb,  \n", r"blank\.csv, row 2, field 'prompt': empty string"),
        ("dup.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', r"row 2, field 'id': duplicate"),
        ("cols.csv", "id,text\na,x\n", r"cols\.csv, field 'prompt': missing column"),
        ("list.json", '{"id": "a"}', r"list\.json: a \.json file must hold a list"),
    ],
)
def test_bad_prompt_files_name_file_row_and_field(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(RecordError, match=message):
        load_prompts(GenerateConfig(prompts=str(path)))


def test_bad_templates(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(["fine {prompt}", "no placeholder"]))
    with pytest.raises(RecordError, match=r"t\.json, row 2: a template must be a string containing \{prompt\}"):
        load_prompts(GenerateConfig(templates=str(path)))
    # AdvBench's split asks for templates 0..17: a shorter list is an error, not a silent modulo.
    with pytest.raises(RecordError, match="template_index': 2 is out of range: 2 templates given"):
        load_prompts(GenerateConfig(templates=write_templates(path, 2)))
    with pytest.raises(RecordError, match="does not exist"):
        load_prompts(GenerateConfig(templates=str(tmp_path / "missing.json")))
