"""Prompts for `cst generate`: the vendored AdvBench train split (default) or a file of `id, prompt` rows, each
optionally placed inside a jailbreak template.

Templates are a JSON list of strings holding `{prompt}`. AdvBench train prompts use the split's
`jailbreak_template_index` (= split position % 18); other files use a row's `template_index` if given, else the row's
position modulo the number of templates. Without a templates file the prompt is used as it is (template_index null).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from cst_dist.config import GenerateConfig
from cst_dist.data.advbench import load_advbench, split_advbench
from cst_dist.data.schemas import check_fields
from cst_dist.generation.critique import PromptItem
from cst_dist.io import RecordError, is_utf8_text, read_rows

PROMPT_FIELDS = ("id", "prompt")
ADVBENCH_SOURCE = "advbench-train"


def load_templates(path: str | None) -> list[str]:
    """The jailbreak templates of `generate.templates`, checked: a non-empty JSON list of strings with `{prompt}`."""
    if path is None:
        return []
    try:
        templates = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(path, None, None, "file does not exist (generate.templates)") from None
    except json.JSONDecodeError as exc:
        raise RecordError(path, exc.lineno, None, f"not valid JSON ({exc.msg})") from None
    if not isinstance(templates, list) or not templates:
        raise RecordError(path, None, None, "must be a non-empty JSON list of template strings")
    for number, template in enumerate(templates, start=1):
        if not isinstance(template, str) or "{prompt}" not in template:
            raise RecordError(path, number, None, "a template must be a string containing {prompt}")
    return templates


def _advbench_rows() -> list[tuple[int, dict[str, Any]]]:
    """(split position + 1, row) of the 468 train prompts, in split order; ids name the AdvBench row."""
    rows = []
    for row in split_advbench(load_advbench()):
        if row["split"] == "train":
            prompt = {"id": f"advbench-{row['advbench_row']}", "prompt": row["goal"],
                      "template_index": row["jailbreak_template_index"]}
            rows.append((row["split_position"] + 1, prompt))
    return rows


def _file_rows(path: str) -> list[tuple[int, dict[str, Any]]]:
    """(row number, raw row) from CSV (data rows counted from 1) or JSONL/JSON/Parquet (see cst_dist.io.read_rows)."""
    if Path(path).suffix.lower() != ".csv":
        return list(read_rows(path))
    if not Path(path).is_file():
        raise RecordError(path, None, None, "file does not exist (generate.prompts)")
    # surrogateescape keeps bytes that are not UTF-8, so the row and column holding them can be named below.
    text = Path(path).read_bytes().decode("utf-8", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not is_utf8_text(reader.fieldnames or []):
        raise RecordError(path, None, None, "the header is not valid UTF-8 text; re-save the file as UTF-8")
    missing = [name for name in PROMPT_FIELDS if name not in (reader.fieldnames or ())]
    if reader.fieldnames and missing:
        raise RecordError(path, None, missing[0], f"missing column (header: {reader.fieldnames})")
    rows = list(enumerate(reader, start=1))
    for number, row in rows:
        bad = next((name for name, value in row.items() if not is_utf8_text(value)), None)
        if bad is not None:
            raise RecordError(path, number, bad, "not valid UTF-8 text; re-save the file as UTF-8")
    return rows


def _template_index(path: str, number: int, raw: dict[str, Any], position: int, count: int) -> int | None:
    if not count:
        return None
    given = raw.get("template_index")
    if given in (None, ""):
        return position % count
    try:
        index = int(given)
    except (TypeError, ValueError):
        raise RecordError(path, number, "template_index", f"expected an integer, got {given!r}") from None
    if not 0 <= index < count:
        raise RecordError(path, number, "template_index", f"{index} is out of range: {count} templates given")
    return index


def load_prompts(generate: GenerateConfig) -> tuple[list[PromptItem], str]:
    """The prompt items, in order, and a name of their source. Bad rows raise RecordError (file, row, field)."""
    source = generate.prompts or ADVBENCH_SOURCE
    raw_rows = _file_rows(generate.prompts) if generate.prompts else _advbench_rows()
    if not raw_rows:
        raise RecordError(source, None, None, "no prompts (the file is empty)")
    templates = load_templates(generate.templates)
    items, seen = [], {}
    for position, (number, raw) in enumerate(raw_rows):
        clean = check_fields(source, number, raw, PROMPT_FIELDS)
        if clean["id"] in seen:
            raise RecordError(source, number, "id", f"duplicate id {clean['id']!r} (first at row {seen[clean['id']]})")
        seen[clean["id"]] = number
        index = _template_index(source, number, raw, position, len(templates))
        # str.replace, not str.format: jailbreak templates are full of other braces.
        text = clean["prompt"] if index is None else templates[index].replace("{prompt}", clean["prompt"])
        items.append(PromptItem(id=clean["id"], prompt=clean["prompt"], text=text, template_index=index,
                                origin=f"{source}, row {number}"))
    return items[: generate.max_prompts], source
