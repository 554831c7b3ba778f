"""The model server at its edges (issue 26): secrets reaching worker processes, the admin
endpoints under races and broken versions, encoded and odd tensor inputs, one auth rule on
both transports, and clients that send slowly. Real server processes on free ports."""

from __future__ import annotations

import json
from pathlib import Path

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
