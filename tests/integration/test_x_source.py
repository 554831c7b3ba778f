"""The X filtered-stream source against a real local fake X API server.

The fake speaks minimal HTTP/1.1 over ``asyncio.start_server`` (chunked transfer encoding for
the stream, keep-alive connections for the rest), replays the shared sample wire data line by
line including keep-alive blank lines, can drop the connection mid-stream and resume where it
stopped on the next connection (X does not replay), answers 401 for a wrong bearer token,
fails the first connections with chosen statuses, and implements the rules endpoints.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sentistream.errors import UnavailableError
from sentistream.stream.base import Envelope
from sentistream.stream.x_source import XFilteredStreamSource, backoff_delay
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
        inject: dict[int, list[str]] | None = None,
        fail_first: list[int] | None = None,
        rules: list[dict[str, str]] | None = None,
        hold: str | None = None,  # after the feed: "keepalive" (every 50 ms) or "silent"
    ) -> None:
        self.port = free_port()
        self.feed: list[str] = []
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
            self.fields.append(parse_qs(url.query).get("tweet.fields", []))
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
            self.keepalives_sent += not line
            data = (line + "\r\n").encode()
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
