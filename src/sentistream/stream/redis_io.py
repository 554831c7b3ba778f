"""Redis Streams in and out.

:class:`RedisStreamSource` (at-least-once): a consumer group on the input stream. On start it
first finishes this consumer's own pending entries, then reads new ones (XREADGROUP ``>``) and
periodically claims entries idle longer than ``claim_idle_ms`` from dead consumers
(XAUTOCLAIM). An entry delivered more than ``max_deliveries`` times goes to the dead-letter
stream instead of being retried forever. While it lives, the consumer keeps its own pending
entries fresh (a heartbeat: ``XCLAIM ... JUSTID`` to itself every ``claim_idle_ms / 3``, which
resets their idle time without counting a delivery), so a batch that takes longer than
``claim_idle_ms`` to classify is never claimed away from a live worker; only a dead consumer's
entries go idle.

:class:`RedisSink`: for each result, atomically (one Lua script per batch) sets a dedup key
``SET dedup:<id> NX EX ttl``; only when it was new, appends the record to the durable output
stream (XADD, trimmed with MAXLEN ~) and publishes it on the live channel; and, when the batch
came from a Redis input stream, acknowledges the input entries (XACK) in the same script. So a
crash before the script leaves the entries pending (they are redelivered), a crash after it
leaves nothing to redo, and a redelivered post never creates a second record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from sentistream.errors import InvalidInputError, UnavailableError
from sentistream.schemas import dumps_record, parse_post
from sentistream.stream.base import Envelope, raw_copy

__all__ = [
    "DEAD_LETTER_RAW_CHARS",
    "RedisSink",
    "RedisStreamSource",
    "connect",
    "dead_letter",
    "dead_letter_fields",
]

log = logging.getLogger("sentistream.stream")
#: Characters of a refused record's raw payload kept in its dead letter, cut and marked (the
#: reason and the full length are kept too): a 1 MB post costs the dead-letter stream 10 kB.
DEAD_LETTER_RAW_CHARS = 10_000
RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError)
T = TypeVar("T")

_WRITE_SCRIPT = """
local ttl = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[2])
local channel = ARGV[3]
local group = ARGV[4]
local n = tonumber(ARGV[5])
local prefix = ARGV[6]
local written = 0
for i = 0, n - 1 do
  local id = ARGV[7 + 2 * i]
  local data = ARGV[8 + 2 * i]
  if redis.call('SET', prefix .. id, '1', 'NX', 'EX', ttl) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'id', id, 'data', data)
    if channel ~= '' then redis.call('PUBLISH', channel, data) end
    written = written + 1
  end
end
local first_ack = 7 + 2 * n
if KEYS[2] ~= '' and #ARGV >= first_ack then
  redis.call('XACK', KEYS[2], group, unpack(ARGV, first_ack))
end
return written
"""


async def with_retry(
    call: Callable[[], Awaitable[T]], what: str, give_up_after: float = 300.0
) -> T:
    """Run ``call`` until it succeeds, backing off while Redis is unreachable.

    Only for idempotent operations (the result write is: dedup keys make a repeated script a
    no-op; XACK of an acked entry does nothing). Gives up with UnavailableError after
    ``give_up_after`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after
    delay = 0.1
    while True:
        try:
            return await call()
        except RETRYABLE as exc:
            if loop.time() > deadline:
                raise UnavailableError(
                    f"Redis unreachable for {give_up_after:.0f}s during {what}"
                ) from exc
            log.warning(
                "redis unavailable during %s, retrying in %.1fs: %s",
                what,
                delay,
                type(exc).__name__,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def connect(url: str) -> aioredis.Redis:
    """A client that reconnects by itself (redis-py Retry with exponential backoff)."""
    return aioredis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=5.0, base=0.05), retries=20),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=15,
        socket_keepalive=True,
        socket_connect_timeout=5,
    )


async def dead_letter(
    client: aioredis.Redis,
    stream: str,
    envelopes: Sequence[Envelope],
    source: str,
    ack: tuple[str, str] | None = None,
) -> None:
    """Append refused records with their reason; acknowledge them on the input in one go."""
    if not envelopes:
        return
    await with_retry(
        lambda: _dead_letter_once(client, stream, envelopes, source, ack), "dead-lettering"
    )


def _safe(value: str, limit: int) -> str:
    """At most ``limit`` characters, encodable as UTF-8 (a lone surrogate becomes its
    ``\\udXXX`` escape): a dead letter can always be written, whatever it holds."""
    cut = value[:limit]
    try:
        cut.encode("utf-8")
    except UnicodeEncodeError:
        cut = cut.encode("utf-8", "backslashreplace").decode("utf-8")
    return cut


def dead_letter_fields(env: Envelope, source: str) -> dict[str, str]:
    """The dead-letter entry of one refused record: the reason, a bounded copy of the raw
    payload (:data:`DEAD_LETTER_RAW_CHARS`, with its full length), the source, the deliveries
    and the post id when it parsed; every field safely encodable."""
    fields = {
        "reason": _safe(env.error or "unknown", 1000),
        "raw": _safe(raw_copy(env.raw, DEAD_LETTER_RAW_CHARS), DEAD_LETTER_RAW_CHARS + 64),
        "raw_chars": str(env.raw_chars if env.raw_chars is not None else len(env.raw)),
        "source": _safe(source, 64),
        "deliveries": str(env.deliveries),
    }
    if env.post is not None:
        fields["id"] = _safe(env.post.id, 256)
    return fields


async def _dead_letter_once(
    client: aioredis.Redis,
    stream: str,
    envelopes: Sequence[Envelope],
    source: str,
    ack: tuple[str, str] | None,
) -> None:
    async with client.pipeline(transaction=True) as pipe:
        for env in envelopes:
            fields = dead_letter_fields(env, source)
            pipe.xadd(stream, fields, maxlen=1_000_000, approximate=True)  # type: ignore[arg-type]
        ids = [e.ack_id for e in envelopes if e.ack_id]
        if ack is not None and ids:
            pipe.xack(ack[0], ack[1], *ids)
        await pipe.execute()


def _ids(ids: list[str]) -> Any:
    return list(ids)  # redis-py's stub types the id list too narrowly


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStreamSource:
    """Consumer-group reader of a Redis Stream whose entries hold a post as JSON in ``data``."""

    name = "redis"
    guarantee = "at-least-once"

    def __init__(
        self,
        client: aioredis.Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        dead_letter_stream: str,
        batch: int = 64,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
    ) -> None:
        self.client = client
        self.key = stream
        self.group = group
        self.consumer = consumer
        self.dead_letter_stream = dead_letter_stream
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self._closed = asyncio.Event()
        # Entries handed to the worker and not yet settled (written + acked, or dead-lettered):
        # only these are kept fresh by the heartbeat. Any other entry pending for this consumer
        # is an orphan (its result and XACK were lost, e.g. with Redis's last second) and is
        # read again.
        self._in_flight: set[str] = set()
        self._orphans: list[Envelope] = []
        self.reconciled = 0  # orphans read again since start (a counter for tests and logs)

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing; retried while Redis is away."""

        async def create() -> None:
            try:
                await self.client.xgroup_create(self.key, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        await with_retry(create, "creating the consumer group")

    def settle(self, envelopes: Sequence[Envelope]) -> None:
        """The worker wrote (or dead-lettered) these entries and their XACK went with it."""
        for env in envelopes:
            if env.ack_id:
                self._in_flight.discard(env.ack_id)

    def _envelope(self, entry_id: Any, fields: dict[Any, Any], deliveries: int = 1) -> Envelope:
        ack_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        raw = fields.get(b"data", fields.get("data"))
        if raw is None:
            return Envelope.bad(
                json.dumps(
                    {
                        k.decode() if isinstance(k, bytes) else k: v.decode(errors="replace")
                        if isinstance(v, bytes)
                        else v
                        for k, v in fields.items()
                    }
                ),
                "entry has no 'data' field",
                ack_id,
                deliveries,
            )
        try:
            post = parse_post(raw, default_id=ack_id, source="redis")
        except InvalidInputError as exc:
            return Envelope.bad(raw, exc.message, ack_id, deliveries)
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        return Envelope(post=post, raw=text, ack_id=ack_id, deliveries=deliveries)

    async def _deliveries(self, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        pending: Any = await self.client.xpending_range(
            self.key, self.group, min=ids[0], max=ids[-1], count=len(ids) * 2 + 10
        )
        out = {}
        for p in pending:
            mid = p["message_id"]
            out[mid.decode() if isinstance(mid, bytes) else str(mid)] = int(p["times_delivered"])
        return out

    async def _split_poison(self, envelopes: list[Envelope]) -> list[Envelope]:
        """Dead-letter entries delivered too often; return the rest."""
        counts = await self._deliveries([e.ack_id for e in envelopes if e.ack_id])
        fresh: list[Envelope] = []
        poison: list[Envelope] = []
        for env in envelopes:
            n = counts.get(env.ack_id or "", 1)
            env = replace(env, deliveries=n)
            (poison if n > self.max_deliveries else fresh).append(env)
        if poison:
            marked = [
                replace(e, error=f"delivered {e.deliveries} times without success") for e in poison
            ]
            await dead_letter(
                self.client, self.dead_letter_stream, marked, self.name, (self.key, self.group)
            )
            log.warning("dead-lettered %d entries after too many deliveries", len(poison))
        return fresh

    async def _read(self, start: str) -> tuple[list[Envelope], str | None]:
        """Entries after ``start`` (``>``: new ones; an id: this consumer's pending history
        after it); also the last id of the reply, the cursor for the next page."""
        reply: Any = await self.client.xreadgroup(
            self.group,
            self.consumer,
            {self.key: start},
            count=self.batch,
            block=None if start != ">" else self.block_ms,
        )
        envelopes = []
        last: str | None = None
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                if fields is None:  # deleted while pending
                    continue
                envelopes.append(self._envelope(entry_id, fields))
        return envelopes, last

    async def _claim(self) -> list[Envelope]:
        reply: Any = await self.client.xautoclaim(
            self.key,
            self.group,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=self.batch,
        )
        entries = reply[1] if reply else []
        envelopes = [self._envelope(i, f) for i, f in entries if f]
        return await self._split_poison(envelopes) if envelopes else []

    async def _refresh_own(self) -> int:
        """Reset the idle time of this consumer's in-flight pending entries idle for a third of
        ``claim_idle_ms`` or more (XCLAIM JUSTID: no delivery counted); returns how many. The
        other entries pending for this consumer that long are orphans: claimed again with their
        fields (a delivery counted) and queued to be read again."""
        threshold = max(1, self.claim_idle_ms // 3)
        refreshed = 0
        start = "-"
        while True:
            pending: Any = await self.client.xpending_range(
                self.key,
                self.group,
                min=start,
                max="+",
                count=1000,
                consumername=self.consumer,
                idle=threshold,
            )
            if not pending:
                return refreshed
            ids = [_text(p["message_id"]) for p in pending]
            live = [i for i in ids if i in self._in_flight]
            orphans = [i for i in ids if i not in self._in_flight]
            # min_idle_time: an entry another consumer claimed meanwhile (idle reset) is left
            # to it rather than taken back.
            if live:
                claimed: Any = await self.client.xclaim(
                    self.key, self.group, self.consumer, threshold, _ids(live), justid=True
                )
                refreshed += len(claimed or [])
            if orphans:
                await self._reclaim_orphans(orphans, threshold)
            if len(pending) < 1000:
                return refreshed
            start = "(" + ids[-1]

    async def _reclaim_orphans(self, ids: list[str], threshold: int) -> None:
        entries: Any = await self.client.xclaim(
            self.key, self.group, self.consumer, threshold, _ids(ids)
        )
        found = [self._envelope(i, f) for i, f in entries or [] if f]
        deleted = [i for i, f in entries or [] if not f]
        if deleted:  # trimmed away while pending: nothing left to process
            await self.client.xack(self.key, self.group, *deleted)
        fresh = await self._split_poison(found) if found else []
        for env in fresh:
            if env.ack_id and env.ack_id not in self._in_flight:
                self._in_flight.add(env.ack_id)
                self._orphans.append(env)
        if fresh:
            self.reconciled += len(fresh)
            log.warning(
                "read again %d entries pending for consumer %s with no result written "
                "(their result and acknowledgement were lost, e.g. by a Redis restart)",
                len(fresh),
                self.consumer,
            )

    async def _heartbeat(self) -> None:
        """Every ``claim_idle_ms / 3``: keep in-flight entries fresh and read orphans again.
        After Redis was unreachable the next round runs at once (a restarted Redis may have
        lost results whose entries are pending again)."""
        interval = self.claim_idle_ms / 3000
        soon = False
        while not self._closed.is_set():
            if not soon:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), timeout=interval)
                if self._closed.is_set():
                    return
            try:
                await self._refresh_own()
                soon = False
            except RETRYABLE as exc:
                log.warning("redis unavailable for the pending heartbeat: %s", type(exc).__name__)
                await asyncio.sleep(min(1.0, interval))
                soon = True

    async def stream(self) -> AsyncIterator[Envelope]:
        await self.ensure_group()
        heartbeat = asyncio.create_task(self._heartbeat(), name="pending-heartbeat")
        try:
            async for env in self._entries():
                yield env
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _entries(self) -> AsyncIterator[Envelope]:
        # 1. our own pending entries (a previous run of this consumer died before acking),
        # page by page: each page starts after the last id of the one before. (Reading from
        # "0" again would return the same entries while they are still being classified, and
        # count a delivery each time until they were dead-lettered.)
        cursor: str | None = "0"
        while cursor is not None and not self._closed.is_set():
            page = await with_retry(
                partial(self._own_page, cursor), "reading this consumer's pending entries"
            )
            for env in page[0]:
                yield self._hand_out(env)
            cursor = page[1]  # None once a page comes back empty
        loop = asyncio.get_running_loop()
        next_claim = loop.time()
        while not self._closed.is_set():
            try:
                while self._orphans:
                    yield self._orphans.pop(0)  # already in flight (see _reclaim_orphans)
                if loop.time() >= next_claim:
                    next_claim = loop.time() + self.claim_idle_ms / 2000
                    for env in await self._claim():
                        yield self._hand_out(env)
                new, _ = await self._read(">")
                for env in new:
                    yield self._hand_out(env)
            except RETRYABLE as exc:
                log.warning("redis unavailable, retrying: %s", type(exc).__name__)
                await asyncio.sleep(0.5)

    async def _own_page(self, cursor: str) -> tuple[list[Envelope], str | None]:
        own, last = await self._read(cursor)
        return (await self._split_poison(own) if own else []), last

    def _hand_out(self, env: Envelope) -> Envelope:
        if env.ack_id:
            self._in_flight.add(env.ack_id)
        return env

    async def ack(self, envelopes: Sequence[Envelope]) -> None:
        ids = [e.ack_id for e in envelopes if e.ack_id]
        if ids:
            await with_retry(lambda: self.client.xack(self.key, self.group, *ids), "XACK")
        self.settle(envelopes)

    async def close(self) -> None:
        self._closed.set()


class RedisSink:
    """Durable stream + live channel, deduplicated by post id, acking the input atomically."""

    def __init__(
        self,
        client: aioredis.Redis,
        stream: str,
        channel: str,
        *,
        maxlen: int = 1_000_000,
        dedup_ttl: int = 86_400,
        dedup_prefix: str = "sentistream:dedup:",
    ) -> None:
        self.client = client
        self.stream = stream
        self.channel = channel
        self.maxlen = maxlen
        self.dedup_ttl = dedup_ttl
        self.dedup_prefix = dedup_prefix
        self._script = client.register_script(_WRITE_SCRIPT)

    async def write(
        self, records: Sequence[dict[str, Any]], ack: tuple[str, str, Sequence[str]] | None = None
    ) -> int:
        """Write records (and XACK ``ack=(stream, group, ids)``) atomically; returns how many
        records were new."""
        args: list[Any] = [
            self.dedup_ttl,
            self.maxlen,
            self.channel,
            ack[1] if ack else "",
            len(records),
            self.dedup_prefix,
        ]
        for rec in records:
            args += [rec["id"], dumps_record(rec)]
        if ack:
            args += list(ack[2])
        keys = [self.stream, ack[0] if ack and ack[2] else ""]
        written: int = await with_retry(
            lambda: self._script(keys=keys, args=args), "writing results"
        )
        return written
