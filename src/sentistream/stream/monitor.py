"""Prometheus metrics and Kubernetes health endpoints of a stream worker.

``/metrics``: posts consumed, classified, written (new records), dead-lettered, batch sizes,
per-stage latency (clean, inference, write) and, for a Redis source, the consumer group's lag.
``/healthz``: the process is alive. ``/readyz``: the model is loaded and the worker is running
(false while draining). Served on ``--http-port`` (the dashboard will live on the same port).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sentistream.stream.worker import StreamWorker

__all__ = ["WorkerMetrics", "worker_app"]

log = logging.getLogger("sentistream.stream")

_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.consumed = Counter(
            "sentistream_worker_consumed", "Records read from the source.", registry=r
        )
        self.processed = Counter("sentistream_worker_processed", "Posts classified.", registry=r)
        self.written = Counter(
            "sentistream_worker_written", "New result records written.", registry=r
        )
        self.dead_lettered = Counter(
            "sentistream_worker_dead_lettered",
            "Records sent to the dead-letter stream.",
            registry=r,
        )
        self.batch_size = Histogram(
            "sentistream_worker_batch_size",
            "Posts per micro-batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.stage_seconds = Histogram(
            "sentistream_worker_stage_seconds",
            "Latency per pipeline stage and batch.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "sentistream_worker_consumer_lag",
            "Entries of the input stream not yet delivered to the group.",
            registry=r,
        )
        self.ready = Gauge("sentistream_worker_ready", "1 when the worker is running.", registry=r)

    def observe_batch(
        self,
        *,
        size: int,
        processed: int,
        written: int,
        dead: int,
        clean_s: float,
        infer_s: float,
        write_s: float,
    ) -> None:
        self.batch_size.observe(size)
        self.processed.inc(processed)
        self.written.inc(written)
        self.dead_lettered.inc(dead)
        self.stage_seconds.labels("clean").observe(clean_s)
        self.stage_seconds.labels("inference").observe(infer_s)
        self.stage_seconds.labels("write").observe(write_s)


def worker_app(worker: StreamWorker, metrics: WorkerMetrics) -> FastAPI:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    from sentistream.stream.redis_io import RedisStreamSource

    app = FastAPI(title="sentistream worker", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"live": True}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ok = worker.running and not worker.stopping
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.ready.set(1 if worker.running and not worker.stopping else 0)
        source = worker.source
        if isinstance(source, RedisStreamSource):
            try:
                groups: Any = await source.client.xinfo_groups(source.key)
                for g in groups:
                    name = g.get("name", b"")
                    name = name.decode() if isinstance(name, bytes) else name
                    if name == source.group and g.get("lag") is not None:
                        metrics.lag.set(float(g["lag"]))
            except Exception as exc:  # metrics must answer even while Redis is away
                log.debug("lag not available: %s", type(exc).__name__)
        return Response(generate_latest(metrics.registry), media_type=PROMETHEUS_CONTENT_TYPE)

    return app
