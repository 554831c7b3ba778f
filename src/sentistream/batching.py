"""Async dynamic batcher between concurrent callers and one classifier.

Contract (after Ray Serve's ``@serve.batch`` and TEI's queue):

- ``submit(texts, tasks)`` returns exactly one prediction per text, in order;
- requests arriving within ``max_delay_ms`` of each other are merged into one call of at most
  ``max_batch_texts`` texts; the classifier then sorts the merged texts by length into small
  padded forward passes (bounded by its batch size and token budget);
- the queue is bounded by ``max_queue_texts``: a request that does not fit is refused at once
  with :class:`~sentistream.errors.OverloadedError` (HTTP 429 / RESOURCE_EXHAUSTED);
- a request whose caller has gone (its future cancelled) is dropped before inference;
- an exception during a batch is delivered to every caller of that batch;
- inference runs in one worker thread (ONNX Runtime releases the GIL), so the event loop keeps
  accepting requests while a batch runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sentistream.errors import OverloadedError, UnavailableError
from sentistream.runtime.base import Classifier, Prediction

__all__ = ["BatchStats", "DynamicBatcher"]


@dataclass
class _Item:
    texts: list[str]
    tasks: list[str]
    future: asyncio.Future[list[Prediction]]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """What the last batch looked like (read by metrics)."""

    texts: int = 0
    tokens: int = 0
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0


class DynamicBatcher:
    def __init__(
        self,
        classifier: Classifier,
        *,
        max_batch_texts: int = 64,
        max_delay_ms: float = 0.0,
        max_queue_texts: int = 2048,
        observer: object | None = None,
    ) -> None:
        self.classifier = classifier
        self.max_batch_texts = max_batch_texts
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue_texts = max_queue_texts
        self.observer = observer  # has .observe_batch(BatchStats) when given
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._queued_texts = 0
        self._in_flight = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.last = BatchStats()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    @property
    def pending(self) -> int:
        """Texts queued or being inferred."""
        return self._queued_texts + self._in_flight

    async def close(self, drain: bool = True) -> None:
        """Stop taking requests; with ``drain`` finish everything already queued."""
        self._closing = True
        if drain:
            while self.pending:
                await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(UnavailableError("model is being unloaded"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- callers ------------------------------------------------------------------------------
    async def submit(
        self, texts: Sequence[str], tasks: Sequence[str] | None = None
    ) -> list[Prediction]:
        """Classify already-cleaned ``texts``; waits for the batch that carries them."""
        if self._closing:
            raise UnavailableError("model is shutting down")
        selected = self.classifier.select_tasks(tasks)
        if not texts:
            return []
        if self._queued_texts + len(texts) > self.max_queue_texts:
            raise OverloadedError(
                f"server is at capacity ({self._queued_texts} texts queued, limit "
                f"{self.max_queue_texts}); retry later"
            )
        future: asyncio.Future[list[Prediction]] = asyncio.get_running_loop().create_future()
        self._queued_texts += len(texts)
        self._queue.put_nowait(_Item(list(texts), selected, future))
        return await future

    # -- the loop -----------------------------------------------------------------------------
    async def _collect(self) -> list[_Item]:
        """The next batch: the first waiting request plus everything queued behind it.

        Requests that arrive while a batch runs pile up and go together into the next one, so
        batches grow with load without any added wait; ``max_delay_ms`` > 0 additionally waits
        that long for company when the batcher is idle.
        """
        first = await self._queue.get()
        await asyncio.sleep(0)  # let requests arriving in the same loop turn join
        items, count = [first], len(first.texts)
        deadline = time.perf_counter() + self.max_delay
        while count < self.max_batch_texts:
            remaining = deadline - time.perf_counter()
            try:
                if remaining <= 0:
                    nxt = self._queue.get_nowait()
                else:
                    nxt = await asyncio.wait_for(self._queue.get(), remaining)
            except (TimeoutError, asyncio.QueueEmpty):
                break
            items.append(nxt)
            count += len(nxt.texts)
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            queued = sum(len(i.texts) for i in items)
            self._queued_texts -= queued
            live = [i for i in items if not i.future.done()]  # drop callers that went away
            if not live:
                continue
            texts = [t for i in live for t in i.texts]
            self._in_flight = len(texts)
            started = time.perf_counter()
            try:
                probs, lengths = await loop.run_in_executor(
                    self._executor, self.classifier.probabilities, texts
                )
            except Exception as exc:  # delivered to every caller of this batch
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                self._in_flight = 0
                continue
            finished = time.perf_counter()
            offset = 0
            for item in live:
                rows = range(offset, offset + len(item.texts))
                offset += len(item.texts)
                if not item.future.done():
                    item.future.set_result(
                        self.classifier.build_predictions(probs, lengths, item.tasks, rows)
                    )
            self._in_flight = 0
            self.last = BatchStats(
                texts=len(texts),
                tokens=sum(lengths),
                queue_seconds=started - min(i.enqueued for i in live),
                inference_seconds=finished - started,
            )
            observe = getattr(self.observer, "observe_batch", None)
            if observe is not None:
                observe(self.classifier.name, self.last)
