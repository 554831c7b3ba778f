"""The worker's task selection (``stream_tasks``): records carry the chosen tasks only, and an
unknown task fails the start instead of the first batch."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sentistream.errors import InvalidInputError
from sentistream.runtime import Classifier
from sentistream.stream.file_source import FileSource
from sentistream.stream.sinks import JsonlSink
from sentistream.stream.worker import StreamWorker


def _run(classifier: Classifier, tmp_path: Path, tasks: list[str] | None) -> list[dict]:  # type: ignore[type-arg]
    posts = tmp_path / "posts.jsonl"
    posts.write_text(
        "".join(json.dumps({"id": str(i), "text": f"great day {i}"}) + "\n" for i in range(5))
    )
    out = tmp_path / f"out-{tasks}.jsonl"
    worker = StreamWorker(FileSource(posts), classifier, sinks=[JsonlSink(out)], tasks=tasks)
    asyncio.run(worker.run())
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_records_carry_every_task_by_default(tiny_classifier: Classifier, tmp_path: Path) -> None:
    records = _run(tiny_classifier, tmp_path, None)
    assert len(records) == 5
    assert all(set(r["tasks"]) == {"offensive"} and r["label"] for r in records)


def test_stream_tasks_keeps_only_the_chosen_tasks(
    tiny_classifier: Classifier, tmp_path: Path
) -> None:
    records = _run(tiny_classifier, tmp_path, ["sentiment"])
    assert len(records) == 5 and all(r["tasks"] == {} and r["label"] for r in records)


def test_primary_task_is_always_kept(tiny_classifier: Classifier, tmp_path: Path) -> None:
    records = _run(tiny_classifier, tmp_path, ["offensive"])
    assert all(r["label"] in {"negative", "neutral", "positive"} for r in records)
    assert all(set(r["tasks"]) == {"offensive"} for r in records)


def test_unknown_stream_task_fails_at_start(tiny_classifier: Classifier, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="irony"):
        StreamWorker(FileSource(tmp_path / "none.jsonl"), tiny_classifier, tasks=["irony"])
