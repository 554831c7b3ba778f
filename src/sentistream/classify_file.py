"""Stream a file of posts through the classifier in batches, one result record per good line.

Input is JSONL (one post object per line) or, for ``.txt`` files, one text per line. Lines are
read in chunks, validated and cleaned one by one, and the good ones go through the model in a
single call per chunk (the classifier sorts them by length into small batches). Bad lines never
stop the run: each is reported with its line number and reason (to ``errors_path`` as JSONL and
counted in the summary). Records keep the input order and ids.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from sentistream.errors import InvalidInputError
from sentistream.runtime.base import Classifier, Prediction
from sentistream.schemas import Post, parse_post, result_record

__all__ = ["classify_file", "format_prediction", "write_record"]

CHUNK_LINES = 1024


def format_prediction(text: str, pred: Prediction) -> str:
    primary = pred.tasks[pred.primary]
    probs = "  ".join(f"{label}={p:.3f}" for label, p in primary.scores.items())
    others = "".join(
        f"\n    {task}: {p.label} ({p.score:.3f})"
        for task, p in pred.tasks.items()
        if task != pred.primary
    )
    shown = text if len(text) <= 70 else text[:67] + "..."
    return f"{primary.label:<9} {primary.score:.3f}  [{probs}]  {shown}{others}"


def write_record(
    out: IO[str], classifier: Classifier, post: Post, pred: Prediction, latency_ms: float
) -> None:
    """Write one result record as a JSON line."""
    record = result_record(
        post, pred, model=classifier.name, model_version=classifier.version, latency_ms=latency_ms
    )
    out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _lines(fh: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(fh, start=1):
        yield number, line.rstrip(b"\r\n")


def _parse(number: int, line: bytes, as_text: bool, source: str) -> Post:
    if as_text:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"line is not valid UTF-8 (byte {exc.start})") from exc
        return Post(id=f"line-{number}", text=text, source=source)
    return parse_post(line, default_id=f"line-{number}", source=source)


def classify_file(
    classifier: Classifier,
    input_path: Path,
    output_path: Path | None = None,
    *,
    tasks: Sequence[str] | None = None,
    progress: bool = True,
    errors_path: Path | None = None,
    chunk_lines: int = CHUNK_LINES,
) -> dict[str, Any]:
    """Classify every line of ``input_path``; returns a summary with counts and throughput."""
    classifier.select_tasks(tasks)  # fail fast on unknown tasks
    as_text = input_path.suffix.lower() == ".txt"
    source = "file"
    total_bytes = input_path.stat().st_size
    counts = {"lines": 0, "blank": 0, "records": 0, "rejected": 0}
    reasons: dict[str, int] = {}
    started = time.perf_counter()
    with ExitStack() as stack:
        fh = stack.enter_context(input_path.open("rb"))
        out: IO[str] = (
            stack.enter_context(output_path.open("w", encoding="utf-8"))
            if output_path
            else sys.stdout
        )
        err: IO[str] | None = (
            stack.enter_context(errors_path.open("w", encoding="utf-8")) if errors_path else None
        )
        bar = None
        if progress:
            from tqdm import tqdm

            bar = stack.enter_context(
                tqdm(
                    total=total_bytes,
                    unit="B",
                    unit_scale=True,
                    desc="classify",
                    file=sys.stderr,
                    mininterval=0.5,
                )
            )
        chunk: list[tuple[int, bytes]] = []

        def flush() -> None:
            t0 = time.perf_counter()
            good: list[tuple[Post, str]] = []
            for number, line in chunk:
                try:
                    post = _parse(number, line, as_text, source)
                    good.append((post, classifier.prepare(post.text)))
                except InvalidInputError as exc:
                    counts["rejected"] += 1
                    key = exc.message.split(":")[0][:60]
                    reasons[key] = reasons.get(key, 0) + 1
                    if err is not None:
                        snippet = line[:200].decode("utf-8", errors="replace")
                        err.write(
                            json.dumps(
                                {"line": number, "reason": exc.message, "raw": snippet},
                                ensure_ascii=False,
                            )
                            + "\n"
                        )
            preds = classifier.classify_clean([c for _, c in good], tasks)
            latency_ms = (time.perf_counter() - t0) * 1000
            for (post, _), pred in zip(good, preds, strict=True):
                write_record(out, classifier, post, pred, latency_ms)
            counts["records"] += len(good)
            if bar is not None:
                bar.update(sum(len(line) + 1 for _, line in chunk))
            chunk.clear()

        for number, line in _lines(fh):
            counts["lines"] += 1
            if not line.strip():
                counts["blank"] += 1
                continue
            chunk.append((number, line))
            if len(chunk) >= chunk_lines:
                flush()
        if chunk:
            flush()
        out.flush()
    seconds = time.perf_counter() - started
    return {
        "input": str(input_path),
        "output": str(output_path) if output_path else "-",
        **counts,
        "rejected_reasons": reasons,
        "seconds": round(seconds, 3),
        "posts_per_second": round(counts["records"] / seconds, 1) if seconds > 0 else None,
        "model": f"{classifier.name}:{classifier.version}",
    }
