"""X (Twitter) API v2 filtered-stream source.

Delivery guarantee: **at-most-once** by default. The filtered stream is live and has no
cursor: posts published while we are disconnected (network error, stalled connection, backoff,
restart) are not replayed, and there is nothing to acknowledge. A post is yielded at most once
per connection (X itself may, rarely, deliver a post twice; the result ``id`` lets sinks
deduplicate).

With ``backfill=True`` (X's ``backfill_minutes`` parameter, Enterprise access only; other access
levels cannot use it) a reconnect, and a restart (:meth:`resume` with the :meth:`checkpoint` of
the earlier run), ask for the minutes since the time of the last post: its ``created_at``, or
its arrival when that is later or missing (a keep-alive after it moves the time of a reconnect
to the keep-alive: the stream had caught up). Whole minutes, at least 1 and at most 5, X's
limit. A gap longer than 5 minutes loses what came before the last 5; the backfilled minutes
repeat posts already received, which downstream dedup by post id absorbs. Backfilled posts come
oldest first with their old ``created_at``, so a crash in the middle of a backfill resumes from
the last one delivered, not from the time of the crash.

Messages are read as bytes and split on newlines here: a message that is not valid UTF-8 (or
longer than ``max_line_bytes``) becomes a bad envelope with the reason, never a repaired post.

Optional rule management (``rules``) makes sure the wanted rule values exist (tagged
``rule_tag``) and deletes rules carrying our tag that are no longer wanted; rules with other tags
are left alone. Reconnects follow X's documented backoff: network errors and disconnects back
off linearly (0.25 s steps up to 16 s), HTTP errors exponentially (5 s doubling up to 320 s),
HTTP 429 exponentially from 60 s (capped here at 960 s). HTTP 401/403 are fatal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from datetime import datetime
from typing import Any

import httpx

from sentistream.errors import InvalidInputError, UnavailableError
from sentistream.schemas import parse_post
from sentistream.stream.base import Envelope
from sentistream.stream.lines import MAX_LINE_BYTES, Line, LineSplitter

__all__ = ["BACKFILL_MAX_MINUTES", "XFilteredStreamSource", "backfill_minutes", "backoff_delay"]

log = logging.getLogger(__name__)

STREAM_PATH = "/2/tweets/search/stream"
RULES_PATH = "/2/tweets/search/stream/rules"
QUEUE_SIZE = 1000
BACKFILL_MAX_MINUTES = 5  # X's limit for backfill_minutes
BACKFILL_MARGIN_S = 10.0  # posts matched just before the last one we got may still be in flight

_Item = tuple[Envelope, float] | BaseException | None  # (post, its time); None: the end


def backfill_minutes(gap_s: float) -> int:
    """The ``backfill_minutes`` that covers a gap of ``gap_s`` seconds (and a margin): whole
    minutes, 1 to :data:`BACKFILL_MAX_MINUTES`."""
    minutes = math.ceil((max(gap_s, 0.0) + BACKFILL_MARGIN_S) / 60)
    return max(1, min(BACKFILL_MAX_MINUTES, minutes))


def _timestamp(created_at: str | None) -> float | None:
    """Unix seconds of an ISO 8601 ``created_at`` (``...Z``), or None."""
    if not created_at:
        return None
    try:
        moment = datetime.fromisoformat(created_at)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def backoff_delay(kind: str, attempt: int) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based) after a ``kind`` failure.

    ``kind`` is ``"network"`` (linear), ``"http"`` (exponential from 5 s) or ``"rate"`` (429,
    exponential from 60 s).
    """
    if kind == "network":
        return min(0.25 * (attempt + 1), 16.0)
    doublings = 2.0 ** min(attempt, 16)
    if kind == "rate":
        return min(60.0 * doublings, 960.0)
    return min(5.0 * doublings, 320.0)


class _StatusError(Exception):
    """A non-success HTTP answer from X (internal: turned into a backoff or a fatal error)."""

    def __init__(self, status: int, where: str, detail: str = "") -> None:
        super().__init__(f"{where} answered HTTP {status}{': ' + detail if detail else ''}")
        self.status = status


class XFilteredStreamSource:
    """Posts from ``GET /2/tweets/search/stream`` as :class:`Envelope` objects."""

    name = "x"
    guarantee = "at-most-once"

    def __init__(
        self,
        bearer_token: str,
        base_url: str = "https://api.x.com",
        rules: list[str] | None = None,
        rule_tag: str = "sentistream",
        tweet_fields: str = "created_at,lang,author_id",
        languages: set[str] | None = None,
        max_reconnects: int | None = None,
        stall_timeout: float = 20.0,
        backoff_scale: float = 1.0,
        backfill: bool = False,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        if not bearer_token:
            raise ValueError("an X API bearer token is required")
        self._token = bearer_token
        self.base_url = base_url.rstrip("/")
        self.rules = None if rules is None else list(dict.fromkeys(rules))
        self.rule_tag = rule_tag
        self.tweet_fields = tweet_fields
        self.languages = None if languages is None else set(languages)
        self.max_reconnects = max_reconnects
        self.stall_timeout = stall_timeout
        self.backoff_scale = backoff_scale
        self.backfill = backfill
        self.max_line_bytes = max_line_bytes
        self.backfills: list[int | None] = []  # backfill_minutes asked for, per connection
        self.reconnects = 0
        self._since: float | None = None  # wall time from which a connection should backfill
        self._checkpoint: float | None = None  # time of the last post yielded
        self._attempts = {"network": 0, "http": 0, "rate": 0}
        self._got_data = False
        self._lines = 0
        self._closed = False
        self._queue: asyncio.Queue[_Item] | None = None
        self._producer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:  # never shows the token
        return f"XFilteredStreamSource(base_url={self.base_url!r}, rules={self.rules!r})"

    async def stream(self) -> AsyncIterator[Envelope]:
        queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._queue = queue
        producer = asyncio.create_task(self._produce(queue), name="x-filtered-stream")
        self._producer = producer
        try:
            while not self._closed:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                envelope, self._checkpoint = item
                yield envelope
        finally:
            producer.cancel()
            await asyncio.wait({producer})

    async def ack(self, envelopes: Sequence[Envelope]) -> None:
        """Nothing to acknowledge: the filtered stream is live (at-most-once)."""

    def checkpoint(self) -> str | None:
        """Time (unix seconds) of the last post yielded: its ``created_at``, or its arrival
        when that is earlier or ``created_at`` is missing; None before the first."""
        return None if self._checkpoint is None else f"{self._checkpoint:.3f}"

    def resume(self, checkpoint: str) -> None:
        """Backfill from an earlier run's :meth:`checkpoint` on the first connection (only with
        ``backfill``; X cannot go back further than 5 minutes)."""
        try:
            since = float(checkpoint)
        except ValueError:
            raise InvalidInputError(f"not an X checkpoint: {checkpoint[:40]!r}") from None
        if not math.isfinite(since):
            raise InvalidInputError(f"not an X checkpoint: {checkpoint[:40]!r}")
        self._since = since
        self._checkpoint = since
        gap = time.time() - since
        if not self.backfill:
            log.warning(
                "X stream: the last post was stored %.0f s ago; posts published since are not "
                "recovered (backfill is off: it needs X Enterprise access)",
                gap,
            )
        elif gap + BACKFILL_MARGIN_S > BACKFILL_MAX_MINUTES * 60:
            log.warning(
                "X stream: the last post was stored %.0f s ago; backfill recovers only the last "
                "%d minutes, posts published before are lost",
                gap,
                BACKFILL_MAX_MINUTES,
            )

    async def close(self) -> None:
        self._closed = True
        if self._producer is not None:
            self._producer.cancel()
        if self._queue is not None:
            with suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)  # wakes a consumer waiting on an empty queue

    # -- internals ------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***")

    def _backfill_minutes(self) -> int | None:
        if not self.backfill or self._since is None:
            return None
        return backfill_minutes(time.time() - self._since)

    async def _produce(self, queue: asyncio.Queue[_Item]) -> None:
        try:
            await self._run(queue)
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put(exc)
            return
        await queue.put(None)

    async def _run(self, queue: asyncio.Queue[_Item]) -> None:
        timeout = httpx.Timeout(10.0, read=self.stall_timeout)
        async with httpx.AsyncClient(timeout=timeout) as client:
            rules_synced = self.rules is None
            while not self._closed:
                self._got_data = False
                try:
                    if not rules_synced:
                        await self._sync_rules(client)
                        rules_synced = True
                    await self._consume(client, queue)
                    kind, why = "network", "the server closed the stream"
                except _StatusError as exc:
                    if exc.status in (401, 403):
                        raise UnavailableError(
                            f"the X API refused the bearer token (HTTP {exc.status}): check that "
                            "it is valid and that the app has filtered-stream access"
                        ) from None
                    kind, why = ("rate" if exc.status == 429 else "http"), str(exc)
                except httpx.RequestError as exc:
                    kind, why = "network", f"{type(exc).__name__}: {exc}".rstrip(": ")
                if self._got_data:
                    self._attempts = dict.fromkeys(self._attempts, 0)
                if self.max_reconnects is not None and self.reconnects >= self.max_reconnects:
                    log.warning(
                        "X stream: %s; giving up after %d reconnects",
                        self._scrub(why),
                        self.reconnects,
                    )
                    return
                delay = backoff_delay(kind, self._attempts[kind]) * self.backoff_scale
                self._attempts[kind] += 1
                self.reconnects += 1
                log.warning("X stream: %s; reconnecting in %.3f s", self._scrub(why), delay)
                await asyncio.sleep(delay)

    async def _consume(self, client: httpx.AsyncClient, queue: asyncio.Queue[_Item]) -> None:
        url = self.base_url + STREAM_PATH
        params: dict[str, str | int] = {"tweet.fields": self.tweet_fields}
        minutes = self._backfill_minutes()
        if minutes is not None:
            params["backfill_minutes"] = minutes
        self.backfills.append(minutes)
        async with client.stream("GET", url, params=params, headers=self._headers()) as response:
            if response.status_code != 200:
                body = (await response.aread())[:300].decode("utf-8", errors="replace")
                raise _StatusError(response.status_code, "the stream endpoint", self._scrub(body))
            log.info("X stream: connected to %s (backfill_minutes %s)", url, minutes)
            splitter = LineSplitter(self.max_line_bytes)
            async for chunk in response.aiter_bytes():
                for line in splitter.feed(chunk):
                    await self._line(line, queue)
            for line in splitter.end():
                await self._line(line, queue)

    async def _line(self, line: Line, queue: asyncio.Queue[_Item]) -> None:
        arrived = time.time()
        if not line.data.strip() and not line.too_long:
            self._since = arrived  # keep-alive: everything before it has arrived
            return
        self._got_data = True
        if line.too_long:
            envelope: Envelope | None = Envelope.bad(
                line.data, f"X stream message longer than {self.max_line_bytes} bytes ({line.size})"
            )
        else:
            try:
                text = line.data.decode("utf-8")
            except UnicodeDecodeError as exc:
                envelope = Envelope.bad(
                    line.data, f"X stream message is not valid UTF-8 (byte {exc.start})"
                )
            else:
                envelope = self._envelope(text)
        stamp = arrived
        if envelope is not None and envelope.post is not None:
            stamp = min(arrived, _timestamp(envelope.post.created_at) or arrived)
        self._since = stamp
        if envelope is not None:
            await queue.put((envelope, stamp))

    def _envelope(self, line: str) -> Envelope | None:
        self._lines += 1
        if '"errors"' in line:
            with suppress(ValueError, RecursionError):
                obj = json.loads(line)
                if isinstance(obj, dict) and "errors" in obj and "data" not in obj:
                    log.warning("X stream message: %s", line[:500])
                    return None
        try:
            post = parse_post(line, default_id=f"x-line-{self._lines}", source="x")
        except InvalidInputError as exc:
            return Envelope.bad(line, exc.message)
        if self.languages is not None and post.lang not in self.languages:
            return None
        return Envelope(post=post, raw=line)

    async def _rules_call(
        self, client: httpx.AsyncClient, method: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        response = await client.request(
            method, self.base_url + RULES_PATH, json=body, headers=self._headers()
        )
        if response.status_code not in (200, 201):
            detail = self._scrub(response.text[:300])
            raise _StatusError(response.status_code, "the rules endpoint", detail)
        try:
            answer = response.json()
        except ValueError:
            raise _StatusError(response.status_code, "the rules endpoint", "not JSON") from None
        if not isinstance(answer, dict):
            raise _StatusError(response.status_code, "the rules endpoint", "not a JSON object")
        if answer.get("errors"):
            log.warning("X rules %s: %s", method, json.dumps(answer["errors"])[:500])
        return answer

    async def _sync_rules(self, client: httpx.AsyncClient) -> None:
        wanted = self.rules or []
        current = await self._rules_call(client, "GET")
        existing = [r for r in current.get("data") or [] if isinstance(r, dict)]
        have = {r.get("value") for r in existing}
        stale = [
            str(r["id"])
            for r in existing
            if r.get("tag") == self.rule_tag and r.get("value") not in wanted and "id" in r
        ]
        missing = [v for v in wanted if v not in have]
        if stale:
            await self._rules_call(client, "POST", {"delete": {"ids": stale}})
        if missing:
            add = [{"value": v, "tag": self.rule_tag} for v in missing]
            await self._rules_call(client, "POST", {"add": add})
        log.info("X rules: %d added, %d deleted", len(missing), len(stale))
