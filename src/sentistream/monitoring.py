"""Prometheus metrics of the model server (one registry per server object)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sentistream.batching import BatchStats

__all__ = ["PROMETHEUS_CONTENT_TYPE", "ServerMetrics"]

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sentistream_requests",
            "Requests by protocol, endpoint and status code.",
            ["protocol", "endpoint", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "sentistream_request_seconds",
            "Request latency.",
            ["protocol", "endpoint"],
            buckets=_LATENCY,
            registry=r,
        )
        self.texts = Counter("sentistream_texts", "Texts classified.", ["model"], registry=r)
        self.queue_seconds = Histogram(
            "sentistream_queue_seconds",
            "Time a request waited for its batch.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "sentistream_inference_seconds",
            "Time of one batch in the model.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_texts = Histogram(
            "sentistream_batch_texts",
            "Texts per batch.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_tokens = Histogram(
            "sentistream_batch_tokens",
            "Tokens per batch.",
            ["model"],
            buckets=(16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384),
            registry=r,
        )
        self.queue_depth = Gauge(
            "sentistream_queue_texts", "Texts waiting or in inference.", ["model"], registry=r
        )
        self.model_info = Gauge(
            "sentistream_model_loaded",
            "1 for each served model version.",
            ["model", "version"],
            registry=r,
        )
        self.ready = Gauge("sentistream_ready", "1 when the server is ready.", registry=r)
        self.dashboard_clients = Gauge(
            "sentistream_dashboard_clients", "Open dashboard event streams.", registry=r
        )

    def set_models(self, served: Iterable[tuple[str, str, int]]) -> None:
        """Make the per-model gauges say what is served now, from (name, version, texts
        waiting) per loaded version: versions unloaded since the last call disappear."""
        self.model_info.clear()
        self.queue_depth.clear()
        pending: dict[str, int] = {}
        for name, version, waiting in served:
            self.model_info.labels(name, version).set(1)
            pending[name] = pending.get(name, 0) + waiting
        for name, waiting in pending.items():
            self.queue_depth.labels(name).set(waiting)

    def observe_batch(self, model: str, stats: BatchStats) -> None:
        self.texts.labels(model).inc(stats.texts)
        self.queue_seconds.labels(model).observe(stats.queue_seconds)
        self.inference_seconds.labels(model).observe(stats.inference_seconds)
        self.batch_texts.labels(model).observe(stats.texts)
        self.batch_tokens.labels(model).observe(stats.tokens)

    def total(self, sample: str) -> float:
        """Sum of every sample named ``sample`` over all label values."""
        families = self.registry.collect()
        return sum(s.value for f in families for s in f.samples if s.name == sample)

    def render(self) -> bytes:
        return generate_latest(self.registry)
