"""Prediction logging to MLflow: a local store (MLflow's offline mode) receives sampled rows
with hashed texts; an unreachable or hanging tracker never fails or holds up the worker."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentistream.predlog import MlflowBackend, PredictionLogger, prediction_row
from sentistream.testing import free_port

pytestmark = pytest.mark.integration
mlflow = pytest.importorskip("mlflow", reason="MLflow is in the [logging] and [dev] extras")


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # MLflow 3 keeps its file store for local use behind an explicit opt-in.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def _records(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"p{i}",
            "text": f"secret post number {i}",
            "label": ["negative", "positive"][i % 2],
            "score": 0.9,
            "scores": {"negative": 0.1, "positive": 0.9},
            "tasks": {"offensive": {"label": "not-offensive", "score": 0.8}},
            "model": "tiny",
            "model_version": "1",
            "latency_ms": 12.0,
            "processed_at": "2026-11-22T09:00:00.000Z",
        }
        for i in range(n)
    ]


def _logged(
    uri: str, experiment: str = "sentistream-predictions"
) -> tuple[float, list[dict[str, Any]]]:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    [run] = client.search_runs([exp.experiment_id])
    history = client.get_metric_history(run.info.run_id, "predictions")
    rows: list[dict[str, Any]] = []
    folder = Path(client.download_artifacts(run.info.run_id, "predictions"))
    for path in sorted(folder.glob("batch-*.json")):
        rows.extend(json.loads(path.read_text())["predictions"])
    return sum(m.value for m in history), rows


def test_rows_reach_a_local_mlflow_store_with_hashed_text(store: str) -> None:
    sent: list[int] = []
    logger = PredictionLogger(
        lambda: MlflowBackend(store, "sentistream-predictions", "test"),
        sample_rate=1.0,
        batch_size=40,
        flush_seconds=0.2,
        on_sent=sent.append,
    )
    records = _records(100)
    logger.offer(records[:60])
    logger.offer(records[60:])
    assert logger.close(30)
    assert sum(sent) == 100 and logger.dropped == 0 and logger.errors == 0
    total, rows = _logged(store)
    assert total == 100 and len(rows) == 100
    by_id = {r["id"]: r for r in rows}
    assert by_id["p7"]["text_sha256"] == hashlib.sha256(b"secret post number 7").hexdigest()
    assert by_id["p7"]["label"] == "positive" and by_id["p7"]["tasks"] == {
        "offensive": "not-offensive"
    }
    assert all("text" not in r for r in rows)
    assert "secret post" not in json.dumps(rows)
    client = mlflow.MlflowClient(store)
    run = client.search_runs(
        [client.get_experiment_by_name("sentistream-predictions").experiment_id]
    )[0]
    assert run.data.metrics["label_share.positive"] == pytest.approx(0.5, abs=0.05)
    assert run.info.status == "FINISHED"


def test_sampling_and_raw_text_only_when_asked() -> None:
    row = prediction_row(_records(1)[0])
    assert "text" not in row and row["text_chars"] == len("secret post number 0")
    assert prediction_row(_records(1)[0], raw_text=True)["text"] == "secret post number 0"
    kept: list[dict[str, Any]] = []

    class Memory:
        def log(self, rows: list[dict[str, Any]]) -> None:
            kept.extend(rows)

        def close(self) -> None:
            pass

    logger = PredictionLogger(Memory, sample_rate=0.25, flush_seconds=0.1, seed=3)
    logger.offer(_records(2000))
    assert logger.close(10)
    assert 400 < len(kept) < 600  # 25 % of 2,000


def test_unreachable_tracker_drops_and_counts_without_blocking() -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    dropped: list[int] = []
    errors: list[int] = []
    logger = PredictionLogger(
        lambda: MlflowBackend(uri, "x", "y"),
        sample_rate=1.0,
        queue_size=100,
        flush_seconds=0.1,
        on_dropped=dropped.append,
        on_error=lambda: errors.append(1),
    )
    started = time.perf_counter()
    for _ in range(50):
        logger.offer(_records(100))  # 5,000 rows into a 100-row queue
    offered = time.perf_counter() - started
    assert offered < 0.5, f"offer blocked for {offered:.2f}s"
    assert sum(dropped) >= 4500  # all but the queue and the batch the thread holds
    started = time.perf_counter()
    logger.close(1.0)  # MLflow is still retrying in its thread: abandoned, not waited for
    assert time.perf_counter() - started < 2.0


@pytest.fixture()
def blackhole() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung tracker)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _run_worker(
    tmp_path: Path, tiny_repo: Path, extra: list[str], env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], float]:
    posts = tmp_path / "posts.jsonl"
    posts.write_text(
        "".join(json.dumps({"id": f"p{i}", "text": f"love game {i}"}) + "\n" for i in range(400))
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable, "-m", "sentistream", "stream", "--source", "file",
            "--input", str(posts),
            "--output", str(tmp_path / "out.jsonl"), "--model-repository", str(tiny_repo),
            "--model", "tiny", "--intra-op-threads", "1", "--prediction-log", "mlflow",
            "--prediction-log-sample-rate", "1", *extra,
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    return proc, time.perf_counter() - started


def test_worker_logs_to_a_local_store(tmp_path: Path, tiny_repo: Path, store: str) -> None:
    proc, _ = _run_worker(
        tmp_path, tiny_repo, ["--prediction-log-uri", store], {"MLFLOW_ALLOW_FILE_STORE": "true"}
    )
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 400
    total, rows = _logged(store)
    assert total == 400 and {r["model"] for r in rows} == {"tiny"}


def test_hung_tracker_neither_fails_nor_holds_up_the_worker(
    tmp_path: Path, tiny_repo: Path, blackhole: int
) -> None:
    proc, seconds = _run_worker(
        tmp_path, tiny_repo, ["--prediction-log-uri", f"http://127.0.0.1:{blackhole}"], {}
    )
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 400
    # MLflow would wait up to 120 s per request; the worker gives the logger 5 s at exit.
    assert seconds < 25
    assert "prediction log" in proc.stderr and "Traceback" not in proc.stderr
