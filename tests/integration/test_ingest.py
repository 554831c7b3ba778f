"""``sentistream ingest`` as a real process against a real redis-server and the local fake X and
Jetstream servers (tests/integration/test_{x,bluesky}_source.py), run in a background thread:
nothing is held back on a quiet stream, SIGTERM writes the buffer, kill -9 mid-stream loses
nothing (resume from the cursor stored with the posts, X backfill), bad lines are
dead-lettered instead of pushed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import pytest
import redis

from sentistream.testing import RedisServer
from tests.integration.test_bluesky_source import POST, FakeJetstream, post
from tests.integration.test_stream_redis import _run_worker
from tests.integration.test_x_source import TOKEN, FakeX, x_lines

pytestmark = pytest.mark.integration
T = TypeVar("T")
N = 300  # posts per test
REWIND_US = 5_000_000  # jetstream_rewind_seconds' default


class Background:
    """An event loop in a daemon thread, for fake servers a blocking test talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @contextmanager
    def enter(self, cm: AbstractAsyncContextManager[T]) -> Iterator[T]:
        value = self.call(cm.__aenter__())
        try:
            yield value
        finally:
            self.call(cm.__aexit__(None, None, None))


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as r:
        yield r


@pytest.fixture()
def background() -> Iterator[Background]:
    with Background() as bg:
        yield bg


def bluesky_events(n: int) -> tuple[list[str | bytes], list[str]]:
    """``n`` create-post commits with an identity event after every fifth (skipped by the
    source, but it moves the cursor), and the post ids; time_us is set when published."""
    events: list[str | bytes] = []
    ids = []
    for i in range(n):
        did = f"did:plc:user{i % 7}"
        events.append(post(did, f"r{i:05d}", 0, ["en"]))
        ids.append(f"at://{did}/{POST}/r{i:05d}")
        if i % 5 == 4:
            events.append(json.dumps({"did": did, "time_us": 0, "kind": "identity"}))
    return events, ids


def x_ids(lines: list[str]) -> list[str]:
    return [json.loads(line)["data"]["id"] for line in lines]


class IngestProcess:
    """``sentistream ingest --source KIND`` with its stderr in a file."""

    def __init__(self, url: str, kind: str, log: Path, env: dict[str, str], *flags: str) -> None:
        self.log = log
        self._err = log.open("wb")
        full_env = {
            **os.environ,
            "SENTISTREAM_REDIS_URL": url,
            "SENTISTREAM_X_BEARER_TOKEN": TOKEN,
            "SENTISTREAM_LOG_LEVEL": "WARNING",
            **env,
        }
        cmd = [sys.executable, "-m", "sentistream", "ingest", "--source", kind]
        self.proc = subprocess.Popen(
            [*cmd, *flags],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
        )

    def kill_9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._err.close()

    def sigterm(self) -> tuple[int, dict[str, Any]]:
        """SIGTERM; the exit code and the JSON summary (the last line of stderr)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._err.close()
        text = self.log.read_text()
        try:
            summary = json.loads(text.strip().splitlines()[-1])
        except (IndexError, ValueError):
            summary = {"stderr": text[-2000:]}
        return code, summary


def wait_for(what: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    """Poll until ``what()`` holds; the seconds it took (``timeout`` if it never did)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if what():
            return time.monotonic() - started
        time.sleep(step)
    return timeout


def pushed_ids(client: redis.Redis) -> list[str]:
    """Post ids in the input stream (X posts go in as X sent them: ``{"data": {...}}``)."""
    entries: Any = client.xrange("sentistream:posts")
    posts = [json.loads(fields[b"data"]) for _, fields in entries]
    return [p["data"]["id"] if "data" in p else p["id"] for p in posts]


def live_fake(kind: str, **kwargs: Any) -> tuple[Any, list[str]]:
    if kind == "bluesky":
        events, ids = bluesky_events(N)
        return FakeJetstream(events, drop_after=None, **kwargs), ids
    lines = x_lines(N)
    return FakeX(lines, **kwargs), x_ids(lines)


@contextmanager
def running(background: Background, kind: str, fake: Any) -> Iterator[dict[str, str]]:
    """The fake served in the background; the environment that points ingest at it."""
    if kind == "bluesky":
        with background.enter(fake.running()) as url:
            yield {"SENTISTREAM_JETSTREAM_URL": url}
    else:
        with background.enter(fake):
            yield {"SENTISTREAM_X_BASE_URL": fake.url}


@pytest.mark.parametrize("kind", ["bluesky", "x"])
def test_quiet_live_stream_is_written_within_the_flush_interval(
    server: RedisServer, background: Background, tmp_path: Path, kind: str
) -> None:
    """300 posts, then the source goes quiet (connection open): all 300 are in Redis within a
    second (ingest_flush_ms, 200 ms), not held until a next post that never comes."""
    hold: dict[str, Any] = {"hold_open": True} if kind == "bluesky" else {"hold": "keepalive"}
    fake, ids = live_fake(kind, **hold)
    client = redis.Redis.from_url(server.url)
    with running(background, kind, fake) as env:
        ingest = IngestProcess(server.url, kind, tmp_path / "ingest.log", env)
        assert wait_for(lambda: fake.sent >= N, 60) < 60
        took = wait_for(lambda: client.xlen("sentistream:posts") >= N, 5)
        code, summary = ingest.sigterm()
    assert client.xlen("sentistream:posts") == N and took < 1.0, (took, summary)
    assert sorted(pushed_ids(client)) == sorted(ids)
    assert code == 0, summary
    assert summary["pushed"] == N and summary["stopped_by"] == "SIGTERM"


@pytest.mark.parametrize("kind", ["bluesky", "x"])
def test_sigterm_writes_the_buffer_and_exits_0(
    server: RedisServer, background: Background, tmp_path: Path, kind: str
) -> None:
    """With a flush interval longer than the test, the posts sit in ingest's buffer; SIGTERM
    writes them all, then ingest exits 0 with its summary."""
    hold: dict[str, Any] = {"hold_open": True} if kind == "bluesky" else {"hold": "keepalive"}
    fake, ids = live_fake(kind, **hold)
    client = redis.Redis.from_url(server.url)
    with running(background, kind, fake) as env:
        env["SENTISTREAM_INGEST_FLUSH_MS"] = "600000"
        ingest = IngestProcess(server.url, kind, tmp_path / "ingest.log", env)
        assert wait_for(lambda: fake.sent >= N, 60) < 60
        time.sleep(1.0)  # ingest has read them all by now
        held = client.xlen("sentistream:posts")
        code, summary = ingest.sigterm()
    assert held == 0  # in the buffer, not yet written
    assert code == 0, summary
    assert sorted(pushed_ids(client)) == sorted(ids)
    assert (summary["read"], summary["pushed"], summary["writes"]) == (N, N, 1)
    assert summary["dead_lettered"] == 0 and summary["duplicates"] == 0


@pytest.mark.parametrize("dedup", ["ingest", "worker"])
def test_bluesky_kill_9_resumes_from_the_cursor_stored_with_the_posts(
    server: RedisServer, background: Background, tmp_path: Path, tiny_repo: Path, dedup: str
) -> None:
    """A live Jetstream publishes 300 posts (and identity events) at 50/s. Ingest is killed
    with SIGKILL mid-stream and restarted a second later: the cursor stored with the posts
    makes it resume where the stored posts end (less the 5 s rewind), and every post id
    reaches Redis once: dropped by ingest's own dedup (``ingest``), or pushed twice and
    written once by the worker's (``worker``, ingest_dedup_seconds=0)."""
    events, ids = bluesky_events(N)
    fake = FakeJetstream(events, drop_after=None, publish_interval=0.02)
    client = redis.Redis.from_url(server.url)
    key = "sentistream:posts:checkpoint:bluesky"
    extra = {"SENTISTREAM_INGEST_DEDUP_SECONDS": "0"} if dedup == "worker" else {}
    with running(background, "bluesky", fake) as env:
        env.update(extra)
        first = IngestProcess(server.url, "bluesky", tmp_path / "first.log", env)
        assert wait_for(lambda: client.xlen("sentistream:posts") >= 60, 60) < 60
        first.kill_9()
        cursor = int(client.get(key) or 0)
        stored = set(pushed_ids(client))
        # The cursor and the posts it covers were written together: every post published up
        # to the cursor is in the stream.
        covered = {
            f"at://{ev['did']}/{POST}/{ev['commit']['rkey']}"
            for t, collection, raw in list(fake.published)
            if t <= cursor and collection == POST and (ev := json.loads(raw))
        }
        assert covered and covered <= stored
        published_at_kill = len(fake.published)
        wait_for(lambda: len(fake.published) >= published_at_kill + 40, 10)
        assert not fake.done_publishing  # the restart happens mid-stream
        second = IngestProcess(server.url, "bluesky", tmp_path / "second.log", env)
        took = wait_for(
            lambda: fake.done_publishing and set(pushed_ids(client)) >= set(ids), 60, 0.2
        )
        time.sleep(0.5)
        code, summary = second.sigterm()
    assert took < 60, f"missing {len(set(ids) - set(pushed_ids(client)))} posts"
    assert code == 0, summary
    assert summary["resumed_from"] == str(cursor)
    assert parse_qs(fake.queries[1])["cursor"] == [str(cursor - REWIND_US)]
    pushed = pushed_ids(client)
    assert set(pushed) == set(ids)
    if dedup == "ingest":
        assert len(pushed) == N and summary["duplicates"] > 0
        return
    assert len(pushed) > N and summary["duplicates"] == 0  # the replayed posts went in again
    asyncio.run(_run_worker(server.url, tiny_repo, N))
    results = [f[b"id"].decode() for _, f in client.xrange("sentistream:results")]
    assert sorted(results) == sorted(ids)  # written once each


def test_x_kill_9_backfills_the_minutes_missed(
    server: RedisServer, background: Background, tmp_path: Path
) -> None:
    """A live filtered stream publishes 300 posts at 50/s. Ingest (x_backfill on) is killed
    with SIGKILL mid-stream and restarted: it asks for backfill_minutes=1 from the time
    of the last post it stored, and every post id reaches the input stream exactly once."""
    lines = x_lines(N)
    fake = FakeX(lines, publish_interval=0.02)
    client = redis.Redis.from_url(server.url)
    key = "sentistream:posts:checkpoint:x"
    with running(background, "x", fake) as env:
        first = IngestProcess(server.url, "x", tmp_path / "first.log", env, "--x-backfill")
        env["SENTISTREAM_X_BACKFILL"] = "true"  # the same setting as --x-backfill
        assert wait_for(lambda: client.xlen("sentistream:posts") >= 60, 60) < 60
        first.kill_9()
        checkpoint = (client.get(key) or b"").decode()
        assert 0 < time.time() - float(checkpoint) < 10
        published_at_kill = len(fake.published)
        wait_for(lambda: len(fake.published) >= published_at_kill + 40, 10)
        assert not fake.done_publishing
        second = IngestProcess(server.url, "x", tmp_path / "second.log", env)
        took = wait_for(
            lambda: fake.done_publishing and set(pushed_ids(client)) >= set(x_ids(lines)),
            60,
            0.2,
        )
        time.sleep(0.5)
        code, summary = second.sigterm()
    assert took < 60, f"missing {len(set(x_ids(lines)) - set(pushed_ids(client)))} posts"
    assert code == 0, summary
    assert fake.backfills == [None, 1] and summary["resumed_from"] == checkpoint
    pushed = pushed_ids(client)
    assert sorted(pushed) == sorted(x_ids(lines))  # each once: the backfilled repeats dropped
    assert summary["duplicates"] > 0


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_bad_lines_are_dead_lettered_never_repaired_or_cut_into_posts(
    server: RedisServer, tmp_path: Path, how: str
) -> None:
    """A Latin-1 line (valid JSON once its byte is replaced by U+FFFD) and a bad line over
    10,000 characters (valid JSON once cut) go to the dead-letter stream with the reason and
    an escaped, marked copy; only the good posts reach the input stream."""
    posts = tmp_path / "posts.jsonl"
    cut_into_json = b'{"id": "t1", "text": "cut"}' + b" " * 10_000 + b"garbage"
    posts.write_bytes(
        b'{"id": "g1", "text": "good one"}\n'
        + b'{"id": "u1", "text": "caf\xe9"}\n'
        + cut_into_json
        + b"\n\n"
        + b'{"id": "g2", "text": "good two"}\n'
    )
    env = {**os.environ, "SENTISTREAM_REDIS_URL": server.url}
    args = ["--source", "stdin"] if how == "stdin" else ["--input", str(posts)]
    with posts.open("rb") as stdin:
        proc = subprocess.run(
            [sys.executable, "-m", "sentistream", "ingest", *args],
            env=env,
            stdin=stdin,
            capture_output=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stderr.decode().strip().splitlines()[-1])
    assert (summary["pushed"], summary["dead_lettered"]) == (2, 2)
    client = redis.Redis.from_url(server.url)
    assert pushed_ids(client) == ["g1", "g2"]
    dead = [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in client.xrange("sentistream:dead")
    ]
    assert [d["reason"] for d in dead] == [
        "line 2 is not valid UTF-8 (byte 25)",
        "line 3: invalid JSON: Extra data at column 10028",
    ]
    assert dead[0]["raw"] == '{"id": "u1", "text": "caf\\xe9"}'  # escaped, not U+FFFD
    assert {d["source"] for d in dead} == {"file"} and {d["stage"] for d in dead} == {"ingest"}
    assert dead[1]["raw"].endswith("...[cut: 34 more characters]")
    assert len(dead[1]["raw"]) < 10_100
    with pytest.raises(ValueError):
        json.loads(dead[1]["raw"])
