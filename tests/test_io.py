"""Atomic writes and row readers: a failure never leaves a half-written file or folder."""

from __future__ import annotations

import pytest

from cst_dist.io import RecordError, atomic_directory, read_rows, write_text_atomic


def test_atomic_directory_keeps_previous_folder_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError), atomic_directory(target, replace=True) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind
    with atomic_directory(target, replace=True) as staging:
        (staging / "a.txt").write_text("v2")
    assert (target / "a.txt").read_text() == "v2" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_file_leaves_no_partial_file(tmp_path):
    target = tmp_path / "x.json"
    write_text_atomic(target, "old")
    with pytest.raises(ValueError):
        from cst_dist.io import atomic_file

        with atomic_file(target) as handle:
            handle.write("new but half")
            raise ValueError
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_read_rows_names_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"id": 1}\n\n[1, 2]\n{oops\n')
    rows = read_rows(path)
    assert next(rows) == (1, {"id": 1})
    with pytest.raises(RecordError, match=r"pairs\.jsonl, row 3: expected a JSON object"):
        next(rows)
    skipped = []
    assert [n for n, _ in read_rows(path, skipped.append)] == [1]
    assert [e.row for e in skipped] == [3, 4] and "not valid JSON" in str(skipped[1])
    with pytest.raises(RecordError, match="missing.jsonl: file does not exist"):
        list(read_rows(tmp_path / "missing.jsonl"))


def test_file_fingerprint_sees_changes_in_large_files(tmp_path):
    from cst_dist.io import file_fingerprint, file_sha256

    small = tmp_path / "small.bin"
    small.write_bytes(b"abc")
    assert file_fingerprint(small) == file_sha256(small)
    big = tmp_path / "big.bin"
    payload = bytearray(range(256)) * (4096 * 5)  # 5 MiB
    big.write_bytes(payload)
    before = file_fingerprint(big, blocks=4, block_size=1 << 16)
    payload[1 :: 1 << 12] = bytes(len(payload[1 :: 1 << 12]))  # a fine-tune changes bytes in every block
    big.write_bytes(payload)
    assert file_fingerprint(big, blocks=4, block_size=1 << 16) != before


def test_a_failed_write_names_the_output(tmp_path):
    """A write that fails with no file name (a full disk, a file size limit) is reported with the output's path."""
    import errno

    import pytest

    from cst_dist.cli import one_line
    from cst_dist.io import atomic_directory, atomic_file

    for opener in (lambda: atomic_file(tmp_path / "out.json"), lambda: atomic_directory(tmp_path / "folder")):
        with pytest.raises(OSError) as caught, opener():
            raise OSError(errno.EFBIG, "File too large")
        assert caught.value.errno == errno.EFBIG
        assert one_line(caught.value).startswith("File too large while writing: ") and str(tmp_path) in one_line(
            caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written left behind
