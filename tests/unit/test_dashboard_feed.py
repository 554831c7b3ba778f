"""What the dashboard keeps and sends, bounded: compact records, one reader per process for
every viewer, each viewer's queue capped with the oldest dropped first."""

from __future__ import annotations

import asyncio
import json
import math

from sentistream.dashboard.feed import (
    FIELD_CHARS,
    MAX_ENTRIES,
    PAGE,
    QUEUE,
    Entry,
    FeedHub,
    RedisFeed,
    compact,
    parse_stream_id,
)


def test_compact_keeps_what_the_page_shows_and_cuts_it() -> None:
    record = {
        "id": "9" * 5000,
        "text": "w" * 1_000_000,
        "label": "positive",
        "score": 0.9,
        "scores": {f"label{i}": 0.01 for i in range(100)},
        "tasks": {"emotion": {"label": "joy", "score": 0.8, "extra": "x" * 10_000}},
        "user": {"bio": "b" * 1_000_000},  # a side field the page never shows
        "latency_ms": math.inf,
        "processed_at": "2026-11-01T12:00:00Z",
    }
    shown = compact(json.dumps(record))
    assert shown is not None and "\n" not in shown and len(shown) < 3000
    out = json.loads(shown)
    assert "user" not in out and out["latency_ms"] is None
    assert out["text"] == "w" * FIELD_CHARS + "…" and len(out["id"]) == FIELD_CHARS + 1
    assert len(out["scores"]) == MAX_ENTRIES
    assert out["tasks"] == {"emotion": {"label": "joy", "score": 0.8}}
    assert out["label"] == "positive" and out["processed_at"] == "2026-11-01T12:00:00Z"
    for not_a_record in (b"[1, 2]", b"not json", b"\xff\xfe", "1" * 10, json.dumps("text")):
        assert compact(not_a_record) is None


def test_stream_ids_parse_leniently() -> None:
    assert parse_stream_id("1700000000000-5") == (1700000000000, 5)
    assert parse_stream_id("17") == (17, 0)
    for garbage in ("", "garbage", "1-2-3", "-1", "1-", "$", "1" * 40, "1 -2", "\u0661-0"):
        assert parse_stream_id(garbage) is None, garbage


class FakeFeed(RedisFeed):
    """A stream in memory that counts the reads."""

    def __init__(self, n: int) -> None:
        self.stream = "fake"
        self.entries: list[Entry] = []
        self.follows = 0
        self.add(n)

    def add(self, n: int) -> None:
        start = len(self.entries) + 1
        self.entries += [(f"{i}-0", json.dumps({"id": str(i)})) for i in range(start, start + n)]

    async def before(self, end: str | None, count: int) -> tuple[list[Entry], list[str]]:
        older = [e for e in self.entries if end is None or _n(e) < _n((end, ""))]
        page = list(reversed(older))[:count]
        return page, [eid for eid, _ in page]

    async def follow(self, last_id: str, block_ms: int, count: int) -> tuple[list[Entry], str]:
        self.follows += 1
        newer = [e for e in self.entries if _n(e) > _n((last_id, ""))][:count]
        if not newer:
            await asyncio.sleep(block_ms / 1000)
            return [], last_id
        return newer, newer[-1][0]


def _n(entry: Entry) -> int:
    return int(entry[0].split("-")[0])


def test_one_reader_and_bounded_queues() -> None:
    async def run() -> None:
        feed = FakeFeed(10)
        hub = FeedHub(feed, history=5, block_ms=5)
        first, slow = hub.join(None)  # the first viewer starts the reader
        assert first == []
        await asyncio.sleep(0.05)
        assert [_n(e) for e in slow.queue] == [6, 7, 8, 9, 10]  # the history, oldest first
        first, fast = hub.join(None)
        assert [_n(e) for e in first] == [6, 7, 8, 9, 10]
        fast.queue.clear()
        feed.add(1000)
        while not hub.recent or _n(hub.recent[-1]) < 1010:
            await asyncio.sleep(0.01)
            fast.queue.clear()  # this one keeps up; the slow one reads nothing
        # The slow viewer holds the newest QUEUE records; the oldest were dropped.
        assert len(slow.queue) == QUEUE and _n(slow.queue[-1]) == 1010
        assert _n(slow.queue[0]) == 1010 - QUEUE + 1
        assert len(hub.recent) == 5  # what a reload gets
        # One read per page for both viewers, not one per viewer.
        assert feed.follows <= 1000 // PAGE + 20
        hub.leave(slow)
        hub.leave(fast)
        assert hub._task is None and not hub.recent  # nobody watches: nothing read or kept
        # A reconnecting viewer with Last-Event-ID gets only what came after it.
        _, again = hub.join(parse_stream_id("1007-0"))
        await asyncio.sleep(0.05)
        assert [_n(e) for e in again.queue] == [1008, 1009, 1010]
        hub.leave(again)

    asyncio.run(run())
