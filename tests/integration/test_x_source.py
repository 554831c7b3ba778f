"""The X filtered-stream source against a real local fake X API server.

The fake speaks minimal HTTP/1.1 over ``asyncio.start_server`` (chunked transfer encoding for
the stream, keep-alive connections for the rest), replays the shared sample wire data line by
line including keep-alive blank lines, can drop the connection mid-stream and resume where it
stopped on the next connection (X does not replay), answers 401 for a wrong bearer token,
fails the first connections with chosen statuses, and implements the rules endpoints. With
``publish_interval`` it is live instead: it publishes a post every so often from the first
connection on, connected or not, and honours ``backfill_minutes`` (the posts published in the
last N minutes first, duplicates included, as X does).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sentistream.errors import UnavailableError
from sentistream.stream.base import Envelope
from sentistream.stream.x_source import (
    BACKFILL_MAX_MINUTES,
    XFilteredStreamSource,
    backfill_minutes,
    backoff_delay,
)
from sentistream.testing import free_port

pytestmark = pytest.mark.integration

SAMPLE = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "stream"
    / "x_filtered_stream.sample.jsonl"
)
TOKEN = "good-token-abc"
WRONG_TOKEN = "wrong-secret-token-4711"
MALFORMED = '{"data": {"id": "1850000000000099999", "text": "cut off'
ERRORS_MESSAGE = json.dumps(
    {"errors": [{"title": "operational-disconnect", "detail": "test notice"}]}
)
SPANISH = json.dumps(
    {"data": {"id": "1850000000000088888", "text": "hola", "lang": "es"}, "matching_rules": []}
)
REASONS = {
    200: "OK",
    401: "Unauthorized",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@pytest.fixture(scope="module")
def sample_lines() -> list[str]:
    if not SAMPLE.exists():
        pytest.skip(f"X filtered-stream sample data not present at {SAMPLE}")
    lines = SAMPLE.read_bytes().decode("utf-8").split("\r\n")  # keep CRLF as sent
    if lines and lines[-1] == "":
        lines.pop()  # the file ends with a delimiter
    return lines


def expected_posts(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line)["data"] for line in lines if line.strip()]


class FakeX:
    """A tiny X API v2 server: the filtered stream and its rules endpoints."""

    def __init__(
        self,
        lines: list[str],
        *,
        disconnect_after: int | None = None,
        inject: dict[int, list[str | bytes]] | None = None,
        fail_first: list[int] | None = None,
        rules: list[dict[str, str]] | None = None,
        hold: str | None = None,  # after the feed: "keepalive" (every 50 ms) or "silent"
        publish_interval: float | None = None,
    ) -> None:
        self.port = free_port()
        self.feed: list[str | bytes] = []
        for i, line in enumerate(lines):
            self.feed += (inject or {}).get(i, [])
            self.feed.append(line)
        self.pos = 0
        self.disconnect_after = disconnect_after
        self.disconnected = False
        self.fail_first = list(fail_first or [])
        self.hold = hold
        self.rules = list(rules or [])
        self.next_rule_id = 9000
        self.rule_posts: list[dict[str, Any]] = []
        self.statuses: list[int] = []  # one per stream request with the right token
        self.unauthorized = 0
        self.auth: list[str] = []
        self.fields: list[list[str]] = []
        self.keepalives_sent = 0
        self.sent = 0  # feed lines sent, all connections together
        self.publish_interval = publish_interval
        self.published: list[tuple[float, str | bytes]] = []  # (wall time, line)
        self.backfills: list[int | None] = []  # backfill_minutes of each stream request
        self._publisher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeX:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        if self._publisher is not None:
            self._publisher.cancel()
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, target, _ = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    key, _, value = raw.decode("latin-1").partition(":")
                    headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if not await self._route(method, urlsplit(target), headers, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _json(self, writer: asyncio.StreamWriter, status: int, obj: object) -> bool:
        data = json.dumps(obj).encode()
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        writer.write(head.encode() + data)
        await writer.drain()
        return True  # keep the connection

    async def _route(
        self,
        method: str,
        url: Any,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        auth = headers.get("authorization", "")
        self.auth.append(auth)
        if auth != f"Bearer {TOKEN}":
            self.unauthorized += 1
            problem = {
                "title": "Unauthorized",
                "type": "about:blank",
                "status": 401,
                "detail": "Unauthorized",
            }
            return await self._json(writer, 401, problem)
        if url.path == "/2/tweets/search/stream/rules":
            return await self._rules(method, body, writer)
        if url.path == "/2/tweets/search/stream" and method == "GET":
            query = parse_qs(url.query)
            self.fields.append(query.get("tweet.fields", []))
            minutes = query.get("backfill_minutes")
            self.backfills.append(int(minutes[0]) if minutes else None)
            if self.publish_interval is not None:
                return await self._live(writer, self.backfills[-1])
            return await self._stream(writer)
        return await self._json(writer, 404, {"title": "Not Found"})

    async def _rules(self, method: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        if method == "GET":
            answer: dict[str, Any] = {"meta": {"result_count": len(self.rules)}}
            if self.rules:
                answer["data"] = self.rules
            return await self._json(writer, 200, answer)
        request = json.loads(body)
        self.rule_posts.append(request)
        if "delete" in request:
            ids = set(request["delete"]["ids"])
            self.rules = [r for r in self.rules if r["id"] not in ids]
            return await self._json(writer, 200, {"meta": {"summary": {"deleted": len(ids)}}})
        added = []
        for rule in request["add"]:
            self.next_rule_id += 1
            added.append({"id": str(self.next_rule_id), **rule})
        self.rules += added
        return await self._json(writer, 201, {"data": added, "meta": {"summary": {"created": 1}}})

    async def _stream(self, writer: asyncio.StreamWriter) -> bool:
        if self.fail_first:
            status = self.fail_first.pop(0)
            self.statuses.append(status)
            return await self._json(writer, status, {"title": "fake failure", "status": status})
        self.statuses.append(200)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sent = 0
        while self.pos < len(self.feed):
            if (
                self.disconnect_after is not None
                and not self.disconnected
                and sent >= self.disconnect_after
            ):
                self.disconnected = True
                return False  # close mid-stream, no terminating chunk
            line = self.feed[self.pos]
            self.pos += 1
            sent += 1
            self.sent += 1
            self.keepalives_sent += not line
            data = (line if isinstance(line, bytes) else line.encode()) + b"\r\n"
            # Some lines straddle two chunks: the source must reassemble them.
            parts = [data[:7], data[7:]] if self.pos % 7 == 0 and len(data) > 7 else [data]
            for part in parts:
                writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                await writer.drain()
        if self.hold == "silent":
            await asyncio.sleep(3600)
        while self.hold == "keepalive":
            writer.write(b"2\r\n\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return False

    @property
    def done_publishing(self) -> bool:
        return len(self.published) == len(self.feed)

    async def _publish(self) -> None:
        """Publish the feed, each post stamped with the time it is published (``created_at``)."""
        assert self.publish_interval is not None
        for line in self.feed:
            now = time.time()
            if isinstance(line, str) and line.startswith('{"data"'):
                message = json.loads(line)
                message["data"]["created_at"] = iso(now)
                line = json.dumps(message)
            self.published.append((now, line))
            await asyncio.sleep(self.publish_interval)

    async def _live(self, writer: asyncio.StreamWriter, backfill: int | None) -> bool:
        """The live stream: backfilled posts first (older first, as X sends them), then each
        post as it is published, a keep-alive every 50 ms; until the client leaves."""
        if self._publisher is None:
            self._publisher = asyncio.create_task(self._publish())
        self.statuses.append(200)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        i = len(self.published)
        if backfill is not None:
            since = time.time() - 60 * backfill
            i = next((k for k, (t, _) in enumerate(self.published) if t >= since), i)
        quiet = 0.0
        while True:
            while i < len(self.published):
                line = self.published[i][1]
                data = (line if isinstance(line, bytes) else line.encode()) + b"\r\n"
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.sent += 1
                i += 1
            if quiet >= 0.05:
                writer.write(b"2\r\n\r\n\r\n")
                quiet = 0.0
            await writer.drain()
            await asyncio.sleep(0.005)
            quiet += 0.005


async def collect(source: XFilteredStreamSource, timeout: float = 10.0) -> list[Envelope]:
    async def run() -> list[Envelope]:
        return [envelope async for envelope in source.stream()]

    return await asyncio.wait_for(run(), timeout)


def test_replays_sample_across_a_reconnect(sample_lines: list[str]) -> None:
    inject = {150: [MALFORMED, ERRORS_MESSAGE, SPANISH]}
    existing = [
        {"id": "1", "value": "old rule", "tag": "sentistream"},
        {"id": "2", "value": "someone else's", "tag": "other"},
        {"id": "3", "value": "sentiment lang:en", "tag": "sentistream"},
    ]

    async def main() -> tuple[FakeX, XFilteredStreamSource, list[Envelope]]:
        async with FakeX(sample_lines, disconnect_after=100, inject=inject, rules=existing) as fake:
            source = XFilteredStreamSource(
                TOKEN,
                base_url=fake.url,
                rules=["sentiment lang:en", "#python"],
                languages={"en"},
                max_reconnects=1,
                backoff_scale=0.001,
            )
            return fake, source, await collect(source)

    fake, source, envelopes = asyncio.run(main())
    expected = expected_posts(sample_lines)
    assert len(expected) == 300
    posts = [e.post for e in envelopes if e.post is not None]
    assert [p.id for p in posts] == [d["id"] for d in expected]
    assert len({p.id for p in posts}) == 300
    assert [p.text for p in posts] == [d["text"] for d in expected]
    assert [p.lang for p in posts] == [d["lang"] for d in expected]
    assert [p.created_at for p in posts] == [d["created_at"] for d in expected]
    assert {p.source for p in posts} == {"x"}
    assert all(json.loads(e.raw)["data"]["id"] == e.post.id for e in envelopes if e.post)
    # keep-alives were sent and skipped; the X error message and the Spanish post are not yielded
    assert fake.keepalives_sent == 12
    bad = [e for e in envelopes if e.post is None]
    assert len(envelopes) == 301 and len(bad) == 1
    assert bad[0].raw == MALFORMED and bad[0].error and "invalid JSON" in bad[0].error
    # one mid-stream disconnect, one reconnect that resumed where the fake stopped
    assert fake.disconnected and fake.statuses == [200, 200] and source.reconnects == 1
    assert set(fake.auth) == {f"Bearer {TOKEN}"}
    assert fake.fields == [["created_at,lang,author_id"]] * 2
    # rules: our stale rule deleted, the missing one added with our tag, others left alone
    assert fake.rule_posts == [
        {"delete": {"ids": ["1"]}},
        {"add": [{"value": "#python", "tag": "sentistream"}]},
    ]
    assert {(r["value"], r["tag"]) for r in fake.rules} == {
        ("someone else's", "other"),
        ("sentiment lang:en", "sentistream"),
        ("#python", "sentistream"),
    }


@pytest.mark.parametrize("rules", [None, ["sentiment"]], ids=["stream", "rules"])
def test_wrong_token_is_fatal_and_not_leaked(
    sample_lines: list[str], rules: list[str] | None
) -> None:
    async def main() -> tuple[FakeX, XFilteredStreamSource, UnavailableError]:
        async with FakeX(sample_lines) as fake:
            source = XFilteredStreamSource(
                WRONG_TOKEN,
                base_url=fake.url,
                rules=rules,
                max_reconnects=5,
                backoff_scale=0.001,
            )
            with pytest.raises(UnavailableError) as info:
                await collect(source)
            return fake, source, info.value

    fake, source, error = asyncio.run(main())
    assert "401" in error.message and "token" in error.message
    assert WRONG_TOKEN not in str(error) and WRONG_TOKEN not in repr(source)
    assert fake.unauthorized == 1 and source.reconnects == 0  # fatal: no retry


def test_http_errors_are_retried(sample_lines: list[str]) -> None:
    async def main() -> tuple[FakeX, XFilteredStreamSource, list[Envelope]]:
        async with FakeX(sample_lines, fail_first=[503, 429, 503]) as fake:
            source = XFilteredStreamSource(
                TOKEN, base_url=fake.url, max_reconnects=3, backoff_scale=0.001
            )
            return fake, source, await collect(source)

    fake, source, envelopes = asyncio.run(main())
    assert fake.statuses == [503, 429, 503, 200]
    assert source.reconnects == 3
    assert [e.post.id for e in envelopes if e.post] == [
        d["id"] for d in expected_posts(sample_lines)
    ]


def test_stalled_connection_reconnects(sample_lines: list[str]) -> None:
    async def main() -> tuple[FakeX, XFilteredStreamSource, list[Envelope]]:
        async with FakeX(sample_lines, hold="silent") as fake:
            source = XFilteredStreamSource(
                TOKEN,
                base_url=fake.url,
                max_reconnects=1,
                stall_timeout=0.2,
                backoff_scale=0.001,
            )
            return fake, source, await collect(source)

    fake, source, envelopes = asyncio.run(main())
    assert len(envelopes) == 300
    assert fake.statuses == [200, 200] and source.reconnects == 1


def test_close_ends_the_stream_promptly(sample_lines: list[str]) -> None:
    async def main() -> tuple[int, float]:
        async with FakeX(sample_lines, hold="keepalive") as fake:
            source = XFilteredStreamSource(TOKEN, base_url=fake.url, backoff_scale=0.001)
            got: list[Envelope] = []

            async def consume() -> None:
                async for envelope in source.stream():
                    got.append(envelope)

            task = asyncio.create_task(consume())
            deadline = time.monotonic() + 10
            while len(got) < 300 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # now only keep-alives arrive
            started = time.monotonic()
            await source.close()
            await asyncio.wait_for(task, 5)
            return len(got), time.monotonic() - started

    count, elapsed = asyncio.run(main())
    assert count == 300
    assert elapsed < 1.0


def test_backoff_schedule() -> None:
    assert [backoff_delay("network", n) for n in range(3)] == [0.25, 0.5, 0.75]
    assert backoff_delay("network", 100) == 16.0
    assert [backoff_delay("http", n) for n in range(3)] == [5.0, 10.0, 20.0]
    assert backoff_delay("http", 10) == 320.0
    assert [backoff_delay("rate", n) for n in range(2)] == [60.0, 120.0]


def iso(seconds: float) -> str:
    """X's ``created_at`` format: ``2026-11-01T12:00:00.000Z``."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def x_lines(n: int, prefix: str = "19000000000000") -> list[str]:
    """``n`` filtered-stream messages made here (the tests below need no sample data),
    created now."""
    now = iso(time.time())
    return [
        json.dumps(
            {
                "data": {
                    "id": f"{prefix}{i:05d}",
                    "text": f"post number {i} is great",
                    "created_at": now,
                    "lang": "en",
                },
                "matching_rules": [{"id": "1", "tag": "sentistream"}],
            }
        )
        for i in range(n)
    ]


def test_invalid_utf8_and_overlong_messages_are_refused_not_repaired() -> None:
    """Bytes that are not UTF-8 are not turned into U+FFFD (which would make a valid post of
    them): the message is refused with the reason and an escaped copy of its bytes."""
    lines = x_lines(20)
    latin1 = b'{"data": {"id": "1900000000099999", "text": "caf\xe9 ol\xe9"}}'
    long = json.dumps({"data": {"id": "1900000000088888", "text": "x" * 3000}})

    async def main() -> list[Envelope]:
        async with FakeX(lines, inject={10: [latin1, long]}) as fake:
            source = XFilteredStreamSource(
                TOKEN, base_url=fake.url, max_reconnects=0, max_line_bytes=2048
            )
            return await collect(source)

    envelopes = asyncio.run(main())
    assert [e.post.id for e in envelopes if e.post] == [json.loads(x)["data"]["id"] for x in lines]
    bad = [e for e in envelopes if e.post is None]
    assert len(bad) == 2
    assert bad[0].error == f"X stream message is not valid UTF-8 (byte {latin1.index(0xE9)})"
    assert bad[0].raw == '{"data": {"id": "1900000000099999", "text": "caf\\xe9 ol\\xe9"}}'
    assert "\ufffd" not in bad[0].raw
    assert bad[1].error == f"X stream message longer than 2048 bytes ({len(long)})"
    assert len(bad[1].raw) < 2100


def test_backfill_minutes_on_reconnect_and_after_resume() -> None:
    """backfill=True: a reconnect asks for the minutes since the last data (1), a resumed
    source for the minutes since its checkpoint (capped at 5, X's limit); backfill=False never
    asks (it needs Enterprise access)."""
    lines = x_lines(60)

    async def run(backfill: bool, resume_ago: float | None) -> tuple[list[int | None], int]:
        async with FakeX(lines, disconnect_after=30) as fake:
            source = XFilteredStreamSource(
                TOKEN, base_url=fake.url, max_reconnects=1, backoff_scale=0.001, backfill=backfill
            )
            if resume_ago is not None:
                source.resume(f"{time.time() - resume_ago:.3f}")
            envelopes = await collect(source)
            assert source.backfills == fake.backfills
            return fake.backfills, len(envelopes)

    assert asyncio.run(run(False, None)) == ([None, None], 60)
    assert asyncio.run(run(True, None)) == ([None, 1], 60)
    assert asyncio.run(run(True, 75)) == ([2, 1], 60)  # 75 s + 10 s margin: 2 minutes
    assert asyncio.run(run(True, 3600)) == ([5, 1], 60)  # an hour: 5, the most X allows


def test_backfill_minutes_covers_the_gap_within_x_limits() -> None:
    assert [backfill_minutes(s) for s in (-3, 0, 49, 51, 110, 230, 290, 291, 86_400)] == [
        1,
        1,
        1,
        2,
        2,
        4,
        5,
        5,
        5,
    ]
    assert BACKFILL_MAX_MINUTES == 5


def test_checkpoint_is_the_time_of_the_last_post() -> None:
    """The checkpoint follows the last post's created_at (a backfilled post is old: a crash in
    the middle of a backfill resumes from it), or its arrival when created_at is later."""
    old = time.time() - 180
    lines = [
        json.dumps({"data": {"id": "1", "text": "backfilled", "created_at": iso(old)}}),
        json.dumps({"data": {"id": "2", "text": "skewed", "created_at": iso(old + 7200)}}),
    ]

    async def main() -> list[float]:
        async with FakeX(lines) as fake:
            source = XFilteredStreamSource(TOKEN, base_url=fake.url, max_reconnects=0)
            assert source.checkpoint() is None
            seen = []
            async for _ in source.stream():
                seen.append(float(source.checkpoint() or 0))
            return seen

    first, second = asyncio.run(main())
    assert abs(first - old) < 0.01
    assert abs(second - time.time()) < 5
