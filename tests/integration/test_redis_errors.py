"""Every command that needs Redis fails with one line naming host:port and exit code 2 when
Redis is down or refuses the password: no traceback, never the password or the URL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentistream.testing import RedisServer, free_port

pytestmark = pytest.mark.integration
PASSWORD = "right-horse-battery-17"
WRONG = "wrong-staple-secret-99"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD) as r:
        yield r


def command(name: str, tiny_repo: Path, posts: Path) -> list[str]:
    model = ["--model-repository", str(tiny_repo), "--model", "tiny:1"]
    return {
        "ingest": ["ingest", "--input", str(posts)],
        "ingest-bluesky": ["ingest", "--source", "bluesky"],
        "subscribe": ["subscribe", "--limit", "1"],
        "stream": ["stream", "--source", "redis", *model],
        "demo": ["demo", "--rate", "0", *model],
    }[name]


@pytest.mark.parametrize("fault", ["wrong-port", "wrong-password", "no-password"])
@pytest.mark.parametrize("name", ["ingest", "ingest-bluesky", "subscribe", "stream", "demo"])
def test_redis_down_or_refusing_is_one_line_exit_2(
    server: RedisServer, tiny_repo: Path, tmp_path: Path, name: str, fault: str
) -> None:
    posts = tmp_path / "posts.jsonl"
    posts.write_text('{"id": "1", "text": "hello"}\n')
    port = {"wrong-port": free_port()}.get(fault, server.port)
    auth = {"wrong-port": f":{PASSWORD}@", "wrong-password": f"admin:{WRONG}@"}.get(fault, "")
    url = f"redis://{auth}127.0.0.1:{port}/0"
    env = {
        **os.environ,
        "SENTISTREAM_JETSTREAM_URL": f"ws://127.0.0.1:{free_port()}/subscribe",
        "TOKENIZERS_PARALLELISM": "false",
    }
    args = command(name, tiny_repo, posts)
    if name == "demo":  # demo takes the URL as a flag (a run publishes to it)
        args += ["--redis-url", url]
    else:
        env["SENTISTREAM_REDIS_URL"] = url
    proc = subprocess.run(
        [sys.executable, "-m", "sentistream", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stderr
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert f"127.0.0.1:{port}" in err and "Traceback" not in err
    expected = {
        "wrong-port": "cannot reach Redis at",
        "wrong-password": "refused the login",
        "no-password": "needs a password",
    }[fault]
    assert expected in err
    for secret in (PASSWORD, WRONG, "redis://"):
        assert secret not in proc.stdout + proc.stderr


def test_serve_with_a_dashboard_stream_does_not_need_redis_to_start(tiny_repo: Path) -> None:
    """`serve` only builds a lazy client for its dashboard feed: a Redis that is down does not
    stop the model server from starting and answering."""
    from sentistream.testing import ServerProcess

    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    env = {"SENTISTREAM_REDIS_URL": url, "SENTISTREAM_DASHBOARD_STREAM": "sentistream:results"}
    with ServerProcess(tiny_repo, env=env, args=["--no-grpc-enabled"]) as server:
        assert server.is_ready()
        log = server.log
    assert PASSWORD not in log and "Traceback" not in log
