"""What every source hands the worker, and the interface sources implement.

A source yields :class:`Envelope` objects one at a time (the worker micro-batches them). An
envelope carries either a parsed :class:`~sentistream.schemas.Post` or, for a record that could
not be parsed, the reason, so the worker can dead-letter it instead of crashing. Durable sources
(Redis Streams) set ``ack_id`` and acknowledge only after the results are written
(at-least-once); live sources (X, Bluesky, files) have nothing to acknowledge.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sentistream.schemas import Post

__all__ = ["RAW_COPY_CHARS", "Envelope", "Resumable", "Rewindable", "Source", "raw_copy"]

RAW_COPY_CHARS = 10_000


@dataclass(frozen=True)
class Envelope:
    """One input record: a post, or the raw payload and why it was refused."""

    post: Post | None
    raw: str = ""
    error: str | None = None
    ack_id: str | None = None
    deliveries: int = 1
    raw_chars: int | None = None  # the payload's full length when ``raw`` is a cut copy

    @classmethod
    def bad(
        cls, raw: str | bytes, error: str, ack_id: str | None = None, deliveries: int = 1
    ) -> Envelope:
        """A refused record; ``raw`` is kept as :func:`raw_copy` makes it, with its full length
        in ``raw_chars``."""
        text = raw.decode("utf-8", errors="backslashreplace") if isinstance(raw, bytes) else raw
        # a lone surrogate (from a JSON escape) becomes its escape: the copy is always writable
        text = text.encode("utf-8", errors="backslashreplace").decode("utf-8")
        return cls(
            post=None,
            raw=raw_copy(text),
            error=error,
            ack_id=ack_id,
            deliveries=deliveries,
            raw_chars=len(text),
        )


def raw_copy(raw: str | bytes, limit: int = RAW_COPY_CHARS) -> str:
    """A copy of a refused payload that is safe to store and show: bytes that are not UTF-8
    become ``\\xNN`` escapes (never U+FFFD, which would make the copy look valid), and a payload
    longer than ``limit`` characters is cut and marked, so the copy never parses as JSON (a cut
    line could otherwise turn into a valid post)."""
    text = raw.decode("utf-8", errors="backslashreplace") if isinstance(raw, bytes) else raw
    if len(text) <= limit:
        return text
    return f"{text[:limit]} ...[cut: {len(text) - limit} more characters]"


class Source(Protocol):
    """A stream of envelopes with a stated delivery guarantee."""

    name: str
    guarantee: str  # "at-least-once" (durable, acknowledged) or "at-most-once" (live)

    def stream(self) -> AsyncIterator[Envelope]:
        """Envelopes until the source ends (files) or :meth:`close` is called (live sources)."""
        ...

    async def ack(self, envelopes: Sequence[Envelope]) -> None:
        """Acknowledge processed envelopes (no-op for sources without acknowledgement)."""
        ...

    async def close(self) -> None:
        """Stop: ``stream`` ends soon after."""
        ...


@runtime_checkable
class Resumable(Protocol):
    """A live source that can go on where an earlier run stopped (``ingest`` stores the
    checkpoint in Redis in the same transaction as the posts it covers)."""

    def checkpoint(self) -> str | None:
        """Where the source stands: every record up to here has been yielded (None: nothing
        yet). Read it between two records."""
        ...

    def resume(self, checkpoint: str) -> None:
        """Start from a checkpoint of an earlier run; call before :meth:`Source.stream`."""
        ...


@runtime_checkable
class Rewindable(Resumable, Protocol):
    """A resumable source that can also go back while it streams (Jetstream: reconnect with an
    older cursor), for when Redis lost the posts stored after a checkpoint."""

    def rewind(self, checkpoint: str) -> None:
        """Read again from ``checkpoint`` (an earlier :meth:`checkpoint`) on the next
        connection; records already in flight are still yielded."""
        ...
