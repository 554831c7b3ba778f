"""Bluesky posts from a Jetstream WebSocket (JSON firehose of the AT Protocol network).

:class:`JetstreamSource` subscribes to ``wantedCollections`` (posts by default) and yields one
:class:`~sentistream.stream.base.Envelope` per newly created post; identity/account events and
update/delete commits are skipped, a malformed event becomes a bad envelope (dead-lettered by the
worker). It reconnects by itself with exponential backoff and resumes from the ``time_us``
cursor of the last event it saw, less ``rewind_us``.

Cursor semantics (Jetstream README): ``cursor`` is a unix-microseconds timestamp, the
``time_us`` of an event; the server replays every event with ``time_us >= cursor`` (inclusive)
from its buffer, then goes on live; no cursor, or one in the future, means live tail from now.
Delivery across a reconnect is at-least-once, and the README recommends rewinding the cursor
a few seconds for gapless playback: the replayed events come again and are deduplicated by post
id downstream. :meth:`checkpoint`/:meth:`resume` let ``ingest`` keep the cursor in Redis across
restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidURI, WebSocketException
from websockets.uri import parse_uri

from sentistream.errors import InvalidInputError, UnavailableError
from sentistream.schemas import Post
from sentistream.stream.base import Envelope

__all__ = ["DEFAULT_URL", "JetstreamSource"]

log = logging.getLogger("sentistream.stream")
DEFAULT_URL = "wss://jetstream2.us-east.bsky.network/subscribe"
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
RETRYABLE = (OSError, TimeoutError, WebSocketException)


class JetstreamSource:
    """Live Bluesky posts from Jetstream (``guarantee = "at-most-once"``).

    Nothing is acknowledged: posts created while the pipeline is down for longer than the
    server's replay buffer are lost. After a reconnect the source resumes from the last
    ``time_us`` cursor, so posts emitted during a short disconnect are replayed from the server's
    buffer; the event at the cursor itself (and anything the server replays) may then be
    delivered twice; downstream dedup by id handles it.

    ``languages`` keeps a post only when one of its ``langs`` is in the set (exact tag or its
    primary subtag, case-insensitive: ``{"en"}`` keeps ``en-US``); posts without ``langs`` are
    kept only when ``languages`` is None. ``max_reconnects`` bounds the total number of
    reconnects (None: forever); once spent, the stream ends, or raises
    :class:`~sentistream.errors.UnavailableError` when the last attempt could not connect.
    ``rewind_us`` is taken off the cursor each time one is sent (0: resume exactly at it).
    """

    name = "bluesky"
    guarantee = "at-most-once"

    def __init__(
        self,
        url: str = DEFAULT_URL,
        wanted_collections: tuple[str, ...] = ("app.bsky.feed.post",),
        languages: set[str] | None = None,
        cursor: int | None = None,
        max_reconnects: int | None = None,
        backoff_scale: float = 1.0,
        max_message_bytes: int = 1_000_000,
        open_timeout: float = 10.0,
        rewind_us: int = 0,
    ) -> None:
        try:
            parse_uri(url)
        except InvalidURI as exc:
            raise InvalidInputError(f"not a WebSocket URL: {url!r}") from exc
        self.url = url
        self.wanted_collections = wanted_collections
        self.languages = None if languages is None else {lang.lower() for lang in languages}
        self.cursor = cursor
        self.max_reconnects = max_reconnects
        self.backoff_scale = backoff_scale
        self.max_message_bytes = max_message_bytes
        self.open_timeout = open_timeout
        self.rewind_us = max(0, rewind_us)
        self.connections = 0
        self._closed = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._closer: asyncio.Task[None] | None = None
        self._rewinding = False

    def subscribe_url(self) -> str:
        """The URL with ``wantedCollections`` and, once known, the resume ``cursor`` (the last
        ``time_us`` seen, less ``rewind_us``)."""
        params = [("wantedCollections", c) for c in self.wanted_collections]
        if self.cursor is not None:
            params.append(("cursor", str(max(0, self.cursor - self.rewind_us))))
        return f"{self.url}{'&' if '?' in self.url else '?'}{urlencode(params)}"

    def checkpoint(self) -> str | None:
        """The ``time_us`` of the last event read (every event up to it has been yielded or
        skipped), as text; None before the first event."""
        return None if self.cursor is None else str(self.cursor)

    def resume(self, checkpoint: str) -> None:
        """Continue after an earlier run's :meth:`checkpoint` (less ``rewind_us``)."""
        try:
            cursor = int(checkpoint)
        except ValueError:
            raise InvalidInputError(f"not a Jetstream cursor: {checkpoint[:40]!r}") from None
        if cursor < 0:
            raise InvalidInputError(f"not a Jetstream cursor: {cursor}")
        self.cursor = cursor

    def rewind(self, checkpoint: str) -> None:
        """Go back to ``checkpoint`` while streaming (Redis lost the posts stored after it):
        the open connection is dropped and the next one asks for the cursor again; events
        still in flight on the old one no longer move the cursor."""
        self.resume(checkpoint)
        self._rewinding = True
        if self._ws is not None:
            self._ws.transport.abort()

    async def stream(self) -> AsyncIterator[Envelope]:
        reconnects = failures = 0
        while not self._closed.is_set():
            delivered = connected = False
            error: BaseException | None = None
            try:
                ws = await self._open()
                if ws is None:
                    break
                self._rewinding = False  # this connection was asked for the cursor
                connected, self._ws = True, ws
                self.connections += 1
                try:
                    if self._closed.is_set():  # close() ran while the handshake finished
                        break
                    async for message in ws:
                        delivered = True
                        envelope = self._parse(message)
                        if envelope is not None:
                            yield envelope
                        if self._closed.is_set():
                            break
                finally:
                    self._ws = None
                    await self._shutdown(ws)
            except RETRYABLE as exc:
                error = exc
                log.warning("jetstream connection to %s failed: %r", self.url, exc)
            if self._closed.is_set():
                break
            if delivered:
                failures = 0
            if self.max_reconnects is not None and reconnects >= self.max_reconnects:
                if not connected:
                    raise UnavailableError(f"cannot connect to Jetstream at {self.url}: {error}")
                break
            reconnects += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2**failures) * self.backoff_scale
            failures = min(failures + 1, 16)
            log.info("jetstream reconnect %d in %.3fs (cursor %s)", reconnects, delay, self.cursor)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), delay)

    async def ack(self, envelopes: Sequence[Envelope]) -> None:
        """Nothing to acknowledge on a live firehose."""

    async def close(self) -> None:
        """Stop: an open connection is closed and a pending connect or backoff is cut short."""
        self._closed.set()
        if self._ws is not None and self._closer is None:  # don't wait: stream() drains it
            self._closer = asyncio.create_task(self._ws.close())

    @staticmethod
    async def _shutdown(ws: ClientConnection) -> None:
        """Send the close frame, then drop what is still in flight until the server's close
        frame arrives (a full receive buffer would otherwise stall the closing handshake)."""
        closing = asyncio.create_task(ws.close())
        try:
            with contextlib.suppress(*RETRYABLE):
                async for _ in ws:
                    pass
        finally:
            with contextlib.suppress(*RETRYABLE):
                await closing

    async def _open(self) -> ClientConnection | None:
        """Connect, or None when :meth:`close` was called first."""

        async def opening() -> ClientConnection:
            return await connect(
                self.subscribe_url(),
                max_size=self.max_message_bytes,
                open_timeout=self.open_timeout,
            )

        opened = asyncio.create_task(opening())
        closing = asyncio.create_task(self._closed.wait())
        try:
            done, _ = await asyncio.wait({opened, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not opened.done():
                opened.cancel()
        return opened.result() if opened in done else None

    def _parse(self, message: str | bytes) -> Envelope | None:
        """A post, a bad envelope, or None for an event that is skipped."""
        try:
            event: Any = json.loads(message)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
            return Envelope.bad(message, f"invalid JSON: {exc}")
        if not isinstance(event, dict):
            return Envelope.bad(
                message, f"an event must be a JSON object, not {type(event).__name__}"
            )
        time_us = event.get("time_us")
        # (events still in flight from before a rewind do not move the cursor)
        if isinstance(time_us, int) and not isinstance(time_us, bool) and not self._rewinding:
            self.cursor = time_us if self.cursor is None else max(self.cursor, time_us)
        if event.get("kind") != "commit":
            return None
        commit = event.get("commit")
        if not isinstance(commit, dict):
            return Envelope.bad(message, "commit event without a 'commit' object")
        collection = commit.get("collection")
        if commit.get("operation") != "create" or collection not in self.wanted_collections:
            return None
        did, rkey, record = event.get("did"), commit.get("rkey"), commit.get("record")
        if not isinstance(did, str) or not did or not isinstance(rkey, str) or not rkey:
            return Envelope.bad(message, "create commit without a string 'did' and 'commit.rkey'")
        if not isinstance(record, dict):
            return Envelope.bad(message, "create commit without a 'commit.record' object")
        text = record.get("text")
        if not isinstance(text, str):
            return Envelope.bad(
                message, f"'record.text' must be a string, not {type(text).__name__}"
            )
        langs = record.get("langs") or []
        if not isinstance(langs, list) or not all(isinstance(lang, str) for lang in langs):
            return Envelope.bad(message, "'record.langs' must be a list of strings")
        if self.languages is not None and not any(
            lang.lower() in self.languages or lang.lower().split("-")[0] in self.languages
            for lang in langs
        ):
            return None
        created_at = record.get("createdAt")
        return Envelope(
            post=Post(
                id=f"at://{did}/{collection}/{rkey}",
                text=text,
                source="bluesky",
                created_at=created_at if isinstance(created_at, str) else None,
                lang=langs[0] if langs else None,
            )
        )
