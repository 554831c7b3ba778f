"""``sentistream serve``: one process (or ``workers`` processes sharing the ports) serving the
model repository over HTTP and gRPC.

Start: both listeners come up first (live, not ready), then models load and warm; readiness
turns true when every configured model serves. SIGTERM/SIGINT: readiness turns false, the
listeners stop accepting, requests in flight finish (up to ``drain_seconds``), batchers drain,
and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from sentistream import startup_gc
from sentistream.config import Settings
from sentistream.monitoring import ServerMetrics
from sentistream.server.fastapi_import import import_fastapi
from sentistream.server.limits import http_protocol
from sentistream.server.logs import configure_logging
from sentistream.server.registry import ModelRegistry

import_fastapi()  # before the REST module: FastAPI's OpenAPI models are built on first use
from sentistream.server.rest import create_app  # noqa: E402

__all__ = ["QuietServer", "serve"]

log = logging.getLogger("sentistream.server")


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: this module owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP; without it responses (head and body written separately) wait ~40 ms for the
    # client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def serve_async(settings: Settings, registry: ModelRegistry | None = None) -> int:
    """Serve until SIGTERM. ``registry``: one made (and perhaps preloading) by the caller."""
    metrics = ServerMetrics()
    registry = registry or ModelRegistry(settings)
    registry.observer = metrics
    app = create_app(registry, metrics, settings)
    grpc_server: Any = None
    grpc_port: int | None = None
    if settings.grpc_enabled:  # imported here: an HTTP-only server never loads grpc
        from sentistream.server.grpc_api import build_grpc_server

        grpc_server, grpc_port = build_grpc_server(registry, metrics, settings)
    sock = _bind(settings.host, settings.http_port, settings.workers > 1)
    http_port = sock.getsockname()[1]
    tls = settings.tls_cert_file and settings.tls_key_file
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        ws="none",  # no WebSocket routes: skips importing a WebSocket library at start
        timeout_graceful_shutdown=int(settings.drain_seconds) or None,
        ssl_certfile=str(settings.tls_cert_file) if tls else None,
        ssl_keyfile=str(settings.tls_key_file) if tls else None,
        # Slow or greedy clients: deadlines on headers (here) and body (LimitsAndMetrics), a
        # cap on open connections; uvicorn alone bounds none of them.
        http=http_protocol(settings.http_header_timeout_seconds, settings.http_max_connections),
        timeout_keep_alive=30,
    )
    http = QuietServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    preloaded: asyncio.Task[None] | None = None
    if settings.workers > 1:
        # Several processes share the ports: a worker must not take connections (the kernel
        # spreads them over every listener) before its models serve, so it loads first.
        preloaded = loop.create_task(registry.start())
        await asyncio.wait({preloaded})
        if preloaded.exception() is not None:
            exc = preloaded.exception()
            log.error("model loading failed: %s", getattr(exc, "message", exc))
            sock.close()
            return 1
    if grpc_server is not None:
        await grpc_server.start()
    http_task = loop.create_task(http.serve(sockets=[sock]))
    startup_gc.release()  # the stack is up (sentistream serve held the collector off)
    log.info(
        "listening",
        extra={
            "http_port": http_port,
            "grpc_port": grpc_port,
            "pid": os.getpid(),
            "tls": bool(tls),
        },
    )
    code = 0
    try:
        load = preloaded or loop.create_task(registry.start())
        done, _ = await asyncio.wait(
            {load, loop.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
        if load in done and load.exception() is not None:
            exc = load.exception()
            log.error("model loading failed: %s", getattr(exc, "message", exc))
            code = 1
        elif load in done:
            log.info(
                "ready", extra={"models": [f"{m.name}:{m.version}" for m in registry.models()]}
            )
            metrics.ready.set(1)
            metrics.set_models((m.name, m.version, 0) for m in registry.models())
            await stop.wait()
        else:
            load.cancel()
    finally:
        log.info("draining", extra={"in_flight": registry.in_flight})
        registry.draining = True
        registry.ready = False
        http.should_exit = True
        stopping = [http_task]
        if grpc_server is not None:
            stopping.append(grpc_server.stop(settings.drain_seconds))
        await asyncio.gather(*stopping, return_exceptions=True)
        await registry.drain(settings.drain_seconds)
        await registry.close()
        log.info("stopped")
    return code


def _worker(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    raise SystemExit(asyncio.run(serve_async(settings)))


def serve(settings: Settings, registry: ModelRegistry | None = None) -> int:
    """Run the server until SIGTERM; returns the exit code. ``registry`` (one process only):
    a registry the caller made, typically already preloading (``sentistream serve``)."""
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers == 1:
        return asyncio.run(serve_async(settings, registry))
    startup_gc.release()  # this parent only supervises; each worker is a fresh interpreter
    ctx = multiprocessing.get_context("spawn")
    # Each worker gets the settings object itself: "spawn" pickles it through a pipe, secrets
    # (auth_token, redis_url) included, so no secret is on a command line or in the
    # environment. (JSON would mask every SecretStr as "**********".)
    procs = [
        ctx.Process(target=_worker, args=(settings,), name=f"worker-{i}")
        for i in range(settings.workers)
    ]
    for p in procs:
        p.start()

    def forward(signum: int, _: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    return max((p.exitcode or 0) for p in procs)
