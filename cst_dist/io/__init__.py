"""File I/O shared by every stage: atomic writes, output-folder checks, and row readers that name the file and row
of a bad record.

Outputs never cost the user anything they had: an existing folder is only replaced when it is an earlier output of
the same stage and the user asked for it (`check_output_dir`), and written files honour the umask.

    atomic.py   atomic files and folders (temporary name, fsync, rename), umask-following permissions
    outputs.py  one process per output (advisory locks), replace-or-refuse of an existing output, writability
    records.py  input rows (JSONL, JSON, CSV, Parquet) with errors naming file, row and field; file hashes
"""

from cst_dist.io.atomic import (
    STAGING_NAME,
    OutputError,
    atomic_directory,
    atomic_file,
    remove_stale_staging,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from cst_dist.io.outputs import check_output_dir, check_writable_dir, exclusive_lock, read_marker
from cst_dist.io.records import (
    RecordError,
    file_fingerprint,
    file_sha256,
    is_utf8_text,
    read_csv_columns,
    read_parquet_table,
    read_rows,
)

__all__ = [
    "STAGING_NAME", "OutputError", "RecordError", "atomic_directory", "atomic_file", "check_output_dir",
    "check_writable_dir", "exclusive_lock", "file_fingerprint", "file_sha256", "is_utf8_text", "read_marker",
    "read_csv_columns", "read_parquet_table", "read_rows", "remove_stale_staging", "write_json_atomic",
    "write_jsonl_atomic", "write_text_atomic",
]
