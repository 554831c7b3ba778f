"""Replay a JSONL/TXT file (or stdin) as a stream: for demos, tests and load generation.

Guarantee: at-most-once from the source's point of view (a file is simply read again to replay
it). Options: ``rate`` posts per second (0: as fast as the pipeline takes them) and ``loop``
(start again at the end; replayed posts keep their ids, so deduplicating sinks do not repeat
them).

A file, a regular file redirected to stdin (``< posts.jsonl``) and a pipe (``cat posts.jsonl |``)
are read the same way (:mod:`sentistream.stream.lines`): a line that is not valid UTF-8, not a
post, or longer than ``max_line_bytes`` becomes a bad envelope (dead-lettered with the reason and
its line number) and reading goes on with the next line.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path

from sentistream.errors import InvalidInputError
from sentistream.schemas import Post, parse_post
from sentistream.stream.base import Envelope
from sentistream.stream.lines import (
    MAX_LINE_BYTES,
    Line,
    LineSplitter,
    PipeReader,
    file_chunks,
    is_pipe,
)

__all__ = ["FileSource"]


class FileSource:
    name = "file"
    guarantee = "at-most-once"

    def __init__(
        self,
        path: Path | None,
        *,
        rate: float = 0.0,
        loop: bool = False,
        source_name: str = "file",
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.path = path  # None: stdin
        self.rate = rate
        self.loop = loop
        self.source_name = source_name
        self.max_line_bytes = max_line_bytes
        self._closed = False
        self._pipe: PipeReader | None = None

    async def stream(self) -> AsyncIterator[Envelope]:
        as_text = self.path is not None and self.path.suffix.lower() == ".txt"
        started = time.perf_counter()
        sent = 0
        while not self._closed:
            async with aclosing(self._lines()) as lines:
                async for line in lines:
                    if self._closed:
                        return
                    env = self._envelope(line, as_text)
                    if env is None:
                        continue
                    if self.rate > 0:
                        delay = started + sent / self.rate - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    elif sent % 256 == 0:
                        await asyncio.sleep(0)
                    sent += 1
                    yield env
            if not self.loop or self.path is None:
                return

    async def _lines(self) -> AsyncGenerator[Line, None]:
        splitter = LineSplitter(self.max_line_bytes)
        if self.path is not None:
            with self.path.open("rb") as fh:
                for chunk in file_chunks(fh):
                    for line in splitter.feed(chunk):
                        yield line
        elif is_pipe(sys.stdin.buffer):
            self._pipe = PipeReader(sys.stdin.buffer)
            async for chunk in self._pipe.chunks():
                for line in splitter.feed(chunk):
                    yield line
        else:  # a regular file redirected to stdin
            for chunk in file_chunks(sys.stdin.buffer):
                for line in splitter.feed(chunk):
                    yield line
        for line in splitter.end():
            yield line

    def _envelope(self, line: Line, as_text: bool) -> Envelope | None:
        number, data = line.number, line.data
        if line.too_long:
            return Envelope.bad(
                data, f"line {number} is longer than {self.max_line_bytes} bytes ({line.size})"
            )
        if not data.strip():
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Envelope.bad(data, f"line {number} is not valid UTF-8 (byte {exc.start})")
        if as_text:
            return Envelope(Post(id=f"line-{number}", text=text, source=self.source_name), text)
        try:
            post = parse_post(text, default_id=f"line-{number}", source=self.source_name)
        except InvalidInputError as exc:
            return Envelope.bad(data, f"line {number}: {exc.message}")
        return Envelope(post=post, raw=text)

    async def ack(self, envelopes: Sequence[Envelope]) -> None:
        return None

    async def close(self) -> None:
        self._closed = True
        if self._pipe is not None:
            self._pipe.close()
