"""JetstreamSource against a real local WebSocket server that replays the sample firehose."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from sentistream.errors import InvalidInputError, UnavailableError
from sentistream.stream.base import Envelope, Source
from sentistream.stream.bluesky_source import JetstreamSource
from sentistream.testing import free_port

pytestmark = pytest.mark.integration

SAMPLE = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "stream"
    / "bluesky_jetstream.sample.jsonl"
)
POST = "app.bsky.feed.post"
T = TypeVar("T")


@pytest.fixture(scope="module")
def sample() -> list[str]:
    if not SAMPLE.exists():
        pytest.skip(f"Jetstream sample data not present at {SAMPLE}")
    return [line for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]


def creates(lines: list[str]) -> dict[str, dict[str, Any]]:
    """id -> record of every create-post event in ``lines``, counted straight from the file."""
    out = {}
    for line in lines:
        ev = json.loads(line)
        c = ev.get("commit") or {}
        if ev["kind"] == "commit" and c["operation"] == "create" and c["collection"] == POST:
            out[f"at://{ev['did']}/{POST}/{c['rkey']}"] = c["record"]
    return out


def post(did: str, rkey: str, time_us: int, langs: list[str] | None, **commit: Any) -> str:
    record: dict[str, Any] = {"text": f"post {rkey}", "createdAt": "2025-11-01T00:00:00Z"}
    if langs is not None:
        record["langs"] = langs
    body = {"operation": "create", "collection": POST, "rkey": rkey, "record": record, **commit}
    return json.dumps({"did": did, "time_us": time_us, "kind": "commit", "commit": body})


class FakeJetstream:
    """Jetstream-like server: honours ``wantedCollections`` and ``cursor`` (replaying events with
    ``time_us >= cursor``, as Jetstream does), aborts the first ``drops`` connections after
    ``drop_after`` messages, then ends the stream with a normal close (or holds it open with
    ``hold_open``).

    With ``publish_interval`` it is live instead: from the first connection on, it publishes
    one event every ``publish_interval`` seconds, stamped with the wall clock as ``time_us``
    (like Jetstream), whether or not anyone is connected. A connection without a cursor gets
    what is published after it connects (live tail); with a cursor, every published event with
    ``time_us >= cursor`` first, then the live tail. It stays open until the client leaves."""

    def __init__(
        self,
        lines: list[str | bytes],
        *,
        drop_after: int | None = 100,
        drops: int = 1,
        hold_open: bool = False,
        filter_collections: bool = True,
        publish_interval: float | None = None,
    ) -> None:
        self.events: list[tuple[int, str | None, str | bytes]] = []
        last = 0
        for raw in lines:  # an event without time_us (malformed) keeps its predecessor's
            try:
                ev = json.loads(raw)
            except ValueError:
                ev = None
            event: dict[str, Any] = ev if isinstance(ev, dict) else {}
            last = event["time_us"] if isinstance(event.get("time_us"), int) else last
            commit = event["commit"] if isinstance(event.get("commit"), dict) else {}
            self.events.append((last, commit.get("collection"), raw))
        self.drop_after, self.hold_open = drop_after, hold_open
        self.filter_collections = filter_collections
        self.queries: list[str] = []
        self.drops_left = drops
        self.publish_interval = publish_interval
        self.published: list[tuple[int, str | None, str | bytes]] = []
        self.sent = 0  # messages sent, all connections together
        self._publisher: asyncio.Task[None] | None = None

    @property
    def done_publishing(self) -> bool:
        return len(self.published) == len(self.events)

    async def _publish(self) -> None:
        assert self.publish_interval is not None
        for _, collection, raw in self.events:
            time_us = time.time_ns() // 1000
            if self.published:
                time_us = max(time_us, self.published[-1][0] + 1)
            event = json.loads(raw)
            event["time_us"] = time_us
            self.published.append((time_us, collection, json.dumps(event)))
            await asyncio.sleep(self.publish_interval)

    async def _live(self, ws: ServerConnection, cursor: int | None, wanted: set[str]) -> None:
        if self._publisher is None:
            self._publisher = asyncio.create_task(self._publish())
        if cursor is None:
            i = len(self.published)
        else:
            i = next(
                (k for k, ev in enumerate(self.published) if ev[0] >= cursor), len(self.published)
            )
        with contextlib.suppress(ConnectionClosed):
            while True:
                while i < len(self.published):
                    _, collection, raw = self.published[i]
                    i += 1
                    if wanted and collection not in (None, *wanted):
                        continue
                    await ws.send(raw)
                    self.sent += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ws.wait_closed(), 0.005)
                    return  # the client left

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = urlsplit(ws.request.path).query
        self.queries.append(query)
        params = parse_qs(query)
        wanted = set(params.get("wantedCollections", []))
        cursor = int(params["cursor"][0]) if "cursor" in params else None
        if self.publish_interval is not None:
            await self._live(ws, cursor, wanted if self.filter_collections else set())
            return
        sent = 0
        for time_us, collection, raw in self.events:
            if cursor is not None and time_us < cursor:
                continue
            if self.filter_collections and wanted and collection not in (None, *wanted):
                continue
            await ws.send(raw)
            sent += 1
            self.sent += 1
            if self.drops_left and self.drop_after is not None and sent >= self.drop_after:
                self.drops_left -= 1
                ws.transport.abort()  # a network drop: no close frame
                return
        if self.hold_open:
            await ws.wait_closed()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        port = free_port()
        try:
            async with serve(self.handler, "127.0.0.1", port):
                yield f"ws://127.0.0.1:{port}/subscribe"
        finally:
            if self._publisher is not None:
                self._publisher.cancel()


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def drain(source: JetstreamSource) -> list[Envelope]:
    return [env async for env in source.stream()]


async def collect(fake: FakeJetstream, **kwargs: Any) -> tuple[list[Envelope], JetstreamSource]:
    async with fake.running() as url:
        source = JetstreamSource(url, backoff_scale=0.001, **kwargs)
        return await drain(source), source


def test_every_post_yielded_once_across_a_drop_and_resumed_from_cursor(sample: list[str]) -> None:
    expected = creates(sample)
    skipped = len(sample) - len(expected)  # identity/account events and delete commits
    assert expected and skipped > 0
    fake = FakeJetstream(list(sample), drop_after=100)
    envelopes, source = run(collect(fake, max_reconnects=1))

    assert all(env.post is not None and env.error is None for env in envelopes)
    posts = [env.post for env in envelopes if env.post is not None]
    ids = [p.id for p in posts]
    assert set(ids) == set(expected)  # identity events and delete commits were skipped
    assert len(ids) - len(set(ids)) <= 1  # at most the post at the resume cursor, twice
    for p in posts:
        record = expected[p.id]
        assert (p.text, p.source, p.created_at) == (record["text"], "bluesky", record["createdAt"])
        assert p.lang == record["langs"][0]

    assert fake.drops_left == 0 and source.connections == 2 and len(fake.queries) == 2
    first, second = (parse_qs(q) for q in fake.queries)
    assert first == {"wantedCollections": [POST]}
    assert second["wantedCollections"] == [POST]
    first_hundred = {json.loads(line)["time_us"] for line in sample[:100]}
    assert int(second["cursor"][0]) in first_hundred
    assert source.cursor == max(json.loads(line)["time_us"] for line in sample)


def test_language_and_collection_filters(sample: list[str]) -> None:
    head = sample[:20]
    t = json.loads(head[-1])["time_us"]
    extra = [
        post("did:plc:ja", "ja1", t + 1, ["ja"]),
        post("did:plc:enus", "enus1", t + 2, ["en-US"]),
        post("did:plc:jaen", "jaen1", t + 3, ["ja", "en"]),
        post("did:plc:nolang", "none1", t + 4, None),
        post("did:plc:like", "like1", t + 5, ["en"], collection="app.bsky.feed.like"),
        post("did:plc:upd", "upd1", t + 6, ["en"], operation="update"),
        json.dumps({"did": "did:plc:acct", "time_us": t + 7, "kind": "account", "account": {}}),
    ]
    lines: list[str | bytes] = [*head, *extra]
    base = set(creates(head))

    def stream(languages: set[str] | None) -> dict[str, str | None]:
        fake = FakeJetstream(lines, drop_after=None, filter_collections=False)
        envelopes, source = run(collect(fake, max_reconnects=0, languages=languages))
        assert source.cursor == t + 7  # skipped events still move the cursor
        return {e.post.id: e.post.lang for e in envelopes if e.post is not None}

    english = stream({"en"})
    assert set(english) == base | {
        f"at://did:plc:enus/{POST}/enus1",
        f"at://did:plc:jaen/{POST}/jaen1",
    }
    assert english[f"at://did:plc:jaen/{POST}/jaen1"] == "ja"
    assert set(stream({"JA"})) == {f"at://did:plc:ja/{POST}/ja1", f"at://did:plc:jaen/{POST}/jaen1"}
    everything = stream(None)
    assert len(everything) == len(base) + 4
    assert everything[f"at://did:plc:nolang/{POST}/none1"] is None


def test_malformed_events_become_bad_envelopes(sample: list[str]) -> None:
    bad: dict[str | bytes, str] = {
        "{not json": "invalid JSON",
        b"\xff\xfe binary garbage": "invalid JSON",
        "[1, 2]": "JSON object",
        post("did:plc:x", "x1", 5, ["en"]).replace('"text": "post x1"', '"text": 7'): "record.text",
        post("did:plc:x", "", 5, ["en"]): "rkey",
        post("did:plc:x", "x2", 5, ["en"], record=None): "record",
        post("did:plc:x", "x3", 5, None).replace('"createdAt"', '"langs": "en", "createdAt"'): (
            "record.langs"
        ),
        json.dumps({"did": "did:plc:x", "time_us": 5, "kind": "commit", "commit": 3}): "commit",
    }
    lines: list[str | bytes] = [*sample[:10], *bad, *sample[10:]]
    fake = FakeJetstream(lines, drop_after=100)
    envelopes, _ = run(collect(fake, max_reconnects=1))

    errors = [env for env in envelopes if env.error is not None]
    assert len(errors) == len(bad)
    for env, (raw, reason) in zip(errors, bad.items(), strict=True):
        assert env.post is None and reason in (env.error or "")
        # bytes that are not UTF-8 are kept as \xNN escapes, never repaired to U+FFFD
        assert env.raw == (
            raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
        )
    good = {env.post.id for env in envelopes if env.post is not None}
    assert good == set(creates(sample))


def test_close_ends_a_live_stream_promptly(sample: list[str]) -> None:
    head = sample[:30]
    wanted = len(creates(head))

    async def main() -> tuple[int, float]:
        fake = FakeJetstream(list(head), drop_after=None, hold_open=True)
        async with fake.running() as url:
            source = JetstreamSource(url, backoff_scale=0.001)
            got: list[Envelope] = []

            async def consume() -> None:
                async for env in source.stream():
                    got.append(env)

            task = asyncio.create_task(consume())
            while len(got) < wanted:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # the server is now idle, the source waits in recv
            start = time.perf_counter()
            await source.close()
            await asyncio.wait_for(task, 2)
            return len(got), time.perf_counter() - start

    count, took = run(main())
    assert count == wanted and took < 1.0


def test_close_from_the_consumer_and_during_backoff(sample: list[str]) -> None:
    async def from_consumer() -> int:
        fake = FakeJetstream(list(sample), drop_after=None, hold_open=True)
        async with fake.running() as url:
            source = JetstreamSource(url)
            n = 0
            async for _ in source.stream():
                n += 1
                if n == 5:
                    await source.close()
            return n

    assert run(from_consumer()) == 5

    async def during_backoff() -> float:  # nothing listens: connect fails, backoff 0.5 s, 1 s ...
        source = JetstreamSource(f"ws://127.0.0.1:{free_port()}/subscribe", backoff_scale=1.0)

        async def first() -> Envelope | None:
            return await anext(source.stream(), None)

        task = asyncio.create_task(first())
        await asyncio.sleep(0.2)
        start = time.perf_counter()
        await source.close()
        assert await asyncio.wait_for(task, 2) is None
        return time.perf_counter() - start

    assert run(during_backoff()) < 0.5


def test_gives_up_after_max_reconnects_when_unreachable() -> None:
    source = JetstreamSource(
        f"ws://127.0.0.1:{free_port()}/subscribe", max_reconnects=2, backoff_scale=0.001
    )
    with pytest.raises(UnavailableError, match="cannot connect"):
        run(drain(source))
    assert source.connections == 0


def reconnect_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [
        float(r.args[1])  # type: ignore[index,arg-type]
        for r in caplog.records
        if r.name == "sentistream.stream" and r.msg.startswith("jetstream reconnect")
    ]


def test_backoff_doubles_and_resets_after_a_connection_that_delivered(
    sample: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sentistream.stream")
    source = JetstreamSource(
        f"ws://127.0.0.1:{free_port()}/subscribe", max_reconnects=3, backoff_scale=0.001
    )
    with pytest.raises(UnavailableError):
        run(drain(source))
    assert reconnect_delays(caplog) == pytest.approx([0.0005, 0.001, 0.002])

    caplog.clear()
    fake = FakeJetstream(list(sample), drop_after=5, drops=3)
    envelopes, source = run(collect(fake, max_reconnects=3))
    assert reconnect_delays(caplog) == pytest.approx([0.0005] * 3)  # reset: each one delivered
    assert source.connections == 4
    assert {e.post.id for e in envelopes if e.post is not None} == set(creates(sample))


def test_source_protocol_and_url() -> None:
    source: Source = JetstreamSource(
        "ws://localhost:1/subscribe",
        wanted_collections=(POST, "app.bsky.feed.like"),
        cursor=1762000000000228,
    )
    assert (source.name, source.guarantee) == ("bluesky", "at-most-once")
    assert isinstance(source, JetstreamSource)
    assert source.subscribe_url() == (
        "ws://localhost:1/subscribe?wantedCollections=app.bsky.feed.post"
        "&wantedCollections=app.bsky.feed.like&cursor=1762000000000228"
    )
    run(source.ack([Envelope.bad("x", "y")]))
    with pytest.raises(InvalidInputError):
        JetstreamSource("https://example.com/subscribe")


def test_checkpoint_resume_and_rewind() -> None:
    """The checkpoint is the last time_us seen; a resumed source asks for it less the rewind
    (Jetstream's cursor is inclusive and rewinding a few seconds gives gapless playback)."""
    source = JetstreamSource("ws://localhost:1/subscribe", rewind_us=5_000_000)
    assert source.checkpoint() is None
    assert "cursor" not in source.subscribe_url()  # nothing stored: live tail
    source.resume("1762000000000228")
    assert source.checkpoint() == "1762000000000228"
    assert source.subscribe_url().endswith("&cursor=1761999995000228")
    for junk in ("soon", "-5", ""):
        with pytest.raises(InvalidInputError, match="not a Jetstream cursor"):
            source.resume(junk)
