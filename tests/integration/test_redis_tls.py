"""Redis over TLS (``rediss://``): ingest, the worker and its dashboard feed against a
redis-server that only listens on a TLS port, with a CA made by the test and a password."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from sentistream.testing import RedisServer, free_port, make_test_certificates
from tests.integration.test_dashboard import Events
from tests.integration.test_stream_redis import _stop, _worker_proc

pytestmark = pytest.mark.integration
PASSWORD = "tls-secret-9d41"


def test_ingest_worker_and_dashboard_over_tls(tmp_path: Path, tiny_repo: Path) -> None:
    certs = make_test_certificates(tmp_path / "certs")
    with RedisServer(tmp_path / "redis", password=PASSWORD, tls=certs) as server:
        url = server.url
        assert url.startswith("rediss://") and "ssl_ca_certs=" in url
        # The server speaks TLS only, and clients verify it: no CA -> no connection.
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(url.replace("rediss://", "redis://").split("?")[0]).ping()
        with pytest.raises(redis.ConnectionError, match="(?i)certificate"):
            redis.Redis.from_url(url.split("?")[0]).ping()
        client = redis.Redis.from_url(url)
        assert client.ping()

        posts = tmp_path / "posts.jsonl"
        posts.write_text(
            "".join(json.dumps({"id": f"t{i}", "text": f"love {i}"}) + "\n" for i in range(50))
        )
        env = {**os.environ, "SENTISTREAM_REDIS_URL": url}
        ingest = subprocess.run(
            [sys.executable, "-m", "sentistream", "ingest", "--input", str(posts)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ingest.returncode == 0, ingest.stderr
        assert client.xlen("sentistream:posts") == 50

        port = free_port()
        worker = _worker_proc(
            url, tiny_repo, "tls", "--http-port", str(port), "--host", "127.0.0.1", capture=True
        )
        try:
            deadline = time.monotonic() + 60
            while client.xlen("sentistream:results") < 50 and time.monotonic() < deadline:
                time.sleep(0.1)
            ids = sorted(f[b"id"].decode() for _, f in client.xrange("sentistream:results"))
            assert ids == sorted(f"t{i}" for i in range(50))
            assert client.xpending("sentistream:posts", "sentistream")["pending"] == 0
            # The dashboard reads the output stream over the same TLS connection settings.
            with httpx.stream("GET", f"http://127.0.0.1:{port}/dashboard/events", timeout=10) as r:
                history = Events(r).take("record", 50)
            assert sorted(rec["id"] for _, rec in history) == ids
        finally:
            assert _stop(worker) == 0
        out, err = worker.communicate()
        assert PASSWORD.encode() not in out + err  # the URL's password is never logged
        client.close()
