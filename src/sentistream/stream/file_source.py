"""Replay a JSONL/TXT file (or stdin) as a stream: for demos, tests and load generation.

Guarantee: at-most-once from the source's point of view (a file is simply read again to replay
it). Options: ``rate`` posts per second (0: as fast as the pipeline takes them) and ``loop``
(start again at the end; replayed posts keep their ids, so deduplicating sinks do not repeat
them).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from sentistream.errors import InvalidInputError
from sentistream.schemas import Post, parse_post
from sentistream.stream.base import Envelope

__all__ = ["FileSource"]


class FileSource:
    name = "file"
    guarantee = "at-most-once"

    def __init__(
        self, path: Path | None, *, rate: float = 0.0, loop: bool = False, source_name: str = "file"
    ) -> None:
        self.path = path  # None: stdin
        self.rate = rate
        self.loop = loop
        self.source_name = source_name
        self._closed = False

    async def stream(self) -> AsyncIterator[Envelope]:
        as_text = self.path is not None and self.path.suffix.lower() == ".txt"
        started = time.perf_counter()
        sent = 0
        while not self._closed:
            if self.path is None:
                async for item in self._stdin():
                    yield item
                return
            with self.path.open("rb") as fh:
                for number, raw in enumerate(fh, start=1):
                    if self._closed:
                        return
                    env = self._envelope(number, raw.rstrip(b"\r\n"), as_text)
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
            if not self.loop:
                return

    async def _stdin(self) -> AsyncIterator[Envelope]:
        reader = asyncio.StreamReader(limit=1 << 22)
        protocol = asyncio.StreamReaderProtocol(reader)
        await asyncio.get_running_loop().connect_read_pipe(lambda: protocol, sys.stdin.buffer)
        number = 0
        while not self._closed:
            line = await reader.readline()
            if not line:
                return
            number += 1
            env = self._envelope(number, line.rstrip(b"\r\n"), False)
            if env is not None:
                yield env

    def _envelope(self, number: int, line: bytes, as_text: bool) -> Envelope | None:
        if not line.strip():
            return None
        try:
            if as_text:
                post = Post(id=f"line-{number}", text=line.decode("utf-8"), source=self.source_name)
            else:
                post = parse_post(line, default_id=f"line-{number}", source=self.source_name)
        except UnicodeDecodeError:
            return Envelope.bad(line, f"line {number} is not valid UTF-8")
        except InvalidInputError as exc:
            return Envelope.bad(line, f"line {number}: {exc.message}")
        return Envelope(post=post, raw=line.decode("utf-8", errors="replace"))

    async def ack(self, envelopes: Sequence[Envelope]) -> None:
        return None

    async def close(self) -> None:
        self._closed = True
