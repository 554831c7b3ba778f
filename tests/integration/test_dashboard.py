"""The dashboard's event stream against a real worker process and redis-server: history on
(re)connect, Last-Event-ID resume, bounded connections, no leaked connection, no hung drain."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sentistream.testing import RedisServer, ServerProcess, free_port
from tests.integration.test_stream_redis import _stop, _worker_proc

pytestmark = pytest.mark.integration


def _metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    assert match, f"{name} not exported"
    return float(match.group(1))


class Events:
    """Server-sent events of an open response, read on demand (one line iterator for the whole
    response: closing an httpx line iterator closes the connection)."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()

    def take(self, kind: str, n: int) -> list[tuple[str | None, dict[str, Any]]]:
        """The next ``n`` events of type ``kind`` as (id, data)."""
        out: list[tuple[str | None, dict[str, Any]]] = []
        event_id, event = None, None
        for line in self.lines:
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == kind:
                out.append((event_id, json.loads(line[6:])))
                if len(out) == n:
                    return out
            elif line == "":
                event_id, event = None, None
        return out


@pytest.fixture()
def worker(
    tmp_path: Path, tiny_repo: Path
) -> Iterator[tuple[str, redis.Redis, subprocess.Popen[bytes]]]:
    with RedisServer(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        for i in range(5):
            client.xadd(
                "sentistream:posts", {"data": json.dumps({"id": f"p{i}", "text": f"love {i}"})}
            )
        port = free_port()
        os.environ["SENTISTREAM_DASHBOARD_MAX_CLIENTS"] = "2"
        try:
            proc = _worker_proc(
                server.url, tiny_repo, "d", "--http-port", str(port), "--host", "127.0.0.1"
            )
        finally:
            del os.environ["SENTISTREAM_DASHBOARD_MAX_CLIENTS"]
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (
                    httpx.get(f"{base}/readyz").status_code == 200
                    and client.xlen("sentistream:results") == 5
                ):
                    break
            time.sleep(0.1)
        try:
            yield base, client, proc
        finally:
            if proc.poll() is None:
                _stop(proc)
            client.close()


def test_history_resume_bound_and_no_leak(
    worker: tuple[str, redis.Redis, subprocess.Popen[bytes]],
) -> None:
    base, client, _ = worker
    page = httpx.get(f"{base}/dashboard")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{base}/dashboard/static/dashboard.js").status_code == 200
    assert httpx.get(f"{base}/dashboard/static/..%2F__init__.py").status_code == 404
    assert httpx.get(f"{base}/dashboard/static/index.html").status_code == 404

    with contextlib.ExitStack() as stack:
        first = stack.enter_context(httpx.stream("GET", f"{base}/dashboard/events", timeout=10))
        assert first.headers["content-type"].startswith("text/event-stream")
        first_events = Events(first)
        history = first_events.take("record", 5)
        assert [r["id"] for _, r in history] == [f"p{i}" for i in range(5)]  # oldest first
        second = stack.enter_context(httpx.stream("GET", f"{base}/dashboard/events", timeout=10))
        # A new post reaches an open stream.
        client.xadd("sentistream:posts", {"data": json.dumps({"id": "live", "text": "great"})})
        second_events = Events(second)
        [(_, live)] = second_events.take("record", 6)[-1:]
        assert live["id"] == "live"
        assert _metric(base, "sentistream_worker_dashboard_clients") == 2
        third = httpx.get(f"{base}/dashboard/events", timeout=10)
        assert third.status_code == 503 and "viewers" in third.json()["error"]
        entry_ids = [eid for eid, _ in history]
    # Both clients are gone: their slots come back (the XREADs were cancelled).
    deadline = time.monotonic() + 10
    while (
        _metric(base, "sentistream_worker_dashboard_clients") != 0 and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert _metric(base, "sentistream_worker_dashboard_clients") == 0
    # A browser reconnecting with Last-Event-ID continues right after it.
    with httpx.stream(
        "GET", f"{base}/dashboard/events", headers={"Last-Event-ID": entry_ids[2]}, timeout=10
    ) as again:
        resumed = Events(again).take("record", 3)
    assert [r["id"] for _, r in resumed] == ["p3", "p4", "live"]
    stats = httpx.Client(timeout=10)
    with stats.stream("GET", f"{base}/dashboard/events") as s:
        [(_, figures)] = Events(s).take("stats", 1)
    assert figures["model"] == {"name": "tiny", "version": "2"} and figures["processed"] == 6
    assert figures["feed"] == "sentistream:results"


def test_open_dashboard_does_not_hold_up_the_drain(
    worker: tuple[str, redis.Redis, subprocess.Popen[bytes]],
) -> None:
    base, _, proc = worker
    with httpx.stream("GET", f"{base}/dashboard/events", timeout=30) as stream:
        events = Events(stream)
        assert len(events.take("record", 5)) == 5
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert time.monotonic() - started < 6


def test_server_dashboard_is_outside_the_api_schema(tiny_repo: Path) -> None:
    with ServerProcess(tiny_repo, args=["--serve-models", "tiny:1"]) as server:
        schema = httpx.get(f"{server.url}/openapi.json").json()
        assert not [p for p in schema["paths"] if p.startswith("/dashboard")]
        page = httpx.get(f"{server.url}/dashboard")
        assert (
            page.status_code == 200
            and "default-src 'none'" in page.headers["content-security-policy"]
        )
        with httpx.stream("GET", f"{server.url}/dashboard/events", timeout=10) as s:
            [(_, figures)] = Events(s).take("stats", 1)
        assert figures["feed"] is None and figures["models"] == ["tiny:1"]
    with ServerProcess(tiny_repo, env={"SENTISTREAM_DASHBOARD": "false"}) as server:
        assert httpx.get(f"{server.url}/dashboard").status_code == 404


def _record(i: int, **extra: Any) -> str:
    return json.dumps({"id": f"r{i}", "text": f"post {i}", "label": "positive", **extra})


def _collect(response: httpx.Response, stats: int) -> list[tuple[str | None, dict[str, Any]]]:
    """The records an open event stream sends until its ``stats``-th stats event."""
    records: list[tuple[str | None, dict[str, Any]]] = []
    event_id, event = None, None
    for line in response.iter_lines():
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "record":
            records.append((event_id, json.loads(line[6:])))
        elif line.startswith("data: ") and event == "stats":
            stats -= 1
            if stats == 0:
                break
        elif line == "":
            event_id, event = None, None
    return records


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)
    assert match
    return int(match.group(1)) / 1024


def test_a_garbage_last_event_id_counts_as_absent(tmp_path: Path, tiny_repo: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        ids = [client.xadd("results:g", {"data": _record(i)}).decode() for i in range(5)]
        env = {"SENTISTREAM_REDIS_URL": server.url, "SENTISTREAM_DASHBOARD_STREAM": "results:g"}
        with ServerProcess(tiny_repo, env=env, args=["--serve-models", "tiny:1"]) as srv:
            url = f"{srv.url}/dashboard/events"
            for garbage in ("garbage", "0-0-0<script>", "999999999999999999999-1", "$"):
                headers = {"Last-Event-ID": garbage}
                with httpx.stream("GET", url, headers=headers, timeout=10) as events:
                    shown = _collect(events, stats=2)  # open for >= 2 s
                assert [r["id"] for _, r in shown] == [f"r{i}" for i in range(5)], garbage
            # A valid one still resumes right after it.
            with httpx.stream("GET", url, headers={"Last-Event-ID": ids[2]}, timeout=10) as ev:
                assert [r["id"] for _, r in _collect(ev, stats=2)] == ["r3", "r4"]
            log = srv.log
        client.close()
    assert log.count("Last-Event-ID") == 1  # said once, not once a second per connection
    assert "dashboard feed unavailable" not in log


def test_dashboard_memory_per_viewer_is_bounded(tmp_path: Path, tiny_repo: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        pipe = client.pipeline()
        for i in range(60):  # 60 posts, each with a 1 MB side field and a long text
            data = _record(i, text="t" * 20_000, user={"bio": chr(97 + i % 26) * 1_000_000})
            pipe.xadd("results:m", {"data": data})
        pipe.execute()
        env = {"SENTISTREAM_REDIS_URL": server.url, "SENTISTREAM_DASHBOARD_STREAM": "results:m"}
        with ServerProcess(tiny_repo, env=env, args=["--serve-models", "tiny:1"]) as srv:
            url = f"{srv.url}/dashboard/events"
            with httpx.stream("GET", url, timeout=10) as events:
                [(_, first)] = Events(events).take("record", 1)
            assert "user" not in first and len(first["text"]) <= 301
            assert len(json.dumps(first)) < 1000
            before = _rss_mb(srv.proc.pid)
            with contextlib.ExitStack() as stack:
                # 8 viewers that read one record, then nothing more, and stay connected.
                for _ in range(8):
                    viewer = stack.enter_context(httpx.stream("GET", url, timeout=30))
                    assert len(Events(viewer).take("record", 1)) == 1
                time.sleep(1.0)
                during = _rss_mb(srv.proc.pid)
        client.close()
    assert during - before < 50, (before, during)
