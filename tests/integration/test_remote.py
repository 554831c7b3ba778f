"""RemoteClassifier against real ``sentistream serve`` processes: same predictions as the
in-process classifier, riding out a server restart, auth, and error mapping."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentistream.config import Settings
from sentistream.errors import InvalidInputError, ModelNotFoundError, UnavailableError
from sentistream.runtime import load_classifier
from sentistream.runtime.remote import RemoteClassifier
from sentistream.testing import ServerProcess, free_port, tiny_model_folder

pytestmark = pytest.mark.integration
TEXTS = [
    "i love this game",
    "the worst day ever, awful",
    "new music today",
    "so sad",
    "great",
    "@someone check https://example.com #HappyBirthday",
    "meh 😂😂",
    "what a lovely morning for a run",
    "this is fine",
    "not bad at all, honestly",
]
ARGS = ["--model", "tiny", "--max-delay-ms", "2"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("remote-repo")
    tiny_model_folder(root, "tiny", "1", seed=1)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(repo, args=ARGS) as s:
        yield s


def connect(
    address: str,
    *,
    auth_token: str | None = None,
    max_text_chars: int = 20_000,
    ready_timeout: float = 10.0,
) -> RemoteClassifier:
    return RemoteClassifier.connect(
        f"grpc://{address}",
        "tiny",
        timeout=2.0,
        auth_token=auth_token,
        max_text_chars=max_text_chars,
        ready_timeout=ready_timeout,
        backoff_scale=0.1,
    )


def test_same_predictions_as_in_process(server: ServerProcess, repo: Path) -> None:
    local = load_classifier(Settings(model_repository=repo, model="tiny", intra_op_threads=1))
    remote = connect(server.grpc)
    try:
        assert (remote.name, remote.version) == ("tiny", "1")
        assert remote.tasks == local.tasks and remote.primary_task == local.primary_task
        cleaned = [remote.prepare(t) for t in TEXTS]
        assert cleaned == [local.prepare(t) for t in TEXTS]
        got, want = remote.classify_clean(cleaned), local.classify_clean(cleaned)
        assert len(got) == len(want) == len(TEXTS)
        for g, w in zip(got, want, strict=True):
            assert g.primary == w.primary and set(g.tasks) == set(w.tasks)
            for task, wp in w.tasks.items():
                gp = g.tasks[task]
                assert gp.label == wp.label and list(gp.scores) == list(wp.scores)
                assert gp.score == pytest.approx(wp.score, abs=1e-4)
                for lab, v in wp.scores.items():
                    assert gp.scores[lab] == pytest.approx(v, abs=1e-4)
        only = remote.classify_clean(cleaned[:2], ["offensive"])
        assert [p.primary for p in only] == ["offensive"] * 2
        assert set(only[0].tasks) == {"offensive"}
        assert remote.classify_clean([]) == []
    finally:
        remote.close()


def test_validation_and_error_mapping(server: ServerProcess) -> None:
    remote = connect(server.grpc, max_text_chars=50)
    try:
        with pytest.raises(InvalidInputError, match="empty after cleaning"):
            remote.prepare("   \u200b\n\t ")
        with pytest.raises(InvalidInputError, match="limit is 50"):
            remote.prepare("x" * 51)
        with pytest.raises(InvalidInputError, match="must be a string"):
            remote.prepare(None)
        with pytest.raises(InvalidInputError, match="empty"):  # the server's own message
            remote.classify_clean([""])
        with pytest.raises(InvalidInputError, match="unknown task"):
            remote.classify_clean(["hi"], ["nope"])
    finally:
        remote.close()
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError):
        RemoteClassifier.connect(f"grpc://{server.grpc}", "missing", timeout=2.0)
    with pytest.raises(UnavailableError, match="not ready"):
        connect(f"127.0.0.1:{free_port()}", ready_timeout=0.5)
    assert time.monotonic() - started < 5


def test_rides_out_a_server_restart(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sentistream.remote")
    first = ServerProcess(repo, args=ARGS).start()
    second = ServerProcess(repo, args=ARGS)
    second.grpc_port, second.http_port = first.grpc_port, first.http_port
    remote = connect(first.grpc)
    cleaned = [remote.prepare(t) for t in TEXTS]
    results: list[tuple[float, int]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            try:
                results.append((time.monotonic(), len(remote.classify_clean(cleaned))))
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        first.stop()
        stopped = time.monotonic()
        time.sleep(3.0)
        begun = time.monotonic()
        second.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(t > begun for t, _ in results):
            time.sleep(0.05)
        restarted = time.monotonic()
        time.sleep(0.3)
    finally:
        done.set()
        thread.join(15)
        remote.close()
        first.stop()
        second.stop()
    assert not errors, errors
    assert not thread.is_alive()
    assert all(n == len(TEXTS) for _, n in results)
    assert any(t < stopped for t, _ in results)
    assert any(t > restarted for t, _ in results), "no call succeeded after the restart"
    assert "circuit breaker open" in caplog.text
    assert "answered again" in caplog.text


def test_bearer_token(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sentistream.remote")
    token = "s3cret-remote-token"
    with ServerProcess(repo, args=ARGS, env={"SENTISTREAM_AUTH_TOKEN": token}) as s:
        for given in (None, "wrong-token"):
            started = time.monotonic()
            with pytest.raises(UnavailableError, match="UNAUTHENTICATED"):
                connect(s.grpc, auth_token=given)
            assert time.monotonic() - started < 3
        remote = connect(s.grpc, auth_token=token)
        try:
            assert len(remote.classify_clean(["i love it", "i hate it"])) == 2
        finally:
            remote.close()
    assert token not in caplog.text
