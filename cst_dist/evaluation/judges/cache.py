"""The verdict cache of paid judges: JSONL, one verdict a line, appended and fsynced as each verdict arrives.

Key: sha256 of (judge model name, template hash, max new tokens, question, answer), so a rerun pays nothing twice,
and a changed judge model, judge prompt or reply budget never reuses old verdicts. Lines hold the key, the judge
name and the verdict only (`safe` or a refusal `label`, and `judge_raw`): no question, no answer, no credentials. A
line torn by a crash is skipped when the cache is read (warned, not fatal).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from cst_dist.evaluation.judges.base import Verdict

log = logging.getLogger(__name__)


def cache_key(model_name: str, template_hash: str, max_new_tokens: int, question: str, answer: str) -> str:
    # max_new_tokens too: a reply cut short (unparsed) must be asked again when the budget is raised.
    text = json.dumps([model_name, template_hash, max_new_tokens, question, answer], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class VerdictCache:
    """key -> verdict, read once at start, appended to by any thread (one write(2) per line under a lock)."""

    def __init__(self, path: Path, judge_name: str):
        self.path, self.judge_name = Path(path), judge_name
        self._lock = threading.Lock()
        self._verdicts: dict[str, Verdict] = self._read()
        # A torn last line has no newline: start the next line on a fresh one, or it would be glued to the fragment.
        self._newline_first = self.path.is_file() and self.path.stat().st_size > 0 and not self._ends_in_newline()

    def _read(self) -> dict[str, Verdict]:
        verdicts, torn = {}, 0
        if not self.path.is_file():
            return verdicts
        with open(self.path, "rb") as handle:
            for raw in handle:
                try:
                    line = json.loads(raw.decode("utf-8"))
                    line["judge_raw"]  # every verdict has it; its other fields (safe, or a refusal label) vary
                    verdicts[line["key"]] = {name: value for name, value in line.items()
                                             if name not in ("key", "judge")}
                except (ValueError, KeyError, TypeError):
                    torn += 1
        if torn:
            log.warning("judge cache %s: skipped %d unreadable line(s) (a run killed mid-write?)", self.path, torn)
        return verdicts

    def _ends_in_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def __len__(self) -> int:
        return len(self._verdicts)

    def get(self, key: str) -> Verdict | None:
        return self._verdicts.get(key)

    def put(self, key: str, verdict: Verdict) -> None:
        """Record a verdict and make it durable before returning: a crash after this keeps it."""
        line = {"key": key, "judge": self.judge_name, **verdict}  # safe + judge_raw, or label + judge_raw
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._newline_first:
                data, self._newline_first = b"\n" + data, False
            # O_APPEND + one write: lines never interleave; a kill mid-write tears at most this last line.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._verdicts[key] = dict(verdict)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "entries": len(self._verdicts)}
