"""The stream worker: source -> clean -> micro-batch -> classify -> sinks.

- Reading and inference overlap: a reader task fills a bounded queue (backpressure: a full
  queue stops the reader instead of growing memory) while the batch loop classifies.
- Micro-batches close at ``batch_size`` posts or ``batch_delay_ms`` after their first post.
- The model runs in a worker thread so the event loop keeps reading.
- Bad records (unparseable, missing or non-string text, oversized, empty after cleaning) go to
  the dead-letter stream with the reason (or are counted and logged without Redis); they never
  stop the worker.
- From a Redis input stream, results are written and the input entries acknowledged in one
  atomic step (see ``redis_io``): at-least-once in, one record per post id out.
- ``stop()`` (SIGTERM) drains: the source stops, queued posts are classified, written and
  acknowledged, then ``run`` returns.
- Optional observers of each batch: a :class:`~sentistream.drift.DriftMonitor` (label mix,
  length, unknown-token rate and confidence against the model's reference profile) and a
  :class:`~sentistream.predlog.PredictionLogger` (sampled, queued, sent by its own thread);
  neither can stop or slow the pipeline beyond a bounded, non-blocking hand-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sentistream.drift import DriftMonitor, text_features
from sentistream.errors import InvalidInputError
from sentistream.predlog import PredictionLogger
from sentistream.runtime.base import Classifier, Prediction
from sentistream.schemas import result_record, validate_post
from sentistream.stream.base import Envelope, Source
from sentistream.stream.monitor import WorkerMetrics
from sentistream.stream.redis_io import RedisSink, RedisStreamSource, dead_letter
from sentistream.stream.sinks import JsonlSink

__all__ = ["StreamWorker", "WorkerStats"]

log = logging.getLogger("sentistream.stream")
_END = object()


@dataclass
class WorkerStats:
    consumed: int = 0
    processed: int = 0
    written: int = 0
    dead_lettered: int = 0
    batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def summary(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        return {
            "consumed": self.consumed,
            "processed": self.processed,
            "written": self.written,
            "dead_lettered": self.dead_lettered,
            "batches": self.batches,
            "seconds": round(seconds, 3),
            "posts_per_second": round(self.processed / seconds, 1) if seconds else None,
        }


class StreamWorker:
    def __init__(
        self,
        source: Source,
        classifier: Classifier,
        *,
        redis_sink: RedisSink | None = None,
        sinks: Sequence[JsonlSink] = (),
        dead_letter_stream: str | None = None,
        batch_size: int = 64,
        batch_delay_ms: float = 20.0,
        queue_size: int | None = None,
        metrics: WorkerMetrics | None = None,
        drift: DriftMonitor | None = None,
        prediction_logger: PredictionLogger | None = None,
        tasks: Sequence[str] | None = None,
    ) -> None:
        self.source = source
        self.classifier = classifier
        # Validated now: an unknown task fails the start, not the first batch. The primary
        # task is always kept: a result record's label/score/scores are the primary task's.
        wanted = [
            classifier.primary_task,
            *(t for t in tasks or () if t != classifier.primary_task),
        ]
        self.tasks = classifier.select_tasks(wanted) if tasks else None
        self.redis_sink = redis_sink
        self.sinks = list(sinks)
        self.dead_letter_stream = dead_letter_stream
        self.batch_size = batch_size
        self.batch_delay = batch_delay_ms / 1000
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_size or 4 * batch_size)
        self.stats = WorkerStats()
        self._stopping = False
        self.running = False
        self.metrics = metrics
        self.drift = drift
        self.prediction_logger = prediction_logger
        self._text_features = text_features(classifier) if drift is not None else None
        self._reader_error: Exception | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def stop(self) -> None:
        """Stop reading; what is already read is finished and acknowledged."""
        self._stopping = True
        await self.source.close()

    async def _read(self) -> None:
        try:
            async for envelope in self.source.stream():
                self.stats.consumed += 1
                if self.metrics is not None:
                    self.metrics.consumed.inc()
                await self.queue.put(envelope)
                if self._stopping:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a source that gave up (bad credentials...): finish, then raise
            self._reader_error = exc
        await self.queue.put(_END)

    async def _next_batch(self) -> tuple[list[Envelope], bool]:
        first = await self.queue.get()
        if first is _END:
            return [], True
        batch = [first]
        deadline = asyncio.get_running_loop().time() + self.batch_delay
        while len(batch) < self.batch_size:
            timeout = deadline - asyncio.get_running_loop().time()
            try:
                item = (
                    self.queue.get_nowait()
                    if timeout <= 0
                    else await asyncio.wait_for(self.queue.get(), timeout)
                )
            except (TimeoutError, asyncio.QueueEmpty):
                break
            if item is _END:
                return batch, True
            batch.append(item)
        return batch, False

    async def run(self) -> dict[str, Any]:
        reader = asyncio.create_task(self._read(), name="reader")
        self.running = True
        try:
            done = False
            while not done:
                batch, done = await self._next_batch()
                if batch:
                    await self.process(batch)
            await reader
            if self._reader_error is not None:
                raise self._reader_error
        finally:
            self.running = False
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        return self.stats.summary()

    async def process(self, batch: list[Envelope]) -> None:
        t0 = time.perf_counter()
        good: list[tuple[Envelope, str]] = []
        bad: list[Envelope] = []
        for env in batch:
            if env.post is None:
                bad.append(env)
                continue
            try:
                validate_post(env.post)  # whatever built it: no sink may choke on a field
                good.append((env, self.classifier.prepare(env.post.text)))
            except InvalidInputError as exc:
                bad.append(replace(env, error=exc.message))
        t1 = time.perf_counter()
        cleaned = [c for _, c in good]
        preds, unk_rates, t2 = (
            await asyncio.to_thread(self._infer, cleaned) if good else ([], None, t1)
        )
        records = []
        for (env, _), pred in zip(good, preds, strict=True):
            assert env.post is not None
            records.append(
                result_record(
                    env.post,
                    pred,
                    model=self.classifier.name,
                    model_version=self.classifier.version,
                    latency_ms=(t2 - t0) * 1000,
                )
            )
        if self.drift is not None and preds:
            self.drift.observe(
                [p.label for p in preds],
                [len(c) for c in cleaned],
                [p.score for p in preds],
                unk_rates,
            )
        if self.prediction_logger is not None:
            self.prediction_logger.offer(records)
        await self._dead_letter(bad)
        written_before = self.stats.written
        await self._write(records, [env for env, _ in good])
        t3 = time.perf_counter()
        self.stats.processed += len(records)
        self.stats.batches += 1
        if self.metrics is not None:
            self.metrics.observe_batch(
                size=len(batch),
                processed=len(records),
                written=self.stats.written - written_before,
                dead=len(bad),
                clean_s=t1 - t0,
                infer_s=t2 - t1,
                write_s=t3 - t2,
            )

    def _infer(self, cleaned: list[str]) -> tuple[list[Prediction], list[float] | None, float]:
        """Classify (in a worker thread); the unknown-token rates for drift are measured after
        the model's clock stops."""
        classify_encoded = getattr(self.classifier, "classify_encoded", None)
        if self._text_features is None or classify_encoded is None:
            return self.classifier.classify_clean(cleaned, self.tasks), None, time.perf_counter()
        ids = self.classifier.encode(cleaned)  # once: for the model and for drift
        preds = classify_encoded(ids, self.tasks)
        done = time.perf_counter()
        return preds, self._text_features.unk_rates(ids), done

    async def _dead_letter(self, bad: list[Envelope]) -> None:
        if not bad:
            return
        self.stats.dead_lettered += len(bad)
        if self.redis_sink is not None and self.dead_letter_stream:
            ack = (
                (self.source.key, self.source.group)
                if isinstance(self.source, RedisStreamSource)
                else None
            )
            await dead_letter(
                self.redis_sink.client, self.dead_letter_stream, bad, self.source.name, ack
            )
            if isinstance(self.source, RedisStreamSource):
                self.source.settle(bad)
        else:
            for env in bad:
                log.warning("dead letter: %s", env.error, extra={"raw": env.raw[:200]})
            await self.source.ack(bad)

    async def _write(self, records: list[dict[str, Any]], envelopes: list[Envelope]) -> None:
        # File/stdout sinks first: if one fails (disk full...), the exception stops the worker
        # before anything is acknowledged, so a durable input keeps the entries pending.
        for sink in self.sinks:
            written = await sink.write(records)
            if self.redis_sink is None:
                self.stats.written += written
        if self.redis_sink is not None:
            ack = None
            if isinstance(self.source, RedisStreamSource):
                ack = (
                    self.source.key,
                    self.source.group,
                    [e.ack_id for e in envelopes if e.ack_id],
                )
            self.stats.written += await self.redis_sink.write(records, ack)
            if isinstance(self.source, RedisStreamSource):
                self.source.settle(envelopes)
        if self.redis_sink is None or not isinstance(self.source, RedisStreamSource):
            await self.source.ack(envelopes)
