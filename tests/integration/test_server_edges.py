"""The model server at its edges (issue 26): secrets reaching worker processes, the admin
endpoints under races and broken versions, encoded and odd tensor inputs, one auth rule on
both transports, and clients that send slowly. Real server processes on free ports."""

from __future__ import annotations

import json
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
