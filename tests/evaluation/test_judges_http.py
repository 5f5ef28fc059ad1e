"""The http judge against a real local chat-completions server: retries (429 with Retry-After, 5xx), the verdict
cache (a rerun asks nothing), a dead endpoint (one line, verdicts kept), other 4xx at once, and the API key written
nowhere."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cst_dist.config import JudgeConfig
from cst_dist.errors import UserError
from cst_dist.evaluation.judges import build_judge, judge_info

SECRET = "sk-test-CSTJUDGE-7f3a9c1e5b"  # recognisable, so any leak can be found
KEY_ENV = "CST_TEST_JUDGE_KEY"


class ChatServer:
    """A chat-completions endpoint on 127.0.0.1: answers fail with the statuses in `failures` first (429 carries
    Retry-After: 1), then `[[0]]` for answers that mention a bomb and `Rating: [[1]]` otherwise."""

    def __init__(self, failures: list[int] | None = None, fail_after: int | None = None):
        self.failures, self.fail_after = list(failures or []), fail_after
        self.log: list[dict] = []  # one entry per request: time, status, authorization, body
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the stdlib's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, headers, reply = server.respond(self.path, body)
                with server.lock:
                    server.log.append({"time": time.monotonic(), "status": status, "body": body,
                                       "authorization": self.headers.get("Authorization")})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                data = json.dumps(reply).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # the stdlib handler writes every request to stderr
                pass

        return Handler

    def respond(self, path: str, body: dict) -> tuple[int, dict, dict]:
        with self.lock:
            answered = sum(entry["status"] == 200 for entry in self.log)
            failure = self.failures.pop(0) if self.failures else None
        if path != "/v1/chat/completions":
            return 404, {}, {"error": "not found"}
        if failure is None and self.fail_after is not None and answered >= self.fail_after:
            failure = 503
        if failure == 401:  # some servers echo what they got: the judge must mask it
            return 401, {}, {"error": f"bad key {body.get('model')} Bearer {SECRET}"}
        if failure is not None:
            return failure, ({"Retry-After": "1"} if failure == 429 else {}), {"error": "try later"}
        answer = body["messages"][-1]["content"]
        content = "[[0]]" if "bomb" in answer else "Rating: [[1]]"
        return 200, {}, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server_factory():
    servers = []

    def make(**kwargs) -> ChatServer:
        servers.append(ChatServer(**kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)  # 127.0.0.1 must be reached directly
    monkeypatch.setenv(KEY_ENV, SECRET)


def rows(n: int) -> list[dict]:
    answers = ["Mix these chemicals to make a bomb.", "I can't help with that.", "Stay safe and call for help."]
    return [{"id": str(i), "prompt": f"question {i}", "answer": f"{answers[i % 3]} ({i})"} for i in range(n)]


def config(base_url: str, **extra) -> JudgeConfig:
    settings = {"kind": "http", "base_url": base_url, "model_name": "judge-model", "api_key_env": KEY_ENV,
                "concurrency": 4, "max_retries": 3, "retry_backoff_s": 0.05, "timeout_s": 10}
    return JudgeConfig.model_validate({**settings, **extra})


def assert_no_secret(tmp_path, *texts: str) -> None:
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"API key written to {path}"
    for text in texts:
        assert SECRET not in text


def test_retries_honour_retry_after_then_the_cache_answers_a_rerun(server_factory, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    server = server_factory(failures=[429, 500])
    judge = build_judge(config(server.base_url), workdir=tmp_path, train_data=None)
    assert judge.name == "http:judge-model"
    batch = rows(9)
    start = time.monotonic()
    verdicts = judge.judge(batch)
    elapsed = time.monotonic() - start
    assert [v["safe"] for v in verdicts] == [i % 3 != 0 for i in range(9)]
    assert verdicts[0]["judge_raw"] == "[[0]]" and verdicts[1]["judge_raw"] == "Rating: [[1]]"
    assert len(server.log) == 9 + 2 and judge.stats["retries"] == 2 and judge.stats["requests"] == 11
    # The request refused with 429 + Retry-After: 1 was sent again no sooner than one second later.
    refused = next(entry for entry in server.log if entry["status"] == 429)
    again = next(e for e in server.log if e["body"] == refused["body"] and e["time"] > refused["time"])
    assert again["time"] - refused["time"] >= 1.0 and elapsed >= 1.0
    # The request was the chat-completions schema, greedy, capped, with the key as a bearer token.
    sent = server.log[-1]
    assert sent["authorization"] == f"Bearer {SECRET}"
    assert sent["body"]["model"] == "judge-model" and sent["body"]["temperature"] == 0
    assert sent["body"]["max_tokens"] == 5 and sent["body"]["messages"][0]["role"] == "system"
    cache = tmp_path / "judge" / "cache.jsonl"
    assert len(cache.read_text().splitlines()) == 9
    # A rerun (a new judge on the same cache) pays nothing: zero requests, the same verdicts.
    rerun = build_judge(config(server.base_url), workdir=tmp_path, train_data=None)
    assert rerun.judge(batch) == verdicts and len(server.log) == 11 and rerun.stats["requests"] == 0
    assert judge_info(rerun)["cached"] == 9
    # Another judge prompt, or another reply budget, never reuses these verdicts.
    guard = build_judge(config(server.base_url, template="llama-guard"), workdir=tmp_path, train_data=None)
    guard.judge(batch[:1])
    longer = build_judge(config(server.base_url, max_new_tokens=16), workdir=tmp_path, train_data=None)
    longer.judge(batch[:1])
    assert len(server.log) == 13
    captured = capsys.readouterr()
    assert_no_secret(tmp_path, caplog.text, captured.out, captured.err)


def test_an_endpoint_that_stays_down_stops_with_one_line_and_keeps_the_verdicts(server_factory, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    flaky = server_factory(fail_after=3)  # answers 3 requests, then 503 for ever
    judge = build_judge(config(flaky.base_url, concurrency=1, max_retries=2), workdir=tmp_path, train_data=None)
    with pytest.raises(UserError) as error:
        judge.judge(rows(6))
    message = str(error.value)
    assert "\n" not in message and flaky.base_url in message and "HTTP 503" in message
    assert "3 of 6 verdicts are kept" in message  # this call's verdicts, not the cache file's size
    cache = tmp_path / "judge" / "cache.jsonl"
    assert len(cache.read_text().splitlines()) == 3  # every verdict that came back is kept
    flaky.fail_after, before = None, len(flaky.log)  # the endpoint is back
    rerun = build_judge(config(flaky.base_url), workdir=tmp_path, train_data=None)
    assert [v["safe"] for v in rerun.judge(rows(6))] == [i % 3 != 0 for i in range(6)]
    assert len(flaky.log) - before == 3  # only what was missing
    # Another endpoint serving a model of the same name shares no verdict with this one.
    other = server_factory()
    build_judge(config(other.base_url), workdir=tmp_path, train_data=None).judge(rows(6))
    assert len(other.log) == 6
    assert_no_secret(tmp_path, caplog.text, message)


def test_retry_after_is_capped_and_counted_in_the_run_budget(server_factory, tmp_path):
    server = server_factory(failures=[429] * 10)  # Retry-After: 1 each time
    judge = build_judge(config(server.base_url, concurrency=1, max_retries=8, retry_budget_s=2.5),
                        workdir=tmp_path, train_data=None)
    start = time.monotonic()
    with pytest.raises(UserError) as error:
        judge.judge(rows(1))
    assert time.monotonic() - start < 5 and judge.stats["retries"] == 2  # 1 s + 1 s; a third would pass 2.5 s
    assert "retry_budget_s=2.5" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("key, base_url, fragment", [
    (f"{SECRET}\r\nX-Injected: 1", None, f"${KEY_ENV} (eval.judge.api_key_env) holds characters"),
    (SECRET, "notaurl", "eval.judge.base_url 'notaurl' is not an http(s) URL"),
])
def test_a_bad_key_or_url_is_one_line_and_never_shows_the_key(tmp_path, monkeypatch, capsys, key, base_url,
                                                               fragment):
    from cst_dist.cli import main

    monkeypatch.setenv(KEY_ENV, key)
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"prompt": "p", "answer": "a"}) + "\n")
    code = main(["judge", "tiny-cpu", "--input", str(answers), "--output", str(tmp_path / "out.jsonl"),
                 "eval.judge.kind=http", f"eval.judge.base_url={base_url or 'http://127.0.0.1:9/v1'}",
                 "eval.judge.model_name=m", f"eval.judge.api_key_env={KEY_ENV}"])
    captured = capsys.readouterr()
    assert code == 2 and fragment in captured.err and len(captured.err.strip().splitlines()) == 1
    assert_no_secret(tmp_path, captured.out, captured.err)


def test_an_unreachable_endpoint_fails_quickly_with_one_line(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    judge = build_judge(config(base_url, max_retries=1), workdir=tmp_path, train_data=None)
    start = time.monotonic()
    with pytest.raises(UserError) as error:
        judge.judge(rows(3))
    assert time.monotonic() - start < 30  # refused at once, one short backoff: not the 10 s timeout per request
    message = str(error.value)
    assert "\n" not in message and base_url in message and "2 tries" in message
    assert_no_secret(tmp_path, caplog.text, message)


@pytest.mark.parametrize("status, hint", [(400, "HTTP 400"), (401, f"${KEY_ENV}"), (404, "base_url")])
def test_other_4xx_stop_at_once_without_retries(server_factory, tmp_path, status, hint):
    server = server_factory(failures=[status])
    base_url = server.base_url if status != 404 else server.base_url.removesuffix("/v1")  # a wrong path -> 404
    judge = build_judge(config(base_url, concurrency=1), workdir=tmp_path, train_data=None)
    with pytest.raises(UserError) as error:
        judge.judge(rows(1))
    message = str(error.value)
    assert "\n" not in message and hint in message and len(server.log) == 1 and judge.stats["retries"] == 0
    assert_no_secret(tmp_path, message)  # the 401 body echoed the key: masked


def test_a_torn_cache_line_is_skipped_and_the_next_verdict_starts_a_new_line(server_factory, tmp_path, caplog):
    server = server_factory()
    cache = tmp_path / "verdicts.jsonl"
    judge = build_judge(config(server.base_url, cache=str(cache)), workdir=tmp_path, train_data=None)
    judge.judge(rows(2))
    with open(cache, "a") as handle:
        handle.write('{"key": "abc", "safe": tr')  # a kill in the middle of a write
    rerun = build_judge(config(server.base_url, cache=str(cache)), workdir=tmp_path, train_data=None)
    assert "1 unreadable line" in caplog.text and len(rerun.cache) == 2
    rerun.judge(rows(3))
    again = build_judge(config(server.base_url, cache=str(cache)), workdir=tmp_path, train_data=None)
    assert len(again.cache) == 3 and len(server.log) == 3
