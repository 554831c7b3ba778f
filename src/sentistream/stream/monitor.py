"""Prometheus metrics and Kubernetes health endpoints of a stream worker.

``/metrics``: posts consumed, classified, written (new records), dead-lettered, batch sizes,
per-stage latency (clean, inference, write) and, for a Redis source, the consumer group's lag.
``/healthz``: the process is alive. ``/readyz``: the model is loaded and the worker is running
(false while draining). ``/dashboard``: the live page (see :mod:`sentistream.dashboard`), fed
from the output stream. Drift gauges (PSI per feature, the flag) and prediction-log counters are
exported when those are on. Served on ``--http-port``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sentistream.config import Settings
    from sentistream.dashboard import RedisFeed
    from sentistream.stream.worker import StreamWorker

__all__ = ["WorkerMetrics", "oldest_pending_seconds", "worker_app"]

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
        self.pending = Gauge(
            "sentistream_worker_pending",
            "Entries delivered to the consumer group and not yet acknowledged.",
            registry=r,
        )
        self.oldest_pending = Gauge(
            "sentistream_worker_oldest_pending_seconds",
            "Age (since it entered the input stream) of the oldest entry pending in the "
            "consumer group; 0 when none is. Lag does not show an entry stuck pending.",
            registry=r,
        )
        self.reconciled = Gauge(
            "sentistream_worker_reconciled",
            "Entries this worker read again because they were pending for it with no result "
            "written (lost with Redis's last writes), since it started.",
            registry=r,
        )
        self.ready = Gauge("sentistream_worker_ready", "1 when the worker is running.", registry=r)
        self.drift_psi = Gauge(
            "sentistream_worker_drift_psi",
            "Population stability index of a feature over the drift window vs the reference "
            "profile.",
            ["feature"],
            registry=r,
        )
        self.drift_detected = Gauge(
            "sentistream_worker_drift_detected",
            "1 when a feature's PSI is above the threshold (with enough posts in the window).",
            registry=r,
        )
        self.drift_samples = Gauge(
            "sentistream_worker_drift_window_posts", "Posts in the drift window.", registry=r
        )
        self.dashboard_clients = Gauge(
            "sentistream_worker_dashboard_clients", "Open dashboard event streams.", registry=r
        )
        self.prediction_log_sent = Counter(
            "sentistream_worker_prediction_log_sent", "Predictions logged.", registry=r
        )
        self.prediction_log_dropped = Counter(
            "sentistream_worker_prediction_log_dropped",
            "Sampled predictions dropped (queue full or backend failing).",
            registry=r,
        )
        self.prediction_log_errors = Counter(
            "sentistream_worker_prediction_log_errors", "Failed prediction-log calls.", registry=r
        )

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


def oldest_pending_seconds(entry_id: Any, now: float | None = None) -> float:
    """Seconds since the entry ``<ms>-<seq>`` entered its stream (0 for none)."""
    if not entry_id:
        return 0.0
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    millis = int(text.split("-", 1)[0])
    return max(0.0, (now if now is not None else time.time()) - millis / 1000)


def worker_app(
    worker: StreamWorker,
    metrics: WorkerMetrics,
    settings: Settings | None = None,
    feed: RedisFeed | None = None,
) -> FastAPI:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    from sentistream.stream.redis_io import RedisStreamSource

    app = FastAPI(title="sentistream worker", docs_url=None, redoc_url=None)
    started = time.time()

    def update_drift() -> dict[str, Any] | None:
        if worker.drift is None:
            return None
        snap = worker.drift.snapshot()
        for feature, value in snap["psi"].items():
            metrics.drift_psi.labels(feature).set(value)
        metrics.drift_detected.set(1 if snap["drifted"] else 0)
        metrics.drift_samples.set(snap["samples"])
        return snap

    def stats() -> dict[str, Any]:
        s = worker.stats
        reg = metrics.registry
        batches = reg.get_sample_value("sentistream_worker_batch_size_count") or 0.0
        stage_total = sum(
            reg.get_sample_value("sentistream_worker_stage_seconds_sum", {"stage": st}) or 0.0
            for st in ("clean", "inference", "write")
        )
        return {
            "role": "worker",
            "model": {"name": worker.classifier.name, "version": worker.classifier.version},
            "primary_task": worker.classifier.primary_task,
            "running": worker.running and not worker.stopping,
            "uptime_s": round(time.time() - started, 1),
            "consumed": s.consumed,
            "processed": s.processed,
            "written": s.written,
            "dead_lettered": s.dead_lettered,
            "batches": s.batches,
            "latency_ms": round(stage_total / batches * 1000, 3) if batches else None,
            "drift": update_drift(),
        }

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
        update_drift()
        source = worker.source
        if isinstance(source, RedisStreamSource):
            try:
                groups: Any = await source.client.xinfo_groups(source.key)
                for g in groups:
                    name = g.get("name", b"")
                    name = name.decode() if isinstance(name, bytes) else name
                    if name == source.group and g.get("lag") is not None:
                        metrics.lag.set(float(g["lag"]))
                summary: Any = await source.client.xpending(source.key, source.group)
                metrics.pending.set(float(summary.get("pending") or 0))
                metrics.oldest_pending.set(oldest_pending_seconds(summary.get("min")))
            except Exception as exc:  # metrics must answer even while Redis is away
                log.debug("lag not available: %s", type(exc).__name__)
            metrics.reconciled.set(source.reconciled)
        return Response(generate_latest(metrics.registry), media_type=PROMETHEUS_CONTENT_TYPE)

    if settings is None or settings.dashboard:
        from sentistream.dashboard import mount_dashboard

        mount_dashboard(
            app,
            stats=stats,
            feed=feed,
            clients=metrics.dashboard_clients,
            max_clients=settings.dashboard_max_clients if settings else 16,
            history=settings.dashboard_history if settings else 200,
            closing=lambda: worker.stopping,
        )
    return app
