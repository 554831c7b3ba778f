"""X (Twitter) API v2 filtered-stream source.

Delivery guarantee: **at-most-once**. The filtered stream is live and has no cursor: posts
published while we are disconnected (network error, stalled connection, backoff, restart) are
not replayed, and there is nothing to acknowledge. A post is yielded at most once per connection
(X itself may, rarely, deliver a post twice; the result ``id`` lets sinks deduplicate).

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
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from typing import Any

import httpx

from sentistream.errors import InvalidInputError, UnavailableError
from sentistream.schemas import parse_post
from sentistream.stream.base import Envelope

__all__ = ["XFilteredStreamSource", "backoff_delay"]

log = logging.getLogger(__name__)

STREAM_PATH = "/2/tweets/search/stream"
RULES_PATH = "/2/tweets/search/stream/rules"
QUEUE_SIZE = 1000

_Item = Envelope | BaseException | None  # None: the stream ended


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
        self.reconnects = 0
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
                yield item
        finally:
            producer.cancel()
            await asyncio.wait({producer})

    async def ack(self, envelopes: Sequence[Envelope]) -> None:
        """Nothing to acknowledge: the filtered stream is live (at-most-once)."""

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
        params = {"tweet.fields": self.tweet_fields}
        async with client.stream("GET", url, params=params, headers=self._headers()) as response:
            if response.status_code != 200:
                body = (await response.aread())[:300].decode("utf-8", errors="replace")
                raise _StatusError(response.status_code, "the stream endpoint", self._scrub(body))
            log.info("X stream: connected to %s", url)
            async for line in response.aiter_lines():
                if not line.strip():
                    continue  # keep-alive
                self._got_data = True
                envelope = self._envelope(line)
                if envelope is not None:
                    await queue.put(envelope)

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
