"""Lines of bytes of bounded length, from a file, a pipe, a socket or a terminal.

A line longer than ``limit`` bytes is never held in memory whole: its first ``limit`` bytes are
kept, the rest is skipped up to the next newline, and the :class:`Line` says how long it was, so
the reader can refuse it and the line after it arrives intact. Files, regular files given as
stdin (``< file``) and pipes (``cat file |``) all go through the same :class:`LineSplitter`.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import BinaryIO

__all__ = [
    "CHUNK_BYTES",
    "MAX_LINE_BYTES",
    "Line",
    "LineSplitter",
    "PipeReader",
    "file_chunks",
    "is_pipe",
]

MAX_LINE_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Line:
    """One line without its end (``\\n`` or ``\\r\\n``); ``number`` counts from 1."""

    number: int
    data: bytes  # an over-long line: only its first `limit` bytes
    size: int  # bytes of the whole line

    @property
    def too_long(self) -> bool:
        return self.size > len(self.data)


class LineSplitter:
    """Feed chunks, get the complete lines they finish; :meth:`end` returns an unfinished last
    line. At most ``limit`` bytes of a line are kept."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self.number = 0
        self._buf = bytearray()
        self._dropped = 0
        self._cr = False  # the line so far ends with "\r"

    def feed(self, chunk: bytes) -> list[Line]:
        lines: list[Line] = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            self._keep(chunk[start:] if end < 0 else chunk[start:end])
            if end < 0:
                return lines
            lines.append(self._finish())
            start = end + 1

    def end(self) -> list[Line]:
        return [self._finish()] if self._buf or self._dropped else []

    def _keep(self, piece: bytes) -> None:
        if piece:
            self._cr = piece.endswith(b"\r")
        room = self.limit - len(self._buf)
        if self._dropped or len(piece) > room:
            self._buf += piece[: max(room, 0)]
            self._dropped += len(piece) - max(room, 0)
        else:
            self._buf += piece

    def _finish(self) -> Line:
        data, size = bytes(self._buf), len(self._buf) + self._dropped
        if self._cr:  # a CRLF line end; an over-long line's "\r" is among the dropped bytes
            size -= 1
            data = data if self._dropped else data[:-1]
        self._buf.clear()
        self._dropped = 0
        self._cr = False
        self.number += 1
        return Line(self.number, data, size)


def file_chunks(fh: BinaryIO) -> Iterator[bytes]:
    """Chunks of a file (or of a regular file given as stdin) until its end."""
    while chunk := fh.read(CHUNK_BYTES):
        yield chunk


def is_pipe(fh: BinaryIO) -> bool:
    """Whether ``fh`` is a pipe, socket or terminal (read asynchronously) rather than a file."""
    mode = os.fstat(fh.fileno()).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


class PipeReader:
    """Chunks of a pipe, socket or terminal, read without blocking the event loop;
    :meth:`close` ends :meth:`chunks` at once even while it waits for data."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self._transport: asyncio.ReadTransport | None = None
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        reader = asyncio.StreamReader(limit=4 * CHUNK_BYTES)
        protocol = asyncio.StreamReaderProtocol(reader)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(lambda: protocol, self.fh)
        self._transport = transport
        try:
            while not self._closed and (chunk := await reader.read(CHUNK_BYTES)):
                yield chunk
        finally:
            transport.close()

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()  # connection_lost -> EOF for a read that waits
