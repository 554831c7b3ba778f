"""What one HTTP client may take from the server: time to send its request, body size,
header size, and a share of the connections.

- :func:`http_protocol`: uvicorn's httptools protocol with a deadline on request headers (from
  connecting, or from a request's first byte on a kept-alive connection; 408 and close after
  it), a cap on their size (431) and on open connections (503 to a request beyond the cap).
  uvicorn has none of these: its keep-alive timeout only runs between requests.
- :class:`LimitsAndMetrics`: ASGI middleware for the body (413 beyond ``max_body_bytes``, 408
  when it is not all there ``http_body_timeout_seconds`` after the headers), the request id,
  the access log and the request metrics.

Every refusal is a one-line JSON error, like the API's own, and closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sentistream.config import Settings
from sentistream.monitoring import ServerMetrics

__all__ = [
    "MAX_HEADER_BYTES",
    "BodyTimeoutError",
    "LimitsAndMetrics",
    "TooLargeError",
    "http_protocol",
    "too_large",
]

log = logging.getLogger("sentistream.server")
ASGIApp = Callable[..., Awaitable[None]]
MAX_HEADER_BYTES = 64 * 1024  # request line and headers of one request
_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large"}


class TooLargeError(Exception):
    """The body is larger than ``max_body_bytes``."""


class BodyTimeoutError(Exception):
    """The body did not arrive within ``http_body_timeout_seconds``."""


def too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes"


def body_too_slow(seconds: float) -> str:
    return f"request body not received within {seconds:g} s"


def _error_body(message: str, code: str) -> bytes:
    return json.dumps({"error": message, "code": code}).encode()


def _raw_response(status: int, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 error response, for refusals made before any request exists."""
    body = _error_body(message, code)
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def http_protocol(header_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol bounded for slow or greedy clients (``http=`` of
    ``uvicorn.Config``): request headers within ``header_timeout`` seconds and
    :data:`MAX_HEADER_BYTES`, and at most ``max_connections`` connections served at once."""

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None
            self._header_bytes: int | None = None  # bytes of headers so far, None: none due
            served, refuse = self.app, _refuse_over_capacity(max_connections)
            connections = self.connections

            async def capped(scope: Any, receive: Any, send: Any) -> None:
                # Read when the headers are complete (uvicorn starts the app then); this
                # connection is one of them.
                app = refuse if len(connections) > max_connections else served
                await app(scope, receive, send)

            self.app = capped

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._header_bytes is not None:  # a request's headers are still coming
                self._header_bytes += len(data)
                if self._header_bytes > MAX_HEADER_BYTES:
                    self._refuse(431, f"request headers larger than {MAX_HEADER_BYTES} bytes")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0
            if self._header_timer is None:  # the next request on a kept-alive connection
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            self._header_bytes = None
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self._header_bytes is None:  # connected, sent nothing: close like keep-alive
                self.transport.close()
            else:
                self._refuse(408, f"request headers not received within {header_timeout:g} s")

        def _refuse(self, status: int, message: str) -> None:
            self._disarm()
            self._header_bytes = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.keep_alive = False  # a pipelined request: close after this response
                return
            self.transport.write(_raw_response(status, message, "INVALID_ARGUMENT"))
            self.transport.close()

    return BoundedHttpToolsProtocol


def _refuse_over_capacity(limit: int) -> ASGIApp:
    body = _error_body(f"server has {limit} connections open already; retry later", "UNAVAILABLE")

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse


class LimitsAndMetrics:
    """Pure ASGI middleware: body size (413) and time (408), request id, access log, request
    metrics."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: ServerMetrics) -> None:
        self.app = app
        self.limit = settings.max_body_bytes
        self.body_timeout = settings.http_body_timeout_seconds
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        status = {"code": 500}
        length = headers.get(b"content-length")

        received = 0
        # A request without a body has nothing left to receive but the disconnect.
        body_done = length in (None, b"0") and b"transfer-encoding" not in headers

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                extra = [(b"x-request-id", request_id.encode("latin-1"))]
                if not body_done:  # answered before its body was in (or never read)
                    extra.append((b"connection", b"close"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        deadline = asyncio.get_running_loop().time() + self.body_timeout

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, body_done
            if body_done:  # what is left to receive is the disconnect: no deadline
                message: dict[str, Any] = await receive()
                return message
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.0))
            except TimeoutError:
                raise BodyTimeoutError() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise TooLargeError()
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        try:
            if length is not None and (not length.isdigit() or int(length) > self.limit):
                raise TooLargeError()
            await self.app(scope, limited_receive, send_with_id)
        except TooLargeError:
            status["code"] = 413
            await _send_error(send_with_id, 413, too_large(self.limit))
        except BodyTimeoutError:
            status["code"] = 408
            await _send_error(send_with_id, 408, body_too_slow(self.body_timeout))
        except asyncio.CancelledError:
            status["code"] = 499  # client closed the request
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels("http", endpoint, str(status["code"])).inc()
            self.metrics.request_seconds.labels("http", endpoint).observe(elapsed)
            log.info(
                "%s %s %s",
                scope.get("method"),
                scope.get("path"),
                status["code"],
                extra={
                    "request_id": request_id,
                    "status": status["code"],
                    "ms": round(elapsed * 1000, 3),
                    "endpoint": endpoint,
                },
            )


async def _send_error(send: Any, status: int, message: str) -> None:
    """A JSON error that closes the connection (the rest of the body is never read)."""
    body = _error_body(message, "INVALID_ARGUMENT")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
