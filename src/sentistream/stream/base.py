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
from typing import Protocol

from sentistream.schemas import Post

__all__ = ["Envelope", "Source"]


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
        """A refused record: the reason and at most 10,000 characters of its payload."""
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        return cls(
            post=None,
            raw=text[:10_000],
            error=error,
            ack_id=ack_id,
            deliveries=deliveries,
            raw_chars=len(text),
        )


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
