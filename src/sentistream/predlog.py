"""Prediction logging: a sample of predictions sent to an experiment tracker, off the hot path.

The worker calls :meth:`PredictionLogger.offer` with each batch of result records. A sample
(``sample_rate``) is turned into rows — post id, a SHA-256 of the text (the text itself only
with ``raw_text``), label, score, per-class scores, other tasks' labels, model and version,
latency — and put on a bounded queue without waiting: when the queue is full the row is dropped
and counted. A daemon thread takes rows off the queue in batches (``batch_size`` rows or every
``flush_seconds``) and hands them to a backend. A backend that fails or hangs (tracker down,
wrong URI) only costs dropped rows and an error count: the pipeline never waits for it, and
``close`` gives up after its timeout.

Backends: :class:`MlflowBackend` (``pip install 'sentistream[logging]'``: MLflow's tracking
client, any tracking URI: an MLflow server, Databricks, a local store). Another tracker is a
class with ``log(rows)`` and ``close()``.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["MlflowBackend", "PredictionBackend", "PredictionLogger", "prediction_row"]

log = logging.getLogger("sentistream.predlog")


class PredictionBackend(Protocol):
    def log(self, rows: list[dict[str, Any]]) -> None:
        """Send one batch of rows; raise on failure."""
        ...

    def close(self) -> None: ...


def prediction_row(record: dict[str, Any], *, raw_text: bool = False) -> dict[str, Any]:
    """What is logged of one result record (the text only as a hash unless ``raw_text``)."""
    text = str(record.get("text") or "")
    row = {
        "id": record.get("id"),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "text_chars": len(text),
        "label": record.get("label"),
        "score": record.get("score"),
        "scores": record.get("scores"),
        "tasks": {k: v.get("label") for k, v in (record.get("tasks") or {}).items()},
        "model": record.get("model"),
        "model_version": record.get("model_version"),
        "latency_ms": record.get("latency_ms"),
        "processed_at": record.get("processed_at"),
    }
    if raw_text:
        row["text"] = text
    return row


class PredictionLogger:
    """Sample, queue (bounded, never blocking) and ship predictions from a background thread."""

    def __init__(
        self,
        backend: Callable[[], PredictionBackend],
        *,
        sample_rate: float = 0.1,
        batch_size: int = 200,
        queue_size: int = 10_000,
        flush_seconds: float = 10.0,
        raw_text: bool = False,
        on_sent: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
        on_error: Callable[[], None] | None = None,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError("sample_rate must be between 0 and 1")
        self._make_backend = backend
        self.sample_rate = sample_rate
        self.batch_size = max(1, batch_size)
        self.flush_seconds = flush_seconds
        self.raw_text = raw_text
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max(1, queue_size))
        self._random = random.Random(seed)  # sampling, not security
        self._stop = threading.Event()
        self._on_sent = on_sent or (lambda n: None)
        self._on_dropped = on_dropped or (lambda n: None)
        self._on_error = on_error or (lambda: None)
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="prediction-logger", daemon=True)
        self._thread.start()

    # -- hot path (event loop) ----------------------------------------------------------------
    def offer(self, records: Sequence[dict[str, Any]]) -> None:
        """Sample ``records`` and enqueue them; never blocks, drops (counted) when full."""
        if self._stop.is_set():
            return
        dropped = 0
        for record in records:
            if self.sample_rate < 1.0 and self._random.random() >= self.sample_rate:
                continue
            try:
                self._queue.put_nowait(prediction_row(record, raw_text=self.raw_text))
            except queue.Full:
                dropped += 1
        if dropped:
            self._drop(dropped)

    def _drop(self, n: int) -> None:
        self.dropped += n
        self._on_dropped(n)

    # -- background thread --------------------------------------------------------------------
    def _take_batch(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.flush_seconds
        while len(rows) < self.batch_size:
            timeout = deadline - time.monotonic()
            if self._stop.is_set():
                timeout = 0.0
            try:
                rows.append(self._queue.get(timeout=max(0.0, min(timeout, 0.2))))
            except queue.Empty:
                if self._stop.is_set() or time.monotonic() >= deadline:
                    break
        return rows

    def _run(self) -> None:
        backend: PredictionBackend | None = None
        retry_at = 0.0
        while True:
            rows = self._take_batch()
            if not rows:
                if self._stop.is_set():
                    break
                continue
            if backend is None and time.monotonic() >= retry_at:
                try:
                    backend = self._make_backend()
                except Exception as exc:  # a tracker that cannot be reached must not matter
                    log.warning("prediction log backend unavailable: %s", _describe(exc))
                    self._failed()
                    retry_at = time.monotonic() + 30.0
            if backend is None:
                self._drop(len(rows))
                continue
            try:
                backend.log(rows)
            except Exception as exc:
                log.warning("prediction log batch failed: %s", _describe(exc))
                self._failed()
                self._drop(len(rows))
            else:
                self.sent += len(rows)
                self._on_sent(len(rows))
        if backend is not None:
            try:
                backend.close()
            except Exception as exc:
                log.warning("prediction log backend close failed: %s", _describe(exc))

    def _failed(self) -> None:
        self.errors += 1
        self._on_error()

    def close(self, timeout: float = 5.0) -> bool:
        """Flush what is queued and stop; False if the backend did not finish in ``timeout``
        (the daemon thread is then abandoned, never waited for)."""
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _describe(exc: BaseException) -> str:
    # Exception text of a tracker client may hold a URI with credentials: type and a short head.
    message = re.sub(r"://[^@/\s]*@", "://***@", str(exc).splitlines()[0] if str(exc) else "")
    return f"{type(exc).__name__}: {message[:200]}"


_METRIC_NAME = re.compile(r"[^A-Za-z0-9_.\-/ ]")


class MlflowBackend:
    """One MLflow run per logger; per batch: summary metrics (count, mean confidence, mean
    latency, label shares) and the rows as a JSON artifact ``predictions/batch-NNNNNN.json``."""

    def __init__(self, tracking_uri: str | None, experiment: str, run_name: str) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id if found is not None else self.client.create_experiment(experiment)
        )
        run = self.client.create_run(experiment_id, run_name=run_name)
        self.run_id: str = run.info.run_id
        self.batches = 0

    def log(self, rows: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        self.batches += 1
        now = int(time.time() * 1000)
        step = self.batches
        values: dict[str, float] = {"predictions": float(len(rows))}
        scores = [float(r["score"]) for r in rows if isinstance(r.get("score"), int | float)]
        if scores:
            values["mean_confidence"] = sum(scores) / len(scores)
        latencies = [
            float(r["latency_ms"]) for r in rows if isinstance(r.get("latency_ms"), int | float)
        ]
        if latencies:
            values["mean_latency_ms"] = sum(latencies) / len(latencies)
        for label in {str(r.get("label")) for r in rows}:
            share = sum(1 for r in rows if str(r.get("label")) == label) / len(rows)
            values[f"label_share.{_METRIC_NAME.sub('_', label)}"] = share
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()]
        )
        self.client.log_dict(
            self.run_id, {"predictions": rows}, f"predictions/batch-{self.batches:06d}.json"
        )

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
