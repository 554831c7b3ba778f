"""The model server at its edges (issue 26): secrets reaching worker processes, the admin
endpoints under races and broken versions, encoded and odd tensor inputs, one auth rule on
both transports, and clients that send slowly. Real server processes on free ports."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import re
import select
import socket
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis

from sentistream.testing import RedisServer, ServerProcess, tiny_model_folder
from tests.integration.test_dashboard import Events

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("edges-repo")
    tiny_model_folder(root, "tiny", "1", seed=1)
    return root


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_worker_processes_get_the_secrets(repo: Path, tmp_path: Path) -> None:
    password, token = "dash-board-pw-7", "bearer-token-7"
    with RedisServer(tmp_path / "redis", password=password) as server:
        client = redis.Redis.from_url(server.url)
        record = {"id": "w1", "text": "from the stream", "label": "positive", "score": 0.9}
        client.xadd("results:w", {"data": json.dumps(record)})
        env = {
            "SENTISTREAM_REDIS_URL": server.url,
            "SENTISTREAM_DASHBOARD_STREAM": "results:w",
            "SENTISTREAM_AUTH_TOKEN": token,
        }
        with ServerProcess(repo, env=env, args=["--model", "tiny", "--workers", "2"]) as s:
            workers = _children(s.proc.pid)
            url, auth = f"{s.url}/v1/classify", {"Authorization": f"Bearer {token}"}
            for _ in range(6):  # both processes check the token
                assert httpx.post(url, json={"text": "hi"}).status_code == 401
                assert httpx.post(url, json={"text": "hi"}, headers=auth).status_code == 200
            # Each connection lands on one of the two processes: every one shows the record.
            for _ in range(6):
                with httpx.stream("GET", f"{s.url}/dashboard/events", timeout=10) as events:
                    [(entry_id, shown)] = Events(events).take("record", 1)
                assert shown["id"] == "w1" and entry_id
            command_lines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in workers]
            assert s.stop() == 0
            log = s.log
        client.close()
    assert len(workers) >= 2
    assert not [c for c in command_lines if password.encode() in c or token.encode() in c]
    assert password not in log and token not in log and "**********" not in log


def _grpc_call(server: ServerProcess, method: str, request: Any, token: str | None) -> Any:
    """(response, None) or (None, status code) of one GRPCInferenceService call."""
    from tritonclient.grpc import service_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=10, metadata=metadata), None
        except grpc.RpcError as exc:
            return None, exc.code()


@pytest.mark.parametrize("token", [None, "model-state-token"])
def test_one_auth_rule_for_rest_and_grpc(repo: Path, token: str | None) -> None:
    from tritonclient.grpc import service_pb2 as pb

    env = {"SENTISTREAM_AUTH_TOKEN": token} if token else {}
    with ServerProcess(repo, env=env, args=["--model", "tiny"]) as s:
        good = {"Authorization": f"Bearer {token}"} if token else {}
        # Server health: open on both transports, with or without a token.
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert httpx.get(f"{s.url}{path}").status_code == 200
        live, _ = _grpc_call(s, "ServerLive", pb.ServerLiveRequest(), None)
        ready, _ = _grpc_call(s, "ServerReady", pb.ServerReadyRequest(), None)
        assert live.live and ready.ready
        # Per-model state: the token when one is configured, on both transports.
        for path in (
            "/v2/models/tiny/ready",
            "/v2/models/tiny/versions/1/ready",
            "/v2/models/tiny",
        ):
            anonymous = httpx.get(f"{s.url}{path}")
            assert anonymous.status_code == (401 if token else 200), path
            assert httpx.get(f"{s.url}{path}", headers=good).status_code == 200
        for method, request in (
            ("ModelReady", pb.ModelReadyRequest(name="tiny")),
            ("ModelReady", pb.ModelReadyRequest(name="tiny", version="1")),
            ("ModelMetadata", pb.ModelMetadataRequest(name="tiny")),
        ):
            answer, code = _grpc_call(s, method, request, None)
            if token:
                assert code == grpc.StatusCode.UNAUTHENTICATED, method
                answer, code = _grpc_call(s, method, request, "wrong")
                assert code == grpc.StatusCode.UNAUTHENTICATED, method
            answer, code = _grpc_call(s, method, request, token)
            assert code is None, (method, code)
            assert answer.ready if method == "ModelReady" else answer.name == "tiny"


@pytest.fixture(scope="module")
def server(repo: Path):  # type: ignore[no-untyped-def]
    with ServerProcess(repo, args=["--model", "tiny", "--model-poll-seconds", "0"]) as s:
        yield s


def _b64(text: str | bytes) -> dict[str, str]:
    raw = text.encode() if isinstance(text, str) else text
    return {"b64": base64.b64encode(raw).decode()}


def test_tf_serving_rest_decodes_b64_values(server: ServerProcess) -> None:
    url = f"{server.url}/v1/models/tiny:predict"
    texts = ["i love this game", "the worst day ever"]
    plain = httpx.post(url, json={"instances": texts}).json()["predictions"]
    for body in (
        {"instances": [_b64(t) for t in texts]},  # the row is the value (one input)
        {"instances": [{"text": _b64(t)} for t in texts]},  # the named input's value
        {"instances": [_b64(texts[0]), texts[1]]},  # mixed
    ):
        r = httpx.post(url, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == plain, body
    for body in (
        {"inputs": [_b64(t) for t in texts]},
        {"inputs": {"text": [_b64(t) for t in texts]}},
    ):
        r = httpx.post(url, json=body)
        assert r.status_code == 200, r.text
        columns = r.json()["outputs"]
        assert columns["sentiment_label"] == [p["sentiment_label"] for p in plain]
    one = httpx.post(url, json={"inputs": _b64(texts[0])})
    assert one.json()["outputs"]["sentiment_label"] == [plain[0]["sentiment_label"]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [{"b64": "not base64!"}]}, "instances[0]: 'b64' is not valid base64"),
        ({"instances": ["ok", _b64(b"\xff\xfe")]}, "instances[1]: the base64 value is not UTF-8"),
        ({"instances": [{"b64": 42}]}, "instances[0]: 'b64' must be a base64 string"),
        ({"inputs": {"text": [_b64(b"\xc3")]}}, "inputs[0]: the base64 value is not UTF-8"),
    ],
)
def test_tf_serving_rest_refuses_bad_b64(server: ServerProcess, body: Any, message: str) -> None:
    r = httpx.post(f"{server.url}/v1/models/tiny:predict", json=body)
    assert r.status_code == 400 and r.json()["code"] == "INVALID_ARGUMENT"
    assert r.json()["error"].startswith(message), r.json()


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"shape": [True], "data": ["hi"]}, "input 'shape' must be a list of integers"),
        ({"shape": [True, 1], "data": ["hi"]}, "input 'shape' must be a list of integers"),
        ({"shape": [1, False], "data": ["hi"]}, "input 'shape' must be a list of integers"),
        (
            {"shape": [1], "parameters": {"binary_data_size": True}},
            "binary_data_size must be an integer",
        ),
    ],
)
def test_kserve_v2_refuses_booleans_as_integers(
    server: ServerProcess, tensor: dict[str, Any], message: str
) -> None:
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", **tensor}]}).encode()
    headers = {"Content-Type": "application/json"}
    if "parameters" in tensor:  # one BYTES element "h" in the binary tail
        headers["Inference-Header-Content-Length"] = str(len(body))
        body += b"\x01\x00\x00\x00h"[:1]
    r = httpx.post(f"{server.url}/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def _loaded_gauge(server: ServerProcess) -> set[str]:
    """Versions ``sentistream_model_loaded`` reports as 1."""
    text = httpx.get(f"{server.url}/metrics").text
    found = re.findall(
        r'^sentistream_model_loaded\{model="(\w+)",version="(\d+)"\} 1\.0$', text, re.M
    )
    return {f"{m}:{v}" for m, v in found}


def test_loading_a_corrupted_version_is_a_clear_4xx(tmp_path: Path) -> None:
    live = tmp_path / "repo"
    tiny_model_folder(live, "tiny", "1", seed=1)
    with ServerProcess(live, args=["--model-poll-seconds", "0"]) as s:
        broken = tiny_model_folder(live, "tiny", "2", seed=2)
        with (broken / "model.onnx").open("ab") as f:
            f.write(b"tampered")  # the manifest's sha256 no longer matches
        incomplete = tiny_model_folder(live, "tiny", "3", seed=3)
        (incomplete / "tokenizer.json").unlink()
        base = f"{s.url}/v2/repository/models"
        for url, status in ((f"{base}/tiny/load?version=2", 409), (f"{base}/nope/load", 404)):
            r = httpx.post(url)
            assert r.status_code == status, r.text
            assert str(tmp_path) not in r.text and "Traceback" not in r.text
        r = httpx.post(f"{base}/tiny/load?version=2")
        assert r.status_code == 409 and r.json()["code"] == "FAILED_PRECONDITION"
        assert r.json()["error"] == (
            "tiny/2/model.onnx does not match its manifest checksum (corrupted or replaced file)"
        )
        index = httpx.post(f"{s.url}/v2/repository/index")
        rows = {row["version"]: row for row in index.json()}
        assert rows["1"]["state"] == "READY"
        assert rows["2"]["state"] == "BROKEN" and "checksum" in rows["2"]["reason"]
        assert rows["3"]["state"] == "BROKEN" and "missing tokenizer.json" in rows["3"]["reason"]
        assert str(tmp_path) not in index.text
        served = httpx.post(f"{s.url}/v1/classify", json={"text": "still here"}).json()
        assert served["model_version"] == "1" and _loaded_gauge(s) == {"tiny:1"}


def test_rollback_racing_unload_is_never_a_500(tmp_path: Path) -> None:
    live = tmp_path / "repo"
    tiny_model_folder(live, "tiny", "1", seed=1)
    tiny_model_folder(live, "tiny", "2", seed=2)
    answers: list[tuple[str, int, str]] = []
    with ServerProcess(live, args=["--model-poll-seconds", "0"]) as s:
        base = f"{s.url}/v2/repository/models/tiny"
        for delay_ms in range(0, 40, 2):  # the unload lands before, inside and after the rollback
            assert httpx.post(f"{base}/load?version=2", timeout=30).status_code == 200
            with cf.ThreadPoolExecutor(2) as pool:
                rollback = pool.submit(httpx.post, f"{base}/rollback", timeout=30)
                time.sleep(delay_ms / 1000)
                unload = pool.submit(httpx.post, f"{base}/unload", timeout=30)
                for name, future in (("rollback", rollback), ("unload", unload)):
                    r = future.result()
                    answers.append((name, r.status_code, r.text))
            # Whatever the order, the registry and its gauge agree afterwards.
            index = httpx.post(f"{s.url}/v2/repository/index").json()
            ready = {f"tiny:{i['version']}" for i in index if i["state"] == "READY"}
            assert _loaded_gauge(s) == ready
    assert all(code in (200, 404, 409) for _, code, _ in answers), answers
    assert all(json.loads(text)["error"] for _, code, text in answers if code != 200), answers
    assert {code for name, code, _ in answers if name == "rollback"} >= {200}


def test_model_loaded_gauge_follows_load_unload_rollback(tmp_path: Path) -> None:
    live = tmp_path / "repo"
    tiny_model_folder(live, "tiny", "1", seed=1)
    tiny_model_folder(live, "tiny", "2", seed=2)
    with ServerProcess(live, args=["--model-poll-seconds", "0"]) as s:
        base = f"{s.url}/v2/repository/models/tiny"
        assert _loaded_gauge(s) == {"tiny:2"}
        assert httpx.post(f"{base}/rollback").status_code == 200
        assert _loaded_gauge(s) == {"tiny:1"}
        assert httpx.post(f"{base}/load?version=2").status_code == 200
        assert _loaded_gauge(s) == {"tiny:1", "tiny:2"}
        assert httpx.post(f"{base}/unload?version=1").status_code == 200
        assert _loaded_gauge(s) == {"tiny:2"}
        assert httpx.post(f"{base}/unload").status_code == 200
        assert _loaded_gauge(s) == set()


# -- slow and greedy clients ------------------------------------------------------------------
HEADER_S, BODY_S = 1.0, 1.5


@pytest.fixture(scope="module")
def guarded(repo: Path):  # type: ignore[no-untyped-def]
    env = {
        "SENTISTREAM_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_S),
        "SENTISTREAM_HTTP_BODY_TIMEOUT_SECONDS": str(BODY_S),
    }
    with ServerProcess(repo, env=env, args=["--model", "tiny"]) as s:
        yield s


def _drip(
    server: ServerProcess,
    chunks: list[bytes],
    every: float = 0.25,
    limit: float = 6.0,
    sock: socket.socket | None = None,
) -> tuple[float, bytes]:
    """Send ``chunks`` one every ``every`` s until the server answers; read until it closes
    the connection or ``limit`` s pass. Returns (seconds, what the server sent)."""
    sock = sock or socket.create_connection(("127.0.0.1", server.http_port))
    started = time.monotonic()
    got, pending, next_send = b"", list(chunks), started
    try:
        while time.monotonic() - started < limit:
            if pending and not got and time.monotonic() >= next_send:
                sock.sendall(pending.pop(0))
                next_send += every
            if select.select([sock], [], [], 0.02)[0]:
                data = sock.recv(65536)
                if not data:
                    break  # the server closed the connection
                got += data
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return time.monotonic() - started, got


def _json_error(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


SLOW_HEADERS = [b"POST /v1/classify HTTP/1.1\r\n", b"Host: x\r\n", *[b"X-Slow: 1\r\n"] * 60]


def test_slow_headers_are_cut_off(guarded: ServerProcess) -> None:
    seconds, answer = _drip(guarded, SLOW_HEADERS)
    assert HEADER_S - 0.1 < seconds < HEADER_S + 1.0, seconds
    status, error = _json_error(answer)
    assert status == 408 and error["error"] == "request headers not received within 1 s"
    # A connection that sends nothing is closed as quietly as an idle kept-alive one.
    seconds, answer = _drip(guarded, [])
    assert seconds < HEADER_S + 1.0 and answer == b""


def test_slow_headers_on_a_kept_alive_connection_are_cut_off(guarded: ServerProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", guarded.http_port))
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while not first.endswith(b'{"live":true}'):
        first += sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    time.sleep(HEADER_S + 0.2)  # idle between requests: the keep-alive timeout's business
    seconds, answer = _drip(guarded, SLOW_HEADERS, sock=sock)
    assert seconds < HEADER_S + 1.0 and _json_error(answer)[0] == 408


@pytest.mark.parametrize("path", ["/v1/classify", "/v2/models/tiny/infer"])
def test_slow_body_is_cut_off(guarded: ServerProcess, path: str) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 200\r\n\r\n"
    ).encode()
    seconds, answer = _drip(guarded, [head] + [b" "] * 60)
    assert BODY_S - 0.1 < seconds < BODY_S + 1.0, seconds
    status, error = _json_error(answer)
    assert status == 408 and error["error"] == "request body not received within 1.5 s"
    assert b"connection: close" in answer.lower()


def test_a_body_the_route_never_reads_does_not_hold_the_connection(
    guarded: ServerProcess,
) -> None:
    head = b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    seconds, answer = _drip(guarded, [head] + [b" "] * 60)
    assert seconds < 1.0 and answer.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in answer.lower()


def test_huge_headers_are_refused(guarded: ServerProcess) -> None:
    flood = b"GET /v2/health/live HTTP/1.1\r\n" + b"X-Big: " + b"a" * 200_000
    _, answer = _drip(guarded, [flood])
    assert _json_error(answer) == (
        431,
        {"error": "request headers larger than 65536 bytes", "code": "INVALID_ARGUMENT"},
    )


def test_normal_clients_are_served_while_slow_ones_wait(guarded: ServerProcess) -> None:
    with cf.ThreadPoolExecutor(24) as pool:
        slow = [pool.submit(_drip, guarded, SLOW_HEADERS) for _ in range(20)]
        time.sleep(0.3)
        started = time.monotonic()
        r = httpx.post(f"{guarded.url}/v1/classify", json={"texts": ["fine", "thanks"]})
        assert r.status_code == 200 and time.monotonic() - started < 1.0
        # A long response (the dashboard's event stream) outlives both deadlines.
        with httpx.stream("GET", f"{guarded.url}/dashboard/events", timeout=10) as events:
            assert len(Events(events).take("stats", 2)) == 2  # >= 2 s open
        assert all(_json_error(f.result()[1])[0] == 408 for f in slow)


def test_connections_beyond_the_cap_get_503(repo: Path) -> None:
    env = {"SENTISTREAM_HTTP_MAX_CONNECTIONS": "4"}
    with ServerProcess(repo, env=env, args=["--model", "tiny"]) as s:
        idle = [socket.create_connection(("127.0.0.1", s.http_port)) for _ in range(4)]
        time.sleep(0.2)
        with httpx.Client() as client:
            refused = client.get(f"{s.url}/v2/health/live")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["code"] == "UNAVAILABLE"
        for sock in idle:
            sock.close()
        time.sleep(0.2)
        assert httpx.get(f"{s.url}/v2/health/live").status_code == 200
