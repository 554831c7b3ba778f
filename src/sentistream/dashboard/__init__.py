"""The live dashboard: a static page (HTML/CSS/JS shipped in the package, no build step, no
CDN) and a Server-Sent Events endpoint, mounted on the worker's and the model server's HTTP app.

``GET /dashboard`` serves the page with a strict Content-Security-Policy (scripts and styles only
from this origin, no inline script, nothing else loaded). ``GET /dashboard/events`` streams:

- ``record`` events: result records, first the newest ``history`` ones of the durable Redis
  Stream (so a reload shows recent history), then new ones as they are written. Each event's
  id is the stream entry id: a reconnecting browser sends it back as ``Last-Event-ID`` and
  gets what it missed of that history (an id that is not a stream entry id counts as absent).
- ``stats`` events every ``stats_interval`` seconds: model, counters, latency, drift.

Records are compacted first (:mod:`sentistream.dashboard.feed`: the fields the page shows,
each cut to a few hundred characters), and one reader per process serves every viewer, each
through a bounded queue. Connections are bounded (``max_clients``; one more gets 503) and end
when the client goes; the reader stops with the last one. Posts are untrusted: the page inserts
them with ``textContent`` only, each in an element that isolates its text direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from sentistream.dashboard.feed import FeedHub, RedisFeed, StreamId, parse_stream_id

if TYPE_CHECKING:
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


class _EventStream(StreamingResponse):
    """An SSE response that gives its connection slot back however it ends."""

    def __init__(self, body: AsyncGenerator[str, None], release: Callable[[], None]) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={**SECURITY_HEADERS, "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._body = body
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
            await self._body.aclose()  # its viewer leaves the feed now, not at garbage collection


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
    hub = FeedHub(feed, history, block_ms) if feed is not None else None
    warned = {"last_event_id": False}

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
        header = request.headers.get("last-event-id", "")
        after = parse_stream_id(header) if header.strip() else None
        if header.strip() and after is None and not warned["last_event_id"]:
            warned["last_event_id"] = True  # a client's garbage: said once, never per second
            log.warning("dashboard: a Last-Event-ID that is no stream entry id counts as absent")
        active["n"] += 1
        clients.set(active["n"])
        body = _events(hub, stats, after, stats_interval, block_ms, closing)
        return _EventStream(body, release)


async def _events(
    hub: FeedHub | None,
    stats: Callable[[], dict[str, Any]],
    after: StreamId | None,
    stats_interval: float,
    block_ms: int,
    closing: Callable[[], bool],
) -> AsyncGenerator[str, None]:
    loop = asyncio.get_running_loop()

    def stats_event() -> str:
        feed = hub.feed.stream if hub is not None else None
        return _event("stats", json.dumps({**stats(), "feed": feed}))

    yield "retry: 2000\n\n"
    yield stats_event()
    next_stats = loop.time() + stats_interval
    if hub is None:
        while not closing():
            await asyncio.sleep(max(0.0, min(block_ms / 1000, next_stats - loop.time())))
            if loop.time() >= next_stats:
                yield stats_event()
                next_stats = loop.time() + stats_interval
        return
    first, viewer = hub.join(after)
    try:
        for entry_id, data in first:
            yield _event("record", data, entry_id)
        del first
        while not closing():
            if not viewer.queue:
                viewer.wake.clear()
                wait = max(0.0, min(block_ms / 1000, next_stats - loop.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(viewer.wake.wait(), wait)
            while viewer.queue:
                entry_id, data = viewer.queue.popleft()
                yield _event("record", data, entry_id)
            if loop.time() >= next_stats:
                yield stats_event()
                next_stats = loop.time() + stats_interval
    finally:
        hub.leave(viewer)
