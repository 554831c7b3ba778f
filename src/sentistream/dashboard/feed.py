"""Result records for the dashboard, bounded whatever the records hold and however many
people watch.

- :func:`compact`: a record as the page shows it: only the fields it reads, each string cut
  to :data:`FIELD_CHARS` characters, at most :data:`MAX_ENTRIES` scores and tasks. A 1 MB
  side field never reaches a viewer, nor the process's memory beyond one page of entries.
- :class:`RedisFeed`: the Redis Stream, read :data:`PAGE` entries at a time.
- :class:`FeedHub`: one reader per process while anybody watches; it keeps the newest
  ``history`` compact records (what a (re)loading page gets first) and hands new ones to each
  viewer's queue of at most :data:`QUEUE` records, dropping the oldest for a viewer that
  does not keep up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = [
    "FIELD_CHARS",
    "MAX_ENTRIES",
    "PAGE",
    "QUEUE",
    "FeedHub",
    "RedisFeed",
    "Viewer",
    "compact",
    "parse_stream_id",
]

log = logging.getLogger("sentistream.dashboard")

FIELD_CHARS = 300  # longest string of a record shown (text, id, label, ...)
MAX_ENTRIES = 16  # most entries of ``scores`` and of ``tasks`` shown
PAGE = 16  # stream entries read from Redis per call
QUEUE = 256  # records waiting for one viewer; the oldest go first
_SCALARS: tuple[str, ...] = ("id", "source", "text", "label", "score", "processed_at")
_SCALARS += ("latency_ms", "model", "model_version")
_STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")

StreamId = tuple[int, int]
Entry = tuple[str, str]  # (stream entry id, compact record JSON)


def parse_stream_id(value: str) -> StreamId | None:
    """``<ms>-<seq>`` (or ``<ms>``) as a comparable pair; None when it is not one."""
    match = _STREAM_ID.fullmatch(value.strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def _cut(value: str) -> str:
    return value if len(value) <= FIELD_CHARS else value[:FIELD_CHARS] + "…"


def _scalar(value: Any) -> Any:
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    return None  # a list or an object where the page expects a value: not shown


def _scores(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    items = list(value.items())[:MAX_ENTRIES]
    return {_cut(str(k)): _scalar(v) for k, v in items if not isinstance(v, dict | list)}


def _tasks(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    out = {}
    for task, result in list(value.items())[:MAX_ENTRIES]:
        if isinstance(result, dict):
            out[_cut(str(task))] = {
                "label": _scalar(result.get("label")),
                "score": _scalar(result.get("score")),
            }
    return out


def compact(data: str | bytes) -> str | None:
    """A record as the dashboard shows it, as one JSON line; None when it is not a record."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    shown: dict[str, Any] = {k: _scalar(record[k]) for k in _SCALARS if k in record}
    for key, pick in (("scores", _scores), ("tasks", _tasks)):
        value = pick(record.get(key))
        if value is not None:
            shown[key] = value
    # No raw line breaks, so one SSE data line; ensure_ascii=False keeps it small.
    return json.dumps(shown, ensure_ascii=False, separators=(",", ":"))


def _entries(reply: Any) -> tuple[list[Entry], list[str]]:
    """Compact records of stream entries, and the ids of every entry read (with or without
    a record), in the reply's order."""
    records, ids = [], []
    for entry_id, fields in reply or []:
        eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        ids.append(eid)
        data = fields.get(b"data")
        shown = compact(data) if data is not None else None
        if shown is not None:
            records.append((eid, shown))
    return records, ids


class RedisFeed:
    """Result records from a Redis Stream whose entries hold the record JSON in ``data``."""

    def __init__(self, client: aioredis.Redis, stream: str) -> None:
        self.client = client
        self.stream = stream

    async def before(self, end: str | None, count: int) -> tuple[list[Entry], list[str]]:
        """Up to ``count`` entries older than ``end`` (the newest when None), newest first."""
        reply = await self.client.xrevrange(self.stream, max=f"({end}" if end else "+", count=count)
        return _entries(reply)

    async def follow(self, last_id: str, block_ms: int, count: int) -> tuple[list[Entry], str]:
        """Entries after ``last_id`` (waiting up to ``block_ms``), and the id to follow from."""
        reply: Any = await self.client.xread({self.stream: last_id}, count=count, block=block_ms)
        records: list[Entry] = []
        for _, entries in reply or []:
            found, ids = _entries(entries)
            records.extend(found)
            last_id = ids[-1] if ids else last_id
        return records, last_id

    async def close(self) -> None:
        await self.client.aclose()


class Viewer:
    """One open event stream: the records waiting for it, newest last."""

    def __init__(self, after: StreamId | None) -> None:
        self.after = after
        self.queue: deque[Entry] = deque(maxlen=QUEUE)
        self.wake = asyncio.Event()

    def offer(self, entries: list[Entry]) -> None:
        for entry in entries:
            if self.after is None or (parse_stream_id(entry[0]) or (0, 0)) > self.after:
                self.queue.append(entry)
        if self.queue:
            self.wake.set()


class FeedHub:
    """One reader of a :class:`RedisFeed` for every viewer of this process."""

    def __init__(self, feed: RedisFeed, history: int, block_ms: int = 1000) -> None:
        self.feed = feed
        self.history = history
        self.block_ms = block_ms
        self.recent: deque[Entry] = deque(maxlen=max(history, 1))
        self.viewers: set[Viewer] = set()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def join(self, after: StreamId | None) -> tuple[list[Entry], Viewer]:
        """Register a viewer: returns the records it gets first (the newest ``history``
        ones, or those after ``after``) and its queue of new ones."""
        viewer = Viewer(after)
        self.viewers.add(viewer)
        if self._task is None:  # the first viewer: read the history, then follow
            self._task = asyncio.get_running_loop().create_task(self._run(), name="dashboard")
        first = [e for e in self.recent if after is None or self._newer(e, after)]
        return first[-self.history :] if self.history else [], viewer

    def leave(self, viewer: Viewer) -> None:
        """Unregister a viewer; with the last one the reader stops (no Redis reads, nothing
        kept while nobody watches)."""
        self.viewers.discard(viewer)
        if not self.viewers and self._task is not None:
            self._task.cancel()
            self._task = None
            self.recent.clear()

    @staticmethod
    def _newer(entry: Entry, after: StreamId) -> bool:
        return (parse_stream_id(entry[0]) or (0, 0)) > after

    def _publish(self, entries: list[Entry]) -> None:
        self.recent.extend(entries)
        for viewer in self.viewers:
            viewer.offer(entries)

    async def _history(self) -> str:
        """Publish the newest ``history`` records, oldest first; returns the id to follow
        from (the stream's newest entry)."""
        newest_first: list[Entry] = []
        end: str | None = None
        start = "0-0"
        while True:
            records, ids = await self.feed.before(end, PAGE)
            if not ids:
                break
            if end is None:
                start = ids[0]
            newest_first.extend(records)
            end = ids[-1]
            if len(newest_first) >= self.history or len(ids) < PAGE:
                break
        self._publish(list(reversed(newest_first[: self.history])))
        return start

    async def _run(self) -> None:
        from redis.exceptions import RedisError

        last: str | None = None
        while True:
            try:
                if last is None:
                    last = await self._history()
                    records: list[Entry] = []
                else:
                    records, last = await self.feed.follow(last, self.block_ms, PAGE)
            except (RedisError, OSError) as exc:  # Redis away: retry, log once per outage
                if not self._failing:
                    log.warning("dashboard feed unavailable: %s", type(exc).__name__)
                    self._failing = True
                await asyncio.sleep(1.0)
                continue
            if self._failing:
                log.info("dashboard feed available again")
                self._failing = False
            if records:
                self._publish(records)
