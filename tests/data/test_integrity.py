"""Issue 7, data side: nothing a user has is ever lost, and every bad input is a one-line error.

Outputs: an existing folder is replaced only when it is an earlier output of the same stage and the user asked for
it; inputs and the run folder are never an output; staging left by killed runs is cleaned; the umask is honoured;
a file where a folder should be, or a read-only folder, fails before any work. Inputs: bytes that are not UTF-8,
corrupt Parquet, null or wrongly typed preference values, a tampered set, an empty or unfinished pairs folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cst_dist.build.run import build_preference_set
from cst_dist.cli import main
from cst_dist.config import RunConfig
from cst_dist.data.preference_set import SPLIT_FILES, PreferenceSetError
from cst_dist.errors import UserError
from cst_dist.io import (
    OutputError,
    RecordError,
    atomic_directory,
    check_writable_dir,
    file_sha256,
    read_rows,
    write_text_atomic,
)

TRAIN_FILE = SPLIT_FILES["train"]


def _config(tmp_path: Path, **build) -> RunConfig:
    return RunConfig.model_validate({"model": {"path": "unused"}, "run_dir": str(tmp_path / "run"), "build": build})


def _pairs_file(path: Path, n: int = 3, prefix: str = "p") -> str:
    rows = [{"id": f"{prefix}{i}", "prompt": f"how to {i}?", "y0": f"sure {i}", "y1": f"no {i}"} for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli_build(tmp_path: Path, capsys, *overrides: str) -> tuple[int, str]:
    """`cst build` in-process on the tiny preset without the released set; (exit code, stderr)."""
    code = main(["build", "tiny-cpu", f"run_dir={tmp_path / 'run'}", "build.released=null", *overrides])
    return code, capsys.readouterr().err


def _assert_one_line(err: str, stage: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cst {stage}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# 1. Never delete what the command did not create.


def test_build_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    models = tmp_path / "models"
    (models / "mistral").mkdir(parents=True)
    (models / "mistral" / "weights.safetensors").write_bytes(b"precious")
    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    for overwrite in ("false", "true"):
        code, err = _cli_build(tmp_path, capsys, f"build.pairs=[{pairs}]", f"build.output={models}",
                               f"build.overwrite={overwrite}")
        assert code == 2
        _assert_one_line(err, "build", str(models), "not a `cst build` output", "new or empty folder")
    assert (models / "mistral" / "weights.safetensors").read_bytes() == b"precious"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_an_earlier_build_is_replaced_only_when_asked(tmp_path, capsys):
    output = tmp_path / "preference"
    first = _pairs_file(tmp_path / "first.jsonl", 2)
    assert build_preference_set(_config(tmp_path, pairs=[first], output=str(output))).counts["pairs"] == 2
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["stage"] == "build"
    before = _snapshot(output)
    second = _pairs_file(tmp_path / "second.jsonl", 5)
    code, err = _cli_build(tmp_path, capsys, f"build.pairs=[{second}]", f"build.output={output}")
    assert code == 2
    _assert_one_line(err, "build", str(output), "earlier `cst build` output", "build.overwrite=true")
    assert _snapshot(output) == before
    result = build_preference_set(_config(tmp_path, pairs=[second], output=str(output), overwrite=True))
    assert result.counts["pairs"] == 5 and _snapshot(output) != before


def test_an_empty_existing_folder_is_used(tmp_path):
    output = tmp_path / "empty"
    output.mkdir()
    result = build_preference_set(_config(tmp_path, pairs=[_pairs_file(tmp_path / "p.jsonl")], output=str(output)))
    assert (result.output / TRAIN_FILE).is_file()


@pytest.mark.parametrize("where", ["the pairs folder", "a parent of the pairs file", "the run folder"])
def test_build_output_is_never_an_input_or_the_run_folder(tmp_path, capsys, where):
    pairs_folder = tmp_path / "data" / "pairs"
    pairs = _pairs_file(pairs_folder / "shard-00000.jsonl")
    output = {"the pairs folder": pairs_folder, "a parent of the pairs file": tmp_path / "data",
              "the run folder": tmp_path / "run"}[where]
    (tmp_path / "run").mkdir()
    before = _snapshot(tmp_path)
    entry = pairs_folder if where == "the pairs folder" else pairs
    code, err = _cli_build(tmp_path, capsys, f"build.pairs=[{entry}]", f"build.output={output}",
                           "build.overwrite=true")
    assert code == 2
    _assert_one_line(err, "build", f"build.output {output} is or holds", "an input of `cst build`")
    after = _snapshot(tmp_path)
    after.pop("run/config.yaml", None)  # the CLI records the resolved config before the stage runs
    assert after == before


def _fake_run(tmp_path: Path) -> tuple[Path, str]:
    """A run folder with one complete checkpoint, as far as the export's output check looks."""
    from cst_dist.run_layout import RunLayout
    from cst_dist.training.checkpoint import MARKER

    run_dir, tag = tmp_path / "run", "step-00000002"
    (RunLayout(run_dir).checkpoint(tag)).mkdir(parents=True)
    (RunLayout(run_dir).checkpoint(tag) / MARKER).write_text("{}")
    (RunLayout(run_dir).checkpoints / "latest").write_text(tag)
    (run_dir / "metrics.jsonl").write_text("{}\n")
    return run_dir, tag


def test_export_output_is_checked_like_build_output(tmp_path):
    from cst_dist.run_layout import RunLayout
    from cst_dist.training.export import EXPORT_MARKER, check_export_output

    run_dir, tag = _fake_run(tmp_path)
    checkpoint = run_dir / "checkpoints" / tag
    for output in (run_dir, run_dir / "checkpoints", checkpoint, tmp_path):
        with pytest.raises(OutputError, match="is or holds"):
            check_export_output(output, RunLayout(run_dir), tag, overwrite=True)
    models = tmp_path / "models"
    (models / "base").mkdir(parents=True)
    with pytest.raises(OutputError, match="not a `cst export` output"):
        check_export_output(models, RunLayout(run_dir), tag, overwrite=True)
    default = run_dir / "export" / tag
    assert check_export_output(default, RunLayout(run_dir), tag, overwrite=False) is False  # nothing there yet
    default.mkdir(parents=True)
    (default / "model.safetensors").write_bytes(b"x")
    (default / EXPORT_MARKER).write_text(json.dumps({"stage": "export", "tag": tag, "dtype": "float32"}))
    with pytest.raises(OutputError, match="pass --overwrite"):
        check_export_output(default, RunLayout(run_dir), tag, overwrite=False)
    assert check_export_output(default, RunLayout(run_dir), tag, overwrite=True) is True
    file_output = tmp_path / "model.bin"
    file_output.write_bytes(b"x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_export_output(file_output, RunLayout(run_dir), tag, overwrite=True)


def test_cli_export_refuses_the_run_folder_as_output(tmp_path, capsys):
    run_dir, _ = _fake_run(tmp_path)
    (run_dir / "config.yaml").write_text(json.dumps({"model": {"path": str(tmp_path / "model")}}))
    before = _snapshot(run_dir)
    assert main(["export", str(run_dir), "--output", str(run_dir), "--overwrite"]) == 2
    _assert_one_line(capsys.readouterr().err, "export", f"--output {run_dir} is or holds")
    assert _snapshot(run_dir) == before


def test_atomic_directory_never_replaces_what_it_was_not_told_to(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    with pytest.raises(OutputError, match="not empty"), atomic_directory(target) as staging:
        (staging / "new.txt").write_text("x")
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# 2. Staging left by killed runs.


def test_staging_of_killed_builds_is_removed_by_the_next_build(tmp_path, caplog):
    output = tmp_path / "preference"
    pairs = _pairs_file(tmp_path / "p.jsonl")
    build_preference_set(_config(tmp_path, pairs=[pairs], output=str(output)))
    torn = tmp_path / ".preference.k1ll3d_x.tmp"  # a build killed mid-write
    (torn / "data").mkdir(parents=True)
    (torn / "data" / "train-00000-of-00001.parquet").write_bytes(b"half")
    retired = tmp_path / ".preference.abcd1234.old" / "preference"  # killed after its replacement was in place
    retired.mkdir(parents=True)
    other = tmp_path / ".preference-v2.abcd1234.tmp"  # another target's staging: not ours to remove
    other.mkdir()
    with caplog.at_level(logging.INFO, logger="cst_dist.io"):
        build_preference_set(_config(tmp_path, pairs=[pairs], output=str(output), overwrite=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".preference-v2.abcd1234.tmp", "p.jsonl", "preference"]
    assert "removed 2 staging folder(s)" in caplog.text


def test_an_interrupted_replacement_restores_the_previous_output(tmp_path, capsys):
    """Killed between its two renames: the old output sits in `.old`, the target is missing. It is moved back."""
    output = tmp_path / "preference"
    pairs = _pairs_file(tmp_path / "p.jsonl")
    build_preference_set(_config(tmp_path, pairs=[pairs], output=str(output)))
    before = _snapshot(output)
    retired = tmp_path / ".preference.zz99zz99.old"
    retired.mkdir()
    os.replace(output, retired / "preference")
    code, err = _cli_build(tmp_path, capsys, f"build.pairs=[{pairs}]", f"build.output={output}")
    assert code == 2 and "earlier `cst build` output" in err  # restored, so it needs build.overwrite again
    assert _snapshot(output) == before and not retired.exists()


# 3. The umask.


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    previous = os.umask(umask)
    try:
        result = build_preference_set(_config(tmp_path, pairs=[_pairs_file(tmp_path / "p.jsonl")],
                                              output=str(tmp_path / "preference")))
        write_text_atomic(tmp_path / "single.txt", "x")
    finally:
        os.umask(previous)
    entries = [result.output, *result.output.rglob("*")]
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in entries}
    assert {name: mode for name, mode in modes.items() if mode != (dir_mode if Path(tmp_path / name).is_dir()
                                                                   else file_mode)} == {}
    assert len(modes) >= 5  # the folder, data/, a Parquet file, README.md, manifest.json
    assert stat.S_IMODE((tmp_path / "single.txt").stat().st_mode) == file_mode


# 4. Bytes that are not UTF-8.


def _bad_bytes_pairs(tmp_path: Path) -> str:
    path = tmp_path / "pairs.jsonl"
    good = [{"id": f"p{i}", "prompt": f"q{i}", "y0": f"a{i}", "y1": f"b{i}"} for i in range(3)]
    lines = [json.dumps(good[0]).encode(), json.dumps(good[1]).encode().replace(b"a1", b"a\xff\xfe1"),
             json.dumps(good[2]).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def test_non_utf8_pair_row_is_a_one_line_error_or_a_counted_skip(tmp_path, capsys):
    pairs = _bad_bytes_pairs(tmp_path)
    with pytest.raises(RecordError) as info:
        build_preference_set(_config(tmp_path, pairs=[pairs]))
    assert (info.value.path, info.value.row) == (pairs, 2) and "not valid UTF-8 (byte 0xff" in str(info.value)
    code, err = _cli_build(tmp_path, capsys, f"build.pairs=[{pairs}]")
    assert code == 2
    _assert_one_line(err, "build", f"{pairs}, row 2: not valid UTF-8")
    result = build_preference_set(_config(tmp_path, pairs=[pairs], on_bad_row="skip"))
    assert result.counts["pairs"] == 2 and result.skips.by_reason == {"pairs.jsonl: row": 1}


def test_non_utf8_released_json_names_row_and_field(tmp_path):
    released = tmp_path / "released.json"
    row = {"system": "s", "prompt": "q", "chosen": "OK", "rejected": "b", "task": "truthfulness"}
    text = json.dumps([row, row]).encode()
    cut = text.rindex(b'"OK"')
    released.write_bytes(text[:cut] + b'"O\xc3K"' + text[cut + 4 :])  # \xc3 starts a 2-byte sequence; K is no tail
    with pytest.raises(RecordError) as info:
        build_preference_set(_config(tmp_path, released=str(released)))
    assert (info.value.path, info.value.row, info.value.field) == (str(released), 2, "chosen")
    assert "not valid UTF-8" in str(info.value)


# 5. Corrupt Parquet, bad values in a preference set, a set that does not match its manifest.


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_corrupt_parquet_is_one_line_error(tmp_path, damage):
    built = build_preference_set(_config(tmp_path, pairs=[_pairs_file(tmp_path / "p.jsonl")])).output
    path = tmp_path / "pairs.parquet"
    data = (built / TRAIN_FILE).read_bytes()
    path.write_bytes(os.urandom(2048) if damage == "random bytes" else data[: len(data) // 2])
    with pytest.raises(RecordError, match=r"pairs\.parquet: not a readable Parquet file") as info:
        list(read_rows(path))
    assert "\n" not in str(info.value)


def _preference_set(tmp_path: Path) -> Path:
    config = _config(tmp_path, pairs=[_pairs_file(tmp_path / "p.jsonl", 4)], output=str(tmp_path / "preference"))
    return build_preference_set(config).output


def _replace_train_file(folder: Path, payload: bytes | pa.Table, update_manifest: bool = True) -> Path:
    """Put other content in the train split; with update_manifest the checksum is made to match (so only the content
    check can catch it)."""
    path = folder / TRAIN_FILE
    if isinstance(payload, pa.Table):
        pq.write_table(payload, path)
    else:
        path.write_bytes(payload)
    if update_manifest:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"][TRAIN_FILE] = file_sha256(path)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return path


def _train_config(folder: Path, model_config) -> RunConfig:
    return RunConfig.model_validate({"model": model_config.model_dump(), "train": {"data": str(folder)}})


def _load(folder: Path, model_config, tokenizer):
    from cst_dist.training.data import load_tokenized_set

    config = _train_config(folder, model_config)
    return load_tokenized_set(config.train_data_dir, config.data, tokenizer)


def test_trainer_loader_names_corrupt_parquet(tmp_path, tiny_model_config, tiny_tokenizer):
    folder = _preference_set(tmp_path)
    assert len(_load(folder, tiny_model_config, tiny_tokenizer).pairs) == 8
    path = _replace_train_file(folder, os.urandom(4096))
    with pytest.raises(RecordError, match=f"{path}: not a readable Parquet file"):
        _load(folder, tiny_model_config, tiny_tokenizer)


@pytest.mark.parametrize("case", ["null chosen", "int prompt"])
def test_trainer_loader_names_file_row_and_column_of_a_bad_value(tmp_path, tiny_model_config, tiny_tokenizer, case):
    folder = _preference_set(tmp_path)
    rows = pq.read_table(folder / TRAIN_FILE).to_pylist()
    if case == "null chosen":
        rows[2]["chosen"] = None
        table, expected = pa.Table.from_pylist(rows), (3, "chosen", "missing field")
    else:
        for number, row in enumerate(rows):
            row["prompt"] = number
        table, expected = pa.Table.from_pylist(rows), (1, "prompt", "expected a string, got int")
    path = _replace_train_file(folder, table)
    with pytest.raises(RecordError) as info:
        _load(folder, tiny_model_config, tiny_tokenizer)
    assert (info.value.path, info.value.row, info.value.field) == (str(path), *expected[:2])
    assert expected[2] in str(info.value)


@pytest.mark.parametrize("case", ["no manifest", "changed file", "unlisted file"])
def test_trainer_checks_the_manifest(tmp_path, tiny_model_config, tiny_tokenizer, capsys, case):
    folder = _preference_set(tmp_path)
    if case == "no manifest":
        (folder / "manifest.json").unlink()
        expected = f"{folder} (train.data) has no manifest.json"
    elif case == "changed file":
        rows = pq.read_table(folder / TRAIN_FILE).to_pylist()
        _replace_train_file(folder, pa.Table.from_pylist(rows[1:]), update_manifest=False)
        expected = f"{folder / TRAIN_FILE}: its sha256 does not match"
    else:
        (folder / "data" / "train-00001-of-00001.parquet").write_bytes((folder / TRAIN_FILE).read_bytes())
        expected = f"{folder / 'data' / 'train-00001-of-00001.parquet'}: not listed in"
    with pytest.raises(UserError) as info:
        _load(folder, tiny_model_config, tiny_tokenizer)
    assert expected in str(info.value) and "cst build" in str(info.value) and "\n" not in str(info.value)


# 6. A file where a folder should be; a read-only output.


def test_a_file_where_a_folder_should_be(tmp_path, capsys, tiny_model_config, tiny_tokenizer):
    pairs = _pairs_file(tmp_path / "p.jsonl")
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    for output, message in ((blocker, f"build.output {blocker} is a file, not a folder"),
                            (blocker / "preference", f"is under {blocker}, which is a file")):
        code, err = _cli_build(tmp_path, capsys, f"build.pairs=[{pairs}]", f"build.output={output}",
                               "build.overwrite=true")
        assert code == 2
        _assert_one_line(err, "build", message)
    assert blocker.read_text() == "mine"
    code, err = _cli_build(tmp_path, capsys, f"build.pairs=[{blocker / 'pairs.jsonl'}]")
    assert code == 2
    _assert_one_line(err, "build", f"{blocker / 'pairs.jsonl'}: file does not exist ({blocker} is a file")
    with pytest.raises(PreferenceSetError, match=f"train.data {blocker} is a file"):
        _load(blocker, tiny_model_config, tiny_tokenizer)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder on a read-only bind mount: as root, chmod 0555 does not stop writes, a read-only mount does."""
    source, mounted = tmp_path / "source", tmp_path / "readonly"
    (source / "existing").mkdir(parents=True)
    mounted.mkdir()
    try:
        subprocess.run(["mount", "--bind", str(source), str(mounted)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make a read-only bind mount here ({exc}); the read-only check is not exercised")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mounted)], check=True, capture_output=True)
        yield mounted
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot remount the bind mount read-only here ({exc}); the read-only check is not exercised")
    finally:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            subprocess.run(["umount", str(mounted)], check=True, capture_output=True)


def test_a_read_only_output_fails_before_any_work(tmp_path, capsys, read_only_dir):
    with pytest.raises(OutputError, match=f"probe {read_only_dir} is not writable"):
        check_writable_dir(read_only_dir, "probe")
    for output in (read_only_dir / "preference", read_only_dir / "existing"):
        # A missing pairs file would be the first error if the output were checked after the inputs.
        code, err = _cli_build(tmp_path, capsys, f"build.pairs=[{tmp_path / 'absent.jsonl'}]",
                               f"build.output={output}")
        assert code == 2
        _assert_one_line(err, "build", "build.output", str(read_only_dir), "is not writable (Read-only file system)")


def test_check_writable_dir_creates_the_folder_and_leaves_nothing(tmp_path):
    folder = check_writable_dir(tmp_path / "a" / "b", "run_dir")
    assert folder.is_dir() and list(folder.iterdir()) == []


# 7. Inputs are never dropped silently.


def test_a_pairs_folder_without_shards_is_an_error(tmp_path, capsys):
    folder = tmp_path / "pairs"
    (folder / "rejects").mkdir(parents=True)
    _pairs_file(folder / "rejects" / "shard-00000.jsonl")
    code, err = _cli_build(tmp_path, capsys, f"build.pairs=[{folder}]")
    assert code == 2
    _assert_one_line(err, "build", f"{folder}: build.pairs names a folder without shard-*.jsonl files")


def _generate_folder(tmp_path: Path, complete: bool) -> Path:
    folder = tmp_path / "pairs"
    _pairs_file(folder / "shard-00000.jsonl", 2, "a")
    _pairs_file(folder / "shard-00001.jsonl", 1, "b")
    totals = {"shards": 2, "prompts": 4, "pairs": 3, "rejects": 1, "generated_tokens": 96}
    shards = {f"shard-0000{i}": {"index": i} for i in range(2)}
    manifest = {"schema_version": 1, "plan": {}, "num_shards": 2 if complete else 5, "shards": shards,
                "totals": totals, "complete": complete}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_an_unfinished_generate_output_is_refused_unless_allowed(tmp_path, capsys):
    folder = _generate_folder(tmp_path, complete=False)
    code, err = _cli_build(tmp_path, capsys, f"build.pairs=[{folder}]")
    assert code == 2
    _assert_one_line(err, "build", str(folder), "unfinished `cst generate` output (2 of 5 shards)",
                     "build.allow_incomplete_pairs=true")
    result = build_preference_set(_config(tmp_path, pairs=[str(folder)], allow_incomplete_pairs=True))
    assert result.counts["pairs"] == 3


def test_the_build_manifest_lists_every_input_folder(tmp_path):
    folder = _generate_folder(tmp_path, complete=True)
    loose = _pairs_file(tmp_path / "loose.jsonl", 1, "c")
    result = build_preference_set(_config(tmp_path, pairs=[str(folder), loose]))
    manifest = json.loads((result.output / "manifest.json").read_text())
    assert manifest["input_folders"] == [{
        "path": str(folder), "shard_files": 2, "rows": 3, "generate_complete": True,
        "generate_totals": {"shards": 2, "prompts": 4, "pairs": 3, "rejects": 1, "generated_tokens": 96},
    }]
    assert [source["path"] for source in manifest["sources"]] == [
        str(folder / "shard-00000.jsonl"), str(folder / "shard-00001.jsonl"), loose]
