"""``sentistream ingest``: push a source into the input Redis Stream for the workers.

What reaches Redis, and when:

- Posts wait in a buffer that is written in one atomic step (a Lua script) when it holds
  :data:`BATCH` posts or its oldest post has waited ``ingest_flush_ms``, whichever comes first,
  so a quiet live source never holds posts back. SIGTERM/SIGINT stop the source, write the
  buffer, and ``ingest`` exits 0 with a one-line JSON summary.
- A record the source refuses (not UTF-8, not JSON, not a post, a line too long) goes to the
  dead-letter stream with the reason and a bounded, escaped copy of its bytes
  (:func:`~sentistream.stream.base.raw_copy`). It is never pushed, so it can neither be
  repaired into a post nor cut into one.
- Live sources that can resume (:class:`~sentistream.stream.base.Resumable`: Bluesky, X) have
  their checkpoint (Jetstream cursor, time of the last X post) written in the same
  step as the posts it covers; a restarted ingest, even after kill -9, resumes from it. Their
  post ids are remembered for ``ingest_dedup_seconds`` (``SET NX`` in the same step), so what a
  resumed cursor or an X backfill replays is counted as a duplicate instead of pushed again.

So from a resumable source every post reaches the input stream at least once (exactly once
within the dedup window), as far back as the source can replay (Jetstream's buffer; 5 minutes
of X backfill, with Enterprise access).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from sentistream.errors import InvalidInputError
from sentistream.schemas import dumps_record, validate_post
from sentistream.stream.base import Envelope, Resumable, Rewindable, Source
from sentistream.stream.redis_io import with_retry

__all__ = ["BATCH", "Ingest", "IngestStats", "install_signal_handlers", "payload"]

log = logging.getLogger("sentistream.stream")
BATCH = 500  # posts per write
STOP_GRACE_S = 5.0  # after SIGTERM, longest wait for the source to end before it is cancelled
DEAD_LETTER_MAXLEN = 1_000_000

_WRITE_SCRIPT = """
local maxlen = ARGV[1]
local ttl = tonumber(ARGV[2])
local prefix = ARGV[3]
local checkpoint = ARGV[4]
local n = tonumber(ARGV[5])
local m = tonumber(ARGV[6])
local source = ARGV[7]
local dead_maxlen = ARGV[8]
local expected = ARGV[9]
-- The checkpoint this ingest wrote last is gone or older: Redis lost writes (a restart from an
-- AOF missing its last second, a failover). Keep the older one and tell the caller.
local current = redis.call('GET', KEYS[3])
local rewound = ''
if expected ~= '' and current ~= expected then
  rewound = current or '-'
end
local pushed, duplicates = 0, 0
for i = 0, n - 1 do
  local id, data = ARGV[10 + 2 * i], ARGV[11 + 2 * i]
  if ttl == 0 or redis.call('SET', prefix .. id, '1', 'NX', 'EX', ttl) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'data', data)
    pushed = pushed + 1
  else
    duplicates = duplicates + 1
  end
end
local first = 10 + 2 * n
for j = 0, m - 1 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', dead_maxlen, '*',
    'reason', ARGV[first + 2 * j], 'raw', ARGV[first + 2 * j + 1],
    'source', source, 'stage', 'ingest')
end
if checkpoint ~= '' and rewound == '' then redis.call('SET', KEYS[3], checkpoint) end
return {pushed, duplicates, rewound}
"""


def payload(env: Envelope) -> str:
    """What goes into the input stream's ``data`` field: the line as read when it is a JSON
    object, else the post as JSON."""
    if env.post is None:
        raise ValueError("a refused record has no payload")
    if env.raw.lstrip().startswith("{"):
        return env.raw
    p = env.post
    fields = {"id": p.id, "text": p.text, "created_at": p.created_at, "lang": p.lang}
    return dumps_record({**fields, "source": p.source})


@dataclass
class IngestStats:
    read: int = 0
    pushed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    writes: int = 0
    rewinds: int = 0
    started: float = field(default_factory=time.perf_counter)

    def summary(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "pushed": self.pushed,
            "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "writes": self.writes,
            "rewinds": self.rewinds,
            "seconds": round(time.perf_counter() - self.started, 3),
        }


def _checked(env: Envelope) -> Envelope:
    """A post no sink could write faithfully (a lone surrogate, an oversized field) becomes a
    refused record here, before it can poison a whole write."""
    if env.post is None:
        return env
    try:
        validate_post(env.post)
    except InvalidInputError as exc:
        post = env.post
        raw = env.raw or dumps_record(
            {"id": post.id, "text": post.text, "lang": post.lang, "source": post.source}
        )
        return Envelope.bad(raw, exc.message)
    return env


class Ingest:
    """Reads ``source`` into a buffer; a flusher task writes it (see the module docstring)."""

    def __init__(
        self,
        client: aioredis.Redis,
        source: Source,
        *,
        stream: str,
        dead_letter_stream: str,
        maxlen: int,
        flush_seconds: float,
        checkpoint_key: str,
        dedup_seconds: int = 0,
        dedup_prefix: str = "",
        batch: int = BATCH,
    ) -> None:
        self.client = client
        self.source = source
        self.stream = stream
        self.dead_letter_stream = dead_letter_stream
        self.maxlen = maxlen
        self.flush_seconds = flush_seconds
        self.checkpoint_key = checkpoint_key
        self.dedup_seconds = dedup_seconds
        self.dedup_prefix = dedup_prefix
        self.batch = batch
        self.stats = IngestStats()
        self.resumed_from: str | None = None
        self.stopped_by: str | None = None
        self._stored: str | None = None  # the checkpoint last written
        self._buffer: list[Envelope] = []
        self._oldest = 0.0  # loop time the oldest buffered envelope arrived
        self._wake = asyncio.Event()  # flush now: the buffer is full, or the reader is done
        self._room = asyncio.Event()  # the reader may go on filling the buffer
        self._room.set()
        self._stop = asyncio.Event()
        self._closing: asyncio.Future[None] | None = None
        self._reader_done = False
        self._script = client.register_script(_WRITE_SCRIPT)

    async def resume(self) -> None:
        """Hand a resumable source the checkpoint an earlier run stored, if there is one."""
        if not isinstance(self.source, Resumable):
            return
        stored: Any = await self.client.get(self.checkpoint_key)
        if stored is None:
            return
        text = stored.decode() if isinstance(stored, bytes) else str(stored)
        try:
            self.source.resume(text)
        except InvalidInputError as exc:
            raise InvalidInputError(
                f"{exc.message} in Redis key {self.checkpoint_key} (delete it to start live)"
            ) from None
        self.resumed_from = self._stored = text
        log.info("ingest: %s resumes from checkpoint %s", self.source.name, text)

    def stop(self, why: str = "stop") -> None:
        """Stop reading (SIGTERM, SIGINT); what was read is written, then :meth:`run` returns."""
        if not self._stop.is_set():
            self.stopped_by = why
            self._stop.set()
            self._closing = asyncio.ensure_future(self.source.close())

    async def run(self) -> dict[str, Any]:
        reader = asyncio.create_task(self._read(), name="ingest-reader")
        flusher = asyncio.create_task(self._flusher(), name="ingest-flusher")
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({reader, flusher, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if flusher.done():  # a write failed for good: nothing more can be stored
                await self._cancel(reader)
                flusher.result()
            if not reader.done():  # stopping: the source ends soon after close()
                await asyncio.wait({reader}, timeout=STOP_GRACE_S)
                await self._cancel(reader)
        finally:
            stopping.cancel()
            self._reader_done = True
            self._wake.set()
        await flusher  # the last write
        if self._closing is not None:
            await self._closing
        error = None if reader.cancelled() else reader.exception()
        if error is not None:
            raise error
        summary = self.stats.summary()
        summary.update(
            source=self.source.name,
            checkpoint=self._stored,
            resumed_from=self.resumed_from,
            stopped_by=self.stopped_by,
        )
        return summary

    @staticmethod
    async def _cancel(task: asyncio.Task[None]) -> None:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        async for env in self.source.stream():
            self.stats.read += 1
            env = _checked(env)
            if not self._buffer:
                self._oldest = loop.time()
            self._buffer.append(env)
            if len(self._buffer) >= self.batch:
                self._room.clear()
                self._wake.set()
                await self._room.wait()
            if self._stop.is_set():
                return

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = self.flush_seconds
            if self._buffer:
                wait = self._oldest + self.flush_seconds - loop.time()
            if wait > 0 and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
            done = self._reader_done
            await self._flush()
            self._room.set()
            if done:
                return

    async def _flush(self) -> None:
        """Write what is buffered, and the checkpoint that covers it, in one script call."""
        checkpoint = self.source.checkpoint() if isinstance(self.source, Resumable) else None
        batch = list(self._buffer)  # taken with the checkpoint: no await in between
        if not batch and checkpoint == self._stored:
            return
        posts = [e for e in batch if e.post is not None]
        refused = [e for e in batch if e.post is None]
        args: list[Any] = [
            self.maxlen,
            self.dedup_seconds,
            self.dedup_prefix,
            checkpoint if checkpoint is not None and checkpoint != self._stored else "",
            len(posts),
            len(refused),
            self.source.name,
            DEAD_LETTER_MAXLEN,
            self._stored or "",
        ]
        for env in posts:
            assert env.post is not None
            args += [env.post.id, payload(env)]
        for env in refused:
            args += [env.error or "refused", env.raw]
        keys = [self.stream, self.dead_letter_stream, self.checkpoint_key]
        result: Any = await with_retry(
            lambda: self._script(keys=keys, args=args), "writing to the input stream"
        )
        del self._buffer[: len(batch)]
        self.stats.pushed += int(result[0])
        self.stats.duplicates += int(result[1])
        self.stats.dead_lettered += len(refused)
        self.stats.writes += 1
        rewound = result[2].decode() if isinstance(result[2], bytes) else str(result[2] or "")
        if rewound:
            self._rewind(rewound)
        elif checkpoint is not None:
            self._stored = checkpoint
        for env in refused:
            log.warning("dead letter: %s", env.error)

    def _rewind(self, stored: str) -> None:
        """Redis lost the checkpoints after ``stored`` (and the posts they covered): read the
        source again from there; what Redis kept is skipped as duplicates."""
        self.stats.rewinds += 1
        if stored == "-":
            log.warning(
                "ingest: Redis lost this source's checkpoint (key %s): posts stored since the "
                "first one may be lost; going on from here",
                self.checkpoint_key,
            )
            self._stored = None
            return
        log.warning(
            "ingest: Redis lost the writes after checkpoint %s (a restart from an AOF missing "
            "its last second, or a failover): reading %s again from there",
            stored,
            self.source.name,
        )
        self._stored = stored
        if isinstance(self.source, Rewindable):
            self.source.rewind(stored)


def install_signal_handlers(ingest: Ingest) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ingest.stop, sig.name)
