"""RemoteClassifier against real ``sentistream serve`` processes: same predictions as the
in-process classifier, riding out a server restart, auth, and error mapping.

The client side runs in a child process (this file run as a script): our ``inference`` protos
and ``tritonclient.grpc`` (used by test_server.py) cannot be imported in one process, and
pytest runs every test module in one.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

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


# -- the client side, in a child process ------------------------------------------------------
def _connect(address: str, model: str = "tiny", **kw: Any) -> Any:
    from sentistream.runtime.remote import RemoteClassifier

    options = {"timeout": 2.0, "backoff_scale": 0.1, "ready_timeout": 10.0, **kw}
    return RemoteClassifier.connect(f"grpc://{address}", model, **options)


def _outcome(fn: Any) -> dict[str, Any]:
    started = time.monotonic()
    try:
        result: dict[str, Any] = {"value": fn()}
    except Exception as exc:
        result = {"error": type(exc).__name__, "message": str(exc)}
    return result | {"seconds": time.monotonic() - started}


def _predict(p: dict[str, Any]) -> Any:
    remote = _connect(p["address"])
    cleaned = [remote.prepare(t) for t in TEXTS]
    return {
        "name": remote.name,
        "version": remote.version,
        "tasks": remote.tasks,
        "primary": remote.primary_task,
        "cleaned": cleaned,
        "all": [x.to_dict() | {"primary": x.primary} for x in remote.classify_clean(cleaned)],
        "offensive": [
            x.to_dict() | {"primary": x.primary}
            for x in remote.classify_clean(cleaned[:2], ["offensive"])
        ],
        "empty": remote.classify_clean([]),
    }


def _errors(p: dict[str, Any]) -> Any:
    remote = _connect(p["address"], max_text_chars=50)
    closed = f"127.0.0.1:{free_port()}"
    return {
        "blank": _outcome(lambda: remote.prepare("   \u200b\n\t ")),
        "long": _outcome(lambda: remote.prepare("x" * 51)),
        "none": _outcome(lambda: remote.prepare(None)),
        "server_empty": _outcome(lambda: remote.classify_clean([""])),
        "task": _outcome(lambda: remote.classify_clean(["hi"], ["nope"])),
        "missing": _outcome(lambda: _connect(p["address"], model="missing")),
        "closed": _outcome(lambda: _connect(closed, ready_timeout=0.5)),
    }


def _auth(p: dict[str, Any]) -> Any:
    def call(token: str | None) -> int:
        return len(_connect(p["address"], auth_token=token).classify_clean(["love", "hate"]))

    return {str(t): _outcome(lambda t=t: call(t)) for t in p["tokens"]}


def _loop(p: dict[str, Any]) -> Any:
    remote = _connect(p["address"])
    cleaned = [remote.prepare(t) for t in TEXTS]
    calls = []
    while not Path(p["stop_file"]).exists():
        calls.append((time.time(), len(remote.classify_clean(cleaned))))
    return calls


def run_client(scenario: str, timeout: float = 60, **params: Any) -> tuple[Any, str]:
    """Run a scenario in a child process; returns (its JSON result, its log)."""
    cmd = [sys.executable, __file__, scenario, json.dumps(params)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


# -- the tests ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("remote-repo")
    tiny_model_folder(root, "tiny", "1", seed=1)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Any:
    with ServerProcess(repo, args=ARGS) as s:
        yield s


def test_same_predictions_as_in_process(server: ServerProcess, repo: Path) -> None:
    from sentistream.config import Settings
    from sentistream.runtime import load_classifier

    local = load_classifier(Settings(model_repository=repo, model="tiny", intra_op_threads=1))
    got, _ = run_client("predict", address=server.grpc)
    assert (got["name"], got["version"]) == ("tiny", "1")
    assert got["tasks"] == local.tasks and got["primary"] == local.primary_task
    assert got["cleaned"] == [local.prepare(t) for t in TEXTS]
    want = local.classify_clean(got["cleaned"])
    assert len(got["all"]) == len(want) == len(TEXTS)
    for g, w in zip(got["all"], want, strict=True):
        assert g["primary"] == w.primary
        remote_tasks = {w.primary: g, **g["tasks"]}
        assert set(remote_tasks) == set(w.tasks)
        for task, wp in w.tasks.items():
            gp = remote_tasks[task]
            assert gp["label"] == wp.label and list(gp["scores"]) == list(wp.scores)
            assert gp["score"] == pytest.approx(wp.score, abs=1e-4)
            for lab, v in wp.scores.items():
                assert gp["scores"][lab] == pytest.approx(v, abs=1e-4)
    assert [x["primary"] for x in got["offensive"]] == ["offensive"] * 2
    assert got["offensive"][0]["tasks"] == {}
    assert got["empty"] == []


def test_validation_and_error_mapping(server: ServerProcess) -> None:
    got, _ = run_client("errors", address=server.grpc)
    assert got["blank"]["error"] == "InvalidInputError"
    assert "empty after cleaning" in got["blank"]["message"]
    assert got["long"]["error"] == "InvalidInputError" and "limit is 50" in got["long"]["message"]
    assert got["none"]["error"] == "InvalidInputError"
    assert got["server_empty"]["error"] == "InvalidInputError"  # the server's own refusal
    assert "empty" in got["server_empty"]["message"]
    assert got["task"]["error"] == "InvalidInputError"
    assert got["missing"]["error"] == "ModelNotFoundError"
    assert got["closed"]["error"] == "UnavailableError"
    assert "not ready" in got["closed"]["message"] and got["closed"]["seconds"] < 3


def test_rides_out_a_server_restart(repo: Path, tmp_path: Path) -> None:
    first = ServerProcess(repo, args=ARGS).start()
    second = ServerProcess(repo, args=ARGS)
    second.grpc_port, second.http_port = first.grpc_port, first.http_port
    stop_file = tmp_path / "stop"
    params = {"address": first.grpc, "stop_file": str(stop_file)}
    cmd = [sys.executable, __file__, "loop", json.dumps(params)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # the child connects and classifies
        first.stop()
        stopped = time.time()
        time.sleep(3.0)
        second.start()
        restarted = time.time()
        time.sleep(1.0)
        stop_file.touch()
        out, log = child.communicate(timeout=30)
    finally:
        stop_file.touch()
        if child.poll() is None:
            child.kill()
        first.stop()
        second.stop()
    assert child.returncode == 0, log
    calls = json.loads(out)
    assert all(n == len(TEXTS) for _, n in calls)
    assert any(t < stopped for t, _ in calls)
    assert any(t > restarted for t, _ in calls), "no call succeeded after the restart"
    assert "circuit breaker open" in log and "answered again" in log


def test_bearer_token(repo: Path) -> None:
    token = "s3cret-remote-token"
    with ServerProcess(repo, args=ARGS, env={"SENTISTREAM_AUTH_TOKEN": token}) as s:
        got, log = run_client("auth", address=s.grpc, tokens=[None, "wrong-token", token])
    for refused in ("None", "wrong-token"):
        assert got[refused]["error"] == "UnavailableError"
        assert "UNAUTHENTICATED" in got[refused]["message"]
        assert got[refused]["seconds"] < 3  # refused at once, not retried
    assert got[token]["value"] == 2
    assert token not in log


if __name__ == "__main__":  # the client side: python test_remote.py SCENARIO JSON
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    scenarios = {"predict": _predict, "errors": _errors, "auth": _auth, "loop": _loop}
    print(json.dumps(scenarios[sys.argv[1]](json.loads(sys.argv[2]))))
