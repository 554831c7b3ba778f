"""Where result records go: the Redis sink (see ``redis_io``), a JSONL file, stdout."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from sentistream.schemas import dumps_record

__all__ = ["JsonlSink"]


class JsonlSink:
    """Appends one JSON line per record and flushes each batch (``path=None``: stdout)."""

    def __init__(self, path: Path | None = None, *, pretty: bool = False) -> None:
        self.path = path
        self.pretty = pretty
        self._fh: IO[str] = path.open("a", encoding="utf-8") if path else sys.stdout

    async def write(self, records: Sequence[dict[str, Any]]) -> int:
        for rec in records:
            if self.pretty:
                scores = " ".join(f"{k}={v:.2f}" for k, v in (rec.get("scores") or {}).items())
                self._fh.write(
                    f"{rec['label']:<9} {rec['score']:.3f} [{scores}] "
                    f"{rec['id']}: {rec['text'][:80]}\n"
                )
            else:
                self._fh.write(dumps_record(rec) + "\n")
        self._fh.flush()
        return len(records)

    async def close(self) -> None:
        if self.path is not None:
            self._fh.close()
