"""``sentistream demo``: replay the bundled sample stream through the shipped model.

Posts arrive at ``rate`` per second, are cleaned and classified as they arrive, and are printed
as live results (or as result records with ``--json``). Needs nothing but the package.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO

from sentistream.classify_file import format_prediction, write_record
from sentistream.runtime.base import Classifier
from sentistream.schemas import parse_post

__all__ = ["SAMPLE_POSTS", "local_redis", "run_demo"]

SAMPLE_POSTS = Path(__file__).resolve().parent / "samples" / "posts.jsonl"
_COLOURS = {"positive": "\033[32m", "negative": "\033[31m", "neutral": "\033[33m"}


def local_redis(url: str = "redis://127.0.0.1:6379/0") -> str | None:
    """The URL of a redis-server answering on the standard local port, if there is one."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return url if s.recv(64).startswith(b"+PONG") else None
    except OSError:
        return None


def run_demo(
    classifier: Classifier,
    source: Path = SAMPLE_POSTS,
    *,
    rate: float = 20.0,
    as_json: bool = False,
    out: IO[str] | None = None,
) -> dict[str, object]:
    out = out or sys.stdout
    colour = out.isatty() and not as_json
    counts: Counter[str] = Counter()
    started = time.perf_counter()
    with source.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if rate > 0:
                delay = started + (number - 1) / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            t0 = time.perf_counter()
            post = parse_post(line, default_id=f"line-{number}", source="demo")
            pred = classifier.classify([post.text])[0]
            latency = (time.perf_counter() - t0) * 1000
            counts[pred.label] += 1
            if as_json:
                write_record(out, classifier, post, pred, latency)
            else:
                text = format_prediction(post.text, pred)
                if colour:
                    text = _COLOURS.get(pred.label, "") + text + "\033[0m"
                out.write(f"{text}  ({latency:.1f} ms)\n")
            out.flush()
    summary = {
        "posts": sum(counts.values()),
        "labels": dict(counts),
        "model": f"{classifier.name}:{classifier.version}",
        "seconds": round(time.perf_counter() - started, 2),
    }
    return summary
