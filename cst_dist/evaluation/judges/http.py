"""A judge behind an OpenAI-compatible endpoint: `POST {base_url}/chat/completions` (OpenAI, vLLM, TGI, llama.cpp).

Requests run on a pool of `eval.judge.concurrency` threads, each with `timeout_s`. 429, 5xx, timeouts and connection
errors are retried `max_retries` times, waiting `Retry-After` seconds when the endpoint sends it, else an exponential
backoff; any other 4xx stops at once. Every verdict goes to the cache the moment it arrives, so an endpoint that
stays down stops the run with one line naming base_url and loses nothing: the rerun asks only what is missing.
The API key is read from the environment, sent as `Authorization: Bearer`, and written nowhere (messages that quote
the endpoint's replies have it masked).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from cst_dist.config import ConfigError, JudgeConfig
from cst_dist.errors import UserError
from cst_dist.evaluation.judges.base import Verdict, judge_messages, parse_reply, template_hash
from cst_dist.evaluation.judges.cache import VerdictCache, cache_key

log = logging.getLogger(__name__)
MAX_WAIT_S = 60.0  # the longest single wait, Retry-After included; eval.judge.retry_budget_s bounds their sum


class JudgeEndpointError(UserError, RuntimeError):
    """The endpoint refused a request or stayed unreachable past the retries."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class _Stopped(Exception):
    """Another request already failed the run: stop quietly."""


def _retry_after(headers: Any) -> float | None:
    """`Retry-After: <seconds>`; an HTTP-date or garbage falls back to the backoff."""
    try:
        return max(0.0, float(headers.get("Retry-After")))
    except (TypeError, ValueError):
        return None


class HttpJudge:
    def __init__(self, config: JudgeConfig, cache_path: Path):
        self.config, self.base_url = config, str(config.base_url).rstrip("/")
        parsed = urllib.parse.urlparse(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"eval.judge.base_url {self.base_url!r} is not an http(s) URL (e.g. "
                              "http://localhost:8000/v1)")
        self.url = f"{self.base_url}/chat/completions"
        self.name = f"http:{config.model_name}"
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        self._api_key = key.strip() if key and key.strip() else None
        if self._api_key is not None and not all(32 < ord(c) < 127 for c in self._api_key):
            # An HTTP header cannot carry it, and http.client's error would quote the whole key.
            raise ConfigError(f"${config.api_key_env} (eval.judge.api_key_env) holds characters an HTTP header "
                              "cannot carry (a line break, a space or a non-ASCII character); fix the variable")
        self._waited_s, self._keys = 0.0, []
        self._template_hash = template_hash(config.template)
        self.cache = VerdictCache(cache_path, self.name)
        self.stats: Counter = Counter()
        self._lock, self._stop = threading.Lock(), threading.Event()

    def judge(self, rows: list[dict[str, Any]]) -> list[Verdict]:
        """Verdicts in row order; only rows (question, answer) the cache lacks are sent, each once."""
        # Two endpoints may serve different models under one name: the endpoint is part of a verdict's identity.
        judge_id = f"{self.base_url} {self.config.model_name}"
        keys = [cache_key(judge_id, self._template_hash, self.config.max_new_tokens, row["prompt"], row["answer"])
                for row in rows]
        self._keys = keys
        todo = {key: row for key, row in zip(keys, rows, strict=True) if self.cache.get(key) is None}
        self._count("cached", len(rows) - sum(key in todo for key in keys))
        if todo:
            self._request_all(todo)
        log.info("%s: %d rows, %d from the cache, %d requests, %d retries", self.name, len(rows),
                 self.stats["cached"], self.stats["requests"], self.stats["retries"])
        return [dict(self.cache.get(key)) for key in keys]

    def _request_all(self, todo: dict[str, dict[str, Any]]) -> None:
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="cst-judge-http")
        futures = [pool.submit(self._judge_one, key, row) for key, row in todo.items()]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            self._stop.set()  # the other workers stop retrying; what they already got is in the cache
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _judge_one(self, key: str, row: dict[str, Any]) -> None:
        text = self._post(judge_messages(self.config.template, row["prompt"], row["answer"]))
        self.cache.put(key, parse_reply(self.config.template, text))

    def _post(self, messages: list[dict[str, str]]) -> str:
        """The reply's text, after up to max_retries retries of retryable failures."""
        body = json.dumps({"model": self.config.model_name, "messages": messages, "temperature": 0,
                           "max_tokens": self.config.max_new_tokens}).encode()
        retries = self.config.max_retries
        for attempt in range(retries + 1):
            if self._stop.is_set():
                raise _Stopped()
            try:
                self._count("requests")
                return self._send(body)
            except _Retryable as exc:
                failure = exc
            if attempt == retries:
                break
            wait = failure.retry_after if failure.retry_after is not None else self.config.retry_backoff_s * 2**attempt
            wait = min(wait, MAX_WAIT_S)
            with self._lock:
                over_budget = self._waited_s + wait > self.config.retry_budget_s
                self._waited_s += 0.0 if over_budget else wait
            if over_budget:
                raise JudgeEndpointError(
                    f"eval.judge.base_url {self.base_url}: retries would wait past eval.judge.retry_budget_s="
                    f"{self.config.retry_budget_s:g} s (last: {failure.reason}); {self._kept()}")
            self._count("retries")
            log.info("%s: %s; retry %d/%d in %.1f s", self.name, failure.reason, attempt + 1, retries, wait)
            if self._stop.wait(wait):
                raise _Stopped()
        raise JudgeEndpointError(
            f"eval.judge.base_url {self.base_url}: no answer after {retries + 1} tries (last: {failure.reason}); "
            f"{self._kept()}"
        )

    def _kept(self) -> str:
        """How many of this call's verdicts the cache holds (not the cache's size: it may hold other runs')."""
        kept = sum(self.cache.get(key) is not None for key in set(self._keys))
        return (f"{kept} of {len(set(self._keys))} verdicts are kept in {self.cache.path}, a rerun asks only for "
                "the rest")

    def _send(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            with error:
                detail = self._snippet(error.read())
            if error.code == 429 or error.code >= 500:
                raise _Retryable(f"HTTP {error.code}", _retry_after(error.headers)) from None
            hint = {401: f"; check the key in ${self.config.api_key_env}", 403: f"; check the key in "
                    f"${self.config.api_key_env}", 404: "; check eval.judge.base_url (often ends in /v1)"}
            raise JudgeEndpointError(f"eval.judge.base_url {self.base_url}: POST {self.url} answered HTTP "
                                     f"{error.code} {error.reason}: {detail}{hint.get(error.code, '')}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", None) or error
            raise _Retryable(self._scrub(f"{type(error).__name__}: {reason}")) from None
        return self._content(payload)

    def _content(self, payload: bytes) -> str:
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeEndpointError(f"eval.judge.base_url {self.base_url}: the reply is not a chat completion (no "
                                     f"choices[0].message.content): {self._snippet(payload)}") from None
        return content if isinstance(content, str) else ""

    def _snippet(self, payload: bytes) -> str:
        text = " ".join(payload.decode("utf-8", errors="replace").split())
        return self._scrub(text[:200] + ("..." if len(text) > 200 else ""))

    def _scrub(self, text: str) -> str:
        """An endpoint may echo the request's headers: the key never reaches a message."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def _count(self, what: str, amount: int = 1) -> None:
        with self._lock:
            self.stats[what] += amount

    def info(self) -> dict[str, Any]:
        return {"kind": "http", "name": self.name, "base_url": self.base_url, "model_name": self.config.model_name,
                "template": self.config.template, "template_hash": self._template_hash, "cache": str(self.cache.path),
                "requests": self.stats["requests"], "retries": self.stats["retries"], "cached": self.stats["cached"]}
