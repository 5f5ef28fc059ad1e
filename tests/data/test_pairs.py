"""The one reader of `cst generate` pairs folders, as build and the self-critique yield use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cst_dist.data.pairs import open_pair_folder
from cst_dist.io import RecordError


def _folder(root: Path, manifest: dict | str | None, shards: int = 2) -> Path:
    folder = root / "pairs"
    (folder / "rejects").mkdir(parents=True)
    (folder / "rejects" / "shard-00000.jsonl").write_text(json.dumps({"id": "r"}) + "\n")  # never read as pairs
    for shard in reversed(range(shards)):  # written out of order: read in shard order
        rows = [{"id": f"s{shard}-{i}", "prompt": "q", "y0": "a", "y1": "b", "critique": "c"} for i in range(2)]
        (folder / f"shard-{shard:05d}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if manifest is not None:
        (folder / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return folder


def test_shards_in_order_and_rows_checked(tmp_path):
    folder = open_pair_folder(_folder(tmp_path, {"complete": True, "totals": {"pairs": 4}}), "build.pairs")
    assert [file.name for file in folder.files] == ["shard-00000.jsonl", "shard-00001.jsonl"]
    assert folder.manifest == {"complete": True, "totals": {"pairs": 4}}
    folder.require_complete("never raised")
    assert [row["id"] for row in folder.rows()] == ["s0-0", "s0-1", "s1-0", "s1-1"]
    assert set(folder.rows()[0]) == {"id", "prompt", "y0", "y1"}
    (folder.files[1]).write_text(json.dumps({"id": "x", "prompt": "q", "y0": "a"}) + "\n")
    with pytest.raises(RecordError) as error:
        folder.rows()
    assert (error.value.path, error.value.row, error.value.field) == (str(folder.files[1]), 1, "y1")


def test_refusals_name_the_folder_and_setting(tmp_path):
    unfinished = _folder(tmp_path / "a", {"complete": False, "num_shards": 5, "shards": {"0": {}, "1": {}}})
    with pytest.raises(RecordError, match=r"unfinished `cst generate` output \(2 of 5 shards\); finish it"):
        open_pair_folder(unfinished, "build.pairs").require_complete("finish it")
    assert len(open_pair_folder(unfinished, "eval.pairs").rows()) == 4  # the caller decides whether that is fine
    no_manifest = _folder(tmp_path / "b", None)
    assert open_pair_folder(no_manifest, "build.pairs").manifest is None
    with pytest.raises(RecordError, match="eval.pairs names a folder that is not a `cst generate` output"):
        open_pair_folder(no_manifest, "eval.pairs", require_manifest=True)
    with pytest.raises(RecordError, match="build.pairs names a folder without shard-"):
        open_pair_folder(_folder(tmp_path / "c", {"complete": True}, shards=0), "build.pairs")
    torn = _folder(tmp_path / "d", "{torn")
    with pytest.raises(RecordError, match=f"{torn / 'manifest.json'}: not readable"):
        open_pair_folder(torn, "build.pairs")
