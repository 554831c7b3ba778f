"""Drift on replayed traffic: the shipped model, its stored reference profile, the real worker
pipeline (file source -> worker -> drift monitor -> Prometheus gauges)."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from sentistream.config import Settings
from sentistream.drift import DriftMonitor
from sentistream.manifest import load_manifest
from sentistream.repository import ModelRepository
from sentistream.runtime import load_classifier
from sentistream.stream.file_source import FileSource
from sentistream.stream.monitor import WorkerMetrics, worker_app
from sentistream.stream.sinks import JsonlSink
from sentistream.stream.worker import StreamWorker

pytestmark = pytest.mark.integration
# The default model's folder: its reference profile belongs to the classifier the worker runs.
SHIPPED = ModelRepository(Settings().model_repository).resolve(Settings().model)


def _replay(texts: list[str], tmp_path: Path) -> tuple[dict[str, float], float]:
    """Run the worker over ``texts``; return the exported PSI gauges and the drift flag."""
    posts = tmp_path / "posts.jsonl"
    posts.write_text(
        "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts))
    )
    settings = Settings(intra_op_threads=2)
    manifest = load_manifest(SHIPPED, verify_hashes=False)
    assert manifest.reference_profile is not None
    drift = DriftMonitor(
        manifest.reference_profile.model_dump(exclude_none=True),
        window=300,
        threshold=settings.drift_psi_threshold,
        min_samples=200,
    )
    metrics = WorkerMetrics()
    worker = StreamWorker(
        FileSource(posts),
        load_classifier(settings),
        sinks=[JsonlSink(tmp_path / "out.jsonl")],
        metrics=metrics,
        drift=drift,
    )
    summary = asyncio.run(worker.run())
    assert summary["processed"] == len(texts)
    with TestClient(worker_app(worker, metrics, settings)) as client:
        text = client.get("/metrics").text
    psi = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^sentistream_worker_drift_psi\{feature="(\w+)"\} (\S+)$', text, re.M)
    }
    flag = re.search(r"^sentistream_worker_drift_detected (\S+)$", text, re.M)
    assert flag is not None
    return psi, float(flag.group(1))


def _val(sentiment_data: Path) -> tuple[list[str], list[int]]:
    texts = (sentiment_data / "val_text.txt").read_text(encoding="utf-8").splitlines()
    labels = [int(x) for x in (sentiment_data / "val_labels.txt").read_text().split()]
    return texts, labels


def test_only_negative_tweets_raise_the_drift_flag(sentiment_data: Path, tmp_path: Path) -> None:
    texts, labels = _val(sentiment_data)
    negative = [t for t, y in zip(texts, labels, strict=True) if y == 0]  # 312 posts
    psi, flag = _replay(negative, tmp_path)
    assert flag == 1.0
    assert psi["label"] > 0.5  # the label mix moved, far past the 0.2 threshold
    assert set(psi) == {"label", "length", "unk_rate", "confidence"}


@pytest.mark.parametrize("split", ["val", "train"])
def test_validation_like_traffic_does_not(sentiment_data: Path, tmp_path: Path, split: str) -> None:
    """A shuffled sample of the validation set (the reference's own population) and of the
    training set (other tweets of the same kind, never profiled) stay below the threshold."""
    texts = (sentiment_data / f"{split}_text.txt").read_text(encoding="utf-8").splitlines()
    sample = random.Random(7).sample(texts, 600)
    psi, flag = _replay(sample, tmp_path)
    assert flag == 0.0
    assert max(psi.values()) < 0.1
