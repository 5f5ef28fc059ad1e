"""The generic shard folder: files before the manifest, totals, resume, and another plan refused. No Ray."""

from __future__ import annotations

import json

import pytest

from cst_dist.farm import FarmError
from cst_dist.farm.shards import plan_shards
from cst_dist.farm.store import ShardStore

PLAN = {"model": "m", "shard_size": 2}
SHARDS = plan_shards(["a", "b", "c"], shard_size=2)  # shard 0: a, b; shard 1: c


def save(store: ShardStore, index: int) -> None:
    shard = SHARDS[index]
    rows = [{"id": item, "answer": item.upper()} for item in shard.items]
    store.save(shard, {f"notes/{shard.name}.jsonl": [{"shard": index}], f"{shard.name}.jsonl": rows},
               {"items": len(rows), "reasons": {"short": 1}, "seconds": 0.5})


def test_manifest_lists_entries_and_sums_counts(tmp_path):
    store = ShardStore(tmp_path, PLAN, len(SHARDS), counted=("items", "reasons"))
    save(store, 1)
    assert not store.complete and store.finished() == {1}
    save(store, 0)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert list(manifest) == ["schema_version", "plan", "num_shards", "shards", "totals", "complete"]
    assert list(manifest["shards"]) == ["shard-00000", "shard-00001"]
    assert manifest["shards"]["shard-00001"] == {"index": 1, "file": "shard-00001.jsonl", "items": 1,
                                                 "reasons": {"short": 1}, "seconds": 0.5}
    assert manifest["totals"] == {"shards": 2, "items": 3, "reasons": {"short": 2}} and manifest["complete"]
    assert (tmp_path / "notes" / "shard-00000.jsonl").read_text() == '{"shard": 0}\n'


def test_resume_needs_the_manifest_entry_and_the_file(tmp_path, monkeypatch):
    store = ShardStore(tmp_path, PLAN, len(SHARDS), counted=("items",))
    save(store, 0)
    (tmp_path / "shard-00000.jsonl").unlink()
    assert ShardStore(tmp_path, PLAN, len(SHARDS), counted=("items",)).finished() == set()

    import cst_dist.farm.store as store_module

    def crash_on_the_shard_file(path, rows):  # the side file is written, then the crash: no manifest entry
        if path == tmp_path / "shard-00001.jsonl":
            raise OSError("disk full")
        write(path, rows)

    write = store_module.write_jsonl_atomic
    monkeypatch.setattr(store_module, "write_jsonl_atomic", crash_on_the_shard_file)
    with pytest.raises(OSError):
        save(store, 1)
    assert (tmp_path / "notes" / "shard-00001.jsonl").is_file()
    assert "shard-00001" not in json.loads((tmp_path / "manifest.json").read_text())["shards"]


def test_another_plan_in_the_folder_is_refused_naming_what_changed(tmp_path):
    save(ShardStore(tmp_path, PLAN, len(SHARDS), counted=("items",)), 0)
    with pytest.raises(FarmError, match=r"holds answers of another plan \(shard_size: 2 -> 4\); set evaluate.output "
                                        r"to a new folder"):
        ShardStore(tmp_path, {**PLAN, "shard_size": 4}, 1, counted=("items",), contents="answers",
                   output_setting="evaluate.output")
