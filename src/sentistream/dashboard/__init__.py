"""The live dashboard: a static page (HTML/CSS/JS shipped in the package, no build step, no
CDN) and a Server-Sent Events endpoint, mounted on the worker's and the model server's HTTP app.

``GET /dashboard`` serves the page with a strict Content-Security-Policy (scripts and styles only
from this origin, no inline script, nothing else loaded). ``GET /dashboard/events`` streams:

- ``record`` events: result records, first the newest ``history`` ones of the durable Redis
  Stream (XREVRANGE, so a reload shows recent history), then new ones as they are written
  (XREAD BLOCK). Each event's id is the stream entry id: a reconnecting browser sends it back as
  ``Last-Event-ID`` and continues after it, missing nothing.
- ``stats`` events every ``stats_interval`` seconds: model, counters, latency, drift.

Connections are bounded (``max_clients``; one more gets 503) and end when the client goes
(Starlette cancels the generator, which cancels its pending XREAD). Posts are untrusted: the
page inserts them with ``textContent`` only.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from fastapi import FastAPI
    from prometheus_client import Gauge

__all__ = ["CSP", "RedisFeed", "mount_dashboard"]

log = logging.getLogger("sentistream.dashboard")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


class RedisFeed:
    """Result records from a Redis Stream whose entries hold the record JSON in ``data``."""

    def __init__(self, client: aioredis.Redis, stream: str) -> None:
        self.client = client
        self.stream = stream

    @staticmethod
    def _decode(entries: Any) -> list[tuple[str, str]]:
        out = []
        for entry_id, fields in entries:
            data = fields.get(b"data")
            if data is None:
                continue
            eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
            if "\n" in text or "\r" in text:  # one SSE data line per record
                try:
                    text = json.dumps(json.loads(text))
                except ValueError:
                    continue  # not a record: nothing to show
            out.append((eid, text))
        return out

    async def history(self, count: int, after: str | None) -> tuple[list[tuple[str, str]], str]:
        """Entries to show first, oldest first, and the id to follow from."""
        if after:
            entries = self._decode(
                await self.client.xrange(self.stream, min=f"({after}", count=count)
            )
            return entries, entries[-1][0] if entries else after
        newest = self._decode(await self.client.xrevrange(self.stream, count=max(count, 1)))
        start = newest[0][0] if newest else "0-0"
        return list(reversed(newest[:count])), start

    async def follow(self, last_id: str, block_ms: int) -> list[tuple[str, str]]:
        reply: Any = await self.client.xread({self.stream: last_id}, count=200, block=block_ms)
        out: list[tuple[str, str]] = []
        for _, entries in reply or []:
            out.extend(self._decode(entries))
        return out

    async def close(self) -> None:
        await self.client.aclose()


class _EventStream(StreamingResponse):
    """An SSE response that gives its connection slot back however it ends."""

    def __init__(self, body: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={**SECURITY_HEADERS, "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _event(kind: str, data: str, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {kind}\ndata: {data}\n\n"


def _static(name: str) -> bytes:
    return (resources.files("sentistream.dashboard") / "static" / name).read_bytes()


def mount_dashboard(
    app: FastAPI,
    *,
    stats: Callable[[], dict[str, Any]],
    feed: RedisFeed | None,
    clients: Gauge,
    max_clients: int = 16,
    history: int = 200,
    stats_interval: float = 2.0,
    block_ms: int = 1000,
    closing: Callable[[], bool] = lambda: False,
) -> None:
    """Add ``/dashboard``, its static files and ``/dashboard/events`` to ``app``.

    ``closing()`` turns true when the process drains: open event streams then end within
    ``block_ms`` so they never hold up a graceful shutdown."""
    page = _static("index.html")
    files = {name: _static(name) for name in STATIC}
    active = {"n": 0}

    def release() -> None:
        active["n"] -= 1
        clients.set(active["n"])

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    @app.get("/dashboard/static/{name}", include_in_schema=False)
    async def dashboard_static(name: str) -> Response:
        if name not in files:
            return JSONResponse({"error": "not found", "code": "NOT_FOUND"}, status_code=404)
        return Response(files[name], media_type=STATIC[name], headers=SECURITY_HEADERS)

    @app.get("/dashboard/events", include_in_schema=False)
    async def dashboard_events(request: Request) -> Response:
        if active["n"] >= max_clients:
            return JSONResponse(
                {"error": f"dashboard has {max_clients} viewers already", "code": "UNAVAILABLE"},
                status_code=503,
                headers={"Retry-After": "10"},
            )
        active["n"] += 1
        clients.set(active["n"])
        after = request.headers.get("last-event-id") or None
        body = _events(feed, stats, history, after, stats_interval, block_ms, closing)
        return _EventStream(body, release)


async def _events(
    feed: RedisFeed | None,
    stats: Callable[[], dict[str, Any]],
    history: int,
    after: str | None,
    stats_interval: float,
    block_ms: int,
    closing: Callable[[], bool],
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()

    def stats_event() -> str:
        return _event("stats", json.dumps({**stats(), "feed": feed.stream if feed else None}))

    # redis is imported only where a feed exists: the package costs ~0.1 s of import, which a
    # model server without a dashboard stream (the serverless shape) should not pay at start.
    errors: tuple[type[BaseException], ...] = (OSError,)
    if feed is not None:
        from redis.exceptions import RedisError

        errors = (RedisError, OSError)
    yield "retry: 2000\n\n"
    yield stats_event()
    last = "0-0"
    if feed is not None:
        try:
            entries, last = await feed.history(history, after)
        except errors as exc:  # Redis away: show stats, keep trying to follow
            log.warning("dashboard history unavailable: %s", type(exc).__name__)
            entries, last = [], after or "$"
        for entry_id, data in entries:
            yield _event("record", data, entry_id)
    next_stats = loop.time() + stats_interval
    while not closing():
        if feed is None:
            await asyncio.sleep(max(0.0, min(block_ms / 1000, next_stats - loop.time())))
        else:
            try:
                wait = max(1, min(block_ms, int((next_stats - loop.time()) * 1000)))
                for entry_id, data in await feed.follow(last, wait):
                    last = entry_id
                    yield _event("record", data, entry_id)
            except errors as exc:  # Redis away: retry, keep sending stats
                log.warning("dashboard feed unavailable: %s", type(exc).__name__)
                await asyncio.sleep(1.0)
        if loop.time() >= next_stats:
            yield stats_event()
            next_stats = loop.time() + stats_interval
